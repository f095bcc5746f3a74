"""moelab/data/text.py: the shipped corpus, splits by file and by position, byte kinds, text classification layouts."""
import hashlib
import io
import keyword
import random
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import PYTHON_KINDS, write_sources

from moelab.data import text
from moelab.data.types import DataError
from moelab.training import launch
from moelab.training.exits import EXIT_BAD_INPUT


def one_line(error) -> bool:
    message = str(error.value if hasattr(error, "value") else error).strip()
    return bool(message) and "\n" not in message


# ----------------------------------------------------------------------------- the shipped corpus

def test_the_shipped_archive_matches_its_md5_and_holds_no_test_suite(tmp_path):
    blob = text.CORPUS_ASSET.read_bytes()
    assert hashlib.md5(blob).hexdigest() == text.CORPUS_MD5
    files = text.read_corpus_archive()
    assert len(files) > 700
    names = [name for name, _ in files]
    assert len(set(names)) == len(names) and all(name.endswith(".py") for name in names)
    for name in names:
        parts = Path(name).parts
        assert "test" not in parts[:-1] and "tests" not in parts[:-1], name
        assert not parts[-1].startswith("test_"), name
    assert sum(len(content) for _, content in files) > 10_000_000          # 12.1 MB of sources
    assert any(name == "os.py" for name in names)

    damaged = tmp_path / "damaged.tar.xz"
    changed = bytearray(blob)
    changed[len(changed) // 2] ^= 0x01                                     # one bit of one byte
    damaged.write_bytes(bytes(changed))
    with pytest.raises(DataError, match="md5 mismatch") as error:
        text.read_corpus_archive(path=damaged)
    assert one_line(error)
    with pytest.raises(DataError, match="cannot read") as error:
        text.read_corpus_archive(path=tmp_path / "absent.tar.xz")
    assert one_line(error)


# ----------------------------------------------------------------------------- splits

def test_split_by_file_places_every_file_once_whatever_the_input_order():
    rng = random.Random(1)
    files = [(f"d{i % 4}/file_{i:02d}.txt", (f"file {i} " * rng.randint(5, 60)).encode()) for i in range(30)]
    total = sum(len(content) for _, content in files)
    splits = text.split_by_file(files, val_share=0.1)
    assert set(splits) == {"train", "val", "test"} and all(splits.values())
    placed = [path for part in splits.values() for path, _ in part]
    assert sorted(placed) == sorted(path for path, _ in files)             # each exactly once: disjoint
    for part in splits.values():
        assert [path for path, _ in part] == sorted(path for path, _ in part)
    content = dict(files)
    assert all(data == content[path] for part in splits.values() for path, data in part)
    held = {split: sum(len(data) for _, data in part) for split, part in splits.items()}
    assert held["test"] >= text.TEST_SHARE * total and held["val"] >= 0.1 * total
    assert held["train"] > 0.6 * total
    for seed in range(5):
        shuffled = files[:]
        random.Random(seed).shuffle(shuffled)
        assert text.split_by_file(shuffled, val_share=0.1) == splits
    three = text.split_by_file(files[:3], val_share=0.1)                   # the fewest files it splits
    assert [len(three[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    for count in range(3, 8):                                              # greedy shares never empty a split
        for val_share in (0.01, 0.5, 0.95):
            few = text.split_by_file(files[:count], val_share=val_share)
            assert all(few.values()) and sum(map(len, few.values())) == count, (count, val_share)


def test_no_held_out_file_reaches_the_training_stream(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    written = write_sources(tmp_path / "src", 30)
    dataset = text.load_language_dataset(f"text:{tmp_path / 'src'}", 16, 0.1)
    assert dataset.in_shape == (16,) and dataset.num_classes == 256 and dataset.classes == text.KINDS
    streams = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    assert sorted(f for s in streams.values() for f in s.files) == sorted(written)
    train = bytes(dataset.train.tokens.tolist())
    for split, stream in streams.items():
        assert stream.files and list(stream.files) == sorted(stream.files)
        joined = b"".join(written[f] for f in stream.files)
        assert bytes(stream.tokens.tolist()) == joined                     # files joined in path order
        assert len(stream.kinds) == len(stream.tokens)
        expected = np.concatenate([text.python_kinds(written[f]) for f in stream.files])
        assert torch.equal(stream.kinds, torch.from_numpy(expected))
    for name in dataset.val.files + dataset.test.files:
        marker = written[name].split(b"\n", 1)[0][len(b"# module "):]
        assert marker not in train, name                                   # not even one line of it
        assert written[name] not in train
    for name in dataset.train.files:
        assert written[name] in train


def test_one_or_two_files_are_cut_by_position_at_line_ends(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    content = b"".join(f"line {i:03d} of the only file\n".encode() for i in range(200))
    parts = text.split_by_position("only.txt", content, 0.1)
    pieces = [parts[s][0][1] for s in ("train", "val", "test")]
    assert b"".join(pieces) == content and all(piece.endswith(b"\n") for piece in pieces)
    assert len(pieces[0]) == pytest.approx(0.85 * len(content), abs=40)
    assert len(pieces[2]) == pytest.approx(0.05 * len(content), abs=40)
    (tmp_path / "one.txt").write_bytes(content)
    single = text.load_language_dataset(f"text:{tmp_path / 'one.txt'}", 16, 0.1)
    assert [bytes(s.tokens.tolist()) for s in (single.train, single.val, single.test)] == pieces
    # Two files: both are used (each cut by position), not only the first.
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.txt").write_bytes(b"alpha words here\n" * 100)
    (two / "b.txt").write_bytes(b"beta other text\n" * 100)
    dataset = text.load_language_dataset(f"text:{two}", 16, 0.1)
    everything = b"".join(bytes(s.tokens.tolist()) for s in (dataset.train, dataset.val, dataset.test))
    assert sorted(everything.split(b"\n")[:-1]) == sorted(((b"alpha words here\n" * 100) +
                                                            (b"beta other text\n" * 100)).split(b"\n")[:-1])
    assert b"alpha" in bytes(dataset.train.tokens.tolist()) and b"beta" in bytes(dataset.train.tokens.tolist())
    assert b"beta" in bytes(dataset.test.tokens.tolist())
    with pytest.raises(DataError, match="fewer than --context") as error:
        text.load_language_dataset(f"text:{tmp_path / 'one.txt'}", 4096, 0.1)
    assert one_line(error)


# ----------------------------------------------------------------------------- byte kinds

SOURCE = '''import os
# a comment ü
def f(x, y=0x1F):
    s = "café ü" + x  # after non-ASCII
    t = (1,
         2.5e3)
    """multi
    line ü"""
    if x and not y:
        return [s, t]

    return None
'''
KIND_OF_TOKEN = {tokenize.NAME: "name", tokenize.OP: "operator", tokenize.NUMBER: "number",
                 tokenize.STRING: "string", tokenize.COMMENT: "comment", tokenize.NEWLINE: "newline",
                 tokenize.NL: "newline", tokenize.INDENT: "newline"}


def reference_kinds(data: bytes) -> list[str]:
    """Every byte's kind from tokenize's tokens, positions turned into bytes independently."""
    lines = data.decode("utf-8").splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line.encode("utf-8")))

    def offset(row: int, col: int) -> int:
        return len(data) if row > len(lines) else starts[row - 1] + len(lines[row - 1][:col].encode("utf-8"))
    kinds, covered = ["space"] * len(data), [False] * len(data)
    for token in tokenize.tokenize(io.BytesIO(data).readline):
        kind = KIND_OF_TOKEN.get(token.type)
        if kind is None:
            continue
        if kind == "name" and keyword.iskeyword(token.string):
            kind = "keyword"
        for i in range(offset(*token.start), min(offset(*token.end), len(data))):
            kinds[i], covered[i] = kind, True
    for start in starts[:-1]:                       # leading blanks outside tokens: indentation
        i = start
        while i < len(data) and data[i] in b" \t" and not covered[i]:
            kinds[i] = "newline"
            i += 1
    return kinds


@pytest.mark.parametrize("variant", ["lf", "crlf", "no final newline"])
def test_python_kinds_follow_tokenize_byte_for_byte(variant):
    source = {"lf": SOURCE, "crlf": SOURCE.replace("\n", "\r\n"), "no final newline": SOURCE.rstrip("\n")}[variant]
    data = source.encode("utf-8")
    got = [text.KINDS[k] for k in text.python_kinds(data)]
    assert len(got) == len(data)
    assert got == reference_kinds(data)
    assert set(got) == PYTHON_KINDS
    # Spot checks of the spans that need care: multi-byte characters, indentation, operators.
    for needle, kind in ((b'"caf\xc3\xa9 \xc3\xbc"', "string"), (b"# after non-ASCII", "comment"),
                         (b"import", "keyword"), (b"None", "keyword"), (b"os", "name"), (b"0x1F", "number"),
                         (b"2.5e3", "number"), (b"+", "operator"), (b'"""multi', "string")):
        at = data.index(needle)
        assert {got[i] for i in range(at, at + len(needle))} == {kind}, needle
    assert got[data.index(b"    s =")] == "newline"                       # indentation
    assert got[data.index(b"         2.5e3")] == "newline"                # a continuation line's blanks
    assert got[data.index(b" = \"caf")] == "space"                        # between tokens
    assert got[data.index(b"    line")] == "string"                       # inside a string: not indentation
    assert got[data.index(b"\n") if variant != "crlf" else data.index(b"\r\n")] == "newline"


def test_source_that_does_not_tokenize_and_plain_text_get_character_classes():
    broken = b'def f():\n    s = """never closed\n    x = 1\n'
    assert text.python_kinds(broken).tolist() == text.char_kinds(broken).tolist()
    plain = "Ab z9 0\t,.;\n\r\x01é".encode("utf-8")
    expected = ["letter", "letter", "space", "letter", "digit", "space", "digit", "space", "punctuation",
                "punctuation", "punctuation", "newline", "newline", "other", "letter", "letter"]
    assert [text.KINDS[k] for k in text.char_kinds(plain)] == expected
    assert text.byte_kinds("notes.txt", b"if x:\n").tolist() == text.char_kinds(b"if x:\n").tolist()
    assert text.KINDS[text.byte_kinds("code.py", b"if x:\n")[0]] == "keyword"


# ----------------------------------------------------------------------------- unusable text

@pytest.mark.parametrize("content, says", [(b"", "no text"), (b"some\x00binary", "NUL bytes"),
                                           (b"caf\xe9 au lait\n", r"not UTF-8 \(byte 3\)")])
def test_unusable_text_is_refused_in_one_line(tmp_path, content, says):
    single = tmp_path / "input.txt"
    single.write_bytes(content)
    with pytest.raises(DataError, match=says) as error:
        text.load_language_dataset(f"text:{single}", 8, 0.1)
    assert one_line(error)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "good.txt").write_bytes(b"fine text\n" * 50)
    (folder / "bad.txt").write_bytes(content)
    if content:                                      # a bad file in a folder is named
        with pytest.raises(DataError, match=says) as error:
            text.read_text_files(folder)
        assert one_line(error) and "bad.txt" in str(error.value)
    else:                                            # an empty file among others is skipped
        assert [name for name, _ in text.read_text_files(folder)] == ["good.txt"]


def test_missing_paths_and_empty_folders_are_refused(tmp_path):
    for name, says in ((f"text:{tmp_path / 'absent'}", "no such file"), ("text:", "needs a path")):
        with pytest.raises(DataError, match=says) as error:
            text.load_language_dataset(name, 8, 0.1)
        assert one_line(error)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden.txt").write_text("hidden text is skipped\n")
    with pytest.raises(DataError, match="no text") as error:
        text.read_text_files(tmp_path / "empty")
    assert one_line(error)


def test_a_data_error_through_the_cli_exits_2_before_any_run_directory(tmp_path, capsys):
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    out = tmp_path / "runs"
    code = launch.main(["--arch", "gpt", "--dataset", f"text:{tmp_path / 'binary.txt'}", "--out", str(out),
                        "--threads", "1"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and err.startswith("error:") and "NUL" in err and "\n" not in err
    assert not out.exists()
