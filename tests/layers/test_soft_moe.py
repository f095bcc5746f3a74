"""moelab/layers/soft_moe.py: Soft MoE's slot weights against a per-image reference."""
import torch

from moelab.layers.aux_losses import AUX_NAMES
from moelab.layers.experts import MLPExperts


def _soft_moe(slots=3, tokens=5, dim=6):
    torch.manual_seed(0)
    from moelab.layers.soft_moe import SoftMoE
    return SoftMoE(dim, MLPExperts(4, dim, 8, dim), slots, tokens)


def test_soft_moe_weights_are_distributions_and_match_a_per_image_reference():
    layer = _soft_moe().train()
    x = torch.randn(3 * 5, 6)
    images = x.view(3, 5, 6)
    dispatch, combine = layer.slot_weights(images)                           # (B, T, S)
    assert torch.allclose(dispatch.sum(dim=1), torch.ones(3, 12), atol=1e-6)    # over tokens, per slot
    assert torch.allclose(combine.sum(dim=2), torch.ones(3, 5), atol=1e-6)      # over slots, per token
    out = layer(x)
    for b in range(3):
        h = images[b]                                                         # (T, d)
        logits = h @ layer.slot_params                                        # (T, S)
        d, c = logits.softmax(dim=0), logits.softmax(dim=1)
        slot_in = d.t() @ h                                                   # (S, d)
        slot_out = torch.stack([layer.experts.expert_forward(s // 3, slot_in[s:s + 1])[0] for s in range(12)])
        expected = c @ slot_out                                               # (T, d)
        assert torch.allclose(out.logits[b * 5:(b + 1) * 5], expected, atol=1e-5)
    weights = out.routing.weights
    assert torch.allclose(weights.sum(dim=1), torch.ones(15), atol=1e-6)
    assert set(out.aux) == set(AUX_NAMES)
