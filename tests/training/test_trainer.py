"""moelab/training/trainer.py: divergence, interruption, resumption and the speed modes of training."""
import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from runs import base_args
from synthetic import write_mnist_layout

from moelab import data, distributed
from moelab.layers.experts import dispatch_report
from moelab.layers.routing import GATING_CHOICES
from moelab.models.builder import build_model
from moelab.paths import REPO_ROOT
from moelab.training import launch, trainer
from moelab.training.checkpointing import Checkpoints
from moelab.training.config import Config
from moelab.training.reporting import RunReport
from moelab.training.step import train_step

TIME_COLUMNS = ["samples_per_s", "epoch_time_s", "wall_time_s"]
REPO = REPO_ROOT


def cli(tmp_path, data_dir, name, *extra):
    argv = ["--data-dir", str(data_dir), "--out", str(tmp_path / "runs"), "--run-name", name, "--epochs", "2",
            "--batch-size", "32", "--experts", "4", "--expert-hidden", "16", "--train-eval-size", "100",
            "--threads", "1", *extra]
    assert launch.main(argv) == 0
    run_dir = tmp_path / "runs" / name
    return pd.read_csv(run_dir / "metrics.csv"), json.loads((run_dir / "summary.json").read_text())


def test_logging_only_losses_are_sampled_on_the_logged_steps_and_never_change_training(tmp_path, tiny_data):
    every_step, _ = cli(tmp_path, tiny_data, "every", "--log-every", "1")
    sampled, _ = cli(tmp_path, tiny_data, "sampled", "--log-every", "4")
    never, _ = cli(tmp_path, tiny_data, "never", "--log-every", "0")
    trained = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "aux_balance", "train_load_cv"]
    # The losses outside the objective have no say in the weights: the three runs are one run.
    pd.testing.assert_frame_equal(every_step[trained], sampled[trained], check_exact=True)
    pd.testing.assert_frame_equal(every_step[trained], never[trained], check_exact=True)
    # Sampled means are means of the same values over fewer steps; without logged steps there are none.
    assert sampled.aux_z.notna().all() and (sampled.aux_z - every_step.aux_z).abs().max() < 0.5 * every_step.aux_z.max()
    assert never.aux_z.isna().all() and never.aux_cv.isna().all()


def test_amp_training_learns_and_writes_the_same_logs(tmp_path, tiny_data):
    plain, _ = cli(tmp_path, tiny_data, "fp32", "--gating", "topk")
    amp, summary = cli(tmp_path, tiny_data, "amp", "--gating", "topk", "--amp")
    assert summary["precision"] == "autocast bfloat16" and summary["status"] == "completed"
    assert list(amp.columns) == list(plain.columns)
    # measured on an Intel Xeon: val acc 1.00 in both runs for seeds 0-9 (margins 0.2 and 0.1, 6 of the
    # 60 validation images); train loss 0.38 -> 0.0006
    assert amp.train_loss.iloc[-1] < amp.train_loss.iloc[0] and amp.val_acc.iloc[-1] > 0.8
    assert abs(amp.val_acc.iloc[-1] - plain.val_acc.iloc[-1]) < 0.1


@pytest.mark.parametrize("model", ["dense"] + list(GATING_CHOICES) + ["hard+grouped_mm", "topk+grouped_mm"])
def test_compiled_step_equals_eager(model):
    gating, _, dispatch = model.partition("+")
    cfg = Config(model="dense", dense_match="active") if model == "dense" else \
        Config(gating=gating, experts=4, expert_hidden=16, top_k=2, expert_dispatch=dispatch or "auto")
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = build_model(cfg.model_spec(), (1, 28, 28), 10).train()
        if compiled:
            # The graph capture and its autograd for every router; the code generation of the
            # default backend is covered by the CLI test below (it takes minutes per MoE on 2 cores).
            net.compile(backend="aot_eager", dynamic=True)
        x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
        torch.manual_seed(1)                               # the same router noise
        output = net(x)
        loss = torch.nn.functional.cross_entropy(output if torch.is_tensor(output) else output.logits, y)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in net.parameters()]))
    if dispatch:   # float32: the compiled graph runs grouped in its place, and the report says why
        assert dispatch_report(net) == "expert dispatch: grouped_mm ran grouped (in place of grouped_mm: " \
                                       "torch.compile traces grouped_mm in bfloat16 or float16 only, not float32)"
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        if eager_grad is None:
            assert compiled_grad is None or compiled_grad.abs().max() == 0
        else:
            assert torch.allclose(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)


def test_compiled_dense_run_matches_eager_and_reports_its_compile_time_apart(tmp_path, tiny_data):
    eager, eager_summary = cli(tmp_path, tiny_data, "eager", "--model", "dense")
    compiled, summary = cli(tmp_path, tiny_data, "compiled", "--model", "dense", "--compile")
    assert eager_summary["compile_s"] is None and summary["compile_s"] > 0
    pd.testing.assert_frame_equal(compiled.drop(columns=TIME_COLUMNS), eager.drop(columns=TIME_COLUMNS),
                                  rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("arch", ["mlp", "vit"])
def test_grouped_mm_dispatch_trains_like_grouped_through_the_cli_and_says_so(tmp_path, tiny_data, capsys, arch):
    """The mixture classifier and the ViT trained with torch's grouped GEMM follow the grouped
    dispatch's run up to float rounding, and the log names the dispatch that ran."""
    extra = ["--arch", "vit", "--vit-dim", "16", "--vit-heads", "2", "--vit-depth", "2", "--vit-patch", "7"] \
        if arch == "vit" else []
    grouped, _ = cli(tmp_path, tiny_data, f"{arch}-grouped", "--gating", "topk", "--expert-dispatch", "grouped", *extra)
    assert "expert dispatch: grouped ran grouped" in capsys.readouterr().out
    grouped_mm, summary = cli(tmp_path, tiny_data, f"{arch}-grouped_mm", "--gating", "topk",
                              "--expert-dispatch", "grouped_mm", *extra)
    assert "expert dispatch: grouped_mm ran grouped_mm\n" in capsys.readouterr().out
    assert summary["status"] == "completed"
    pd.testing.assert_series_equal(grouped_mm.train_loss, grouped.train_loss, rtol=1e-3)
    assert grouped_mm.train_loss.iloc[-1] < grouped_mm.train_loss.iloc[0]


def test_channels_last_changes_the_memory_layout_not_the_maths(tmp_path, tiny_data):
    """--channels-last: NHWC image batches and conv weights; one step computes what the default
    layout computes, up to float rounding, and a run goes through."""
    torch.manual_seed(0)
    cfg = Config(model="dense", trunk="resnet", trunk_channels=4)
    plain = build_model(cfg.model_spec(), (3, 16, 16), 10)
    nhwc = build_model(cfg.model_spec(), (3, 16, 16), 10)
    nhwc.load_state_dict(plain.state_dict())
    nhwc = nhwc.to(memory_format=torch.channels_last)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for net, batch in ((plain, x), (nhwc, x.contiguous(memory_format=torch.channels_last))):
        F.cross_entropy(net(batch).logits, y).backward()
    assert torch.allclose(nhwc(x.contiguous(memory_format=torch.channels_last)).logits, plain(x).logits, atol=1e-5)
    for (name, a), b in zip(plain.named_parameters(), nhwc.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in nhwc.parameters())

    split = data.Split(torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8), torch.arange(6))
    batches = [next(data.BatchLoader(split, 4, (0.5,) * 3, (0.25,) * 3, shuffle=False, augment=True, seed=0,
                                     channels_last=layout).iter_epoch(0))[0] for layout in (True, False)]
    assert batches[0].is_contiguous(memory_format=torch.channels_last) and not batches[0].is_contiguous()
    assert torch.equal(*batches)

    argv = ["--data-dir", str(tiny_data), "--out", str(tmp_path), "--run-name", "nhwc", "--epochs", "1",
            "--batch-size", "32", "--trunk", "resnet", "--trunk-channels", "4", "--model", "dense",
            "--channels-last", "--threads", "1", "--train-eval-size", "50"]
    assert launch.main(argv) == 0
    assert json.loads((tmp_path / "nhwc" / "config.json").read_text())["config"]["channels_last"] is True


def test_non_finite_loss_stops_and_keeps_logs(tmp_path, tiny_data, monkeypatch, capsys):
    original = train_step
    calls = {"n": 0}

    def poisoned(model, optimizer, x, y, *rest):
        calls["n"] += 1
        return original(model, optimizer, x * float("nan") if calls["n"] > 25 else x, y, *rest)

    monkeypatch.setattr(trainer, "train_step", poisoned)   # epoch 1 = 17 steps: fails in epoch 2
    code = launch.main(base_args(tmp_path, tiny_data))
    run_dir = tmp_path / "runs" / "run"
    assert code == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "--lr" in err and "--z-coef" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and "non-finite" in summary["error"]
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 1                # epoch 1 kept
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_signal_arriving_while_the_ranks_agree_still_stops_the_run(tmp_path, tiny_data, monkeypatch):
    """A signal that lands inside the per-step agreement (in a distributed run: during the
    all-reduce) must not be lost to the answer computed before it came: the run stops one
    step later."""
    agree, calls = distributed.agreed_signal, {"n": 0}

    def signal_during_agreement(cluster, signum):
        answer = agree(cluster, signum)
        calls["n"] += 1
        if calls["n"] == 5:
            signal.raise_signal(signal.SIGTERM)      # the handler runs here, before the answer returns
        return answer

    monkeypatch.setattr(distributed, "agreed_signal", signal_during_agreement)
    assert launch.main(base_args(tmp_path, tiny_data)) == 128 + signal.SIGTERM
    state = torch.load(tmp_path / "runs" / "run" / "checkpoint.pt", weights_only=True)
    assert state["global_step"] == 6 and calls["n"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_resumes_to_identical_logs(tmp_path, monkeypatch, sig):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    data_dir = tmp_path / "data"
    write_mnist_layout(data_dir, n_train=3000, n_test=100)
    args = [*base_args(tmp_path, data_dir), "--batch-size", "8", "--epochs", "3", "--gating", "noisy-topk",
            "--dropout", "0.1", "--log-every", "10"]
    steps_per_epoch = 338  # 2700 training samples / 8

    reference = tmp_path / "runs" / "reference"
    assert launch.main(_renamed(args, "reference")) == 0

    command = [sys.executable, "project_moe/train.py", *_renamed(args, "cut")]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cut = tmp_path / "runs" / "cut"
    _wait_for_step(cut / "experts.csv", steps_per_epoch + 40, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "--resume" in err and "Traceback" not in err
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["step_in_epoch"] < steps_per_epoch   # stopped mid-epoch
    assert json.loads((cut / "summary.json").read_text())["status"] == "interrupted"

    resumed = subprocess.run(command + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("metrics.csv", "experts.csv", "routing.csv"):
        a, b = pd.read_csv(reference / name), pd.read_csv(cut / name)
        pd.testing.assert_frame_equal(a.drop(columns=TIME_COLUMNS, errors="ignore"),
                                      b.drop(columns=TIME_COLUMNS, errors="ignore"), check_exact=True)
    summary_a = json.loads((reference / "summary.json").read_text())
    summary_b = json.loads((cut / "summary.json").read_text())
    for key in ("status", "test_loss", "test_acc", "best_val_acc", "best_epoch", "steps", "params_total"):
        assert summary_a[key] == summary_b[key], key


def _renamed(args, name):
    args = list(args)
    args[args.index("--run-name") + 1] = name
    return args


def _wait_for_step(path, step, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if path.exists():
            steps = pd.read_csv(path)["step"] if path.stat().st_size else []
            if len(steps) and steps.max() >= step:
                return
        time.sleep(0.02)
    raise TimeoutError(f"no step {step} in {path}")


class _RecordedReport(RunReport):
    def __init__(self, *args):
        super().__init__(*args)
        self.lines, self.summaries = [], []

    def say(self, message, error=False):
        self.lines.append(message)

    def write_summary(self, summary):
        self.summaries.append(summary)


class _RecordedCheckpoints(Checkpoints):
    def __init__(self, *args):
        super().__init__(*args)
        self.saved = []

    def save(self, name, state):
        self.saved.append(name)
        super().save(name, state)


def test_the_trainer_reports_and_checkpoints_through_the_collaborators_it_is_given(tmp_path, tiny_data):
    """Trainer(..., checkpoints, report): every checkpoint, console line and summary of the run goes
    through the two objects passed in (here recording ones), none around them."""
    cfg = Config(experts=4, expert_hidden=16, epochs=2, batch_size=32, train_eval_size=100, threads=1,
                 out=str(tmp_path / "runs"))
    run_dir = tmp_path / "runs" / "given"
    run_dir.mkdir(parents=True)
    dataset = data.load_dataset("mnist", tiny_data, seed=0)
    cluster, device = distributed.SINGLE_PROCESS, torch.device("cpu")
    checkpoints = _RecordedCheckpoints(run_dir, cluster, device)
    report = _RecordedReport(run_dir, cluster, cfg.out)
    assert trainer.Trainer(cfg, run_dir, dataset, device, cluster, checkpoints, report).run(resume=False) == 0
    # best.pt after epochs that improved on validation, checkpoint.pt after each epoch, model.pt at the end
    assert checkpoints.saved.count("checkpoint.pt") == 2 and "model.pt" in checkpoints.saved
    assert "best.pt" in checkpoints.saved and (run_dir / "checkpoint.pt").exists()
    assert [s["status"] for s in report.summaries] == ["completed"] and report.summaries[0]["epochs_done"] == 2
    assert not (run_dir / "summary.json").exists()          # the recording report wrote none
    assert sum(line.startswith("epoch ") for line in report.lines) == 2 and report.lines[-1].startswith("test loss")
