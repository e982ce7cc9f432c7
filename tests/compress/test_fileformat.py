"""The ``.sws`` file: round trips bit for bit, its size is the counted bits plus the
documented header (docs/file-format.md, Eq. 1), and damage is refused.

Oracles: the in-memory network (``torch.equal`` on parameters and outputs), a
reader written here from the documentation alone (struct fields and a
dictionary-based Huffman decoder), the optimal prefix-code cost by repeated
merging of the two smallest counts, and a hand count of the header bytes.
"""

from __future__ import annotations

import copy
import heapq
import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch

from bayes_sws.compress import (
    CompressedFileError,
    decode_compressed,
    describe_compressed,
    encode_compressed,
    finetune_codebook,
    load_compressed,
    quantize,
    remove_dead_units,
    save_compressed,
    storage_report,
)
from bayes_sws.zoo.data import load_dataset
from bayes_sws.zoo.nets import build_network
from bayes_sws.zoo.training import train

SPECS = {
    "mlp": {"name": "mlp", "input_shape": [64], "num_classes": 10, "hidden": [48]},
    "lenet-5": {"name": "lenet-5", "input_shape": [1, 8, 8], "num_classes": 10},
}
LAYOUTS = ("plain", "sparse", "full", "raw", "rice")
CODINGS = ("fixed", "rice")


def _quantised(spec: dict, data, epochs: int) -> torch.nn.Module:
    """A trained network hard-shared by a 5-component mixture, codebooks fine-tuned."""
    torch.manual_seed(0)
    net = build_network(**spec)
    train(net, data.x_train, data.y_train, num_epochs=epochs, seed=0)
    weights = torch.cat([p.detach().flatten() for p in net.parameters() if p.ndim >= 2])
    s = float(weights.std())
    pi = [0.9, 0.025, 0.025, 0.025, 0.025]
    mu = [0.0, -2 * s, -s, s, 2 * s]
    sigma = [0.6 * s, 0.3 * s, 0.3 * s, 0.3 * s, 0.3 * s]
    result = quantize(net, pi, mu, sigma, merge_threshold=0)
    pruned = {n: a - 1 for n, a in result.assignments.items()}  # zero component: -1
    finetune_codebook(result.net, pruned, data.x_train, data.y_train, num_epochs=1)
    return result.net


@pytest.fixture(scope="module")
def nets():
    flat, images = load_dataset("digits"), load_dataset("digits", flatten=False)
    return {
        "mlp": (_quantised(SPECS["mlp"], flat, 3), flat.x_test),
        "lenet-5": (_quantised(SPECS["lenet-5"], images, 1), images.x_test),
    }


def _stored(nets, key: str, dead: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    net, x = nets[key]
    return (remove_dead_units(net).net if dead else net), x


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("dead", [False, True], ids=["full-size", "dead-units-removed"])
@pytest.mark.parametrize("key", list(SPECS))
def test_round_trip_is_bit_identical(tmp_path, nets, key, dead, coding):
    net, x = _stored(nets, key, dead)
    saved = save_compressed(
        net, tmp_path / "model.sws", architecture=SPECS[key], position_coding=coding
    )
    state = torch.random.get_rng_state()
    back = load_compressed(tmp_path / "model.sws")
    assert torch.equal(torch.random.get_rng_state(), state)  # loading leaves the RNG alone
    assert type(back) is torch.nn.Sequential
    names = [n for n, _ in net.named_parameters()]
    assert [n for n, _ in back.named_parameters()] == names
    for (name, a), b in zip(net.named_parameters(), back.parameters(), strict=True):
        assert a.shape == b.shape and torch.equal(a, b), name
        # lenet-5 is channels-last; its one-channel first kernel is "contiguous" in both
        # layouts, but oneDNN rounds by the strides themselves: they must be the saved ones
        assert a.stride() == b.stride(), name
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    # the layers were really compressed: most weights pruned, a few shared values each
    report = saved.report
    assert {row.storage_format for row in report.layers} <= {"sparse", "full"}
    assert report.nonzero_fraction < 0.5
    # the lowest version that holds the layouts: 2 only with a Rice-coded tensor
    rice = any(row.position_coding == "rice" for row in report.layers)
    assert rice == (coding == "rice")  # these sparse layers are smaller Rice-coded
    version = struct.unpack_from("<H", (tmp_path / "model.sws").read_bytes(), 8)[0]
    assert version == (2 if rice else 1)


# --------------------------------------------------------------------------- size


def _header_bytes_by_hand(net: torch.nn.Module, spec: dict, coding: str = "fixed") -> int:
    """docs/file-format.md, Eq. (1): 30 fixed bytes, the spec, the records."""
    coded = {
        row.name
        for row in storage_report(net, position_coding=coding).layers
        if row.storage_format in ("sparse", "full")
    }
    total = 8 + 2 + 4 + 4 + 8 + 4  # magic, version, spec length, records, bits, CRC
    total += len(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode())
    for name, p in net.named_parameters():
        total += 2 + len(name.encode()) + 3 + 4 * p.ndim
        if name in coded:
            distinct = torch.unique(p.detach()[p.detach() != 0]).numel()
            total += 1 + 4 + 4 + (distinct + 1)
    return total


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("dead", [False, True], ids=["full-size", "dead-units-removed"])
@pytest.mark.parametrize("key", list(SPECS))
def test_file_size_is_the_counted_bits_plus_the_stated_header(tmp_path, nets, key, dead, coding):
    net, _ = _stored(nets, key, dead)
    saved = save_compressed(
        net, tmp_path / "model.sws", architecture=SPECS[key], position_coding=coding
    )
    size = (tmp_path / "model.sws").stat().st_size
    report = storage_report(net, position_coding=coding)
    header = _header_bytes_by_hand(net, SPECS[key], coding)
    assert saved.payload_bits == report.total_bits
    assert size == saved.num_bytes == math.ceil(report.total_bits / 8) + header
    assert saved.header_bytes == header


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("key", list(SPECS))
def test_a_file_is_described_as_the_storage_report_counted_it(tmp_path, nets, key, coding):
    """Per parameter, the decoder's bits are the report's (weights) or 32 a value (biases),
    the layouts and orders are the report's, the non-zeros a count of the network's own, and
    the sizes add up to the file's (the header by hand, Eq. 1)."""
    net, _ = _stored(nets, key, dead=True)
    save_compressed(net, tmp_path / "model.sws", architecture=SPECS[key], position_coding=coding)
    info = describe_compressed(tmp_path / "model.sws")
    report = storage_report(net, position_coding=coding)
    rows = {row.name: row for row in report.layers}
    params = dict(net.named_parameters())
    assert [t.name for t in info.tensors] == list(params)
    for t in info.tensors:
        p = params[t.name].detach()
        assert t.stored_shape == tuple(p.shape) and t.num_nonzero == int((p != 0).sum())
        if t.name in rows:
            row = rows[t.name]  # the file's "rice" layout is the report's Rice-coded sparse one
            layout = "rice" if row.position_coding == "rice" else row.storage_format
            assert (t.layout, t.bits) == (layout, row.weight_bits)
            assert t.index_bits == (row.index_bits if t.layout != "full" else 0)
            assert t.codebook_size == torch.unique(p[p != 0]).numel()
            if t.layout in ("sparse", "rice"):
                assert t.order == row.order
        else:
            assert (t.layout, t.bits, t.num_stored) == ("plain", 32 * p.numel(), p.numel())
    assert sum(t.bits for t in info.tensors) == info.payload_bits == report.total_bits
    assert info.header_bytes == _header_bytes_by_hand(net, SPECS[key], coding)
    assert info.num_bytes == (tmp_path / "model.sws").stat().st_size
    assert info.architecture == SPECS[key]
    assert json.loads(json.dumps(info.to_dict()))["tensors"][0]["name"] == info.tensors[0].name


# --------------------------------------------------------------------------- an independent reader


def _optimal_prefix_cost(counts: list[int]) -> int:
    """Least Σ count·length of a prefix code: the sum of all merged weights (Huffman 1952)."""
    heap = [c for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]  # one symbol: one bit each
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


class _DocReader:
    """Reads a .sws file following docs/file-format.md only."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values

    def bytes_(self, count: int) -> bytes:
        self.at += count
        return self.data[self.at - count : self.at]


def _read_by_the_docs(data: bytes):
    r = _DocReader(data)
    magic, version, spec_length = r.take("<8sHI")
    spec = json.loads(r.bytes_(spec_length))
    num_records, payload_bits = r.take("<IQ")
    records = []
    for _ in range(num_records):
        (length,) = r.take("<H")
        name = r.bytes_(length).decode()
        layout, order, ndim = r.take("<BBB")
        record = {
            "name": name,
            "layout": LAYOUTS[layout],
            "order": order,
            "shape": r.take(f"<{ndim}I"),
        }
        if record["layout"] in ("sparse", "full", "rice"):
            record["index_bits"], record["stored"], size = r.take("<BII")
            record["lengths"] = list(r.bytes_(size + 1))
        records.append(record)
    payload = "".join(format(b, "08b") for b in data[r.at : -4])
    return magic, version, spec, payload_bits, records, payload


def _canonical_dict(lengths: list[int]) -> dict[str, int]:
    """Codeword string -> symbol: consecutive codes in (length, symbol) order."""
    code, previous, table = 0, 0, {}
    for length, symbol in sorted((n, s) for s, n in enumerate(lengths) if n > 0):
        code <<= length - previous
        table[format(code, f"0{length}b")] = symbol
        code, previous = code + 1, length
    return table


def _float(bits: str) -> np.float32:
    return np.frombuffer(struct.pack(">I", int(bits, 2)), dtype=">f4")[0]


def _decode_tensor(record: dict, payload: str, at: int) -> tuple[np.ndarray, int, int]:
    """Tensor, next bit and Huffman bits of one record, with a dict-based Huffman decoder."""
    numel = math.prod(record["shape"])
    if record["layout"] in ("plain", "raw"):
        values = [_float(payload[at + 32 * i : at + 32 * i + 32]) for i in range(numel)]
        return np.array(values, np.float32).reshape(record["shape"]), at + 32 * numel, 0
    k = len(record["lengths"]) - 1
    codebook = [_float(payload[at + 32 * i : at + 32 * i + 32]) for i in range(k)]
    at += 32 * k
    stored, width = record["stored"], record["index_bits"]
    relative = []
    if record["layout"] == "sparse":
        relative = [int(payload[at + width * i : at + width * (i + 1)], 2) for i in range(stored)]
        at += width * stored
    elif record["layout"] == "rice":  # every quotient in unary (ones, a zero), then remainders
        quotients = []
        for _ in range(stored):
            end = payload.index("0", at)
            quotients.append(end - at)
            at = end + 1
        remainders = [
            int(payload[at + width * i : at + width * (i + 1)] or "0", 2) for i in range(stored)
        ]
        at += width * stored
        relative = [q * 2**width + r for q, r in zip(quotients, remainders, strict=True)]
    table, symbols, word, start = _canonical_dict(record["lengths"]), [], "", at
    while len(symbols) < stored:
        word += payload[at]
        at += 1
        if word in table:
            symbols.append(table[word])
            word = ""
    values = [np.float32(0) if s == k else codebook[s] for s in symbols]
    if record["layout"] == "full":
        return np.array(values, np.float32).reshape(record["shape"]), at, at - start
    flat, position = np.zeros(numel, np.float32), -1
    for skip, value in zip(relative, values, strict=True):
        position += skip + 1
        flat[position] = value
    rows = record["shape"][0]
    matrix = flat.reshape(rows, -1) if record["order"] == 0 else flat.reshape(-1, rows).T
    return matrix.reshape(record["shape"]), at, at - start


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("key", list(SPECS))
def test_a_reader_written_from_the_docs_recovers_every_tensor(nets, key, coding):
    net, _ = _stored(nets, key, dead=False)
    data, _ = encode_compressed(net, architecture=SPECS[key], position_coding=coding)
    magic, version, spec, payload_bits, records, payload = _read_by_the_docs(data)
    assert magic == b"\x89SWS\r\n\x1a\n" and spec == SPECS[key]
    assert version == (2 if coding == "rice" else 1)
    assert (coding == "rice") == any(r["layout"] == "rice" for r in records)
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    at = 0
    for record, (name, p) in zip(records, net.named_parameters(), strict=True):
        assert record["name"] == name
        tensor, at, huffman = _decode_tensor(record, payload, at)
        assert np.array_equal(tensor, p.detach().numpy()), name
        if record["layout"] in ("sparse", "full", "rice"):
            # the stored code is an optimal prefix code for the symbols it codes
            lengths = np.array(record["lengths"])
            if (lengths > 0).sum() > 1:  # a full binary tree: Kraft's sum is exactly one
                assert sum(2.0**-n for n in lengths[lengths > 0]) == pytest.approx(1.0)
            counts = _symbol_counts(record, p.detach().numpy())
            assert huffman == _optimal_prefix_cost(counts) == int(counts @ lengths)
    assert at == payload_bits and set(payload[at:]) <= {"0"} and len(payload) - at < 8


def _symbol_counts(record: dict, tensor: np.ndarray) -> np.ndarray:
    """Counts of each codebook value, and of the zero symbol (fillers, or zeros in full)."""
    flat = tensor.reshape(-1)
    values, counts = np.unique(flat[flat != 0], return_counts=True)
    if record["layout"] == "full":
        zero = int((flat == 0).sum())
    elif record["layout"] == "rice":
        zero = 0  # no fillers: the zero symbol is never coded
    else:
        matrix = tensor.reshape(tensor.shape[0], -1)
        sequence = (matrix if record["order"] == 0 else matrix.T).reshape(-1)
        gaps = np.diff(np.flatnonzero(sequence), prepend=-1) - 1
        zero = int(sum(g // 2 ** record["index_bits"] for g in gaps))  # fillers, by hand
    assert values.size == len(record["lengths"]) - 1
    return np.append(counts, zero)


# --------------------------------------------------------------------------- damage


@pytest.fixture(scope="module", params=CODINGS)
def mlp_bytes(nets, request):
    return encode_compressed(
        nets["mlp"][0], architecture=SPECS["mlp"], position_coding=request.param
    )[0]


def _with_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


@pytest.mark.parametrize("keep", [0, 5, 20, 100, -1])
def test_a_truncated_file_is_refused(tmp_path, mlp_bytes, keep):
    path = tmp_path / "cut.sws"
    path.write_bytes(mlp_bytes[:keep])
    for read in (load_compressed, describe_compressed):
        with pytest.raises(CompressedFileError, match="truncated|not a bayes_sws") as info:
            read(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_a_flipped_bit_is_refused(mlp_bytes, where):
    data = bytearray(mlp_bytes)
    at = 8 + int(where * (len(data) - 12))
    data[at] ^= 0x10
    with pytest.raises(CompressedFileError, match="checksum mismatch"):
        decode_compressed(bytes(data))


def test_wrong_magic_and_newer_version_are_refused(mlp_bytes):
    with pytest.raises(CompressedFileError, match="not a bayes_sws compressed network"):
        decode_compressed(b"PK\x03\x04" + mlp_bytes[4:])
    newer = _with_crc(mlp_bytes[:8] + struct.pack("<H", 3) + mlp_bytes[10:])
    with pytest.raises(CompressedFileError, match="version 3 .* reads versions 1-2; upgrade"):
        decode_compressed(newer)


def test_a_rice_layout_in_a_version_1_file_is_refused(nets):
    data, _ = encode_compressed(nets["mlp"][0], architecture=SPECS["mlp"], position_coding="rice")
    assert struct.unpack_from("<H", data, 8)[0] == 2
    older = _with_crc(data[:8] + struct.pack("<H", 1) + data[10:])
    with pytest.raises(CompressedFileError, match="unknown layout 4 .* version 1"):
        decode_compressed(older)
    # and a version-2 reader reads the version-2 file
    back = decode_compressed(data)
    for a, b in zip(nets["mlp"][0].parameters(), back.parameters(), strict=True):
        assert torch.equal(a, b)


def test_damage_behind_a_valid_checksum_is_refused_or_harmless(mlp_bytes, tmp_path):
    # every byte after the magic altered in turn (header and payload), CRC recomputed:
    # a clear error or some network, never a crash; described alike (what loads, describes)
    path = tmp_path / "damaged.sws"
    for at in range(8, len(mlp_bytes) - 4):
        data = bytearray(mlp_bytes)
        data[at] ^= 0xFF
        path.write_bytes(_with_crc(bytes(data)))
        try:
            decode_compressed(path.read_bytes())
            loads = True
        except CompressedFileError as err:
            assert "\n" not in str(err)
            loads = False
        try:
            describe_compressed(path)
        except CompressedFileError as err:
            assert not loads and "\n" not in str(err)
    # trailing bytes after a valid file: the payload length no longer matches
    with pytest.raises(CompressedFileError, match="payload is"):
        decode_compressed(_with_crc(mlp_bytes[:-4] + b"\x00" + mlp_bytes[-4:]))


def test_an_enormous_shape_behind_a_valid_checksum_is_refused(mlp_bytes, tmp_path):
    """The first record's shape set to 2³²-1 × 2³²-1 (its offset from the documented layout):
    the loader refuses it against the architecture; the description, which builds none, says
    what the file holds without allocating anything of that size."""
    (spec_length,) = struct.unpack_from("<I", mlp_bytes, 10)
    record = 14 + spec_length + 12  # prefix, spec, record count and payload bits
    (name_length,) = struct.unpack_from("<H", mlp_bytes, record)
    data = bytearray(mlp_bytes)
    struct.pack_into("<II", data, record + 2 + name_length + 3, 2**32 - 1, 2**32 - 1)
    path = tmp_path / "enormous.sws"
    path.write_bytes(_with_crc(bytes(data)))
    with pytest.raises(CompressedFileError, match="the file is corrupted"):
        decode_compressed(path.read_bytes())
    first = describe_compressed(path).tensors[0]  # a sparse record: its entries still fit
    assert first.layout in ("sparse", "rice") and first.stored_shape == (2**32 - 1, 2**32 - 1)


def test_what_the_format_cannot_hold_is_refused(nets, tmp_path):
    net, _ = nets["mlp"]
    with pytest.raises(ValueError, match="float32.*net.float"):
        save_compressed(copy.deepcopy(net).double(), tmp_path / "a.sws", architecture=SPECS["mlp"])
    with pytest.raises(ValueError, match="do not match the architecture"):
        save_compressed(net, tmp_path / "a.sws", architecture=SPECS["lenet-5"])
    with pytest.raises(ValueError, match="build_network"):
        save_compressed(net, tmp_path / "a.sws", architecture={"hidden": [48]})
    norm = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="buffers"):
        save_compressed(norm, tmp_path / "a.sws", architecture=SPECS["mlp"])
    assert not (tmp_path / "a.sws").exists()


@pytest.mark.parametrize("spacing", [1, 3, 200])
def test_unary_terminators_are_found_past_the_first_search_window(spacing):
    # zeros far apart (long unary parts) make the doubling window grow several times;
    # oracle: numpy over the whole stream
    from bayes_sws.compress.fileformat import _unary_ends

    rng = np.random.default_rng(spacing)
    bits = (rng.random(20_000) > 1 / spacing).astype(np.uint8)
    pos, count = 37, int((bits[37:] == 0).sum()) // 2
    expected = np.flatnonzero(bits[pos:] == 0)[:count]
    np.testing.assert_array_equal(_unary_ends(bits, pos, count), expected)
    # asking for more zeros than remain returns those that do
    everything = np.flatnonzero(bits[pos:] == 0)
    np.testing.assert_array_equal(_unary_ends(bits, pos, everything.size + 5), everything)
