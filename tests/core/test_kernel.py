"""The fast prior kernel against independent oracles.

The tests up to "Both implementations" run against the default kernel
(``BAYES_SWS_KERNEL``, normally ``auto``: the native C loop on CPU); the
tests after it run explicitly against ``native`` and ``torch``.

Oracles: scipy (``logsumexp`` of ``log pi + norm.logpdf``) for values, float64
torch autograd of the naive (N, M) formula written here for gradients, finite
differences (``gradcheck``) and closed forms (weight decay for M = 1). Never the
kernel against itself, except where the property *is* self-consistency
(chunking, permutation invariance).
"""

import math
import sys

import numpy as np
import pytest
import torch
from conftest import BENCHMARKS, assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import norm

from bayes_sws.core import _native, kernel
from bayes_sws.core.kernel import mixture_log_prob, mixture_log_prob_and_grad

F64 = torch.float64
NAMES = ("w", "pi", "mu", "sigma")
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- #
# Oracles
# --------------------------------------------------------------------------- #


def scipy_log_prob(w, pi, mu, sigma) -> float:
    w, pi, mu, sigma = (np.asarray(_np(a), dtype=np.float64) for a in (w, pi, mu, sigma))
    with np.errstate(divide="ignore"):
        log_pi = np.log(pi)
    return float(logsumexp(log_pi + norm.logpdf(w.reshape(-1, 1), mu, sigma), axis=1).sum())


def naive_log_prob(w, pi, mu, sigma):
    """Σ_i log Σ_j π_j N(w_i | μ_j, σ_j²) as the textbook (N, M) formula."""
    z = (w.reshape(-1, 1) - mu) / sigma
    log_joint = torch.log(pi) - 0.5 * z**2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_joint, dim=1).sum()


def naive_grads(w, pi, mu, sigma):
    """float64 autograd of :func:`naive_log_prob`: the gradient oracle."""
    inputs = [
        torch.as_tensor(_np(a), dtype=F64).clone().requires_grad_() for a in (w, pi, mu, sigma)
    ]
    value = naive_log_prob(*inputs)
    return value.detach(), torch.autograd.grad(value, inputs)


def _np(a):
    return a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)


def make_mixture(num_components=4, shape=(50,), seed=0, dtype=F64, spread=0.5):
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(num_components))
    mu = rng.normal(0.0, spread, num_components)
    sigma = rng.uniform(0.05, 0.4, num_components)
    w = rng.normal(0.0, 0.6, shape)
    return tuple(torch.tensor(a, dtype=dtype) for a in (w, pi, mu, sigma))


def with_grad(tensors, which=NAMES):
    return [t.clone().requires_grad_(name in which) for name, t in zip(NAMES, tensors)]


def kernel_grads(tensors, **kwargs):
    inputs = with_grad(tensors)
    value = mixture_log_prob(*inputs, **kwargs)
    return value, torch.autograd.grad(value, inputs)


# --------------------------------------------------------------------------- #
# Values and gradients against the oracles
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("shape", [(300,), (12, 25), (3, 4, 5, 6)])
@pytest.mark.parametrize("num_components", [1, 3, 8])
def test_value_equals_scipy(shape, num_components):
    tensors = make_mixture(num_components, shape, seed=num_components)
    value = mixture_log_prob(*tensors)
    assert value.shape == () and value.dtype == F64
    assert_close(value, scipy_log_prob(*tensors), rtol=1e-12)


@pytest.mark.parametrize("shape", [(300,), (12, 25), (3, 4, 5, 6)])
@pytest.mark.parametrize("num_components", [1, 3, 8])
def test_every_gradient_equals_naive_autograd(shape, num_components):
    tensors = make_mixture(num_components, shape, seed=10 + num_components)
    value, grads = kernel_grads(tensors, chunk_size=97)
    expected_value, expected = naive_grads(*tensors)
    assert_close(value, expected_value, rtol=1e-12)
    for name, got, want, given_tensor in zip(NAMES, grads, expected, tensors):
        assert got.shape == given_tensor.shape, name
        scale = want.abs().max().item()
        assert_close(got, want, rtol=1e-10, atol=1e-10 * scale, msg=name)


@pytest.mark.parametrize(
    "which", [("w",), ("pi",), ("mu",), ("sigma",), ("mu", "sigma"), ("w", "pi"), ("pi", "sigma")]
)
def test_gradients_for_a_subset_of_inputs(which):
    tensors = make_mixture(5, (40,), seed=3)
    inputs = with_grad(tensors, which)
    value = mixture_log_prob(*inputs)
    value.backward()
    _, expected = naive_grads(*tensors)
    for name, tensor, want in zip(NAMES, inputs, expected):
        if name in which:
            assert_close(tensor.grad, want, rtol=1e-10, atol=1e-10 * want.abs().max().item())
        else:
            assert tensor.grad is None


def test_upstream_gradient_scales_every_gradient():
    tensors = make_mixture(3, (30,), seed=4)
    inputs = with_grad(tensors)
    (-2.5 * mixture_log_prob(*inputs)).backward()
    _, expected = naive_grads(*tensors)
    for tensor, want in zip(inputs, expected):
        assert_close(tensor.grad, -2.5 * want, rtol=1e-10, atol=1e-12)


def test_gradcheck_and_gradgradcheck():
    tensors = make_mixture(3, (20,), seed=5)
    inputs = tuple(with_grad(tensors))

    def f(*args):
        return mixture_log_prob(*args, chunk_size=7)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_hessian_equals_naive_hessian():
    tensors = make_mixture(3, (6,), seed=6)
    ours = torch.autograd.functional.hessian(lambda *a: mixture_log_prob(*a), tensors)
    naive = torch.autograd.functional.hessian(naive_log_prob, tensors)
    for row_ours, row_naive in zip(ours, naive):
        for block_ours, block_naive in zip(row_ours, row_naive):
            assert_close(block_ours, block_naive, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("chunk_size", [1, 7, 99, 100, 101, 1000])
def test_chunking_does_not_change_results(chunk_size):
    tensors = make_mixture(6, (100,), seed=7)
    value, grads = kernel_grads(tensors, chunk_size=chunk_size)
    whole_value, whole_grads = kernel_grads(tensors, chunk_size=100)
    assert_close(value, whole_value, rtol=1e-13)
    for got, want in zip(grads, whole_grads):
        assert_close(got, want, rtol=1e-12, atol=1e-13)


def test_float32_follows_weights_and_agrees_with_float64_oracle():
    tensors = make_mixture(8, (64, 32), seed=8, dtype=torch.float32)
    value, grads = kernel_grads(tensors)
    assert value.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in grads)
    expected_value, expected = naive_grads(*tensors)
    assert_close(value, expected_value, rtol=1e-5)
    for name, got, want in zip(NAMES, grads, expected):
        assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item(), msg=name)


def test_non_contiguous_weights():
    w, pi, mu, sigma = make_mixture(4, (30, 20), seed=9)
    w_t = w.t()  # a transposed view
    assert not w_t.is_contiguous()
    value, grads = kernel_grads((w_t, pi, mu, sigma))
    expected_value, expected = naive_grads(w_t, pi, mu, sigma)
    assert_close(value, expected_value, rtol=1e-12)
    assert_close(grads[0], expected[0], rtol=1e-10, atol=1e-12)


def test_empty_weights():
    _, pi, mu, sigma = make_mixture(3)
    w = torch.empty(0, 5, dtype=F64)
    value, grads = kernel_grads((w, pi, mu, sigma))
    assert value.item() == 0.0
    assert grads[0].shape == (0, 5)
    for g in grads[1:]:
        assert torch.equal(g, torch.zeros(3, dtype=F64))


def test_small_tensor_log_path_used_with_several_threads(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the tests run on one thread
    tensors = make_mixture(4, (300,), seed=18)
    value, grads = kernel_grads(tensors)
    expected_value, expected = naive_grads(*tensors)
    assert_close(value, expected_value, rtol=1e-12)
    for name, got, want in zip(NAMES, grads, expected):
        assert_close(got, want, rtol=1e-10, atol=1e-10 * want.abs().max().item(), msg=name)


def test_no_grad_returns_the_same_value_without_a_graph():
    tensors = with_grad(make_mixture(4, (50,), seed=11))
    with torch.no_grad():
        value = mixture_log_prob(*tensors)
    assert not value.requires_grad
    assert_close(value, scipy_log_prob(*tensors), rtol=1e-12)


# --------------------------------------------------------------------------- #
# Edge cases: zero mixing proportions, extreme values
# --------------------------------------------------------------------------- #


def test_zero_mixing_proportion_removes_the_component():
    w, pi, mu, sigma = make_mixture(4, (60,), seed=12)
    pi = torch.tensor([0.5, 0.0, 0.3, 0.2], dtype=F64)
    mu = mu.clone()
    mu[1] = w[0]  # the dead component sits right on a weight
    value, (g_w, g_pi, g_mu, g_sigma) = kernel_grads((w, pi, mu, sigma))
    alive = torch.tensor([0, 2, 3])
    reduced = (w, pi[alive], mu[alive], sigma[alive])
    assert_close(value, scipy_log_prob(*reduced), rtol=1e-12)
    _, expected = naive_grads(*reduced)
    assert torch.isfinite(g_w).all()
    assert_close(g_w, expected[0], rtol=1e-10, atol=1e-12)
    assert_close(g_mu[alive], expected[2], rtol=1e-10, atol=1e-12)
    assert_close(g_sigma[alive], expected[3], rtol=1e-10, atol=1e-12)
    assert g_mu[1].item() == 0.0 and g_sigma[1].item() == 0.0
    # ∂/∂π_j = Σ_i N(w_i | μ_j, σ_j²) / p(w_i), finite on the boundary π_j = 0 ...
    wn, mun, sn = _np(w).reshape(-1), _np(mu), _np(sigma)
    log_p = logsumexp(np.log(_np(pi[alive])) + norm.logpdf(wn[:, None], mun[alive], sn[alive]), 1)
    assert_close(g_pi[1], np.exp(norm.logpdf(wn, mun[1], sn[1]) - log_p).sum(), rtol=1e-10)
    # ... and equal to the one-sided difference quotient there.
    h = 1e-7
    bumped = pi.clone()
    bumped[1] = h
    quotient = (scipy_log_prob(w, bumped, mu, sigma) - scipy_log_prob(w, pi, mu, sigma)) / h
    assert_close(g_pi[1], quotient, rtol=1e-5)
    assert_close(g_pi[alive], expected[1], rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_values_stay_finite(dtype):
    w = torch.tensor([-1e4, -3.0, 0.0, 1e-8, 2.5, 1e4], dtype=dtype)
    pi = torch.tensor([0.7, 0.2, 0.1], dtype=dtype)
    mu = torch.tensor([0.0, 1e4, -5.0], dtype=dtype)
    sigma = torch.tensor([1e-6, 1e-6, 10.0], dtype=dtype)
    value, grads = kernel_grads((w, pi, mu, sigma))
    assert torch.isfinite(value)
    for name, g in zip(NAMES, grads):
        assert torch.isfinite(g).all(), name
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    assert_close(value, scipy_log_prob(w, pi, mu, sigma), rtol=rtol)


@PROPERTY
@given(
    w=st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=40),
    params=st.lists(
        st.tuples(st.floats(1e-3, 1.0), st.floats(-1e4, 1e4), st.floats(1e-6, 1e2)),
        min_size=1,
        max_size=6,
    ),
    use_float32=st.booleans(),
)
def test_property_finite_everywhere(w, params, use_float32):
    dtype = torch.float32 if use_float32 else F64
    pi, mu, sigma = (torch.tensor(column, dtype=dtype) for column in zip(*params))
    w = torch.tensor(w, dtype=dtype)
    value, grads = kernel_grads((w, pi, mu, sigma))
    assert torch.isfinite(value)
    for name, g in zip(NAMES, grads):
        assert torch.isfinite(g).all(), name
    if not use_float32:
        assert_close(value, scipy_log_prob(w, pi, mu, sigma), rtol=1e-10)


@PROPERTY
@given(seed=st.integers(0, 2**16), num_components=st.integers(1, 7), data=st.data())
def test_property_component_order_does_not_matter(seed, num_components, data):
    tensors = make_mixture(num_components, (25,), seed=seed)
    order = torch.tensor(data.draw(st.permutations(range(num_components))))
    w, pi, mu, sigma = tensors
    value, grads = kernel_grads(tensors)
    value_p, grads_p = kernel_grads((w, pi[order], mu[order], sigma[order]))
    assert_close(value_p, value, rtol=1e-13)
    assert_close(grads_p[0], grads[0], rtol=1e-11, atol=1e-13)
    for got, want in zip(grads_p[1:], grads[1:]):
        assert_close(got, want[order], rtol=1e-11, atol=1e-13)


@PROPERTY
@given(
    w=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=30),
    sigma=st.floats(1e-3, 1e3),
)
def test_property_one_component_at_zero_is_weight_decay(w, sigma):
    w = torch.tensor(w, dtype=F64)
    s = torch.tensor([sigma], dtype=F64)
    inputs = with_grad((w, torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64), s))
    value = mixture_log_prob(*inputs)
    value.backward()
    decay = -(w**2) / (2 * sigma**2) - 0.5 * math.log(2 * math.pi * sigma**2)
    assert_close(value, decay.sum(), rtol=1e-12, atol=1e-12)
    assert_close(inputs[0].grad, -w / sigma**2, rtol=1e-12, atol=1e-300)
    assert_close(inputs[3].grad, ((w**2) / sigma**3 - 1 / sigma).sum(), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- #
# The closed-form entry point, validation, memory
# --------------------------------------------------------------------------- #


def test_log_prob_and_grad_matches_autograd_oracle():
    tensors = make_mixture(5, (8, 9), seed=13)
    result = mixture_log_prob_and_grad(*tensors, chunk_size=11)
    expected_value, expected = naive_grads(*tensors)
    assert_close(result.log_prob, expected_value, rtol=1e-12)
    for name, want in zip(NAMES, expected):
        got = getattr(result, f"grad_{name}")
        assert got.shape == want.shape
        assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
    only_mu = mixture_log_prob_and_grad(*tensors, wrt=("mu",))
    assert only_mu.grad_w is None and only_mu.grad_pi is None and only_mu.grad_sigma is None
    assert_close(only_mu.grad_mu, expected[2], rtol=1e-10)
    with pytest.raises(ValueError, match="wrt"):
        mixture_log_prob_and_grad(*tensors, wrt=("tau",))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda t: {**t, "pi": t["pi"][None]}, ValueError, r"pi must have shape \(M,\)"),
        (lambda t: {**t, "mu": t["mu"][:2]}, ValueError, "same number of components"),
        (lambda t: {**t, "sigma": t["sigma"].float()}, TypeError, r"sigma has dtype"),
        (lambda t: {**t, "w": t["w"].half()}, TypeError, "float32 and float64"),
        (lambda t: {**t, "w": t["w"].long()}, TypeError, "float32 and float64"),
        (lambda t: {**t, "w": t["w"].tolist()}, TypeError, "w must be a torch.Tensor"),
        (lambda t: {k: v[:0] if k != "w" else v for k, v in t.items()}, ValueError, "M >= 1"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, match):
    w, pi, mu, sigma = make_mixture(3)
    args = change({"w": w, "pi": pi, "mu": mu, "sigma": sigma})
    with pytest.raises(error, match=match):
        mixture_log_prob(args["w"], args["pi"], args["mu"], args["sigma"])


def test_value_validation():
    w, pi, mu, sigma = make_mixture(3)
    with pytest.raises(ValueError, match="sigma must be positive"):
        mixture_log_prob(w, pi, mu, -sigma, validate_args=True)
    with pytest.raises(ValueError, match="pi must be finite, non-negative"):
        mixture_log_prob(w, -pi, mu, sigma, validate_args=True)
    with pytest.raises(ValueError, match="not all zero"):
        mixture_log_prob(w, torch.zeros_like(pi), mu, sigma, validate_args=True)
    with pytest.raises(ValueError, match="mu must be finite"):
        mixture_log_prob(w, pi, mu * math.nan, sigma, validate_args=True)
    with pytest.raises(ValueError, match="sigma must be positive"):
        mixture_log_prob(w, pi, mu, sigma * math.inf, validate_args=True)
    with pytest.raises(ValueError, match="chunk_size"):
        mixture_log_prob(w, pi, mu, sigma, chunk_size=0)
    assert torch.isnan(mixture_log_prob(w, pi, mu, -sigma, validate_args=False))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
@pytest.mark.parametrize("which_kernel", ["native", "torch"])
def test_extra_memory_is_linear_not_n_times_m(monkeypatch, which_kernel):
    """2·10⁶ float32 weights × 64 components: N·M temporaries would be 512 MB."""
    monkeypatch.setattr(kernel, "_kernel", which_kernel)
    num_weights, num_components = 2_000_000, 64
    w, pi, mu, sigma = make_mixture(num_components, (num_weights,), seed=17, dtype=torch.float32)
    inputs = with_grad((w, pi, mu, sigma))
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak resident set size
    except OSError:
        pytest.skip("cannot reset the peak RSS counter here")

    def rss_kib(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field))

    before = rss_kib("VmRSS:")
    mixture_log_prob(*inputs).backward()
    extra_per_weight = (rss_kib("VmHWM:") - before) * 1024 / num_weights
    assert extra_per_weight <= 16, f"{extra_per_weight:.1f} bytes per weight"


# --------------------------------------------------------------------------- #
# The benchmark script: its baselines compute the same thing, and it runs
# --------------------------------------------------------------------------- #


@pytest.fixture
def prior_benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import prior_kernel

    monkeypatch.setattr(kernel, "_kernel", kernel.get_kernel())
    return prior_kernel


@pytest.mark.parametrize(
    "impl", ["ours", "ours_native", "recompute", "store", "mixture_same_family", "naive"]
)
def test_benchmarked_implementations_agree_with_the_oracle(prior_benchmark, impl):
    fn = prior_benchmark._make_impl(impl)
    w, pi, mu, sigma = prior_benchmark._inputs(3000, 5, F64)
    prior_benchmark._step(fn, w, pi, mu, sigma)
    expected_value, expected = naive_grads(w, pi, mu, sigma)
    assert_close(fn(w, pi, mu, sigma), expected_value, rtol=1e-12)
    for name, tensor, want in zip(NAMES, (w, pi, mu, sigma), expected):
        if name == "pi" and impl == "mixture_same_family":
            # Categorical(probs=pi) renormalises: ∂/∂π_j log(π_j / Σπ) adds −N / Σπ.
            want = want - w.numel() / pi.sum().detach()
        scale = want.abs().max().item()
        assert_close(tensor.grad, want, rtol=1e-9, atol=1e-10 * scale, msg=name)


def test_benchmarked_native_loop_equals_the_oracle(prior_benchmark, native_only):
    fn = prior_benchmark._make_impl("native_loop")
    w, pi, mu, sigma = prior_benchmark._inputs(3000, 5, F64)
    value = fn(w, pi, mu, sigma)
    expected_value, expected = naive_grads(w, pi, mu, sigma)
    assert_close(value, expected_value, rtol=1e-12)
    for name, got, want in zip(NAMES, fn.buffers[:4], expected):
        assert_close(got, want, rtol=1e-9, atol=1e-10 * want.abs().max().item(), msg=name)


def test_benchmark_worker_table_and_plot(prior_benchmark, tmp_path):
    rows = [
        prior_benchmark.worker(impl, 2000, 3, "float32", 1, 2, 0.5)
        for impl in ("ours", "ours_native", "naive")
    ]
    rows.append({"impl": "store", "num_weights": 2000, "num_components": 3, "skipped": "test"})
    for row in rows[:3]:
        assert row["time_min_s"] > 0 and row["extra_peak_bytes"] >= 0
    table = prior_benchmark.markdown_table(rows)
    assert "| 2e+03 | 3 | naive |" in table and "skipped" not in table.split("naive")[0]
    prior_benchmark.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


@pytest.mark.slow
def test_benchmark_script_quick_run(tmp_path):
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "prior_kernel.py"),
            "--sizes",
            "2000",
            "--components",
            "2",
            "--impls",
            "ours",
            "ours_native",
            "naive",
            "--repeats",
            "2",
            "--threads",
            "1",
            "--plot",
            str(tmp_path / "p.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| 2e+03 | 2 | ours |" in done.stdout
    assert "| 2e+03 | 2 | ours_native |" in done.stdout and "first-use build" in done.stdout
    assert (tmp_path / "p.png").exists()


# --------------------------------------------------------------------------- #
# Both implementations explicitly: the native C loop and torch ops
# --------------------------------------------------------------------------- #

HAVE_CC = __import__("shutil").which(_native.compiler()[0]) is not None


@pytest.fixture(params=["native", "native_pruned", "torch"])
def which_kernel(request, monkeypatch):
    """The unpruned C loop, the C loop pruning wherever it applies, torch ops."""
    if request.param.startswith("native") and not HAVE_CC:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setattr(kernel, "_kernel", request.param.removesuffix("_pruned"))
    monkeypatch.setattr(
        kernel, "_pruning", "always" if request.param.endswith("_pruned") else "off"
    )
    return request.param


@pytest.fixture
def native_only(monkeypatch):
    if not HAVE_CC:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setattr(kernel, "_kernel", "native")


def test_default_kernel_is_native_on_cpu_when_it_builds():
    if kernel._kernel_from_env() == "auto" and HAVE_CC:
        assert kernel.native_available()


@pytest.mark.parametrize("num_components", [1, 3, 16])
@pytest.mark.parametrize("num_weights", [1, 255, 256, 257, 3001])
def test_both_kernels_float64_equal_autograd_oracle(which_kernel, num_components, num_weights):
    tensors = make_mixture(num_components, (num_weights,), seed=num_weights + num_components)
    value, grads = kernel_grads(tensors)
    expected_value, expected = naive_grads(*tensors)
    assert_close(value, expected_value, rtol=1e-12)
    assert_close(value, scipy_log_prob(*tensors), rtol=1e-12)
    for name, got, want in zip(NAMES, grads, expected):
        scale = want.abs().max().item()
        assert_close(got, want, rtol=1e-10, atol=1e-12 * scale, msg=name)


@pytest.mark.parametrize("num_components", [2, 16])
def test_both_kernels_float32_agree_with_float64_oracle(which_kernel, num_components):
    tensors = make_mixture(num_components, (20_000,), seed=21, dtype=torch.float32)
    value, grads = kernel_grads(tensors)
    expected_value, expected = naive_grads(*tensors)
    assert value.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    # Σ_i of 20,000 terms: float32 rounding of each term and of the sum
    per_term = np.abs(_np(expected_value)) / 20_000
    assert_close(value, expected_value, rtol=1e-5, atol=20_000 * per_term * 1e-6)
    for name, got, want in zip(NAMES, grads, expected):
        scale = want.abs().max().item()
        assert_close(got, want, rtol=1e-4, atol=2e-5 * scale, msg=name)


def test_both_kernels_closed_form_weight_decay(which_kernel):
    """M = 1, μ = 0: ln p = Σ −w²/(2σ²) − N ln(σ√2π); ∂/∂w = −w/σ², ∂/∂σ = Σ w²/σ³ − N/σ."""
    w = torch.linspace(-3, 3, 1001, dtype=F64)
    s = 0.7
    inputs = with_grad(
        (w, torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64), torch.full((1,), s, dtype=F64))
    )
    value = mixture_log_prob(*inputs)
    value.backward()
    n = w.numel()
    assert_close(
        value, (-(w**2).sum() / (2 * s * s) - n * math.log(s * math.sqrt(2 * math.pi))), rtol=1e-13
    )
    assert_close(inputs[0].grad, -w / s**2, rtol=1e-12, atol=1e-14)
    assert_close(inputs[2].grad, w.sum() / s**2, rtol=1e-9, atol=1e-11)
    assert_close(inputs[3].grad, (w**2).sum() / s**3 - n / s, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_kernels_zero_mixing_proportions(which_kernel, dtype):
    w, _, mu, sigma = make_mixture(5, (700,), seed=22)
    pi = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2], dtype=F64)
    mu = mu.clone()
    mu[0] = w[3]  # a dead component right on a weight
    tensors = tuple(t.to(dtype) for t in (w, pi, mu, sigma))
    value, (g_w, g_pi, g_mu, g_sigma) = kernel_grads(tensors)
    alive = torch.tensor([1, 3, 4])
    reduced = (w, pi[alive], mu[alive], sigma[alive])
    expected_value, expected = naive_grads(*reduced)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert_close(value, expected_value, rtol=rtol)
    assert_close(g_w, expected[0], rtol=100 * rtol, atol=100 * rtol * expected[0].abs().max())
    for got, want in (
        (g_mu[alive], expected[2]),
        (g_sigma[alive], expected[3]),
        (g_pi[alive], expected[1]),
    ):
        assert_close(got, want, rtol=100 * rtol, atol=100 * rtol * want.abs().max())
    for dead in (0, 2):
        assert g_mu[dead].item() == 0.0 and g_sigma[dead].item() == 0.0
        # ∂/∂π_j at π_j = 0: Σ_i N(w_i | μ_j, σ_j²) / p(w_i) (scipy)
        wn, mun, sn = _np(w), _np(mu), _np(sigma)
        log_p = logsumexp(
            np.log(_np(pi[alive])) + norm.logpdf(wn[:, None], mun[alive], sn[alive]), 1
        )
        want = np.exp(norm.logpdf(wn, mun[dead], sn[dead]) - log_p).sum()
        assert_close(g_pi[dead], want, rtol=100 * rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_kernels_extreme_weights_and_widths(which_kernel, dtype):
    """|w| up to 1e4 and σ down to 1e-6: finite and equal to the float64 oracle."""
    w = torch.tensor([-1e4, -3.0, -1e-6, 0.0, 1e-8, 2.5e-6, 1.0, 9999.5, 1e4], dtype=F64)
    pi = torch.tensor([0.6, 0.2, 0.1, 0.1], dtype=F64)
    mu = torch.tensor([0.0, 1e4, -5.0, 1.0], dtype=F64)
    sigma = torch.tensor([1e-6, 1e-6, 10.0, 3e-3], dtype=F64)
    tensors = tuple(t.to(dtype) for t in (w, pi, mu, sigma))
    value, grads = kernel_grads(tensors)
    assert torch.isfinite(value)
    for name, g in zip(NAMES, grads):
        assert torch.isfinite(g).all(), name
    # oracle on the float32-rounded inputs, in float64
    expected_value, expected = naive_grads(*tensors)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert_close(value, expected_value, rtol=rtol)
    for name, got, want in zip(NAMES, grads, expected):
        assert_close(got, want, rtol=10 * rtol, atol=10 * rtol * want.abs().max(), msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_kernels_tiny_mixing_proportion_below_the_normal_range(which_kernel, dtype):
    """π_j so small that log₂(π_j/(σ_j√2π)) is below the smallest normal exponent."""
    tiny = 1e-39 if dtype == torch.float32 else 1e-310  # subnormal numbers
    w = torch.linspace(-1, 1, 301, dtype=F64)
    pi = torch.tensor([1.0, tiny], dtype=F64)
    mu = torch.tensor([0.0, 0.5], dtype=F64)
    sigma = torch.tensor([0.3, 0.4], dtype=F64)
    tensors = tuple(t.to(dtype) for t in (w, pi, mu, sigma))
    value, grads = kernel_grads(tensors)
    # ∂/∂π_j = Σ_i N(w_i | μ_j, σ_j²) / p(w_i), with p ≈ the first component alone
    wn = _np(w)
    log_p = np.logaddexp(norm.logpdf(wn, 0.0, 0.3), np.log(tiny) + norm.logpdf(wn, 0.5, 0.4))
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert_close(value, log_p.sum(), rtol=rtol)
    # ∂/∂π_1 is not checked: the exp2 floor (min(log₂(π_j/σ_j√2π), −126), the torch
    # path's documented semantics) bounds γ_i1 below by a number of the order of π_1
    # itself, which S0/π_1 turns into an O(1) error; both paths share it.
    assert_close(grads[1][0], np.exp(norm.logpdf(wn, 0.0, 0.3) - log_p).sum(), rtol=10 * rtol)
    assert_close(grads[0], -(wn / 0.09), rtol=10 * rtol, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_kernels_nan_and_inf_propagate(which_kernel, dtype):
    w, pi, mu, sigma = (t.to(dtype) for t in make_mixture(4, (600,), seed=23))
    w_nan = w.clone()
    w_nan[417] = math.nan
    result = mixture_log_prob_and_grad(w_nan, pi, mu, sigma)
    assert math.isnan(result.log_prob.item())
    assert math.isnan(result.grad_w[417].item())
    assert torch.isfinite(torch.cat([result.grad_w[:417], result.grad_w[418:]])).all()
    for g in (result.grad_pi, result.grad_mu, result.grad_sigma):
        assert torch.isnan(g).all()
    w_inf = w.clone()
    w_inf[5] = math.inf
    assert not torch.isfinite(mixture_log_prob(w_inf, pi, mu, sigma))
    mu_nan = mu.clone()
    mu_nan[2] = math.nan
    result = mixture_log_prob_and_grad(w, pi, mu_nan, sigma, validate_args=False)
    assert math.isnan(result.log_prob.item()) and torch.isnan(result.grad_w).all()


def test_both_kernels_non_contiguous_inputs(which_kernel):
    w, pi, mu, sigma = make_mixture(6, (40, 30), seed=24)
    views = (w.t(), pi.repeat(2)[::2], mu.repeat(2)[::2], sigma.repeat(2)[::2])
    w_strided = torch.stack([w, w], -1)[..., 0].reshape(-1)[::3]  # a 1-d strided view
    for args in (views, (w_strided, *views[1:])):
        assert not args[0].is_contiguous() and not args[1].is_contiguous()
        value, grads = kernel_grads(args)
        expected_value, expected = naive_grads(*args)
        assert_close(value, expected_value, rtol=1e-12)
        for name, got, want in zip(NAMES, grads, expected):
            assert got.shape == want.shape
            assert_close(got, want, rtol=1e-10, atol=1e-12 * want.abs().max(), msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_one_and_two_threads_agree_up_to_summation_order(native_only, dtype):
    tensors = make_mixture(16, (200_003,), seed=25, dtype=dtype)
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(mixture_log_prob_and_grad(*tensors))
    finally:
        torch.set_num_threads(previous)
    one, two = results
    assert torch.equal(one.grad_w, two.grad_w)  # per weight: no summation across threads
    rtol = 1e-6 if dtype == torch.float32 else 1e-13
    for name in ("log_prob", "grad_pi", "grad_mu", "grad_sigma"):
        assert_close(getattr(two, name), getattr(one, name), rtol=rtol, msg=name)
    expected_value, _ = naive_grads(*tensors)
    assert_close(one.log_prob, expected_value, rtol=1e-5 if dtype == torch.float32 else 1e-12)


def _fresh_native(monkeypatch, tmp_path, compiler=None):
    """Forget the loaded library and build into ``tmp_path`` (restored after the test)."""
    monkeypatch.setattr(_native, "_library", None)
    monkeypatch.setattr(_native, "_error", None)
    monkeypatch.setattr(kernel, "_native_warned", False)
    monkeypatch.setenv("BAYES_SWS_CACHE_DIR", str(tmp_path))
    if compiler is not None:
        monkeypatch.setenv("BAYES_SWS_CC", compiler)


@pytest.mark.parametrize("compiler", ["bayes-sws-no-such-compiler", "false"])
def test_missing_or_failing_compiler_falls_back_with_one_warning(monkeypatch, tmp_path, compiler):
    _fresh_native(monkeypatch, tmp_path, compiler)
    monkeypatch.setattr(kernel, "_kernel", "auto")
    tensors = make_mixture(3, (50,), seed=26)
    with pytest.warns(RuntimeWarning, match="native prior kernel could not be built"):
        value, grads = kernel_grads(tensors)
    assert_close(value, scipy_log_prob(*tensors), rtol=1e-12)
    _, expected = naive_grads(*tensors)
    for name, got, want in zip(NAMES, grads, expected):
        assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only one warning per process
        mixture_log_prob(*tensors)
    assert not kernel.native_available()
    monkeypatch.setattr(kernel, "_kernel", "native")  # asked for explicitly: an error
    with pytest.raises(RuntimeError, match="could not be built"):
        mixture_log_prob(*tensors)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_native_build_into_a_fresh_cache_is_atomic_and_reused(monkeypatch, tmp_path):
    if not HAVE_CC:
        pytest.skip("no C compiler on this machine")
    _fresh_native(monkeypatch, tmp_path)
    # two processes building into the same empty cache at once
    script = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('n', {str(_native.__file__)!r}); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "m.load(); print(m.library_path())"
    )
    import subprocess

    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    paths = {proc.communicate(timeout=300)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(paths) == 1
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == [__import__("pathlib").Path(paths.pop()).name]  # no temporary files left
    lib = _native.load()  # this process: found in the cache, not rebuilt
    assert _native.last_build_seconds == 0.0 and lib.bsws_openmp() == 1
    tensors = make_mixture(4, (1000,), seed=27)
    monkeypatch.setattr(kernel, "_kernel", "native")
    assert_close(mixture_log_prob(*tensors), scipy_log_prob(*tensors), rtol=1e-12)


def test_kernel_switch_and_environment(monkeypatch):
    monkeypatch.setattr(kernel, "_kernel", kernel.get_kernel())
    for choice in kernel.KERNELS:
        kernel.set_kernel(choice)
        assert kernel.get_kernel() == choice
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernel.set_kernel("fortran")
    monkeypatch.setenv("BAYES_SWS_KERNEL", "torch")
    assert kernel._kernel_from_env() == "torch"
    monkeypatch.setenv("BAYES_SWS_KERNEL", " Native ")
    assert kernel._kernel_from_env() == "native"
    monkeypatch.delenv("BAYES_SWS_KERNEL")
    assert kernel._kernel_from_env() == "auto"
    monkeypatch.setenv("BAYES_SWS_KERNEL", "bogus")
    with pytest.warns(RuntimeWarning):
        assert kernel._kernel_from_env() == "auto"
    kernel.set_kernel("native")  # other devices keep the torch path
    assert kernel._native_library(torch.device("meta")) is None
    kernel.set_kernel("torch")
    assert kernel._native_library(torch.device("cpu")) is None


def test_double_backward_still_differentiates_through_the_native_forward(native_only):
    tensors = with_grad(make_mixture(3, (40,), seed=28))
    value = mixture_log_prob(*tensors)
    (g_w,) = torch.autograd.grad(value, tensors[0], create_graph=True)
    hess_diag = torch.autograd.grad(g_w.sum(), tensors[0])[0]
    plain = [t.detach().clone().requires_grad_() for t in tensors]
    (g_plain,) = torch.autograd.grad(naive_log_prob(*plain), plain[0], create_graph=True)
    (want,) = torch.autograd.grad(g_plain.sum(), plain[0])
    assert_close(hess_diag, want, rtol=1e-10, atol=1e-12)


def test_backward_twice_through_a_retained_graph(which_kernel):
    tensors = make_mixture(4, (300,), seed=29)
    inputs = with_grad(tensors)
    value = mixture_log_prob(*inputs)
    first = torch.autograd.grad(3.0 * value, inputs, retain_graph=True)
    second = torch.autograd.grad(-2.0 * value, inputs)
    _, expected = naive_grads(*tensors)
    for name, a, b, want in zip(NAMES, first, second, expected):
        scale = want.abs().max().item()
        assert_close(a, 3.0 * want, rtol=1e-10, atol=1e-12 * scale, msg=name)
        assert_close(b, -2.0 * want, rtol=1e-10, atol=1e-12 * scale, msg=name)


# --------------------------------------------------------------------------- #
# Several weight tensors in one call
# --------------------------------------------------------------------------- #

PIECE_SHAPES = [(12, 25), (7,), (3, 4, 5)]
PIECE_SIZES = [math.prod(s) for s in PIECE_SHAPES]


def _pieces(w, grads_for=(0, 1, 2)):
    """``w`` cut into tensors of :data:`PIECE_SHAPES`, the middle one non-contiguous."""
    parts = [p.reshape(s).clone() for p, s in zip(w.split(PIECE_SIZES), PIECE_SHAPES)]
    parts[1] = torch.stack([parts[1], parts[1]], 1)[:, 0]  # a strided view of a copy
    return [p.requires_grad_(i in grads_for) for i, p in enumerate(parts)]


@pytest.mark.parametrize("grads_for", [(0, 1, 2), (0, 2)])
def test_a_sequence_of_weight_tensors_is_their_concatenation(which_kernel, grads_for):
    """Value against scipy and every gradient against float64 autograd of the textbook
    formula, on the concatenated weights; each tensor gets its own part, in its shape."""
    tensors = make_mixture(5, (sum(PIECE_SIZES),), seed=31)
    pieces = _pieces(tensors[0], grads_for)
    params = [t.clone().requires_grad_() for t in tensors[1:]]
    value = mixture_log_prob(pieces, *params)
    value.backward()
    expected_value, expected = naive_grads(*tensors)
    assert_close(value, scipy_log_prob(*tensors), rtol=1e-12)
    assert_close(value, expected_value, rtol=1e-12)
    for i, (piece, want) in enumerate(zip(pieces, expected[0].split(PIECE_SIZES))):
        if i in grads_for:
            assert piece.grad.shape == piece.shape
            assert_close(piece.grad.reshape(-1), want, rtol=1e-10, atol=1e-12)
        else:
            assert piece.grad is None
    for tensor, want in zip(params, expected[1:]):
        assert_close(tensor.grad, want, rtol=1e-10, atol=1e-12 * want.abs().max().item())


def test_a_sequence_keeps_no_concatenated_copy_for_backward():
    """What backward holds are the caller's tensors and the mixture, nothing of N elements."""
    tensors = make_mixture(3, (sum(PIECE_SIZES),), seed=32)
    pieces = _pieces(tensors[0])
    value = mixture_log_prob(pieces, *tensors[1:])
    saved = value.grad_fn.saved_tensors
    assert max(t.numel() for t in saved) == max(p.numel() for p in pieces)
    assert {t.data_ptr() for t in saved} >= {p.data_ptr() for p in pieces}


def test_a_sequence_under_gradcheck_gradgradcheck_and_a_retained_graph():
    tensors = make_mixture(3, (sum(PIECE_SIZES),), seed=33)
    pieces = _pieces(tensors[0])
    params = [t.clone().requires_grad_() for t in tensors[1:]]

    def f(*args):
        return mixture_log_prob(list(args[:3]), *args[3:], chunk_size=7)

    assert torch.autograd.gradcheck(f, (*pieces, *params))
    assert torch.autograd.gradgradcheck(f, (*pieces, *params))
    value = f(*pieces, *params)
    first = torch.autograd.grad(value, pieces, retain_graph=True)
    again = torch.autograd.grad(value, pieces)  # recomputed: the first pass's were used
    for a, b in zip(first, again):
        assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "w, match",
    [
        ([], "non-empty list or tuple"),
        ("weights", "got str"),
        ([torch.zeros(3, dtype=F64), [0.0]], r"w\[1\] is a list"),
        ([torch.zeros(3, dtype=F64), torch.zeros(2)], r"w\[1\] is torch.float32 on cpu"),
    ],
)
def test_a_bad_sequence_of_weights_is_refused_clearly(w, match):
    _, pi, mu, sigma = make_mixture(3)
    with pytest.raises(TypeError, match=match):
        mixture_log_prob(w, pi, mu, sigma)
