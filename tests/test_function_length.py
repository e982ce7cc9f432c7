"""Issue 14: no function in the package longer than about 80 lines of code.

ruff's complexity and statement counts (C901, PLR0912, PLR0915 in pyproject.toml) bound
what a function does; this bounds how long it reads. The oracle is Python's own parser
and tokenizer: a function's code lines run from its ``def`` to its last line, less blank
lines, comment-only lines and docstrings.
"""

import ast
import io
import tokenize
from pathlib import Path

import bayes_sws

MAX_CODE_LINES = 80
PACKAGE = Path(bayes_sws.__file__).resolve().parent


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def _code_lines(source: str) -> set[int]:
    """Line numbers holding a token that is not a comment (a string's inner lines count)."""
    found: set[int] = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip and token.type != tokenize.ENDMARKER:
            found.update(range(token.start[0], token.end[0] + 1))
    return found


def _function_lengths(source: str) -> dict[str, int]:
    tree = ast.parse(source)
    code = _code_lines(source) - _docstring_lines(tree)
    return {
        node.name: sum(1 for n in range(node.lineno, node.end_lineno + 1) if n in code)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def _long_functions() -> dict[tuple[str, str], int]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, lines in _function_lengths(path.read_text(encoding="utf-8")).items():
            if lines > MAX_CODE_LINES:
                found[(path.relative_to(PACKAGE).as_posix(), name)] = lines
    return found


def test_code_lines_leave_out_blanks_comments_and_the_docstring():
    source = (
        "def f(\n"
        "    a,\n"
        "):\n"
        '    """Doc.\n'
        "\n"
        "    More.\n"
        '    """\n'
        "    # a comment\n"
        "\n"
        "    x = (a +  # trailing comment\n"
        "         1)\n"
        '    s = """two\n'
        '    lines"""\n'
        "    return x, s\n"
    )
    # hand count: the three signature lines, the two lines of x, the two of s, return
    assert _function_lengths(source) == {"f": 8}


def test_no_function_over_80_code_lines():
    long = _long_functions()
    assert not long, f"functions over {MAX_CODE_LINES} lines; split them into named helpers: {long}"
