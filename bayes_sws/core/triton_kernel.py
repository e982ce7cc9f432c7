r"""The prior's pass over the weights as one fused Triton kernel (GPU).

The same pass as the chunked torch path of :mod:`bayes_sws.core.kernel` — per
weight :math:`\ln p(w_i)`, :math:`\partial \ln p/\partial w_i` and the sums
:math:`S_0 = \sum_i \gamma_{ij}`, :math:`S_1 = \sum_i \gamma_{ij} u_{ij}`,
:math:`S_2 = \sum_i \gamma_{ij} u_{ij}^2` (and, only when some :math:`\pi_j = 0`
needs its gradient, :math:`S_3 = \sum_i \mathcal N(w_i\mid\mu_j,\sigma_j^2)/p(w_i)`)
— with the same base-2 logits, per-weight maximum, floor of the exponent and
:math:`\pi_j = 0` semantics, but without any (N, M) tensor in memory:

* a program holds a tile of ``BLOCK`` weights × all ``M`` components (M padded to
  a power of two, at least 4, with components that contribute exactly 0) in
  registers, reads each weight once and writes its gradient once;
* a fixed number of programs (a few per streaming multiprocessor) stride over
  the blocks and keep the per-component sums and the log-density in registers,
  then write one row of partial sums each, reduced afterwards in float64;
* the logits are taken in the scaled units :math:`v = \sqrt{h}\,u`
  (:math:`h = \tfrac12\log_2 e`), so :math:`\log_2 \pi_j\mathcal N_{ij} = c_j - v^2`
  is one fused multiply-add; :math:`S_1, S_2` and :math:`\partial/\partial w` are
  scaled back by per-component constants (same maths, rounding differs from the
  torch path by a few units in the last place).

Cost, measured on an H200 (``benchmarks/gpu_prior.py``, 10⁷ weights, M = 16, float32):
the kernel alone 405 µs, 2.5 ps per pair, 12.7× the time to read the weights and write
their gradients once; 25–56× faster than the chunked torch path (``BENCHMARKS.md``). The
estimate made before that measurement follows, and was 4–5× too optimistic: per (weight,
component) pair one ``exp2`` on the special-function units
and about 12 float32 adds, multiplies, FMAs and min/max on the ALUs. On an H100
or H200 (128 float32 lanes and 16 ``exp2`` per clock per SM) the ALU work, not
the ``exp2`` and not memory, bounds M = 16: roughly 2.5–3× the time of reading
the weights and writing their gradients once. float64 is bound by its ``exp2``
(a libdevice polynomial) and costs several times more.

:mod:`bayes_sws.core.kernel` computes the per-component coefficients and turns
the sums into gradients; this module only replaces the loop over the weights.
It is used for CUDA tensors when Triton imports (``BAYES_SWS_KERNEL=auto``, or
``triton`` to insist) and up to :data:`MAX_COMPONENTS` components.

Triton is optional (``pip install bayes_sws[gpu]``) and imported on first use.
With ``TRITON_INTERPRET=1`` set before that, Triton's interpreter runs the same
kernel on CPU tensors (slowly, through numpy), which is how the tests check it on
machines without a GPU.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "MAX_COMPONENTS",
    "NUM_WARPS",
    "PAIRS_PER_TILE",
    "PROGRAMS_PER_SM",
    "available",
    "fused_pass",
    "interpreting",
    "triton_importable",
]

#: Most mixture components the kernel takes (one tile holds all of them).
MAX_COMPONENTS = 1024
#: Default (weight, component) pairs per tile: BLOCK = this // M, rounded to a power of two.
PAIRS_PER_TILE = 4096
#: Programs per streaming multiprocessor (each strides over many blocks).
PROGRAMS_PER_SM = 8
#: Warps per program (``benchmarks/gpu_prior.py --sweep`` tries others).
NUM_WARPS = 4
_INTERPRETER_PROGRAMS = 3  # few, so the tests cover a program taking several blocks

_SQRT_H = math.sqrt(0.5 / math.log(2.0))  # √(½ log₂ e): v = √h u, h u² = v²
tl: Any = None  # triton.language, imported with the kernel
_kernels: dict[bool, Any] = {}  # interpreter on? -> the jitted kernel
_importable: bool | None = None


def triton_importable() -> bool:
    """Whether ``import triton`` works in this process (checked once)."""
    global _importable
    if _importable is None:
        try:
            importlib.import_module("triton.language")
            _importable = True
        except ImportError:
            _importable = False
    return _importable


def interpreting() -> bool:
    """Whether Triton's CPU interpreter is on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def available(w: Tensor) -> bool:
    """Whether the Triton kernel can run on ``w``: Triton imports and ``w`` is on CUDA
    (or the interpreter is on), in float32 or float64."""
    if w.dtype not in (torch.float32, torch.float64):
        return False
    if w.device.type != "cuda" and not interpreting():
        return False
    return triton_importable()


def _prior_kernel(
    w_ptr,
    grad_w_ptr,
    table_ptr,
    part_ptr,
    n,
    M_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
    NEED_W: tl.constexpr,
    NEED_SUMS: tl.constexpr,
    ZERO_PI: tl.constexpr,
):
    """Blocks pid, pid + P, pid + 2P, ... of the weights; one row of partial sums.

    In the scaled units v = √h·u (h = ½log₂e) a logit is one FMA, c − v². ``table``
    rows (each M_PAD long): μ, √h/σ, c = log₂(π/(σ√2π)), the exponent floor,
    log₂(1/(σ√2π)), 1/(√h σ), then the constants ln 2, 1/√h, 1/h. ``part`` row
    of this program: Σ ln p, then S0, S1, S2, S3 (M_PAD each).
    """
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK
    j = tl.arange(0, M_PAD)
    mu = tl.load(table_ptr + j)[None, :]
    scale = tl.load(table_ptr + M_PAD + j)[None, :]
    log2_coef = tl.load(table_ptr + 2 * M_PAD + j)[None, :]
    floor = tl.load(table_ptr + 3 * M_PAD + j)[None, :]
    grad_scale = tl.load(table_ptr + 5 * M_PAD + j)[None, :]
    ln2 = tl.load(table_ptr + 6 * M_PAD)
    dtype = w_ptr.dtype.element_ty
    acc_log_p = tl.zeros((BLOCK,), dtype=dtype)
    acc_s0 = tl.zeros((M_PAD,), dtype=dtype)
    acc_s1 = tl.zeros((M_PAD,), dtype=dtype)
    acc_s2 = tl.zeros((M_PAD,), dtype=dtype)
    acc_s3 = tl.zeros((M_PAD,), dtype=dtype)
    for start in range(pid * BLOCK, n, step):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0)
        v = (w[:, None] - mu) * scale  # √h (w_i − μ_j)/σ_j
        logits = log2_coef - v * v  # log₂ π_j N_ij
        top = tl.max(logits, axis=1)
        shifted = tl.maximum(logits - top[:, None], floor, propagate_nan=tl.PropagateNan.ALL)
        e = tl.exp2(shifted)  # π_j N_ij / 2^top
        total = tl.sum(e, axis=1)
        log2_p = tl.log2(total) + top
        acc_log_p += tl.where(mask, log2_p * ln2, 0.0)
        if NEED_W or NEED_SUMS:
            inv_total = tl.where(mask, 1.0 / total, 0.0)  # 0: rows past n add nothing
            gamma = e * inv_total[:, None]
            gamma_v = gamma * v
            if NEED_W:
                grad_w = -tl.sum(gamma_v * grad_scale, axis=1)
                tl.store(grad_w_ptr + offs, grad_w, mask=mask)
            if NEED_SUMS:
                acc_s0 += tl.sum(gamma, axis=0)
                acc_s1 += tl.sum(gamma_v, axis=0)
                acc_s2 += tl.sum(gamma_v * v, axis=0)
                if ZERO_PI:
                    log2_norm = tl.load(table_ptr + 4 * M_PAD + j)[None, :]
                    ratio = tl.exp2(log2_norm - v * v - log2_p[:, None])  # N_ij / p_i
                    acc_s3 += tl.sum(tl.where(mask[:, None], ratio, 0.0), axis=0)
    row = part_ptr + pid * (1 + 4 * M_PAD)
    tl.store(row, tl.sum(acc_log_p, axis=0))
    if NEED_SUMS:
        tl.store(row + 1 + j, acc_s0)
        # back to u: S1 = Σγu = Σγv/√h, S2 = Σγu² = Σγv²/h
        tl.store(row + 1 + M_PAD + j, acc_s1 * tl.load(table_ptr + 6 * M_PAD + 1))
        tl.store(row + 1 + 2 * M_PAD + j, acc_s2 * tl.load(table_ptr + 6 * M_PAD + 2))
        tl.store(row + 1 + 3 * M_PAD + j, acc_s3)


def _kernel() -> Any:
    """The jitted kernel, built on first use (separately with the interpreter on)."""
    global tl
    key = interpreting()
    if key not in _kernels:
        triton = importlib.import_module("triton")
        tl = importlib.import_module("triton.language")
        _kernels[key] = triton.jit(_prior_kernel)
    return _kernels[key]


def _table(
    mu: Tensor, inv_sigma: Tensor, log2_coef: Tensor, floor: Tensor, log2_norm: Tensor | None
) -> Tensor:
    """The kernel's (7, M_PAD ≥ 4) table of per-component constants (padding adds 0)."""
    m = mu.numel()
    m_pad = max(4, 1 << (m - 1).bit_length())
    inv_sigma = inv_sigma.reshape(-1)
    table = mu.new_full((7, m_pad), -math.inf)
    rows = [mu, _SQRT_H * inv_sigma, log2_coef, floor]
    rows += [log2_norm if log2_norm is not None else torch.full_like(inv_sigma, -math.inf)]
    rows += [inv_sigma / _SQRT_H]
    table[:6, :m] = torch.stack([r.reshape(-1) for r in rows])
    for row in (0, 1, 5):  # padding: μ = 0, scales 0, so v = 0 and the logit is −inf
        table[row, m:] = 0.0  # basic slices: a tuple index would copy an index tensor from
        # the host, which a CUDA graph capture refuses (seen on an H200)
    # scalar fills of one-element slices: no host-to-device copy (``table[6, 0] = x`` copies
    # a host tensor, which a CUDA graph capture refuses)
    table[6, 0:1].fill_(math.log(2.0))
    table[6, 1:2].fill_(1.0 / _SQRT_H)
    table[6, 2:3].fill_(1.0 / _SQRT_H**2)
    return table


def _launch_shape(w: Tensor, m_pad: int, block: int | None) -> tuple[int, int]:
    """(weights per block, number of programs)."""
    if block is None:
        block = 1 << max(4, min(10, (PAIRS_PER_TILE // m_pad).bit_length() - 1))
    blocks = max(1, -(-w.numel() // block))
    if w.device.type == "cuda":
        sms = torch.cuda.get_device_properties(w.device).multi_processor_count
        return block, min(blocks, PROGRAMS_PER_SM * sms)
    return block, min(blocks, _INTERPRETER_PROGRAMS)


def fused_pass(
    w_flat: Tensor,
    mu: Tensor,
    inv_sigma: Tensor,
    log2_coef: Tensor,
    floor: Tensor,
    *,
    grad_w: Tensor | None = None,
    sums: Tensor | None = None,
    zero_pi: tuple[Tensor, Tensor] | None = None,
    block: int | None = None,
    num_warps: int | None = None,
) -> Tensor:
    """Σ_i ln p(w_i) over the 1-D ``w_flat`` (0-dim, its dtype) in one kernel launch.

    The per-component inputs have M entries (any shape): μ, 1/σ,
    log₂(π/(σ√2π)) and the floor of the exponent relative to the per-weight
    maximum (−inf where π = 0), as :mod:`bayes_sws.core.kernel` computes them.
    Writes ∂ ln p/∂w into ``grad_w`` (N,) and adds S0, S1, S2 into ``sums``
    (3, M) when given; ``zero_pi = (log2_norm, out)`` adds
    Σ_i N(w_i | μ_j, σ_j²)/p(w_i) for every j into ``out`` (M,), with
    ``log2_norm`` = log₂(1/(σ√2π)). ``block`` (a power of two; default from
    :data:`PAIRS_PER_TILE`) and ``num_warps`` (default :data:`NUM_WARPS`) tune
    the launch.
    """
    kernel = _kernel()
    w_c = w_flat.contiguous()
    m = mu.numel()
    table = _table(mu, inv_sigma, log2_coef, floor, None if zero_pi is None else zero_pi[0])
    m_pad = table.shape[1]
    block, programs = _launch_shape(w_c, m_pad, block)
    part = w_c.new_zeros(programs, 1 + 4 * m_pad)
    direct = grad_w is None or grad_w.is_contiguous()
    out_w = grad_w if direct else torch.empty_like(w_c)
    need_sums = sums is not None or zero_pi is not None
    on_cuda = w_c.device.type == "cuda"
    with torch.cuda.device(w_c.device) if on_cuda else contextlib.nullcontext():
        kernel[(programs,)](
            w_c,
            w_c if out_w is None else out_w,  # a placeholder pointer when not written
            table,
            part,
            w_c.numel(),
            M_PAD=m_pad,
            BLOCK=block,
            NEED_W=out_w is not None,
            NEED_SUMS=need_sums,
            ZERO_PI=zero_pi is not None,
            num_warps=num_warps or NUM_WARPS,
        )
    if grad_w is not None and not direct:
        assert out_w is not None
        grad_w.copy_(out_w)
    totals = part.sum(0, dtype=torch.float64)
    if sums is not None:
        sums += totals[1 : 1 + 3 * m_pad].view(3, m_pad)[:, :m].to(sums.dtype)
    if zero_pi is not None:
        zero_pi[1].add_(totals[1 + 3 * m_pad : 1 + 3 * m_pad + m].to(zero_pi[1].dtype))
    return totals[0].to(w_c.dtype)
