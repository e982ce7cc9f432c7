"""Tests for bayes_sws.zoo.nets: parameter counts worked out by hand, shapes, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close
from torch import nn

from bayes_sws.zoo.nets import NETWORKS, build_network, lenet5_caffe, lenet_300_100, mlp


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def dense(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def conv(in_channels: int, out_channels: int, kernel: int = 5) -> int:
    return in_channels * out_channels * kernel * kernel + out_channels


def test_lenet_300_100_parameter_count_and_shape():
    net = lenet_300_100()
    # 784*300+300 + 300*100+100 + 100*10+10
    assert num_parameters(net) == 266_610 == dense(784, 300) + dense(300, 100) + dense(100, 10)
    assert net(torch.zeros(5, 784)).shape == (5, 10)
    assert [name for name, _ in net.named_parameters()] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
    ]
    assert isinstance(net[-1], nn.Linear)  # logits: no activation after the last layer


def test_lenet5_caffe_parameter_count_and_shape():
    net = lenet5_caffe()
    # 28 -conv5-> 24 -pool-> 12 -conv5-> 8 -pool-> 4, so 50*4*4 = 800 features.
    expected = conv(1, 20) + conv(20, 50) + dense(800, 500) + dense(500, 10)
    assert num_parameters(net) == 431_080 == expected
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert isinstance(net, nn.Sequential)
    names = [name for name, _ in net.named_parameters()]
    assert names == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "5.weight",
        "5.bias",
        "7.weight",
        "7.bias",
    ]
    assert [type(m) for m in net] == [
        nn.Conv2d,
        nn.MaxPool2d,
        nn.Conv2d,
        nn.MaxPool2d,
        nn.Flatten,
        nn.Linear,
        nn.ReLU,
        nn.Linear,
    ]


def test_lenet5_caffe_small_inputs_use_padding():
    net = lenet5_caffe(input_size=8)
    # padding 2 keeps 8 -> 8 -pool-> 4 -> 4 -pool-> 2, so 50*2*2 = 200 features.
    assert net[0].padding == (2, 2)
    assert num_parameters(net) == conv(1, 20) + conv(20, 50) + dense(200, 500) + dense(500, 10)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_lenet5_caffe_other_sizes():
    net = lenet5_caffe(in_channels=3, num_classes=7, input_size=(32, 20))
    # 32 -> 28 -> 14 -> 10 -> 5 ; 20 -> 16 -> 8 -> 4 -> 2 ; 50*5*2 = 500 features.
    assert num_parameters(net) == conv(3, 20) + conv(20, 50) + dense(500, 500) + dense(500, 7)
    assert net(torch.zeros(1, 3, 32, 20)).shape == (1, 7)
    with pytest.raises(ValueError, match="too small"):
        lenet5_caffe(input_size=3)
    with pytest.raises(ValueError, match="padding must be"):
        lenet5_caffe(padding=-1)


def test_mlp_structure_and_activation():
    net = mlp([4, 8, 8, 2], activation="tanh")
    assert [type(m) for m in net] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert num_parameters(net) == dense(4, 8) + dense(8, 8) + dense(8, 2)
    assert mlp([3, 1])(torch.zeros(6, 3)).shape == (6, 1)
    assert isinstance(mlp([3, 4, 1], activation=nn.ELU)[1], nn.ELU)


def test_mlp_forward_matches_manual_computation():
    torch.manual_seed(0)
    net = mlp([3, 4, 2])
    x = torch.randn(5, 3, dtype=torch.float64)
    w1, b1 = net[0].weight.double(), net[0].bias.double()
    w2, b2 = net[2].weight.double(), net[2].bias.double()
    expected = torch.clamp(x @ w1.T + b1, min=0) @ w2.T + b2
    assert_close(net.double()(x), expected)


@pytest.mark.parametrize(
    "sizes, message",
    [
        ([10], "at least an input and an output"),
        ([10, 0, 2], r"sizes\[1\] must be a positive"),
        ([10, 2.5], r"sizes\[1\]"),
        ("784", "sequence of layer widths"),
    ],
)
def test_mlp_rejects_bad_sizes(sizes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        mlp(sizes)


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*'relu'"):
        mlp([2, 2], activation="swish")


def test_build_network_registry():
    net = build_network("lenet-300-100", input_shape=(784,), num_classes=10)
    assert num_parameters(net) == 266_610
    net = build_network("LeNet_5", input_shape=(1, 28, 28), num_classes=10)
    assert num_parameters(net) == 431_080
    net = build_network("mlp", input_shape=(64,), num_classes=10, hidden=(32, 16))
    assert num_parameters(net) == dense(64, 32) + dense(32, 16) + dense(16, 10)
    net = build_network("mlp", input_shape=(64,), num_classes=10)
    assert num_parameters(net) == dense(64, 100) + dense(100, 10)
    # Image inputs to an MLP are flattened first.
    net = build_network("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(5,))
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert isinstance(net[0], nn.Flatten)
    digits_cnn = build_network("lenet-5", input_shape=(1, 8, 8), num_classes=10)
    assert digits_cnn(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_build_network_errors():
    with pytest.raises(ValueError, match="unknown network 'resnet'") as info:
        build_network("resnet", input_shape=(4,), num_classes=2)
    for name in NETWORKS:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="flatten=False"):
        build_network("lenet-5", input_shape=(784,), num_classes=10)
    with pytest.raises(ValueError, match="fixed architecture"):
        build_network("lenet-300-100", input_shape=(784,), num_classes=10, hidden=(5,))
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        build_network("mlp", input_shape=(4,), num_classes=0)
    with pytest.raises(ValueError, match=r"input_shape\[1\] must be a positive integer, got -8"):
        build_network("mlp", input_shape=(1, -8), num_classes=2)
    with pytest.raises(ValueError, match=r"hidden\[0\]"):
        build_network("mlp", input_shape=(4,), num_classes=2, hidden=(0,))
