"""moelab/models/trunks.py: the residual trunk and the models built on it."""
import pytest
import torch

from moelab.models import trunks
from moelab.models.builder import build_model
from moelab.training.config import Config


def test_resnet_trunk_shapes_and_size():
    trunk = trunks.ResNetTrunk(3, channels=64, blocks=1)
    assert trunk(torch.randn(2, 3, 32, 32)).shape == (2, trunk.out_features) == (2, 512)
    convs = [m for m in trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * (1 + 2)                      # stem, then per stage one conv and a block of two
    # 3x3 convolutions without bias, each followed by batch norm (weight and bias)
    expected = sum(9 * c.in_channels * c.out_channels + 2 * c.out_channels for c in convs)
    assert sum(p.numel() for p in trunk.parameters()) == expected
    assert trunks.ResNetTrunk(1, channels=8, blocks=2)(torch.randn(3, 1, 28, 28)).shape == (3, 64)


def test_residual_block_adds_its_input():
    block = trunks.Residual(4).eval()
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(block(x), x + block.body(x))


@pytest.mark.parametrize("model", ["moe", "dense"])
def test_models_on_the_resnet_trunk_read_its_features(model):
    cfg = Config(model=model, trunk="resnet", trunk_channels=8, experts=4, expert_hidden=16)
    net = build_model(cfg.model_spec(), (3, 32, 32), 10)
    assert net.trunk.out_features == 64
    output = net(torch.randn(5, 3, 32, 32))
    assert (output if torch.is_tensor(output) else output.logits).shape == (5, 10)
