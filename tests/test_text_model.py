"""Byte-level text: the shipped corpus, splits by file, byte kinds, the causal language model,
the routers it refuses, the classification layouts, and a tiny run through the CLI."""
import csv
import hashlib
import io
import json
import math
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
import torch

from moelab.data import text
from moelab.data.images import DataError
from moelab.models.builder import build_model
from moelab.training.config import parse_args
from moelab.training.launch import main as train_main

PROJECT = Path(__file__).resolve().parents[1] / "project_moe"
SOURCE = '''import os


def área(x, y=2):
    """Docstring."""
    if x > 1.5:  # a comment
        return x + y
    return None
'''


def python_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"module_{i:02d}.py"
        path.write_text(f"# file {i}\n" + SOURCE.replace("área", f"f{i}") * (3 + i % 4), encoding="utf-8")
        paths.append(path)
    return paths


def test_the_shipped_corpus_is_checked_and_holds_no_test_suite(tmp_path):
    assert hashlib.md5(text.CORPUS_ASSET.read_bytes()).hexdigest() == text.CORPUS_MD5
    files = text.read_corpus_archive()
    assert len(files) > 700
    for path, _ in files:
        parts = Path(path).parts
        assert not any(p in ("test", "tests", "idle_test") or p.startswith("test_") for p in parts), path
    damaged = tmp_path / "corpus.tar.xz"
    blob = bytearray(text.CORPUS_ASSET.read_bytes())
    blob[1000] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="md5 mismatch") as error:
        text.read_corpus_archive(damaged)
    assert "\n" not in str(error.value)


def test_split_by_file_is_disjoint_fixed_and_keeps_held_out_files_out_of_training(tmp_path, monkeypatch):
    files = [(f"dir/f{i}.txt", f"text of file {i}\n".encode() * (i + 1)) for i in range(30)]
    splits = text.split_by_file(files, val_share=0.1)
    names = [path for part in splits.values() for path, _ in part]
    assert sorted(names) == sorted(p for p, _ in files) and all(splits.values())
    assert text.split_by_file(files[::-1], val_share=0.1) == splits
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    python_files(tmp_path / "src", 12)
    dataset = text.load_language_dataset(f"text:{tmp_path / 'src'}", 16, 0.1)
    train_bytes = bytes(dataset.train.tokens.tolist())
    assert dataset.test.files and not set(dataset.test.files) & set(dataset.train.files)
    for name in dataset.test.files + dataset.val.files:
        assert (tmp_path / "src" / name).read_bytes() not in train_bytes


def test_byte_kinds_follow_pythons_tokenize():
    data = SOURCE.encode("utf-8")
    kinds = text.python_kinds(data)
    starts = [0]
    for line in io.BytesIO(data).readlines():
        starts.append(starts[-1] + len(line))
    expected = {tokenize.NAME: "name", tokenize.OP: "operator", tokenize.NUMBER: "number",
                tokenize.STRING: "string", tokenize.COMMENT: "comment"}
    seen = set()
    for token in tokenize.tokenize(io.BytesIO(data).readline):
        if token.type not in expected:
            continue
        kind = "keyword" if token.string in ("import", "def", "if", "return", "None") else expected[token.type]
        row, col = token.start
        line = data[starts[row - 1]:starts[row]].decode()
        start = starts[row - 1] + len(line[:col].encode())
        length = len(token.string.encode())
        assert {text.KINDS[k] for k in kinds[start:start + length]} == {kind}, token.string
        seen.add(kind)
    assert seen == {"name", "keyword", "operator", "number", "string", "comment"}
    assert text.KINDS[kinds[data.index(b" x > 1.5")]] == "space"
    assert text.KINDS[kinds[data.index(b"    if")]] == "newline"          # indentation
    plain = text.char_kinds(b"Ab 7,\n")
    assert [text.KINDS[k] for k in plain] == ["letter", "letter", "space", "digit", "punctuation", "newline"]


@pytest.mark.parametrize("bad, message", [(b"", "no text"), (b"ab\x00cd", "NUL"), (b"caf\xe9", "not UTF-8")])
def test_unusable_text_is_refused_in_one_line(tmp_path, bad, message):
    path = tmp_path / "input.txt"
    path.write_bytes(bad)
    with pytest.raises(DataError, match=message) as error:
        text.read_text_files(path)
    assert "\n" not in str(error.value)


ALLOWED = ["--gating hard", "--gating topk", "--gating noisy-topk", "--gating gumbel",
           "--gating topk --shared-experts 1", "--gating topk --bias-balance-rate 0.01",
           "--gating hard --drop-policy position --capacity-factor 1.0", "--model dense --dense-match active",
           "--router-score cosine --gating topk"]


@pytest.mark.parametrize("flags", ALLOWED)
def test_a_later_byte_never_changes_an_earlier_output(flags):
    cfg = parse_args(f"--arch gpt --dataset python-stdlib --experts 4 --top-k 2 --vit-dim 32 --vit-heads 2 "
                     f"--vit-depth 2 --moe-every 1 --expert-hidden 16 --context 16 {flags}".split())
    torch.manual_seed(0)
    model = build_model(cfg.model_spec(), (16,), 256).eval()
    tokens = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        before = model(tokens).logits                                      # (T, 256)
        for t in (0, 5, 14):
            changed = tokens.clone()
            changed[0, t + 1:] = torch.randint(0, 256, (15 - t,))
            after = model(changed).logits
            torch.testing.assert_close(after[:t + 1], before[:t + 1])
            assert not torch.allclose(after[t + 1:], before[t + 1:])


@pytest.mark.parametrize("flags, says", [
    ("--gating expert-choice", "expert-choice cannot route a causal language model"),
    ("--gating soft-slots", "soft-slots cannot route a causal language model"),
    ("--router-score attention --gating topk", "later bytes"),
    ("--drop-policy priority --gating topk", "later bytes"),
    ("--drop-policy position --gating topk", "later bytes"),
])
def test_routers_that_see_later_bytes_are_refused_for_the_language_model(tmp_path, capsys, flags, says):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\n" * 50)
    code = train_main(f"--arch gpt --dataset text:{corpus} --out {tmp_path / 'runs'} {flags}".split())
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and says in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_text_needs_gpt_and_gpt_needs_text(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\n" * 50)
    assert train_main(f"--dataset text:{corpus} --out {tmp_path / 'runs'}".split()) == 2
    assert train_main(f"--arch gpt --dataset mnist --out {tmp_path / 'runs'}".split()) == 2
    assert not (tmp_path / "runs").exists()
    from moelab.training.config import validate
    validate(parse_args(f"--arch gpt --dataset csv-text:{tmp_path} --gating expert-choice --out "
                        f"{tmp_path / 'runs'}".split()))          # a classifier may use it


def write_ag_news(root: Path) -> None:
    root.mkdir()
    rows = {"train": [("1", "Stocks, again", "Markets rose, then fell."), ("2", "Goal", "A late winner.")] * 10,
            "test": [("2", "Match", "Drawn, 1-1."), ("1", "Bank", "Rates held.")]}
    for split, content in rows.items():
        with open(root / f"{split}.csv", "w", newline="") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows(content)


def test_ag_news_and_imdb_layouts_load_as_padded_bytes(tmp_path):
    write_ag_news(tmp_path / "ag")
    data = text.load_classification_dataset(f"csv-text:{tmp_path / 'ag'}", 24, 0.1, seed=0)
    assert data.classes == ["1", "2"] and data.test.labels.tolist() == [1, 0]
    assert data.test.images.shape == (2, 24) and data.test.images.dtype == torch.uint8
    assert bytes(data.test.images[0].tolist()).rstrip(b"\x00") == b"Match Drawn, 1-1."
    assert len(data.train) + len(data.val) == 20
    imdb = tmp_path / "imdb"
    for split in ("train", "test"):
        for label, words in (("neg", "bad " * 20), ("pos", "good")):
            (imdb / split / label).mkdir(parents=True)
            for i in range(3):
                (imdb / split / label / f"{i}.txt").write_text(words)
    data = text.load_classification_dataset(f"csv-text:{imdb}", 16, 0.0, seed=0)
    assert data.classes == ["neg", "pos"] and data.test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert bytes(data.test.images[0].tolist()) == (b"bad " * 4)                      # truncated
    assert bytes(data.test.images[3].tolist()) == b"good" + bytes(12)                # padded
    with pytest.raises(DataError, match="expected train.csv"):
        text.load_classification_dataset(f"csv-text:{tmp_path}", 16, 0.1, seed=0)
    for split in ("train", "test"):
        for path in (imdb / split / "pos").iterdir():
            path.unlink()
        (imdb / split / "pos").rmdir()
    with pytest.raises(DataError, match="one class"):
        text.load_classification_dataset(f"csv-text:{imdb}", 16, 0.1, seed=0)


TINY = "--vit-dim 32 --vit-heads 2 --vit-depth 2 --expert-hidden 16 --experts 4 --gating topk --threads 1"


def test_a_tiny_language_model_trains_logs_bits_and_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    python_files(tmp_path / "src", 8)
    out = tmp_path / "runs"
    argv = (f"--arch gpt --dataset text:{tmp_path / 'src'} {TINY} --context 32 --batch-size 8 --steps-per-epoch 15 "
            f"--epochs 2 --lr 3e-3 --val-fraction 0.2 --out {out} --run-name lm").split()
    assert train_main(argv) == 0
    run = out / "lm"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    for row in rows:
        assert math.isclose(float(row["val_bpb"]), float(row["val_loss"]) / math.log(2), rel_tol=1e-9)
    assert float(rows[-1]["val_bpb"]) < float(rows[0]["train_bpb"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["test_bpb"] > 0
    kinds = [r for r in csv.DictReader(open(run / "kinds.csv")) if r["split"] == "test"]
    layers = [r for r in csv.DictReader(open(run / "layers.csv")) if r["split"] == "test"]
    for layer in {r["layer"] for r in layers}:
        routed = sum(int(r["n_routed"]) for r in layers if r["layer"] == layer)
        assert sum(int(r["count"]) for r in kinds if r["layer"] == layer) == routed
        tokens = int(next(r for r in layers if r["layer"] == layer)["n_tokens"])
        assert sum(int(r["top1"]) for r in kinds if r["layer"] == layer) == tokens
    assert {int(r["kind"]) for r in kinds if int(r["count"])} <= set(range(len(text.KINDS)))
    assert (run / "test_text.csv").is_file()
    sampled = subprocess.run([sys.executable, "sample.py", str(run), "--prompt", "def ", "--tokens", "40",
                              "--top-k", "5"], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert sampled.returncode == 0 and sampled.stdout.startswith("def ") and len(sampled.stdout.encode()) >= 44


def test_a_tiny_text_classifier_trains(tmp_path):
    write_ag_news(tmp_path / "ag")
    out = tmp_path / "runs"
    argv = (f"--arch gpt --dataset csv-text:{tmp_path / 'ag'} {TINY} --context 32 --batch-size 8 --epochs 2 "
            f"--out {out} --run-name cls").split()
    assert train_main(argv) == 0
    summary = json.loads((out / "cls" / "summary.json").read_text())
    assert summary["status"] == "completed" and 0 <= summary["test_acc"] <= 1 and summary["test_bpb"] is None
