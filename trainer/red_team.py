"""The red team: harmful (or harm-probing) requests on which the gate checks that a candidate
adapter stays as harmless as the deployed one (`trainer.gate`, check 5).

The reward model learns what most feedback rewards; when everyday prompts dominate, "refusing
is bad" can outweigh "refuse requests to harm others", and PPO then trades harmlessness away
for helpfulness. A separate check on separate prompts, by a judge that is not the reward model,
keeps that from being published. The prompts, in this order, without duplicates, at most
``red_team_max_prompts``:

1. the configured file (``HHH_GATE_RED_TEAM_FILE``): one user message per line, or JSONL with
   ``{"messages": [...]}`` or ``{"prompt": "..."}`` per line;
2. the demo corpus's harmful requests (``HHH_GATE_RED_TEAM_DEMO``, on by default): every
   phrasing of every harmful intent, training and held out, with held-out slot values;
3. held-out prompts (the dataset's eval split) that users gave feedback on with the
   ``harmlessness`` criterion, most recent first.

The training side of the same remedy: `with_harmful_share` repeats PPO's harm-probing prompts
(training-split prompts with ``harmlessness`` feedback, or that the harmlessness judge groups as
``harmful``) until they make up ``HHH_PPO_HARMFUL_SHARE`` of the prompts PPO samples from, so
that the harm term (`trainer.judges.penalise_harm`) weighs in on more than the few harmful
requests users happen to send (the course's balanced sampling of harmful prompts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from common.errors import UserError
from trainer.config import GateSettings
from trainer.demo_model.intents import INTENTS
from trainer.preferences.store import DatasetStore
from trainer.rl.rollout import Conversation

HARMLESSNESS = "harmlessness"
"""The feedback criterion whose prompts join the red team."""


def red_team_prompts(settings: GateSettings, dataset: DatasetStore | None, *, eval_percent: int) -> list[Conversation]:
    """The red team (module docstring)."""
    prompts: list[Conversation] = []
    if settings.red_team_file is not None:
        prompts += read_red_team_file(settings.red_team_file)
    if settings.red_team_demo:
        prompts += [[{"role": "user", "content": text}] for text in demo_harmful_requests()]
    if dataset is not None:
        prompts += dataset.prompts("eval", eval_percent=eval_percent, limit=settings.red_team_max_prompts,
                                   criterion=HARMLESSNESS)
    unique = {json.dumps(p, sort_keys=True): p for p in reversed(prompts)}  # the first occurrence wins
    return list(reversed(unique.values()))[: settings.red_team_max_prompts]


def with_harmful_share(
    pool: Sequence[Conversation], harmful: Sequence[Conversation], share: float
) -> list[Conversation]:
    """``pool`` with prompts of ``harmful`` appended (in turn, each as often as the others give
    or take one) until the pool's harm-probing prompts are at least ``share`` of it.

    ``harmful``: the harm-probing prompts to repeat (those of the pool among them, the others
    too); a pool prompt counts as harm-probing if it is in ``harmful``. With H harm-probing
    prompts among N, ⌈(share · N − H) / (1 − share)⌉ are appended, so that
    (H + k) / (N + k) ≥ share; none when the share is met already, ``share`` is 0, or
    ``harmful`` is empty. PPO draws its batches from the result without replacement, so a
    repeated prompt is sampled again, with a fresh response, within one pass.
    """
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    if not harmful:
        return list(pool)
    probing = {json.dumps(p, sort_keys=True) for p in harmful}
    present = sum(json.dumps(p, sort_keys=True) in probing for p in pool)
    missing = max(0, math.ceil((share * len(pool) - present) / (1 - share) - 1e-9))
    return [*pool, *(harmful[i % len(harmful)] for i in range(missing))]


def harm_probing(prompts: Sequence[Conversation], dataset: DatasetStore | None,
                 group_of: Callable[[Conversation], str], *, eval_percent: int) -> list[Conversation]:
    """The prompts of ``prompts`` that probe for harm, in their order: those with feedback on the
    ``harmlessness`` criterion in ``dataset`` (training split), and those the harmlessness
    judge's ``group_of`` calls ``harmful``."""
    flagged = [] if dataset is None else dataset.prompts(
        "train", eval_percent=eval_percent, limit=2**62, criterion=HARMLESSNESS)
    marked = {json.dumps(p, sort_keys=True) for p in flagged}
    return [p for p in prompts if json.dumps(p, sort_keys=True) in marked or group_of(p) == "harmful"]


def demo_harmful_requests() -> list[str]:
    """Every phrasing of the demo corpus's harmful intents, slots filled with held-out values."""
    return [template.format(**{name: slot.heldout[0] for name, slot in intent.slots.items()})
            for intent in INTENTS if intent.category == "harmful"
            for template in (*intent.phrasings, *intent.heldout_phrasings)]


def read_red_team_file(path: Path) -> list[Conversation]:
    """Prompts from a text or JSONL file (module docstring); a clear error for a bad line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the red-team file {path} (HHH_GATE_RED_TEAM_FILE): {error}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if not text.startswith("{"):
            prompts.append([{"role": "user", "content": text}])
            continue
        try:
            entry = json.loads(text)
            messages = entry["messages"] if "messages" in entry else [{"role": "user", "content": entry["prompt"]}]
            if not (isinstance(messages, list) and messages and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages)):
                raise ValueError("messages must be a non-empty list of {role, content} strings")
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path}:{number}: not a red-team prompt ({error}); write one user message "
                            'per line, or {"messages": [...]} or {"prompt": "..."}') from None
        prompts.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return prompts
