"""moelab/bench/training.py: the training-step benchmark's rows for every model (speed itself is never asserted)."""
import pandas as pd

from moelab.bench import cli


def test_bench_train_writes_one_row_per_model_and_the_step_cost_rows(tmp_path, tiny_data):
    out = tmp_path / "train.csv"
    argv = ["train", "--data-dir", str(tiny_data), "--rounds", "1", "--batch-size", "64", "--device", "cpu",
            "--threads", "1", "--csv", str(out)]
    assert cli.main(argv) == 0
    table = pd.read_csv(out).set_index("model")
    assert list(table.index) == ["dense_active", "dense_params", "moe_soft", "moe_hard", "moe_top2",
                                 "moe_expert_choice", "moe_hard_grouped", "moe_hard_padded", "moe_hard_grouped_mm",
                                 "bare_matmuls_dense_active", "bare_matmuls_moe_hard",
                                 "layers_dense_active", "layers_moe_hard_grouped", "layers_moe_hard_padded",
                                 "layers_moe_hard_grouped_mm"]
    assert table.loc["dense_active", "vs_dense_active"] == 1.0
    assert (table.samples_per_s > 0).all()
    assert table.loc["dense_active", "optimizer_vs_dense_active"] == 1.0
    trained = 9                                                                # rows of whole training steps
    assert (table.optimizer_vs_dense_active.iloc[:trained] > 0).all()
    assert table.optimizer_vs_dense_active.iloc[trained:].isna().all()
    # the MoE's router, losses and dispatch are extra operations in every step
    assert table.loc["moe_hard", "ops_per_step"] > table.loc["dense_active", "ops_per_step"] > 0
    # one batched product per layer: fewer operations than a product per expert
    assert table.loc["moe_hard_padded", "ops_per_step"] < table.loc["moe_hard_grouped", "ops_per_step"]
    assert table.loc["moe_hard_grouped_mm", "ops_per_step"] < table.loc["moe_hard_grouped", "ops_per_step"]
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
    from synthetic import write_folder

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
