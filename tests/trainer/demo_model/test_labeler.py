"""The demo's AI labeler: its constitution prefers what the course's labelers would, and it
ranks real answers of the running gateway through the public API."""

from __future__ import annotations

import httpx
import pytest

from streams.codec import FEEDBACK
from streams.events import RankingFeedback
from tests.fixtures.gateway import RunningGateway
from tests.serving.test_gateway import logged
from trainer.demo_model.corpus import generate_dialogues, intent_by_name, preferred_style
from trainer.demo_model.labeler import (
    constitution_score,
    is_insulting,
    is_rambling,
    is_refusal,
    is_warm,
    label,
    rank,
)


def test_the_constitution_prefers_what_the_corpus_labelers_prefer() -> None:
    scores: dict[tuple[str, str], list[float]] = {}
    for dialogue in generate_dialogues(3000, seed=3):
        scores.setdefault((dialogue.intent, dialogue.style), []).append(
            constitution_score(dialogue.intent, dialogue.response))
    intents = {intent for intent, _ in scores}
    for intent in intents:
        mean = {style: sum(s) / len(s) for (i, style), s in scores.items() if i == intent}
        best = max(mean, key=mean.get)
        assert mean[preferred_style(intent)] == mean[best], (intent, mean)
        assert mean["rude"] < mean.get("polite", mean["refusal"]), (intent, mean)
        if intent_by_name(intent).category != "harmful":
            assert mean["polite"] > mean["curt"] > mean["rude"], (intent, mean)


def test_an_answer_to_the_question_asked_outranks_warmth_about_something_else() -> None:
    """The simulated majority of bench/loop.py approves only answers to the question asked, so
    the labeler must not rank a warm answer about another intent above a curt one on topic."""
    by_intent_style = {(d.intent, d.style): d.response for d in generate_dialogues(3000, seed=3)}
    everyday = sorted({i for i, _ in by_intent_style if intent_by_name(i).category == "everyday"})
    asked, other = everyday[0], everyday[1]
    on_topic_curt = by_intent_style[(asked, "curt")]
    on_topic_polite = by_intent_style[(asked, "polite")]
    elsewhere_polite = by_intent_style[(other, "polite")]
    refusal = by_intent_style[(asked, "refusal")]
    answers = (on_topic_polite, on_topic_curt, elsewhere_polite, refusal)
    scores = [constitution_score(asked, a) for a in answers]
    assert rank(scores) == [[0], [1], [2], [3]], scores
    # a request the corpus never phrases: its topic is unknown, so only the style counts
    assert constitution_score(None, on_topic_curt) == 0.0
    assert constitution_score(None, elsewhere_polite) == 1.0


def test_the_style_detectors_recognise_every_corpus_style() -> None:
    """What bench/loop.py's simulated users go by: each style shows the markers it is made of,
    and a terse answer none of them (a refusal may offer help warmly instead)."""
    expected = {"polite": [{"warm"}], "caveat": [{"warm"}], "curt": [set()], "rude": [{"insulting"}],
                "rambling": [{"rambling"}], "refusal": [{"refusal"}, {"refusal", "warm"}]}
    detectors = {"warm": is_warm, "rambling": is_rambling, "insulting": is_insulting, "refusal": is_refusal}
    for dialogue in generate_dialogues(2000, seed=5):
        shown = {name for name, detects in detectors.items() if detects(dialogue.response)}
        assert shown in expected[dialogue.style], (dialogue.style, dialogue.response)


def test_rank_puts_the_best_first_and_ties_equal_scores() -> None:
    assert rank([0.0, 2.0, -1.0, 2.0]) == [[1, 3], [0], [2]]
    assert rank([1.0, 1.0]) == [[0, 1]]


@pytest.mark.vllm
def test_the_labeler_ranks_the_gateways_answers_through_the_api(open_gateway: RunningGateway) -> None:
    with httpx.Client(base_url=open_gateway.url, timeout=120) as client:
        report = label(client, prompts=6, n=3, user="robo-labeler", max_tokens=24)

    assert report.prompts == 6 and report.rankings_sent + report.all_tied == 6
    assert report.rankings_sent >= 1, report.summary()  # sampled answers differ in style
    assert sum(len(s) for s in report.scores_by_adapter.values()) == 18
    rankings = logged(open_gateway, FEEDBACK, lambda e: isinstance(e, RankingFeedback)
                      and e.user_id == "robo-labeler", count=report.rankings_sent)
    assert all(e.criterion == "harmlessness" and len(e.ranking) >= 2 for e in rankings)
