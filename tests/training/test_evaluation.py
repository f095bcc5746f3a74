"""moelab/training/evaluation.py: test-time flips, epoch selection, and what a text run evaluates and logs."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from runs import TINY, cli, read_rows
from synthetic import PYTHON_KINDS, LogitsModel, write_ag_news, write_csv, write_sources

from moelab.data import text
from moelab.training import launch
from moelab.training.evaluation import evaluate


def test_flip_augmentation_at_test_time_averages_the_logits_of_both_images():
    torch.manual_seed(0)
    net = LogitsModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))).eval()
    x, y = torch.randn(8, 1, 3, 4), torch.randint(0, 3, (8,))
    logits = (net(x).logits + net(x.flip(-1)).logits) / 2
    result = evaluate(net, [(x, y)], 3, tta_flip=True)
    assert result.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert result.acc == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_a_regression_whose_validation_r2_is_undefined_still_selects_an_epoch(tmp_path):
    path = tmp_path / "small.csv"
    write_csv(path, rows=14)
    assert cli(tmp_path, "--dataset", f"csv:{path}", "--target", "price", "--experts", "2", "--epochs", "3",
               "--val-fraction", "0.1") == 0
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["best_epoch"] >= 1
    assert summary["best_val_r2"] is None or math.isnan(summary["best_val_r2"])


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
