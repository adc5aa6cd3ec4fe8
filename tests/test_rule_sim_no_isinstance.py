"""The simulator never asks which policy class it holds.

The simulator takes a `PolicyBundle` and drives every layer through the capabilities the
policies share (``Router.reassign``, ``TTLPolicy.return_eta``, ``EvictionPolicy.reads_hints``,
...). An ``isinstance(obj, WALRUPolicy)`` in it would be a policy's behaviour copied outside
the policy, which the next policy silently lacks. An AST walk over ``saga/bench/sim/`` finds
each ``isinstance``/``issubclass`` call whose class (a name, an attribute, or a tuple of them,
through import aliases) is a policy class: one registered in `saga.policy.registry`, a base of
one defined in saga-policy, or a subclass of ``EvictionPolicy``, ``RequestQueue``, ``Router``,
``TTLPolicy`` or any of those.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import saga.policy
from saga.policy import registry
from saga.policy.eviction import EvictionPolicy
from saga.policy.queueing import RequestQueue
from saga.policy.routing import Router
from saga.policy.ttl import TTLPolicy

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "packages/saga-bench/src/saga/bench/sim"


def _registered() -> set[type]:
    """The class behind each registry entry (a factory may be a classmethod of it)."""
    out: set[type] = set()
    for layer in registry.LAYERS:
        for name in registry.names(layer):
            f = registry.factory(layer, name)
            cls = f if isinstance(f, type) else getattr(f, "__self__", None)
            assert isinstance(cls, type), f"{layer} {name}: cannot tell the class of {f!r}"
            out.add(cls)
    return out


def policy_classes() -> set[str]:
    """Names of every saga-policy policy class (see the module docstring)."""
    for info in pkgutil.walk_packages(saga.policy.__path__, prefix="saga.policy."):
        importlib.import_module(info.name)  # so that __subclasses__ sees every class
    roots = _registered() | {EvictionPolicy, RequestQueue, Router, TTLPolicy}
    classes = {base for cls in roots for base in cls.__mro__
               if base.__module__.startswith("saga.policy")}
    todo: list[type] = list(classes)
    while todo:
        subs: list[type] = todo.pop().__subclasses__()
        for sub in subs:
            if sub not in classes:
                classes.add(sub)
                todo.append(sub)
    return {c.__name__ for c in classes}


def _class_names(node: ast.expr, aliases: dict[str, str]) -> list[str]:
    if isinstance(node, ast.Tuple):
        return [n for elt in node.elts for n in _class_names(elt, aliases)]
    if isinstance(node, ast.Name):
        return [aliases.get(node.id, node.id)]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    return []


def type_checks(tree: ast.AST, classes: set[str]) -> list[tuple[int, str]]:
    """``(line, class)`` of each isinstance/issubclass against one of ``classes``."""
    aliases = {a.asname: a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for a in node.names if a.asname}
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2):
            out += [(node.lineno, c) for c in _class_names(node.args[1], aliases)
                    if c in classes]
    return out


def test_the_policy_classes_are_found() -> None:
    classes = policy_classes()
    assert {"WALRUPolicy", "BeladyPolicy", "HybridQueue", "ATLAS", "AffinityRouter",
            "RouterEvents", "ToolCallTTL", "FixedTTL", "WorkStealer", "AFS",
            "EvictionPolicy", "RequestQueue", "Router", "TTLPolicy"} <= classes
    assert "CacheManager" not in classes and "PolicyBundle" not in classes


def test_the_walk_finds_every_form() -> None:
    code = ("from saga.policy.eviction import WALRUPolicy as W\n"
            "import saga.policy.ttl as ttl\n"
            "isinstance(p, W)\n"
            "isinstance(t, ttl.ToolCallTTL)\n"
            "isinstance(q, (int, HybridQueue))\n"
            "issubclass(c, AffinityRouter)\n"
            "isinstance(x, dict)\n")
    found = type_checks(ast.parse(code), policy_classes())
    assert sorted(found) == [(3, "WALRUPolicy"), (4, "ToolCallTTL"), (5, "HybridQueue"),
                             (6, "AffinityRouter")], found


def test_the_simulator_never_checks_a_policy_class() -> None:
    classes = policy_classes()
    files = sorted(SIM.rglob("*.py"))
    assert any(f.name == "simulator.py" for f in files)
    offenders = [f"{path.relative_to(ROOT).as_posix()}:{line} isinstance against {cls}"
                 for path in files
                 for line, cls in sorted(type_checks(ast.parse(path.read_text()), classes))]
    assert offenders == [], ("ask the policy (a capability on its interface) instead of "
                             "checking its class:\n" + "\n".join(offenders))
