"""Text as bytes: the embedded corpus, any UTF-8 text a user has, and text-classification files.

Legend: n bytes of a split, B sequences, T bytes per sequence (--context).

Sources (see load_text_dataset):
  python-stdlib   the CPython 3.11.7 standard library sources (Lib/**/*.py, test suites
                  excluded), shipped as moelab/assets/text/ (xz tar, md5-checked, PSF licence)
  text:PATH       one UTF-8 file or a folder of them (a language model)
  rotten-tomatoes, csv-text:PATH   labelled texts for a classifier (labelled_text.py)

A language-model split is one byte stream (its files joined in a fixed order) with the kind of
every byte (byte_kinds); the train / validation / test splits are made *by file*, so that no
window of a held-out file is ever trained on. A single file is split by position instead (its
last bytes held out), which is the only choice it leaves.
"""
from __future__ import annotations

import hashlib
import io
import keyword
import lzma
import os
import pathlib
import tarfile
import tempfile
import tokenize
from dataclasses import dataclass

import numpy as np
import torch

from ..paths import PACKAGE_DIR
from .images import cache_dir
from .labelled_text import DEFAULT_FOLDS, REVIEWS_NAME, is_classification_text, load_classification_dataset
from .types import VOCAB, DataError

CORPUS_NAME = "python-stdlib"
CORPUS_RELEASE = "3.11.7"
CORPUS_ASSET = PACKAGE_DIR / "assets" / "text" / f"cpython-{CORPUS_RELEASE}-lib.tar.xz"
CORPUS_MD5 = "5f1db64f1793e58226cf8096894a1646"
CORPUS_CACHE_VERSION = 2           # bump when the cached tensors or the byte kinds change
TEST_SHARE, VAL_SHARE_DEFAULT = 0.05, 0.05

# The kind of a byte: Python token types for .py sources (tokenize), character classes otherwise.
KINDS = ("space", "newline", "name", "keyword", "operator", "number", "string", "comment",
         "letter", "digit", "punctuation", "other")
KIND = {name: i for i, name in enumerate(KINDS)}
_TOKEN_KINDS = {tokenize.NAME: "name", tokenize.OP: "operator", tokenize.NUMBER: "number",
                tokenize.STRING: "string", tokenize.COMMENT: "comment", tokenize.NEWLINE: "newline",
                tokenize.NL: "newline", tokenize.INDENT: "newline"}


@dataclass(frozen=True)
class Stream:
    """One split of a language model: bytes (n,) uint8 and their kinds (n,) uint8 (KINDS)."""

    tokens: torch.Tensor
    kinds: torch.Tensor
    files: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class TextDataset:
    """A byte-level language-modelling corpus; a 'sample' of it is one predicted byte."""

    name: str
    train: Stream
    val: Stream
    test: Stream
    context: int
    source: str
    classes: tuple[str, ...] = KINDS       # what routing tables are broken down by: byte kinds
    augment: bool = False
    mean = std = None

    @property
    def in_shape(self) -> tuple[int]:
        return (self.context,)

    @property
    def num_classes(self) -> int:
        return VOCAB                       # the next byte


def is_text_dataset(name: str) -> bool:
    return name in (CORPUS_NAME, REVIEWS_NAME) or name.startswith(("text:", "csv-text:"))


def is_language_dataset(name: str) -> bool:
    """Datasets a causal language model is trained on (rotten-tomatoes and csv-text: are classification)."""
    return name == CORPUS_NAME or name.startswith("text:")


# ----------------------------------------------------------------------------------------------
# Byte kinds


def _char_class_table() -> np.ndarray:
    table = np.full(256, KIND["punctuation"], dtype=np.uint8)
    for b in range(256):
        ch = chr(b)
        if ch.isalpha() and b < 128 or b >= 128:   # bytes of multi-byte characters: letters of some script
            table[b] = KIND["letter"]
        elif ch.isdigit():
            table[b] = KIND["digit"]
        elif ch in " \t\x0b\x0c":
            table[b] = KIND["space"]
        elif ch in "\r\n":
            table[b] = KIND["newline"]
        elif b < 32 or b == 127:
            table[b] = KIND["other"]
    return table


CHAR_CLASS = _char_class_table()


def char_kinds(data: bytes) -> np.ndarray:
    """(n,) letter / digit / space / newline / punctuation / other of every byte."""
    return CHAR_CLASS[np.frombuffer(data, dtype=np.uint8)]


def python_kinds(data: bytes) -> np.ndarray:
    """(n,) the kind of every byte of Python source: the type of the token of Python's own
    ``tokenize`` it belongs to (a NAME that is a keyword is 'keyword'; line ends and every
    line's indentation 'newline'); other bytes between tokens are 'space'. Source that does not tokenize gets
    character classes."""
    kinds = np.full(len(data), KIND["space"], dtype=np.uint8)
    line_starts = [0]                                  # byte offset of each line (rows count from 1)
    for line in io.BytesIO(data).readlines():
        line_starts.append(line_starts[-1] + len(line))
    try:
        for token in tokenize.tokenize(io.BytesIO(data).readline):
            kind = _TOKEN_KINDS.get(token.type)
            if kind is None:                           # ENCODING, DEDENT, ENDMARKER, ERRORTOKEN
                continue
            if kind == "name" and (keyword.iskeyword(token.string) or keyword.issoftkeyword(token.string)):
                kind = "keyword"
            start = _byte_offset(data, line_starts, *token.start)
            end = _byte_offset(data, line_starts, *token.end)
            kinds[start:end] = KIND[kind]
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
        return char_kinds(data)
    # tokenize marks indentation only where it grows (INDENT); every line's leading blanks outside
    # a string are indentation too.
    space, newline = KIND["space"], KIND["newline"]
    for start in line_starts[:-1]:
        end = start
        while end < len(data) and data[end] in (32, 9) and kinds[end] == space:
            end += 1
        kinds[start:end] = newline
    return kinds


def _byte_offset(data: bytes, line_starts: list[int], row: int, col: int) -> int:
    """Byte offset of tokenize's (row, character column)."""
    if row - 1 >= len(line_starts) - 1:
        return len(data)
    start = line_starts[row - 1]
    line = data[start:line_starts[row]]
    if line.isascii():
        return start + col
    return start + len(line.decode("utf-8", errors="replace")[:col].encode("utf-8"))


def byte_kinds(path: str, data: bytes) -> np.ndarray:
    return python_kinds(data) if path.endswith(".py") else char_kinds(data)


# ----------------------------------------------------------------------------------------------
# Splits by file


def split_by_file(files: list[tuple[str, bytes]], val_share: float, test_share: float = TEST_SHARE) \
        -> dict[str, list[tuple[str, bytes]]]:
    """Files -> train / val / test, whole files each (at least one per split). The order is fixed
    by a hash of each file's path, not by the seed: test takes files until it holds
    ``test_share`` of the bytes, then val until it holds ``val_share``; the rest is training.
    Each split keeps its files in path order."""
    ordered = sorted(files, key=lambda f: hashlib.md5(f[0].encode()).hexdigest())
    total = sum(len(content) for _, content in files)
    out = {"test": [], "val": [], "train": []}
    held = {"test": 0, "val": 0}
    for i, (path, content) in enumerate(ordered):
        left = len(ordered) - i                      # files not placed yet, this one included
        for split, share, later in (("test", test_share, 2), ("val", val_share, 1)):
            if (not out[split] or held[split] < share * total) and left > later and \
                    (split == "val" or not out["val"]):
                out[split].append((path, content))
                held[split] += len(content)
                break
        else:
            out["train"].append((path, content))
    for split in out:
        out[split].sort(key=lambda f: f[0])
    return out


def split_by_position(path: str, content: bytes, val_share: float, test_share: float = TEST_SHARE) \
        -> dict[str, list[tuple[str, bytes]]]:
    """One file: its first bytes for training, then validation, then test, cut at line ends."""
    n = len(content)

    def cut(share: float) -> int:
        at = content.find(b"\n", round(share * n))
        return n if at < 0 else at + 1
    val_at, test_at = cut(1 - test_share - val_share), cut(1 - test_share)
    return {"train": [(path, content[:val_at])], "val": [(path, content[val_at:test_at])],
            "test": [(path, content[test_at:])]}


def make_stream(files: list[tuple[str, bytes]]) -> Stream:
    if not files:
        return Stream(torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8))
    tokens = np.frombuffer(b"".join(d for _, d in files), dtype=np.uint8).copy()
    kinds = np.concatenate([byte_kinds(p, d) for p, d in files])
    return Stream(torch.from_numpy(tokens), torch.from_numpy(kinds), tuple(p for p, _ in files))


# ----------------------------------------------------------------------------------------------
# Sources


def read_corpus_archive(path: pathlib.Path = CORPUS_ASSET, md5: str = CORPUS_MD5) -> list[tuple[str, bytes]]:
    """(path, bytes) of every file of the shipped corpus, after checking the archive's md5."""
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read the embedded text corpus {path} ({error.strerror}); reinstall the "
                        "package or pass --dataset text:PATH") from None
    if hashlib.md5(blob).hexdigest() != md5:
        raise DataError(f"the embedded text corpus {path} is damaged (md5 mismatch); restore it with "
                        "git checkout, or rebuild it with python -m moelab.data.text --pack LIB_DIR")
    files = []
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:xz") as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.endswith(".py"):
                files.append((member.name, archive.extractfile(member).read()))
    return files


def read_text_files(root: pathlib.Path) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of a UTF-8 file, or of every file under a folder (hidden ones
    skipped), in path order. Raises DataError (one line) for what is not usable text."""
    if not root.exists():
        raise DataError(f"--dataset text:{root}: no such file or folder")
    paths = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                 p.relative_to(root).parts))
    files = []
    for p in paths:
        data = p.read_bytes()
        name = p.name if p == root else str(p.relative_to(root))
        if b"\x00" in data:
            raise DataError(f"--dataset text:{root}: {name} holds NUL bytes, so it is binary, not text; "
                            "remove it or point at a folder of text files")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"--dataset text:{root}: {name} is not UTF-8 (byte {error.start}); "
                            "convert it (iconv -t utf-8) or remove it") from None
        if data:
            files.append((name, data))
    if not files:
        raise DataError(f"--dataset text:{root}: no text in it (empty files only, or no files); "
                        "point at a UTF-8 file or a folder of them")
    return files


def _cached(key: str, build) -> dict:
    """The cached tensors of ``key`` (built and cached atomically when absent or unreadable)."""
    path = cache_dir() / "text" / f"{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:   # a damaged cache is rebuilt, never trusted
            pass
    content = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(handle, "wb") as f:
            torch.save(content, f)
        os.replace(tmp, path)
    except OSError:
        pass                # an unwritable cache only costs the tokenisation next time
    return content


def _streams_content(splits: dict[str, list[tuple[str, bytes]]]) -> dict:
    out = {}
    for name, files in splits.items():
        stream = make_stream(files)
        out[name] = {"tokens": stream.tokens, "kinds": stream.kinds, "files": list(stream.files)}
    return out


def load_language_dataset(name: str, context: int, val_fraction: float) -> TextDataset:
    """The byte streams of ``python-stdlib`` or ``text:PATH``, split by file."""
    val_share = val_fraction if val_fraction > 0 else VAL_SHARE_DEFAULT
    if name == CORPUS_NAME:
        key = f"{CORPUS_NAME}-{CORPUS_MD5}-v{CORPUS_CACHE_VERSION}-val{val_share:g}"
        content = _cached(key, lambda: _streams_content(split_by_file(read_corpus_archive(), val_share)))
        source = f"CPython {CORPUS_RELEASE} Lib/ sources, tests excluded, shipped in {CORPUS_ASSET.name} (PSF licence)"
    else:
        root = pathlib.Path(name[len("text:"):]).expanduser()
        if not name[len("text:"):]:
            raise DataError("--dataset text: needs a path, e.g. --dataset text:/data/shakespeare.txt")
        files = read_text_files(root)
        by_position = len(files) < 3     # too few files to split by file: each one cut by position, pieces joined
        if by_position:
            splits = {"train": [], "val": [], "test": []}
            for path, content in files:
                for split, part in split_by_position(path, content, val_share).items():
                    splits[split] += part
        else:
            splits = split_by_file(files, val_share)
        content = _streams_content(splits)
        name = f"text:{root.absolute()}"
        source = f"{len(files)} file(s) under {root}, split " + ("by position" if by_position else "by file")
    streams = {split: Stream(c["tokens"], c["kinds"], tuple(c["files"])) for split, c in content.items()}
    for split, stream in streams.items():
        if len(stream) < context + 1:
            raise DataError(f"{name}: the {split} split has {len(stream)} bytes, fewer than --context {context} + 1; "
                            "use more text or a smaller --context")
    return TextDataset(name=name, train=streams["train"], val=streams["val"], test=streams["test"],
                       context=context, source=source)


def load_text_dataset(name: str, context: int, val_fraction: float, seed: int, folds: int = DEFAULT_FOLDS,
                      fold: int = 0):
    """A language model's TextDataset, or a text classifier's Dataset of byte sequences
    (labelled_text.py; ``folds`` and ``fold`` cut rotten-tomatoes)."""
    if is_classification_text(name):
        return load_classification_dataset(name, context, val_fraction, seed, folds, fold)
    return load_language_dataset(name, context, val_fraction)


def pack_corpus(lib_dir: pathlib.Path, destination: pathlib.Path) -> str:
    """Write the corpus archive from a CPython Lib/ folder: every .py file outside test suites,
    in path order, with fixed metadata so that the same release gives the same bytes; returns
    its md5. (The licence notice travels beside it as LICENSE.txt.)"""
    lib_dir = pathlib.Path(lib_dir)
    chosen = []
    for p in sorted(lib_dir.rglob("*.py")):
        parts = p.relative_to(lib_dir).parts
        if parts[0] == "site-packages" or parts[0].startswith("config-"):
            continue
        if any(part in ("test", "tests", "idle_test") or part.startswith("test_") for part in parts):
            continue
        chosen.append(p)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for p in chosen:
            data = p.read_bytes()
            info = tarfile.TarInfo(str(p.relative_to(lib_dir)))
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    blob = lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(blob)
    return hashlib.md5(blob).hexdigest()


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Rebuild the embedded text corpus from a CPython Lib/ folder.")
    parser.add_argument("--pack", required=True, metavar="LIB_DIR", help=f"Lib/ of CPython {CORPUS_RELEASE}")
    parser.add_argument("--to", default=str(CORPUS_ASSET), help="archive to write")
    args = parser.parse_args()
    print(f"md5 {pack_corpus(pathlib.Path(args.pack), pathlib.Path(args.to))}: set CORPUS_MD5 in {__file__}")
