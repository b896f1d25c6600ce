"""No voice outweighs the rest: the cap on each labeler's and user's share of the weight."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tests.trainer.preferences.test_store import completion, records, vote
from trainer.preferences.report import format_stats
from trainer.preferences.store import DatasetStore, PreferencePair, Vote
from trainer.preferences.voices import cap_factors, cap_voices, voice_shares
from trainer.reward.loss import PointwiseRewardLoss


def pair(labelers: tuple[str, ...], weight: float = 1.0, split: str = "train") -> PreferencePair:
    user = labelers[0] if len(labelers) == 1 else None
    return PreferencePair("p", "overall", "a", "b", weight, "thumbs", user, labelers, split)


@pytest.mark.parametrize("seed", range(5))
def test_no_voice_exceeds_the_cap_and_weights_only_shrink(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        voices = rng.randint(1, 12)
        share = rng.choice([0.1, 0.2, 0.5, 1.0])
        totals = {f"v{i}": rng.expovariate(1) * rng.choice([1, 10, 100]) for i in range(voices)}
        factors = cap_factors(totals, share)
        capped = {v: totals[v] * factors[v] for v in totals}
        cap = max(share, 1 / voices)
        assert all(0 < f <= 1 for f in factors.values())
        assert max(capped.values()) / sum(capped.values()) <= cap + 1e-9
        # the voices scaled down all end at one total; below the cap nothing changes
        scaled = [capped[v] for v in totals if factors[v] < 1]
        assert not scaled or max(scaled) - min(scaled) <= 1e-9 * max(scaled)
        if max(totals.values()) <= cap * sum(totals.values()):
            assert set(factors.values()) == {1.0}


def test_a_flooding_user_is_cut_to_the_cap_and_the_others_keep_their_weights() -> None:
    pairs = [pair(("flood",)) for _ in range(100)] + [pair((f"u{i}",)) for i in range(8)] * 2
    assert voice_shares(pairs)["flood"] == pytest.approx(100 / 116)  # what an uncapped flood holds
    capped = cap_voices(pairs, 0.2)
    shares = voice_shares(capped)
    assert shares["flood"] == pytest.approx(0.2)
    assert all(p.weight == 1.0 for p in capped if p.labelers != ("flood",))
    assert cap_voices(pairs, 1.0) == pairs


def test_a_pair_of_several_voices_shares_its_weight_and_splits_are_capped_apart() -> None:
    held_out = [pair(("flood",), split="eval")] * 3 + [pair(("ann",), split="eval")] * 3
    train = [pair(("flood", "ann"))] * 50 + [pair((f"u{i}",)) for i in range(9)]
    capped = cap_voices(train + held_out, 0.2)
    # a cross-user pair of flood and ann counts half for each: both at the cap, 0.2 each
    shares = voice_shares([p for p in capped if p.split == "train"])
    assert shares["flood"] == pytest.approx(0.2) and shares["ann"] == pytest.approx(0.2)
    # held out: two voices, equal already (with fewer than 1 / share voices, all weigh the same)
    assert [p.weight for p in capped if p.split == "eval"] == [1.0] * 6


def test_the_store_caps_a_flooding_users_pairs_and_votes(tmp_path: Path) -> None:
    """One user votes on 30 prompts, five others on one each: uncapped, the one holds 30 of 35."""
    store = DatasetStore(tmp_path / "dataset.db")
    events = []
    for i in range(30):
        events += [completion(f"f{i}a", prompt=f"f{i}", user="flood"),
                   completion(f"f{i}b", prompt=f"f{i}", user="flood"),
                   vote(f"f{i}a", True, i, user="flood"), vote(f"f{i}b", False, i, user="flood")]
    for user in ("ann", "bob", "cal", "dan", "eve"):
        events += [completion(f"{user}a", prompt=user, user=user),
                   completion(f"{user}b", prompt=user, user=user),
                   vote(f"{user}a", False, 40, user=user), vote(f"{user}b", True, 41, user=user)]
    store.apply(records(*events))
    uncapped = store.build_pairs(eval_percent=0).pairs
    assert voice_shares(uncapped)["flood"] == pytest.approx(30 / 35)
    built = store.build_pairs(eval_percent=0, max_voice_share=0.2)
    pairs = built.pairs
    assert {split: list(scaled) for split, scaled in built.scaled_voices.items()} == {"train": ["flood"]}
    assert "scaled down to the cap: flood × " in format_stats(built)
    votes = store.votes(eval_percent=0, max_voice_share=0.2)
    assert voice_shares(pairs)["flood"] == pytest.approx(0.2)
    assert voice_shares(votes)["flood"] == pytest.approx(0.2)
    assert {p.weight for p in pairs if p.user_id != "flood"} == {1.0}
    assert len(pairs) == len(uncapped)  # nothing dropped: the flood's pairs weigh less


def test_vote_weights_weigh_the_pointwise_loss() -> None:
    loss = PointwiseRewardLoss()
    rewards, up = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    weighted = loss(rewards, up, torch.tensor([1.0, 1.0, 0.0]))
    assert weighted.item() == pytest.approx(loss(rewards[:2], up[:2]).item())
    assert loss(rewards, up, torch.ones(3)).item() == pytest.approx(loss(rewards, up).item())
    with pytest.raises(ValueError, match="weight"):
        loss(rewards, up, torch.ones(2))


def test_a_vote_is_one_voice_its_user() -> None:
    votes = [Vote("p", "overall", f"c{i}", "flood", True, "train") for i in range(9)]
    votes.append(Vote("p", "overall", "c", "ann", False, "train"))
    # two voices: below 1 / share, so they weigh the same
    assert voice_shares(cap_voices(votes, 0.2)) == pytest.approx({"flood": 0.5, "ann": 0.5})
