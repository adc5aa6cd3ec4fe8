"""Only the registry and the presets compare against a policy, preset or queue name.

`saga.policy.registry` is the one place a name maps to a policy, and `saga.policy.presets` the
one place a preset is named; code anywhere else that tests ``name == "walru"`` or
``preset in ("saga", "llumnix")`` (or ``case "fcfs":``) is a second, silent copy of that
mapping. An AST walk over every module of every package and the CLI (generated ``_proto`` code
aside) finds each comparison — ``==``, ``!=``, ``in``, ``not in``, and ``match`` case patterns —
of a string literal, or a tuple/list/set holding one, that is a registered name of one of
``registry.LAYERS`` or a key of ``PRESETS``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from saga.policy import registry
from saga.policy.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = ("packages/saga-policy/src/saga/policy/registry.py",
           "packages/saga-policy/src/saga/policy/presets.py")
COMPARE_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def policy_names() -> frozenset[str]:
    """Every registered name of every object layer, and every preset's name."""
    names = {n for layer in registry.LAYERS for n in registry.names(layer)}
    return frozenset(names | set(PRESETS))


def sources() -> list[Path]:
    """Every product module: packages' ``src`` trees and the CLI, generated code aside."""
    files = sorted([*ROOT.glob("packages/*/src/**/*.py"), *ROOT.glob("src/**/*.py")])
    return [f for f in files if "_proto" not in f.parts]


def _named(node: ast.AST, names: frozenset[str]) -> list[str]:
    """The policy names ``node`` spells: a string literal, or a tuple/list/set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in names else []
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [n for elt in node.elts for n in _named(elt, names)]
    return []


def _pattern_names(pattern: ast.pattern, names: frozenset[str]) -> list[str]:
    if isinstance(pattern, ast.MatchValue):
        return _named(pattern.value, names)
    if isinstance(pattern, ast.MatchOr):
        return [n for p in pattern.patterns for n in _pattern_names(p, names)]
    if isinstance(pattern, ast.MatchAs) and pattern.pattern is not None:
        return _pattern_names(pattern.pattern, names)
    return []


def comparisons(tree: ast.AST, names: frozenset[str]) -> list[tuple[int, str]]:
    """``(line, name)`` of each comparison of a policy name in ``tree``."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, COMPARE_OPS) for op in node.ops):
            for side in (node.left, *node.comparators):
                out += [(node.lineno, n) for n in _named(side, names)]
        elif isinstance(node, ast.match_case):
            out += [(node.pattern.lineno, n) for n in _pattern_names(node.pattern, names)]
    return out


def test_the_walk_finds_every_form() -> None:
    """The walk itself: each form is caught, unrelated strings and other operators are not."""
    names = frozenset({"walru", "fcfs", "saga"})
    code = ('if name == "walru": pass\n'
            'if "fcfs" != q: pass\n'
            'if p in ("saga", "other"): pass\n'
            'if p not in {"x", "fcfs"}: pass\n'
            'match p:\n'
            '    case "walru" | "y":\n'
            '        pass\n'
            '    case ("z" as w):\n'
            '        pass\n'
            'if name == "lru_cache" or name < "walru" or name is "fcfs": pass\n'
            'x = {"walru": 1}\n')
    found = comparisons(ast.parse(code), names)
    assert found == [(1, "walru"), (2, "fcfs"), (3, "saga"), (4, "fcfs"), (6, "walru")], found


def test_the_names_are_the_registry_and_the_presets() -> None:
    names = policy_names()
    assert {"walru", "fcfs", "affinity", "work_stealer", "afs", "tool_call"} <= names
    assert set(PRESETS) <= names and len(names) > 30


def test_no_policy_name_is_compared_outside_the_registry_and_presets() -> None:
    names = policy_names()
    files = sources()
    assert len(files) > 50 and any(f.name == "simulator.py" for f in files)
    offenders: list[str] = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        for line, name in sorted(comparisons(ast.parse(path.read_text(), rel), names)):
            offenders.append(f"{rel}:{line} compares against {name!r}")
    assert offenders == [], ("look the name up in saga.policy.registry (or ask the policy "
                             "object) instead of comparing it:\n" + "\n".join(offenders))
