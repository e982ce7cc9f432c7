"""Entropy coding of cluster indices and positions: Huffman codes, the entropy bound,
relative indices, Golomb-Rice codes.

The coding pieces of Han, Mao & Dally (ICLR 2016, "Deep Compression") that
:func:`bayes_sws.compress.storage.storage_report` counts with: a binary Huffman
code (Huffman 1952) over the cluster indices, the entropy bound beside it, and the
filler entries fixed-width relative indices need. Beside them, the Golomb-Rice
code (Golomb 1966; Rice 1979) of the runs of zeros between non-zeros, which the
report can use in place of fixed-width relative indices (``position_coding="rice"``).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "entropy_bits",
    "huffman_bits",
    "huffman_code",
    "huffman_code_lengths",
    "relative_index_fillers",
    "rice_bits",
    "rice_parameter",
    "zero_runs",
]


def _huffman_lengths(counts: Sequence[int]) -> list[int]:
    """Huffman codeword lengths for positive ``counts`` (heap of (count, node id))."""
    n = len(counts)
    if n == 1:
        return [1]
    # leaves are nodes 0..n-1, internal nodes n..2n-2 in creation order; ties go to
    # the lower node id, so the result is deterministic
    # a heap entry is the int count * stride + node id: ordered by (count, id) and
    # several times faster to compare than tuples
    stride = 2 * n
    heap = [int(c) * stride + i for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent = [0] * (2 * n - 1)
    for node in range(n, 2 * n - 1):
        a = heapq.heappop(heap)
        b = heapq.heappop(heap)
        parent[a % stride] = parent[b % stride] = node
        heapq.heappush(heap, (a // stride + b // stride) * stride + node)
    depth = [0] * (2 * n - 1)  # the root, node 2n-2, has depth 0
    for child in range(2 * n - 3, -1, -1):  # parents are created after their children
        depth[child] = depth[parent[child]] + 1
    return depth[:n]


def _positive_items(frequencies: Mapping[Hashable, int] | Sequence[int]) -> list[tuple[Any, int]]:
    if not isinstance(frequencies, Mapping):
        frequencies = dict(enumerate(frequencies))
    items = [(sym, int(c)) for sym, c in frequencies.items()]
    negative = {sym: c for sym, c in items if c < 0}
    if negative:
        raise ValueError(f"frequencies must be non-negative; got {negative}")
    return [(sym, c) for sym, c in items if c > 0]


def huffman_code_lengths(
    frequencies: Mapping[Hashable, int] | Sequence[int],
) -> dict[Hashable, int]:
    """Codeword length of each symbol in a binary Huffman code (Huffman 1952).

    Parameters
    ----------
    frequencies : mapping symbol -> count, or a sequence of counts (symbols 0..n-1)
        Symbols with count 0 get no codeword.

    Returns
    -------
    dict symbol -> length in bits. The lengths minimise ``Σ count · length``
    over all prefix codes. A lone symbol gets length 1 (a convention: a decoder
    still reads one bit per symbol to count them off); no symbols, an empty dict.
    """
    items = _positive_items(frequencies)
    if not items:
        return {}
    lengths = _huffman_lengths([c for _, c in items])
    return {sym: length for (sym, _), length in zip(items, lengths, strict=True)}


def huffman_code(frequencies: Mapping[Hashable, int] | Sequence[int]) -> dict[Hashable, str]:
    """A binary Huffman code: the canonical code with :func:`huffman_code_lengths`.

    Codewords (strings of ``'0'``/``'1'``) are assigned in canonical order
    (shorter first, then in the order given), as DEFLATE does; any code with the
    Huffman lengths is optimal, and the canonical one is prefix free because the
    lengths meet Kraft's inequality with equality.
    """
    lengths = huffman_code_lengths(frequencies)
    code: dict[Hashable, str] = {}
    value, previous = 0, 0
    ordered = sorted(enumerate(lengths.items()), key=lambda item: (item[1][1], item[0]))
    for _, (sym, length) in ordered:
        value <<= length - previous
        code[sym] = format(value, f"0{length}b")
        value, previous = value + 1, length
    return code


def entropy_bits(counts: Sequence[int] | np.ndarray) -> float:
    """Entropy bound on the bits of a message with these symbol counts.

    ``Σ_s n_s · (−log2 (n_s / n))``: ``n`` times the empirical entropy in bits;
    no prefix code does better, Huffman does at most ``n`` bits worse.
    """
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    total = counts.sum()
    return float(-(counts * np.log2(counts / total)).sum())


def relative_index_fillers(positions: Sequence[int] | np.ndarray, index_bits: int) -> int:
    """Filler entries needed to store sorted non-zero ``positions`` with relative indices.

    Each stored entry carries the number of zeros skipped since the previous
    stored entry (the first counts from the start of the tensor), an integer in
    ``[0, 2**index_bits - 1]``. A run of ``z`` zeros before a non-zero that does
    not fit is broken by filler entries, each a stored zero placed after
    ``2**index_bits - 1`` skipped zeros, so the run costs ``z // 2**index_bits``
    fillers. (Equivalently, Han et al.'s position difference ``d = z + 1`` may be
    at most ``2**index_bits``.) Zeros after the last non-zero cost nothing.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size == 0:
        return 0
    if index_bits < 1:
        raise ValueError(f"index_bits must be >= 1; got {index_bits}")
    return int((zero_runs(positions) >> index_bits).sum())


def huffman_bits(counts: Sequence[int] | np.ndarray) -> int:
    """Bits of a message with these symbol counts under its Huffman code.

    ``Σ_s n_s · l_s`` with the lengths ``l_s`` of :func:`huffman_code_lengths`;
    symbols with count 0 cost nothing, a lone symbol one bit per occurrence.
    """
    positive = [int(c) for c in counts if c > 0]
    if not positive:
        return 0
    return sum(c * n for c, n in zip(positive, _huffman_lengths(positive), strict=True))


def zero_runs(positions: Sequence[int] | np.ndarray) -> np.ndarray:
    """Zeros skipped before each of the sorted non-zero ``positions`` (the first counts
    from position 0): the relative indices without fillers, as int64."""
    positions = np.asarray(positions, dtype=np.int64)
    runs = np.diff(positions, prepend=-1) - 1
    if np.any(runs < 0):
        raise ValueError("positions must be strictly increasing and non-negative")
    return runs


def rice_bits(runs: Sequence[int] | np.ndarray, k: int) -> int:
    """Bits of the Golomb-Rice code with parameter ``k`` (divisor ``2**k``) of ``runs``.

    A run ``z`` is written as its quotient ``z >> k`` in unary (that many ones and a
    terminating zero) and its remainder in ``k`` bits: ``(z >> k) + 1 + k`` bits.
    """
    if k < 0:
        raise ValueError(f"the Rice parameter k must be >= 0; got {k}")
    runs = np.asarray(runs, dtype=np.int64)
    return int((runs >> k).sum()) + (k + 1) * int(runs.size)


def rice_parameter(runs: Sequence[int] | np.ndarray) -> tuple[int, int]:
    """The Rice parameter ``k`` that codes ``runs`` in the fewest bits, and those bits.

    Exact: every ``k`` from 0 to the bit length of the longest run is tried (a larger
    ``k`` adds a bit per run and saves none); ties go to the smaller ``k``. No runs:
    ``(0, 0)``.
    """
    runs = np.asarray(runs, dtype=np.int64)
    if runs.size == 0:
        return 0, 0
    longest = int(runs.max())
    if longest < 0:
        raise ValueError("runs must be non-negative")
    best = min((rice_bits(runs, k), k) for k in range(longest.bit_length() + 1))
    return best[1], best[0]
