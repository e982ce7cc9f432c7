"""Every notebook in ``notebooks/`` executes top to bottom with a small budget.

Notebooks are found by globbing, so a new one is covered the moment it is added.
They run in a fresh ``python3`` kernel (ipykernel from this environment) with
``CI=1`` and ``BAYES_SWS_SMOKE=1``, which each notebook reads to shrink its
budget. The committed files are also checked: outputs from a full run (figures
included) are stored, and each file stays under 1 MB.
"""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MAX_BYTES = 1_000_000


def test_the_notebooks_are_there():
    names = {p.name for p in NOTEBOOKS}
    assert {"penalty_view.ipynb", "compress_lenet.ipynb", "swapping_guides.ipynb"} <= names


def _kernel_name():
    """The ipykernel of this environment, registered under its usual name."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:  # pragma: no cover - ipykernel ships the spec; be safe anyway
        pytest.skip("no 'python3' Jupyter kernel: pip install ipykernel")
    return "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_has_outputs_and_is_small(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code" and c.source.strip()]
    assert code and all(c.get("execution_count") for c in code), f"{path.name}: commit it executed"
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} has no figures in its stored outputs"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} was committed with an error output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_with_a_small_budget(path, monkeypatch):
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("BAYES_SWS_SMOKE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name=_kernel_name(),
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any failure
