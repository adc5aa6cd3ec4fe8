"""vLLM general plugin: runs in every vLLM process (engine core too) once saga-vllm is installed."""

from __future__ import annotations


def register() -> None:
    """Nothing global to patch: SAGA is selected per engine through ``scheduler_cls``."""
