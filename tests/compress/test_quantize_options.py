"""Quantisation options: codebooks counted without empty or near-duplicate components
(issue 17 item 5), assignment by likelihood and layers kept at 32-bit float (issue 16 item 6).

Oracles: hand-built mixtures and weights whose used components and merged groups
are known by construction (hand counts), the most responsible or most likely
component from ``scipy.stats.norm.logpdf``, π-weighted means in numpy, and bit
counts by hand (32 bits per float).
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import bayes_sws as sws
from bayes_sws.compress import load_compressed, quantize, save_compressed, storage_report
from bayes_sws.compress.pipeline import (
    compress_result,
    compress_result_kwargs,
    soft_weight_sharing,
)
from bayes_sws.compress.storage import shared_values
from bayes_sws.settings import CompressSettings
from bayes_sws.zoo.nets import build_network, mlp


def _weights(values) -> nn.Linear:
    net = nn.Linear(1, len(values), bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor(values, dtype=torch.float32).reshape(-1, 1))
    return net


def _oracle(w: np.ndarray, pi, mu, sigma, *, with_pi: bool = True) -> np.ndarray:
    """Index of each weight's component: argmax of [log π +] log N, by scipy."""
    log = stats.norm.logpdf(np.asarray(w, np.float64)[:, None], np.asarray(mu), np.asarray(sigma))
    if with_pi:
        log = log + np.log(np.asarray(pi) / np.sum(pi))
    return np.argmax(log, axis=1)


# --------------------------------------------------------------------------- issue 17 item 5
# The codebook of the report: zero, two tight components at ±0.38 that hold every
# weight, broad components of tiny weight beside them (-0.365, -0.359, -0.348) and
# beside zero (1.6e-6, 1.9e-6) to which no weight goes.
ISSUE_PI = [0.70, 0.15, 3e-4, 2e-4, 2e-4, 3e-4, 2e-4, 0.1488]
ISSUE_MU = [0.0, -0.38, -0.365, -0.359, -0.348, 1.6e-6, 1.9e-6, 0.38]
ISSUE_SIGMA = [0.003, 0.005, 0.040, 0.042, 0.041, 0.033, 0.039, 0.006]
ISSUE_W = [0.0, 0.001, -0.002, 0.0005, -0.381, -0.379, -0.3805, 0.378, 0.383, 0.38, 0.0]


def test_empty_components_are_not_counted_as_values_in_use():
    # hand count: the weights sit at 0, near -0.38 and near 0.38: three values in use,
    # five components (indices 2-6) empty; no merging (merge_threshold=0)
    result = quantize(_weights(ISSUE_W), ISSUE_PI, ISSUE_MU, ISSUE_SIGMA, merge_threshold=0)
    used = set(_oracle(np.array(ISSUE_W, np.float32), ISSUE_PI, ISSUE_MU, ISSUE_SIGMA).tolist())
    assert used == {0, 1, 7}  # the construction holds
    assert result.num_components == 8
    assert result.num_distinct_values == 3
    assert result.num_empty == 5
    assert result.num_merged == 0
    np.testing.assert_array_equal(
        shared_values(result.net), np.array([-0.38, 0.0, 0.38], dtype=np.float32)
    )


# Every component holds weights now, tight enough that the KL criterion keeps each apart.
DUP_PI = [0.40, 0.05, 0.10, 0.05, 0.10, 0.08, 0.06, 0.15, 1e-4]
DUP_MU = [0.0, 1.6e-6, 1.9e-6, -0.385, -0.365, -0.359, -0.348, 0.38, -0.37]
DUP_SIGMA = [1e-3, 1e-2, 3e-2, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 0.05]
# weights at each non-zero mean, and around zero where components 0, 1 and 2 win in turn
DUP_W = [0.0, 1e-4, 0.006, -0.006, 0.09, -0.385, -0.3851, -0.365, -0.359, -0.348, 0.38, 0.3801]


def _dup_result(value_tolerance: float):
    return quantize(
        _weights(DUP_W),
        DUP_PI,
        DUP_MU,
        DUP_SIGMA,
        merge_threshold=0,
        value_tolerance=value_tolerance,
    )


def _expected(groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Value of each original component after merging ``groups`` (π-weighted mean; 0 for the
    group of component 0), and the merged π of each group."""
    pi = np.array(DUP_PI) / np.sum(DUP_PI)
    value = np.array(DUP_MU, dtype=np.float64)
    group_pi = []
    for members in groups:
        mean = 0.0 if 0 in members else np.average(value[members], weights=pi[members])
        value[members] = mean
        group_pi.append(pi[members].sum())
    return value, np.array(group_pi)


def test_value_tolerance_merges_near_duplicates_into_three_values():
    owner = _oracle(np.array(DUP_W, np.float32), DUP_PI, DUP_MU, DUP_SIGMA)
    assert set(owner.tolist()) == set(range(8))  # all but the broad component 8 hold weights
    # scale 0.385 (largest |value| in use), threshold 0.15 * 0.385 = 0.058: the four negative
    # values (spread 0.037) merge, 1.6e-6 and 1.9e-6 join zero, 0.38 stays; 8 is empty
    result = _dup_result(0.15)
    groups = [[0, 1, 2], [3, 4, 5, 6], [7], [8]]
    value, group_pi = _expected(groups)
    np.testing.assert_array_equal(
        result.net.weight.detach().numpy().ravel(), value[owner].astype(np.float32)
    )
    np.testing.assert_allclose(
        result.values.numpy(), [value[g[0]] for g in groups], rtol=1e-12, atol=0
    )
    assert result.values[0].item() == 0.0
    # the empty component kept its own π and took no part (not in the negative group's mean)
    np.testing.assert_allclose(result.pi.numpy()[:3], group_pi[:3], rtol=1e-12)
    assert result.pi[3].item() == pytest.approx(DUP_PI[8] / sum(DUP_PI), rel=1e-12)
    assert result.component_map.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 3]
    assert result.num_distinct_values == 3
    assert (result.num_components, result.num_merged, result.num_empty) == (4, 5, 1)
    assert result.num_pruned == int(np.isin(owner, [0, 1, 2]).sum())


def test_a_small_value_tolerance_only_prunes_the_values_beside_zero():
    # threshold 1e-4 * 0.385 = 3.9e-5: 1.6e-6 and 1.9e-6 join zero; the closest other pair
    # (-0.365, -0.359) is 0.006 apart
    owner = _oracle(np.array(DUP_W, np.float32), DUP_PI, DUP_MU, DUP_SIGMA)
    result = _dup_result(1e-4)
    value, _ = _expected([[0, 1, 2]])
    np.testing.assert_array_equal(
        result.net.weight.detach().numpy().ravel(), value[owner].astype(np.float32)
    )
    assert result.num_distinct_values == 6  # 0, four negative values, 0.38
    # just below the smallest gap between used values nothing merges: as without the option
    none = _dup_result(0.99 * 3e-7 / 0.385)
    off = _dup_result(0.0)
    np.testing.assert_array_equal(
        none.net.weight.detach().numpy().ravel(), np.array(DUP_MU)[owner].astype(np.float32)
    )
    assert torch.equal(none.net.weight, off.net.weight)
    assert none.num_distinct_values == off.num_distinct_values == 8
    assert none.component_map.tolist() == list(range(9))


# --------------------------------------------------------------------------- issue 16 item 6


def test_assignment_by_likelihood_ignores_pi():
    pi = [0.97, 0.01, 0.01, 0.01]
    mu = [0.0, -0.3, 0.1, 0.35]
    sigma = [0.05, 0.02, 0.03, 0.08]
    w = np.linspace(-0.6, 0.6, 241).astype(np.float32)
    net = _weights(w.tolist())
    by_pi = quantize(net, pi, mu, sigma, merge_threshold=0)
    by_lik = quantize(net, pi, mu, sigma, merge_threshold=0, assignment="likelihood")
    owner = _oracle(w, pi, mu, sigma, with_pi=False)
    np.testing.assert_array_equal(by_lik.assignments["weight"].numpy().ravel(), owner)
    np.testing.assert_array_equal(
        by_lik.net.weight.detach().numpy().ravel(), np.array(mu)[owner].astype(np.float32)
    )
    with_pi = _oracle(w, pi, mu, sigma)
    np.testing.assert_array_equal(by_pi.assignments["weight"].numpy().ravel(), with_pi)
    assert (owner != with_pi).sum() > 10  # π matters here: the two rules differ
    assert by_lik.num_pruned == int((owner == 0).sum()) < by_pi.num_pruned


def test_a_component_with_zero_pi_never_wins_by_likelihood():
    w = [0.0, 0.2, 0.21, -0.2]
    result = quantize(
        _weights(w), [0.5, 0.5, 0.0], [0.0, -0.2, 0.2], [0.05] * 3, assignment="likelihood"
    )
    assert 2 not in result.assignments["weight"].tolist()


def _mlp_spec() -> dict:
    return {"name": "mlp", "input_shape": [4], "num_classes": 2, "hidden": [3]}


def test_kept_layer_is_bit_identical_and_stored_at_32_bits(tmp_path):
    torch.manual_seed(0)
    net = build_network(**_mlp_spec())  # 0.weight (3, 4), 0.bias (3), 2.weight (2, 3), 2.bias (2)
    result = quantize(
        net, [0.6, 0.2, 0.2], [0.0, -0.3, 0.3], [0.1, 0.1, 0.1], keep_float=["2.weight"]
    )
    assert result.param_names == ("0.weight",) and result.keep_float == ("2.weight",)
    assert set(result.assignments) == set(result.counts) == {"0.weight"}
    params, original = dict(result.net.named_parameters()), dict(net.named_parameters())
    assert torch.equal(params["2.weight"], original["2.weight"])
    assert set(np.unique(params["0.weight"].detach().numpy())) <= {
        0.0,
        np.float32(-0.3),
        np.float32(0.3),
    }
    report = storage_report(result.net, param_names=result.param_names)
    # hand count: the kept weight (6) and its bias (2) at 32 bits, outside the compressed rows
    assert report.other_params == 8 and report.other_bits == 8 * 32
    (row,) = report.layers
    assert row.name == "0.weight" and row.bias_bits == 3 * 32
    assert report.total_bits == row.total_bits + 256
    # the file writes it as a plain float32 tensor: read back bit for bit
    path = tmp_path / "kept.sws"
    saved = save_compressed(
        result.net, path, architecture=_mlp_spec(), param_names=result.param_names
    )
    assert saved.payload_bits == report.total_bits
    loaded = dict(load_compressed(path).named_parameters())
    for name, p in result.net.named_parameters():
        assert torch.equal(loaded[name], p), name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"keep_float": ["0.bias"]}, "not among the parameters to quantise"),
        ({"keep_float": ["0.weight", "2.weight"]}, "leaves no parameter to quantise"),
        ({"keep_float": ["2.weight", "2.weight"]}, "duplicates"),
        ({"assignment": "prior"}, "assignment must be one of"),
        ({"value_tolerance": -0.1}, "value_tolerance must be a finite number >= 0"),
        ({"value_tolerance": float("nan")}, "value_tolerance must be a finite number >= 0"),
    ],
)
def test_options_are_validated(kwargs, match):
    net = build_network(**_mlp_spec())
    with pytest.raises(ValueError, match=match):
        quantize(net, [0.5, 0.5], [0.0, 0.2], [0.1, 0.1], **kwargs)


# --------------------------------------------------------------------------- the pipeline


def _small_fit():
    torch.manual_seed(1)
    x = torch.randn(80, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    model = sws.SWSModel(mlp([6, 12, 3]), sws.MixturePrior(5, pi_zero=0.8), "categorical")
    fit = sws.fit(model, x[:60], y[:60], num_steps=30, lr=1e-2, seed=0)
    return fit, x[60:], y[60:]


@pytest.fixture(scope="module")
def small_fit():
    return _small_fit()


def test_compress_result_counts_the_values_in_use(small_fit):
    fit, x_test, y_test = small_fit
    result = compress_result(fit, x_test, y_test, merge_threshold=0)
    pi, mu, sigma = (t.double().numpy() for t in fit.mixture())
    retrained = dict(fit.map_network().named_parameters())
    names = ["0.weight", "2.weight"]
    owners = np.concatenate(
        [_oracle(retrained[n].detach().reshape(-1).numpy(), pi, mu, sigma) for n in names]
    )
    quantised = dict(result.net.named_parameters())
    distinct = np.unique(np.concatenate([quantised[n].detach().reshape(-1).numpy() for n in names]))
    record = result.to_dict()
    assert record["num_distinct_values"] == result.num_distinct_values == distinct.size
    assert record["num_distinct_values"] == np.unique(owners).size
    assert record["num_empty"] == 5 - np.unique(owners).size
    assert record["num_merged"] == 0 and record["num_components"] == 5
    assert record["config"]["value_tolerance"] == 0.0
    assert record["config"]["assignment"] == "responsibility"
    assert record["config"]["keep_float"] == []


def test_compress_result_by_likelihood_with_a_kept_last_layer(small_fit):
    fit, x_test, y_test = small_fit
    result = compress_result(
        fit, x_test, y_test, merge_threshold=0, assignment="likelihood", keep_float=["2.weight"]
    )
    pi, mu, sigma = (t.double().numpy() for t in fit.mixture())
    retrained = dict(fit.map_network().named_parameters())
    quantised = dict(result.net.named_parameters())
    w = retrained["0.weight"].detach().reshape(-1).numpy()
    owner = _oracle(w, pi, mu, sigma, with_pi=False)
    np.testing.assert_array_equal(
        quantised["0.weight"].detach().reshape(-1).numpy(), mu[owner].astype(np.float32)
    )
    assert torch.equal(quantised["2.weight"], retrained["2.weight"])
    assert result.config["param_names"] == ["0.weight"]
    assert result.config["keep_float"] == ["2.weight"]
    # hand count: 2.weight (3 x 12) and 2.bias (3) at 32 bits; 0.weight's row carries 0.bias
    assert result.storage.other_bits == 32 * (36 + 3)
    assert [row.name for row in result.storage.layers] == ["0.weight"]
    assert result.storage.layers[0].bias_bits == 32 * 12


def test_every_compression_setting_reaches_compress_result():
    # oracle: the CompressSettings record's fields (less those that shape the retraining: λ's
    # warm-up and distillation) and compress_result's keyword parameters
    kwargs = compress_result_kwargs(CompressSettings(assignment="likelihood"))
    retraining = {"prior_scale_warmup", "distill", "distill_temperature"}
    fields = {f.name for f in dataclasses.fields(CompressSettings)} - retraining
    assert set(kwargs) == fields
    assert fields <= set(inspect.signature(compress_result).parameters)
    assert kwargs["assignment"] == "likelihood"
    with pytest.raises(TypeError, match="CompressSettings"):
        compress_result_kwargs({"merge_threshold": 0})


def test_soft_weight_sharing_passes_the_options_on():
    torch.manual_seed(2)
    x = torch.randn(64, 6)
    y = (x[:, 0] > 0).long()
    net = mlp([6, 8, 2])
    result = soft_weight_sharing(
        net,
        (x, y, x, y),
        num_components=4,
        num_steps=3,
        batch_size=32,
        keep_float=("2.weight",),
        assignment="likelihood",
        value_tolerance=0.01,
    )
    assert result.config["keep_float"] == ["2.weight"]
    assert result.config["assignment"] == "likelihood"
    assert result.config["value_tolerance"] == 0.01
    retrained = dict(result.retrained_net.named_parameters())
    assert torch.equal(dict(result.net.named_parameters())["2.weight"], retrained["2.weight"])
