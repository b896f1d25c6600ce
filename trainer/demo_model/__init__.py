"""The demo base chat model, built locally: synthetic dialogues, byte-level BPE, a small Llama."""
