"""Sphinx configuration: the API reference built from the docstrings.

Build (warnings are errors, as in CI)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

Every public module has a page ``api/<module>.rst`` holding one directive,
``.. module-api:: <module>`` (defined below; ``tests/test_docs.py`` checks that no
module lacks its page). The directive documents the module's docstring and each name
of its ``__all__`` that the module defines; a name it only re-exports (the packages'
everyday names, ``bayes_sws.fit`` and the like) is listed in a table linking to the
one page that documents it, so every object has exactly one entry.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout, also without an editable install

import bayes_sws  # noqa: E402

project = "bayes_sws"
author = "bayes_sws developers"
copyright = "bayes_sws developers"
release = version = bayes_sws.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

# NumPy-style docstrings (the package's convention), read by napoleon; a class's
# "Attributes" section gives one entry per attribute (see skip_described_attributes).
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "member-order": "bysource",
}
add_module_names = False  # the page's title names the module
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # defaults as written (`torch.Size()`), not their repr
autosummary_generate = False  # the pages are written by hand (docs/api/*.rst)

html_theme = "furo"
html_title = f"bayes_sws {release}"


@functools.cache
def all_modules() -> tuple[str, ...]:
    """Every module of the package, private ones included, in import-path order."""
    infos = pkgutil.walk_packages(bayes_sws.__path__, "bayes_sws.")
    return ("bayes_sws", *(info.name for info in infos))


def is_public(module: str) -> bool:
    return not any(part.startswith("_") for part in module.split("."))


@functools.cache
def top_level_names(module: str) -> dict[str, int]:
    """The names a module's source binds at top level (def, class, assignment), with
    the line of each: what the module defines rather than imports."""
    source = inspect.getsource(importlib.import_module(module))
    names: dict[str, int] = {}
    for node in ast.parse(source).body:
        targets: list[ast.expr] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.setdefault(node.name, node.lineno)
        elif isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                names.setdefault(target.id, node.lineno)
    return names


@functools.cache
def home(module: str, name: str) -> str:
    """The public module whose page documents ``module.name``: where it is defined
    (a class's or function's ``__module__``, else the module whose source assigns
    it), or the first public module exporting it when that place is private."""
    value = getattr(importlib.import_module(module), name)
    if inspect.ismodule(value):
        return value.__name__
    defined = getattr(value, "__module__", None) if callable(value) else None
    if defined is None:
        defined = next((m for m in all_modules() if name in top_level_names(m)), None)
    if defined and is_public(defined):
        return defined
    for candidate in all_modules():
        exported = getattr(importlib.import_module(candidate), "__all__", ())
        if is_public(candidate) and name in exported:
            return candidate
    raise ValueError(f"{module}.{name}: no public module documents it")


def _directive(module: str, name: str) -> list[str]:
    value = getattr(importlib.import_module(module), name)
    if inspect.isclass(value):
        kind = "exception" if issubclass(value, BaseException) else "class"
        # "Bases: object" (or a private base) would say nothing
        if any(b is not object and not b.__name__.startswith("_") for b in value.__bases__):
            return [f".. auto{kind}:: {module}.{name}", "   :show-inheritance:", ""]
    elif inspect.isfunction(value) or inspect.isbuiltin(value):
        kind = "function"
    else:  # a constant: its value is shown when short (a registry's repr is not)
        short = len(repr(value)) <= 80
        return [f".. autodata:: {module}.{name}", *([] if short else ["   :no-value:"]), ""]
    return [f".. auto{kind}:: {module}.{name}", ""]


def module_api(module: str) -> list[str]:
    """The reST of one module's page: its docstring, the names it defines (in source
    order) and a table of the names it re-exports."""
    exported = [n for n in getattr(importlib.import_module(module), "__all__", ()) if n[:2] != "__"]
    own = [n for n in exported if home(module, n) == module]
    lines = top_level_names(module)
    own.sort(key=lambda n: lines.get(n, sys.maxsize))
    text = [f".. automodule:: {module}", "   :no-members:", ""]
    for name in own:
        text += _directive(module, name)
    others = [n for n in exported if n not in own]
    if others:
        text += [".. rubric:: Exported here, documented where defined", ""]
        text += [".. py:currentmodule:: None", "", ".. autosummary::", ""]
        for name in others:
            target = home(module, name)
            value = getattr(importlib.import_module(module), name)
            path = target if inspect.ismodule(value) else f"{target}.{name}"
            text.append(f"   ~{path}")
        text.append("")
    return text


def drop_type_docstring(app, what, name, obj, options, lines) -> None:
    """A constant without a doc comment has no docstring of its own: autodoc would
    show its type's (``dict()`` -> new empty dictionary ...); show none instead."""
    if what in ("data", "attribute") and not inspect.isclass(obj) and lines:
        own = type(obj).__doc__
        if isinstance(own, str) and "\n".join(lines).strip() == inspect.cleandoc(own).strip():
            lines.clear()


_described: set[str] = set()  # the attributes the class being documented describes


def note_described_attributes(app, what, name, obj, options, lines) -> None:
    """Remember which attributes a class's docstring describes (napoleon has made its
    "Attributes" section into ``.. attribute::`` entries by now)."""
    if what == "class":
        _described.clear()
        _described.update(
            line.split("::", 1)[1].strip() for line in lines if line.startswith(".. attribute::")
        )


def skip_described_attributes(app, what, name, obj, skip, options) -> bool | None:
    """A dataclass field described in the class's "Attributes" section is documented
    there; autodoc's bare entry for the same field would be a duplicate."""
    if what == "class" and name in _described and not inspect.isroutine(obj):
        return True
    return None


class ModuleAPI(SphinxDirective):
    """``.. module-api:: bayes_sws.infer.svi``: the module's whole reference."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module = self.arguments[0]
        container = nodes.container()
        content = StringList(module_api(module), source=f"<module-api {module}>")
        self.state.nested_parse(content, self.content_offset, container)
        return container.children


def setup(app):
    app.add_directive("module-api", ModuleAPI)
    app.connect("autodoc-process-docstring", drop_type_docstring)
    app.connect("autodoc-process-docstring", note_described_attributes)
    app.connect("autodoc-skip-member", skip_described_attributes)
    return {"parallel_read_safe": True}
