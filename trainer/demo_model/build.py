"""Build (train and save) the demo base chat model, cached by its configuration and seed.

`build_demo_model` generates the synthetic corpus, trains a byte-level BPE tokenizer on it,
then trains a small `LlamaForCausalLM` from scratch with the loss on assistant tokens only.
The result is a Hugging Face model folder (float32 safetensors, tokenizer with chat template)
that both `transformers` and vLLM load. It lives in ``<home>/models/<variant>-<key>``, where
the key hashes the configuration, the seed and the corpus/build versions: a second call with
the same arguments returns the cached folder. Folders are written under a temporary name and
renamed into place, so a crashed or concurrent build never leaves a half-written model.

A build is deterministic for a seed on one machine (same bytes twice); CPUs with other vector
units or other thread counts may round differently, which the cache key does not capture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainer.demo_model.corpus import CORPUS_VERSION, Dialogue, generate_dialogues
from trainer.demo_model.tokenizer import train_tokenizer
from trainer.tokens import length_grouped_batches, pad_right

BUILD_VERSION = 3
"""Bump whenever the training procedure changes, so cached models are rebuilt."""

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (prompt and padding), as Hugging Face models expect."""
_GROUP_BATCHES = 16
"""Batches per window of samples sorted by length (see `_length_grouped_batches`)."""

Sample = tuple[list[int], list[int]]
"""(input_ids, labels) of one tokenised dialogue."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoModelConfig:
    """Architecture, corpus and training budget of one demo model variant."""

    name: str
    """Variant name; the first part of the model folder's name."""
    vocab_size: int
    """BPE vocabulary size, special tokens included."""
    hidden_size: int
    num_layers: int
    num_heads: int
    """Attention heads; hidden_size / num_heads must be a multiple of 32 (vLLM CPU attention)."""
    intermediate_size: int
    """SwiGLU width; about 8/3 of hidden_size, as in Llama."""
    max_position_embeddings: int
    """Longest sequence the model (and vLLM's --max-model-len) supports."""
    corpus_size: int
    """Dialogues generated for the tokenizer and the training set."""
    train_steps: int
    batch_size: int
    """Dialogues per optimiser step."""
    learning_rate: float
    """Peak AdamW learning rate: linear warm-up, then cosine decay to 10 % of it."""
    warmup_steps: int
    weight_decay: float = 0.01
    log_every: int = 50
    """Steps between progress log lines (excluded from the cache key)."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.head_dim % 32:
            raise ValueError(
                f"head_dim={self.head_dim} (hidden_size={self.hidden_size} / "
                f"num_heads={self.num_heads}) must be a multiple of 32: vLLM's CPU attention "
                "rejects smaller head sizes such as 16; use 64"
            )
        if self.corpus_size < self.batch_size:
            raise ValueError(
                f"corpus_size={self.corpus_size} must be at least batch_size={self.batch_size}"
            )
        if not 0 <= self.warmup_steps < self.train_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must be in [0, train_steps={self.train_steps})"
            )

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.num_heads

    def cache_key(self, seed: int) -> str:
        """Short hash of everything that determines the built model's bytes."""
        fields = dataclasses.asdict(self)
        del fields["log_every"]
        identity = {"config": fields, "seed": seed, "corpus_version": CORPUS_VERSION,
                    "build_version": BUILD_VERSION}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


# Budgets measured on 2 AVX2 cores without other load: ~14,000 trained tokens/s for tiny; demo's
# 2,300 steps train ~2.4M tokens (corpus 4, ~66 tokens per dialogue) in about 5 minutes (322 s
# measured, the loss taken on reply tokens only: `reply_loss`). Within the same 5 minutes a
# narrower model that sees more tokens answers more on topic: 256 wide for 900 steps (1e-3), 38 %
# of held-out answers at temperature 1; 192 wide for 1,400 steps (2e-3), 46 %; 128 wide for
# 2,000 steps (3e-3), 46 %, with the broadest mix of styles; the same on corpus 4 for 2,300 steps,
# 51 % (BENCHMARKS.md, *The demo model on topic*). Learning rates: for 256 wide a sweep of 5e-4,
# 1e-3, 2e-3, 4e-3; the narrower ones were tried at one rate each; tiny: 2e-3, 4e-3. Small
# batches learn more per token here.
VARIANTS: dict[str, DemoModelConfig] = {
    config.name: config
    for config in (
        # The service's default base model: about 5 minutes to build (301 s measured).
        DemoModelConfig(
            name="demo", vocab_size=2048, hidden_size=128, num_layers=4, num_heads=2,
            intermediate_size=344, max_position_embeddings=1024, corpus_size=20_000,
            train_steps=2300, batch_size=16, learning_rate=3e-3, warmup_steps=30,
        ),
        # For tests: about 40 seconds to build.
        DemoModelConfig(
            name="tiny", vocab_size=1024, hidden_size=128, num_layers=2, num_heads=2,
            intermediate_size=344, max_position_embeddings=512, corpus_size=5_000,
            train_steps=400, batch_size=16, learning_rate=4e-3, warmup_steps=30,
        ),
    )
}


def build_demo_model(variant: str = "demo", seed: int = 0, *, home: Path) -> Path:
    """Return the folder of the `variant` demo model for `seed`, building it if not cached.

    `home` is the hhh home folder ($HHH_HOME); the model goes to ``home/models/<variant>-<key>``.
    """
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown demo model variant {variant!r}; choose one of {sorted(VARIANTS)}"
        )
    return build_model(VARIANTS[variant], seed, home=home)


def build_model(config: DemoModelConfig, seed: int, *, home: Path) -> Path:
    """Return the folder of the model described by `config` and `seed`, building it if needed."""
    models_dir = Path(home) / "models"
    final_dir = models_dir / f"{config.name}-{config.cache_key(seed)}"
    if final_dir.is_dir():
        logger.info("demo model %s is cached at %s", config.name, final_dir)
        return final_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = models_dir / f".tmp-{final_dir.name}-{uuid.uuid4().hex[:8]}"
    try:
        _build_into(config, seed, tmp_dir)
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            if not final_dir.is_dir():
                raise
            logger.info("a concurrent build already wrote %s; keeping that one", final_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return final_dir


def _build_into(config: DemoModelConfig, seed: int, out_dir: Path) -> None:
    started = time.monotonic()
    dialogues = generate_dialogues(config.corpus_size, seed=seed)
    tokenizer = train_tokenizer(dialogues, config.vocab_size, config.max_position_embeddings)
    logger.info("trained a %d-token BPE tokenizer on %d dialogues", len(tokenizer), len(dialogues))

    samples = _encode(dialogues, tokenizer, config.max_position_embeddings)
    # Seed the initialisation without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(_llama_config(config, tokenizer))
    logger.info("training %s (%.2fM parameters) for %d steps", config.name,
                sum(p.numel() for p in model.parameters()) / 1e6, config.train_steps)
    final_loss = _train(model, samples, tokenizer.pad_token_id, config, seed)

    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {"variant": config.name, "seed": seed, "cache_key": config.cache_key(seed),
            "config": dataclasses.asdict(config), "corpus_version": CORPUS_VERSION,
            "build_version": BUILD_VERSION, "final_loss": final_loss,
            "build_seconds": round(time.monotonic() - started, 1)}
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("built %s in %.0f s (final loss %.3f)", config.name, info["build_seconds"],
                final_loss)


def _llama_config(config: DemoModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )


def _encode(
    dialogues: list[Dialogue], tokenizer: PreTrainedTokenizerFast, max_length: int
) -> list[Sample]:
    """Tokenise each dialogue as (input_ids, labels) with labels only on the reply and EOS.

    Prompt and reply are tokenised separately, exactly as at inference time, where the server
    encodes the templated prompt and the model continues it.
    """
    samples = []
    for dialogue in dialogues:
        prompt = tokenizer.apply_chat_template(
            list(dialogue.messages), tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        reply_ids = tokenizer(dialogue.response, add_special_tokens=False).input_ids
        reply_ids.append(tokenizer.eos_token_id)
        input_ids = (prompt_ids + reply_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + reply_ids)[:max_length]
        samples.append((input_ids, labels))
    return samples


def _train(
    model: LlamaForCausalLM,
    samples: list[Sample],
    pad_id: int,
    config: DemoModelConfig,
    seed: int,
) -> float:
    """Train `model` in place; return the mean loss over the last logging window."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    model.train()
    window: list[float] = []
    tokens = 0
    started = time.monotonic()
    batches = _length_grouped_batches(samples, config.batch_size, generator)
    for step in range(1, config.train_steps + 1):
        input_ids, labels, attention_mask = _collate(next(batches), pad_id)
        loss = reply_loss(model, input_ids, labels, attention_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        tokens += int(attention_mask.sum())
        if step % config.log_every == 0 or step == config.train_steps:
            logger.info("step %d/%d loss %.3f lr %.2e %.0f tok/s", step, config.train_steps,
                        sum(window) / len(window), scheduler.get_last_lr()[0],
                        tokens / (time.monotonic() - started))
            final_loss = sum(window) / len(window)
            window.clear()
    model.eval()
    return final_loss


def reply_loss(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens, with logits only where needed.

    ``h = model.model(input_ids)`` is (B, T, H); the positions t < T - 1 whose next label
    ``labels[:, t + 1]`` is not `IGNORE_INDEX` (N of them: the reply and its EOS) go through the
    language-model head, (N, H) -> (N, V), and the loss is ``mean_n -log softmax(logits_n)[y_n]``
    with ``y_n = labels[:, t + 1]``. The value is that of ``model(..., labels=labels).loss``; the
    difference is cost: the prompt and padding (about 40 % of positions) never reach the
    (H x V) head or the softmax over the vocabulary.
    """
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    labelled = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][labelled])
    return torch.nn.functional.cross_entropy(logits.float(), targets[labelled])


def _length_grouped_batches(
    samples: list[Sample], batch_size: int, generator: torch.Generator
) -> Iterator[list[Sample]]:
    """Shuffled batches forever, each drawn from samples of similar length (`length_grouped_batches`:
    lengths range from about 20 to 250 tokens, and padding a random batch to its longest sample
    would double the compute)."""
    while True:
        for rows in length_grouped_batches(len(samples), lambda i: len(samples[i][0]), batch_size,
                                           generator, window_batches=_GROUP_BATCHES):
            yield [samples[i] for i in rows]


def _collate(batch: list[Sample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad a batch: (B, T) input ids, labels (padding ignored) and attention mask."""
    input_ids, attention_mask = pad_right([ids for ids, _ in batch], pad_id)
    labels, _ = pad_right([labels for _, labels in batch], IGNORE_INDEX)
    return input_ids, labels, attention_mask


def _lr_factor(step: int, config: DemoModelConfig) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / (config.train_steps - config.warmup_steps)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
