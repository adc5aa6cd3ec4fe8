"""Product code never imports the test-helper module ``saga.vllm.testing``.

What product code needs to build or load a model is in ``saga.vllm.models``; ``saga.vllm.testing``
holds what only tests use. An AST walk over every module of every package and the CLI finds
``import saga.vllm.testing``, ``from saga.vllm.testing import ...``, ``from saga.vllm import
testing``, the relative forms inside ``saga.vllm``, and ``importlib.import_module`` /
``__import__`` of it by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_ONLY = "saga.vllm.testing"


def _module_of(path: Path) -> str:
    """``packages/saga-vllm/src/saga/vllm/compare.py`` -> ``saga.vllm.compare``."""
    parts = path.with_suffix("").parts
    i = len(parts) - 1 - parts[::-1].index("saga")
    mod = list(parts[i:])
    if mod[-1] == "__init__":
        mod.pop()
    return ".".join(mod)


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module name ``tree`` imports, with its line (``from a import b`` gives a.b too)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                out.append((node.lineno, node.args[0].value))
    return out


def test_imports_are_found_in_every_form() -> None:
    """The walk itself: each form is caught, look-alikes are not."""
    hits = {line for line, name in _imports(ast.parse(
        "import saga.vllm.testing\n"
        "from saga.vllm.testing import run_prompts\n"
        "from saga.vllm import testing\n"
        "from . import testing\n"
        "from .testing import ManualClock\n"
        "import importlib\nimportlib.import_module('saga.vllm.testing')\n"
        "from saga.vllm import models\n"
        "from saga.coordinator import testing\n"), "saga.vllm.compare", False)
        if name == TEST_ONLY or name.startswith(TEST_ONLY + ".")}
    assert hits == {1, 2, 3, 4, 5, 7}, hits


def test_no_product_module_imports_saga_vllm_testing() -> None:
    files = sorted([*ROOT.glob("packages/*/src/**/*.py"), *ROOT.glob("src/**/*.py")])
    assert len(files) > 50 and any(f.name == "compare.py" for f in files)
    offenders = []
    for path in files:
        module = _module_of(path.relative_to(ROOT))
        if module == TEST_ONLY:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for line, name in _imports(tree, module, path.name == "__init__.py"):
            if name == TEST_ONLY or name.startswith(TEST_ONLY + "."):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert offenders == [], "product code must import saga.vllm.models, not the test " \
                            "helpers:\n" + "\n".join(offenders)
