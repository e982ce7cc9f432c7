"""Storage accounting: the bits to store a pruned, weight-shared network.

:func:`storage_report` counts the bits of any network the way Han, Mao & Dally
(ICLR 2016, "Deep Compression") do and Ullrich et al. (2017) report: per layer,
sparse storage with fixed-width relative indices (5 bits for dense layers, 8 for
convolutions, with filler entries for gaps that do not fit; row by row or column
by column, whichever is smaller), cluster indices under a real Huffman code
(:mod:`.coding`, with the entropy bound beside it), a 32-bit codebook per layer
and biases at 32 bits. See :func:`storage_report` for the exact rules. With
``position_coding="rice"`` the runs of zeros between non-zeros may instead be
Golomb-Rice coded (no fillers), whichever is smaller per tensor.

:func:`stored_network` counts the network as stored, optionally after
:func:`bayes_sws.compress.surgery.remove_dead_units`, against the full one's size,
and optionally with its hidden units in the order that stores it in the fewest bits
(:func:`storage_unit_orders`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from ..settings import POSITION_CODINGS
from .coding import entropy_bits, huffman_bits, relative_index_fillers, rice_parameter, zero_runs
from .params import check_param_names, layer_kind, owner_module
from .surgery import HiddenUnits, hidden_unit_layers, permute_units, remove_dead_units, unit_columns

__all__ = [
    "BITS_PER_FLOAT",
    "DEFAULT_INDEX_BITS",
    "POSITION_CODINGS",
    "LayerStorage",
    "StorageReport",
    "shared_values",
    "storage_report",
    "storage_unit_orders",
    "stored_network",
]


#: Bits of one uncompressed parameter, one codebook entry, one bias.
BITS_PER_FLOAT = 32
#: Relative-index width by layer kind (Han et al. 2016, Sec. 3; Ullrich et al. 2017, App.).
DEFAULT_INDEX_BITS: dict[str, int] = {"dense": 5, "conv": 8}


@dataclass(frozen=True)
class LayerStorage:
    """Storage of one compressed parameter tensor (one row of a :class:`StorageReport`).

    Attributes
    ----------
    name, module : str
        Parameter name (``"fc1.weight"``) and the name of its module (``"fc1"``).
    kind : {"dense", "conv"}
        Layer kind (:func:`layer_kind`), which sets the default ``index_bits``.
    shape : tuple of int
    num_params, num_nonzero : int
        Entries of the tensor (of the reference's tensor, before
        :func:`remove_dead_units`, when :func:`storage_report` had one), and how
        many are non-zero.
    nonzero_fraction : float
        ``num_nonzero / num_params``.
    num_distinct : int
        Distinct non-zero values (the codebook size).
    storage_format : {"sparse", "full", "raw"}
        The cheapest layout (see :func:`storage_report`).
    order : {"row", "column"}
        Traversal order of the sparse layout: ``"row"`` runs along the rows of
        the tensor viewed as ``(shape[0], -1)`` (CSR), ``"column"`` along its
        columns (CSC). Always ``"row"`` for the full and raw layouts.
    position_coding : {"fixed", "rice", "none"}
        How the sparse layout stores positions: fixed-width relative indices with
        fillers, or the Golomb-Rice code of the runs of zeros; ``"none"`` for the
        full and raw layouts.
    index_bits : int
        Width of one relative index; for Rice-coded positions, the Rice parameter
        ``k`` (a run ``z`` costs ``(z >> k) + 1 + k`` bits).
    num_fillers, num_stored : int
        Filler zeros added, and entries stored (sparse: non-zeros + fillers;
        full and raw: all entries).
    relative_index_bits, cluster_index_bits, codebook_bits, raw_bits : int
        Bits of the relative indices, the Huffman-coded cluster indices, the
        codebook (32 per distinct non-zero value) and, for the raw layout only,
        the 32-bit values. Zero where the layout has no such part.
    entropy_bits : float
        Entropy bound for the cluster indices of the same layout.
    weight_bits : int
        Sum of the four parts above.
    num_bias, bias_bits : int
        Parameters of the same module not compressed (the bias, typically),
        stored at 32 bits each.
    total_bits : int
        ``weight_bits + bias_bits``.
    total_bits_entropy : float
        ``total_bits`` with the cluster indices at their entropy bound.
    original_bits : int
        ``32 * (num_params + num_bias)``.
    compression_rate, compression_rate_entropy : float
        ``original_bits / total_bits`` (resp. ``/ total_bits_entropy``).
    sparse_bits, full_bits : int
        Weight bits of the two coded layouts, for comparison (raw is ``32 * num_params``).
    """

    name: str
    module: str
    kind: str
    shape: tuple[int, ...]
    num_params: int
    num_nonzero: int
    nonzero_fraction: float
    num_distinct: int
    storage_format: str
    order: str
    position_coding: str
    index_bits: int
    num_fillers: int
    num_stored: int
    relative_index_bits: int
    cluster_index_bits: int
    entropy_bits: float
    codebook_bits: int
    raw_bits: int
    weight_bits: int
    num_bias: int
    bias_bits: int
    total_bits: int
    total_bits_entropy: float
    original_bits: int
    compression_rate: float
    compression_rate_entropy: float
    sparse_bits: int
    full_bits: int


@dataclass(frozen=True)
class StorageReport:
    """Storage of a whole network (returned by :func:`storage_report`).

    Attributes
    ----------
    layers : tuple of LayerStorage
        One row per compressed parameter tensor, in ``named_parameters`` order.
    num_params : int
        All parameters of the network (of the reference network, if given),
        biases included.
    num_compressed_params, num_nonzero : int
        Entries of the compressed tensors, and their non-zeros.
    nonzero_fraction : float
        ``num_nonzero / num_compressed_params`` (Ullrich et al.'s ``|W≠0|/|W|``).
    bias_bits : int
        Bits of the uncompressed parameters attributed to a row (their module has a
        compressed tensor).
    other_params, other_bits : int
        Uncompressed parameters of modules without a compressed tensor (32 bits each).
    total_bits, total_bits_entropy : int, float
        Sum over rows plus ``other_bits``.
    original_bits : int
        ``32 * num_params``.
    compression_rate, compression_rate_entropy : float
        ``original_bits / total_bits`` (resp. ``/ total_bits_entropy``).
    """

    layers: tuple[LayerStorage, ...]
    num_params: int
    num_compressed_params: int
    num_nonzero: int
    nonzero_fraction: float
    bias_bits: int
    other_params: int
    other_bits: int
    total_bits: int
    total_bits_entropy: float
    original_bits: int
    compression_rate: float
    compression_rate_entropy: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (rows under ``"layers"``)."""
        out = asdict(self)
        out["layers"] = [asdict(layer) for layer in self.layers]
        for layer in out["layers"]:
            layer["shape"] = list(layer["shape"])
        return out

    def format_table(self) -> str:
        """A Markdown table: one row per layer and a total."""
        lines = [
            (
                "| layer | kind | params | non-zero % | distinct | format | index | Huffman "
                "| codebook | bias | total bits | rate |"
            ),
            "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.layers:
            lines.append(
                f"| {r.name} | {r.kind} | {r.num_params} | {100 * r.nonzero_fraction:.2f} | "
                f"{r.num_distinct} | {r.storage_format}{' by column' if r.order == 'column' else ''}"
                f"{', Rice' if r.position_coding == 'rice' else ''} | "
                f"{r.relative_index_bits} | "
                f"{r.cluster_index_bits} | {r.codebook_bits} | {r.bias_bits} | {r.total_bits} | "
                f"{r.compression_rate:.1f} |"
            )
        lines.append(
            f"| **total** | | {self.num_params} | {100 * self.nonzero_fraction:.2f} | | | | | | "
            f"{self.bias_bits + self.other_bits} | {self.total_bits} "
            f"| {self.compression_rate:.1f} |"
        )
        return "\n".join(lines)


class _Layout(NamedTuple):
    """One way of storing a tensor's weights, and its bits by part (see :class:`LayerStorage`)."""

    storage_format: str  # "sparse", "full" or "raw"
    order: str  # "row" or "column"
    position_coding: str  # "fixed" or "rice" (sparse), "none" (full, raw)
    index_bits: int  # relative-index width (fixed) or Rice parameter k (rice)
    weight_bits: int  # relative_index_bits + cluster_index_bits + codebook_bits + raw_bits
    relative_index_bits: int
    cluster_index_bits: int
    entropy_bits: float  # the entropy bound in place of cluster_index_bits
    codebook_bits: int
    raw_bits: int
    num_fillers: int
    num_stored: int


def _sparse_layout(
    matrix: np.ndarray, order: str, value_counts: np.ndarray, index_bits: int, codebook_bits: int
) -> _Layout:
    """Sparse layout of ``matrix`` traversed in ``order`` (relative indices, fillers)."""
    fillers = relative_index_fillers(_positions(matrix, order), index_bits)
    return _fixed_layout(order, value_counts, index_bits, fillers, codebook_bits)


def _fixed_layout(
    order: str, value_counts: np.ndarray, index_bits: int, num_fillers: int, codebook_bits: int
) -> _Layout:
    """Sparse layout with fixed-width relative indices: (relative index, cluster index) per
    non-zero (``value_counts`` of their values) and per filler zero (``num_fillers``)."""
    num_stored = int(value_counts.sum()) + num_fillers
    symbols = np.append(value_counts, num_fillers)
    return _sparse(order, "fixed", index_bits, index_bits * num_stored, symbols, codebook_bits)


def traverse(matrix: np.ndarray, order: str) -> np.ndarray:
    """The entries of the 2-D ``matrix`` in storage order: row by row (``"row"``, CSR) or
    column by column (``"column"``, CSC), as one flat array (:func:`untraverse` inverts it)."""
    return (matrix if order == "row" else matrix.T).reshape(-1)


def untraverse(sequence: np.ndarray, rows: int, cols: int, order: str) -> np.ndarray:
    """The ``rows`` × ``cols`` matrix whose :func:`traverse` in ``order`` is ``sequence``."""
    return sequence.reshape(rows, cols) if order == "row" else sequence.reshape(cols, rows).T


def _positions(matrix: np.ndarray, order: str) -> np.ndarray:
    """Positions of the non-zeros of ``matrix`` traversed row by row or column by column."""
    return np.flatnonzero(traverse(matrix, order))


def _sparse(
    order: str, coding: str, index_bits: int, index: int, symbols: np.ndarray, codebook_bits: int
) -> _Layout:
    """A sparse layout from its position bits ``index`` and the stored entries' symbol counts
    (the non-zeros' values, then the fillers as the zero symbol)."""
    huffman = huffman_bits(symbols)
    return _Layout(
        storage_format="sparse",
        order=order,
        position_coding=coding,
        index_bits=index_bits,
        weight_bits=index + huffman + codebook_bits,
        relative_index_bits=index,
        cluster_index_bits=huffman,
        entropy_bits=entropy_bits(symbols),
        codebook_bits=codebook_bits,
        raw_bits=0,
        num_fillers=int(symbols[-1]) if coding == "fixed" else 0,
        num_stored=int(np.sum(symbols)),
    )


def _rice_layout(
    matrix: np.ndarray, order: str, value_counts: np.ndarray, codebook_bits: int
) -> _Layout:
    """Sparse layout of ``matrix`` traversed in ``order`` with Golomb-Rice-coded runs of
    zeros (:func:`rice_parameter`): no fillers, Huffman codes over the non-zeros' symbols."""
    k, index = rice_parameter(zero_runs(_positions(matrix, order)))
    return _sparse(order, "rice", k, index, value_counts, codebook_bits)


def _full_layout(
    value_counts: np.ndarray, num_entries: int, codebook_bits: int, index_bits: int
) -> _Layout:
    """Full layout: one cluster index per entry, zero as its own symbol; no positions."""
    symbols = np.append(value_counts, num_entries - int(value_counts.sum()))
    huffman = huffman_bits(symbols)
    return _Layout(
        storage_format="full",
        order="row",
        position_coding="none",
        index_bits=index_bits,
        weight_bits=huffman + codebook_bits,
        relative_index_bits=0,
        cluster_index_bits=huffman,
        entropy_bits=entropy_bits(symbols),
        codebook_bits=codebook_bits,
        raw_bits=0,
        num_fillers=0,
        num_stored=num_entries,
    )


def _raw_layout(num_entries: int, index_bits: int) -> _Layout:
    """Raw layout: every entry at 32 bits (an unquantised tensor)."""
    raw_bits = BITS_PER_FLOAT * num_entries
    return _Layout(
        "raw", "row", "none", index_bits, raw_bits, 0, 0, 0.0, 0, raw_bits, 0, num_entries
    )


def _layouts(
    matrix: np.ndarray,
    value_counts: np.ndarray,
    index_bits: int,
    orders: Sequence[str],
    position_coding: str,
) -> tuple[_Layout, _Layout, _Layout]:
    """The cheapest sparse layout of ``matrix``, its full layout, and the cheapest of all.

    ``matrix`` may be the tensor (as a 2-D view) or only its non-zero mask: the layouts
    need the positions of the non-zeros and the counts of their values (``value_counts``).
    """
    codebook_bits = BITS_PER_FLOAT * int(value_counts.size)
    # sparse: the cheaper traversal order and position coding; ties go to the first
    # (row before column, fixed before rice)
    candidates = [
        _sparse_layout(matrix, o, value_counts, index_bits, codebook_bits) for o in orders
    ]
    if position_coding == "rice":
        candidates += [_rice_layout(matrix, o, value_counts, codebook_bits) for o in orders]
    sparse = min(candidates, key=lambda layout: layout.weight_bits)
    full = _full_layout(value_counts, int(matrix.size), codebook_bits, index_bits)
    # cheapest layout; ties go to the first (sparse, then full)
    best = min(
        (sparse, full, _raw_layout(int(matrix.size), index_bits)),
        key=lambda layout: layout.weight_bits,
    )
    return sparse, full, best


def _layer_storage(
    name: str,
    tensor: torch.Tensor,
    *,
    kind: str,
    index_bits: int,
    orders: Sequence[str],
    position_coding: str,
    num_bias: int,
    num_params: int,
    num_original_bias: int,
) -> LayerStorage:
    """One row of :func:`storage_report`: the cheapest layout of ``tensor``.

    ``num_params`` and ``num_original_bias`` are the sizes before
    :func:`remove_dead_units`: what the rate and the non-zero fraction refer to.
    """
    array = tensor.detach().cpu().numpy()
    matrix = array.reshape(array.shape[0] if array.ndim else 1, -1)
    flat = matrix.reshape(-1)
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"parameter {name!r} has non-finite values")
    nonzero = flat[flat != 0]
    values, value_counts = np.unique(nonzero, return_counts=True)
    sparse, full, best = _layouts(matrix, value_counts, index_bits, orders, position_coding)
    bias_bits = BITS_PER_FLOAT * num_bias
    total_bits = best.weight_bits + bias_bits
    total_bits_entropy = (
        best.relative_index_bits
        + best.entropy_bits
        + best.codebook_bits
        + best.raw_bits
        + bias_bits
    )
    original_bits = BITS_PER_FLOAT * (num_params + num_original_bias)
    num_nonzero = int(nonzero.size)
    return LayerStorage(
        name=name,
        module=owner_module(name),
        kind=kind,
        shape=tuple(tensor.shape),
        num_params=num_params,
        num_nonzero=num_nonzero,
        nonzero_fraction=num_nonzero / num_params if num_params else 0.0,
        num_distinct=int(values.size),
        **best._asdict(),  # the layout and its bits by part
        num_bias=num_bias,
        bias_bits=bias_bits,
        **_bit_totals(original_bits, total_bits, total_bits_entropy),
        sparse_bits=sparse.weight_bits,
        full_bits=full.weight_bits,
    )


_STORAGE_ORDERS: dict[str, tuple[str, ...]] = {
    "best": ("row", "column"),
    "row": ("row",),
    "column": ("column",),
}


def _uncompressed_counts(
    params: Mapping[str, torch.Tensor], names: Sequence[str]
) -> tuple[dict[str, int], int]:
    """Parameters stored at 32 bits: per compressed row (the rest of its module), and others."""
    name_set = set(names)
    first_row_of_module: dict[str, str] = {}
    for name in params:  # named_parameters order, so the weight (defined first) owns the bias
        if name in name_set:
            first_row_of_module.setdefault(owner_module(name), name)
    num_bias = dict.fromkeys(names, 0)
    other_params = 0
    for name, p in params.items():
        if name in name_set:
            continue
        row = first_row_of_module.get(owner_module(name))
        if row is None:
            other_params += p.numel()
        else:
            num_bias[row] += p.numel()
    return num_bias, other_params


def check_index_bits(index_bits: int | Mapping[str, int] | None, names: Sequence[str]) -> None:
    """``index_bits`` (one width, or widths by the compressed parameters ``names``), checked."""
    if (
        index_bits is not None
        and not isinstance(index_bits, Mapping)
        and (int(index_bits) != index_bits or index_bits < 1)
    ):
        raise ValueError(f"index_bits must be a positive integer; got {index_bits!r}")
    if isinstance(index_bits, Mapping):
        unknown = sorted(set(index_bits) - set(names))
        if unknown:
            raise ValueError(f"index_bits names {unknown} are not compressed parameters {names}")


def _row_index_bits(index_bits: int | Mapping[str, int] | None, name: str, kind: str) -> int:
    """Relative-index width of row ``name``: given, per name, or by layer kind."""
    if index_bits is None:
        return DEFAULT_INDEX_BITS[kind]
    if isinstance(index_bits, Mapping):
        return int(index_bits.get(name, DEFAULT_INDEX_BITS[kind]))
    return int(index_bits)


def _rate(original_bits: int, bits: float) -> float:
    """Compression rate: the 32-bit dense size over the compressed size."""
    return original_bits / bits if bits else math.inf


def _bit_totals(original_bits: int, total_bits: int, total_bits_entropy: float) -> dict[str, Any]:
    """The totals and rates a :class:`LayerStorage` and a :class:`StorageReport` both carry."""
    return {
        "total_bits": total_bits,
        "total_bits_entropy": total_bits_entropy,
        "original_bits": original_bits,
        "compression_rate": _rate(original_bits, total_bits),
        "compression_rate_entropy": _rate(original_bits, total_bits_entropy),
    }


def _reference_sizes(
    params: dict[str, nn.Parameter],
    num_bias: dict[str, int],
    reference: nn.Module | None,
    names: Sequence[str],
) -> tuple[dict[str, nn.Parameter], dict[str, int]]:
    """The uncompressed sizes: the parameters and per-row bias counts of ``reference`` (the
    network before :func:`remove_dead_units`), or ``net``'s own (``params``, ``num_bias``)."""
    if reference is None:
        return params, num_bias
    ref_params = dict(reference.named_parameters())
    if list(ref_params) != list(params):
        raise ValueError(
            "reference must have the same parameter names as net (the network "
            f"remove_dead_units started from); got {list(ref_params)} and {list(params)}"
        )
    return ref_params, _uncompressed_counts(ref_params, names)[0]


def storage_report(
    net: nn.Module,
    *,
    param_names: Sequence[str] | None = None,
    index_bits: int | Mapping[str, int] | None = None,
    order: Literal["best", "row", "column"] = "best",
    reference: nn.Module | None = None,
    position_coding: Literal["fixed", "rice"] = "fixed",
) -> StorageReport:
    """Count the bits to store ``net`` after pruning and weight sharing.

    Rules (Han, Mao & Dally 2016; as reported by Ullrich et al. 2017):

    * Every tensor in ``param_names`` (default :func:`default_param_names`) is one
      row of the report, viewed as a matrix ``(shape[0], -1)`` (output units by
      inputs). Its codebook holds its distinct non-zero values at 32 bits each;
      zero is implicit (cluster index "zero").
    * **sparse** layout (CSR- or CSC-style over the flattened matrix, no row
      pointers), traversed row by row (``order="row"``: each output unit's
      inputs, the row-major order of the tensor) or column by column
      (``"column"``: each input's output units, the layout of Han et al.'s EIE
      accelerator); ``"best"`` (default) takes the cheaper per tensor:
      each non-zero stores a relative index of ``index_bits`` bits, the number of
      zeros skipped since the previous stored entry, at most
      ``2**index_bits - 1``; a longer run of zeros adds filler entries (stored
      zeros, :func:`relative_index_fillers`), and every stored entry, filler or
      not, costs an index *and* a cluster index. Cluster indices are
      Huffman-coded (:func:`huffman_code`) over the stored entries' symbols,
      fillers counting as the zero symbol. Trailing zeros cost nothing.
    * ``position_coding="rice"`` also tries, per tensor and traversal order, the
      sparse layout with the **Golomb-Rice code** of each non-zero's run of zeros
      (:func:`rice_parameter`: quotient ``z >> k`` in unary, remainder in ``k``
      bits, ``k`` chosen per tensor to minimise the bits) in place of fixed-width
      relative indices: no fillers, so the Huffman code covers the non-zeros'
      symbols only. The cheaper of the two is used (ties: fixed). At a few
      per cent non-zeros this costs about the entropy of the positions, where
      5-bit indices pay for fillers (e.g. 1.5 % non-zeros at random: about 7.6
      bits a non-zero against 13). Han et al. and Ullrich et al. count
      ``"fixed"`` (the default), so only it compares with published rates.
    * **full** layout: a Huffman-coded cluster index for every entry (zeros as
      one more symbol) and the codebook; no indices.
    * **raw** layout: 32 bits per entry (an unquantised tensor).
    * The row uses the cheapest of the three; a quantised sparse layer is sparse,
      a quantised layer with few zeros is full, an unquantised one is raw. (At
      about 20 % non-zeros and a handful of shared values the full layout already
      rivals 5-bit relative indices: a zero costs one Huffman bit there.)
    * ``index_bits``: ``None`` uses 8 for convolutions and 5 for dense layers
      (:func:`layer_kind`); an int applies to every row; a mapping from parameter
      name gives per-row widths (missing names use the default).
    * Parameters not in ``param_names`` are stored at 32 bits: in the row of the
      compressed tensor of the same module (``bias_bits``) or, for modules with
      none, in ``other_bits``. Buffers (e.g. batch-norm statistics) are not counted.
    * Compression rate = 32 × (all parameters, biases included) ÷ total bits.
      The few bits a decoder needs to tell the layout, order and shape of each
      tensor are not counted (nor are they by Han et al.).
    * ``reference``: the network ``net`` was made from by
      :func:`remove_dead_units` (same parameter names, larger shapes). Its
      sizes are the uncompressed ones: ``original_bits``, ``num_params`` and the
      non-zero fractions refer to it, so rates stay comparable.

    Example: a dense 1×40 weight with non-zeros ``a`` at positions 0 and 35 and
    ``b`` at 39, 5-bit indices: skips 0, 34, 3, so one filler (34 ≥ 32) and 4
    stored entries: 20 index bits; symbols a:2, zero:1, b:1 give Huffman lengths
    1, 2, 2 = 6 bits; codebook 64 bits; 90 bits for the weight.
    """
    names = check_param_names(net, param_names)
    orders = _STORAGE_ORDERS.get(order)
    if orders is None:
        raise ValueError(f"order must be one of {sorted(_STORAGE_ORDERS)}; got {order!r}")
    check_index_bits(index_bits, names)
    if position_coding not in POSITION_CODINGS:
        raise ValueError(
            f"position_coding must be one of {list(POSITION_CODINGS)}; got {position_coding!r}"
        )
    params = dict(net.named_parameters())
    num_bias, other_params = _uncompressed_counts(params, names)
    ref_params, ref_bias = _reference_sizes(params, num_bias, reference, names)
    num_params = sum(p.numel() for p in ref_params.values())

    name_set = set(names)
    layers = []
    for name, param in params.items():
        if name not in name_set:
            continue
        kind = layer_kind(net, name)
        layers.append(
            _layer_storage(
                name,
                param,
                kind=kind,
                index_bits=_row_index_bits(index_bits, name, kind),
                orders=orders,
                position_coding=position_coding,
                num_bias=num_bias[name],
                num_params=ref_params[name].numel(),
                num_original_bias=ref_bias[name],
            )
        )

    num_compressed = sum(r.num_params for r in layers)
    num_nonzero = sum(r.num_nonzero for r in layers)
    other_bits = BITS_PER_FLOAT * other_params
    total_bits = sum(r.total_bits for r in layers) + other_bits
    total_bits_entropy = sum(r.total_bits_entropy for r in layers) + other_bits
    original_bits = BITS_PER_FLOAT * num_params
    return StorageReport(
        layers=tuple(layers),
        num_params=num_params,
        num_compressed_params=num_compressed,
        num_nonzero=num_nonzero,
        nonzero_fraction=num_nonzero / num_compressed if num_compressed else 0.0,
        bias_bits=sum(r.bias_bits for r in layers),
        other_params=other_params,
        other_bits=other_bits,
        **_bit_totals(original_bits, total_bits, total_bits_entropy),
    )


def shared_values(net: nn.Module, param_names: Sequence[str] | None = None) -> np.ndarray:
    """The distinct values of the compressed tensors of ``net``, ascending.

    All tensors of ``param_names`` (default :func:`default_param_names`) together,
    zero included when any entry is zero, in the parameters' dtype. Its size is
    the number of values the network really uses; each row of a
    :func:`storage_report` stores the non-zero ones among its own tensor's
    (``LayerStorage.num_distinct``).
    """
    names = check_param_names(net, param_names)
    params = dict(net.named_parameters())
    flat = [params[n].detach().cpu().reshape(-1).numpy() for n in names]
    return np.unique(np.concatenate(flat)) if flat else np.zeros(0, dtype=np.float32)


#: Swaps :func:`storage_unit_orders` tries after its greedy start.
REORDER_SWAPS = 2000


class _UnitOrderSearch:
    """The bits of the compressed tensors of a network as its hidden units are permuted.

    Only the positions of the non-zeros change with the order, so each tensor is kept
    as its non-zero mask (viewed as ``(shape[0], -1)``) with the counts of its values,
    and costed by :func:`_layouts`, the layout choice of :func:`storage_report`.

    A swap of two units (:meth:`try_swap`) with fixed-width relative indices is costed
    incrementally: it changes the mask only where the two units' rows (or the consumer's
    two blocks of columns) differ, and the fillers only of the runs of zeros around those
    entries (:func:`_filler_change`), so a swap costs work in proportion to the entries
    it moves, not to the tensor. The count is the same as recounting the whole tensor
    (``incremental=False`` does that, as does any other change of order and Rice-coded
    positions).
    """

    def __init__(
        self,
        net: nn.Module,
        names: Sequence[str],
        index_bits: int | Mapping[str, int] | None,
        orders: Sequence[str],
        position_coding: str,
        *,
        incremental: bool = True,
    ) -> None:
        params = dict(net.named_parameters())
        self.layers = hidden_unit_layers(net)
        self.orders = {h.name: np.arange(h.units) for h in self.layers}
        self.masks: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.widths: dict[str, int] = {}
        for name in names:
            array = params[name].detach().cpu().numpy()
            matrix = array.reshape(array.shape[0] if array.ndim else 1, -1)
            self.masks[name] = matrix != 0
            self.counts[name] = np.unique(matrix[self.masks[name]], return_counts=True)[1]
            self.widths[name] = _row_index_bits(index_bits, name, layer_kind(net, name))
        self.layout_orders = orders
        self.position_coding = position_coding
        self.incremental = incremental and position_coding == "fixed"
        # the tensors each layer's order moves: its own rows, its consumer's columns
        self.moves = {
            h.name: [n for n in (f"{h.name}.weight", f"{h.consumer}.weight") if n in self.masks]
            for h in self.layers
        }
        self.bits = {name: self._bits(name) for name in self.masks}
        # for the incremental count: each tensor's mask in the present order, its non-zero
        # positions and fillers per traversal order, and the bits of the layouts that do not
        # depend on the order (full, raw)
        self.current: dict[str, np.ndarray] = {}
        self.positions: dict[str, dict[str, np.ndarray]] = {}
        self.fillers: dict[str, dict[str, int]] = {}
        for name in self.masks if self.incremental else ():
            self._track(name)
        self.fixed_bits: dict[str, int] = {}
        self._sparse_bits: dict[tuple[str, int], int] = {}
        for name, mask in self.masks.items():
            codebook_bits = BITS_PER_FLOAT * int(self.counts[name].size)
            full = _full_layout(self.counts[name], int(mask.size), codebook_bits, 0)
            raw = _raw_layout(int(mask.size), 0)
            self.fixed_bits[name] = min(full.weight_bits, raw.weight_bits)

    def _mask(self, name: str) -> np.ndarray:
        mask = self.masks[name]
        module = owner_module(name)
        for h in self.layers:
            if h.name == module:
                mask = mask[self.orders[h.name]]
            elif h.consumer == module:
                mask = mask[:, unit_columns(self.orders[h.name], h.columns_per_unit)]
        return mask

    def _bits(self, name: str) -> int:
        layouts = _layouts(
            self._mask(name),
            self.counts[name],
            self.widths[name],
            self.layout_orders,
            self.position_coding,
        )
        return layouts[2].weight_bits

    def _track(self, name: str) -> None:
        """Take tensor ``name``'s mask in the present order, its positions and fillers."""
        self.current[name] = mask = np.array(self._mask(name))
        self.positions[name] = {order: _positions(mask, order) for order in self.layout_orders}
        self.fillers[name] = {
            order: relative_index_fillers(positions, self.widths[name])
            for order, positions in self.positions[name].items()
        }

    def _bits_from_fillers(self, name: str, fillers: Mapping[str, int]) -> int:
        """The bits of tensor ``name`` with these fillers per traversal order (fixed-width
        relative indices): the cheapest of its sparse layouts, full and raw (:func:`_layouts`)."""
        best = self.fixed_bits[name]
        for order, count in fillers.items():
            bits = self._sparse_bits.get((name, count))
            if bits is None:  # the same for either order: only the fillers differ
                counts, codebook_bits = self.counts[name], BITS_PER_FLOAT * self.counts[name].size
                layout = _fixed_layout(order, counts, self.widths[name], count, codebook_bits)
                bits = self._sparse_bits[name, count] = layout.weight_bits
            best = min(best, bits)
        return best

    def try_order(self, layer: str, order: np.ndarray) -> int:
        """Bits saved by giving ``layer`` this ``order``; kept if not negative, else undone."""
        old_order, old_bits = self.orders[layer], {n: self.bits[n] for n in self.moves[layer]}
        self.orders[layer] = order
        new_bits = {n: self._bits(n) for n in self.moves[layer]}
        saved = sum(old_bits.values()) - sum(new_bits.values())
        if saved >= 0:
            self.bits.update(new_bits)
            for name in self.moves[layer] if self.incremental else ():
                self._track(name)
        else:
            self.orders[layer] = old_order
        return saved

    def try_swap(self, layer: HiddenUnits, a: int, b: int) -> int:
        """:meth:`try_order` for the order with the units at positions ``a`` and ``b``
        exchanged, counted incrementally (the same count)."""
        swapped = self.orders[layer.name].copy()
        swapped[[a, b]] = swapped[[b, a]]
        if not self.incremental:
            return self.try_order(layer.name, swapped)
        changes, entries = {}, {}
        for name in self.moves[layer.name]:
            mask = self.current[name]
            entries[name] = rows, cols, new = _swapped_entries(mask, layer, name, a, b)
            changes[name] = {
                order: _filler_change(
                    self.positions[name][order],
                    self.fillers[name][order],
                    _flat_positions(rows, cols, mask.shape, order),
                    new,
                    self.widths[name],
                )
                for order in self.layout_orders
            }
        new_bits = {
            name: self._bits_from_fillers(
                name, {order: fillers for order, (fillers, _) in change.items()}
            )
            for name, change in changes.items()
        }
        saved = sum(self.bits[n] for n in changes) - sum(new_bits.values())
        if saved >= 0:
            self.orders[layer.name] = swapped
            self.bits.update(new_bits)
            for name, change in changes.items():
                rows, cols, new = entries[name]
                self.current[name][rows, cols] = new  # the entries the swap changes
                self.positions[name] = {order: put() for order, (_, put) in change.items()}
                self.fillers[name] = {order: count for order, (count, _) in change.items()}
        return saved

    def run(self, swaps: int, seed: int) -> dict[str, torch.Tensor]:
        """The search of :func:`storage_unit_orders` from the present order: per layer its
        greedy order, then ``swaps`` random swaps (``seed``); the orders found."""
        for h in self.layers:
            producer = f"{h.name}.weight"
            if producer in self.masks and h.units > 1:
                mask = self.masks[producer]
                self.try_order(h.name, _greedy_unit_order(mask, self.widths[producer]))
        movable = [h for h in self.layers if h.units > 1 and self.moves[h.name]]
        rng = np.random.default_rng(seed)
        for _ in range(swaps if movable else 0):
            h = movable[int(rng.integers(len(movable)))]
            a, b = rng.choice(h.units, size=2, replace=False)
            self.try_swap(h, int(a), int(b))
        return {name: torch.from_numpy(o.copy()) for name, o in self.orders.items()}


def _flat_positions(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, ...], order: str):
    """Positions of the entries ``(rows, cols)`` of a matrix of ``shape`` in its
    :func:`traverse` in ``order``."""
    return rows * shape[1] + cols if order == "row" else cols * shape[0] + rows


def _swapped_entries(
    mask: np.ndarray, layer: HiddenUnits, name: str, a: int, b: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of ``mask`` (tensor ``name``) that change when the units at positions
    ``a`` and ``b`` of ``layer`` are exchanged: rows, columns and whether each becomes
    non-zero. The producer's rows ``a`` and ``b`` exchange, or the consumer's blocks of
    columns that read them; only where the two differ does an entry change."""
    if name == f"{layer.name}.weight":
        cols = np.flatnonzero(mask[a] != mask[b])
        rows = np.repeat(np.array([a, b]), cols.size)
        return rows, np.concatenate([cols, cols]), np.concatenate([mask[b, cols], mask[a, cols]])
    cols_a, cols_b = (unit_columns(np.array([u]), layer.columns_per_unit) for u in (a, b))
    rows, k = np.nonzero(mask[:, cols_a] != mask[:, cols_b])
    cols = np.concatenate([cols_a[k], cols_b[k]])
    new = np.concatenate([mask[rows, cols_b[k]], mask[rows, cols_a[k]]])
    return np.concatenate([rows, rows]), cols, new


def _filler_change(
    positions: np.ndarray, fillers: int, changed: np.ndarray, new: np.ndarray, index_bits: int
) -> tuple[int, Callable[[], np.ndarray]]:
    """Fillers (:func:`~bayes_sws.compress.coding.relative_index_fillers`) of the sorted
    non-zero ``positions``, ``fillers`` now, once the entries at ``changed`` become
    non-zero (``new``) or zero, and a function that gives the new positions.

    The non-zeros that stay (``kept``) split the sequence into runs: run ``k`` lies
    between ``kept[k - 1]`` (or the start) and ``kept[k]`` (or the end, whose zeros cost
    nothing). Only the runs that hold a changed entry change, so only their fillers are
    counted, before (with the entries that become zero in them) and after (with those
    that become non-zero), and the rest of the count is carried over.
    """
    added, removed = np.sort(changed[new]), np.sort(changed[~new])
    kept = np.delete(positions, np.searchsorted(positions, removed))
    at_added, at_removed = np.searchsorted(kept, added), np.searchsorted(kept, removed)
    runs = np.unique(np.concatenate([at_added, at_removed]))
    left = np.full(runs.size, -1, dtype=np.int64)
    inside = runs > 0
    left[inside] = kept[runs[inside] - 1]
    closed = runs[runs < kept.size]
    right = kept[closed]
    after = kept.size + 1  # labels of the runs as they become: run + after
    position = np.concatenate([left, right, removed, left, right, added])
    label = np.concatenate(
        [runs, closed, at_removed, runs + after, closed + after, at_added + after]
    )
    order = np.lexsort((position, label))
    position, label = position[order], label[order]
    costs = (np.diff(position) - 1) >> index_bits
    within = label[1:] == label[:-1]
    later = label[1:] >= after
    change = int(costs[within & later].sum()) - int(costs[within & ~later].sum())
    return fillers + change, lambda: np.insert(kept, at_added, added)


def _greedy_unit_order(mask: np.ndarray, index_bits: int) -> np.ndarray:
    """An order of the rows of ``mask`` (units by inputs) that breaks long runs of zeros
    down each column: at every position, the unit with non-zeros in the most columns whose
    run of zeros is within 4 of needing a filler (``2**index_bits - 4`` or more, modulo
    ``2**index_bits``), the sparser unit on ties."""
    span = 1 << index_bits
    a = mask.astype(np.float64)
    run = np.zeros(a.shape[1])
    degree = a.sum(1)
    left = np.ones(a.shape[0], dtype=bool)
    order = np.empty(a.shape[0], dtype=np.int64)
    for position in range(a.shape[0]):
        urgent = (run % span) >= span - 4
        score = a @ urgent - degree / (degree.max() + 1.0)
        score[~left] = -np.inf
        unit = int(np.argmax(score))
        order[position] = unit
        left[unit] = False
        run = np.where(mask[unit], 0.0, run + 1.0)
    return order


def storage_unit_orders(
    net: nn.Module,
    *,
    param_names: Sequence[str] | None = None,
    index_bits: int | Mapping[str, int] | None = None,
    order: Literal["best", "row", "column"] = "best",
    position_coding: Literal["fixed", "rice"] = "fixed",
    swaps: int = REORDER_SWAPS,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """An order of the hidden units of ``net`` in which :func:`storage_report` counts
    fewer bits; :func:`~bayes_sws.compress.surgery.permute_units` applies it.

    Hidden units can be stored in any order (the function does not change), but the
    relative-index layout pays a filler for every run of ``2**index_bits`` zeros, and
    which runs there are depends on the order of the rows (a column-by-column layout)
    or of the columns (row by row). The search is a local one over the exact count:
    per layer of :func:`~bayes_sws.compress.surgery.hidden_unit_layers`, a greedy order
    that breaks the producer's long runs of zeros down each column, kept unless it stores
    more bits than the present order; then ``swaps`` random exchanges of two units of
    one layer (``seed``), each kept when the bits do not grow. So the bits never grow;
    the result is a good order, not the best one (finding that is a hard combinatorial
    problem). Arguments as for :func:`storage_report`. Returns, per layer, the old index
    of the unit at each new position.
    """
    names = check_param_names(net, param_names)
    layout_orders = _STORAGE_ORDERS.get(order)
    if layout_orders is None:
        raise ValueError(f"order must be one of {sorted(_STORAGE_ORDERS)}; got {order!r}")
    check_index_bits(index_bits, names)
    if swaps < 0:
        raise ValueError(f"swaps must be >= 0; got {swaps}")
    search = _UnitOrderSearch(net, names, index_bits, layout_orders, position_coding)
    return search.run(swaps, seed)


def stored_network(
    net: nn.Module,
    *,
    param_names: Sequence[str] | None = None,
    index_bits: int | Mapping[str, int] | None = None,
    remove_dead: bool = False,
    position_coding: Literal["fixed", "rice"] = "fixed",
    reorder_units: bool = False,
) -> tuple[nn.Module, StorageReport]:
    """The network as it would be stored, and its :func:`storage_report`.

    With ``remove_dead=True`` that is :func:`remove_dead_units`'s smaller
    network, counted against ``net``'s sizes (``reference=net``); otherwise
    ``net`` itself. With ``reorder_units=True`` its hidden units are then put in
    the order :func:`storage_unit_orders` finds (the same function in fewer bits).
    The one place both soft weight-sharing's pipeline and the
    Deep Compression baseline count their bits, so they stay comparable.
    """
    stored = remove_dead_units(net).net if remove_dead else net
    if reorder_units:
        orders = storage_unit_orders(
            stored, param_names=param_names, index_bits=index_bits, position_coding=position_coding
        )
        stored = permute_units(stored, orders)
    report = storage_report(
        stored,
        param_names=param_names,
        index_bits=index_bits,
        reference=net if remove_dead else None,
        position_coding=position_coding,
    )
    return stored, report
