"""moelab/bench/gpu_check.py: the refusal without a GPU and the steps gpu_check.py runs."""
import pytest
import torch


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
