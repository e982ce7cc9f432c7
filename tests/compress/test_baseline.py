"""Deep Compression baseline on scikit-learn's digits, checked by counting and by autograd."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from bayes_sws.compress.baseline import (
    deep_compression,
    kmeans_1d_linear_init,
    magnitude_prune_masks,
)
from bayes_sws.compress.codebook import finetune_codebook
from bayes_sws.zoo.training import accuracy, train

WEIGHTS = ("0.weight", "2.weight")


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    return x_train, y_train, x_test, y_test


@pytest.fixture(scope="module")
def pretrained(digits):
    x_train, y_train, _, _ = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    train(net, x_train, y_train, num_epochs=40, lr=3e-3, seed=0)
    return net


@pytest.fixture(scope="module")
def compressed(digits, pretrained):
    x_train, y_train, _, _ = digits
    return deep_compression(
        pretrained,
        x_train,
        y_train,
        prune_fraction=0.8,
        num_clusters=8,
        finetune_epochs=8,
        lr=3e-3,
        seed=0,
    )


def test_pruned_share_is_exact_and_smallest_magnitudes_go(pretrained, compressed):
    params = dict(compressed.net.named_parameters())
    original = dict(pretrained.named_parameters())
    assert compressed.param_names == WEIGHTS
    for name in WEIGHTS:
        n = original[name].numel()
        expected = int(np.floor(0.8 * n + 0.5))
        mask = compressed.masks[name].numpy()
        assert int((~mask).sum()) == expected
        assert compressed.prune_fractions[name] == expected / n
        w = params[name].detach().numpy()
        assert int((w == 0).sum()) == expected  # zeros stay zero, nothing else is zero
        assert np.all(w[~mask] == 0)
        # every pruned weight was at most as large as every kept one
        magnitude = original[name].detach().abs().numpy()
        assert magnitude[~mask].max() <= magnitude[mask].min()


def test_at_most_num_clusters_shared_values(compressed):
    params = dict(compressed.net.named_parameters())
    for name in WEIGHTS:
        w = params[name].detach().numpy()
        shared = np.unique(w[w != 0])
        assert 1 < shared.size <= 8
        np.testing.assert_array_equal(shared, np.unique(compressed.codebooks[name].numpy()))
        # assignments index the codebook; -1 exactly where pruned
        a = compressed.assignments[name].numpy()
        assert np.all((a == -1) == ~compressed.masks[name].numpy())
        np.testing.assert_array_equal(w[a >= 0], compressed.codebooks[name].numpy()[a[a >= 0]])


def test_accuracy_within_a_few_points(digits, pretrained, compressed):
    _, _, x_test, y_test = digits
    before = accuracy(pretrained, x_test, y_test)
    after = accuracy(compressed.net, x_test, y_test)
    assert before > 0.9
    assert after >= before - 0.03


def test_storage_report_of_the_baseline(compressed):
    report = compressed.storage
    sizes = {"0.weight": 64 * 64, "2.weight": 64 * 10}
    assert [r.name for r in report.layers] == list(WEIGHTS)
    kept = sum(n - int(np.floor(0.8 * n + 0.5)) for n in sizes.values())
    assert report.num_nonzero == kept
    assert report.num_params == 64 * 64 + 64 + 64 * 10 + 10
    # at 20% density a Huffman-coded full layout can beat 5-bit relative indices; the
    # report takes the cheaper of the two coded layouts
    assert all(r.weight_bits == min(r.sparse_bits, r.full_bits) for r in report.layers)
    assert all(r.num_distinct <= 8 for r in report.layers)
    assert report.compression_rate > 5


def test_input_network_is_not_modified(digits, pretrained):
    x_train, y_train, _, _ = digits
    snapshot = copy.deepcopy(pretrained.state_dict())
    deep_compression(
        pretrained,
        x_train[:64],
        y_train[:64],
        prune_fraction=0.5,
        num_clusters=4,
        finetune_epochs=1,
    )
    for key, value in pretrained.state_dict().items():
        torch.testing.assert_close(value, snapshot[key], rtol=0, atol=0)


def test_centroid_gradient_is_sum_of_weight_gradients(digits, pretrained):
    """One full-batch Adam step moves each centroid by lr * S / (|S| + eps), S = Σ ∂E/∂w."""
    x_train, y_train, _, _ = digits
    kwargs = {"prune_fraction": 0.5, "num_clusters": 4, "finetune_epochs": 0, "seed": 0}
    start = deep_compression(pretrained, x_train, y_train, centroid_epochs=0, **kwargs)
    lr = 1e-3
    stepped = deep_compression(
        pretrained, x_train, y_train, centroid_epochs=1, lr=lr, batch_size=len(x_train), **kwargs
    )
    net = copy.deepcopy(start.net)
    loss = nn.functional.cross_entropy(net(x_train), y_train)
    grads = dict(
        zip(
            [n for n, _ in net.named_parameters()],
            torch.autograd.grad(loss, list(net.parameters())),
            strict=True,
        )
    )
    for name in WEIGHTS:
        a = start.assignments[name].reshape(-1)
        g = grads[name].reshape(-1).double()
        summed = torch.zeros(len(start.codebooks[name]), dtype=torch.float64)
        for k in range(len(summed)):
            summed[k] = g[a == k].sum()
        expected = start.codebooks[name].double() - lr * summed / (summed.abs() + 1e-8)
        torch.testing.assert_close(stepped.codebooks[name].double(), expected, rtol=0, atol=1e-6)


def test_per_layer_fractions_and_cluster_counts(digits, pretrained):
    x_train, y_train, _, _ = digits
    result = deep_compression(
        pretrained,
        x_train,
        y_train,
        prune_fraction={"0.weight": 0.9, "2.weight": 0.25},
        num_clusters={"0.weight": 3, "2.weight": 5},
        finetune_epochs=1,
    )
    params = dict(result.net.named_parameters())
    for name, fraction, k in (("0.weight", 0.9, 3), ("2.weight", 0.25, 5)):
        w = params[name].detach().numpy()
        assert int((w == 0).sum()) == int(np.floor(fraction * w.size + 0.5))
        assert np.unique(w[w != 0]).size <= k


def test_masks_exact_under_ties():
    net = nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 1.0, -2.0], [0.0, 0.5, 0.5, 0.5, 3.0]]))
    (mask,) = magnitude_prune_masks(net, 0.3, ["weight"]).values()
    assert int((~mask).sum()) == 3  # round(0.3 * 10)
    assert torch.all(net.weight[~mask] == 0)


def test_kmeans_linear_init_reaches_a_lloyd_fixed_point():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [rng.normal(c, 0.01, size=n) for c, n in ((-0.5, 30), (0.1, 200), (0.6, 5))]
    )
    centroids, labels = kmeans_1d_linear_init(values, 3)
    # three well separated groups: centroids are their means (numpy), in ascending order
    expected = [values[:30].mean(), values[30:230].mean(), values[230:].mean()]
    np.testing.assert_allclose(centroids, expected, rtol=1e-10)
    # a fixed point: every value sits with its nearest centroid, every centroid is its mean
    nearest = np.argmin(np.abs(values[:, None] - centroids[None]), axis=1)
    np.testing.assert_array_equal(labels, nearest)
    # fewer distinct values than clusters
    c2, l2 = kmeans_1d_linear_init(np.array([1.0, 1.0, 2.0]), 8)
    np.testing.assert_allclose(c2, [1.0, 2.0])
    np.testing.assert_array_equal(l2, [0, 0, 1])


def test_rejects_bad_arguments(digits, pretrained):
    x_train, y_train, _, _ = digits
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        deep_compression(pretrained, x_train, y_train, prune_fraction=1.0)
    with pytest.raises(ValueError, match="missing"):
        deep_compression(pretrained, x_train, y_train, prune_fraction={"0.weight": 0.5})
    with pytest.raises(ValueError, match="positive integer"):
        deep_compression(pretrained, x_train, y_train, prune_fraction=0.5, num_clusters=0)


# --------------------------------------------------------------------------- codebook fine-tuning


def _tiny_shared_net():
    """A 4-3-2 net whose first weight matrix takes 2 shared values and zeros (hand-built)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assign = torch.tensor([[0, 1, -1, 0], [-1, -1, 1, 1], [0, -1, 0, 1]])
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.5, -0.25])[assign.clamp_min(0)] * (assign >= 0))
    return net, {"0.weight": assign}


def test_finetune_codebook_moves_each_shared_value_by_its_summed_gradient():
    """One full-batch Adam step: value_k -= lr * S_k / (|S_k| + eps), S_k = Σ_{w in k} ∂E/∂w."""
    net, assign = _tiny_shared_net()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    y = torch.arange(16) % 2
    start = copy.deepcopy(net)
    loss = nn.functional.cross_entropy(start(x), y)
    g = torch.autograd.grad(loss, start[0].weight)[0].double()
    a = assign["0.weight"]
    summed = torch.tensor([g[a == k].sum() for k in range(2)])
    lr = 1e-2
    tuned = finetune_codebook(net, assign, x, y, num_epochs=1, lr=lr, batch_size=16)
    expected = torch.tensor([0.5, -0.25], dtype=torch.float64) - lr * summed / (summed.abs() + 1e-8)
    torch.testing.assert_close(tuned.codebooks["0.weight"].double(), expected, rtol=0, atol=1e-6)
    w = net[0].weight.detach()
    assert torch.equal(w[a == -1], torch.zeros(int((a == -1).sum())))  # pruned stay exactly 0
    for k in range(2):  # tied weights stay tied, at their shared value
        assert torch.all(w[a == k] == tuned.codebooks["0.weight"][k])
    assert len(tuned.training.losses) == 1


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_finetune_codebook_on_a_convolution_in_either_memory_layout(layout):
    """The same hand-computed Adam step as above on a 4-d kernel, whether it is stored
    contiguous or channels-last (as :func:`~bayes_sws.zoo.nets.lenet5_caffe` stores its)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Flatten(), nn.Linear(3 * 2 * 2, 2))
    assign = torch.arange(24).reshape(3, 2, 2, 2) % 3 - 1  # -1 pruned, clusters 0 and 1
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.3, -0.2])[assign.clamp_min(0)] * (assign >= 0))
    net = net.to(memory_format=layout)
    assert net[0].weight.is_contiguous() == (layout == torch.contiguous_format)
    x = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(4))
    y = torch.arange(8) % 2
    start = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    g = torch.autograd.grad(nn.functional.cross_entropy(start(x), y), start[0].weight)[0]
    summed = torch.stack([g[assign == k].double().sum() for k in range(2)])
    lr = 1e-2
    tuned = finetune_codebook(net, {"0.weight": assign}, x, y, num_epochs=1, lr=lr, batch_size=8)
    expected = torch.tensor([0.3, -0.2], dtype=torch.float64) - lr * summed / (summed.abs() + 1e-8)
    torch.testing.assert_close(tuned.codebooks["0.weight"].double(), expected, rtol=0, atol=1e-6)
    w = net[0].weight.detach()
    assert torch.all(w[assign == -1] == 0)
    for k in range(2):
        assert torch.all(w[assign == k] == tuned.codebooks["0.weight"][k])


def test_finetune_codebook_with_zero_epochs_only_ties():
    net, assign = _tiny_shared_net()
    with torch.no_grad():
        net[0].weight.add_(0.01 * torch.arange(12.0).reshape(3, 4))  # untie
    tuned = finetune_codebook(net, assign, torch.zeros(1, 4), torch.zeros(1).long(), num_epochs=0)
    a, w = assign["0.weight"], net[0].weight.detach()
    base = torch.tensor([0.5, -0.25])[a.clamp_min(0)] + 0.01 * torch.arange(12.0).reshape(3, 4)
    for k in range(2):  # each value is the mean of its members, counted by hand
        assert tuned.codebooks["0.weight"][k] == pytest.approx(float(base[a == k].mean()), abs=1e-7)
        assert torch.all(w[a == k] == tuned.codebooks["0.weight"][k])
    assert torch.all(w[a == -1] == 0)
    assert tuned.training is None


def test_finetune_codebook_rejects_bad_assignments():
    net, assign = _tiny_shared_net()
    x, y = torch.zeros(2, 4), torch.zeros(2).long()
    with pytest.raises(ValueError, match="shape"):
        finetune_codebook(net, {"0.weight": torch.zeros(4, 3).long()}, x, y, num_epochs=1)
    with pytest.raises(ValueError, match="holds -2"):
        finetune_codebook(net, {"0.weight": assign["0.weight"] - 1}, x, y, num_epochs=1)
    with pytest.raises(ValueError, match="does not have"):
        finetune_codebook(net, {"9.weight": assign["0.weight"]}, x, y, num_epochs=1)
    with pytest.raises(ValueError, match="num_epochs"):
        finetune_codebook(net, assign, x, y, num_epochs=-1)


def test_unit_pruning_after_kmeans_is_prune_units_on_the_shared_network(digits, pretrained):
    from bayes_sws.compress import prune_units

    x_train, y_train, _, _ = digits
    kwargs = {"prune_fraction": 0.8, "num_clusters": 8, "finetune_epochs": 2, "lr": 3e-3}
    kwargs |= {"seed": 0, "remove_dead_units": True}
    with pytest.raises(ValueError, match="remove_dead_units=True"):
        deep_compression(
            pretrained, x_train, y_train, **{**kwargs, "remove_dead_units": False}, prune_units=0.01
        )
    # oracle: prune_units by hand on the network k-means shared (no centroid epochs: tied only)
    shared = deep_compression(pretrained, x_train, y_train, centroid_epochs=0, **kwargs)
    by_hand = prune_units(shared.net, x_train, y_train, max_loss_increase=0.01)
    pruned = deep_compression(
        pretrained, x_train, y_train, centroid_epochs=0, prune_units=0.01, **kwargs
    )
    assert pruned.unit_pruning is not None and pruned.unit_pruning.num_pruned > 0
    assert torch.equal(pruned.unit_pruning.pruned["0"], by_hand.pruned["0"])
    for p, q in zip(pruned.net.parameters(), by_hand.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    # with centroid fine-tuning the weights that read a pruned unit stay 0, and the units go
    tuned = deep_compression(
        pretrained, x_train, y_train, centroid_epochs=2, prune_units=0.01, **kwargs
    )
    mask = tuned.unit_pruning.zeroed["2.weight"]
    assert torch.all(tuned.net[2].weight.detach()[mask] == 0)
    assert torch.all(tuned.assignments["2.weight"][mask] == -1)
    assert tuned.stored_net[0].weight.shape[0] <= 64 - tuned.unit_pruning.num_pruned
