"""The whole test run in a private network namespace: loopback is the only interface.

Tests may send traffic only to loopback. Ray's processes talk over the node's interface address
(Ray replaces a loopback node address by the routable one), so the run moves itself, before any
test or worker process starts, into a network namespace of its own with only ``lo`` up: every
child (Ray, vLLM, pytest-xdist workers) inherits it and no packet can leave the machine.

``SAGA_TEST_NETNS`` tells the tests where they run: ``private`` (the namespace above),
``unavailable: <why>`` (the machine refused one: no root and no user namespaces) or ``off``
(set by hand: stay in the machine's namespace). Tests that start Ray skip unless ``private``.

With pytest-xdist (``-n auto --dist loadfile`` in pyproject.toml) the run's test files are shared
out to one worker per core, a file at a time (a file's engines and Ray session are built once).
Two rules make that safe and short (:class:`_Scheduling`): every file that starts Ray runs in one
worker, one after another (two Ray clusters in one namespace stall each other), and the longest
files are handed out first, so no worker is left with a long file at the end: the Ray files,
then the files that start real vLLM engines, then the rest in collection order. A file starts
Ray when its name has ``ray`` or ``cluster`` in it; one that starts vLLM, ``vllm``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections import OrderedDict
from typing import Any

NETNS_ENV = "SAGA_TEST_NETNS"
_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def enter_private_netns() -> str:
    """Move this process into a new network namespace with only ``lo`` up; returns the value of
    ``SAGA_TEST_NETNS`` (``private``, or ``unavailable: <why>``)."""
    uid, gid = os.getuid(), os.getgid()
    try:
        try:
            _unshare(_CLONE_NEWNET)
        except OSError as exc:
            if exc.errno != errno.EPERM:
                raise
            # Not root: a user namespace (as its root) holding the network namespace.
            _unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
        _loopback_up()
    except OSError as exc:
        return f"unavailable: cannot create a network namespace ({exc})"
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"]:
        return f"unavailable: the namespace has interfaces {names}, not only lo"
    return "private"


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _weight(scope: str) -> int:
    """Hand-out order of a work unit: lower first."""
    name = scope.rsplit("/", 1)[-1]
    if scope == RAY_GROUP:
        return 0
    return 1 if "vllm" in name else 2


RAY_GROUP = "<files that start Ray>"


class _LongestFirst(OrderedDict[str, Any]):
    """xdist's work queue, handing out the unit of lowest :func:`_weight` first (in collection
    order among equals)."""

    def popitem(self, last: bool = True) -> tuple[str, Any]:
        if last:
            return super().popitem(last=True)
        scope = min(self, key=_weight)
        return scope, self.pop(scope)


def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class _Scheduling(LoadScopeScheduling):  # type: ignore[misc]
        """``loadfile`` with the Ray files as one unit and the longest units first."""

        def __init__(self, config: Any, log: Any = None) -> None:
            super().__init__(config, log)
            # Collection order among equals (xdist would sort units by their number of tests):
            # test_vllm_0_offload_engine.py must be the first engine module of its worker.
            config.option.loadscopereorder = False
            self.workqueue = _LongestFirst()

        def _split_scope(self, nodeid: str) -> str:
            path = _file_of(nodeid)
            name = path.rsplit("/", 1)[-1]
            return RAY_GROUP if ("ray" in name or "cluster" in name) else path

    return _Scheduling(config, log)


def pytest_configure(config: object) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get(NETNS_ENV, "") == "off":
        return  # a worker inherits the namespace of the run that started it
    if os.environ.get(NETNS_ENV, "") != "private":
        os.environ[NETNS_ENV] = enter_private_netns()


def pytest_report_header(config: object) -> str:
    return f"network namespace: {os.environ.get(NETNS_ENV, 'off')}"
