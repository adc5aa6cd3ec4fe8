"""vLLM general plugin: runs in every vLLM process (engine core too) once saga-vllm is installed."""

from __future__ import annotations


def register() -> None:
    """Register SAGA's WA-LRU policy for vLLM's CPU offloading tier under ``"saga_walru"``.

    The scheduler itself is chosen per engine through ``scheduler_cls``; nothing else is patched.
    """
    from saga.vllm.offload import register_cache_policy

    register_cache_policy()
