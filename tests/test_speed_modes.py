"""Training-step speed modes: auxiliary losses computed only where they are used, mixed
precision (--amp) and torch.compile (--compile), each against the plain float32 eager step."""
import json

import pandas as pd
import pytest
import torch

from moelab.layers import aux_losses
from moelab.layers.experts import MLPExperts, dispatch_report
from moelab.layers.moe import MoE
from moelab.layers.precision import Precision
from moelab.layers.routers import build_router, set_loss_names
from moelab.layers.routing import GATING_CHOICES
from moelab.models.builder import build_model
from moelab.training import launch
from moelab.training.config import Config

N, D, E, K = 40, 12, 6, 5
TIME_COLUMNS = ["samples_per_s", "epoch_time_s", "wall_time_s"]


def make_moe(gating: str, seed: int = 0) -> MoE:
    torch.manual_seed(seed)
    return MoE(build_router(gating, D, E, top_k=2), MLPExperts(E, D, 16, K))


@pytest.mark.parametrize("gating", GATING_CHOICES)
def test_a_router_computes_only_the_losses_it_is_asked_for_and_the_same_values(gating):
    moe = make_moe(gating).train()
    x = torch.randn(N, D)
    torch.manual_seed(1)
    every = moe(x).aux
    assert set(every) == set(aux_losses.AUX_NAMES)
    for names in [("balance",), ("cv", "z"), ("entropy", "kl_uniform", "centroid"), ()]:
        set_loss_names(moe, names)
        torch.manual_seed(1)
        some = moe(x).aux
        assert set(some) == set(names)
        for name in names:
            assert torch.equal(some[name], every[name]), name


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


def test_router_scores_stay_float32_under_autocast():
    router = build_router("topk", D, E, top_k=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(torch.randn(N, D))
    assert routing.logits.dtype == torch.float32 and routing.probs.dtype == torch.float32


@pytest.mark.parametrize("dispatch", ["grouped", "padded", "grouped_mm"])
def test_expert_bank_under_bf16_autocast_equals_autograd_and_keeps_float32_gradients(dispatch):
    torch.manual_seed(0)
    bank = MLPExperts(E, D, 32, K, dispatch=dispatch)
    x = torch.randn(N, D)
    counts = [7, 0, 11, 5, 9, 8]

    def run(amp: bool, fused: bool = True):
        bank.fused = fused
        bank.zero_grad()
        with Precision(amp).autocast():
            out = bank.forward_sorted(x, counts)
        out.float().square().sum().backward()
        return out, [p.grad.clone() for p in bank.parameters()]

    out32, grads32 = run(False)
    assert bank.ran == {dispatch}
    bank.ran = set()
    out16, grads16 = run(True)
    assert bank.ran == {dispatch} and bank.fallback is None     # grouped_mm ran in float32 and in bfloat16
    reference16, reference_grads16 = run(True, fused=False)      # plain autograd under the same autocast
    assert out16.dtype == torch.bfloat16
    assert torch.allclose(out16.float(), reference16.float(), rtol=1e-2, atol=1e-2)
    assert torch.allclose(out16.float(), out32, rtol=0.05, atol=0.05)
    for g16, reference, g32 in zip(grads16, reference_grads16, grads32):
        assert g16.dtype == torch.float32
        assert (g16 - reference).norm() <= 0.02 * reference.norm() + 1e-6
        # bf16 keeps 8 bits of mantissa, and a ReLU whose input changes sign passes no gradient.
        assert (g16 - g32).norm() <= 0.1 * g32.norm() + 1e-6


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
