"""moelab/bench/profile.py: the per-operator profile of a training step."""
import pandas as pd
import pytest

from moelab.bench import cli


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
