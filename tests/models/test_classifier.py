"""moelab/models/classifier.py: dense baselines of the size of an MoE classifier."""
import pytest
import torch

from moelab.models.builder import build_model
from moelab.models.classifier import count_params, moe_param_counts
from moelab.models.spec import ModelSpec

SHAPES = {"mnist": ((1, 28, 28), 10), "cifar": ((3, 32, 32), 10)}


@pytest.mark.parametrize("spec_kwargs,shape", [
    ({"gating": "hard"}, "mnist"),
    ({"gating": "topk", "experts": 16, "expert_hidden": 32}, "mnist"),
    ({"gating": "soft", "expert_type": "cnn"}, "mnist"),
    ({"gating": "topk", "expert_type": "cnn"}, "cifar"),
    ({"gating": "hard", "trunk": "cnn"}, "cifar"),
])
@pytest.mark.parametrize("match", ["params", "active"])
def test_dense_baseline_matches_moe_size(spec_kwargs, shape, match):
    in_shape, classes = SHAPES[shape]
    moe = build_model(ModelSpec(**spec_kwargs), in_shape, classes)
    dense = build_model(ModelSpec(model="dense", dense_match=match, **spec_kwargs), in_shape, classes)
    target = moe_param_counts(moe)["total" if match == "params" else "active"]
    assert abs(count_params(dense) - target) / target < 0.02
    assert dense(torch.zeros(2, *in_shape)).logits.shape == (2, classes)


def test_the_default_models_training_step_runs_the_router_forward_and_the_sparse_dispatch(monkeypatch):
    """``train.py --experts 8 --gating hard``: a training step (and an evaluation step) goes through
    ``HardRouter.forward`` and ``MoE._sparse``, the code a reader is pointed at; there is no
    other path."""
    from moelab.layers.moe import MoE
    from moelab.layers.routers import HardRouter
    from moelab.training.config import Config

    calls = []
    for cls, name in ((HardRouter, "forward"), (MoE, "_sparse"), (MoE, "_dense")):
        original = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, *a, _o=original, _n=name, **k: calls.append(_n) or _o(self, *a, **k))
    cfg = Config(experts=8, gating="hard")
    torch.manual_seed(0)
    model = build_model(cfg.model_spec(), *SHAPES["mnist"])
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    output = model(x)
    torch.nn.functional.cross_entropy(output.logits, y).backward()
    assert calls == ["forward", "_sparse"]
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        model.eval()(x)
    assert calls == ["forward", "_sparse"] * 2
