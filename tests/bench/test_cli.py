"""moelab/bench/cli.py: the refusals of bench.py's command line (flags, tables it would overwrite)."""
import pytest

from moelab.bench import cli


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
