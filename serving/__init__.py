"""Serving: the OpenAI-compatible gateway, feedback endpoints, adapter routing, vLLM engines."""
