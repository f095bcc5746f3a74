"""moelab/bench/layer.py: the layer benchmark's references and its table (speed itself is never asserted)."""
import pandas as pd
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
