"""The fast prior kernel against independent oracles.

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
from conftest import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import norm

from bayes_sws import kernel
from bayes_sws.kernel import mixture_log_prob, mixture_log_prob_and_grad

F64 = torch.float64
NAMES = ("w", "pi", "mu", "sigma")
PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


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
# The closed-form entry point, the compiled path, validation, memory
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


@pytest.fixture
def eager_compile_stand_in(monkeypatch):
    """Route the compiled branch through the uncompiled functional chunk (no 10 s compile)."""
    monkeypatch.setattr(kernel, "_compiled_chunk", kernel._chunk_math)
    monkeypatch.setattr(kernel, "_compile_failed", False)
    monkeypatch.setattr(kernel, "_compile_mode", "always")


@pytest.mark.parametrize("which", [NAMES, ("w",), ("sigma",)])
def test_compiled_branch_plumbing(eager_compile_stand_in, which):
    tensors = make_mixture(6, (103,), seed=14)
    inputs = with_grad(tensors, which)
    value = mixture_log_prob(*inputs, chunk_size=10)  # ten "compiled" chunks + eager tail
    value.backward()
    expected_value, expected = naive_grads(*tensors)
    assert_close(value, expected_value, rtol=1e-12)
    for name, tensor, want in zip(NAMES, inputs, expected):
        if name in which:
            assert_close(tensor.grad, want, rtol=1e-10, atol=1e-12, msg=name)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(kernel, "_compiled_chunk", broken)
    monkeypatch.setattr(kernel, "_compile_failed", False)
    monkeypatch.setattr(kernel, "_compile_mode", "always")
    tensors = make_mixture(3, (50,), seed=15)
    with pytest.warns(RuntimeWarning, match="eager"):
        value = mixture_log_prob(*tensors, chunk_size=10)
    assert kernel._compile_failed
    assert_close(value, scipy_log_prob(*tensors), rtol=1e-12)


def test_compile_mode_switch(monkeypatch):
    assert kernel.get_compile_mode() in kernel.COMPILE_MODES
    monkeypatch.setattr(kernel, "_compile_mode", kernel.get_compile_mode())
    monkeypatch.setattr(kernel, "_compile_failed", False)
    cpu = torch.device("cpu")
    kernel.set_compile_mode("auto")
    assert kernel.get_compile_mode() == "auto"
    big = kernel.AUTO_COMPILE_MIN_ELEMENTS
    assert kernel._use_compiled(big // 16, 16, cpu)
    assert not kernel._use_compiled(big // 16 - 1, 16, cpu)  # too small to repay compiling
    assert not kernel._use_compiled(big, 2, torch.device("meta"))  # unmeasured device
    kernel.set_compile_mode("never")
    assert not kernel._use_compiled(big, 2, cpu)
    kernel.set_compile_mode("always")
    assert kernel._use_compiled(10, 16, cpu)
    with pytest.raises(ValueError, match="compile mode"):
        kernel.set_compile_mode("sometimes")
    monkeypatch.setenv("BAYES_SWS_KERNEL_COMPILE", "0")
    assert kernel._mode_from_env() == "never"
    monkeypatch.setenv("BAYES_SWS_KERNEL_COMPILE", "auto")
    assert kernel._mode_from_env() == "auto"
    monkeypatch.delenv("BAYES_SWS_KERNEL_COMPILE")
    assert kernel._mode_from_env() == "auto"
    monkeypatch.setenv("BAYES_SWS_KERNEL_COMPILE", "bogus")
    with pytest.warns(RuntimeWarning):
        assert kernel._mode_from_env() == "auto"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_really_compiled_path_matches_oracle(monkeypatch, dtype):
    monkeypatch.setattr(kernel, "_compile_mode", "always")
    monkeypatch.setattr(kernel, "_compile_failed", False)
    tensors = make_mixture(4, (1000,), seed=16, dtype=dtype)
    value, grads = kernel_grads(tensors, chunk_size=256)
    assert not kernel._compile_failed
    expected_value, expected = naive_grads(*tensors)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert_close(value, expected_value, rtol=rtol)
    for name, got, want in zip(NAMES, grads, expected):
        scale = want.abs().max().item()
        assert_close(got, want, rtol=100 * rtol, atol=100 * rtol * scale, msg=name)


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
def test_extra_memory_is_linear_not_n_times_m(monkeypatch):
    """2·10⁶ float32 weights × 64 components: N·M temporaries would be 512 MB."""
    monkeypatch.setattr(kernel, "_compile_mode", "never")  # the eager path; no compiling here
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

BENCHMARKS = __import__("pathlib").Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def prior_benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import prior_kernel

    monkeypatch.setattr(kernel, "_compile_mode", kernel.get_compile_mode())
    return prior_kernel


@pytest.mark.parametrize(
    "impl", ["ours", "recompute", "store", "mixture_same_family", "naive"]
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


def test_benchmark_worker_table_and_plot(prior_benchmark, tmp_path):
    rows = [
        prior_benchmark.worker(impl, 2000, 3, "float32", 1, 2, 0.5)
        for impl in ("ours", "naive")
    ]
    rows.append({"impl": "store", "num_weights": 2000, "num_components": 3, "skipped": "test"})
    for row in rows[:2]:
        assert row["time_min_s"] > 0 and row["extra_peak_bytes"] >= 0
    table = prior_benchmark.markdown_table(rows)
    assert "| 2e+03 | 3 | naive |" in table and "skipped" not in table.split("naive")[0]
    prior_benchmark.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


@pytest.mark.slow
def test_benchmark_script_quick_run(tmp_path):
    import subprocess

    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "prior_kernel.py"), "--sizes", "2000",
         "--components", "2", "--impls", "ours", "naive", "--repeats", "2",
         "--threads", "1", "--plot", str(tmp_path / "p.png")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| 2e+03 | 2 | ours |" in done.stdout
    assert (tmp_path / "p.png").exists()
