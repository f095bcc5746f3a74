"""moelab/models/cost.py: parameters and FLOPs of the active experts."""
import pytest

from moelab.models.builder import build_model
from moelab.models.cost import model_cost
from moelab.models.spec import ModelSpec
from moelab.models.vit import vit_cost


def test_flops_follow_active_experts():
    in_shape = (1, 28, 28)
    costs = {g: model_cost(build_model(ModelSpec(gating=g, top_k=2, experts=8, expert_hidden=64), in_shape, 10),
                          in_shape)
             for g in ("hard", "topk", "soft")}
    router = 2 * 784 * 8
    expert = costs["hard"]["flops_per_sample"] - router
    assert expert == 2 * (784 * 64 + 64 * 10)                   # one MLP expert, 2 FLOPs per MAC
    assert costs["topk"]["flops_per_sample"] == router + 2 * expert
    assert costs["soft"]["flops_per_sample"] == router + 8 * expert
    assert costs["soft"]["params_active"] == costs["soft"]["params_total"]


@pytest.mark.parametrize("arch", ["mixture", "vit"])
def test_shared_experts_count_as_active_and_the_dense_baselines_match_them(arch):
    from moelab.training.config import Config
    base = {"arch": arch, "experts": 4, "gating": "topk", "top_k": 2, "expert_hidden": 16, "vit_dim": 24,
            "vit_heads": 2, "vit_depth": 2, "moe_every": 1, "vit_patch": 7}
    plain = Config(**base).model_spec()
    shared = Config(**base, shared_experts=1).model_spec()
    cost = (lambda spec: (model_cost if arch == "mixture" else vit_cost)(build_model(spec, (1, 28, 28), 10),
                                                                           (1, 28, 28)))
    without, with_shared = cost(plain), cost(shared)
    per_expert = with_shared["params_total"] - without["params_total"]
    assert per_expert > 0
    assert with_shared["params_active"] - without["params_active"] == pytest.approx(per_expert)
    assert with_shared["flops_per_sample"] > without["flops_per_sample"]
    import dataclasses
    dense_active = cost(dataclasses.replace(shared, model="dense", dense_match="active"))
    assert dense_active["params_total"] == pytest.approx(with_shared["params_active"], rel=0.05)
