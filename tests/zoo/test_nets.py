"""Tests for bayes_sws.zoo.nets: parameter counts worked out by hand, shapes, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close
from torch import nn
from torch.nn import functional as F

from bayes_sws import MixturePrior, SWSModel
from bayes_sws.zoo.nets import (
    NETWORKS,
    ResidualBlock,
    build_network,
    lenet5_caffe,
    lenet_300_100,
    mlp,
    resnet,
)


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


def test_lenet5_caffe_runs_channels_last_with_the_default_layouts_values():
    """Its convolution weights are channels-last; outputs and gradients are those of the
    same values in torch's default (contiguous) layout, to float rounding."""
    torch.manual_seed(0)
    net = lenet5_caffe()
    plain = lenet5_caffe()
    plain.load_state_dict(net.state_dict())
    plain = plain.to(memory_format=torch.contiguous_format)
    for name, p in net.named_parameters():
        fast = p.dim() == 4
        assert p.is_contiguous(memory_format=torch.channels_last) if fast else p.is_contiguous()
        assert dict(plain.named_parameters())[name].is_contiguous(), name
    assert not net[2].weight.is_contiguous()  # (the first kernel, 1 channel in, is both)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for each in (net, plain):
        F.cross_entropy(each(x), y).backward()
    assert_close(net(x), plain(x), rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(net.named_parameters(), plain.parameters(), strict=True):
        assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


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


# ----------------------------------------------------------------------------- residual networks


def resnet_count(depth: int, width: int, in_channels: int = 1, num_classes: int = 10) -> int:
    """Parameters of :func:`resnet` by hand: stem, 3 stages of blocks (two 3x3 convs + a gain)."""
    blocks = (depth - 2) // 6
    total = conv(in_channels, width, 3)
    channels = width
    for stage in range(3):
        out = width * 2**stage
        total += conv(channels, out, 3) + conv(out, out, 3) + 1  # first block of the stage
        total += (blocks - 1) * (2 * conv(out, out, 3) + 1)
        channels = out
    return total + dense(4 * width, num_classes)


@pytest.mark.parametrize(
    ("depth", "width", "in_channels", "size"), [(8, 4, 1, 28), (14, 8, 3, 32), (20, 16, 1, 28)]
)
def test_resnet_parameter_count_and_shape(depth, width, in_channels, size):
    net = resnet(depth, width, in_channels=in_channels, num_classes=7)
    assert num_parameters(net) == resnet_count(depth, width, in_channels, 7)
    assert net(torch.rand(3, in_channels, size, size)).shape == (3, 7)


def test_resnet20_width16_count_worked_out():
    # stem 9*16+16 = 160; stage 1: 3 blocks of 2*(9*16*16+16) + 1 = 4,641 -> 13,923;
    # stage 2: (9*16*32+32) + (9*32*32+32) + 1 = 13,889, then 2 blocks of 2*(9*32*32+32) + 1
    # = 18,497 -> 50,883; stage 3: (9*32*64+64) + (9*64*64+64) + 1 = 55,425, then
    # 2 * (2*(9*64*64+64) + 1) = 147,714 -> 203,139; head 64*10+10 = 650.
    assert 160 + 13_923 + 50_883 + 203_139 + 650 == 268_755
    assert num_parameters(resnet(20, 16)) == 268_755


def test_resnet_prior_carrying_parameters_are_the_kernels_and_dense_weight():
    net = resnet(8, 4)
    model = SWSModel(net, MixturePrior(3))
    kernels = {n for n, p in net.named_parameters() if n.endswith("weight")}
    assert set(model.prior_param_names) == kernels
    assert {n for n in model.free_param_names if n.endswith("gain")} == {
        "2.0.gain",
        "3.0.gain",
        "4.0.gain",
    }
    assert all(n.endswith(("bias", "gain")) for n in model.free_param_names)


def _downsampled(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Option A by hand: every other pixel, channels zero-filled up to ``out_channels``."""
    n, c, h, w = x.shape
    out = torch.zeros(n, out_channels, (h + 1) // 2, (w + 1) // 2)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :c, i, j] = x[:, :, 2 * i, 2 * j]
    return out


def test_residual_block_with_zero_gain_is_its_shortcut():
    torch.manual_seed(0)
    x = torch.rand(2, 4, 9, 9)  # non-negative, as after a ReLU
    same = ResidualBlock(4, 4)
    assert float(same.gain.detach()) == 0.0  # SkipInit: the block starts as its shortcut
    assert_close(same(x), x, rtol=0, atol=0)
    down = ResidualBlock(4, 6, stride=2)
    assert_close(down(x), _downsampled(x, 6), rtol=0, atol=0)
    assert down(x).shape == down.branch(x).shape == (2, 6, 5, 5)


def test_residual_block_with_a_gain_adds_the_branch():
    torch.manual_seed(1)
    block = ResidualBlock(3, 5, stride=2)
    with torch.no_grad():
        block.gain.fill_(0.7)
    x = torch.randn(2, 3, 8, 8)
    c1, c2 = block.conv1, block.conv2
    hidden = torch.relu(F.conv2d(x, c1.weight, c1.bias, stride=2, padding=1))
    branch = F.conv2d(hidden, c2.weight, c2.bias, padding=1)
    expected = torch.relu(_downsampled(x, 5) + 0.7 * branch)
    assert_close(block(x), expected, rtol=1e-6, atol=1e-6)


def test_resnet_with_zero_gains_is_stem_pool_and_head():
    torch.manual_seed(2)
    net = resnet(14, 4, num_classes=3)
    x = torch.randn(2, 1, 28, 28)
    stem, head = net[0], net[-1]
    features = torch.relu(F.conv2d(x, stem.weight, stem.bias, padding=1))
    features = features[:, :, ::2, ::2][:, :, ::2, ::2]  # 28 -> 14 -> 7, channels 4 of 16
    pooled = torch.cat([features.mean(dim=(2, 3)), torch.zeros(2, 12)], dim=1)
    assert_close(net(x), pooled @ head.weight.T + head.bias, rtol=1e-5, atol=1e-6)


def test_resnet_errors():
    with pytest.raises(ValueError, match="6 n \\+ 2"):
        resnet(9)
    with pytest.raises(ValueError, match="6 n \\+ 2"):
        resnet(2)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        resnet(8, 0)
    with pytest.raises(ValueError, match="at least in_channels"):
        ResidualBlock(8, 4)
