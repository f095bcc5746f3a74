"""The benchmark's references compute what the MoE layer computes, and both commands write
their tables. Speed itself is never asserted."""
import pandas as pd
import pytest
import torch

from moelab.bench import cli, layer, timing


def test_layer_references_compute_the_same_layer():
    cfg = timing.LayerConfig(samples=64, d_model=8, hidden=16, experts=4, k=2)
    modules = layer.build_layer_candidates(cfg, torch.device("cpu"))
    x = torch.randn(cfg.samples, cfg.d_model)
    with torch.no_grad():
        moe = modules["moe"](x)
        masked = modules["masked_loop"](x)
        soft = modules["soft_all_experts"](x)
        dense = modules["dense_same_active"](x)
    assert torch.allclose(masked, moe.logits, atol=1e-5)                       # same experts, same routing
    assert ((moe.routing.weights != 0).sum(dim=1) == 2).all()
    assert soft.logits.shape == dense.shape == moe.logits.shape == (64, 8)
    # the dense reference has the active width of k experts
    assert modules["dense_same_active"][0].out_features == cfg.k * cfg.hidden


def test_bench_layer_writes_ratios_for_every_implementation(tmp_path):
    out = tmp_path / "layer.csv"
    argv = ["layer", "--config", "4:2", "--samples", "64", "--d-model", "8", "--hidden", "16", "--rounds", "2",
            "--per-round", "1", "--warmup", "0", "--device", "cpu", "--threads", "1", "--csv", str(out)]
    assert cli.main(argv) == 0
    table = pd.read_csv(out)
    assert set(table.impl) == {"dense_same_active", "moe", "moe_grouped", "moe_padded", "moe_grouped_mm",
                               "soft_all_experts", "masked_loop"}
    assert (table[table.impl == "moe_grouped"].vs_grouped == 1.0).all()
    assert set(table["mode"]) == {"fwd", "fwd+bwd"}
    assert (table[table.impl == "dense_same_active"].vs_dense == 1.0).all()
    assert (table.median_ms > 0).all() and (table.vs_dense_min <= table.vs_dense_max).all()


def test_bench_train_writes_one_row_per_model_and_the_step_cost_rows(tmp_path, tiny_data):
    out = tmp_path / "train.csv"
    argv = ["train", "--data-dir", str(tiny_data), "--rounds", "1", "--batch-size", "64", "--device", "cpu",
            "--threads", "1", "--csv", str(out)]
    assert cli.main(argv) == 0
    table = pd.read_csv(out).set_index("model")
    assert list(table.index) == ["dense_active", "dense_params", "moe_soft", "moe_hard", "moe_top2",
                                 "moe_expert_choice", "moe_hard_grouped", "moe_hard_padded", "moe_hard_grouped_mm",
                                 "moe_hard_plain_routing", "bare_matmuls_dense_active", "bare_matmuls_moe_hard",
                                 "layers_dense_active", "layers_moe_hard_grouped", "layers_moe_hard_padded",
                                 "layers_moe_hard_grouped_mm"]
    assert table.loc["dense_active", "vs_dense_active"] == 1.0
    assert (table.samples_per_s > 0).all()
    assert table.loc["dense_active", "optimizer_vs_dense_active"] == 1.0
    trained = 10                                                                # rows of whole training steps
    assert (table.optimizer_vs_dense_active.iloc[:trained] > 0).all()
    assert table.optimizer_vs_dense_active.iloc[trained:].isna().all()
    # the MoE's router, losses and dispatch are extra operations in every step
    assert table.loc["moe_hard", "ops_per_step"] > table.loc["dense_active", "ops_per_step"] > 0
    # one batched product per layer: fewer operations than a product per expert
    assert table.loc["moe_hard_padded", "ops_per_step"] < table.loc["moe_hard_grouped", "ops_per_step"]
    assert table.loc["moe_hard_grouped_mm", "ops_per_step"] < table.loc["moe_hard_grouped", "ops_per_step"]
    # the same layer with its routing in plain autograd operations dispatches more of them
    assert table.loc["moe_hard_plain_routing", "ops_per_step"] > table.loc["moe_hard", "ops_per_step"]
    assert table.ops_per_step.iloc[trained:].isna().all()


def test_bench_train_adds_amp_rows_beside_the_eager_ones(tmp_path, tiny_data):
    out = tmp_path / "train.csv"
    argv = ["train", "--data-dir", str(tiny_data), "--rounds", "1", "--batch-size", "64", "--steps", "2",
            "--modes", "eager", "amp", "--device", "cpu", "--threads", "1", "--csv", str(out)]
    assert cli.main(argv) == 0
    table = pd.read_csv(out).set_index("model")
    assert {"dense_active+amp", "dense_params+amp", "moe_hard+amp", "moe_hard_grouped_mm+amp"} <= set(table.index)
    assert "moe_hard" in table.index and (table.loc[["moe_hard+amp"], "samples_per_s"] > 0).all()
    # autocast casts the weights and inputs of every matmul: more operations, not fewer
    assert table.loc["moe_hard+amp", "ops_per_step"] > table.loc["moe_hard", "ops_per_step"]
    assert table.compile_s.isna().all()


def test_bench_train_times_the_vit_convergence_models_on_an_image_folder(tmp_path, monkeypatch):
    from test_data import write_folder

    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_folder(tmp_path / "data" / "cifar10-jpeg", {"cat": 12, "dog": 12}, fmt="jpg", size=32)
    out = tmp_path / "vit.csv"
    argv = ["train", "--family", "vit", "--data-dir", str(tmp_path / "data"), "--rounds", "1", "--batch-size", "8",
            "--steps", "2", "--device", "cpu", "--threads", "1", "--csv", str(out)]
    assert cli.main(argv) == 0
    table = pd.read_csv(out).set_index("model")
    assert list(table.index) == ["moe_expert_choice", "moe_top2", "dense_active", "dense_params"]   # no MNIST rows
    assert table.loc["dense_active", "vs_dense_active"] == 1.0 and (table.samples_per_s > 0).all()
    # each model is the grid's: routed ViTs hold 8 experts' weights, the params-matched dense ViT as many
    assert table.loc["moe_top2", "ops_per_step"] > table.loc["dense_active", "ops_per_step"] > 0


def test_bench_train_refuses_vit_with_amp_or_outside_train(capsys):
    for argv in (["train", "--family", "vit", "--modes", "eager", "amp"], ["layer", "--family", "vit"]):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2
        assert "--family vit" in capsys.readouterr().err


def test_bench_refuses_to_overwrite_a_table_and_keeps_the_printed_report(tmp_path, capsys):
    out = tmp_path / "layer.csv"
    argv = ["layer", "--config", "2:1", "--samples", "16", "--d-model", "4", "--hidden", "8", "--rounds", "1",
            "--per-round", "1", "--warmup", "0", "--device", "cpu", "--threads", "1", "--csv", str(out)]
    assert cli.main(argv) == 0
    report = out.with_suffix(".txt").read_text()
    assert "headline" in report and report in capsys.readouterr().out
    before = out.read_bytes()
    with pytest.raises(SystemExit) as refused:
        cli.main(argv)
    assert refused.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    out.write_text("stale\n")
    assert cli.main(argv + ["--overwrite"]) == 0
    assert out.read_text() != "stale\n" and "headline" in out.with_suffix(".txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.csv", "layer.txt"]   # no temporary file left
    with pytest.raises(SystemExit) as refused:
        cli.main(argv[:-1] + [str(tmp_path / "layer.txt")])
    assert refused.value.code == 2 and ".csv" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_without_a_gpu_and_names_every_step(tmp_path, capsys):
    from moelab.bench import gpu_check

    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    assert "CUDA" in capsys.readouterr().err and not (tmp_path / "out").exists()
    steps = {name: command for name, command, _ in gpu_check.steps(tmp_path)}
    assert list(steps) == ["cuda_tests", "bench_layer", "bench_train_b128", "bench_train_b1024", "mnist_5_epochs"]
    assert ["-m", "cuda"] == steps["cuda_tests"][4:6]
    assert {"eager", "amp", "compile"} <= set(steps["bench_train_b128"])
    assert sum(allowed for _, _, allowed in gpu_check.steps(tmp_path)) <= 8 * 60


def test_bench_profile_writes_per_operator_rows_for_the_dense_network_and_the_moe(tmp_path, tiny_data, capsys):
    out = tmp_path / "profile.csv"
    argv = ["profile", "--data-dir", str(tiny_data), "--batch-size", "32", "--steps", "2", "--device", "cpu",
            "--threads", "1", "--csv", str(out)]
    assert cli.main(argv) == 0
    table = pd.read_csv(out)
    assert set(table.model) == {"dense_active", "moe_hard", "moe_hard_grouped_mm"}
    calls = table.groupby("model").calls_per_step.sum()
    assert calls["moe_hard"] > calls["dense_active"] > 0                          # router and dispatch add operators
    grouped_mm = table[(table.model == "moe_hard_grouped_mm") & (table.op == "aten::_grouped_mm")]
    # 2 layers: 2 forward products, 2 weight gradients, 1 gradient into the hidden layer (none into the images)
    assert len(grouped_mm) == 1 and grouped_mm.calls_per_step.iloc[0] == 5
    dense = table[table.model == "dense_active"].set_index("op")
    assert (dense.self_ms_over_dense == 0).all()
    assert "operator calls per step" in capsys.readouterr().out
    # more steps than an epoch holds: one line, exit 2, no table
    with pytest.raises(SystemExit) as stop:
        cli.main(["profile", "--data-dir", str(tiny_data), "--batch-size", "32", "--steps", "100", "--device", "cpu",
                  "--threads", "1", "--csv", str(tmp_path / "too_many.csv")])
    assert stop.value.code == 2 and "--steps 100" in capsys.readouterr().err
    assert not (tmp_path / "too_many.csv").exists()
