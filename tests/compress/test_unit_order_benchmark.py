"""benchmarks/unit_order.py: a small run agrees with the recount (the script's own check
against the whole-tensor count) and its table's bits are storage_report's; bad input is
refused before anything runs."""

from __future__ import annotations

import pytest
from conftest import benchmark_module

from bayes_sws.compress import permute_units, storage_report, storage_unit_orders


def _module():
    return benchmark_module("unit_order")


def test_a_small_run_agrees_with_the_recount_and_with_storage_report(capsys):
    script = _module()
    code = script.main(["--networks", "lenet-300-100", "--swaps", "30", "--recount-swaps", "30"])
    out = capsys.readouterr().out
    assert code == 0
    assert "the same orders and bits: yes" in out
    # the table's row: the library's search with 30 swaps, counted by storage_report
    net, stored, _ = script.compressed_like("lenet-300-100", None)
    orders = storage_unit_orders(stored, swaps=30)
    report = storage_report(permute_units(stored, orders), reference=net)
    assert "| 30 | " in out
    assert f"| {report.total_bits} | {report.compression_rate:.1f} |" in out
    # the pruning kept about the stated fraction of each tensor
    kept = {n: float((p != 0).float().mean()) for n, p in net.named_parameters()}
    for name, fraction in script.KEEP["lenet-300-100"].items():
        assert kept[name] == pytest.approx(fraction, rel=0.02)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--weights", "lenet-5"], "give NET=PATH"),
        (["--weights", "lenet-5=/no/such/file.pt"], "give NET=PATH"),
        (["--swaps", "-1"], "must be >= 0"),
    ],
)
def test_bad_input_is_refused_with_the_value_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        _module().main(argv)
    assert message in capsys.readouterr().err
