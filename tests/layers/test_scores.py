"""moelab/layers/scores.py: cosine scores and the attention router's votes."""
import math

import torch

from moelab.layers.experts import MLPExperts
from moelab.layers.routers import build_router


def test_cosine_scores_ignore_input_scale_and_use_the_nearest_centroid():
    torch.manual_seed(0)
    router = build_router("topk", 12, 5, top_k=2, router_score="cosine", router_dim=6, router_centroids=3)
    x = torch.randn(7, 12)
    logits = router.router_logits(x)
    assert torch.allclose(logits, router.router_logits(10 * x), atol=1e-5)     # cosine: scale-free
    inv_t = router.log_inv_temperature.exp()
    assert logits.abs().max() <= inv_t + 1e-5                                  # |cos| <= 1
    with torch.no_grad():
        tokens = torch.nn.functional.normalize(router.proj(x), dim=-1)
        centroids = torch.nn.functional.normalize(router.centroids, dim=-1)
    slow = torch.tensor([[max(float(tokens[n] @ centroids[e, j]) for j in range(3)) for e in range(5)]
                         for n in range(7)])
    assert torch.allclose(logits, slow * inv_t, atol=1e-5)
    routing = router.train()(x)
    loss = routing.weights.square().sum() + routing.aux["centroid"]
    loss.backward()
    assert router.centroids.grad.abs().sum() > 0 and router.log_inv_temperature.grad is not None


# ----------------------------------------------------------------------------- attention routing

def _attention_router(gating="topk", tokens=5, dim=6, rank=3):
    torch.manual_seed(0)
    return build_router(gating, dim, 4, top_k=2, router_score="attention", router_dim=rank, tokens=tokens)


def test_attention_votes_equal_a_per_image_double_loop():
    router = _attention_router()
    x = torch.randn(3 * 5, 6)                                                   # 3 images of 5 tokens
    votes = router.router_logits(x)
    expected = torch.zeros(15, 4)
    for image in range(3):
        h = x[image * 5:(image + 1) * 5]
        for e in range(4):
            keys = h @ router.keys[e]                                           # (T, r)
            for s in range(5):
                query = h[s] @ router.proj.weight.t()                           # (r,)
                attention = torch.softmax(keys @ query / math.sqrt(3), dim=0)   # over t
                expected[image * 5:(image + 1) * 5, e] += attention
    assert torch.allclose(votes, expected, atol=1e-5)
    assert torch.allclose(votes.view(3, 5, 4).sum(dim=1), torch.full((3, 4), 5.0), atol=1e-5)   # T votes


def test_permuting_an_images_tokens_permutes_its_votes():
    router = _attention_router()
    x = torch.randn(2 * 5, 6)
    permutation = torch.tensor([3, 0, 4, 1, 2])
    shuffled = x.clone()
    shuffled[:5] = x[:5][permutation]
    assert torch.allclose(router.router_logits(shuffled)[:5], router.router_logits(x)[:5][permutation], atol=1e-6)
    assert torch.allclose(router.router_logits(shuffled)[5:], router.router_logits(x)[5:], atol=1e-6)


def test_attention_router_parameters_are_d_r_times_experts_plus_one():
    for gating in ("topk", "expert-choice"):
        router = _attention_router(gating, dim=96, rank=16)
        assert sum(p.numel() for p in router.parameters()) == 96 * 16 * (4 + 1)
    # The figures docs/models.md quotes: the default ViT's router (E=8, r=16) and one of its experts.
    router = build_router("topk", 96, 8, router_score="attention", router_dim=16, tokens=49)
    assert sum(p.numel() for p in router.parameters()) == 13_824
    assert MLPExperts(8, 96, 128, 96).params_per_expert() == 24_800
