"""The API reference (docs/) covers every public module, and the docstrings'
examples run.

Building the HTML with warnings as errors is CI's step (``.ci/run``, needs the
``docs`` extra); these checks need nothing beyond the test extra.
"""

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import bayes_sws

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"


def _public_modules() -> list[str]:
    infos = pkgutil.walk_packages(bayes_sws.__path__, "bayes_sws.")
    names = ["bayes_sws", *(info.name for info in infos)]
    return [n for n in names if not any(part.startswith("_") for part in n.split("."))]


@pytest.mark.parametrize("module", _public_modules())
def test_every_public_module_has_an_api_page(module):
    page = API / f"{module}.rst"
    assert page.is_file(), f"docs/api/{module}.rst is missing: add it (see docs/conf.py)"
    assert f".. module-api:: {module}\n" in page.read_text()


def test_no_api_page_without_its_module():
    pages = {p.stem for p in API.glob("bayes_sws*.rst")}
    assert pages == set(_public_modules())


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    modules = (importlib.import_module(name) for name in _public_modules())
    return [test for module in modules for test in finder.find(module, module.__name__)]


def test_docstring_examples_run():
    """Every ``>>>`` example in the package runs as a doctest and gives the output
    written under it, unless it is marked ``# doctest: +SKIP``."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _doctests():
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} docstring example(s) failed (output above)"
    assert results.attempted >= 4, "the runnable docstring examples went missing"


def test_skipped_examples_say_why():
    """An example that cannot run here (a fragment that needs the reader's network,
    minutes of training) is skipped only beside a sentence saying it is not run."""
    for test in _doctests():
        if any(example.options.get(doctest.SKIP) for example in test.examples):
            text = " ".join((test.docstring or "").split()).lower()
            assert "not run as a doctest" in text, f"{test.name}: say why its example is skipped"
