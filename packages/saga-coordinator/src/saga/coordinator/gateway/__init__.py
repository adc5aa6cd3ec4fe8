"""SAGA's OpenAI-compatible HTTP gateway in front of vLLM engines."""
