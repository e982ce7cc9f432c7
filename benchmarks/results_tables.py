"""Every table of ``BENCHMARKS.md`` and ``benchmarks/results/history.md`` as JSON.

Writes ``benchmarks/results/tables.json``: a list with one record per Markdown table,

* ``source``: the file, relative to the repository root;
* ``section`` and ``subsection``: the ``##`` and ``###`` headings above it (in the history,
  the section names the benchmark, the run's commit and date);
* ``caption``: the last paragraph of text above it (e.g. "Per layer, sws λ=0.15 on ...:"),
  its lines joined;
* ``run``: the last ``Run: ...`` line above it under the same heading, if any;
* ``commands``: the commands written above it under the same heading (``Command: `...` ``
  lines and indented ``python ...`` blocks, continuation lines joined), nearest first,
  each once;
* ``columns`` and ``rows``: the cells as written, with Markdown bold (``**``) removed.

Cells stay strings ("10.0 ms", "87×", "–"): the units differ from table to table.
``benchmarks/compression.py --write`` reruns this after it rewrites ``BENCHMARKS.md``;
after editing either file by hand, run it from the repository root::

    python benchmarks/results_tables.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("BENCHMARKS.md", "benchmarks/results/history.md")
OUTPUT = REPO / "benchmarks" / "results" / "tables.json"


def _cells(line: str) -> list[str]:
    return [cell.strip().replace("**", "") for cell in line.strip().strip("|").split("|")]


def _is_rule(line: str) -> bool:
    """The ``|---|---:|`` line under a table's header."""
    cells = _cells(line)
    return bool(cells) and all(cell and set(cell) <= set("-: ") for cell in cells)


def _commands(lines: list[str]) -> list[str]:
    """Commands in ``lines`` (one section's text above a table), the last one first.

    A command is a ``Command: `...` `` line, or a line of an indented block that starts
    with a line mentioning ``python``; a line ending in a backslash continues on the next.
    """
    out: list[str] = []
    in_block = False
    for line in lines:
        stripped = line.strip()
        if line.startswith("Command: `"):
            out.append(line[len("Command: `") :].rstrip().rstrip("`").rstrip())
        in_block = line.startswith("    ") and (in_block or "python " in stripped)
        if not in_block:
            continue
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + stripped
        else:
            out.append(stripped)
    return list(dict.fromkeys(out[::-1]))


def _last_paragraph(lines: list[str]) -> str | None:
    """The last run of non-blank text lines (not table rows, not indented code), joined."""
    text = [
        line.strip() if line.strip() and not line.startswith(("|", "    ")) else ""
        for line in lines
    ]
    paragraphs = " ".join(line or "\n" for line in text).split("\n")
    found = [" ".join(p.split()) for p in paragraphs if p.strip()]
    return found[-1] if found else None


def tables(text: str, source: str) -> list[dict]:
    """Every Markdown table of ``text`` with its headings, run line and commands.

    A table is a line starting with ``|`` followed by a rule line (``|---|``); its rows
    run to the first line that does not start with ``|``.
    """
    lines = text.splitlines()
    out: list[dict] = []
    section = subsection = None
    scope = 0  # first line under the nearest heading
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section, subsection, scope = line[3:].strip(), None, i + 1
        elif line.startswith("### "):
            subsection, scope = line[4:].strip(), i + 1
        elif line.startswith("|") and i + 1 < len(lines) and _is_rule(lines[i + 1]):
            end = i + 2
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            above = lines[scope:i]
            runs = [a for a in above if a.startswith("Run: ")]
            out.append(
                {
                    "source": source,
                    "section": section,
                    "subsection": subsection,
                    "caption": _last_paragraph(above),
                    "run": runs[-1][len("Run: ") :].rstrip() if runs else None,
                    "commands": _commands(above),
                    "columns": _cells(line),
                    "rows": [_cells(row) for row in lines[i + 2 : end]],
                }
            )
            i = end
            continue
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Write ``tables.json`` from the sources under the repository root (or ``argv[0]``)."""
    root = Path(argv[0]) if argv else REPO
    records = [rec for name in SOURCES for rec in tables((root / name).read_text(), name)]
    output = root / OUTPUT.relative_to(REPO)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} tables to {output.relative_to(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
