"""Modules stay under ~500 lines and functions under ~60.

A module past 500 lines holds more than one idea and a function past 60 more than one step;
both get split along their seams. A function's length is its body's line span (nested functions
and classes included, decorators, signature and docstring not), so a typer command with many
options in its signature is not penalised for them. An AST walk over every module of every
package and the CLI (generated ``_proto`` code aside) measures both. Exceptions are named in
``ALLOWED`` with the reason (none today); an entry that no longer exceeds the bound fails the
test, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

ALLOWED: dict[str, str] = {}
"""``"path"`` (a module) or ``"path::qualified.name"`` (a function) -> why it may exceed."""


def sources() -> list[Path]:
    """Every product module: packages' ``src`` trees and the CLI, generated code aside."""
    files = sorted([*ROOT.glob("packages/*/src/**/*.py"), *ROOT.glob("src/**/*.py")])
    return [f for f in files if "_proto" not in f.parts]


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the last."""
    body = fn.body
    first = body[0]
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        body = body[1:]
    if not body:
        return 0
    end = body[-1].end_lineno
    assert end is not None
    return end - body[0].lineno + 1


def functions(tree: ast.AST) -> list[tuple[str, int, int]]:
    """``(qualified name, line, body lines)`` of every function, nested ones too."""
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                out.append((name, child.lineno, body_lines(child)))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def oversized() -> dict[str, str]:
    """Every module and function over its bound: key as in ``ALLOWED`` -> what it measures."""
    found: dict[str, str] = {}
    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found[rel] = f"{rel}: {lines} lines (bound {MAX_MODULE_LINES})"
        for name, line, n in functions(ast.parse(text, rel)):
            if n > MAX_FUNCTION_LINES:
                found[f"{rel}::{name}"] = (f"{rel}:{line} {name}: {n} lines of body "
                                           f"(bound {MAX_FUNCTION_LINES})")
    return found


def test_the_measure_skips_the_docstring_and_counts_nested_code() -> None:
    code = ('def f(a,\n      b):\n    """Doc\n\n    string."""\n    x = 1\n\n'
            '    def g():\n        return 2\n    return x\n'
            'class C:\n    def m(self):\n        pass\n')
    assert functions(ast.parse(code)) == [("f", 1, 5), ("f.g", 8, 1), ("C.m", 12, 1)]


def test_modules_and_functions_stay_small() -> None:
    assert len(sources()) > 50
    found = oversized()
    over = [what for key, what in sorted(found.items()) if key not in ALLOWED]
    assert over == [], ("split these along their seams (or name them in ALLOWED with the "
                        "reason):\n" + "\n".join(over))
    stale = sorted(set(ALLOWED) - set(found))
    assert stale == [], f"no longer over the bound; remove from ALLOWED: {stale}"
