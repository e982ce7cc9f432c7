"""The ``.sws`` file: a compressed network written bit for bit as :func:`storage_report` counts it.

:func:`save_compressed` writes a pruned, weight-shared network to a binary file
whose payload is exactly the ``total_bits`` of its
:func:`~bayes_sws.compress.storage_report` (Han, Mao & Dally 2016's sparse
layout with relative indices and fillers, Huffman-coded cluster indices, a
32-bit codebook per layer, 32-bit biases), preceded by a header of stated size
(magic, format version, the :func:`bayes_sws.zoo.nets.build_network` spec, one
record per parameter with its layout and Huffman code lengths) and followed by
a CRC-32. Version 2 adds one layout, sparse with Golomb-Rice-coded runs of zeros
(``position_coding="rice"``); a file without such a tensor is written as version
1, which older readers read. :func:`load_compressed` validates the file and rebuilds a plain
:class:`torch.nn.Module` whose parameters equal the saved ones bit for bit.

The byte layout is documented in ``docs/file-format.md``. Sizes, with ``B`` the
payload bits (``StorageReport.total_bits``):

.. math::

    \\text{file bytes} = \\lceil B / 8 \\rceil + 30 + |\\text{spec}|
        + \\sum_{\\text{params}} (5 + |\\text{name}| + 4\\,\\text{ndim})
        + \\sum_{\\text{coded}} (10 + K)      \\qquad (1)

where ``K`` is the codebook size of a tensor in the sparse or full layout.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from .._io import atomic_write_bytes
from ..zoo.nets import build_network, is_factory_name, same_memory_format
from .coding import huffman_code, zero_runs
from .storage import BITS_PER_FLOAT, StorageReport, storage_report, traverse, untraverse

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "CompressedFileError",
    "CompressedFileInfo",
    "SavedModel",
    "StoredTensor",
    "decode_compressed",
    "describe_compressed",
    "encode_compressed",
    "load_compressed",
    "save_compressed",
]

#: First eight bytes of every ``.sws`` file (PNG-style: a high byte, a name, CR LF, ^Z, LF).
MAGIC = b"\x89SWS\r\n\x1a\n"
#: Newest version of the layout this module writes; it reads this version and older.
#: A file is written at the lowest version that holds its layouts (2 only for "rice").
FORMAT_VERSION = 2

_PREFIX = struct.Struct("<8sHI")  # magic, version, spec length
_COUNTS = struct.Struct("<IQ")  # number of records, payload bits
_RECORD = struct.Struct("<BBB")  # layout, order, ndim (after the name)
_CODED = struct.Struct("<BII")  # index bits, stored entries, codebook size K
_CRC = struct.Struct("<I")
#: Bytes outside the records, the spec and the payload: prefix, counts and CRC (Eq. 1).
FIXED_BYTES = _PREFIX.size + _COUNTS.size + _CRC.size

_T = TypeVar("_T")

_LAYOUTS = ("plain", "sparse", "full", "raw", "rice")
#: The first format version that has each layout.
_LAYOUT_VERSION = {"plain": 1, "sparse": 1, "full": 1, "raw": 1, "rice": 2}
_ORDERS = ("row", "column")


class CompressedFileError(ValueError):
    """A ``.sws`` file that is not one, is damaged, or is of a newer format."""


@dataclass(frozen=True)
class SavedModel:
    """What :func:`save_compressed` wrote.

    Attributes
    ----------
    path : pathlib.Path or None
        The file (``None`` from :func:`encode_compressed`).
    num_bytes : int
        File size.
    payload_bits : int
        Bits of the coded parameters; equals ``report.total_bits``.
    header_bytes : int
        Everything but the payload bytes (Eq. 1 without ``ceil(B / 8)``).
    report : StorageReport
        The storage report the payload follows.
    """

    path: Path | None
    num_bytes: int
    payload_bits: int
    header_bytes: int
    report: StorageReport

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready sizes."""
        return {
            "file": None if self.path is None else self.path.name,
            "num_bytes": self.num_bytes,
            "payload_bits": self.payload_bits,
            "header_bytes": self.header_bytes,
        }


# --------------------------------------------------------------------------- bits


def _int_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Big-endian ``width``-bit fields of non-negative integers, as a 0/1 uint8 array."""
    values = np.asarray(values, dtype=np.uint64).reshape(-1)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    return ((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1)


def _bits_int(bits: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`_int_bits`."""
    fields = bits.reshape(-1, width).astype(np.uint64)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    return (fields << shifts).sum(axis=1, dtype=np.uint64)


def _float_bits(values: np.ndarray) -> np.ndarray:
    return _int_bits(np.ascontiguousarray(values, dtype="<f4").view("<u4"), BITS_PER_FLOAT)


def _bits_float(bits: np.ndarray) -> np.ndarray:
    return _bits_int(bits, BITS_PER_FLOAT).astype("<u4").view("<f4")


def _huffman_encode(symbols: np.ndarray, codes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Concatenated codewords of ``symbols`` as a 0/1 array (vectorised).

    ``codes[s]`` is symbol ``s``'s ``(codeword, length)``.
    """
    code = np.array([c for c, _ in codes], dtype=np.uint64)[symbols]
    length = np.array([n for _, n in codes], dtype=np.int64)[symbols]
    starts = np.cumsum(length) - length
    owner = np.repeat(np.arange(symbols.size), length)
    shift = (length[owner] - 1 - (np.arange(int(length.sum())) - starts[owner])).astype(np.uint64)
    return ((code[owner] >> shift) & np.uint64(1)).astype(np.uint8)


def _huffman_decode(bits: np.ndarray, start: int, count: int, lengths: Sequence[int]):
    """Decode ``count`` symbols of a canonical code from ``bits[start:]``; (symbols, end).

    The canonical code with code lengths ``lengths`` (0: the symbol has no codeword)
    gives consecutive codewords to the symbols in order of (length, symbol), as
    :func:`~bayes_sws.compress.huffman_code` and DEFLATE do; so the lengths alone
    define it, and decoding reads one bit at a time until the code read so far
    is among the ``number[n]`` codewords of its length ``n``, which start at
    ``first[n]``.
    """
    max_length = max(lengths, default=0)
    first, number, offset = [0] * (max_length + 1), [0] * (max_length + 1), [0] * (max_length + 1)
    ordered = sorted((s for s, n in enumerate(lengths) if n > 0), key=lambda s: (lengths[s], s))
    for sym in ordered:
        number[lengths[sym]] += 1
    code = index = 0
    for n in range(1, max_length + 1):  # first code and first symbol index of each length
        code = (code + number[n - 1]) << 1
        first[n], offset[n] = code, index
        index += number[n]
    stream = bits[start:].tolist()
    out, pos = [0] * count, 0
    for i in range(count):
        code, n = 0, 0
        while True:
            n += 1
            if n > max_length or pos >= len(stream):
                raise CompressedFileError("corrupted Huffman stream: no codeword matches")
            code = (code << 1) | stream[pos]
            pos += 1
            if 0 <= code - first[n] < number[n]:
                out[i] = ordered[offset[n] + code - first[n]]
                break
    return np.array(out, dtype=np.int64), start + pos


# --------------------------------------------------------------------------- layers


@dataclass
class _Record:
    """One parameter of the file: how it is laid out, and what decoding it needs."""

    name: str
    layout: str  # one of _LAYOUTS
    order: str  # one of _ORDERS
    shape: tuple[int, ...]
    index_bits: int = 0
    num_stored: int = 0
    lengths: tuple[int, ...] = ()  # Huffman code length per symbol: codebook 0..K-1, zero K

    @property
    def coded(self) -> bool:
        return self.layout in ("sparse", "full", "rice")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # exact: a damaged shape cannot overflow it

    def matrix_shape(self) -> tuple[int, int]:
        rows = self.shape[0] if self.shape else 1
        return rows, self.numel // rows if rows else 0


def _symbols_sparse(sequence: np.ndarray, codebook: np.ndarray, index_bits: int):
    """Relative indices and cluster symbols of the stored entries, fillers included.

    A run of ``z`` zeros before a non-zero becomes ``z >> index_bits`` fillers (each
    skipping ``2**index_bits - 1`` zeros and standing on one more, symbol ``K``)
    and the entry itself, skipping the remaining ``z mod 2**index_bits`` zeros
    (:func:`~bayes_sws.compress.relative_index_fillers`).
    """
    positions = np.flatnonzero(sequence)
    skips = zero_runs(positions)
    fillers = skips >> index_bits
    last = np.cumsum(fillers + 1) - 1  # where each non-zero's own entry lands
    relative = np.full(int(last[-1]) + 1 if last.size else 0, (1 << index_bits) - 1, np.int64)
    relative[last] = skips - (fillers << index_bits)
    symbols = np.full(relative.size, codebook.size, np.int64)
    symbols[last] = np.searchsorted(codebook, sequence[positions])
    return relative, symbols


def _rice_encode(runs: np.ndarray, k: int) -> list[np.ndarray]:
    """Golomb-Rice code of ``runs`` as two 0/1 arrays: every quotient ``z >> k`` in unary
    (ones, then a zero), then every remainder in ``k`` bits, most significant first.

    The same bits as interleaving each run's two parts
    (:func:`~bayes_sws.compress.rice_bits`); grouped, both decode without a loop.
    """
    quotients = runs >> k
    unary = np.ones(int(quotients.sum()) + runs.size, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0
    if k == 0:
        return [unary]
    return [unary, _int_bits(runs & ((1 << k) - 1), k)]


def _encode_coded(name: str, array: np.ndarray, row) -> tuple[_Record, list[np.ndarray]]:
    """Record and bit fields of one row of the storage report, in its layout."""
    shape = tuple(int(d) for d in array.shape)
    matrix = array.reshape(shape[0] if shape else 1, -1)
    if row.storage_format == "raw":
        return _Record(name, "raw", "row", shape), [_float_bits(matrix)]
    flat = matrix.reshape(-1)
    codebook = np.unique(flat[flat != 0])  # the report's codebook: distinct non-zero values
    parts = [_float_bits(codebook)]
    layout = row.storage_format
    sequence = traverse(matrix, row.order)
    if layout == "sparse" and row.position_coding == "rice":
        layout = "rice"
        positions = np.flatnonzero(sequence)
        parts.extend(_rice_encode(zero_runs(positions), row.index_bits))
        symbols = np.searchsorted(codebook, sequence[positions])
    elif layout == "sparse":
        relative, symbols = _symbols_sparse(sequence, codebook, row.index_bits)
        parts.append(_int_bits(relative, row.index_bits))
    else:
        symbols = np.full(flat.size, codebook.size, np.int64)
        symbols[flat != 0] = np.searchsorted(codebook, flat[flat != 0])
    code = huffman_code([int(c) for c in np.bincount(symbols, minlength=codebook.size + 1)])
    codes = [
        (int(code[s], 2), len(code[s])) if s in code else (0, 0) for s in range(codebook.size + 1)
    ]
    parts.append(_huffman_encode(symbols, codes))
    record = _Record(
        name,
        layout,
        row.order,
        shape,
        index_bits=row.index_bits if row.storage_format == "sparse" else 0,
        num_stored=int(symbols.size),
        lengths=tuple(n for _, n in codes),
    )
    return record, parts


def _read_entries(
    bits: np.ndarray, pos: int, record: _Record
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """The stored entries of ``record`` read from ``bits[pos:]``, every length checked against
    the payload before anything the size of the tensor is allocated (a sparse or rice
    record's zeros are not): (their values, zeros and fillers included; each one's run of zeros
    skipped, for the sparse and rice layouts, else ``None``: the entries are the whole tensor;
    the next position)."""
    numel = record.numel

    def take(count: int) -> np.ndarray:
        if pos + count > bits.size:
            raise CompressedFileError(
                f"payload too short for parameter {record.name!r}: the file is corrupted"
            )
        return bits[pos : pos + count]

    if record.layout in ("plain", "raw"):
        values = _bits_float(take(BITS_PER_FLOAT * numel))
        return values, None, pos + BITS_PER_FLOAT * numel
    size = len(record.lengths) - 1
    codebook = _bits_float(take(BITS_PER_FLOAT * size))
    pos += BITS_PER_FLOAT * size
    count = record.num_stored
    relative = None
    if record.layout == "sparse":
        relative = _bits_int(take(record.index_bits * count), record.index_bits).astype(np.int64)
        pos += record.index_bits * count
    elif record.layout == "rice":
        relative, pos = _rice_decode(bits, pos, count, record)
    symbols, pos = _huffman_decode(bits, pos, count, record.lengths)
    if record.layout == "full" and count != numel:
        raise CompressedFileError(
            f"parameter {record.name!r} stores {count} entries for {numel}: the file is corrupted"
        )
    if (
        relative is not None
        and relative.size
        and (relative.min() < 0 or relative.max() >= numel or int(np.sum(relative + 1)) > numel)
    ):
        raise CompressedFileError(
            f"relative indices of parameter {record.name!r} run past its {numel} entries: "
            "the file is corrupted"
        )
    return np.append(codebook, np.float32(0))[symbols], relative, pos


def _decode_record(bits: np.ndarray, pos: int, record: _Record) -> tuple[np.ndarray, int]:
    """The parameter of ``record`` read from ``bits[pos:]``; (array, next position)."""
    values, relative, pos = _read_entries(bits, pos, record)
    if relative is None:
        return values.reshape(record.shape), pos
    sequence = np.zeros(record.numel, dtype=np.float32)
    sequence[np.cumsum(relative + 1) - 1] = values  # in range: _read_entries checked them
    rows, cols = record.matrix_shape()
    matrix = untraverse(sequence, rows, cols, record.order)
    return np.ascontiguousarray(matrix).reshape(record.shape), pos


def _rice_decode(bits: np.ndarray, pos: int, count: int, record: _Record) -> tuple[np.ndarray, int]:
    """``count`` runs of zeros Rice-coded from ``bits[pos:]`` (:func:`_rice_encode`)."""
    k = record.index_bits
    if k > 62:  # a run of zeros fits an int64 with room for the shift
        raise CompressedFileError(
            f"parameter {record.name!r} has Rice parameter {k} (at most 62): the file is corrupted"
        )
    ends = _unary_ends(bits, pos, count)  # the unary parts' terminating zeros
    if ends.size < count:
        raise CompressedFileError(
            f"Rice-coded positions of parameter {record.name!r} end early: the file is corrupted"
        )
    quotients = np.diff(ends, prepend=-1) - 1
    pos += int(ends[-1]) + 1 if count else 0
    if pos + k * count > bits.size:
        raise CompressedFileError(
            f"payload too short for parameter {record.name!r}: the file is corrupted"
        )
    remainders = (
        _bits_int(bits[pos : pos + k * count], k).astype(np.int64)
        if k
        else np.zeros(count, np.int64)
    )
    return (quotients.astype(np.int64) << k) + remainders, pos + k * count


def _unary_ends(bits: np.ndarray, pos: int, count: int) -> np.ndarray:
    """Offsets from ``pos`` of the first ``count`` zeros of ``bits[pos:]`` (fewer if absent).

    Searches a window that doubles until it holds ``count`` zeros, so a file of many
    Rice records is read in time linear in its size (not the rest of the payload per
    record)."""
    window = 2 * count + 64
    while True:
        ends = np.flatnonzero(bits[pos : pos + window] == 0)
        if ends.size >= count or pos + window >= bits.size:
            return ends[:count]
        window *= 2


# --------------------------------------------------------------------------- header


def _pack_record(record: _Record) -> bytes:
    name = record.name.encode("utf-8")
    out = struct.pack("<H", len(name)) + name
    out += _RECORD.pack(
        _LAYOUTS.index(record.layout), _ORDERS.index(record.order), len(record.shape)
    )
    out += struct.pack(f"<{len(record.shape)}I", *record.shape)
    if record.coded:
        out += _CODED.pack(record.index_bits, record.num_stored, len(record.lengths) - 1)
        out += bytes(record.lengths)
    return out


class _Reader:
    """Reads the header from the front of the file; a read past the end is a truncation."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data, self.pos, self.end = data, 0, end

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > self.end:
            raise CompressedFileError(
                f"file truncated or corrupted: {what} needs bytes {self.pos}-{self.pos + count} "
                f"of a file whose header ends by byte {self.end}"
            )
        out = self.data[self.pos : self.pos + count]
        self.pos += count
        return out

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        return fmt.unpack(self.take(fmt.size, what))


def _read_record(reader: _Reader, version: int) -> _Record:
    (name_length,) = struct.unpack("<H", reader.take(2, "a parameter name length"))
    name = reader.take(name_length, "a parameter name").decode("utf-8", errors="replace")
    layout, order, ndim = reader.unpack(_RECORD, f"the record of {name!r}")
    if (
        layout >= len(_LAYOUTS)
        or order >= len(_ORDERS)
        or _LAYOUT_VERSION[_LAYOUTS[layout]] > version
    ):
        raise CompressedFileError(
            f"parameter {name!r} has unknown layout {layout} or order {order} for format "
            f"version {version}: the file is corrupted"
        )
    shape = struct.unpack(f"<{ndim}I", reader.take(4 * ndim, f"the shape of {name!r}"))
    record = _Record(name, _LAYOUTS[layout], _ORDERS[order], tuple(shape))
    if record.coded:
        record.index_bits, record.num_stored, size = reader.unpack(_CODED, f"the code of {name!r}")
        record.lengths = tuple(reader.take(size + 1, f"the Huffman table of {name!r}"))
    return record


def _check_frame(data: bytes) -> tuple[_Reader, int]:
    """Magic, version, lengths and CRC-32 of a whole file; a reader past the prefix."""
    if len(data) < _PREFIX.size or data[: len(MAGIC)] != MAGIC:
        raise CompressedFileError(
            f"not a bayes_sws compressed network: the file does not start with {MAGIC!r} "
            "(write one with bayes_sws.compress.save_compressed)"
        )
    _, version, _ = _PREFIX.unpack_from(data)
    if version > FORMAT_VERSION or version < 1:
        raise CompressedFileError(
            f"file format version {version} is not readable by this bayes_sws, which reads "
            f"versions 1-{FORMAT_VERSION}; upgrade bayes_sws to read it"
        )
    if len(data) < FIXED_BYTES:
        raise CompressedFileError(f"file truncated: {len(data)} bytes, fewer than {FIXED_BYTES}")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise CompressedFileError(
            "checksum mismatch: the file is truncated or altered (CRC-32 of its "
            f"{len(data) - _CRC.size} bytes is {zlib.crc32(data[: -_CRC.size]):#010x}, "
            f"the file says {crc:#010x})"
        )
    reader = _Reader(data, len(data) - _CRC.size)
    reader.take(_PREFIX.size, "the prefix")
    return reader, version


# --------------------------------------------------------------------------- whole files


def _check_network(net: nn.Module, architecture: Mapping[str, Any]) -> str:
    """Refuse what the format cannot hold; the architecture spec as compact JSON."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
    buffers = [name for name, b in net.named_buffers() if b.numel()]
    if buffers:
        raise ValueError(
            f"the .sws format stores parameters only; the network has buffers {buffers} "
            "(save it with torch.save instead)"
        )
    for name, p in net.named_parameters():
        if p.dtype != torch.float32 or not bool(torch.isfinite(p).all()):
            raise ValueError(
                f"parameter {name!r} is {p.dtype}{'' if torch.isfinite(p).all() else ' with non-finite values'}; "
                "the .sws format stores finite float32 parameters: convert with net.float()"
            )
    if not isinstance(architecture, Mapping) or "name" not in architecture:
        raise ValueError(
            "architecture must be the keyword arguments of bayes_sws.zoo.nets.build_network "
            f"(name, input_shape, num_classes, ...; name may be package.module:factory); "
            f"got {architecture!r}"
        )
    try:
        spec = json.dumps(dict(architecture), sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise ValueError(
            f"architecture must be JSON-ready (give activation by name): {err}"
        ) from None
    _check_names(net, _build(json.loads(spec), allow_import=True))  # the caller's own spec
    return spec


def _build(spec: Mapping[str, Any], *, allow_import: bool) -> nn.Module:
    """``build_network(**spec)`` without touching the caller's random state.

    A spec naming a factory (``"package.module:factory"``) imports that module,
    which runs its code: refused unless ``allow_import``.
    """
    if not isinstance(spec, Mapping):
        raise CompressedFileError(f"architecture spec {spec!r} is not a JSON object")
    if is_factory_name(spec.get("name")) and not allow_import:
        raise CompressedFileError(
            f"the network is built by the factory {spec['name']!r}; rebuilding it imports that "
            "module, which runs its code: pass allow_import=True if you trust the file"
        )
    try:
        with torch.random.fork_rng(devices=[]):
            return build_network(**spec)
    except (TypeError, ValueError) as err:
        raise CompressedFileError(f"architecture {spec} cannot be built: {err}") from None


def _check_names(net: nn.Module, built: nn.Module) -> None:
    names = [(n, p.ndim) for n, p in net.named_parameters()]
    expected = [(n, p.ndim) for n, p in built.named_parameters()]
    if names != expected:
        raise ValueError(
            f"the network's parameters {[n for n, _ in names]} do not match the architecture's "
            f"{[n for n, _ in expected]}; pass the build_network spec the network was built from"
        )


def encode_compressed(
    net: nn.Module,
    *,
    architecture: Mapping[str, Any],
    param_names: Sequence[str] | None = None,
    index_bits: int | Mapping[str, int] | None = None,
    position_coding: Literal["fixed", "rice"] = "fixed",
) -> tuple[bytes, SavedModel]:
    """The ``.sws`` bytes of ``net`` and their sizes (see :func:`save_compressed`)."""
    spec = _check_network(net, architecture).encode("utf-8")
    report = storage_report(
        net, param_names=param_names, index_bits=index_bits, position_coding=position_coding
    )
    rows = {row.name: row for row in report.layers}
    records, parts = [], []
    for name, p in net.named_parameters():
        array = p.detach().cpu().numpy()
        if name in rows:
            record, fields = _encode_coded(name, array, rows[name])
            bits = sum(int(f.size) for f in fields)
            if bits != rows[name].weight_bits:
                raise RuntimeError(
                    f"{name!r}: encoded {bits} bits but storage_report counts "
                    f"{rows[name].weight_bits}; please report this bug"
                )
        else:
            record, fields = _Record(name, "plain", "row", tuple(array.shape)), [_float_bits(array)]
        records.append(record)
        parts.extend(fields)
    payload = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    if payload.size != report.total_bits:
        raise RuntimeError(
            f"payload has {payload.size} bits but storage_report counts {report.total_bits}; "
            "please report this bug"
        )
    version = max(_LAYOUT_VERSION[r.layout] for r in records) if records else 1
    body = _PREFIX.pack(MAGIC, version, len(spec)) + spec
    body += _COUNTS.pack(len(records), payload.size) + b"".join(map(_pack_record, records))
    header = len(body) + _CRC.size
    body += np.packbits(payload).tobytes()
    data = body + _CRC.pack(zlib.crc32(body))
    return data, SavedModel(None, len(data), int(payload.size), header, report)


@dataclass(frozen=True)
class _Parsed:
    """A ``.sws`` file's header read and checked, and its payload as bits."""

    version: int
    spec: dict[str, Any]
    records: list[_Record]
    bits: np.ndarray
    payload_bits: int
    num_bytes: int

    def check_end(self, pos: int) -> None:
        """Decoding the records ended exactly at the payload's end (padding all zeros)."""
        if pos != self.payload_bits or self.bits[pos:].any():
            raise CompressedFileError(
                f"decoding used {pos} of the payload's {self.payload_bits} bits: "
                "the file is corrupted"
            )


def _parse(data: bytes) -> _Parsed:
    """The header and payload of ``.sws`` bytes: frame, spec, records and lengths checked."""
    data = bytes(data)
    reader, version = _check_frame(data)
    (spec_length,) = struct.unpack_from("<I", data, len(MAGIC) + 2)
    try:
        spec = json.loads(reader.take(spec_length, "the architecture spec").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CompressedFileError(f"architecture spec is not JSON: {err}") from None
    num_records, payload_bits = reader.unpack(_COUNTS, "the record count")
    records = [_read_record(reader, version) for _ in range(num_records)]
    payload = reader.take(reader.end - reader.pos, "the payload")
    if len(payload) != -(-payload_bits // 8):
        raise CompressedFileError(
            f"payload is {len(payload)} bytes but the header says {payload_bits} bits: "
            "the file is truncated or corrupted"
        )
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
    return _Parsed(version, spec, records, bits, payload_bits, len(data))


def decode_compressed(data: bytes, *, allow_import: bool = False) -> nn.Module:
    """The network in ``.sws`` bytes, checked first (see :func:`load_compressed`)."""
    parsed = _parse(data)
    spec, records, bits = parsed.spec, parsed.records, parsed.bits
    net = _build(spec, allow_import=allow_import)
    expected = [name for name, _ in net.named_parameters()]
    if [r.name for r in records] != expected:
        raise CompressedFileError(
            f"the file's parameters {[r.name for r in records]} do not match those of its "
            f"architecture {expected}: the file is corrupted"
        )
    params = dict(net.named_parameters())
    pos = 0
    for record in records:
        _check_record(record, tuple(params[record.name].shape))
        array, pos = _decode_record(bits, pos, record)
        _install(net, record, torch.from_numpy(array.astype(np.float32, copy=True)))
    parsed.check_end(pos)
    return net


def _check_record(record: _Record, built: tuple[int, ...]) -> None:
    """A record's sizes fit its architecture: no larger shape, no more stored entries."""
    fits = len(record.shape) == len(built) and all(
        0 < n <= m for n, m in zip(record.shape, built, strict=True)
    )
    stored = (
        record.num_stored == record.numel
        if record.layout == "full"
        else record.num_stored <= record.numel
    )
    if not fits or (record.coded and not (stored and len(record.lengths) <= record.numel + 1)):
        raise CompressedFileError(
            f"parameter {record.name!r} has shape {record.shape} with {record.num_stored} stored "
            f"entries in the file, which its architecture's {built} cannot hold: the file is corrupted"
        )


def _install(net: nn.Module, record: _Record, value: torch.Tensor) -> None:
    """Put ``value`` in as parameter ``record.name``, resizing its layer if needed.

    A network stored after :func:`~bayes_sws.compress.remove_dead_units` has fewer
    units than its architecture: a ``Linear`` or convolution takes the stored
    shapes (and its ``in_features``/``out_features`` or channel counts follow).
    """
    owner, _, attr = record.name.rpartition(".")
    module = net.get_submodule(owner)
    old = getattr(module, attr)
    if old.shape != value.shape:
        resizable = isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
        if not resizable or attr not in ("weight", "bias"):
            raise CompressedFileError(
                f"parameter {record.name!r} has shape {tuple(value.shape)} in the file but "
                f"{tuple(old.shape)} in its architecture, and {type(module).__name__} cannot be resized"
            )
        if attr == "weight" and isinstance(module, nn.Linear):
            module.out_features, module.in_features = value.shape
        elif attr == "weight" and isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            module.out_channels = int(value.shape[0])
            module.in_channels = int(value.shape[1]) * module.groups
    value = same_memory_format(value, old)
    setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))


def save_compressed(
    net: nn.Module,
    path: str | os.PathLike,
    *,
    architecture: Mapping[str, Any],
    param_names: Sequence[str] | None = None,
    index_bits: int | Mapping[str, int] | None = None,
    position_coding: Literal["fixed", "rice"] = "fixed",
) -> SavedModel:
    """Write a pruned, weight-shared network as a ``.sws`` file (atomically).

    Every tensor :func:`~bayes_sws.compress.storage_report` compresses is written
    in the layout the report chose (sparse by row or column with relative
    indices and fillers or, with ``position_coding="rice"`` where smaller,
    Golomb-Rice-coded runs of zeros; full; or raw) with its 32-bit codebook and its cluster
    indices under the report's Huffman code; every other parameter at 32 bits.
    The payload is exactly ``report.total_bits`` bits, padded with zeros to a
    byte; the file adds the header of Eq. (1) (``docs/file-format.md``).

    Parameters
    ----------
    net : nn.Module
        Float32 network with finite parameters and no buffers, built by
        :func:`bayes_sws.zoo.nets.build_network` (possibly made smaller by
        :func:`~bayes_sws.compress.remove_dead_units`).
    path : path-like
        Where to write (conventionally ``model.sws``).
    architecture : mapping
        The keyword arguments of ``build_network`` that rebuild ``net``'s
        architecture (``name``, ``input_shape``, ``num_classes``, ``hidden``,
        ``activation`` by name), stored as JSON.
    param_names, index_bits, position_coding
        Passed to :func:`~bayes_sws.compress.storage_report` (``"rice"`` makes a
        smaller file; a file with a Rice-coded tensor is format version 2).

    Returns
    -------
    SavedModel
        The path, the file size, the payload bits and the storage report.
    """
    data, saved = encode_compressed(
        net,
        architecture=architecture,
        param_names=param_names,
        index_bits=index_bits,
        position_coding=position_coding,
    )
    path = atomic_write_bytes(path, data)
    return SavedModel(path, saved.num_bytes, saved.payload_bits, saved.header_bytes, saved.report)


def load_compressed(path: str | os.PathLike, *, allow_import: bool = False) -> nn.Module:
    """Read a ``.sws`` file back into a plain network.

    The magic number, the format version, every length and the CRC-32 are
    checked before anything is decoded; a file that is not one, truncated,
    altered or of a newer format raises :class:`CompressedFileError` saying which.
    The network is built by :func:`bayes_sws.zoo.nets.build_network` from the
    stored spec (the caller's random state untouched) and its parameters take
    the decoded values, equal bit for bit to those saved.

    A spec naming your own network (``"package.module:factory"``, from
    ``bayes-sws fit --network``) is rebuilt by importing that module and calling
    the factory, which runs code the file names: that happens only with
    ``allow_import=True``, for files you trust; otherwise
    :class:`CompressedFileError` says so before anything is imported.
    """
    return _from_file(path, lambda data: decode_compressed(data, allow_import=allow_import))


def _from_file(path: str | os.PathLike, read: Callable[[bytes], _T]) -> _T:
    """``read`` applied to the bytes of the file ``path``; its errors name the file. A file
    that does not start with :data:`MAGIC` is refused after its first bytes (a large file of
    another kind is not read whole)."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(len(MAGIC))
            if data == MAGIC:
                data += file.read()
    except OSError as err:
        raise CompressedFileError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return read(data)
    except CompressedFileError as err:
        raise CompressedFileError(f"{path}: {err}") from None


@dataclass(frozen=True)
class StoredTensor:
    """One parameter as a ``.sws`` file stores it (:func:`describe_compressed`): its ``name``
    and ``stored_shape`` (smaller than its architecture's after dead units were removed); its ``layout``, ``"sparse"`` (relative indices with fillers),
    ``"rice"`` (Golomb-Rice-coded runs of zeros), ``"full"`` (a Huffman-coded cluster index
    per entry), ``"raw"`` (an unquantised tensor at 32 bits) or ``"plain"`` (a parameter
    outside the compressed ones, e.g. a bias, at 32 bits); the ``order`` (``"row"`` or
    ``"column"``) the sparse and rice layouts traverse the matrix in; ``index_bits``, the
    relative-index width (sparse) or Rice parameter (rice), else 0; ``num_stored``, the entries
    in the stream (non-zeros and fillers for sparse, non-zeros for rice, every entry
    otherwise); ``num_nonzero``; ``codebook_size``, its shared non-zero values (0 for raw and
    plain); and ``bits``, its share of the payload (codebook, positions, cluster indices or
    raw values)."""

    name: str
    stored_shape: tuple[int, ...]
    layout: str
    order: str
    index_bits: int
    num_stored: int
    num_nonzero: int
    codebook_size: int
    bits: int


@dataclass(frozen=True)
class CompressedFileInfo:
    """What a ``.sws`` file holds, read without building its network
    (:func:`describe_compressed`): its format version, architecture spec, sizes (``num_bytes``
    = ``ceil(payload_bits / 8) + header_bytes``) and every parameter as stored."""

    version: int
    architecture: dict[str, Any]
    num_bytes: int
    header_bytes: int
    payload_bits: int
    tensors: tuple[StoredTensor, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        tensors = [dict(vars(t), stored_shape=list(t.stored_shape)) for t in self.tensors]
        return {**vars(self), "tensors": tensors}

    def format_table(self) -> str:
        """A header line and a Markdown table, one row per parameter."""
        lines = [
            f".sws format version {self.version}: {self.num_bytes} bytes = "
            f"{self.payload_bits} bits of parameters + {self.header_bytes} bytes of header; "
            f"architecture {json.dumps(self.architecture, sort_keys=True)}",
            "",
            "| parameter | shape | layout | order | index bits | stored entries | non-zero "
            "| shared values | bits | % of the bits |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for t in self.tensors:
            share = 100 * t.bits / self.payload_bits if self.payload_bits else 0.0
            order = t.order if t.layout in ("sparse", "rice") else ""
            lines.append(
                f"| {t.name} | {'x'.join(map(str, t.stored_shape))} | {t.layout} | {order} | "
                f"{t.index_bits} | {t.num_stored} | {t.num_nonzero} | {t.codebook_size} | "
                f"{t.bits} | {share:.1f} |"
            )
        return "\n".join(lines)


def describe_compressed(path: str | os.PathLike) -> CompressedFileInfo:
    """What the ``.sws`` file at ``path`` holds, per parameter, without building its network.

    The file is checked as :func:`load_compressed` checks it (magic, version, lengths,
    CRC-32, every record decoded to the payload's last bit) but for the shapes against the
    architecture: no module is imported and no network built, so it also describes a file
    whose architecture is your own network (and never allocates a tensor of a stored shape).
    Raises :class:`CompressedFileError` naming the file and what is wrong.
    """
    return _from_file(path, _describe)


def _describe(data: bytes) -> CompressedFileInfo:
    parsed = _parse(data)
    tensors, pos = [], 0
    for record in parsed.records:
        values, _, end = _read_entries(parsed.bits, pos, record)
        tensors.append(
            StoredTensor(
                name=record.name,
                stored_shape=record.shape,
                layout=record.layout,
                order=record.order,
                index_bits=record.index_bits,
                num_stored=record.num_stored if record.coded else record.numel,
                num_nonzero=int(np.count_nonzero(values)),
                codebook_size=len(record.lengths) - 1 if record.coded else 0,
                bits=end - pos,
            )
        )
        pos = end
    parsed.check_end(pos)
    header = parsed.num_bytes - -(-parsed.payload_bits // 8)
    return CompressedFileInfo(
        parsed.version, parsed.spec, parsed.num_bytes, header, parsed.payload_bits, tuple(tensors)
    )
