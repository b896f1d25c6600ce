"""Rollouts through a vLLM engine: the in-training policy adapter, sampled by vLLM.

Each call saves the policy adapter, loads it into the engine under a fresh versioned name
(``<prefix>-v<n>``: never reloaded in place under one name, where vLLM could serve stale
prefix-cache blocks of the previous weights), samples one response per prompt from the
chat-templated prompt token ids, then unloads it and deletes the folder. Only token ids come
back; the trainer recomputes every log-probability itself (`PolicyStack.policy_outputs`), so
what the engine reports is never trusted.

The engine must serve the policy's base model with LoRA and runtime LoRA loading on
(``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, ``--max-lora-rank`` at least the adapter's rank), and
read the same filesystem as the trainer.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import torch

from trainer.rl.models import PolicyStack
from trainer.rl.rollout import Conversation, Rollout, assemble_rollout, encode_prompts
from trainer.tokens import pad_right


class VLLMRolloutSampler:
    """Samples rollouts of a `PolicyStack`'s policy adapter through the vLLM server at ``engine_url``."""

    def __init__(self, engine_url: str, *, name_prefix: str = "hhh-rollout", timeout_s: float = 600.0) -> None:
        self.engine_url = engine_url.rstrip("/")
        self.name_prefix = f"{name_prefix}-{uuid.uuid4().hex[:8]}"
        """Unique per sampler, so that several trainers can share one engine."""
        self.versions_loaded = 0
        self._client = httpx.Client(base_url=self.engine_url, timeout=timeout_s)

    def __call__(
        self,
        stack: PolicyStack,
        prompts: Sequence[Conversation],
        *,
        max_new_tokens: int,
        temperature: float,
        max_prompt_tokens: int,
    ) -> Rollout:
        """One sampled response per prompt (pure sampling at ``temperature``), like `sample_rollout`."""
        tokenizer = stack.tokenizer
        prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, max_prompt_tokens)
        self.versions_loaded += 1
        name = f"{self.name_prefix}-v{self.versions_loaded}"
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as folder:
            stack.save_policy(Path(folder))
            self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": folder})
            try:
                choices = self._post("/v1/completions", {
                    "model": name,
                    "prompt": [row[row_mask.bool()].tolist() for row, row_mask in zip(prompt_ids, prompt_mask)],
                    # No seed: one seed per request would give every prompt of the batch the same
                    # random stream, correlating the samples PPO needs to be independent.
                    # Every sampling option explicit: the engine would otherwise apply the model
                    # folder's generation_config.json defaults (a repetition penalty, say), and the
                    # tokens would not come from the distribution the trainer scores.
                    "max_tokens": max_new_tokens, "temperature": temperature, "top_p": 1.0, "top_k": 0,
                    "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                    "frequency_penalty": 0.0, "min_tokens": 0, "return_token_ids": True,
                })["choices"]
            finally:
                self._post("/v1/unload_lora_adapter", {"lora_name": name})
        ordered = sorted(choices, key=lambda choice: choice["index"])
        response_ids, mask = _pad_responses([c["token_ids"] for c in ordered],
                                            [c["finish_reason"] == "stop" for c in ordered],
                                            tokenizer.eos_token_id, tokenizer.pad_token_id)
        return assemble_rollout(tokenizer, prompts, prompt_ids, prompt_mask, response_ids, mask)

    def _post(self, path: str, body: dict) -> dict:
        response = self._client.post(path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"the rollout engine at {self.engine_url} answered {path} with "
                               f"{response.status_code}: {response.text[:500]}")
        return response.json() if response.headers.get("content-type", "").startswith("application/json") else {}


def _pad_responses(
    sampled: list[list[int]], stopped: list[bool], eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) right-padded response ids and their float mask. A response that stopped on EOS
    ends with it (added where the engine left it out), so the policy's stopping is trained too."""
    rows = [ids + [eos_id] if stop and (not ids or ids[-1] != eos_id) else ids
            for ids, stop in zip(sampled, stopped)]
    response_ids, mask = pad_right(rows, pad_id)
    return response_ids, mask.float()
