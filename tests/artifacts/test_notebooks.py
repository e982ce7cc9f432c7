"""Every notebook in ``notebooks/`` executes top to bottom with a small budget.

Notebooks are found by globbing, so a new one is covered the moment it is added.
They run in a fresh ``python3`` kernel of this very interpreter (ipykernel) with
``CI=1`` and ``BAYES_SWS_SMOKE=1``, which each notebook reads to shrink its
budget. The committed files are also checked: outputs from a full run (figures
included) are stored, and each file stays under 1 MB.
"""

import json
import os
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MAX_BYTES = 1_000_000


def test_the_notebooks_are_there():
    names = {p.name for p in NOTEBOOKS}
    assert {
        "penalty_view.ipynb",
        "compress_lenet.ipynb",
        "swapping_guides.ipynb",
        "mdn_inverse.ipynb",
    } <= names


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory):
    """A ``python3`` kernel spec that runs *this* interpreter, found before any other.

    ipykernel ships such a spec in the environment already; this one also wins over
    a user-level ``python3`` kernel that points at another Python (Jupyter searches
    ``JUPYTER_PATH`` first).
    """
    import ipykernel  # noqa: F401 - the kernel itself; part of the test extra

    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (bayes_sws tests)",
                "language": "python",
            }
        )
    )
    return str(root)


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
def test_notebook_executes_with_a_small_budget(path, monkeypatch, kernel_path):
    monkeypatch.setenv(
        "JUPYTER_PATH", os.pathsep.join(filter(None, [kernel_path, os.environ.get("JUPYTER_PATH")]))
    )
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("BAYES_SWS_SMOKE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any failure
