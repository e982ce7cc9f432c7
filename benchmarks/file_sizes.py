"""File sizes on disk: the ``.sws`` file against the dense network and general-purpose compressors.

For cases of ``benchmarks/compression.py`` (same pretraining, cache and settings;
by default the two digits ones) the script compresses the pretrained network by
soft weight-sharing (the case's row chosen on validation) and by Deep
Compression with Han et al.'s settings (dc-han),
both storing the network without dead units, writes each with
:func:`bayes_sws.compress.save_compressed`, reads it back
(:func:`bayes_sws.compress.load_compressed`) and checks the outputs on the test
set equal the in-memory network's bit for bit. It reports, in bytes:

* the dense pretrained network as ``torch.save(state_dict)``, and that file under
  gzip -9, xz -9 (Python's ``gzip`` and ``lzma``) and zstd -19 (the ``zstd``
  command, if installed);
* the quantised network's ``torch.save(state_dict)`` (what ``bayes-sws compress``
  writes as ``model_quantized.pt``) under xz -9, for comparison with a
  general-purpose compressor given the same pruning and sharing;
* the ``.sws`` file, its payload (``ceil(total_bits / 8)`` of
  :func:`~bayes_sws.compress.storage_report`) and its header;
* the ``.sws`` file with ``position_coding="rice"`` (Golomb-Rice-coded runs of
  zeros where smaller than fixed-width relative indices; format version 2).

Run from the repository root::

    python benchmarks/file_sizes.py            # prints a Markdown table
    python benchmarks/file_sizes.py --cases fashion-mnist/lenet-300-100 --cache /tmp/bench_cache
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import lzma
import math
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from compression import (
    CASES,
    DEFAULT_CACHE,
    _parse_overrides,
    add_set_option,
    load,
    pretrained,
    run_sws,
)

from bayes_sws.compress import decode_compressed, encode_compressed
from bayes_sws.compress.baseline import deep_compression

DIGITS = ("digits/lenet-300-100", "digits/lenet-5")


def torch_bytes(net: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getvalue()


def zstd_size(data: bytes) -> int | None:
    """Bytes after ``zstd -19``, or None without the ``zstd`` command."""
    if shutil.which("zstd") is None:
        return None
    out = subprocess.run(["zstd", "-19", "-c", "-q"], input=data, capture_output=True, check=True)
    return len(out.stdout)


def spec_of(case, data) -> dict:
    """The build_network spec of a benchmark network (same layers, same parameter names)."""
    return {"name": case.network, "input_shape": list(data.input_shape), "num_classes": 10}


def _round_trip(stored: torch.nn.Module, spec: dict, x: torch.Tensor, coding: str):
    """``stored`` as .sws bytes, read back with the outputs checked bit for bit."""
    data, saved = encode_compressed(stored, architecture=spec, position_coding=coding)
    with torch.no_grad():
        if not torch.equal(decode_compressed(data)(x), stored(x)):
            raise SystemExit(f"the .sws round trip ({coding} positions) changed the outputs")
    return saved


def sws_file(stored: torch.nn.Module, spec: dict, x: torch.Tensor, rate: float) -> dict:
    """Write ``stored`` as .sws bytes (both position codings), read back, outputs checked."""
    saved = _round_trip(stored, spec, x, "fixed")
    return {
        "sws": saved.num_bytes,
        "sws_rice": _round_trip(stored, spec, x, "rice").num_bytes,
        "payload": math.ceil(saved.payload_bits / 8),
        "header": saved.header_bytes,
        "rate": rate,  # against the full network (the report of `stored` alone uses its sizes)
        "pt_xz": len(lzma.compress(torch_bytes(stored), preset=9)),
    }


def case_rows(name: str, cache: Path | None, overrides: dict | None = None) -> list[dict]:
    """The chosen soft weight-sharing row and dc-han of a case, as files (``overrides``:
    ``compression._parse_overrides``' ``{"sws": {...}, "dc": {...}}``, for small budgets)."""
    overrides = overrides or {"sws": {}, "dc": {}}
    case = CASES[name]
    data = load(case)
    net, _ = pretrained(case, data, seed=0, cache=cache, progress=False)
    spec = spec_of(case, data)
    dense = torch_bytes(net)
    common = {
        "case": name,
        "dense": len(dense),
        "gzip": len(gzip.compress(dense, compresslevel=9, mtime=0)),
        "xz": len(lzma.compress(dense, preset=9)),
        "zstd": zstd_size(dense),
    }
    row = run_sws(
        case,
        case.chosen,
        copy.deepcopy(net),
        data,
        seed=0,
        progress=False,
        overrides=overrides["sws"],
        dc_overrides=overrides["dc"],
        remove_dead_units=True,
        reorder_units=True,
    )
    result = row["result"]
    files = sws_file(result.stored_net, spec, data.x_test, result.compression_rate)
    rows = [{**common, "method": case.chosen, **files}]
    dc = deep_compression(
        net,
        data.x_train,
        data.y_train,
        prune_fraction=case.han["prune_fraction"],
        num_clusters=case.han["num_clusters"],
        seed=0,
        progress=False,
        remove_dead_units=True,
        reorder_units=True,
        **{**case.dc, **overrides["dc"]},
    )
    rows.append(
        {
            **common,
            "method": "dc-han",
            **sws_file(dc.stored_net, spec, data.x_test, dc.storage.compression_rate),
        }
    )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        (
            "| case | method | dense `torch.save` | + gzip -9 | + xz -9 | + zstd -19 "
            "| quantised `torch.save` + xz -9 | **`.sws`** | payload (counted bits / 8) "
            "| header | dense file / `.sws` | counted rate × | `.sws`, Rice positions "
            "| dense file / that |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for r in rows:
        zstd = "n/a" if r["zstd"] is None else f"{r['zstd']:,}"
        lines.append(
            f"| {r['case']} | {r['method']} | {r['dense']:,} | {r['gzip']:,} | {r['xz']:,} "
            f"| {zstd} | {r['pt_xz']:,} | **{r['sws']:,}** | {r['payload']:,} | {r['header']} "
            f"| {r['dense'] / r['sws']:.1f}× | {r['rate']:.1f}× | {r['sws_rice']:,} "
            f"| {r['dense'] / r['sws_rice']:.1f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(DIGITS))
    add_set_option(parser, "change a setting of soft weight-sharing (sws.NAME) or dc-han (dc.NAME)")
    args = parser.parse_args(argv)
    overrides = _parse_overrides(args.overrides)
    torch.set_num_threads(1)
    rows = [row for name in args.cases for row in case_rows(name, args.cache, overrides)]
    print(markdown(rows))
    zstd = shutil.which("zstd")
    version = (
        subprocess.run(
            [zstd, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if zstd
        else "zstd not installed"
    )
    print(
        f"\nMachine: {platform.machine()}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {version}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
