import torch

from moelab.data import graphs
from moelab.models.graph import GraphTransformer
from moelab.models.spec import ModelSpec


def tiny_spec(**flags) -> ModelSpec:
    return ModelSpec(**{**dict(arch="graph", experts=4, gating="topk", top_k=2, expert_hidden=8, vit_dim=16,
                               vit_heads=2, vit_depth=2, moe_every=2), **flags})


def two_graphs():
    # A triangle and a path of 2 nodes, 3 features each, padded to 3 slots.
    split = graphs.GraphSplit.build(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)),
                                    torch.tensor([3, 2]), torch.tensor([[0, 1, 1, 2, 2, 0, 3, 4], [1, 0, 2, 1, 0, 2, 4, 3]]),
                                    torch.tensor([0, 1]), torch.zeros(5, dtype=torch.int64))
    return split, graphs.padded_batch(split, torch.tensor([0, 1]))


def test_every_router_routes_the_real_nodes_alone():
    split, (x, mask, adjacency) = two_graphs()
    for gating in ("hard", "topk", "expert-choice", "soft"):
        torch.manual_seed(0)
        model = GraphTransformer(tiny_spec(gating=gating), 3, 2).eval()
        out = model(x, mask, adjacency)
        assert out.logits.shape == (2, 2) and len(out.routings) == 1
        assert out.routings[0].weights.shape == (5, 4)                        # 5 real nodes, not 2 x 3 slots


def test_a_graph_is_classified_the_same_whatever_its_node_order_and_its_batch_padding():
    split, (x, mask, adjacency) = two_graphs()
    torch.manual_seed(0)
    model = GraphTransformer(tiny_spec(gating="hard"), 3, 2).eval()
    alone = model(*graphs.padded_batch(split, torch.tensor([1]))).logits        # the path, unpadded
    together = model(x, mask, adjacency).logits                                 # padded to 3 slots
    assert torch.allclose(together[1], alone[0], atol=1e-5)
    order = torch.tensor([2, 0, 1])                                             # renumber the triangle's nodes
    permuted = model(x[:1, order], mask[:1, order], adjacency[:1][:, order][:, :, order]).logits
    assert torch.allclose(permuted[0], together[0], atol=1e-5)


def test_attention_follows_the_edges_only():
    split, (x, mask, adjacency) = two_graphs()
    torch.manual_seed(0)
    model = GraphTransformer(tiny_spec(model="dense"), 3, 2).eval()
    base = model(x, mask, adjacency).logits
    changed = x.clone()
    changed[1, 2] = 100.0                                                       # a padded slot's features
    assert torch.allclose(model(changed, mask, adjacency).logits, base, atol=1e-5)
    cut = adjacency.clone()
    cut[0, 0, 1] = cut[0, 1, 0] = False                                         # remove one edge of the triangle
    assert not torch.allclose(model(x, mask, cut).logits[0], base[0], atol=1e-4)
    assert torch.allclose(model(x, mask, cut).logits[1], base[1], atol=1e-5)
