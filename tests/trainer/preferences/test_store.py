"""The dataset store: idempotent, order-independent ingest, and rebuilds equal to increments."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from streams.codec import COMPLETIONS, FEEDBACK
from streams.events import (
    AdapterRef,
    ChatMessage,
    CompletionEvent,
    Event,
    RankingFeedback,
    SamplingParams,
    ThumbsFeedback,
)
from streams.log import EventLog, Record
from trainer.demo_model.feedback import T0
from trainer.preferences.ingest import ingest_available
from trainer.preferences.store import DatasetStore, split_of



def completion(cid: str, prompt: str = "p1", user: str = "ann") -> CompletionEvent:
    return CompletionEvent(
        completion_id=cid, request_id="r", prompt_id=prompt, user_id=user,
        messages=[ChatMessage(role="user", content=f"question {prompt}")], completion=f"answer {cid}",
        choice_index=0, adapter=AdapterRef(scope="base"), model="demo", sampling=SamplingParams(),
        prompt_tokens=3, completion_tokens=2, latency_ms=1.0,
    )


def vote(cid: str, up: bool, minutes: int, user: str = "ann") -> ThumbsFeedback:
    return ThumbsFeedback(completion_id=cid, user_id=user, vote="up" if up else "down",
                          created_at=T0 + timedelta(minutes=minutes))


def records(*events: Event) -> list[Record]:
    return [Record("t", 0, i, None, event, T0) for i, event in enumerate(events)]


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "dataset.db")


def test_a_redelivered_batch_changes_nothing(store: DatasetStore) -> None:
    batch = records(completion("a"), completion("b"), vote("a", True, 1), vote("b", False, 2))
    assert store.apply(batch) == 4
    before = store.dump()
    assert store.apply(batch) == 0
    assert store.dump() == before
    assert [(p.chosen_id, p.rejected_id) for p in store.build_pairs().pairs] == [("a", "b")]


def test_the_latest_vote_counts_whatever_the_delivery_order(store: DatasetStore) -> None:
    store.apply(records(completion("a"), completion("b"), vote("b", False, 0)))
    store.apply(records(vote("a", True, minutes=10)))
    store.apply(records(vote("a", False, minutes=5)))  # older, delivered late: ignored
    assert [(p.chosen_id, p.rejected_id, p.source) for p in store.build_pairs().pairs] == [("a", "b", "thumbs")]
    store.apply(records(vote("a", False, minutes=20)))  # a newer change of mind
    assert store.build_pairs().pairs == []


def test_pairs_across_users_weigh_less_and_a_users_own_pairs_keep_their_user_id(store: DatasetStore) -> None:
    """ann compares a with b herself; bob votes c up and cal votes d down on the same prompt."""
    store.apply(records(
        completion("a"), completion("b"), completion("c"), completion("d"),
        vote("a", True, 1, user="ann"), vote("b", False, 2, user="ann"),
        vote("c", True, 3, user="bob"), vote("d", False, 4, user="cal"),
    ))
    pairs = {(p.chosen_id, p.rejected_id): (p.user_id, p.weight)
             for p in store.build_pairs(cross_user_weight=0.25).pairs}
    assert pairs == {
        ("a", "b"): ("ann", 1.0),  # her own comparison, though bob and cal voted on the prompt
        ("a", "d"): (None, 0.25), ("c", "b"): (None, 0.25), ("c", "d"): (None, 0.25),
    }
    votes = {(v.user_id, v.completion_id, v.up) for v in store.votes()}
    assert votes == {("ann", "a", True), ("ann", "b", False), ("bob", "c", True), ("cal", "d", False)}


def test_two_users_making_the_same_comparison_give_one_own_pair_each(store: DatasetStore) -> None:
    store.apply(records(completion("a"), completion("b"),
                        vote("a", True, 1, user="ann"), vote("b", False, 2, user="ann"),
                        vote("a", True, 3, user="bob"), vote("b", False, 4, user="bob")))
    assert sorted((p.user_id, p.weight) for p in store.build_pairs().pairs) == [("ann", 1.0), ("bob", 1.0)]


def test_feedback_before_its_completion_waits_for_it(store: DatasetStore) -> None:
    store.apply(records(RankingFeedback(prompt_id="p1", user_id="ann", labeler_id="ann",
                                        ranking=[["a"], ["b"], ["c"]])))
    waiting = store.build_pairs()
    assert waiting.pairs == [] and waiting.skipped == {"waiting_for_completion": 1}
    store.apply(records(completion("a"), completion("b"), completion("c")))
    pairs = store.build_pairs().pairs
    assert sorted((p.chosen_id, p.rejected_id) for p in pairs) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert {(p.user_id, p.labelers, p.weight) for p in pairs} == {("ann", ("ann",), 1.0)}


def test_rankings_the_gateway_should_have_refused_are_skipped_and_counted(store: DatasetStore) -> None:
    store.apply(records(completion("a"), completion("b"), completion("x", prompt="p2"),
                        RankingFeedback(prompt_id="p1", user_id="u", labeler_id="u", ranking=[["a"], ["x"]]),
                        RankingFeedback(prompt_id="p1", user_id="u", labeler_id="v", ranking=[["a"]], unusable=["b"]),
                        RankingFeedback(prompt_id="p1", user_id="u", labeler_id="w", ranking=[["b"], ["a"]])))
    built = store.build_pairs()
    assert built.skipped == {"mixed_prompts": 1, "too_few_usable": 1}
    assert [(p.chosen_id, p.rejected_id) for p in built.pairs] == [("b", "a")]


def test_unusable_completions_are_dropped_before_pairing(store: DatasetStore) -> None:
    store.apply(records(completion("a"), completion("b"), completion("x"),
                        RankingFeedback(prompt_id="p1", user_id="u", labeler_id="u",
                                        ranking=[["a"], ["b"]], unusable=["x"])))
    built = store.build_pairs()
    assert [(p.chosen_id, p.rejected_id) for p in built.pairs] == [("a", "b")]
    assert built.skipped == {"unusable_completions": 1}


def test_prompts_are_distinct_recent_first_and_split_like_the_pairs(store: DatasetStore) -> None:
    events = []
    for i in range(40):
        event = completion(f"c{i}", prompt=f"p{i % 20}")
        events.append(event.model_copy(update={"created_at": T0 + timedelta(minutes=i)}))
    store.apply(records(*events))
    train = store.prompts("train", eval_percent=30, limit=100)
    held_out = store.prompts("eval", eval_percent=30, limit=100)
    expected_train = [f"p{i}" for i in range(19, -1, -1) if split_of(f"p{i}", 30) == "train"]
    assert [m[0]["content"] for m in train] == [f"question {p}" for p in expected_train]
    assert len(train) + len(held_out) == 20 and held_out  # each prompt once, in one split
    assert len(store.prompts("train", eval_percent=30, limit=3)) == 3
    texts = store.completion_texts(["c3", "c7", "missing"])
    assert texts == {"c3": ([{"role": "user", "content": "question p3"}], "answer c3"),
                     "c7": ([{"role": "user", "content": "question p7"}], "answer c7")}


def test_the_eval_split_is_stable_per_prompt() -> None:
    prompts = [f"prompt-{i}" for i in range(2000)]
    held_out = [p for p in prompts if split_of(p, 10) == "eval"]
    assert 150 < len(held_out) < 250
    assert held_out == [p for p in prompts if split_of(p, 10) == "eval"]


def test_a_rebuild_from_the_log_equals_the_incremental_store(event_log: EventLog, tmp_path: Path) -> None:
    events = [completion(c, prompt=f"p{i % 3}") for i, c in enumerate("abcdefghi")]
    feedback = [vote("a", True, 1), vote("d", False, 2), vote("a", False, 3),
                RankingFeedback(prompt_id="p0", user_id="ann", labeler_id="ann", ranking=[["g"], ["a", "d"]])]
    incremental = DatasetStore(tmp_path / "incremental.db")
    for event in events[:5]:
        event_log.publish(COMPLETIONS, event.prompt_id, event)
    event_log.publish(FEEDBACK, "ann", feedback[0])
    event_log.flush()
    assert ingest_available(event_log, incremental, idle_s=0.5) == 6
    for event in events[5:]:
        event_log.publish(COMPLETIONS, event.prompt_id, event)
    for event in feedback[1:] + feedback[:1]:  # the first vote redelivered
        event_log.publish(FEEDBACK, event.user_id, event)
    event_log.flush()
    assert ingest_available(event_log, incremental, idle_s=0.5) == 7

    rebuilt = DatasetStore(tmp_path / "rebuilt.db")
    ingest_available(event_log, rebuilt, group="rebuild", from_beginning=True, idle_s=0.5)
    assert rebuilt.dump() == incremental.dump()
    assert rebuilt.build_pairs().pairs == incremental.build_pairs().pairs != []


def test_feedback_event_ids_are_every_stored_vote_and_ranking_superseded_or_not(store: DatasetStore) -> None:
    first, change = vote("a", True, 1), vote("a", False, 2)
    ranking = RankingFeedback(prompt_id="p1", user_id="ann", labeler_id="ann", ranking=[["a"], ["b"]])
    store.apply(records(completion("a"), completion("b"), first, change, ranking, first))
    assert store.feedback_event_ids() == {first.event_id, change.event_id, ranking.event_id}
