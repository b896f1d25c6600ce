"""Versioned LoRA adapters: the store, publishing, the hot-swap controller, admin API and CLI."""
