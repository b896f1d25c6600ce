"""The scoring API the PPO trainer calls: normalised rewards of (prompt, completion) pairs.

    scorer = RewardScorer.from_store(RewardSettings())               # its own copy of the base
    scorer = RewardScorer.from_store(settings, share_base_with=policy)  # policy: a PeftModel
    rewards = scorer.score(prompts_messages, completions)             # (B,) float32

Rewards are normalised with the version's ``Normalisation`` (mean 0, std 1 over the
completions it was trained on), so the PPO reward scale does not change between versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from trainer.config import RewardSettings
from trainer.devices import CPU, Placement
from trainer.reward.model import Message, RewardModel, encode
from trainer.tokens import load_tokenizer
from trainer.reward.train import rewards_of
from trainer.reward.versions import Normalisation, RewardModelStore


class RewardScorer:
    """Scores completions with one stored reward-model version."""

    def __init__(
        self,
        model: RewardModel,
        tokenizer: PreTrainedTokenizerBase,
        normalisation: Normalisation,
        *,
        version: int,
        max_length: int,
        batch_size: int = 32,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.normalisation = normalisation
        self.version = version
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def from_store(
        cls,
        settings: RewardSettings,
        version: int | None = None,
        *,
        share_base_with: PeftModel | None = None,
        placement: Placement = CPU,
    ) -> RewardScorer:
        """The stored ``version`` (default: the latest). With ``share_base_with``, its adapter is
        loaded into that PeftModel (which must hold the same base model) instead of a new copy,
        on that model's device; otherwise the copy goes to ``placement``."""
        store = RewardModelStore(settings.store_dir)
        version = version if version is not None else store.latest()
        if version is None:
            raise ValueError(
                f"no reward model in {settings.store_dir}; run `hhh train reward` first"
            )
        manifest = store.manifest(version)
        folder, model_path = store.path(version), Path(manifest.model_path)
        if share_base_with is not None:
            if manifest.kind != "value_head":
                raise ValueError(f"reward model version {version} is a {manifest.kind}; only a "
                                 "value_head reward model can share the policy's base weights")
            model = RewardModel.attach(share_base_with, folder)
        else:
            model = RewardModel.load(folder, model_path, manifest.kind, trainable=False, placement=placement)
        return cls(model, load_tokenizer(model_path, padding_side="right"), manifest.normalisation,
                   version=version, max_length=manifest.training.max_length)

    def score(
        self, prompts_messages: Sequence[Sequence[Message]], completions: Sequence[str]
    ) -> torch.Tensor:
        """(B,) normalised rewards of ``completions[i]`` as replies to ``prompts_messages[i]``."""
        if len(prompts_messages) != len(completions):
            raise ValueError(f"{len(prompts_messages)} prompts but {len(completions)} completions; "
                             "give one prompt per completion")
        sequences = [encode(self.tokenizer, messages, completion, self.max_length)
                     for messages, completion in zip(prompts_messages, completions, strict=True)]
        raw = rewards_of(self.model, sequences, self.tokenizer.pad_token_id, self.batch_size)
        return self.normalisation.apply(raw)
