"""Quantisation, merging and storage accounting against hand counts and scipy/numpy oracles."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from bayes_sws.compress.coding import (
    entropy_bits,
    huffman_code,
    huffman_code_lengths,
    relative_index_fillers,
    rice_bits,
    rice_parameter,
)
from bayes_sws.compress.params import layer_kind
from bayes_sws.compress.plots import plot_layer_sparsity, plot_weights_before_after
from bayes_sws.compress.quantize import merge_components, quantize
from bayes_sws.compress.storage import storage_report, stored_network
from bayes_sws.compress.surgery import remove_dead_units


def _set(param: torch.Tensor, values) -> None:
    with torch.no_grad():
        param.copy_(torch.as_tensor(values, dtype=param.dtype).reshape(param.shape))


# --------------------------------------------------------------------------- Huffman


def _brute_force_optimal_bits(freqs: list[int]) -> int:
    """Least Σ f·l over all length vectors of a prefix code (Kraft: Σ 2^-l <= 1)."""
    n = len(freqs)
    best = math.inf
    for lengths in itertools.product(range(1, n), repeat=n):
        if sum(2.0**-length for length in lengths) <= 1.0:
            best = min(best, sum(f * n for f, n in zip(freqs, lengths, strict=True)))
    return best


def _is_prefix_free(words) -> bool:
    words = list(words)
    return not any(a != b and b.startswith(a) for a in words for b in words)


def test_huffman_textbook_example():
    # CLRS (3rd ed.) Fig. 16.5: a:45 b:13 c:12 d:16 e:9 f:5 (thousands) -> 224 bits
    freqs = {"a": 45, "b": 13, "c": 12, "d": 16, "e": 9, "f": 5}
    code = huffman_code(freqs)
    assert _is_prefix_free(code.values())
    assert set(code) == set(freqs)
    lengths = huffman_code_lengths(freqs)
    assert lengths == {"a": 1, "b": 3, "c": 3, "d": 3, "e": 4, "f": 4}
    assert sum(freqs[s] * lengths[s] for s in freqs) == 224


@pytest.mark.parametrize("seed", range(6))
def test_huffman_matches_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    freqs = [int(f) for f in rng.integers(1, 60, size=rng.integers(2, 7))]
    code = huffman_code(freqs)
    assert _is_prefix_free(code.values())
    # a full binary tree: Kraft's sum is exactly one
    assert sum(2.0 ** -len(w) for w in code.values()) == pytest.approx(1.0)
    total = sum(freqs[s] * len(w) for s, w in code.items())
    assert total == _brute_force_optimal_bits(freqs)
    # within one bit per symbol of the entropy (Shannon's bound)
    n = sum(freqs)
    h = stats.entropy(freqs, base=2) * n
    assert h - 1e-9 <= total < h + n


def test_huffman_degenerate_cases():
    assert huffman_code([]) == {}
    assert huffman_code({"x": 0}) == {}
    assert huffman_code_lengths({"x": 7}) == {"x": 1}
    assert huffman_code_lengths({"x": 7, "y": 0, "z": 3}) == {"x": 1, "z": 1}


def test_entropy_bits_matches_scipy():
    counts = [37, 2, 1, 10, 0, 5]
    assert entropy_bits(counts) == pytest.approx(stats.entropy(counts, base=2) * sum(counts))
    assert entropy_bits([5]) == 0.0
    assert entropy_bits([]) == 0.0


# --------------------------------------------------------------------------- relative indices


def test_relative_index_fillers_hand_counts():
    # 5-bit indices code 0..31 skipped zeros; a run of z zeros needs z // 32 fillers
    assert relative_index_fillers([31], 5) == 0  # 31 leading zeros fit
    assert relative_index_fillers([32], 5) == 1  # 32 do not
    assert relative_index_fillers([0, 32], 5) == 0  # 31 zeros between
    assert relative_index_fillers([0, 33], 5) == 1  # 32 zeros between
    assert relative_index_fillers([0, 64], 5) == 1  # 63 = filler after 31, then 31
    assert relative_index_fillers([0, 65], 5) == 2  # 64 zeros
    assert relative_index_fillers([10, 300], 8) == 1  # 289 zeros between, 8 bits
    assert relative_index_fillers([], 5) == 0


def _rice_string(run: int, k: int) -> str:
    """Golomb-Rice codeword of one run of zeros, spelled out: quotient in unary, remainder."""
    return "1" * (run // 2**k) + "0" + (format(run % 2**k, f"0{k}b") if k else "")


def test_rice_bits_hand_counts():
    assert _rice_string(0, 0) == "0" and _rice_string(3, 0) == "1110"
    assert _rice_string(5, 2) == "1001" and _rice_string(34, 3) == "11110010"
    assert rice_bits([0, 34, 3], 0) == 1 + 35 + 4
    assert rice_bits([0, 34, 3], 3) == 4 + 8 + 4
    assert rice_bits([], 4) == 0
    with pytest.raises(ValueError, match="k must be >= 0"):
        rice_bits([1], -1)


@pytest.mark.parametrize("seed", range(5))
def test_rice_parameter_is_the_best_k_by_spelled_out_codes(seed):
    rng = np.random.default_rng(seed)
    runs = rng.geometric(p=[0.3, 0.05, 0.01, 0.5, 0.002][seed], size=200) - 1
    spelled = {k: sum(len(_rice_string(int(z), k)) for z in runs) for k in range(25)}
    k, bits = rice_parameter(runs)
    assert bits == min(spelled.values()) == spelled[k] == rice_bits(runs, k)
    assert k == min(j for j, b in spelled.items() if b == bits)  # ties: the smaller k
    assert rice_parameter([]) == (0, 0)


def _row_1x40() -> nn.Linear:
    """A 1x40 weight with 0.5 at positions 0 and 35 and -1.25 at 39 (skips 0, 34, 3)."""
    net = nn.Linear(40, 1)
    row = np.zeros(40)
    row[[0, 35]] = 0.5
    row[39] = -1.25
    _set(net.weight, row)
    return net


def test_storage_rice_positions_by_hand():
    net = _row_1x40()
    (fixed,) = storage_report(net).layers
    (layer,) = storage_report(net, position_coding="rice").layers
    # k = 3: "0000" + "11110010" + "0011" = 16 bits (k = 2 and k = 4: 17)
    assert (layer.position_coding, layer.index_bits) == ("rice", 3)
    assert layer.relative_index_bits == 16 and layer.num_fillers == 0 and layer.num_stored == 3
    # symbols 0.5:2, -1.25:1 (no filler symbol) -> one bit each
    assert layer.cluster_index_bits == 3
    assert layer.entropy_bits == pytest.approx(stats.entropy([2, 1], base=2) * 3)
    assert layer.weight_bits == 16 + 3 + 64 < fixed.weight_bits == 90
    assert layer.total_bits == 83 + 32
    assert fixed.position_coding == "fixed"
    # Rice never costs more than fixed-width indices: it is one more candidate
    long_gaps = nn.Linear(1000, 1, bias=False)
    flat = np.zeros(1000)
    flat[::25] = 0.5  # every run 24 zeros: 5 bits fixed, 6 bits Rice (k = 4: 1 + 1 + 4)
    _set(long_gaps.weight, flat)
    (fixed,) = storage_report(long_gaps).layers
    (either,) = storage_report(long_gaps, position_coding="rice").layers
    assert rice_parameter([24] * 40) == (4, 40 * 6)
    assert either.position_coding == "fixed" and either.weight_bits == fixed.weight_bits
    with pytest.raises(ValueError, match="position_coding must be one of"):
        storage_report(net, position_coding="gamma")


def test_storage_1x40_row_by_hand():
    net = _row_1x40()
    report = storage_report(net)
    (layer,) = report.layers
    # non-zeros at 0, 35, 39: skips 0, 34, 3 -> one filler (34 > 31), 4 stored entries
    assert layer.kind == "dense" and layer.index_bits == 5
    assert (layer.num_nonzero, layer.num_fillers, layer.num_stored) == (3, 1, 4)
    assert layer.storage_format == "sparse"
    assert layer.relative_index_bits == 4 * 5
    # stored symbols 0.5:2, -1.25:1, zero(filler):1 -> Huffman lengths 1, 2, 2
    assert layer.cluster_index_bits == 2 * 1 + 1 * 2 + 1 * 2
    assert layer.entropy_bits == pytest.approx(stats.entropy([2, 1, 1], base=2) * 4)
    assert layer.num_distinct == 2 and layer.codebook_bits == 2 * 32
    assert layer.weight_bits == 20 + 6 + 64
    assert layer.num_bias == 1 and layer.bias_bits == 32
    assert layer.total_bits == 90 + 32
    assert layer.original_bits == 41 * 32
    assert layer.compression_rate == pytest.approx(41 * 32 / 122)
    # full layout: 37 zeros (1 bit), 0.5 twice (2 bits), -1.25 once (2 bits) + codebook
    assert layer.full_bits == 37 + 4 + 2 + 64
    assert report.total_bits == 122 and report.original_bits == 41 * 32
    assert report.nonzero_fraction == pytest.approx(3 / 40)


def test_storage_long_gaps_need_several_fillers():
    net = nn.Linear(200, 1, bias=False)
    row = np.zeros(200)
    row[[31, 64, 129]] = 0.75  # skips 31, 32, 64 -> 0 + 1 + 2 fillers
    _set(net.weight, row)
    (layer,) = storage_report(net).layers
    assert layer.num_fillers == 3 and layer.num_stored == 6
    assert layer.relative_index_bits == 6 * 5
    assert layer.cluster_index_bits == 6  # two symbols (0.75, zero) at one bit each
    assert layer.codebook_bits == 32
    assert layer.total_bits == 30 + 6 + 32


def test_storage_conv_layer_uses_8_bit_indices():
    net = nn.Conv2d(4, 1, kernel_size=(1, 150))  # weight (1, 4, 1, 150): 600 entries
    flat = np.zeros(600)
    flat[0], flat[256], flat[513] = 0.1, -0.2, 0.1  # skips 0, 255, 256 -> 1 filler
    _set(net.weight, flat)
    report = storage_report(net)
    (layer,) = report.layers
    assert layer.kind == "conv" and layer.index_bits == 8
    assert layer.num_fillers == 1 and layer.num_stored == 4
    assert layer.relative_index_bits == 32
    assert layer.cluster_index_bits == 6  # 0.1:2 (1 bit), -0.2:1 and zero:1 (2 bits each)
    assert layer.total_bits == 32 + 6 + 64 + 32  # + bias
    assert report.compression_rate == pytest.approx(601 * 32 / 134)
    # with 5-bit indices: skips 255 and 256 cost 7 and 8 fillers
    (layer5,) = storage_report(net, index_bits=5).layers
    assert layer5.num_fillers == 15
    assert layer5.num_stored == 18


@pytest.mark.parametrize(
    "make", [lambda: nn.Linear(40, 3), lambda: nn.Conv2d(1, 3, kernel_size=(1, 40))]
)
def test_storage_column_order_by_hand(make):
    # three output units, one shared value, all on input 20 (the matrix is (3, 40))
    net = make()
    matrix = np.zeros((3, 40))
    matrix[:, 20] = 0.5
    _set(net.weight, matrix)
    # by row: positions 20, 60, 100 skip 20, 39, 39 zeros -> 2 fillers, 5 entries;
    # symbols 0.5:3, zero:2 -> 1 bit each; codebook 32
    (row,) = storage_report(net, index_bits=5, order="row").layers
    assert (row.order, row.num_fillers, row.num_stored) == ("row", 2, 5)
    assert row.weight_bits == 5 * 5 + 5 + 32
    # by column (the (40, 3) transpose): positions 60, 61, 62 skip 60, 0, 0 -> 1 filler
    (col,) = storage_report(net, index_bits=5, order="column").layers
    assert (col.order, col.num_fillers, col.num_stored) == ("column", 1, 4)
    assert col.weight_bits == 4 * 5 + 4 + 32
    assert col.total_bits == 56 + 3 * 32
    # "best" (the default) takes the cheaper one
    (best,) = storage_report(net, index_bits=5).layers
    assert best.order == "column" and best.total_bits == col.total_bits
    assert "sparse by column" in storage_report(net, index_bits=5).format_table()
    with pytest.raises(ValueError, match="order must be one of .*'csr'"):
        storage_report(net, order="csr")


def test_storage_tensor_without_zeros_uses_full_layout():
    net = nn.Linear(4, 2)
    _set(net.weight, [1, 1, 1, 1, 1, 1, 2, 3])
    (layer,) = storage_report(net).layers
    # sparse would be 8*5 index + Huffman(6, 1, 1 -> 1, 2, 2 bits) 10 + codebook 96 = 146
    assert layer.sparse_bits == 40 + 10 + 96
    assert layer.storage_format == "full"
    assert layer.relative_index_bits == 0
    assert layer.cluster_index_bits == 10
    assert layer.weight_bits == 10 + 96
    assert layer.total_bits == 106 + 2 * 32


def test_unquantised_network_is_stored_raw_at_rate_one():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3))
    report = storage_report(net)
    assert [r.storage_format for r in report.layers] == ["raw", "raw"]
    assert report.total_bits == 32 * (110 + 33)
    assert report.compression_rate == 1.0


def test_totals_biases_and_uncompressed_modules():
    net = nn.Sequential(nn.Linear(40, 1), nn.Linear(1, 3))
    row = np.zeros(40)
    row[[0, 35]] = 0.5
    row[39] = -1.25
    _set(net[0].weight, row)
    report = storage_report(net, param_names=["0.weight"])
    (layer,) = report.layers
    assert layer.name == "0.weight" and layer.module == "0" and layer.num_bias == 1
    assert report.other_params == 3 + 3 and report.other_bits == 6 * 32
    assert report.total_bits == 122 + 6 * 32
    assert report.num_params == 41 + 6
    assert report.compression_rate == pytest.approx(47 * 32 / (122 + 192))
    # the same by per-name index widths: 8 bits make the 34-zero gap fit
    (wide,) = storage_report(net, param_names=["0.weight"], index_bits={"0.weight": 8}).layers
    assert wide.num_fillers == 0 and wide.relative_index_bits == 3 * 8


def test_report_serialises():
    import json

    net = nn.Linear(4, 2)
    report = storage_report(net)
    json.dumps(report.to_dict())
    assert "| weight |" in report.format_table()


def test_layer_kind_from_module_or_shape():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.kernel = nn.Parameter(torch.zeros(2, 2, 3, 3))
            self.matrix = nn.Parameter(torch.zeros(2, 3))

    net = nn.ModuleDict({"c": nn.Conv1d(2, 2, 3), "l": nn.Linear(2, 2), "o": Odd()})
    assert layer_kind(net, "c.weight") == "conv"
    assert layer_kind(net, "c.bias") == "conv"
    assert layer_kind(net, "l.weight") == "dense"
    assert layer_kind(net, "o.kernel") == "conv"
    assert layer_kind(net, "o.matrix") == "dense"


def test_storage_rejects_unknown_names():
    with pytest.raises(ValueError, match="not parameters"):
        storage_report(nn.Linear(2, 2), param_names=["nope"])


# --------------------------------------------------------------------------- quantisation


def _mixture():
    pi = torch.tensor([0.6, 0.1, 0.1, 0.15, 0.05])
    mu = torch.tensor([0.0, -0.4, -0.1, 0.2, 0.5])
    sigma = torch.tensor([0.02, 0.05, 0.03, 0.04, 1e-3])
    return pi, mu, sigma


def _oracle_component(w: np.ndarray, pi, mu, sigma) -> np.ndarray:
    log_joint = np.log(pi.numpy())[None] + stats.norm.logpdf(
        w[:, None], loc=mu.numpy()[None], scale=sigma.numpy()[None]
    )
    return np.argmax(log_joint, axis=1)


def test_quantize_assigns_most_responsible_component():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(30, 20), nn.Tanh(), nn.Linear(20, 5))
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[2].weight[0, :4] = torch.tensor([0.9, -2.0, 0.55, 0.48])  # far from every mean
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    pi, mu, sigma = _mixture()
    result = quantize(net, pi, mu, sigma, merge_threshold=0.0)
    assert result.param_names == ("0.weight", "2.weight")
    params = dict(result.net.named_parameters())
    for name in result.param_names:
        w = before[name].double().numpy().ravel()
        expected = _oracle_component(w, pi.double(), mu.double(), sigma.double())
        np.testing.assert_array_equal(result.assignments[name].numpy().ravel(), expected)
        np.testing.assert_array_equal(
            params[name].detach().numpy().ravel(), mu.numpy()[expected].astype(np.float32)
        )
        np.testing.assert_array_equal(
            result.counts[name].numpy(), np.bincount(expected, minlength=5)
        )
        # zero component prunes: exactly zero where the oracle says component 0
        assert int((params[name] == 0).sum()) == int((expected == 0).sum())
    # biases untouched, input network untouched
    for name in ("0.bias", "2.bias"):
        torch.testing.assert_close(params[name], before[name], rtol=0, atol=0)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0)


def test_quantize_codebook_equals_shared_values():
    torch.manual_seed(2)
    net = nn.Linear(50, 40)
    pi, mu, sigma = _mixture()
    result = quantize(net, pi, mu, sigma, merge_threshold=0.0)
    shared = np.unique(result.net.weight.detach().numpy())
    used = result.values.numpy()[result.counts["weight"].numpy() > 0].astype(np.float32)
    np.testing.assert_array_equal(shared, np.sort(used))
    (layer,) = storage_report(result.net).layers
    assert layer.num_distinct == int((shared != 0).sum())


def test_merge_two_nearly_identical_components():
    pi = torch.tensor([0.5, 0.1, 0.3, 0.1], dtype=torch.float64)
    mu = torch.tensor([0.0, 0.5, 0.5001, -0.5], dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.05, 0.05, 0.05], dtype=torch.float64)
    net = nn.Linear(1, 6, bias=False)
    _set(net.weight, [0.01, 0.49, 0.5002, 0.52, -0.45, -0.01])
    result = quantize(net, pi, mu, sigma, merge_threshold=1e-3)
    merged = (0.1 * 0.5 + 0.3 * 0.5001) / 0.4
    np.testing.assert_allclose(result.values.numpy(), [0.0, merged, -0.5], rtol=1e-12)
    np.testing.assert_allclose(result.pi.numpy(), [0.5, 0.4, 0.1], rtol=1e-12)
    np.testing.assert_array_equal(result.component_map.numpy(), [0, 1, 1, 2])
    np.testing.assert_array_equal(
        result.net.weight.detach().numpy().ravel(),
        np.array([0.0, merged, merged, merged, -0.5, 0.0], dtype=np.float32),
    )
    # moment-matched width of the merged pair, against numpy's mixture moments
    p = np.array([0.1, 0.3]) / 0.4
    m = np.array([0.5, 0.5001])
    second_moment = p @ (0.05**2 + m**2)
    assert result.sigma[1].item() == pytest.approx(np.sqrt(second_moment - (p @ m) ** 2), rel=1e-12)


def test_merge_threshold_against_numerical_kl():
    # symmetrised KL of the two non-zero components, by quadrature
    mu_a, s_a, mu_b, s_b = 0.3, 0.05, 0.33, 0.06
    pa, pb = stats.norm(mu_a, s_a), stats.norm(mu_b, s_b)

    def kl(p, q):
        return integrate.quad(
            lambda w: p.pdf(w) * (p.logpdf(w) - q.logpdf(w)), -1, 2, points=[0.3]
        )[0]

    divergence = 0.5 * (kl(pa, pb) + kl(pb, pa))
    pi, mu, sigma = [0.8, 0.1, 0.1], [0.0, mu_a, mu_b], [0.01, s_a, s_b]
    *_, below = merge_components(pi, mu, sigma, merge_threshold=divergence * 1.001)
    *_, above = merge_components(pi, mu, sigma, merge_threshold=divergence * 0.999)
    np.testing.assert_array_equal(below, [0, 1, 1])
    np.testing.assert_array_equal(above, [0, 1, 2])


def test_merging_repeats_until_no_pair_qualifies():
    d = 0.01
    pi, mu, sigma = [0.7, 0.1, 0.1, 0.1], [0.0, 1.0, 1.0 + d, 1.0 + 2 * d], [0.1] * 4
    # first merge (1, 1+d) -> 1 + d/2; its distance to 1 + 2d is 1.5 d
    m_pi, m_mu, _, cmap = merge_components(
        pi, mu, sigma, merge_threshold=1.6 * d, merge_criterion="mean"
    )
    np.testing.assert_array_equal(cmap, [0, 1, 1, 1])
    np.testing.assert_allclose(m_mu, [0.0, np.average(mu[1:], weights=pi[1:])])
    np.testing.assert_allclose(m_pi, [0.7, 0.3])
    *_, cmap = merge_components(pi, mu, sigma, merge_threshold=1.2 * d, merge_criterion="mean")
    assert len(np.unique(cmap)) == 3 and cmap[0] == 0  # one merge among the three, no more


def test_components_merged_into_zero_prune():
    pi = torch.tensor([0.9, 0.05, 0.05], dtype=torch.float64)
    mu = torch.tensor([0.0, 0.004, 0.3], dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.05, 0.02], dtype=torch.float64)
    net = nn.Linear(1, 4, bias=False)
    weights = [0.0, 0.05, 0.004, 0.31]  # 0.05 belongs to the wide near-zero component 1
    _set(net.weight, weights)
    kept = quantize(net, pi, mu, sigma, merge_threshold=0.0)
    oracle = _oracle_component(
        np.array(weights, dtype=np.float32).astype(np.float64), pi, mu, sigma
    )
    assert oracle.tolist() == [0, 1, 0, 2]
    assert kept.assignments["weight"].ravel().tolist() == oracle.tolist()
    merged = quantize(net, pi, mu, sigma, merge_threshold=0.05, merge_criterion="mean")
    assert merged.values[0].item() == 0.0 and merged.num_components == 2
    np.testing.assert_array_equal(
        merged.net.weight.detach().numpy().ravel(), np.array([0, 0, 0, 0.3], dtype=np.float32)
    )
    assert merged.num_pruned == 3


def test_without_zero_component_nothing_is_special():
    pi, mu, sigma = torch.tensor([0.5, 0.5]), torch.tensor([0.1, -0.1]), torch.tensor([0.05, 0.05])
    net = nn.Linear(1, 2, bias=False)
    _set(net.weight, [0.2, -0.05])
    result = quantize(net, pi, mu, sigma, zero_component=False)
    np.testing.assert_array_equal(
        result.net.weight.detach().numpy().ravel(), np.array([0.1, -0.1], dtype=np.float32)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mu": torch.tensor([0.1, 0.2])}, "mu\\[0\\] == 0"),
        ({"sigma": torch.tensor([0.1, -0.2])}, "sigma must be positive"),
        ({"pi": torch.tensor([0.5, 0.3, 0.2])}, "same shape"),
        ({"param_names": ["bias2"]}, "not parameters"),
    ],
)
def test_quantize_validates_inputs(kwargs, match):
    args = {
        "pi": torch.tensor([0.5, 0.5]),
        "mu": torch.tensor([0.0, 0.2]),
        "sigma": torch.tensor([0.1, 0.1]),
    }
    args.update(kwargs)
    param_names = args.pop("param_names", None)
    with pytest.raises(ValueError, match=match):
        quantize(nn.Linear(2, 2), **args, param_names=param_names)


# --------------------------------------------------------------------------- plots


def test_plots_return_figures():
    from matplotlib.figure import Figure

    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(20, 10), nn.Linear(10, 3))
    pi, mu, sigma = _mixture()
    result = quantize(net, pi, mu, sigma)
    before = {n: p for n, p in net.named_parameters() if p.ndim == 2}
    after = {n: p for n, p in result.net.named_parameters() if p.ndim == 2}
    fig = plot_weights_before_after(before, after, result.assignments)
    assert isinstance(fig, Figure)
    scatter = fig.axes[0].collections[0]
    assert scatter.get_offsets().shape == (230, 2)
    fig2 = plot_weights_before_after(net, result.net, max_points=50)
    assert fig2.axes[0].collections[0].get_offsets().shape == (50, 2)

    report = storage_report(result.net)
    fig3 = plot_layer_sparsity(report)
    assert isinstance(fig3, Figure)
    heights = [bar.get_height() for bar in fig3.axes[0].patches]
    np.testing.assert_allclose(heights, [100 * r.nonzero_fraction for r in report.layers])
    fig3.savefig(__import__("io").BytesIO(), format="png")


# --------------------------------------------------------------------------- dead units


def _same_function(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-5)


def test_remove_dead_units_mlp_by_hand():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[2].weight[:, 1] = 0.0  # hidden unit 1 is never read: removed
        net[0].weight[2] = 0.0  # unit 2 has no inputs: tanh(bias) folds into the next bias
        net[0].bias[2] = 0.7
        net[2].weight[0] = 0.0
        net[2].weight[0, 2] = 1.5  # second-layer unit 0 reads only unit 2: no inputs after the fold
        net[2].bias[0] = -0.5  # constant relu(1.5 tanh(0.7) - 0.5) > 0 folds into the output bias
    removal = remove_dead_units(net)
    assert removal.removed == {"0": 2, "2": 1}
    assert removal.kept["0"].tolist() == [0, 3, 4] and removal.kept["2"].tolist() == [1, 2]
    small = removal.net
    assert small[0].weight.shape == (3, 4) and small[2].weight.shape == (2, 3)
    assert small[4].weight.shape == (2, 2) and small[4].in_features == 2
    _same_function(net, small, torch.randn(64, 4))
    assert net[0].weight.shape == (5, 4)  # the input is not modified
    with pytest.raises(TypeError, match="nn.Sequential"):
        remove_dead_units(nn.ModuleList([nn.Linear(2, 2)]))


def test_remove_dead_units_convolutions_pooling_and_flatten():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 3, 3),  # unpadded: a constant input channel folds into the bias
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 5),
        nn.ReLU(),
        nn.Linear(5, 2),
    )
    with torch.no_grad():
        net[0].weight[1] = 0.0  # filter 1 has no inputs: its constant map folds into conv 2
        net[5].weight[:, 2 * 4 : 3 * 4] = 0.0  # channel 2 of conv 2 is never read (a 2x2 block)
    removal = remove_dead_units(net)
    assert removal.removed == {"0": 1, "2": 1, "5": 0}
    assert removal.net[2].weight.shape == (2, 3, 3, 3) and removal.net[5].in_features == 8
    _same_function(net, removal.net, torch.randn(8, 1, 14, 14))


def test_padded_consumer_keeps_a_constant_channel():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1))
    with torch.no_grad():
        net[0].weight[0] = 0.0  # constant map, but zero padding makes its effect non-constant
    removal = remove_dead_units(net)
    assert removal.removed == {"0": 0} and removal.num_removed == 0
    _same_function(net, removal.net, torch.randn(4, 1, 9, 9))


def test_storage_of_a_smaller_network_against_the_original_by_hand():
    net = nn.Sequential(nn.Linear(40, 3), nn.ReLU(), nn.Linear(3, 1))
    matrix = np.zeros((3, 40))
    matrix[[0, 2], 20] = 0.5
    matrix[1, 5] = 0.5  # unit 1 is never read below
    _set(net[0].weight, matrix)
    _set(net[2].weight, [0.25, 0.0, -1.0])
    stored, report = stored_network(net, param_names=["0.weight"], remove_dead=True)
    assert stored[0].weight.shape == (2, 40)
    (layer,) = report.layers
    # (2, 40): positions 20 and 60 skip 20 and 39 -> 1 filler, 3 entries (columns tie);
    # symbols 0.5:2, zero:1 -> 1 bit each; codebook 32; 2 biases
    assert (layer.num_fillers, layer.num_stored) == (1, 3)
    assert layer.total_bits == 15 + 3 + 32 + 64
    # sizes are the original's: 120 weights and 3 biases; the second layer (2 + 1) is "other"
    assert layer.num_params == 120 and layer.nonzero_fraction == pytest.approx(2 / 120)
    assert layer.original_bits == 32 * 123
    assert report.other_params == 3 and report.num_params == 127
    assert report.total_bits == 114 + 96
    assert report.compression_rate == pytest.approx(32 * 127 / 210)
    # without removal the same call counts net itself
    same, plain = stored_network(net, param_names=["0.weight"])
    assert same is net and plain.layers[0].num_nonzero == 3
    with pytest.raises(ValueError, match="same parameter names"):
        storage_report(stored, reference=nn.Sequential(nn.Linear(40, 3)))
