"""Pairs from rankings and thumbs, and the multi-labeler consensus."""

from __future__ import annotations

from math import comb

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainer.preferences.pairs import (
    Judgement,
    krippendorff_alpha_nominal,
    merge_judgements,
    thumbs_pairs,
)


def one_labelers_pairs(*groups: list[str]) -> list[tuple[str, str]]:
    """(winner, loser) pairs the consensus makes of one labeler's ranking (tie groups, best
    first): the path every ranking takes into the dataset; each pair weighs 1."""
    consensus = merge_judgements([Judgement("p", "helpfulness", "ann", tuple(tuple(g) for g in groups))])
    assert all(p.weight == 1.0 and p.labelers == ("ann",) for p in consensus.pairs)
    return [(p.winner, p.loser) for p in consensus.pairs]


def test_a_ranking_without_ties_gives_all_n_choose_2_pairs() -> None:
    pairs = one_labelers_pairs(["a"], ["b"], ["c"], ["d"])
    assert len(pairs) == comb(4, 2) == 6
    assert ("a", "d") in pairs and ("d", "a") not in pairs


def test_tied_completions_give_no_pair_between_them() -> None:
    assert sorted(one_labelers_pairs(["a"], ["b", "c"], ["d"])) == [
        ("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")
    ]


def test_the_winner_is_the_better_ranked_whichever_id_sorts_first() -> None:
    assert sorted(one_labelers_pairs(["z"], ["a"], ["m"])) == [("a", "m"), ("z", "a"), ("z", "m")]


@given(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=6))
def test_pair_count_is_n_choose_2_minus_the_ties(group_sizes: list[int]) -> None:
    ids = iter(range(100))
    groups = [[f"c{next(ids)}" for _ in range(size)] for size in group_sizes]
    n = sum(group_sizes)
    pairs = one_labelers_pairs(*groups)
    assert len(pairs) == comb(n, 2) - sum(comb(size, 2) for size in group_sizes)
    assert len(set(pairs)) == len(pairs)
    rank = {cid: position for position, group in enumerate(groups) for cid in group}
    assert all(rank[winner] < rank[loser] for winner, loser in pairs)


def test_thumbs_pair_every_up_with_every_down_by_majority() -> None:
    votes = {"a": ["up"], "b": ["up", "up", "down"], "c": ["down"], "d": ["up", "down"], "e": ["down"]}
    assert thumbs_pairs(votes) == [("a", "c"), ("a", "e"), ("b", "c"), ("b", "e")]
    assert thumbs_pairs({"a": ["up"], "b": ["up"]}) == []


def judgement(labeler: str, prompt: str, *groups: str) -> Judgement:
    return Judgement(prompt, "helpfulness", labeler, tuple(tuple(g) for g in groups))


def test_a_contrarian_labeler_is_found_and_down_weighted() -> None:
    judgements = []
    for prompt in ("p1", "p2", "p3", "p4"):
        for labeler in ("ann", "bo", "cy"):
            judgements.append(judgement(labeler, prompt, "a", "b", "c"))
        judgements.append(judgement("zed", prompt, "c", "b", "a"))  # misread the instructions

    consensus = merge_judgements(judgements, min_agreement=0.6)

    assert consensus.labeler_agreement["zed"] == 0.0
    assert all(consensus.labeler_agreement[l] == 1.0 for l in ("ann", "bo", "cy"))
    assert consensus.labeler_weight["zed"] == 0.0 and consensus.labeler_weight["ann"] == 1.0
    assert len(consensus.pairs) == 4 * comb(3, 2)
    assert {(p.winner, p.loser) for p in consensus.pairs} == {("a", "b"), ("a", "c"), ("b", "c")}
    assert all(p.weight == 1.0 and p.labelers == ("ann", "bo", "cy") for p in consensus.pairs)


def test_a_contested_pair_weighs_its_margin_and_an_even_split_gives_none() -> None:
    two_to_one = [judgement("ann", "p", "a", "b"), judgement("bo", "p", "a", "b"),
                  judgement("cy", "p", "b", "a")]
    (pair,) = merge_judgements(two_to_one, min_overlap=10).pairs  # too little overlap to down-weight
    assert (pair.winner, pair.loser, pair.labelers) == ("a", "b", ("ann", "bo"))
    assert pair.weight == pytest.approx(1 / 3)
    even = [judgement("ann", "p", "a", "b"), judgement("bo", "p", "b", "a")]
    assert merge_judgements(even).pairs == []


def test_krippendorff_alpha_matches_a_hand_computation() -> None:
    # Coincidences: o(1,1)=4, o(-1,-1)=2, o(1,-1)=o(-1,1)=1; n=8, n_1=5, n_-1=3.
    # D_o = 2/8, D_e = 30/56, alpha = 1 - (2/8)/(30/56) = 8/15.
    units = [{"x": 1, "y": 1}, {"x": 1, "y": 1}, {"x": -1, "y": -1}, {"x": 1, "y": -1}]
    assert krippendorff_alpha_nominal(units) == pytest.approx(8 / 15)
    assert krippendorff_alpha_nominal([{"x": 1, "y": 1}, {"x": -1, "y": -1}]) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal([{"x": 1}]) is None


def test_with_three_labelers_the_odd_one_out_loses_and_the_majority_keeps_its_pairs() -> None:
    judgements = [judgement("ann", "p", "a", "b", "c"), judgement("bo", "p", "a", "b", "c"),
                  judgement("cy", "p", "c", "b", "a")]
    consensus = merge_judgements(judgements, min_agreement=0.6, min_overlap=3)
    assert consensus.labeler_agreement == {"cy": 0.0}  # ann's and bo's others are split 1-1
    assert consensus.labeler_weight == {"cy": 0.0}
    assert sorted((p.winner, p.loser, p.weight) for p in consensus.pairs) == [
        ("a", "b", 1.0), ("a", "c", 1.0), ("b", "c", 1.0)
    ]
