"""benchmarks/file_sizes.py at a small budget: the rows it writes, checked by hand counts."""

from __future__ import annotations

import math

from conftest import benchmark_module


def _module(name: str):
    return benchmark_module(name)


def test_file_sizes_writes_the_chosen_row_and_dc_han_as_counted(tmp_path):
    file_sizes, bench = _module("file_sizes"), _module("compression")
    name = "digits/lenet-300-100"
    tiny = {"sws": {"num_epochs": 1}, "dc": {"finetune_epochs": 1, "centroid_epochs": 1}}
    rows = file_sizes.case_rows(name, tmp_path / "cache", tiny)
    assert [r["method"] for r in rows] == [bench.CASES[name].chosen, "dc-han"]
    # LeNet-300-100 on 8x8 digits by hand: 64*300 + 300 + 300*100 + 100 + 100*10 + 10
    num_params = 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    for row in rows:
        # the file is its counted payload and its header; the payload is the storage
        # report's count, 32 bits a parameter of the full network over the rate
        assert row["sws"] == row["payload"] + row["header"]
        assert row["payload"] == math.ceil(round(32 * num_params / row["rate"]) / 8)
        assert row["sws_rice"] <= row["sws"]  # Rice positions only where they are smaller
        # the dense file holds every float32 parameter once, plus pickling
        assert 4 * num_params < row["dense"] < 4 * num_params + 4096
        assert row["sws"] < row["pt_xz"] < row["dense"]
