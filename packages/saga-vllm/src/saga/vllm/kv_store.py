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
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CONNECTOR_MODULE", "CONNECTOR_NAME", "LOAD_PARAM", "MAGIC", "SAVE_PARAM",
           "BlockEntry", "KVBlockStore", "StoreError", "kv_transfer_config", "namespace"]

CONNECTOR_NAME = "SagaKVStoreConnector"
CONNECTOR_MODULE = "saga.vllm.kv_connector"
LOAD_PARAM = "saga_load"
"""``kv_transfer_params`` key: true asks the engine to load the request's stored prefix."""
SAVE_PARAM = "saga_save"
"""``kv_transfer_params`` key: false keeps a request's blocks out of the store."""

MAGIC = b"SAGAKV1\n"
_LEN = struct.Struct("<I")
_MAX_HEADER = 4096


def kv_transfer_config(store_dir: str) -> dict[str, Any]:
    """The ``--kv-transfer-config`` of an engine that saves to and loads from ``store_dir``
    (a failed load is recomputed, never an error)."""
    return {"kv_connector": CONNECTOR_NAME, "kv_connector_module_path": CONNECTOR_MODULE,
            "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"store_dir": store_dir}}


class StoreError(Exception):
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
            return _decode(raw)
        except StoreError as exc:
            where.unlink(missing_ok=True)
            raise StoreError(f"{where}: {exc}") from None


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
