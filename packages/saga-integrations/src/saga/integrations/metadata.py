"""The per-request metadata an adapter hands the serving engine.

The schema, its rules and its encodings (``extra_args()`` for an in-process engine,
``vllm_xargs()`` / ``openai_extra_body()`` for vLLM's OpenAI server) are saga-aeg's
:class:`saga.aeg.metadata.RequestMetadata`, the same class SAGA's vLLM scheduler parses with, so
whatever an adapter builds the engine reads back as the equal object. The adapters must not
import the engine package; both depend on saga-aeg. Re-exported here for the adapters' users.
"""

from __future__ import annotations

from saga.aeg.metadata import (
    DEFAULT_TENANT,
    FLAT_PREFIX,
    SAGA_KEY,
    MetadataError,
    RequestMetadata,
)

__all__ = ["DEFAULT_TENANT", "FLAT_PREFIX", "SAGA_KEY", "MetadataError", "RequestMetadata"]
