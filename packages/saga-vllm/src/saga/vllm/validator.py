"""`SagaMetadataValidator`: malformed SAGA metadata rejected at admission, in the front end.

An exception in the engine core's ``add_request`` would kill a multiprocess engine, so bad
metadata must be stopped before it gets there. vLLM calls ``validate_params`` of every
configured logits processor for each request in the front-end process; a ``ValueError`` there
becomes a per-request error (HTTP 400 on the OpenAI server) and the engine keeps serving.
"""

from __future__ import annotations

from typing import Any

from saga.vllm.metadata import parse_saga_meta
from vllm.sampling_params import SamplingParams
from vllm.v1.sample.logits_processor import LogitsProcessor


class SagaMetadataValidator(LogitsProcessor):  # type: ignore[misc]
    """Rejects malformed ``extra_args["saga"]`` at admission; leaves logits untouched."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Raise :class:`SagaMetadataError` (a ``ValueError``) naming the bad field."""
        parse_saga_meta(sampling_params.extra_args)

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        """Nothing to set up: the processor only validates."""

    def apply(self, logits: Any) -> Any:
        """Identity."""
        return logits

    def is_argmax_invariant(self) -> bool:
        """Never changes greedy results."""
        return True

    def update_state(self, batch_update: Any) -> None:
        """No per-request state."""


VALIDATOR_CLS = "saga.vllm.scheduler:SagaMetadataValidator"
"""How vLLM's ``logits_processors`` option names the validator (the scheduler module re-exports
it, so the name engines were configured with keeps working)."""

__all__ = ["VALIDATOR_CLS", "SagaMetadataValidator"]
