"""Every script in ``examples/`` runs with its small budget (``--smoke``).

The scripts are found by globbing, so a new example is covered the moment it is
added. They run in-process (``runpy``, as ``__main__``) to spare a Python start
per script; each is also checked to honour ``CI`` the way the README promises.
"""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_the_examples_are_there():
    names = {p.name for p in EXAMPLES}
    assert {"map_digits.py", "variational_digits.py", "compress_lenet300.py"} <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_with_a_small_budget(script, monkeypatch, capsys):
    source = script.read_text()
    assert "--smoke" in source and '"CI" in os.environ' in source, (
        f"{script.name} needs a --smoke flag that is also switched on by $CI"
    )
    monkeypatch.setattr(sys, "argv", [str(script), "--smoke"])
    monkeypatch.chdir(script.parent)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip(), f"{script.name} printed nothing"
