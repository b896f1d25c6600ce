"""The trainer: feedback to preference pairs, reward model, PPO on LoRA adapters; the demo model."""
