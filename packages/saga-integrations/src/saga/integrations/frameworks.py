"""Which agent frameworks are installed, in which versions, and whether an adapter can attach.

Nothing here imports a framework unless asked (`require`, `framework_status(..., probe=True)`),
so `import saga.integrations` stays free of them. The supported ranges match the extras of
this package's pyproject: `attach()` refuses a version outside them with the fix to apply.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata

from saga.integrations.errors import FrameworkNotInstalledError, IntegrationError

__all__ = ["FRAMEWORKS", "Framework", "FrameworkStatus", "framework_status", "require"]


@dataclass(frozen=True)
class Framework:
    """One supported framework: its extra, the distributions the adapter needs with their
    supported version range ``[low, high)``, and the modules `attach()` imports."""

    name: str
    extra: str
    requires: tuple[tuple[str, str, str], ...]
    modules: tuple[str, ...]

    @property
    def install_hint(self) -> str:
        """The command that installs what the adapter needs."""
        return f"pip install 'saga-integrations[{self.extra}]'"


FRAMEWORKS: dict[str, Framework] = {
    "langchain": Framework(
        "langchain", "langchain",
        (("langchain-core", "1.0", "2"), ("langchain", "1.0", "2")),
        ("langchain_core.callbacks", "langchain_core.messages")),
    "autogen": Framework(
        "autogen", "autogen",
        (("autogen-agentchat", "0.7.5", "0.8"), ("autogen-core", "0.7.5", "0.8")),
        ("autogen_agentchat.messages", "autogen_core.models")),
    "crewai": Framework(
        "crewai", "crewai",
        (("crewai", "1.6.1", "2"),),
        ("crewai.events",)),
}
"""The frameworks with an adapter, by name."""


@dataclass(frozen=True)
class FrameworkStatus:
    """What `saga integrations check` reports for one framework."""

    name: str
    extra: str
    versions: dict[str, str | None]
    supported: dict[str, str]
    attachable: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {"name": self.name, "extra": self.extra, "versions": dict(self.versions),
                "supported": dict(self.supported), "attachable": self.attachable,
                "reason": self.reason}


def _version_key(version: str) -> tuple[int, ...]:
    """Leading numeric release parts (``1.6.1rc2`` → (1, 6, 1)); enough for our ranges."""
    parts: list[int] = []
    for piece in version.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def in_range(version: str, low: str, high: str) -> bool:
    """``low <= version < high`` by release numbers."""
    v = _version_key(version)
    return _version_key(low) <= v < _version_key(high)


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _get(name: str) -> Framework:
    fw = FRAMEWORKS.get(name)
    if fw is None:
        raise IntegrationError(f"unknown framework {name!r}; known: {sorted(FRAMEWORKS)}")
    return fw


def framework_status(name: str, *, probe: bool = True) -> FrameworkStatus:
    """Installed versions of ``name``'s distributions and whether its adapter can attach
    (``probe``: also import the modules `attach()` needs, which catches broken installs)."""
    fw = _get(name)
    versions = {dist: _installed(dist) for dist, _, _ in fw.requires}
    supported = {dist: f">={low},<{high}" for dist, low, high in fw.requires}
    problems: list[str] = []
    for dist, low, high in fw.requires:
        v = versions[dist]
        if v is None:
            problems.append(f"{dist} is not installed")
        elif not in_range(v, low, high):
            problems.append(f"{dist} {v} is outside the supported {supported[dist]}")
    if not problems and probe:
        for module in fw.modules:
            try:
                importlib.import_module(module)
            except Exception as exc:  # a broken install may raise anything on import
                problems.append(f"import {module} failed: {type(exc).__name__}: {exc}")
                break
    if problems:
        return FrameworkStatus(name, fw.extra, versions, supported, False,
                               "; ".join(problems) + f" — {fw.install_hint}")
    return FrameworkStatus(name, fw.extra, versions, supported, True, "ok")


def require(name: str) -> None:
    """Raise `FrameworkNotInstalledError` (naming the extra to install) unless ``name``'s
    adapter can attach."""
    status = framework_status(name, probe=True)
    if not status.attachable:
        raise FrameworkNotInstalledError(
            f"the {name} adapter cannot attach: {status.reason}")
