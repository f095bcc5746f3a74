"""moelab/training/step.py: the one-cycle schedule, SGD and label smoothing against their definitions."""
import pytest
import torch
import torch.nn.functional as F
from synthetic import LogitsModel

from moelab.training.config import Config
from moelab.training.step import lr_factor, make_optimizer, train_step


def test_onecycle_warms_up_linearly_then_decays_linearly_to_zero():
    factors = [lr_factor("onecycle", step, 100, 0.2) for step in range(101)]
    assert factors[0] == 0.0 and factors[20] == pytest.approx(1.0) and factors[100] == pytest.approx(0.0)
    assert factors[10] == pytest.approx(0.5) and factors[60] == pytest.approx(0.5)
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5) and lr_factor("constant", 7, 100) == 1.0


def test_sgd_is_nesterov_with_the_given_momentum():
    net = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(net, Config(optimizer="sgd", lr=0.1, momentum=0.8, weight_decay=5e-4))
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and group["nesterov"] and group["momentum"] == 0.8
    assert group["weight_decay"] == 5e-4


def test_label_smoothing_enters_the_training_loss():
    torch.manual_seed(0)
    net = LogitsModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)))
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = F.cross_entropy(net(x).logits, y, label_smoothing=0.1)
    _, _, ce = train_step(net, torch.optim.SGD(net.parameters(), lr=0.0), x, y, {}, label_smoothing=0.1)
    assert torch.allclose(ce, expected)
