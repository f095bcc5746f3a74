"""Byte-level text end to end: the shipped corpus, splits by file (and by position), byte kinds
against Python's own tokenize, unusable text, the stream loader, causality of every router a
language model may use, the routers it refuses, the AG News / IMDB layouts, and tiny runs."""
import csv
import hashlib
import io
import json
import keyword
import math
import random
import subprocess
import sys
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch

from moelab.data import text
from moelab.data.types import DataError
from moelab.data.loader import BatchLoader, StreamLoader, loader_for
from moelab.models.builder import build_model
from moelab.models.text import ByteTransformer
from moelab.training import launch
from moelab.training.config import ConfigError, parse_args, validate
from moelab.training.exits import EXIT_BAD_INPUT

PROJECT = Path(__file__).resolve().parents[1] / "project_moe"
PYTHON_KINDS = {"space", "newline", "name", "keyword", "operator", "number", "string", "comment"}


def one_line(error) -> bool:
    message = str(error.value if hasattr(error, "value") else error).strip()
    return bool(message) and "\n" not in message


def write_sources(folder: Path, count: int, seed: int = 0) -> dict[str, bytes]:
    """``count`` small Python modules of different sizes, each with a marker no other file holds."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i in range(count):
        marker = f"marker_{i:02d}_{rng.getrandbits(48):012x}"
        body = "".join(f'''
def {marker}_f{j}(x, y={j}):
    """Return x and y ({marker})."""
    if x > {j}.5:  # compare with {j}
        return x + y * {i}
    return [x, y, "s{j}"]
''' for j in range(1 + rng.randrange(6)))
        name = f"pkg{i % 3}/mod_{i:02d}.py"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"# module {marker}\n{body}", encoding="utf-8")
        written[name] = (folder / name).read_bytes()
    return written


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


# ----------------------------------------------------------------------------- the stream loader

def test_stream_loader_windows_are_next_byte_pairs_and_cover_evaluation_once():
    tokens = torch.arange(103, dtype=torch.int64).remainder(256).to(torch.uint8)
    stream = text.Stream(tokens, (tokens % 12).to(torch.uint8))
    train = StreamLoader(stream, 4, 10, shuffle=True, seed=3, steps=5)
    batches = list(train.iter_epoch(0))
    assert len(train) == 5 and len(batches) == 5
    for x, y in batches:
        assert x.shape == y.shape == (4, 10) and x.dtype == torch.int64
        assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)   # the next bytes
        assert int(y.max()) <= 102
    again = list(train.iter_epoch(0, start_step=2))                        # resumable from (seed, epoch, step)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[2:], again))
    assert not torch.equal(torch.cat([b[0] for b in train.iter_epoch(1)]), torch.cat([b[0] for b in batches]))
    evaluation = StreamLoader(stream, 4, 10, shuffle=False, seed=0)
    assert evaluation.windows == 10 and len(evaluation) == 3
    xs, ys, ks = zip(*evaluation.iter_epoch(0))
    x, y, kinds = torch.cat(xs), torch.cat(ys), torch.cat(ks)
    assert torch.equal(x.reshape(-1), torch.arange(100)) and torch.equal(y.reshape(-1), torch.arange(1, 101))
    assert torch.equal(kinds.reshape(-1), torch.arange(100) % 12)          # kinds of the input bytes
    default = StreamLoader(stream, 4, 10, shuffle=True, seed=0)
    assert len(default) == 102 // 40                                      # batches that cover it once


def test_loader_for_picks_the_stream_loader_for_a_language_model_only(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_sources(tmp_path / "src", 6)
    lm = text.load_language_dataset(f"text:{tmp_path / 'src'}", 16, 0.1)
    assert isinstance(loader_for(lm, lm.train, 4, shuffle=True, seed=0, device="cpu", steps=3), StreamLoader)
    write_ag_news(tmp_path / "ag")
    cls = text.load_classification_dataset(f"csv-text:{tmp_path / 'ag'}", 16, 0.0, seed=0)
    loader = loader_for(cls, cls.test, 2, shuffle=False, seed=0, device="cpu")
    assert isinstance(loader, BatchLoader)
    x, y = next(loader.iter_epoch(0))
    assert x.dtype == torch.int64 and x.shape == (2, 16) and torch.equal(x, cls.test.images[:2].long())


# ----------------------------------------------------------------------------- causality

T = 16
ALLOWED = {
    "hard": "--gating hard",
    "topk": "--gating topk",
    "noisy-topk": "--gating noisy-topk",
    "gumbel": "--gating gumbel",
    "topk+shared": "--gating topk --shared-experts 1",
    "hard+position": "--gating hard --drop-policy position --capacity-factor 1.0",
    "topk+bias": "--gating topk --bias-balance-rate 0.01",
    "topk+cosine": "--gating topk --router-score cosine",
    "dense": "--model dense",
}
SMALL = (f"--arch gpt --dataset python-stdlib --experts 4 --top-k 2 --vit-dim 32 --vit-heads 2 --vit-depth 2 "
         f"--moe-every 1 --expert-hidden 16 --context {T}")


def lm(flags: str, tmp_path) -> ByteTransformer:
    cfg = parse_args(f"{SMALL} {flags} --out {tmp_path / 'runs'}".split())
    validate(cfg)                                                          # a setting the CLI accepts
    torch.manual_seed(0)
    model = build_model(cfg.model_spec(), (T,), 256)
    assert isinstance(model, ByteTransformer) and model.causal
    for block in model.blocks:                                             # a bias that moves the choice
        router = getattr(block.ffn, "router", None)
        if router is not None and getattr(router, "bias_rate", 0):
            router.selection_bias.copy_(torch.randn(4) * 0.3)
    return model


def logits_of(model, tokens: torch.Tensor, train: bool) -> torch.Tensor:
    if train:
        torch.manual_seed(1)                                               # the same noise draw each time
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", ALLOWED)
def test_a_later_byte_never_changes_an_earlier_logit(name, train, tmp_path):
    model = lm(ALLOWED[name], tmp_path).train(train)
    generator = torch.Generator().manual_seed(2)
    batch = 2
    tokens = torch.randint(0, 256, (batch, T), generator=generator)
    before = logits_of(model, tokens, train)
    assert before.shape == (batch * T, 256)
    dropless = "position" not in name
    later_changed = 0
    for b in range(batch):
        for t in range(T - 1):
            changed = tokens.clone()
            changed[b, t + 1] = (changed[b, t + 1] + 1 + torch.randint(0, 255, (1,), generator=generator)) % 256
            after = logits_of(model, changed, train)
            flat = b * T + t                                               # this byte, in the flattened batch
            # Everything before it in the batch is untouched: its own earlier bytes and, for a router whose
            # capacity serves tokens in batch order, the sequences before it.
            torch.testing.assert_close(after[:flat + 1], before[:flat + 1], rtol=1e-5, atol=1e-5)
            if dropless:                                                   # other sequences: not at all
                other = torch.ones(batch * T, dtype=torch.bool)
                other[b * T:(b + 1) * T] = False
                torch.testing.assert_close(after[other], before[other], rtol=1e-5, atol=1e-5)
            later_changed += not torch.allclose(after[flat + 1:(b + 1) * T], before[flat + 1:(b + 1) * T])
    assert later_changed == batch * (T - 1)                                # the test is not vacuous


def test_capacity_in_batch_order_drops_tokens_and_stays_causal_in_a_single_sequence(tmp_path):
    model = lm(ALLOWED["hard+position"], tmp_path).eval()
    tokens = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        output = model(tokens)
    assert sum(int(r.dropped_counts().sum()) for r in output.routings) > 0   # capacity binds here
    for t in range(T - 1):
        changed = tokens.clone()
        changed[0, t + 1:] = (changed[0, t + 1:] + 7) % 256
        with torch.no_grad():
            after = model(changed)
        torch.testing.assert_close(after.logits[:t + 1], output.logits[:t + 1], rtol=1e-5, atol=1e-5)
        for old, new in zip(output.routings, after.routings):
            assert torch.equal(old.weights[:t + 1] > 0, new.weights[:t + 1] > 0)


def test_what_the_language_model_refuses_does_see_later_tokens():
    """Why the refusals are needed: with first choices served before second choices (position)
    or the most probable first (priority), a later token changes an earlier token's assignment."""
    from moelab.layers.capacity import capacity_keep
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3]])
    early_keep = []
    for later_choice in ([1, 0], [0, 1]):
        top = torch.tensor([[0, 1], later_choice])                          # token 0 first, token 1 later
        early_keep.append(capacity_keep(top, probs.gather(1, top), 2, 0.5, "position")[0].tolist())
    assert early_keep[0] != early_keep[1]                                  # token 0's second expert
    top = torch.tensor([[0], [0]])
    for policy, expected in (("position", [True, False]), ("priority", [False, True])):
        assert capacity_keep(top, torch.tensor([[0.6], [0.7]]), 2, 0.5, policy)[:, 0].tolist() == expected


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("flags, says", [
    ("--gating expert-choice", "--gating expert-choice cannot route a causal language model"),
    ("--gating soft-slots", "--gating soft-slots cannot route a causal language model"),
    ("--router-score attention", "--router-score attention"),
    ("--router-score attention --gating topk", "--router-score attention"),
    ("--drop-policy priority", "--drop-policy priority"),
    ("--drop-policy priority --gating topk", "--drop-policy priority"),
    ("--drop-policy position --gating topk", "--drop-policy position"),
])
def test_routers_that_see_later_bytes_are_refused(tmp_path, capsys, flags, says):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to model\n" * 40)
    out = tmp_path / "runs"
    for dataset in (f"text:{corpus}", "python-stdlib"):
        code = launch.main(f"--arch gpt --dataset {dataset} --out {out} --threads 1 {flags}".split())
        err = capsys.readouterr().err.strip()
        assert code == EXIT_BAD_INPUT, (dataset, err)
        assert err.startswith("error:") and says in err and "\n" not in err
        assert not out.exists()


def test_a_refusal_through_train_py(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to model\n" * 40)
    out = tmp_path / "runs"
    argv = ["--arch", "gpt", "--dataset", f"text:{corpus}", "--gating", "expert-choice"]
    done = subprocess.run([sys.executable, "train.py", *argv, "--out", str(out), "--threads", "1"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=60)
    err = done.stderr.strip()
    assert done.returncode == 2 and err.startswith("error:") and "\n" not in err, err
    assert "expert-choice cannot route a causal language model" in err and not done.stdout.strip()
    assert not out.exists()


def test_text_needs_gpt_gpt_needs_text_and_a_classifier_may_choose_experts(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to model\n" * 40)
    out = tmp_path / "runs"
    for argv, says in (([f"--dataset=text:{corpus}"], "needs --arch gpt"),
                       (["--dataset", f"csv-text:{tmp_path}"], "needs --arch gpt"),
                       (["--dataset", "python-stdlib", "--arch", "vit"], "needs --arch gpt"),
                       (["--arch", "gpt", "--dataset", "mnist"], "--arch gpt reads bytes"),
                       (["--arch", "gpt", "--dataset", f"csv-text:{tmp_path}", "--steps-per-epoch", "5"],
                        "--steps-per-epoch")):
        assert launch.main([*argv, "--out", str(out), "--threads", "1"]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and says in err and "\n" not in err, err
    assert not out.exists()
    for extra in (["--gating", "expert-choice"], ["--gating", "soft-slots"], ["--router-score", "attention"],
                  ["--drop-policy", "priority", "--gating", "topk"]):
        cfg = parse_args(["--dataset", f"csv-text:{tmp_path}", "--arch", "gpt", "--out", str(out), *extra])
        validate(cfg)                                                      # a classifier sees whole texts
        assert not cfg.model_spec().causal
    dense = parse_args(["--dataset", "python-stdlib", "--arch", "gpt", "--model", "dense", "--out", str(out)])
    validate(dense)
    with pytest.raises(ConfigError):
        validate(parse_args(["--dataset", "python-stdlib", "--arch", "gpt", "--gating", "expert-choice",
                             "--out", str(out)]))


# ----------------------------------------------------------------------------- classification layouts

AG_TRAIN = (
    '"3","Wall St. Bears Claw Back Into the Black (Reuters)","Reuters - Short-sellers, Wall Street\'s dwindling'
    '\\band of ultra-cynics, are seeing green again."\n'
    '"1","Talks, again","Leaders met on Monday, ""briefly"", and left."\n'
    '"2","Late goal","A 1-0 win, sealed in the 90th minute."\n'
    '"4","Chips","Faster, cheaper, smaller: the café\'s new laptop."\n'
) * 3
AG_TEST = ('"2","Match","Drawn, 1-1."\n'
           '"4","Software","An update, at last."\n'
           '"1","Summit","No deal."\n')


def write_ag_news(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text(AG_TRAIN, encoding="utf-8")
    (root / "test.csv").write_text(AG_TEST, encoding="utf-8")


def test_ag_news_layout_loads_quoted_fields_as_truncated_and_padded_bytes(tmp_path):
    write_ag_news(tmp_path / "ag")
    data = text.load_classification_dataset(f"csv-text:{tmp_path / 'ag'}", 40, 0.25, seed=0)
    assert data.classes == ["1", "2", "3", "4"] and data.mean is None and not data.augment
    assert data.test.labels.tolist() == [1, 3, 0] and data.test.labels.dtype == torch.int64
    assert data.test.images.shape == (3, 40) and data.test.images.dtype == torch.uint8
    assert bytes(data.test.images[0].tolist()) == b"Match Drawn, 1-1." + bytes(40 - 17)      # padded with 0
    assert bytes(data.test.images[2].tolist()) == b"Summit No deal." + bytes(40 - 15)
    assert len(data.train) + len(data.val) == 12 and len(data.val) == 3
    expected = {}
    for row in csv.reader(io.StringIO(AG_TRAIN)):
        joined = f"{row[1]} {row[2]}".encode("utf-8")
        expected[joined[:40]] = int(row[0]) - 1
    assert len(expected) == 4
    seen = torch.cat([data.train.images, data.val.images]), torch.cat([data.train.labels, data.val.labels])
    for image, label in zip(*seen):
        assert expected[bytes(image.tolist()).rstrip(b"\x00")] == int(label)
    quoted = b'Talks, again Leaders met on Monday, "briefly", and left.'[:40]
    assert quoted in expected and len(quoted) == 40                        # commas and quotes kept, truncated
    assert text.encode_texts(["caf\u00e9\x00!"], 8)[0].tolist() == [99, 97, 102, 195, 169, 33, 0, 0]


def test_imdb_layout_and_layout_errors(tmp_path):
    imdb = tmp_path / "aclImdb"
    reviews = {"neg": ["Bad film, long and dull " * 3, "Poor."], "pos": ["Good.", "A fine, warm story."]}
    for split in ("train", "test"):
        for label, texts in reviews.items():
            (imdb / split / label).mkdir(parents=True)
            for i, review in enumerate(texts):
                (imdb / split / label / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(review)
        (imdb / split / "urls_pos.txt").write_text("http://www.imdb.com/title/tt0000001/usercomments\n")
    (imdb / "train" / "unsup").mkdir()                                     # aclImdb: unlabelled reviews
    (imdb / "train" / "unsup" / "0_0.txt").write_text("Unlabelled review.")
    data = text.load_classification_dataset(f"csv-text:{imdb}", 12, 0.0, seed=0)
    assert data.classes == ["neg", "pos"]
    assert len(data.train) == 4 and len(data.val) == 0
    assert data.test.labels.tolist() == [0, 0, 1, 1]
    assert data.test.images.shape == (4, 12) and data.test.images.dtype == torch.uint8
    assert bytes(data.test.images[0].tolist()) == b"Bad film, lo"                             # truncated
    assert bytes(data.test.images[2].tolist()) == b"Good." + bytes(7)                         # padded
    # Errors: no layout, one class, a test class never trained on.
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="expected train.csv and test.csv") as error:
        text.load_classification_dataset(f"csv-text:{tmp_path / 'nothing'}", 12, 0.1, seed=0)
    assert one_line(error)
    one = tmp_path / "one"
    one.mkdir()
    (one / "train.csv").write_text('"1","A","b"\n"1","C","d"\n')
    (one / "test.csv").write_text('"1","E","f"\n')
    with pytest.raises(DataError, match="one class only") as error:
        text.load_classification_dataset(f"csv-text:{one}", 12, 0.0, seed=0)
    assert one_line(error)
    (one / "test.csv").write_text('"2","E","f"\n')
    with pytest.raises(DataError, match="never occur in training") as error:
        text.load_classification_dataset(f"csv-text:{one}", 12, 0.0, seed=0)
    assert one_line(error)
    (one / "train.csv").write_text('"1","only one field"\n"2"\n')
    with pytest.raises(DataError, match="line 2 has 1 field") as error:
        text.load_classification_dataset(f"csv-text:{one}", 12, 0.0, seed=0)
    assert one_line(error)
    with pytest.raises(DataError, match="needs a path"):
        text.load_text_dataset("csv-text:", 12, 0.0, seed=0)


# ----------------------------------------------------------------------------- tiny runs

TINY = ["--experts", "4", "--expert-hidden", "16", "--vit-dim", "32", "--vit-heads", "2", "--vit-depth", "2",
        "--batch-size", "8", "--threads", "1"]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_tiny_language_model_run_logs_bits_kinds_and_routed_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_sources(tmp_path / "src", 12)
    out, context = tmp_path / "runs", 32
    argv = ["--arch", "gpt", "--dataset", f"text:{tmp_path / 'src'}", "--gating", "topk", "--moe-every", "1",
            *TINY, "--context", str(context), "--steps-per-epoch", "20", "--epochs", "2", "--out", str(out),
            "--run-name", "lm"]
    assert launch.main(argv) == 0
    run = out / "lm"
    dataset = text.load_language_dataset(f"text:{tmp_path / 'src'}", context, 0.1)   # what the run read

    metrics = read_rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in metrics] == [1, 2] and [int(r["step"]) for r in metrics] == [20, 40]
    for row in metrics:
        val_bpb, val_loss = float(row["val_bpb"]), float(row["val_loss"])
        assert math.isfinite(val_bpb) and val_bpb == pytest.approx(val_loss / math.log(2), rel=1e-9)
        assert float(row["train_bpb"]) == pytest.approx(float(row["train_loss"]) / math.log(2), rel=1e-9)
        assert 0 < val_bpb < 8.5 and 0 <= float(row["val_acc"]) <= 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 40
    assert summary["test_bpb"] == pytest.approx(summary["test_loss"] / math.log(2), rel=1e-9)
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["dataset"]["classes"] == list(text.KINDS) and recorded["dataset"]["in_shape"] == [context]
    assert "split by file" in recorded["dataset"]["source"]

    layers, kinds = read_rows(run / "layers.csv"), read_rows(run / "kinds.csv")
    assert {r["split"] for r in kinds} == {"val", "test"}
    moe_layers = sorted({r["layer"] for r in layers})
    assert moe_layers == ["0", "1"] and sorted({r["layer"] for r in kinds}) == moe_layers   # blocks 0 and 1
    assert {int(r["kind"]) for r in kinds} == set(range(len(text.KINDS)))
    streams = {"val": dataset.val, "test": dataset.test}
    checked = 0
    for split, stream in streams.items():
        windows = (len(stream) - 1) // context                              # consecutive evaluation windows
        evaluated = stream.kinds[:windows * context].long()                # kinds of the routed input bytes
        per_kind = torch.bincount(evaluated, minlength=len(text.KINDS)).tolist()
        for epoch in {r["epoch"] for r in kinds if r["split"] == split}:
            for layer in moe_layers:
                k_rows = [r for r in kinds if (r["split"], r["epoch"], r["layer"]) == (split, epoch, layer)]
                l_rows = [r for r in layers if (r["split"], r["epoch"], r["layer"]) == (split, epoch, layer)]
                assert len(k_rows) == 4 * len(text.KINDS) and len(l_rows) == 4
                tokens = {int(r["n_tokens"]) for r in l_rows}
                assert tokens == {windows * context}
                assert sum(int(r["count"]) for r in k_rows) == 2 * windows * context   # top-2, dropless
                for r in l_rows:                                            # per expert, as layers.csv says
                    assert sum(int(k["count"]) for k in k_rows if k["expert"] == r["expert"]) == int(r["n_routed"])
                top1 = [sum(int(k["top1"]) for k in k_rows if int(k["kind"]) == i) for i in range(len(text.KINDS))]
                assert top1 == per_kind                                     # each byte's top-1 once, by its kind
                assert sum(float(k["gate_mass"]) for k in k_rows) == pytest.approx(windows * context, rel=1e-4)
                for k in k_rows:
                    if text.KINDS[int(k["kind"])] not in PYTHON_KINDS:     # .py sources: Python kinds only
                        assert int(k["count"]) == 0
                checked += 1
    assert checked == 2 * 2 + 2                                            # val of 2 epochs, test; 2 layers

    routed = read_rows(run / "test_text.csv")
    take = min(1024, ((len(dataset.test) - 1) // context) * context)
    for layer in moe_layers:
        rows = [r for r in routed if r["layer"] == layer]
        assert [int(r["index"]) for r in rows] == list(range(take))
        assert [int(r["byte"]) for r in rows] == dataset.test.tokens[:take].tolist()
        assert [int(r["kind"]) for r in rows] == dataset.test.kinds[:take].tolist()
        assert all(int(r["experts_used"]) == 2 and 0 <= int(r["top1_expert"]) < 4 for r in rows)
        assert all(0.5 - 1e-6 <= float(r["top1_weight"]) <= 1 for r in rows)


def test_a_tiny_text_classifier_run(tmp_path):
    write_ag_news(tmp_path / "ag")
    out = tmp_path / "runs"
    argv = ["--arch", "gpt", "--dataset", f"csv-text:{tmp_path / 'ag'}", "--gating", "expert-choice", *TINY,
            "--context", "32", "--epochs", "2", "--val-fraction", "0.25", "--out", str(out), "--run-name", "cls"]
    assert launch.main(argv) == 0
    run = out / "cls"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and 0 <= summary["test_acc"] <= 1
    assert summary["test_bpb"] is None
    metrics = read_rows(run / "metrics.csv")
    assert len(metrics) == 2 and all(math.isfinite(float(r["val_loss"])) for r in metrics)
    assert not (run / "kinds.csv").exists() and not (run / "test_text.csv").exists()


def test_a_tiny_language_model_learns_and_sample_py_continues_a_prompt(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_sources(tmp_path / "src", 8)
    out = tmp_path / "runs"
    argv = ["--arch", "gpt", "--dataset", f"text:{tmp_path / 'src'}", "--gating", "topk", *TINY, "--context", "32",
            "--steps-per-epoch", "15", "--epochs", "2", "--lr", "3e-3", "--val-fraction", "0.2", "--out", str(out),
            "--run-name", "lm"]
    assert launch.main(argv) == 0
    rows = read_rows(out / "lm" / "metrics.csv")
    assert float(rows[-1]["val_bpb"]) < float(rows[0]["train_bpb"]) < 8.5     # below the 8 bits of a guess, falling
    sampled = subprocess.run([sys.executable, "sample.py", str(out / "lm"), "--prompt", "def ", "--tokens", "40",
                              "--top-k", "5"], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("def ") and len(sampled.stdout.encode()) >= 44


def test_the_language_model_gives_the_same_logits_and_gradients_with_every_expert_dispatch(tmp_path):
    from moelab.layers.experts import dispatch_as

    model = lm("--gating topk", tmp_path).train()
    tokens = torch.randint(0, 256, (3, T))
    results = {}
    for dispatch in ("grouped", "padded", "grouped_mm"):
        model.zero_grad()
        with dispatch_as(model, dispatch):
            torch.manual_seed(1)
            logits = model(tokens)
            logits = logits if torch.is_tensor(logits) else logits.logits
        logits.square().mean().backward()
        results[dispatch] = (logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    for dispatch in ("padded", "grouped_mm"):
        torch.testing.assert_close(results[dispatch][0], results["grouped"][0], rtol=1e-4, atol=1e-5)
        for got, want in zip(results[dispatch][1], results["grouped"][1]):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
