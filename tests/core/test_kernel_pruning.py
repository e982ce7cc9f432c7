"""Exact pruning of far components in the native kernel (``kernel.py``, "Pruning").

Two kinds of check, both against independent float64 computations:

* **The bound itself**: for every (weight, component) pair the native loop
  skips (its list, read through ``bsws_prune_mask_*``), the skipped
  contribution to the log-density and to every gradient, computed here in log
  space from the textbook formulas, is below ``2^-(p + 2 + ceil(log2 M))`` of
  the weight's unit (p = 24 or 53). The claim is checked as stated in the
  docstring, not by re-deriving the thresholds.
* **The results**: with pruning forced (``set_pruning("always")``) the
  log-density and gradients equal the float64 autograd oracle of
  ``test_kernel.py`` at the same tolerances as the unpruned loop, on random
  mixtures across M and on adversarial ones (a wide component far away, a
  collapsed component on the weights, a tiny π with a huge σ, equal means,
  weights far outside every component).
"""

import ctypes
import math

import numpy as np
import pytest
import torch
from conftest import assert_close
from test_kernel import HAVE_CC, NAMES, kernel_grads, naive_grads

from bayes_sws.core import _native, kernel
from bayes_sws.core.kernel import mixture_log_prob_and_grad

F32, F64 = torch.float32, torch.float64
HALF_LOG2E = 0.5 / math.log(2.0)

pytestmark = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")


@pytest.fixture
def pruning(monkeypatch):
    """The native loop with pruning forced wherever it applies."""
    monkeypatch.setattr(kernel, "_kernel", "native")
    monkeypatch.setattr(kernel, "_pruning", "always")


# --------------------------------------------------------------------------- #
# Mixtures
# --------------------------------------------------------------------------- #


def _tensors(w, pi, mu, sigma, dtype):
    return tuple(
        torch.as_tensor(np.asarray(a, dtype=np.float64)).to(dtype) for a in (w, pi, mu, sigma)
    )


def random_mixture(num_components, num_weights, seed, dtype):
    """Means spread over [-0.5, 0.5], widths log-uniform over [1e-3, 1e-1], weights from it."""
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(num_components))
    mu = rng.uniform(-0.5, 0.5, num_components)
    sigma = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), num_components))
    member = rng.choice(num_components, num_weights, p=pi)
    w = mu[member] + sigma[member] * rng.standard_normal(num_weights)
    w[: num_weights // 10] = rng.uniform(-0.7, 0.7, num_weights // 10)  # and between them
    return _tensors(w, pi, mu, sigma, dtype)


def _grid(lo, hi, n=4001):
    return np.linspace(lo, hi, n)


ADVERSARIAL = {
    # a wide component far from the narrow ones: relevant in their tails
    "wide_far": (
        np.concatenate([_grid(-0.2, 0.2), [-1.0, 0.5, 1.0, 2.0, 3.0, 6.0]]),
        [0.9, 0.04, 0.04, 0.02],
        [0.0, 0.05, -0.05, 3.0],
        [0.001, 0.006, 0.006, 1.0],
    ),
    # a collapsed component right on weights, next to ordinary ones
    "collapsed": (
        np.concatenate(
            [_grid(0.05, 0.15, 2001), 0.1 + 1e-8 * np.arange(-40, 41), [0.1, 0.1 + 3e-7]]
        ),
        [0.5, 0.3, 0.2],
        [0.1, 0.09, 0.12],
        [1e-8, 0.01, 0.02],
    ),
    # a tiny mixing proportion with a huge width: it owns the weights far out
    "tiny_pi_huge_sigma": (
        np.concatenate([_grid(-0.1, 0.1), [-500.0, -50.0, -5.0, 5.0, 50.0, 500.0]]),
        [0.6, 0.4 - 1e-30, 1e-30],
        [0.0, 0.05, 0.0],
        [0.002, 0.01, 1e3],
    ),
    # equal means, different widths
    "equal_means": (
        np.concatenate([_grid(-0.5, 0.5), [0.0, 1e-9, -3e-3]]),
        [0.5, 0.2, 0.2, 0.1],
        [0.0, 0.0, 0.0, 0.1],
        [0.001, 0.01, 0.1, 0.01],
    ),
    # weights far outside every component: the widest one, not the nearest, dominates
    "far_outside": (
        np.concatenate([_grid(-0.3, 0.3), [-1e4, -1e3, -10.0, 10.0, 1e3, 1e4]]),
        [0.3, 0.6, 0.1],
        [-0.1, 0.0, 0.1],
        [0.01, 0.001, 0.05],
    ),
}


# --------------------------------------------------------------------------- #
# The bound, as the docstring states it
# --------------------------------------------------------------------------- #


def evaluated_mask(w, pi, mu, sigma):
    """(N, M) bool: the pairs the pruned loop evaluates; and whether it prunes at all."""
    lib = _native.load()
    fn = lib.bsws_prune_mask_f32 if w.dtype == F32 else lib.bsws_prune_mask_f64
    w, pi, mu, sigma = (t.contiguous() for t in (w, pi, mu, sigma))
    mask = np.zeros((w.numel(), pi.numel()), dtype=np.uint8)
    used = fn(
        w.data_ptr(), w.numel(), pi.data_ptr(), mu.data_ptr(), sigma.data_ptr(), pi.numel(),
        mask.ctypes.data_as(ctypes.c_void_p),
    )  # fmt: skip
    assert used in (0, 1)
    return mask.astype(bool), bool(used)


def skipped_excess(w, pi, mu, sigma):
    """max over skipped pairs of log2(contribution / (2^-g unit)), per kind (≤ 0 required)."""
    mask, _ = evaluated_mask(w, pi, mu, sigma)
    w, pi, mu, sigma = (t.double().numpy() for t in (w, pi, mu, sigma))
    u = (w[:, None] - mu) / sigma
    with np.errstate(divide="ignore"):
        log2_pi = np.log2(pi)
        terms = log2_pi - np.log2(sigma) - 0.5 * math.log2(2 * math.pi) - HALF_LOG2E * u * u
    top = terms.max(1, keepdims=True)
    k = terms.argmax(1)
    log2_gamma = terms - (top + np.log2(np.exp2(terms - top).sum(1, keepdims=True)))
    uk, sk = np.abs(u[np.arange(len(w)), k])[:, None], sigma[k][:, None]
    with np.errstate(divide="ignore"):
        au, j_sigma = np.log2(np.abs(u)), np.log2(sigma)
        kinds = {
            "log p and S0": log2_gamma,
            "grad pi": log2_gamma - log2_pi,
            "S1": log2_gamma + au - np.log2(np.maximum(1, uk)),
            "S2": log2_gamma + 2 * au - np.log2(np.maximum(1, uk * uk)),
            "grad w, mu": log2_gamma + au - j_sigma - np.log2(np.maximum(1, uk) / sk),
            "grad sigma": log2_gamma
            + np.log2(np.abs(u * u - 1))
            - j_sigma
            - np.log2(np.maximum(1, uk * uk) / sk),
        }
    skipped = ~mask & (pi > 0)
    return {name: value[skipped].max(initial=-np.inf) for name, value in kinds.items()}, mask


def assert_bound_holds(tensors):
    w, pi = tensors[0], tensors[1]
    mant_bits = 24 if w.dtype == F32 else 53
    g = mant_bits + 2 + math.ceil(math.log2(int((pi > 0).sum())))
    excess, mask = skipped_excess(*tensors)
    for name, value in excess.items():
        assert value <= -g + 1e-6 * abs(g), (name, value, -g)
    return mask


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("num_components", [2, 3, 8, 16, 64])
def test_skipped_pairs_are_below_precision_on_random_mixtures(dtype, num_components):
    tensors = random_mixture(num_components, 20_000, seed=num_components, dtype=dtype)
    mask = assert_bound_holds(tensors)
    if num_components >= 8:
        assert mask.mean() < 0.7  # the test is not vacuous: pairs are skipped


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_skipped_pairs_are_below_precision_on_adversarial_mixtures(dtype, case):
    tensors = _tensors(*ADVERSARIAL[case], dtype)
    mask = assert_bound_holds(tensors)
    assert mask.mean() < 1.0


def test_components_that_matter_are_never_skipped():
    """Hand-made pairs on either side of the threshold: one kept, one skipped.

    Two components of equal width 1 and weight 1/2 at 0 and d: at w = 0 the
    second's log2-term is h d² below the first's (h = log2(e)/2), its
    responsibility 2^(-h d²) / (1 + 2^(-h d²)). With d = 6 (2^-26 of the
    first, far above float64 rounding) it must be evaluated; with d = 40
    (2^-1154, zero in any float) it may be skipped.
    """
    w = torch.tensor([0.0] * 4, dtype=F64)
    pi = torch.tensor([0.5, 0.5], dtype=F64)
    sigma = torch.ones(2, dtype=F64)
    near, _ = evaluated_mask(w, pi, torch.tensor([0.0, 6.0], dtype=F64), sigma)
    assert near.all()
    far, used = evaluated_mask(w, pi, torch.tensor([0.0, 40.0], dtype=F64), sigma)
    assert used and far[:, 0].all() and not far[:, 1].any()


# --------------------------------------------------------------------------- #
# The results, pruned, against the float64 oracle and the unpruned loop
# --------------------------------------------------------------------------- #


def _results(tensors, monkeypatch, pruning_mode):
    monkeypatch.setattr(kernel, "_pruning", pruning_mode)
    value, grads = kernel_grads(tensors)
    for name, got in zip(NAMES, grads):
        assert torch.isfinite(got).all(), name
    return (value.double(), *(g.double() for g in grads))


def rounding_scales(w, pi, mu, sigma):
    """Per output, what a floating-point evaluation of it is accurate to, in units of eps:
    the sum of the absolute values of the terms it adds up, plus each weight's unit of
    the bound (1 for log p and ∂/∂π; max(1, |u_k|)/σ_k for ∂/∂w and ∂/∂μ;
    max(1, u_k²)/σ_k for ∂/∂σ, k the weight's largest term). float64."""
    w, pi, mu, sigma = (t.double() for t in (w, pi, mu, sigma))
    u = (w[:, None] - mu) / sigma
    logits = torch.log(pi) - 0.5 * u * u - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    log_p = torch.logsumexp(logits, 1, keepdim=True)
    gamma = torch.exp(logits - log_p)
    top, k = logits.max(1)
    u_k, sigma_k = u.gather(1, k[:, None])[:, 0].abs(), sigma[k]
    unit1, unit2 = u_k.clamp(min=1) / sigma_k, (u_k * u_k).clamp(min=1) / sigma_k
    return (
        (log_p[:, 0].abs() + top.abs() + 1).sum(),
        (gamma * u.abs() / sigma).sum(1) + unit1,
        torch.exp(logits - torch.log(pi) - log_p).sum(0) + w.numel(),
        (gamma * u.abs()).sum(0) / sigma + unit1.sum(),
        (gamma * (u * u + 1)).sum(0) / sigma + unit2.sum(),
    )


def assert_pruned_equals_oracle(tensors, monkeypatch):
    """Pruned results within the unpruned loop's tolerances of the float64 oracle, and
    equal to the unpruned loop's up to rounding: 256 eps of the sum of absolute terms."""
    monkeypatch.setattr(kernel, "_kernel", "native")
    dtype = tensors[0].dtype
    pruned = _results(tensors, monkeypatch, "always")
    unpruned = _results(tensors, monkeypatch, "off")
    expected_value, expected = naive_grads(*tensors)
    rtol = 1e-5 if dtype == F32 else 1e-12
    per_term = abs(expected_value.item()) / tensors[0].numel()
    assert_close(pruned[0], expected_value, rtol=rtol, atol=tensors[0].numel() * per_term * rtol)
    for name, got, want in zip(NAMES, pruned[1:], expected):
        scale = want.abs().max().item()
        assert_close(got, want, rtol=1e3 * rtol, atol=10 * rtol * scale, msg=name)
    eps = torch.finfo(dtype).eps
    for name, got, full, scale in zip(
        ("log_prob", *NAMES), pruned, unpruned, rounding_scales(*tensors)
    ):
        assert ((got - full).abs() <= 256 * eps * scale).all(), name


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("num_components", [2, 3, 8, 16, 64])
def test_pruned_results_equal_the_oracle_on_random_mixtures(monkeypatch, dtype, num_components):
    tensors = random_mixture(num_components, 20_000, seed=100 + num_components, dtype=dtype)
    assert_pruned_equals_oracle(tensors, monkeypatch)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_pruned_results_equal_the_oracle_on_adversarial_mixtures(monkeypatch, dtype, case):
    assert_pruned_equals_oracle(_tensors(*ADVERSARIAL[case], dtype), monkeypatch)


def _pairs(tensors, pruning_mode, threads=1):
    """The (weight, component) pairs the native loop evaluates, from its counter."""
    lib = _native.load()
    w, pi, mu, sigma = (t.contiguous() for t in tensors)
    fn = lib.bsws_mixture_f32 if w.dtype == F32 else lib.bsws_mixture_f64
    grad_w, log_prob, pairs = torch.empty_like(w), ctypes.c_double(), ctypes.c_int64()
    status = fn(
        w.data_ptr(), w.numel(), pi.data_ptr(), mu.data_ptr(), sigma.data_ptr(), pi.numel(),
        threads, ctypes.byref(log_prob), grad_w.data_ptr(), None, None, None,
        kernel.PRUNING.index(pruning_mode), ctypes.byref(pairs),
    )  # fmt: skip
    assert status == 0
    return pairs.value


def clustered_mixture(num_weights, dtype, seed=0):
    """After retraining: a narrow zero spike with 90 % of the weights, 15 clusters 8 σ apart."""
    mu = np.concatenate([[0.0], 0.05 * np.arange(-7, 0), 0.05 * np.arange(1, 9)])
    sigma = np.concatenate([[0.001], np.full(15, 0.00625)])
    pi = np.concatenate([[0.9], np.full(15, 0.1 / 15)])
    rng = np.random.default_rng(seed)
    member = rng.choice(len(pi), num_weights, p=pi)
    w = mu[member] + sigma[member] * rng.standard_normal(num_weights)
    return _tensors(w, pi, mu, sigma, dtype)


def test_auto_prunes_clustered_weights_and_not_a_wide_mixture():
    tensors = clustered_mixture(50_000, F32)
    n, m = tensors[0].numel(), tensors[1].numel()
    assert _pairs(tensors, "off") == n * m
    assert _pairs(tensors, "auto") < 0.2 * n * m
    assert _pairs(tensors, "always") == _pairs(tensors, "auto")
    wide = _tensors(tensors[0], tensors[1], tensors[2], np.full(m, 0.2), F32)
    assert _pairs(wide, "auto") == n * m  # every list is everything: not worth sorting
    small = tuple(t[:1000] if i == 0 else t for i, t in enumerate(tensors))
    assert _pairs(small, "auto") == 1000 * m  # too few weights to pay for the table


@pytest.mark.parametrize("dtype", [F32, F64])
def test_pruned_one_and_two_threads_agree_up_to_summation_order(monkeypatch, dtype):
    monkeypatch.setattr(kernel, "_kernel", "native")
    monkeypatch.setattr(kernel, "_pruning", "always")
    tensors = clustered_mixture(200_003, dtype, seed=1)
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(mixture_log_prob_and_grad(*tensors))
    finally:
        torch.set_num_threads(previous)
    one, two = results
    assert torch.equal(one.grad_w, two.grad_w)  # per weight: same list, same order
    rtol = 1e-6 if dtype == F32 else 1e-13
    for name in ("log_prob", "grad_pi", "grad_mu", "grad_sigma"):
        want = getattr(one, name)  # sums over weights: rounding relative to the largest
        atol = rtol * want.abs().max().item()
        assert_close(getattr(two, name), want, rtol=rtol, atol=atol, msg=name)


def test_pruning_switch_and_environment(monkeypatch):
    monkeypatch.setattr(kernel, "_pruning", kernel.get_pruning())
    for choice in kernel.PRUNING:
        kernel.set_pruning(choice)
        assert kernel.get_pruning() == choice
    with pytest.raises(ValueError, match="pruning must be one of"):
        kernel.set_pruning("sometimes")
    monkeypatch.setenv("BAYES_SWS_PRUNE", "off")
    assert kernel._pruning_from_env() == "off"
    monkeypatch.delenv("BAYES_SWS_PRUNE")
    assert kernel._pruning_from_env() == "auto"
    monkeypatch.setenv("BAYES_SWS_PRUNE", "bogus")
    with pytest.warns(RuntimeWarning):
        assert kernel._pruning_from_env() == "auto"
