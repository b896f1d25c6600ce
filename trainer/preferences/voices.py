"""No one voice outweighs the rest: each labeler's or user's share of the evidence is capped.

A *voice* is whoever judged: a pair's ``labelers`` (a user's own thumbs, a ranking's labelers, the
users behind a cross-user thumbs pair), a vote's user. Without a cap a pair is a pair whoever made
it, so one tireless labeler, or one user flooding thumbs, sets what the global reward model and
the gate's human-pair check learn for everyone: in the closed loop (BENCHMARKS.md) one labeler
gave 45 % of the training weight, against 4 % for each user of the majority.

**The rule.** A pair of weight w judged by k labelers gives each of them w / k; a voice's total is
T_v. With V voices and ``max_share`` s, let the cap be c = max(s, 1 / V) (below 1 / V no cap can
hold: then every voice weighs the same). The voices above the cap are scaled down, each by its
own factor f_v = C / T_v, to the common total C that solves
C = c · (Σ_{T_u ≤ C} T_u + n_C · C), n_C the number of capped voices (water-filling); every
other voice keeps f_v = 1. So after capping no voice holds
more than c of the total, weights only ever shrink (a light voice is never amplified, which would
multiply its noise), and a pair's new weight is w · mean_{l ∈ labelers} f_l. With s = 1 nothing
changes. Each split (training, held out) is capped on its own: they are separate samples.

Consumers normalise by the total weight (the reward loss, DPO, the gate's weighted shares and
bounds: `trainer.stats.weighted_lower_bound` uses Kish's effective sample size), so only the
voices' relative weights matter. Capping lowers that effective sample size when one voice held
most of the weight: the honest price of not letting it speak for everyone.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # the store caps its own pairs and votes with this module
    from trainer.preferences.store import PreferencePair, Vote

Weighted = TypeVar("Weighted", "PreferencePair", "Vote")


def cap_factors(totals: dict[str, float], max_share: float) -> dict[str, float]:
    """Each voice's factor f_v in (0, 1] so that no voice holds more than max(s, 1 / V) of the
    capped total (module docstring). ``totals`` maps voice -> T_v > 0."""
    if not 0 < max_share <= 1:
        raise ValueError(f"max_share={max_share} must be in (0, 1]")
    if not totals:
        return {}
    cap = max(max_share, 1 / len(totals))
    ascending = sorted(totals.values())
    # Try capping the n largest voices, n = 0, 1, ...: C solves C = cap · (uncapped + n · C).
    uncapped = sum(ascending)
    for n in range(len(ascending) + 1):
        if n:
            uncapped -= ascending[-n]
        if n == len(ascending) or cap * n >= 1:  # every voice capped: all equal (cap = 1 / V)
            ceiling = ascending[0]
            break
        ceiling = cap * uncapped / (1 - cap * n)
        largest_uncapped = ascending[-n - 1] if n < len(ascending) else 0.0
        if largest_uncapped <= ceiling:
            break
    return {voice: min(1.0, ceiling / total) for voice, total in totals.items()}


def cap_voices(items: Sequence[Weighted], max_share: float) -> list[Weighted]:
    """``items`` (pairs or votes) with their weights capped per voice, split by split."""
    factors = scaled_voices(items, max_share)
    capped = list(items)
    for i, item in enumerate(items):
        scaled = factors.get(item.split, {})
        voices = _voices(item)
        factor = sum(scaled.get(v, 1.0) for v in voices) / len(voices)
        if factor != 1.0:
            capped[i] = dataclasses.replace(item, weight=item.weight * factor)
    return capped


def scaled_voices(items: Sequence[Weighted], max_share: float) -> dict[str, dict[str, float]]:
    """split -> voice -> its factor f_v < 1, for the voices that the cap scales down."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for item in items:
        voices = _voices(item)
        for voice in voices:
            totals[item.split][voice] += item.weight / len(voices)
    factors = {split: cap_factors({v: t for v, t in by_voice.items() if t > 0}, max_share)
               for split, by_voice in totals.items()}
    return {split: {v: f for v, f in by_voice.items() if f < 1}
            for split, by_voice in factors.items() if any(f < 1 for f in by_voice.values())}


def voice_shares(items: Sequence[Weighted]) -> dict[str, float]:
    """Each voice's share of the items' total weight (a pair's weight split among its labelers)."""
    totals: dict[str, float] = defaultdict(float)
    for item in items:
        voices = _voices(item)
        for voice in voices:
            totals[voice] += item.weight / len(voices)
    whole = sum(totals.values())
    return {voice: total / whole for voice, total in totals.items()} if whole else {}


def _voices(item: PreferencePair | Vote) -> tuple[str, ...]:
    """A pair's labelers, a vote's user."""
    labelers = getattr(item, "labelers", None)
    if labelers is None:
        return (item.user_id,)
    return labelers or ("",)
