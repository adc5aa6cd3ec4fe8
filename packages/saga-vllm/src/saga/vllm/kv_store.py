"""A node-local KV block store shared by the engines of one node: files keyed by block hash.

Why files: every engine on the node reads the same directory, a saved block outlives the engine
that saved it (a session whose home engine died still finds its prefix), and the page cache
keeps recently saved blocks in DRAM, so a load on the same node is a memory copy. Entries are
content-addressed by vLLM's own prefix-cache block hash (chained over the tokens before it,
the LoRA and the ``cache_salt``, so a tenant never reads another's blocks), inside a namespace
directory per model layout, so engines of different models never mix.

One file per block, all layers in it: ``MAGIC``, a 4-byte header length, a JSON header
(``shape``, ``dtype``, ``crc32`` of the payload) and the raw payload. Writes go to a temporary
name and are renamed into place, so a reader sees a whole entry or none; a torn or corrupted
entry fails its checksum on load, is removed, and the block is recomputed.

Size cap: :func:`sweep_store` keeps the whole store under a byte budget by deleting the entries
used longest ago first (a load refreshes an entry's modification time, since ``relatime`` mounts
do not keep access times); :class:`StoreSweeper` runs it on a daemon thread every few seconds in
each engine's scheduler process, off the step loop. Several engines sweeping one store is safe:
an entry deleted under a reader fails its load and the block is recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saga.policy.errors import SagaError

__all__ = ["CONNECTOR_MODULE", "CONNECTOR_NAME", "DEFAULT_MAX_BYTES", "LOAD_PARAM", "MAGIC",
           "SAVE_PARAM", "BlockEntry", "KVBlockStore", "StoreError", "StoreSweeper", "Swept",
           "kv_transfer_config", "namespace", "sweep_store"]

log = logging.getLogger("saga.vllm.kv")

CONNECTOR_NAME = "SagaKVStoreConnector"
CONNECTOR_MODULE = "saga.vllm.kv_connector"
LOAD_PARAM = "saga_load"
"""``kv_transfer_params`` key: true asks the engine to load the request's stored prefix."""
SAVE_PARAM = "saga_save"
"""``kv_transfer_params`` key: false keeps a request's blocks out of the store."""

MAGIC = b"SAGAKV1\n"
_LEN = struct.Struct("<I")
_MAX_HEADER = 4096
DEFAULT_MAX_BYTES = 4 * 2**30
"""The store's default size cap (``--kv-store-max-gb 4``)."""
LOW_WATER = 0.9
"""A sweep over the cap deletes down to this share of it, so the next one has room to spare."""
STALE_TMP_S = 600.0
"""A temporary file this old was left by a writer that died: swept too."""


def kv_transfer_config(store_dir: str, max_bytes: int | None = None) -> dict[str, Any]:
    """The ``--kv-transfer-config`` of an engine that saves to and loads from ``store_dir``
    (a failed load is recomputed, never an error), capped at ``max_bytes`` (None: no cap)."""
    extra: dict[str, Any] = {"store_dir": store_dir}
    if max_bytes is not None:
        extra["max_bytes"] = int(max_bytes)
    return {"kv_connector": CONNECTOR_NAME, "kv_connector_module_path": CONNECTOR_MODULE,
            "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": extra}


class StoreError(SagaError):
    """An entry is missing, unreadable or corrupted (the block is recomputed instead)."""


@dataclass(frozen=True)
class BlockEntry:
    """One block's KV, every layer in one contiguous payload."""

    shape: tuple[int, ...]
    dtype: str
    payload: bytes


def namespace(*parts: object) -> str:
    """A short stable name for a model layout (model, dtype, block size, layer shapes)."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class KVBlockStore:
    """Save and load block entries under ``root/namespace``; safe for concurrent engines."""

    def __init__(self, root: str | os.PathLike[str], space: str) -> None:
        self.dir = Path(root) / space

    def path(self, key: bytes) -> Path:
        h = key.hex()
        return self.dir / h[:2] / f"{h}.kv"

    def has(self, key: bytes) -> bool:
        """Whether an entry exists (a missing or unreadable store has none)."""
        try:
            return self.path(key).is_file()
        except OSError:
            return False

    def save(self, key: bytes, entry: BlockEntry) -> bool:
        """Write ``entry`` unless one exists; False when it already did."""
        final = self.path(key)
        if final.is_file():
            return False
        header = json.dumps({"shape": list(entry.shape), "dtype": entry.dtype,
                             "crc32": zlib.crc32(entry.payload),
                             "bytes": len(entry.payload)}).encode()
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC + _LEN.pack(len(header)) + header)
            f.write(entry.payload)
        os.replace(tmp, final)
        return True

    def load(self, key: bytes) -> BlockEntry:
        """Read and check one entry; a bad one is removed and raises :class:`StoreError`."""
        where = self.path(key)
        try:
            raw = where.read_bytes()
        except OSError as exc:
            raise StoreError(f"{where}: {exc.strerror or exc}") from None
        try:
            entry = _decode(raw)
        except StoreError as exc:
            where.unlink(missing_ok=True)
            raise StoreError(f"{where}: {exc}") from None
        with contextlib.suppress(OSError):  # swept meanwhile: the entry read is whole
            os.utime(where)  # used now: the size cap deletes it last
        return entry


@dataclass(frozen=True)
class Swept:
    """One sweep: bytes and entries the store holds after it, entries and bytes it deleted."""

    kept_bytes: int
    kept: int
    removed: int
    removed_bytes: int


def _entries(root: Path, now: float) -> tuple[list[tuple[float, int, str]], list[str]]:
    """Every entry under ``root`` as (last used, bytes, path), and stale temporary files."""
    found: list[tuple[float, int, str]] = []
    stale: list[str] = []
    stack = [os.fspath(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.name.endswith(".kv"):
                            st = e.stat(follow_symlinks=False)
                            found.append((st.st_mtime, st.st_size, e.path))
                        elif e.name.endswith(".tmp") and \
                                now - e.stat(follow_symlinks=False).st_mtime > STALE_TMP_S:
                            stale.append(e.path)
                    except OSError:
                        continue  # deleted by another engine's sweep meanwhile
        except OSError:
            continue
    return found, stale


def sweep_store(root: str | os.PathLike[str], max_bytes: int,
                low_water: float = LOW_WATER) -> Swept:
    """Keep the store under ``root`` (every namespace) within ``max_bytes``: past it, delete
    the entries used longest ago until ``low_water`` of the cap is left."""
    if max_bytes < 0 or not 0 < low_water <= 1:
        raise ValueError(f"need max_bytes >= 0 and 0 < low_water <= 1, got {max_bytes}, "
                         f"{low_water}")
    found, stale = _entries(Path(root), time.time())
    for path in stale:
        with contextlib.suppress(OSError):  # another engine's sweep was first
            os.unlink(path)
    total = sum(size for _, size, _ in found)
    removed = removed_bytes = 0
    if total > max_bytes:
        goal = int(max_bytes * low_water)
        found.sort()
        for _, size, path in found:
            if total <= goal:
                break
            with contextlib.suppress(OSError):  # another engine's sweep was first
                os.unlink(path)
                removed_bytes += size
                removed += 1
            total -= size
    return Swept(total, len(found) - removed, removed, removed_bytes)


class StoreSweeper:
    """Runs :func:`sweep_store` every ``period_s`` seconds on a daemon thread (the engine's
    step loop never waits for it); ``stop`` ends it."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int,
                 period_s: float = 5.0) -> None:
        if max_bytes < 0 or not period_s > 0:
            raise ValueError(f"need max_bytes >= 0 and period_s > 0, got {max_bytes}, "
                             f"{period_s}")
        self.root, self.max_bytes, self.period_s = Path(root), max_bytes, period_s
        self.sweeps = 0
        self.removed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="saga-kv-sweeper", daemon=True)

    def start(self) -> StoreSweeper:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                swept = sweep_store(self.root, self.max_bytes)
            except Exception:  # a sweep bug must not end the engine
                log.exception("KV store: sweeping %s failed", self.root)
                continue
            self.sweeps += 1
            self.removed += swept.removed
            if swept.removed:
                log.info("KV store: deleted %d entries (%d bytes) used longest ago; %d bytes "
                         "kept (cap %d)", swept.removed, swept.removed_bytes, swept.kept_bytes,
                         self.max_bytes)


def _decode(raw: bytes) -> BlockEntry:
    head = len(MAGIC) + _LEN.size
    if len(raw) < head or not raw.startswith(MAGIC):
        raise StoreError("not a SAGA KV block entry")
    (n,) = _LEN.unpack_from(raw, len(MAGIC))
    if n > _MAX_HEADER or head + n > len(raw):
        raise StoreError("truncated header")
    try:
        meta = json.loads(raw[head:head + n])
        shape = tuple(int(d) for d in meta["shape"])
        dtype, crc, size = str(meta["dtype"]), int(meta["crc32"]), int(meta["bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"bad header ({exc})") from None
    payload = raw[head + n:]
    if len(payload) != size or zlib.crc32(payload) != crc:
        raise StoreError("payload does not match its checksum (torn or corrupted)")
    return BlockEntry(shape, dtype, payload)
