"""sample.py end to end: a tiny language model trained by train.py continues a prompt."""
import subprocess
import sys

from runs import PROJECT, TINY, read_rows
from synthetic import write_sources

from moelab.training import launch


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
