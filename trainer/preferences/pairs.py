"""From rankings and thumbs to weighted (winner, loser) pairs: the course's recipe, made precise.

Rankings. A ranking of n usable completions, as tie groups best first, gives every
(winner, loser) pair across groups: C(n, 2) pairs minus the pairs inside tie groups.
Completions flagged unusable are removed before pairing.

Thumbs. For one prompt and criterion, each completion gets the majority of its raters' latest
votes (up − down); every completion with a positive majority × every completion with a
negative one is a pair. A zero majority gives no pair.

Several labelers on one prompt. Each labeler's ranking is read as pairwise judgements
(a > b, b > a, or a tie). Per unordered pair the consensus is the **weighted majority** of
the labelers' judgements; the pair's weight is the majority's margin, |w(a>b) − w(b>a)| /
Σ w, so a 3–0 pair weighs 1 and a 2–1 pair 1/3; an even split gives no pair. Why majority
and not a Bradley–Terry or ranked-pairs aggregate: prompts carry few labelers (1–5) over few
completions, where a global aggregate mostly re-derives the per-pair majority while hiding how
contested each pair was; per-pair margins are exactly what the weighted reward loss consumes.

Labeler quality. Each labeler's agreement is the share of their judgements on pairs that
other labelers also judged which match the others' weighted consensus (leave-one-out).
Pairs on which the others are split say nothing about a labeler and are not counted.
A labeler below ``min_agreement`` (with enough overlap to tell) is down-weighted to their
agreement, and the consensus is recomputed — the course's labeler who misread the
instructions then barely moves the data. Overall agreement is reported as Krippendorff's
alpha (nominal; values a>b / b>a / tie per pair) and as raw pairwise agreement.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

PREFERRED, REVERSED, TIE = 1, -1, 0
"""A judgement on an ordered pair (a, b) with a < b: a preferred, b preferred, or a tie."""


def thumbs_pairs(votes: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Pairs from thumbs on one prompt: ``votes`` maps completion id -> its raters' votes."""
    balance = {cid: marks.count("up") - marks.count("down") for cid, marks in votes.items()}
    ups = sorted(cid for cid, score in balance.items() if score > 0)
    downs = sorted(cid for cid, score in balance.items() if score < 0)
    return [(up, down) for up in ups for down in downs]


@dataclass(frozen=True)
class Judgement:
    """One labeler's ranking of one prompt's completions under one criterion."""

    prompt_id: str
    criterion: str
    labeler_id: str
    groups: tuple[tuple[str, ...], ...]
    """Tie groups, best first, unusable completions already removed."""

    def pairwise(self) -> dict[tuple[str, str], int]:
        """The judgement on every ordered pair (a, b), a < b, of completions it ranks."""
        position = {cid: rank for rank, group in enumerate(self.groups) for cid in group}
        return {
            (a, b): TIE if position[a] == position[b] else (PREFERRED if position[a] < position[b] else REVERSED)
            for a, b in combinations(sorted(position), 2)
        }


@dataclass(frozen=True)
class ConsensusPair:
    """A consensus preference: ``winner`` over ``loser``, with its weight and supporters."""

    prompt_id: str
    criterion: str
    winner: str
    loser: str
    weight: float
    labelers: tuple[str, ...]


@dataclass
class Consensus:
    """The merged pairs, and how much the labelers agreed."""

    pairs: list[ConsensusPair]
    labeler_agreement: dict[str, float] = field(default_factory=dict)
    """Leave-one-out agreement per labeler (labelers with no overlap are absent)."""
    labeler_weight: dict[str, float] = field(default_factory=dict)
    krippendorff_alpha: float | None = None
    pairwise_agreement: float | None = None


Unit = tuple[str, str, str, str]
"""(prompt id, criterion, a, b) with a < b: one pairwise question."""


def merge_judgements(
    judgements: Sequence[Judgement], *, min_agreement: float = 0.6, min_overlap: int = 3
) -> Consensus:
    """Weighted-majority consensus per pair, with labeler agreement and down-weighting."""
    votes: dict[Unit, dict[str, int]] = defaultdict(dict)
    for judgement in judgements:
        for (a, b), value in judgement.pairwise().items():
            votes[(judgement.prompt_id, judgement.criterion, a, b)][judgement.labeler_id] = value

    agreement = _leave_one_out_agreement(votes)
    weights = {
        labeler: (1.0 if score >= min_agreement or _overlap(votes, labeler) < min_overlap else score)
        for labeler, score in agreement.items()
    }
    pairs = []
    for (prompt_id, criterion, a, b), by_labeler in sorted(votes.items()):
        for_a, for_b, total = _tally(by_labeler, weights)
        if total <= 0 or for_a == for_b:
            continue
        winner, loser, side = (a, b, PREFERRED) if for_a > for_b else (b, a, REVERSED)
        supporters = tuple(sorted(l for l, value in by_labeler.items() if value == side))
        pairs.append(ConsensusPair(prompt_id, criterion, winner, loser, abs(for_a - for_b) / total, supporters))
    return Consensus(
        pairs=pairs,
        labeler_agreement=agreement,
        labeler_weight=weights,
        krippendorff_alpha=krippendorff_alpha_nominal(list(votes.values())),
        pairwise_agreement=_pairwise_agreement(list(votes.values())),
    )


def _tally(by_labeler: dict[str, int], weights: dict[str, float]) -> tuple[float, float, float]:
    """Weighted votes for a, for b, and the total weight (ties count in the total)."""
    for_a = sum(weights.get(l, 1.0) for l, value in by_labeler.items() if value == PREFERRED)
    for_b = sum(weights.get(l, 1.0) for l, value in by_labeler.items() if value == REVERSED)
    return for_a, for_b, sum(weights.get(l, 1.0) for l in by_labeler)


def _leave_one_out_agreement(votes: dict[Unit, dict[str, int]]) -> dict[str, float]:
    """Each labeler's share of judgements matching the (unweighted) majority of the others."""
    agree: dict[str, int] = defaultdict(int)
    judged: dict[str, int] = defaultdict(int)
    for by_labeler in votes.values():
        if len(by_labeler) < 2:
            continue
        for labeler, value in by_labeler.items():
            others = {l: v for l, v in by_labeler.items() if l != labeler}
            for_a, for_b, _ = _tally(others, {})
            if for_a == for_b and set(others.values()) != {TIE}:
                continue  # the others are split: no consensus to agree or disagree with
            consensus = PREFERRED if for_a > for_b else REVERSED if for_b > for_a else TIE
            judged[labeler] += 1
            agree[labeler] += int(value == consensus)
    return {labeler: agree[labeler] / judged[labeler] for labeler in judged}


def _overlap(votes: dict[Unit, dict[str, int]], labeler: str) -> int:
    return sum(1 for by_labeler in votes.values() if labeler in by_labeler and len(by_labeler) > 1)


def _pairwise_agreement(units: list[dict[str, int]]) -> float | None:
    """The share of labeler pairs, over units judged by two or more, that gave the same value."""
    same = total = 0
    for by_labeler in units:
        for x, y in combinations(list(by_labeler.values()), 2):
            same += int(x == y)
            total += 1
    return same / total if total else None


def krippendorff_alpha_nominal(units: list[dict[str, int]]) -> float | None:
    """Krippendorff's alpha for nominal values (Krippendorff 2011, "Computing Krippendorff's α").

    α = 1 − D_o / D_e with the coincidence matrix o_ck = Σ_u (number of c–k value pairs in
    unit u) / (m_u − 1) over units with m_u ≥ 2 values, n_c = Σ_k o_ck, n = Σ_c n_c:
    D_o = Σ_{c≠k} o_ck / n and D_e = Σ_{c≠k} n_c n_k / (n (n − 1)).
    ``None`` when fewer than two values are pairable or every value is the same category.
    """
    coincidences: dict[tuple[int, int], float] = defaultdict(float)
    for by_labeler in units:
        values = list(by_labeler.values())
        if len(values) < 2:
            continue
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    coincidences[(c, k)] += 1 / (len(values) - 1)
    totals: dict[int, float] = defaultdict(float)
    for (c, _), count in coincidences.items():
        totals[c] += count
    n = sum(totals.values())
    if n < 2:
        return None
    observed = sum(count for (c, k), count in coincidences.items() if c != k) / n
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k) / (n * (n - 1))
    if expected == 0:
        return None
    return 1 - observed / expected
