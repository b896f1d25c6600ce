"""`hhh data stats`: what the dataset holds, as plain-text tables."""

from __future__ import annotations

from collections import Counter

from trainer.preferences.store import PairSet
from trainer.preferences.voices import voice_shares

TOP_VOICES = 5
"""Voices listed per split by their share of the weight."""


def format_stats(pair_set: PairSet) -> str:
    """Pairs by source, criterion and split; the largest voices; agreement overall and per
    labeler; what was dropped."""
    lines = ["pairs by source, criterion and split:"]
    counts = Counter((p.source, p.criterion, p.split) for p in pair_set.pairs)
    lines += [f"  {source:<8} {criterion:<14} {split:<5} {count:>7}"
              for (source, criterion, split), count in sorted(counts.items())] or ["  (none)"]
    lines.append(f"  total {len(pair_set.pairs)}, of which for one user's adapter "
                 f"{sum(p.user_id is not None for p in pair_set.pairs)}")
    for split in ("train", "eval"):
        shares = voice_shares([p for p in pair_set.pairs if p.split == split])
        if shares:
            largest = sorted(shares.items(), key=lambda item: (-item[1], item[0]))[:TOP_VOICES]
            lines.append(f"largest voices in {split} (share of the weight, of {len(shares)}; "
                         "HHH_TRAINER_MAX_VOICE_SHARE caps it): "
                         + ", ".join(f"{voice or '(unknown)'} {share:.1%}"
                                     for voice, share in largest))
            if scaled := pair_set.scaled_voices.get(split):
                lines.append("  scaled down to the cap: " + ", ".join(
                    f"{voice or '(unknown)'} × {factor:.2f}"
                    for voice, factor in sorted(scaled.items())))
    consensus = pair_set.consensus
    alpha, agreement = consensus.krippendorff_alpha, consensus.pairwise_agreement
    lines.append("labeler agreement: "
                 f"Krippendorff's alpha {'n/a' if alpha is None else f'{alpha:.3f}'}, "
                 f"pairwise {'n/a' if agreement is None else f'{agreement:.1%}'}")
    if consensus.labeler_agreement:
        lines.append(f"  {'labeler':<20} {'agreement':>9} {'weight':>6}")
        for labeler, score in sorted(consensus.labeler_agreement.items(), key=lambda item: item[1]):
            lines.append(f"  {labeler:<20} {score:>9.1%} {consensus.labeler_weight[labeler]:>6.2f}")
    if pair_set.skipped:
        lines.append("dropped: " + ", ".join(f"{reason} {n}" for reason, n in sorted(pair_set.skipped.items())))
    return "\n".join(lines)
