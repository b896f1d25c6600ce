"""RLHF training: PPO against the deployed adapter, DPO for per-user adapters.

The math lives in small torch-only modules (`masked`, `advantages`, `kl`, `losses`) that import
nothing else from the project; the trainers (`ppo`, `dpo`) put them together with the models
(`models`), rollouts (`rollout`) and the run record (`record`).
"""
