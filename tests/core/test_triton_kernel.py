"""The Triton prior kernel (bayes_sws.core.triton_kernel) against independent oracles.

Without a GPU, Triton's interpreter runs the same kernel on CPU tensors through
numpy. It must be on (``TRITON_INTERPRET=1``) before ``triton`` is first
imported (``triton.language`` jits its own reductions at import), so
:func:`test_interpreter_tests_in_a_subprocess` runs this file's interpreter
tests in a fresh ``python -m pytest`` with the variable set; in this process
they skip unless it was set from the start. Oracles:
scipy (``logsumexp`` of ``log pi + norm.logpdf``) for the value and for
∂/∂π_j = Σ_i N(w_i | μ_j, σ_j²)/p(w_i), and float64 torch autograd of the plain
(N, M) logsumexp written here for all gradients. On CUDA, the Triton path is
also compared with the chunked torch path. All but the fallback test skip without Triton.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BENCHMARKS, assert_close
from scipy.special import logsumexp
from scipy.stats import norm

from bayes_sws.core import kernel, triton_kernel
from bayes_sws.core.kernel import mixture_log_prob, mixture_log_prob_and_grad

F32, F64 = torch.float32, torch.float64
NAMES = ("w", "pi", "mu", "sigma")


def _interpreter_active() -> bool:
    """Whether triton was imported with its interpreter on (its own jitted reductions)."""
    if not triton_kernel.interpreting() or not triton_kernel.triton_importable():
        return False
    standard = sys.modules["triton.language.standard"]
    return type(standard.sum).__name__ == "InterpretedFunction"


@pytest.fixture
def interpreter(monkeypatch):
    """Triton's CPU interpreter in this process, and ``set_kernel("triton")``."""
    pytest.importorskip("triton")
    if not _interpreter_active():
        pytest.skip("needs TRITON_INTERPRET=1 from the start (run in a subprocess below)")
    monkeypatch.setattr(kernel, "_kernel", "triton")


def test_interpreter_tests_in_a_subprocess():
    pytest.importorskip("triton")
    if _interpreter_active():
        pytest.skip("this process is the interpreter run")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1")
    command = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q"]
    command += ["-p", "no:cacheprovider", "-k", "not subprocess and not cuda"]
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-3000:]


# --------------------------------------------------------------------------- #
# Oracles
# --------------------------------------------------------------------------- #


def _arrays(*tensors):
    return [t.detach().cpu().double().numpy() for t in tensors]


def scipy_log_prob(w, pi, mu, sigma) -> float:
    w, pi, mu, sigma = _arrays(w, pi, mu, sigma)
    with np.errstate(divide="ignore"):
        log_pi = np.log(pi)
    return float(logsumexp(log_pi + norm.logpdf(w.reshape(-1, 1), mu, sigma), axis=1).sum())


def scipy_grad_pi(w, pi, mu, sigma) -> np.ndarray:
    """Σ_i N(w_i | μ_j, σ_j²) / p(w_i), also where π_j = 0."""
    w, pi, mu, sigma = _arrays(w, pi, mu, sigma)
    log_normal = norm.logpdf(w.reshape(-1, 1), mu, sigma)
    with np.errstate(divide="ignore"):
        log_p = logsumexp(np.log(pi) + log_normal, axis=1, keepdims=True)
    return np.exp(log_normal - log_p).sum(0)


def autograd_grads(w, pi, mu, sigma):
    """float64 autograd of Σ_i logsumexp_j(ln π_j + ln N(w_i | μ_j, σ_j²)) (π > 0 only)."""
    inputs = [t.detach().cpu().double().clone().requires_grad_() for t in (w, pi, mu, sigma)]
    w64, pi64, mu64, sigma64 = inputs
    z = (w64.reshape(-1, 1) - mu64) / sigma64
    log_joint = torch.log(pi64) - 0.5 * z**2 - torch.log(sigma64) - 0.5 * math.log(2 * math.pi)
    return torch.autograd.grad(torch.logsumexp(log_joint, dim=1).sum(), inputs)


def mixture(num_components, num_weights, dtype, seed):
    """Weights around the means, some far outside all components, and near a collapsed one."""
    gen = torch.Generator().manual_seed(seed)
    pi = torch.rand(num_components, generator=gen, dtype=F64) + 0.05
    mu = torch.linspace(-1.0, 1.0, num_components, dtype=F64)
    sigma = 0.05 + 0.2 * torch.rand(num_components, generator=gen, dtype=F64)
    w = 0.6 * torch.randn(num_weights, generator=gen, dtype=F64)
    w[:4] = torch.tensor([40.0, -25.0, 1e3, -7.5])  # far outside every component
    if num_components > 1:
        sigma[1] = 1e-6  # collapsed: a spike at mu[1]
        w[4:10] = mu[1] + torch.tensor([0.0, 1e-7, -3e-6, 2e-5, 1e-3, -0.5])
    return [t.to(dtype) for t in (w, pi / pi.sum(), mu, sigma)]


def _tolerances(dtype):
    return (2e-5, 1e-5) if dtype == F32 else (1e-11, 1e-12)


def check_against_oracles(w, pi, mu, sigma, result):
    rtol, atol_scale = _tolerances(w.dtype)
    assert result.log_prob.dtype == w.dtype and result.log_prob.dim() == 0
    want_value = scipy_log_prob(w, pi, mu, sigma)
    assert_close(result.log_prob, want_value, rtol=rtol, atol=rtol, msg="value")
    want = dict(zip(NAMES, autograd_grads(w, pi, mu, sigma)))
    want["pi"] = torch.as_tensor(scipy_grad_pi(w, pi, mu, sigma))
    for name in NAMES:
        got = getattr(result, f"grad_{name}")
        assert got.dtype == w.dtype and got.shape == want[name].shape, name
        scale = want[name].abs().max().item()
        assert_close(got, want[name], rtol=rtol, atol=atol_scale * scale, msg=name)


# --------------------------------------------------------------------------- #
# The interpreter on CPU tensors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("num_components", [1, 2, 16])
def test_value_and_gradients_match_the_oracles(interpreter, dtype, num_components):
    # Blocks of 1024 (M ≤ 2) or 256 (M = 16) weights: N is not a multiple, and
    # with 3 programs one program takes two blocks.
    num_weights = 3 * 1024 + 77 if num_components <= 2 else 1000
    tensors = mixture(num_components, num_weights, dtype, seed=num_components)
    check_against_oracles(*tensors, mixture_log_prob_and_grad(*tensors))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_autograd_function_takes_the_triton_path(interpreter, dtype, monkeypatch):
    calls = []
    fused = triton_kernel.fused_pass
    monkeypatch.setattr(
        triton_kernel, "fused_pass", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    w, pi, mu, sigma = mixture(5, 600, dtype, seed=3)
    inputs = [t.clone().requires_grad_() for t in (w, pi, mu, sigma)]
    value = mixture_log_prob(inputs[0].view(20, 30), *inputs[1:])
    grads = torch.autograd.grad(2.0 * value, inputs)
    assert calls == [1]
    rtol, atol_scale = _tolerances(dtype)
    assert_close(value, scipy_log_prob(w, pi, mu, sigma), rtol=rtol, atol=rtol)
    for name, got, want in zip(NAMES, grads, autograd_grads(w, pi, mu, sigma)):
        scale = want.abs().max().item()
        assert_close(got, 2.0 * want, rtol=rtol, atol=atol_scale * scale, msg=name)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_zero_mixing_proportion(interpreter, dtype):
    w, pi, mu, sigma = mixture(6, 700, dtype, seed=4)
    pi = pi.clone()
    pi[2] = 0.0
    pi = pi / pi.sum()
    result = mixture_log_prob_and_grad(w, pi, mu, sigma)
    rtol, atol_scale = _tolerances(dtype)
    assert_close(result.log_prob, scipy_log_prob(w, pi, mu, sigma), rtol=rtol, atol=rtol)
    want_pi = scipy_grad_pi(w, pi, mu, sigma)
    assert_close(result.grad_pi, want_pi, rtol=rtol, atol=atol_scale * np.abs(want_pi).max())
    keep = pi > 0  # the other gradients: the mixture without component 2
    reduced = mixture_log_prob_and_grad(w, pi[keep], mu[keep], sigma[keep], wrt=("w", "mu"))
    want_w, _, want_mu, _ = autograd_grads(w, pi[keep], mu[keep], sigma[keep])
    assert_close(reduced.grad_w, want_w, rtol=rtol, atol=atol_scale * want_w.abs().max().item())
    assert_close(result.grad_mu[keep], want_mu, rtol=rtol, atol=atol_scale * want_mu.abs().max())
    assert result.grad_mu[2] == 0 and result.grad_sigma[2] == 0


@pytest.mark.parametrize("block", [16, 64])
def test_block_boundaries_with_many_blocks_per_program(interpreter, block):
    """``fused_pass`` directly with small blocks: each of 3 programs takes many."""
    w, pi, mu, sigma = mixture(3, 16 * 23 + 5, F64, seed=5)
    inv_sigma = 1.0 / sigma
    log2_coef = (torch.log(pi) - torch.log(sigma)) / math.log(2) - 0.5 * math.log2(2 * math.pi)
    grad_w = torch.full_like(w, math.nan)
    sums = torch.zeros(3, 3, dtype=F64)
    value = triton_kernel.fused_pass(
        w,
        mu,
        inv_sigma,
        log2_coef,
        log2_coef.clamp(max=-1022.0),
        grad_w=grad_w,
        sums=sums,
        block=block,
    )
    assert_close(value, scipy_log_prob(w, pi, mu, sigma), rtol=1e-12)
    want_w, want_pi, want_mu, want_sigma = autograd_grads(w, pi, mu, sigma)
    assert_close(grad_w, want_w, rtol=1e-11, atol=1e-12 * want_w.abs().max().item())
    assert_close(sums[0] / pi, want_pi, rtol=1e-11)  # S0 = Σ γ
    assert_close(sums[1] * inv_sigma, want_mu, rtol=1e-11, atol=1e-12 * want_mu.abs().max())
    assert_close((sums[2] - sums[0]) * inv_sigma, want_sigma, rtol=1e-11, atol=1e-9)


def test_value_only_and_nan_weights(interpreter):
    w, pi, mu, sigma = mixture(4, 300, F32, seed=6)
    assert_close(mixture_log_prob(w, pi, mu, sigma), scipy_log_prob(w, pi, mu, sigma), rtol=2e-5)
    w = w.clone()
    w[17] = math.nan
    result = mixture_log_prob_and_grad(w, pi, mu, sigma)
    assert torch.isnan(result.log_prob) and torch.isnan(result.grad_w[17])
    assert torch.isnan(result.grad_mu).all() and not torch.isnan(result.grad_w[16])
    empty = mixture_log_prob_and_grad(w[:0], pi, mu, sigma)
    assert empty.log_prob == 0 and empty.grad_w.shape == (0,) and (empty.grad_mu == 0).all()


def test_dispatch(monkeypatch):
    w = torch.zeros(10)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_kernel.available(w)  # CPU, no interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not triton_kernel.available(w.to(torch.float16))
    assert triton_kernel.available(w) == triton_kernel.triton_importable()
    monkeypatch.setattr(kernel, "_kernel", "auto")  # auto: never Triton on CPU
    assert kernel._triton_module(w, 4) is None
    monkeypatch.setattr(kernel, "_kernel", "triton")
    assert kernel._triton_module(w, triton_kernel.MAX_COMPONENTS + 1) is None
    monkeypatch.setattr(triton_kernel, "_importable", False)
    with pytest.raises(RuntimeError, match="Triton prior kernel"):
        kernel._triton_module(w, 4)


# --------------------------------------------------------------------------- #
# On a GPU: the Triton path against the chunked torch path
# --------------------------------------------------------------------------- #


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("num_components", [1, 2, 16, 64])
def test_cuda_triton_matches_the_torch_path(monkeypatch, dtype, num_components):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tensors = [t.cuda() for t in mixture(num_components, 100_003, dtype, seed=7)]
    results = {}
    for choice in ("triton", "torch"):
        monkeypatch.setattr(kernel, "_kernel", choice)
        results[choice] = mixture_log_prob_and_grad(*tensors)
    check_against_oracles(*tensors, results["triton"])
    rtol, atol_scale = (2 * tol for tol in _tolerances(dtype))  # both paths round
    assert_close(results["triton"].log_prob, results["torch"].log_prob, rtol=rtol)
    for name in NAMES:
        got, want = (getattr(results[c], f"grad_{name}") for c in ("triton", "torch"))
        scale = want.abs().max().item()
        assert_close(got, want, rtol=rtol, atol=atol_scale * scale, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_triton_pass_replays_in_a_cuda_graph(monkeypatch):
    """The Triton pass captured in a CUDA graph and replayed on new weights gives the eager
    pass's numbers (the capture once failed: the constants table copied from the host)."""
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kernel, "_kernel", "triton")
    w, pi, mu, sigma = (t.cuda() for t in mixture(16, 100_003, F32, seed=9))
    wrt = ("w", "mu", "sigma")

    def run():
        return mixture_log_prob_and_grad(w, pi, mu, sigma, wrt=wrt, validate_args=False)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # warm-up (compiles) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    w.copy_(mixture(16, 100_003, F32, seed=10)[0].cuda())
    graph.replay()
    eager = run()
    assert_close(captured.log_prob, eager.log_prob, rtol=1e-6)
    for name in wrt:
        got, want = getattr(captured, f"grad_{name}"), getattr(eager, f"grad_{name}")
        assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item(), msg=name)


def test_a_failing_triton_kernel_falls_back_under_auto_and_raises_under_triton(monkeypatch):
    class Broken:
        MAX_COMPONENTS = 8

        @staticmethod
        def fused_pass(*args, **kwargs):
            raise RuntimeError("no compiler")

    monkeypatch.setattr(
        kernel, "_triton_module", lambda w, m: None if kernel._triton_failed else Broken
    )
    monkeypatch.setattr(kernel, "_triton_failed", False)
    monkeypatch.setattr(kernel, "_native_library", lambda device: None)  # as on CUDA
    w, pi, mu, sigma = mixture(3, 50, F64, seed=8)
    monkeypatch.setattr(kernel, "_kernel", "triton")
    with pytest.raises(RuntimeError, match="no compiler"):
        mixture_log_prob_and_grad(w, pi, mu, sigma)
    monkeypatch.setattr(kernel, "_kernel", "auto")
    with pytest.warns(RuntimeWarning, match="Triton prior kernel failed"):
        result = mixture_log_prob_and_grad(w, pi, mu, sigma)
    check_against_oracles(w, pi, mu, sigma, result)
    assert kernel._triton_failed


def test_gpu_benchmark_script_in_a_subprocess():
    """``benchmarks/gpu_prior.py``: without CUDA one line and exit 0; ``--interpret`` (fresh
    process: the variable must precede Triton's import) checks the kernel against the torch path."""
    script = BENCHMARKS / "gpu_prior.py"

    def run(*args):
        command = [sys.executable, str(script), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=600)

    if not torch.cuda.is_available():
        plain = run()
        assert plain.returncode == 0 and "needs a CUDA GPU (none found)" in plain.stdout
    pytest.importorskip("triton")
    smoke = run("--interpret")
    assert smoke.returncode == 0, smoke.stdout[-2000:] + smoke.stderr[-2000:]
    worst = float(smoke.stdout.strip().rsplit(" ", 1)[-1])
    assert worst < 1e-4
