r"""The fast mixture-prior kernel: :math:`\sum_i \ln p(w_i)` and its closed-form gradients.

The prior of soft weight-sharing (PRML §5.5.7, eq. 5.137) evaluated over all
weights at once,

.. math::

    \ln p(w) = \sum_i \ln \sum_j \pi_j \mathcal N(w_i \mid \mu_j, \sigma_j^2),

as a custom :class:`torch.autograd.Function` whose backward pass is the closed
forms (5.141)–(5.147) written for :math:`+\ln p` (so :math:`\Omega = -` this):

.. math::

    \frac{\partial \ln p}{\partial w_i} &= -\sum_j \gamma_{ij} \frac{w_i - \mu_j}{\sigma_j^2}, &
    \frac{\partial \ln p}{\partial \mu_j} &= \sum_i \gamma_{ij} \frac{w_i - \mu_j}{\sigma_j^2}, \\
    \frac{\partial \ln p}{\partial \sigma_j} &=
        \sum_i \gamma_{ij} \Big(\frac{(w_i - \mu_j)^2}{\sigma_j^3} - \frac{1}{\sigma_j}\Big), &
    \frac{\partial \ln p}{\partial \pi_j} &= \sum_i \frac{\gamma_{ij}}{\pi_j}
        = \sum_i \frac{\mathcal N(w_i \mid \mu_j, \sigma_j^2)}{p(w_i)}.

Three implementations of the same pass, chosen by :func:`set_kernel` or the
environment variable ``BAYES_SWS_KERNEL`` (``auto``, the default; ``native``;
``torch``; ``triton``):

* **Native** (CPU float32/float64, the default there): a fused C loop,
  ``bayes_sws/core/_native/mixture.c``, compiled on first use with the system C
  compiler (``cc -O3 -march=native -fopenmp``, ~2 s, no ``-ffast-math`` so NaN
  and inf propagate) into a per-user cache keyed by a hash of source, flags,
  compiler and CPU, and called through :mod:`ctypes` on the tensors' memory.
  Blocks of 256 weights: logits and ``u`` for all components, the per-weight
  maximum, ``exp2`` by range reduction and a polynomial (float32: degree 6,
  float64: degree 13), the log-density, ∂/∂w and S0, S1, S2 — everything
  vectorised over weights, in L1 cache, without (M, n) tensors. OpenMP over
  weights with ``torch.get_num_threads()`` threads, per-thread float64 partial
  sums reduced in thread order. Same formulas, floor and π = 0 semantics as the
  torch path; at LeNet-300-100 size 3.7–4× faster per forward + backward on one
  thread, the loop itself about 0.4 ns per (weight, component) pair against
  1.5–2.6 ns for the torch path (``benchmarks/prior_kernel.py``, ``native_loop``).
  Under ``auto`` a missing compiler or failed build falls back to the torch path
  with one warning; ``native`` raises instead.
* **Triton** (CUDA float32/float64 when Triton imports, the default there; or
  ``BAYES_SWS_KERNEL=triton``): :mod:`bayes_sws.core.triton_kernel`, one fused
  kernel launch over tiles of weights × components in registers, the same
  formulas, floor and π = 0 semantics; the chunked torch path is the fallback
  (no Triton, more than ``triton_kernel.MAX_COMPONENTS`` components). Other
  devices take the torch path.
  The loop skips the components that cannot matter to float precision (below).
* **Torch** (everything else, or ``BAYES_SWS_KERNEL=torch``): chunked torch
  ops, described below; every (weight, component) pair.

Pruning (native loop; :func:`set_pruning`, ``BAYES_SWS_PRUNE``)
----------------------------------------------------------------

For one weight :math:`w` write each component's term in log₂ units,
:math:`l_j = c_j - h u_j^2` with :math:`c_j = \log_2(\pi_j / (\sigma_j\sqrt{2\pi}))`,
:math:`u_j = (w-\mu_j)/\sigma_j`, :math:`h = \tfrac12\log_2 e`; let :math:`k`
attain the largest, :math:`l_k`, and :math:`D_j = l_k - l_j \ge 0`. The loop skips
component :math:`j` for :math:`w` only when :math:`D_j \ge T_j`, where :math:`T_j`
is the least :math:`T` with

.. math::

    2^{-T} \max\Big(\frac{1}{\pi_j},\; \rho_j\Big(2 + \frac{T + E_j}{h}\Big)\Big)
    \le 2^{-g}, \qquad g = p + 2 + \lceil\log_2 M\rceil,

:math:`p` = 24 (float32) or 53 (float64) significand bits, :math:`\rho_j =
\sigma_{\max}/\sigma_j \ge 1`, :math:`E_j = \max(0, c_j - \min_i c_i)` (over the
components with :math:`\pi > 0`). For like components :math:`T_j` is about 38
bits in float32 and 67 in float64: a component 7–10 of its widths away.

**Claim.** Every contribution of a skipped pair is at most :math:`2^{-g}` of the
weight's unit, so all of a weight's skipped pairs together are at most
:math:`2^{-(p+2)}` units, a quarter of the unit roundoff. The units: 1 for
:math:`\ln p(w)`, for :math:`\gamma_j` (hence :math:`S_0`) and for
:math:`\partial\ln p/\partial\pi_j`'s term :math:`\gamma_j/\pi_j`;
:math:`\max(1,|u_k|)` for :math:`S_1`'s term :math:`\gamma_j u_j`;
:math:`\max(1,u_k^2)` for :math:`S_2`'s :math:`\gamma_j u_j^2`;
:math:`\max(1,|u_k|)/\sigma_k` for the terms :math:`\gamma_j u_j/\sigma_j` of
:math:`\partial/\partial w` and :math:`\partial/\partial\mu_j`; and
:math:`\max(1,u_k^2)/\sigma_k` for :math:`\gamma_j(u_j^2-1)/\sigma_j` of
:math:`\partial/\partial\sigma_j`. (A weight sitting exactly on its mean has a
gradient of 0 there; the unit keeps the scale of its component.)

**Proof.** With :math:`t = \sum_i 2^{l_i - l_k} \ge 1` (it holds :math:`i = k`),
:math:`\gamma_j = 2^{-D_j}/t \le 2^{-D_j}`; dropping the skipped pairs lowers
:math:`t` by at most :math:`\sum 2^{-D_j}`, so :math:`\ln p` by at most that and
each kept :math:`\gamma` by at most that relatively. Next, from
:math:`l_j = l_k - D_j` and :math:`l_k = c_k - h u_k^2`,
:math:`h u_j^2 = c_j - c_k + h u_k^2 + D_j`, so :math:`u_j^2 \le u_k^2 + x` with
:math:`x = (D_j + E_j)/h`. Hence :math:`|u_j| \le |u_k| + \sqrt x \le
(2 + x)\max(1,|u_k|)` (as :math:`\sqrt x \le 1 + x`), :math:`u_j^2` and
:math:`|u_j^2 - 1| \le \max(1, u_j^2)` are at most :math:`(1 + x)\max(1, u_k^2)`,
and :math:`1/\sigma_j = (\sigma_k/\sigma_j)/\sigma_k \le \rho_j/\sigma_k`. Every
term is therefore at most :math:`2^{-D_j} F(D_j)` units with :math:`F(D) = 1/\pi_j`
(for :math:`\gamma_j/\pi_j`) or :math:`F(D) = \rho_j(2 + (D + E_j)/h) \ge 2`
(for the others; :math:`\gamma_j` needs only 1). Both :math:`2^{-D}F(D)` fall
as :math:`D` grows (for the second, :math:`\tfrac{d}{dD}\log_2 =
-1 + 1/((2h + D + E_j)\ln 2) < 0` since :math:`2h = 1/\ln 2`), so
:math:`D_j \ge T_j` gives at most :math:`2^{-T_j}F(T_j) \le 2^{-g}`. ∎

**Where the lists come from.** ``mixture.c`` (``prune_build``, in double) cuts
the line around the means (:math:`\mu_j \pm 8\min(\sigma_j, \mathrm{median}\,\sigma)`)
into at most 1024 cells of width :math:`\sigma_{\min}/2`. A cell's list holds
every :math:`j` whose largest term on the cell plus :math:`T_j` reaches a lower
bound of the largest term everywhere on it (the largest over :math:`i` of the
least :math:`l_i` on the cell; a concave quadratic is least at an end), so
:math:`D_j \ge T_j` holds for every weight of the cell whose :math:`j` is left
out. Each component is scanned outwards from its mean only until its term can no
longer reach the smallest bound further out, so a table costs far less than
cells × M. Cells are widened by 1/64 of a width for the rounding of a weight's
cell index :math:`(w - a)\cdot\mathrm{inv}` in the weights' type, and the test
carries a relative margin of :math:`2^{-20}` for the rounding of the doubles.
Weights outside the cells, NaN and ±inf get every component (so NaN still
reaches every sum); mixtures with non-finite parameters, or with a
:math:`\pi_j = 0` whose :math:`\partial/\partial\pi_j` is wanted, are not
pruned. Where the unpruned loop floors an exponential at :math:`2^{-126}`
(:math:`2^{-1022}`), a skipped pair contributes exactly 0: both are within the
claim.

**How it runs.** Blocks of 8192 weights: each weight's list from its cell, a
counting sort of the block by list, each run through the same block loop over
its list only, the weight gradients gathered back in order — per weight, the
same operations in the same order whatever the thread count. ``auto`` (the
default) prunes where a cost model says the sorted blocks are cheaper than the
full loop (from the lists of 2048 weights spread over ``w``; N ≥ 16384), and
every block checks again with its own counts; ``off`` evaluates every pair as
before; ``always`` prunes wherever the bound applies (for tests). Results agree
with the unpruned loop to rounding in every mode (``tests/core/test_kernel_pruning.py``
checks the claim pair by pair and the results against the float64 oracle).
A run whose list is one component skips the exponential and the logarithm,
which are exact there (:math:`2^0 = 1`, :math:`\ln 1 = 0`).

Measured on one thread (the C loop alone, ``auto`` against ``off`` in turns,
least CPU time of 40; ``benchmarks/prior_kernel.py --weights clustered|init``
for the whole forward + backward): on clustered weights (after retraining; 6.5 %
of the pairs left at M = 16, 1.7 % at M = 64) 3.4× faster at M = 16 and 10× at
M = 64 in float32, 2.5× and 8× in float64; at initialisation (σ = the spacing of
the means) M = 16 stays unpruned (14 of 16 components in the lists; deciding
costs about 11 µs, 0.1–0.3 % of the loop at N = 266,200–10⁶) and M = 64 runs
3–3.6× faster.

How the torch path is fast (all measured on 2 CPU cores, see ``BENCHMARKS.md``,
the earlier runs in ``benchmarks/results/history.md`` and ``benchmarks/prior_kernel.py``):

* **One pass, gradients in the forward.** The weights are visited once, in
  chunks of about ``CHUNK_ELEMENTS`` (weight, component) pairs, laid out
  component-major (M, n) so every reduction over components is a vectorised
  elementwise op. Each chunk computes the log-density *and* the gradients the
  caller will need (``ctx.needs_input_grad``): one ``(N,)`` tensor for
  :math:`\partial/\partial w` and three ``(M,)`` sums
  :math:`S_0 = \sum_i \gamma_{ij}`, :math:`S_1 = \sum_i \gamma_{ij} u_{ij}`,
  :math:`S_2 = \sum_i \gamma_{ij} u_{ij}^2` with :math:`u_{ij} = (w_i-\mu_j)/\sigma_j`,
  from which all hyperparameter gradients follow. Backward only scales them by
  the incoming gradient. Recomputing the responsibilities in backward from a
  saved ``logsumexp`` costs a second pass over N·M exponentials and was slower
  (benchmark: ``recompute`` row); storing them costs N·M memory. Extra memory is
  O(N + M): the ``(N,)`` gradient, plus a chunk-sized scratch buffer that on
  CPU is kept between calls (one per thread and dtype, about 9 MiB in float32
  at M = 16) because first-touch page faults of a fresh one cost ~0.5 ms.
* **Base-2 exponentials with a floor.** Logits are kept in log₂ units and fed
  to ``exp2``, which is 4× faster than ``exp`` on CPU; differences below the
  smallest normal exponent (−126 in float32, −1022 in float64) are clamped
  there, because underflowing exponentials take a slow path that was 4× slower
  again. The clamp changes a responsibility of at most :math:`2^{-126}` (resp.
  :math:`2^{-1022}`) into exactly that number, far below rounding of the sums.
  Components with :math:`\pi_j = 0` are floored at :math:`-\infty` instead, so
  they contribute exactly nothing.
* **Stable.** The per-weight maximum is subtracted before exponentiating (a
  log-sum-exp), and :math:`w_i-\mu_j` is formed before dividing by
  :math:`\sigma_j`, so values and gradients stay finite and accurate for
  :math:`|w|` up to :math:`10^4` and :math:`\sigma` down to :math:`10^{-6}`.

No ``torch.compile`` path: compiling the per-chunk maths measured 0.44–1.11 ×
eager steady state at M = 2–64 on CPU for 4–15 s of compile time per shape
(``benchmarks/results/history.md``), and with the native loop as the CPU
default no default configuration took it, so it was removed.

Double backward (Hessians, e.g. for a Laplace guide) is supported by a slower
differentiable path that materialises (N, M) tensors.

One home for the maths: the per-element terms :math:`\ln\pi_j + \ln\mathcal N`
are :func:`bayes_sws.core.penalty.log_joint_densities`, which the double-backward
path, :class:`~bayes_sws.core.distributions.MixtureOfGaussians`' batched branch
and the reference forms of :mod:`~bayes_sws.core.penalty` use. This kernel is
the same sum fused, and stays because that broadcast (the ``naive`` row of
``benchmarks/prior_kernel.py``) is 87–156× slower than the native loop at
N = 10⁶, M = 16–64, and needs N·M memory (BENCHMARKS.md, "Prior kernel").

References: Bishop, *Pattern Recognition and Machine Learning*, §5.5.7;
Nowlan & Hinton (1992); Ullrich, Meeds & Welling (2017).
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import triton_kernel
from .penalty import log_joint_densities

__all__ = [
    "CHUNK_ELEMENTS",
    "KERNELS",
    "MixtureLogProbGrad",
    "get_kernel",
    "mixture_log_prob",
    "mixture_log_prob_and_grad",
    "PRUNING",
    "get_pruning",
    "native_available",
    "set_kernel",
    "set_pruning",
]

#: (weight, component) pairs per chunk. 2**18–2**20 measured alike on one thread
#: (within 10%); the larger size means 4x fewer OpenMP parallel regions, each of
#: which can wait for a busy second core, so 2 threads on a shared machine gain.
CHUNK_ELEMENTS = 2**20
_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)
_HALF_LOG2E = 0.5 * _LOG2E
_HALF_LOG2_2PI = 0.5 * math.log2(2.0 * math.pi)
# log2 of the smallest normal number: exp2 below it is slow and gains nothing.
_EXP2_FLOOR = {torch.float32: -126.0, torch.float64: -1022.0}


class MixtureLogProbGrad(NamedTuple):
    """The log-density of all weights under the mixture and its gradients.

    ``grad_*`` are gradients of ``log_prob`` (not of Ω = −log_prob); a field is
    ``None`` when it was not requested.
    """

    log_prob: Tensor  # 0-dim
    grad_w: Tensor | None  # shape of w
    grad_pi: Tensor | None  # (M,)
    grad_mu: Tensor | None  # (M,)
    grad_sigma: Tensor | None  # (M,)


# --------------------------------------------------------------------------- #
# Environment switches
# --------------------------------------------------------------------------- #


def _choice_from_env(variable: str, choices: tuple[str, ...]) -> str:
    """The value of ``variable`` if it is one of ``choices``, else "auto"."""
    value = os.environ.get(variable, "auto").strip().lower() or "auto"
    if value not in choices:
        warnings.warn(
            f"{variable}={os.environ[variable]!r} is not one of {choices}; using 'auto'.",
            RuntimeWarning,
            stacklevel=3,
        )
        value = "auto"
    return value


# --------------------------------------------------------------------------- #
# Kernel switch: the fused C loop or torch ops
# --------------------------------------------------------------------------- #

KERNELS = ("auto", "native", "torch", "triton")
_ENV_KERNEL = "BAYES_SWS_KERNEL"


def _kernel_from_env() -> str:
    return _choice_from_env(_ENV_KERNEL, KERNELS)


#: The pruning choices; the C loop's ``prune`` argument is the index in this tuple.
PRUNING = ("off", "auto", "always")
_ENV_PRUNE = "BAYES_SWS_PRUNE"


def _pruning_from_env() -> str:
    return _choice_from_env(_ENV_PRUNE, PRUNING)


_kernel = _kernel_from_env()
_pruning = _pruning_from_env()
_native_warned = False
_triton_failed = False  # under auto, the Triton kernel failed once: torch path from then on
_native_mod = None  # bayes_sws.core._native, imported on first use


def _native_module():
    global _native_mod
    if _native_mod is None:
        from bayes_sws.core import _native

        _native_mod = _native
    return _native_mod


def set_kernel(kernel: str) -> None:
    """Choose the implementation of the pass over the weights.

    Parameters
    ----------
    kernel : {"auto", "native", "torch", "triton"}
        ``"auto"`` (default, or ``BAYES_SWS_KERNEL=auto``): the fused C loop
        (:mod:`bayes_sws.core._native`, built on first use with the system C
        compiler) for CPU float32/float64 tensors, falling back to torch ops
        with one warning if it cannot be built; the fused Triton kernel
        (:mod:`bayes_sws.core.triton_kernel`) for CUDA tensors when Triton
        imports, else torch ops. ``"native"``: the C loop on CPU, a failed
        build raises; torch ops elsewhere. ``"torch"``: torch ops only.
        ``"triton"``: the Triton kernel wherever it runs (CUDA, or every
        device under ``TRITON_INTERPRET=1``), raising if Triton does not
        import; torch ops elsewhere. Other devices always use torch ops.
    """
    global _kernel
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    _kernel = kernel


def get_kernel() -> str:
    """The current kernel choice, one of :data:`KERNELS`."""
    return _kernel


def set_pruning(pruning: str) -> None:
    """Choose when the native loop skips far components (module docstring, "Pruning").

    Parameters
    ----------
    pruning : {"auto", "off", "always"}
        ``"auto"`` (default, or ``BAYES_SWS_PRUNE=auto``): skip the components
        that cannot matter to float precision wherever a sample of the weights
        says that pays. ``"off"``: evaluate every (weight, component) pair, as
        before pruning existed. ``"always"``: prune whenever the bound applies,
        even where it costs more than it saves (for tests). Results agree to
        rounding in every mode.
    """
    global _pruning
    if pruning not in PRUNING:
        raise ValueError(f"pruning must be one of {PRUNING}, got {pruning!r}")
    _pruning = pruning


def get_pruning() -> str:
    """The current pruning choice, one of :data:`PRUNING`."""
    return _pruning


def native_available() -> bool:
    """Whether the native kernel is (or can be) built and loaded in this process."""
    _native = _native_module()
    try:
        _native.load()
    except _native.BuildError:
        return False
    return True


def _native_library(device: torch.device):
    """The loaded C library if this call should use it, else ``None``."""
    global _native_warned
    if _kernel in ("torch", "triton") or device.type != "cpu":
        return None
    _native = _native_module()
    try:
        return _native.load()
    except _native.BuildError as error:
        if _kernel == "native":
            raise RuntimeError(
                f"BAYES_SWS_KERNEL/set_kernel asks for the native prior kernel, but it "
                f"could not be built: {error}"
            ) from error
        if not _native_warned:
            _native_warned = True
            warnings.warn(
                f"the native prior kernel could not be built ({error}); using the "
                f"(slower) torch kernel. Set {_ENV_KERNEL}=torch to silence this.",
                RuntimeWarning,
                stacklevel=4,
            )
        return None


def _triton_module(w_flat: Tensor, num_components: int):
    """:mod:`~bayes_sws.core.triton_kernel` if this call should use it, else ``None``.

    ``auto``: CUDA tensors when Triton imports (until it fails once: see
    :func:`_triton_pass`); ``triton``: wherever Triton can run (CUDA, or any
    device under ``TRITON_INTERPRET=1``), raising if it does not import. More than ``triton_kernel.MAX_COMPONENTS`` components, or any
    other choice, take the torch path.
    """
    if _kernel not in ("auto", "triton") or num_components > triton_kernel.MAX_COMPONENTS:
        return None
    if _kernel == "auto" and (w_flat.device.type != "cuda" or _triton_failed):
        return None
    if triton_kernel.available(w_flat):
        return triton_kernel
    if _kernel == "triton" and not triton_kernel.triton_importable():
        raise RuntimeError(
            "BAYES_SWS_KERNEL/set_kernel asks for the Triton prior kernel, but triton does "
            "not import; pip install 'bayes_sws[gpu]' (or triton)"
        )
    return None


_in_forked_child = False


def _after_fork_in_child() -> None:
    # An OpenMP thread pool does not survive fork (the C loop shares torch's libgomp:
    # same soname, loaded once); like torch's DataLoader workers, a forked child runs
    # the loop on one thread.
    global _in_forked_child
    _in_forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _ptr(t: Tensor | None):
    return None if t is None else t.data_ptr()


def _native_pass(
    lib, w_flat, pi, mu, sigma, need_w, need_pi, need_mu, need_sigma
) -> MixtureLogProbGrad:
    """The fused C loop (``bayes_sws/core/_native/mixture.c``): same outputs as the chunked pass."""
    w_c = w_flat.contiguous()
    pi_c, mu_c, sigma_c = pi.contiguous(), mu.contiguous(), sigma.contiguous()
    num_components = mu_c.shape[0]
    grad_w = torch.empty_like(w_c) if need_w else None
    grad_pi = pi_c.new_empty(num_components) if need_pi else None
    grad_mu = mu_c.new_empty(num_components) if need_mu else None
    grad_sigma = sigma_c.new_empty(num_components) if need_sigma else None
    fn = lib.bsws_mixture_f32 if w_c.dtype == torch.float32 else lib.bsws_mixture_f64
    log_prob = ctypes.c_double()
    status = fn(
        w_c.data_ptr(),
        w_c.shape[0],
        pi_c.data_ptr(),
        mu_c.data_ptr(),
        sigma_c.data_ptr(),
        num_components,
        1 if _in_forked_child else torch.get_num_threads(),
        ctypes.byref(log_prob),
        _ptr(grad_w),
        _ptr(grad_pi),
        _ptr(grad_mu),
        _ptr(grad_sigma),
        PRUNING.index(_pruning),
        None,
    )
    if status != 0:
        raise MemoryError("the native prior kernel could not allocate its scratch memory")
    value = torch.tensor(log_prob.value, dtype=w_c.dtype)
    return MixtureLogProbGrad(value, grad_w, grad_pi, grad_mu, grad_sigma)


# --------------------------------------------------------------------------- #
# Per-chunk maths
# --------------------------------------------------------------------------- #


class _Coefficients(NamedTuple):
    """Per-component constants as (M, 1) columns, in the weights' dtype."""

    mu: Tensor
    inv_sigma: Tensor
    log2_coef: Tensor  # log2(π_j / (σ_j √(2π)))
    floor: Tensor  # lowest exponent passed to exp2; −inf for π_j = 0
    neg_inv_sigma: Tensor  # (M,), for the weight gradient


class _Needs(NamedTuple):
    grad_w: bool
    s0: bool  # Σ_i γ_ij         (π and σ gradients)
    s1: bool  # Σ_i γ_ij u_ij    (μ gradient)
    s2: bool  # Σ_i γ_ij u_ij²   (σ gradient)

    @property
    def sums(self) -> bool:
        return self.s0 or self.s1 or self.s2


# Below this many elements torch runs an op on the calling thread, except the
# MKL VML functions (log, log2, ...), which open their own thread team on CPU.
_CPU_PARALLEL_GRAIN = 32768


def _log(x: Tensor, *, inplace: bool = False) -> Tensor:
    """Natural log that never wakes a thread team for a small CPU tensor.

    On a busy 2-core machine with 2 torch threads, ``torch.log`` of a
    10⁴-element tensor stalled for a scheduler tick (~8 ms) in most calls,
    waiting for MKL's second thread; ``xlogy(1, x)`` stays on the calling thread.
    """
    if x.device.type == "cpu" and x.numel() < _CPU_PARALLEL_GRAIN and torch.get_num_threads() > 1:
        return torch.special.xlogy(1.0, x, out=x) if inplace else torch.special.xlogy(1.0, x)
    return x.log_() if inplace else torch.log(x)


def _coefficients(pi: Tensor, mu: Tensor, sigma: Tensor) -> _Coefficients:
    inv_sigma = sigma.reciprocal()
    log2_coef = (_log(pi) - _log(sigma)) * _LOG2E - _HALF_LOG2_2PI
    # −inf exactly where π_j = 0; a floor below the normal range only where
    # π_j is itself that small (exact, merely slower there).
    floor = log2_coef.clamp(max=_EXP2_FLOOR[pi.dtype])
    return _Coefficients(
        mu=mu[:, None],
        inv_sigma=inv_sigma[:, None],
        log2_coef=log2_coef[:, None],
        floor=floor[:, None],
        neg_inv_sigma=-inv_sigma,
    )


_scratch = threading.local()
# Largest scratch buffer kept between calls, in elements (20 MiB in float32, the
# default chunk for M = 1); bigger ones (a large explicit chunk_size) are one-off.
_MAX_CACHED_SCRATCH = 5 * CHUNK_ELEMENTS


def _workspace(like: Tensor, num_components: int, chunk: int) -> Tensor:
    """Flat scratch for one chunk: u and logits (M·chunk each) and three (chunk,) rows.

    On CPU one buffer per thread and dtype is kept between calls: a fresh
    buffer costs a page fault per 4 KiB on first touch, which measured
    ~0.5 ms per call in this project's VMs. Accelerators have caching allocators.
    """
    numel = (2 * num_components + 3) * chunk
    if like.device.type != "cpu" or numel > _MAX_CACHED_SCRATCH:
        return like.new_empty(numel)
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(like.dtype)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[like.dtype] = like.new_empty(numel)
    return buffer[:numel]


def _eager_chunk(
    w_chunk: Tensor,
    coef: _Coefficients,
    work: Tensor,
    needs: _Needs,
    grad_w_out: Tensor | None,
    sums: Tensor | None,
    zero_pi: tuple[Tensor, Tensor, Tensor] | None,
) -> Tensor:
    """Process one chunk inside the scratch ``work``; return Σ_i ln p(w_i) over it.

    Writes the chunk's ∂ ln p/∂w into ``grad_w_out`` and adds S0, S1, S2 into
    ``sums`` (3, M) when asked. ``zero_pi = (index, log2 normaliser, out)``
    adds Σ_i N(w_i | μ_j, σ_j²)/p(w_i) for the components with π_j = 0.
    """
    num_components = coef.mu.shape[0]
    n = w_chunk.shape[0]
    size = num_components * n
    u, logits = work[: 2 * size].view(2, num_components, n)
    top, total, inv_total = work[2 * size : 2 * size + 3 * n].view(3, n)
    torch.sub(w_chunk, coef.mu, out=u).mul_(coef.inv_sigma)  # M n, (w_i − μ_j)/σ_j
    torch.addcmul(coef.log2_coef, u, u, value=-_HALF_LOG2E, out=logits)  # log₂ π_j N_ij
    torch.amax(logits, 0, out=top)  # n
    e = logits.sub_(top).clamp_(min=coef.floor).exp2_()  # M n, π_j N_ij / 2^top
    torch.sum(e, 0, out=total)  # n
    if needs.grad_w or needs.sums:
        torch.reciprocal(total, out=inv_total)
    log_p = _log(total, inplace=True).add_(top, alpha=_LN2)  # n, ln p(w_i)
    if zero_pi is not None:
        index, log2_norm, out = zero_pi
        u_zero = u.index_select(0, index)
        ratio = torch.addcmul(log2_norm, u_zero, u_zero, value=-_HALF_LOG2E)
        out.index_add_(0, index, ratio.sub_(log_p, alpha=_LOG2E).exp2_().sum(1))
    if needs.s0:
        assert sums is not None
        sums[0].addmv_(e, inv_total)
    if needs.grad_w or needs.s1 or needs.s2:
        eu = e.mul_(u)  # γ_ij u_ij · total_i
        if needs.grad_w:
            assert grad_w_out is not None
            torch.mv(eu.t(), coef.neg_inv_sigma, out=grad_w_out).mul_(inv_total)
        if needs.s1:
            assert sums is not None
            sums[1].addmv_(eu, inv_total)
        if needs.s2:
            assert sums is not None
            sums[2].addmv_(eu.mul_(u), inv_total)
    return log_p.sum()


# --------------------------------------------------------------------------- #
# The pass over all weights
# --------------------------------------------------------------------------- #


def _chunked_pass(
    w_flat: Tensor,
    coef: _Coefficients,
    needs: _Needs,
    chunk_size: int | None,
    grad_w: Tensor | None,
    sums: Tensor | None,
    zero_pi: tuple[Tensor, Tensor, Tensor] | None,
) -> Tensor:
    """The torch path's loop over chunks of weights: Σ_i ln p(w_i), filling the buffers."""
    num_weights = w_flat.shape[0]
    num_components = coef.mu.shape[0]
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // num_components)
    chunk = max(1, min(chunk, num_weights))
    work = _workspace(w_flat, num_components, chunk)
    chunk_sums = [w_flat.new_zeros(())]  # summed pairwise at the end, not running
    for start in range(0, num_weights, chunk):
        stop = min(start + chunk, num_weights)
        chunk_sums.append(
            _eager_chunk(
                w_flat[start:stop],
                coef,
                work,
                needs,
                grad_w[start:stop] if grad_w is not None else None,
                sums,
                zero_pi,
            )
        )
    return torch.stack(chunk_sums).sum()


def _triton_pass(fused, w_flat, coef, grad_w, sums, zero_pi) -> Tensor | None:
    """The Triton kernel's pass; under ``auto`` a failure (say, no CUDA compiler for
    Triton) warns once, turns Triton off for this process and returns ``None``."""
    global _triton_failed
    try:
        return fused.fused_pass(
            w_flat,
            coef.mu,
            coef.inv_sigma,
            coef.log2_coef,
            coef.floor,
            grad_w=grad_w,
            sums=sums,
            zero_pi=zero_pi,
        )
    except Exception as error:  # Triton's compile and launch errors have no common base
        if _kernel == "triton":
            raise
        _triton_failed = True
        warnings.warn(
            f"the Triton prior kernel failed ({error!r}); using the (slower) torch kernel. "
            f"Set {_ENV_KERNEL}=torch to silence this.",
            RuntimeWarning,
            stacklevel=5,
        )
        return None


def _forward_pass(
    w_flat: Tensor,
    pi: Tensor,
    mu: Tensor,
    sigma: Tensor,
    chunk_size: int | None,
    need_w: bool,
    need_pi: bool,
    need_mu: bool,
    need_sigma: bool,
) -> MixtureLogProbGrad:
    """One chunked pass: the log-density and the requested gradients (flat ``grad_w``)."""
    if w_flat.dtype in _EXP2_FLOOR:
        lib = _native_library(w_flat.device)
        if lib is not None:
            return _native_pass(lib, w_flat, pi, mu, sigma, need_w, need_pi, need_mu, need_sigma)
    num_components = mu.shape[0]
    needs = _Needs(grad_w=need_w, s0=need_pi or need_sigma, s1=need_mu, s2=need_sigma)
    coef = _coefficients(pi, mu, sigma)

    grad_w = torch.empty_like(w_flat) if need_w else None
    sums = w_flat.new_zeros(3, num_components) if needs.sums else None
    zero_pi = None
    if need_pi and bool((pi == 0).any()):  # rare; costs a host sync on accelerators
        index = torch.nonzero(pi == 0).flatten()
        log2_norm = -_log(sigma) * _LOG2E - _HALF_LOG2_2PI
        zero_pi = (index, log2_norm[index, None], w_flat.new_zeros(num_components))

    log_prob = None
    fused = _triton_module(w_flat, num_components)
    if fused is not None:
        log_prob = _triton_pass(
            fused, w_flat, coef, grad_w, sums, None if zero_pi is None else (log2_norm, zero_pi[2])
        )
    if log_prob is None:
        log_prob = _chunked_pass(w_flat, coef, needs, chunk_size, grad_w, sums, zero_pi)

    inv_sigma = coef.inv_sigma[:, 0]
    grad_pi = grad_mu = grad_sigma = None
    if need_pi:
        assert sums is not None
        grad_pi = sums[0] / pi
        if zero_pi is not None:
            grad_pi = torch.where(pi > 0, grad_pi, zero_pi[2])
    if need_mu:
        assert sums is not None
        grad_mu = sums[1] * inv_sigma
    if need_sigma:
        assert sums is not None
        grad_sigma = (sums[2] - sums[0]) * inv_sigma
    return MixtureLogProbGrad(log_prob, grad_w, grad_pi, grad_mu, grad_sigma)


def _value_pass(w_flat: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor, chunk_size) -> Tensor:
    return _forward_pass(w_flat, pi, mu, sigma, chunk_size, False, False, False, False).log_prob


def _differentiable_grads(
    w_flat: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The same closed forms in plain (N, M) torch ops, so autograd can differentiate them."""
    u = (w_flat[:, None] - mu) / sigma  # N M
    log_normal = log_joint_densities(w_flat, torch.zeros_like(pi), mu, sigma)  # ln N_ij
    logits = torch.log(pi) + log_normal
    log_p = torch.logsumexp(logits, dim=1, keepdim=True)
    gamma = torch.exp(logits - log_p)
    grad_w = -(gamma * u / sigma).sum(1)
    grad_pi = torch.exp(log_normal - log_p).sum(0)
    grad_mu = (gamma * u).sum(0) / sigma
    grad_sigma = (gamma * (u * u - 1.0)).sum(0) / sigma
    return grad_w, grad_pi, grad_mu, grad_sigma


def _flat(pieces: tuple[Tensor, ...]) -> Tensor:
    """The weights of ``pieces`` as one flat tensor (a view when there is one piece)."""
    if len(pieces) == 1:
        return pieces[0].reshape(-1)
    return torch.cat([p.reshape(-1) for p in pieces])


class _MixtureLogProb(torch.autograd.Function):
    """The pass over the weights of ``pieces`` (their concatenation), differentiable.

    The concatenation of several pieces lives only through the forward pass: the pieces
    themselves are saved, and backward hands each its part of the flat gradient as a
    view, so a caller with many weight tensors keeps no concatenated copy for backward.
    """

    @staticmethod
    def forward(ctx, chunk_size, pi, mu, sigma, *pieces):
        need_pi, need_mu, need_sigma = ctx.needs_input_grad[1:4]
        need_w = any(ctx.needs_input_grad[4:])
        result = _forward_pass(
            _flat(pieces), pi, mu, sigma, chunk_size, need_w, need_pi, need_mu, need_sigma
        )
        ctx.save_for_backward(pi, mu, sigma, *pieces)
        # Not saved tensors: backward scales them in place (no second N-element
        # buffer and pass); a second backward (retain_graph) recomputes them.
        ctx.grads = list(result[1:])
        ctx.chunk_size = chunk_size
        ctx.shapes = [p.shape for p in pieces]
        return result.log_prob

    @staticmethod
    def backward(ctx, grad_output):
        needs = (any(ctx.needs_input_grad[4:]), *ctx.needs_input_grad[1:4])
        if torch.is_grad_enabled():  # create_graph=True: let autograd see the maths
            pi, mu, sigma, *pieces = ctx.saved_tensors
            grads = _differentiable_grads(_flat(tuple(pieces)), pi, mu, sigma)
            grads = [g * grad_output if need else None for g, need in zip(grads, needs)]
        else:
            grads, ctx.grads = ctx.grads, None
            if grads is None:  # backward through a retained graph again
                pi, mu, sigma, *pieces = ctx.saved_tensors
                grads = _forward_pass(_flat(tuple(pieces)), pi, mu, sigma, ctx.chunk_size, *needs)
                grads = list(grads[1:])
            grads = [None if g is None else g.mul_(grad_output) for g in grads]
        grad_w, grad_pi, grad_mu, grad_sigma = grads
        parts: list[Tensor | None] = [None] * len(ctx.shapes)
        if grad_w is not None:
            sizes = [math.prod(shape) for shape in ctx.shapes]
            parts = [
                g.view(shape) if need else None
                for g, shape, need in zip(grad_w.split(sizes), ctx.shapes, ctx.needs_input_grad[4:])
            ]
        return (None, grad_pi, grad_mu, grad_sigma, *parts)


# --------------------------------------------------------------------------- #
# Public functions
# --------------------------------------------------------------------------- #


def _check_tensors(w, pi, mu, sigma) -> None:
    """Types, dtypes, devices and shapes of the four inputs (no host sync)."""
    for name, value in (("w", w), ("pi", pi), ("mu", mu), ("sigma", sigma)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if w.dtype not in _EXP2_FLOOR:
        raise TypeError(
            f"the prior kernel supports float32 and float64 weights, got {w.dtype}; "
            "convert with w.float() (or w.double())"
        )
    for name, value in (("pi", pi), ("mu", mu), ("sigma", sigma)):
        if value.dim() != 1:
            raise ValueError(
                f"{name} must have shape (M,), one entry per mixture component, "
                f"got shape {tuple(value.shape)}"
            )
        if value.dtype != w.dtype:
            raise TypeError(
                f"{name} has dtype {value.dtype} but the weights are {w.dtype}; "
                f"pass {name}.to(w.dtype)"
            )
        if value.device != w.device:
            raise ValueError(
                f"{name} is on {value.device} but the weights are on {w.device}; "
                f"pass {name}.to(w.device)"
            )
    if not (pi.shape == mu.shape == sigma.shape):
        raise ValueError(
            "pi, mu and sigma must have the same number of components M, got shapes "
            f"{tuple(pi.shape)}, {tuple(mu.shape)}, {tuple(sigma.shape)}"
        )
    if pi.shape[0] == 0:
        raise ValueError("the mixture needs at least one component (M >= 1), got M = 0")


def _check_values(pi, mu, sigma) -> None:
    """``sigma > 0``, ``pi >= 0`` (not all zero) and finiteness, in one host sync."""
    with torch.no_grad():  # one host sync; NaN fails every comparison
        sigma_ok = ((sigma > 0) & (sigma < math.inf)).all()
        pi_ok = ((pi >= 0) & (pi < math.inf)).all() & (pi > 0).any()
        mu_ok = (mu.abs() < math.inf).all()
        if not bool(sigma_ok & pi_ok & mu_ok):
            if not bool(sigma_ok):
                raise ValueError(f"sigma must be positive and finite, got {sigma.tolist()}")
            if not bool(pi_ok):
                raise ValueError(
                    f"pi must be finite, non-negative and not all zero, got {pi.tolist()}"
                )
            raise ValueError(f"mu must be finite, got {mu.tolist()}")


def _validate(w, pi, mu, sigma, chunk_size, validate_args) -> None:
    _check_tensors(w, pi, mu, sigma)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if validate_args is None:
        validate_args = torch.distributions.Distribution._validate_args
    if validate_args:
        _check_values(pi, mu, sigma)


def mixture_log_prob(
    w: Tensor | Sequence[Tensor],
    pi: Tensor,
    mu: Tensor,
    sigma: Tensor,
    *,
    chunk_size: int | None = None,
    validate_args: bool | None = None,
) -> Tensor:
    r"""Log-density of all weights under the Gaussian mixture, eq. (5.137) summed.

    .. math::

        \sum_i \ln \sum_j \pi_j \mathcal N(w_i \mid \mu_j, \sigma_j^2) = -\Omega(w)

    Differentiable in all four arguments with the closed-form gradients
    (5.141)–(5.147) (see the module docstring), computed in one chunked pass
    with O(N + M) extra memory.

    Parameters
    ----------
    w : Tensor or sequence of Tensors
        Weights, any shape (flattened), float32 or float64, any device; or a list or
        tuple of such tensors (same dtype and device), taken as their concatenation
        without a concatenated copy kept for backward (each gets its own gradient).
    pi : Tensor
        Mixing proportions, shape (M,), used as given (not renormalised);
        ``pi[j] == 0`` is allowed and removes component j.
    mu, sigma : Tensor
        Component means and standard deviations, shape (M,), ``sigma > 0``.
    chunk_size : int, optional
        Weights per chunk of the torch path; default ``CHUNK_ELEMENTS // M``
        (the native loop uses its own blocks). Results do not depend on it
        beyond rounding.
    validate_args : bool, optional
        Check ``sigma > 0``, ``pi >= 0`` and finiteness (one host sync).
        Defaults to torch's distribution validation flag, which
        ``pyro.enable_validation`` sets.

    Returns
    -------
    Tensor
        0-dim, dtype and device of ``w``.
    """
    pieces = _pieces(w)
    _validate(pieces[0], pi, mu, sigma, chunk_size, validate_args)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (pi, mu, sigma, *pieces)):
        return _MixtureLogProb.apply(chunk_size, pi, mu, sigma, *pieces)
    return _value_pass(_flat(pieces), pi, mu, sigma, chunk_size)


def _pieces(w: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``w`` as a non-empty tuple of tensors (a sequence of them, or one)."""
    if isinstance(w, Tensor):
        return (w,)
    if not isinstance(w, (list, tuple)) or not w:
        got = "an empty one" if isinstance(w, (list, tuple)) else type(w).__name__
        raise TypeError(f"w must be a torch.Tensor or a non-empty list or tuple of them, got {got}")
    first = w[0]
    for i, piece in enumerate(w):
        if not isinstance(piece, Tensor):
            raise TypeError(
                "w must be a torch.Tensor or a list or tuple of them; "
                f"w[{i}] is a {type(piece).__name__} (convert it with torch.as_tensor)"
            )
        if (piece.dtype, piece.device) != (first.dtype, first.device):
            raise TypeError(
                f"w[{i}] is {piece.dtype} on {piece.device} but w[0] is {first.dtype} on "
                f"{first.device}; give every weight tensor the same dtype and device"
            )
    return tuple(w)


def mixture_log_prob_and_grad(
    w: Tensor,
    pi: Tensor,
    mu: Tensor,
    sigma: Tensor,
    *,
    wrt: tuple[str, ...] = ("w", "pi", "mu", "sigma"),
    chunk_size: int | None = None,
    validate_args: bool | None = None,
) -> MixtureLogProbGrad:
    """The log-density and its closed-form gradients without autograd.

    Same pass as :func:`mixture_log_prob`; useful for hand-written training
    loops. ``wrt`` names the gradients to compute (others are ``None``);
    ``grad_w`` has the shape of ``w``. Inputs are treated as constants.
    """
    _validate(w, pi, mu, sigma, chunk_size, validate_args)
    unknown = set(wrt) - {"w", "pi", "mu", "sigma"}
    if unknown:
        raise ValueError(
            f"wrt names unknown inputs {sorted(unknown)}; use 'w', 'pi', 'mu', 'sigma'"
        )
    with torch.no_grad():
        result = _forward_pass(
            w.reshape(-1),
            pi,
            mu,
            sigma,
            chunk_size,
            "w" in wrt,
            "pi" in wrt,
            "mu" in wrt,
            "sigma" in wrt,
        )
    if result.grad_w is not None:
        result = result._replace(grad_w=result.grad_w.view(w.shape))
    return result
