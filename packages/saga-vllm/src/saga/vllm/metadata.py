"""Per-request SAGA metadata carried in ``SamplingParams.extra_args``: the engine's side.

vLLM forwards ``extra_args`` untouched from the API (``vllm_xargs`` on the OpenAI server) to the
engine core's ``Request.sampling_params``, so it is the one place a caller can hand the scheduler
workflow facts (session, tenant, pending tool) without patching vLLM. The schema is saga-aeg's
:class:`saga.aeg.metadata.RequestMetadata` (the one saga-integrations' adapters build); this
module gives it the engine's names. A request without SAGA keys is a plain request; a malformed
one raises :class:`SagaMetadataError` (a ``ValueError``) naming the field, so callers see what
to fix instead of a silently mis-scheduled request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saga.aeg.metadata import FLAT_PREFIX, SAGA_KEY, MetadataError, RequestMetadata

SagaRequestMeta = RequestMetadata
"""The engine's name for :class:`saga.aeg.metadata.RequestMetadata` (the same class)."""

SagaMetadataError = MetadataError
"""The engine's name for :class:`saga.aeg.metadata.MetadataError` (the same class)."""


def parse_saga_meta(extra_args: Mapping[str, Any] | None) -> RequestMetadata | None:
    """Read ``extra_args``: None when it carries no SAGA metadata (a plain request), else the
    typed metadata from ``extra_args["saga"]`` or the flat ``saga_<field>`` keys.

    Raises :class:`SagaMetadataError` when the metadata is not a dict, has unknown keys (likely
    typos), lacks ``session_id``, gives both forms or has a field that breaks a rule.
    """
    return RequestMetadata.from_extra_args(extra_args)


def saga_extra_args(meta: RequestMetadata, base: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """``extra_args`` carrying ``meta`` (merged over ``base``); defaults are omitted."""
    return meta.extra_args(base)


def saga_vllm_xargs(meta: RequestMetadata) -> dict[str, Any]:
    """``meta`` in the flat form for the OpenAI server's ``vllm_xargs`` (``saga_<field>`` keys)."""
    return meta.vllm_xargs()


__all__ = [
    "FLAT_PREFIX",
    "SAGA_KEY",
    "SagaMetadataError",
    "SagaRequestMeta",
    "parse_saga_meta",
    "saga_extra_args",
    "saga_vllm_xargs",
]
