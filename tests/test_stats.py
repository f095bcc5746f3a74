"""moelab/stats.py: the routing statistics of a batch (counts, class-expert tables, mutual information)."""
import math

import pytest
import torch

from moelab import stats


def test_statistics():
    weights = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    assert stats.expert_counts(weights).tolist() == [2, 3, 1]
    tables = stats.class_expert_matrix(weights, labels, 2)
    assert tables["count"].tolist() == [[2, 0], [2, 1], [0, 1]]
    assert tables["top1"].tolist() == [[2, 0], [0, 1], [0, 1]]
    assert torch.allclose(tables["gate_mass"], torch.tensor([[1.1, 0.0], [0.9, 1.0], [0.0, 1.0]]))
    # perfectly specialised routing carries all the label information, random routing none
    assert stats.mutual_information(torch.eye(3) * 10).item() == pytest.approx(math.log(3))
    assert stats.mutual_information(torch.ones(3, 3)).item() == pytest.approx(0.0, abs=1e-7)


def test_majority_share_of_patches():
    ids = torch.tensor([[2, 2, 2, 2], [0, 1, 2, 3], [1, 1, 0, 3]])             # (B=3 images, T=4 patches)
    assert stats.majority_share(ids, 4).tolist() == [1.0, 0.25, 0.5]
