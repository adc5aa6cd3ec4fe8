"""saga-vllm: SAGA inside a real vLLM V1 engine."""
