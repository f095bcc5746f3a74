"""moelab/training/reporting.py: the compact test gates of many experts."""
import numpy as np
import torch


def test_test_gates_keep_the_largest_weights_beyond_sixteen_experts():
    from moelab.training.reporting import compact_gates
    weights = torch.softmax(torch.randn(5, 32), dim=1)
    routing = {"class": torch.arange(5), "predicted": torch.arange(5), "experts_used": torch.full((5,), 32),
               "gate_entropy": torch.ones(5, dtype=torch.float64), "weights": weights}
    stored = compact_gates(routing)
    assert "weights" not in stored and stored["top_weights"].shape == stored["top_experts"].shape == (5, 16)
    picked = np.take_along_axis(weights.numpy(), stored["top_experts"].astype(np.int64), axis=1)
    assert np.allclose(stored["top_weights"], picked, atol=1e-3)
    assert (np.diff(stored["top_weights"].astype(np.float32), axis=1) <= 0).all()    # largest first
    assert compact_gates({**routing, "weights": weights[:, :8]})["weights"].shape == (5, 8)
