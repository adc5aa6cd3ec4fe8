"""No package imports another package's private names.

A package is a distribution: ``saga.aeg``, ``saga.policy``, ``saga.kernels``, ``saga.bench``,
``saga.vllm``, ``saga.integrations``, ``saga.coordinator`` and the CLI ``saga.cli``. Inside one,
modules share what they like; across two, only public names: not a name starting with ``_``
(``from saga.policy.cache import _Plan``), and nothing under a private module
(``saga.coordinator._proto`` is the coordinator's own, ``saga.kernels._native`` the kernels').
Otherwise a refactoring inside one package breaks another that was never meant to depend on it.
An AST walk over every module of every package and the CLI (generated ``_proto`` code aside)
resolves each ``import``/``from ... import`` (relative ones too) and checks it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("saga.aeg", "saga.policy", "saga.kernels", "saga.bench", "saga.vllm",
            "saga.integrations", "saga.coordinator", "saga.cli")


def sources() -> list[Path]:
    """Every product module: packages' ``src`` trees and the CLI, generated code aside."""
    files = sorted([*ROOT.glob("packages/*/src/**/*.py"), *ROOT.glob("src/**/*.py")])
    return [f for f in files if "_proto" not in f.parts]


def module_of(rel: Path) -> str:
    """``packages/saga-policy/src/saga/policy/cache.py`` -> ``saga.policy.cache``."""
    parts = rel.with_suffix("").parts
    i = len(parts) - 1 - parts[::-1].index("saga")
    mod = list(parts[i:])
    if mod[-1] == "__init__":
        mod.pop()
    return ".".join(mod)


def package_of(module: str) -> str | None:
    """The distribution ``module`` belongs to (None: not SAGA's)."""
    return next((p for p in PACKAGES if module == p or module.startswith(p + ".")), None)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` of every import in ``tree``; ``name`` None for ``import m``."""
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            out += [(node.lineno, base, a.name) for a in node.names]
    return out


def violations(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, what)`` of each private name of another package that ``tree`` imports."""
    own = package_of(module)
    out: list[tuple[int, str]] = []
    for line, target, name in imports(tree, module, is_package):
        other = package_of(target)
        if other is None or other == own:
            continue
        inner = target[len(other):].split(".")[1:]
        if any(_private(seg) for seg in inner):
            out.append((line, target if name is None else f"{target}.{name}"))
        elif name is not None and _private(name):
            out.append((line, f"{target}.{name}"))
    return out


def test_the_walk_finds_every_form() -> None:
    code = ("from saga.policy.cache import _Plan\n"
            "import saga.coordinator._proto.saga_coordinator_pb2\n"
            "from saga.kernels import _native\n"
            "from saga.coordinator._proto import saga_coordinator_pb2\n"
            "from saga.aeg._serde import check_finite\n"
            "from saga.policy.cache import CacheManager, __all__\n"
            "from . import _own\n"
            "from saga.bench._x import y\n"
            "from numpy import _private\n")
    found = violations(ast.parse(code), "saga.bench.sim.simulator", False)
    assert sorted(found) == [
        (1, "saga.policy.cache._Plan"), (2, "saga.coordinator._proto.saga_coordinator_pb2"),
        (3, "saga.kernels._native"), (4, "saga.coordinator._proto.saga_coordinator_pb2"),
        (5, "saga.aeg._serde.check_finite")], found
    assert violations(ast.parse("from .._proto import pb\n"), "saga.coordinator.x.y",
                      False) == []


def test_every_module_maps_to_its_package() -> None:
    files = sources()
    assert len(files) > 50
    assert {package_of(module_of(f.relative_to(ROOT))) for f in files} == set(PACKAGES)


def test_no_module_imports_another_packages_private_names() -> None:
    offenders: list[str] = []
    for path in sources():
        rel = path.relative_to(ROOT)
        module = module_of(rel)
        tree = ast.parse(path.read_text(), str(rel))
        for line, what in sorted(violations(tree, module, path.name == "__init__.py")):
            offenders.append(f"{rel.as_posix()}:{line} imports {what}")
    assert offenders == [], ("use the other package's public API (or make the name public "
                             "there):\n" + "\n".join(offenders))
