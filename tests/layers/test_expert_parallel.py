"""moelab/layers/expert_parallel.py: the regrouping of the rows an expert-parallel rank receives
(the exchange itself runs on two processes in tests/distributed/test_parallelize.py)."""
import torch

from moelab.layers.expert_parallel import source_to_expert_order


def test_source_to_expert_order_regroups_rows_by_expert():
    counts = torch.tensor([[2, 0, 1], [1, 3, 0]])                 # (P=2 sources, L=3 experts)
    order = source_to_expert_order(counts)
    # arrival order: src0: e0 e0 e2 | src1: e0 e1 e1 e1  ->  e0: 0 1 3 | e1: 4 5 6 | e2: 2
    assert order.tolist() == [0, 1, 3, 4, 5, 6, 2]
