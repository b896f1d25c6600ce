"""The dataset counts each user's and labeler's latest feedback, once, whatever the delivery order."""

from __future__ import annotations

import itertools
import random
import sqlite3
from datetime import timedelta
from pathlib import Path

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
from trainer.preferences.store import DatasetStore



def completion(cid: str, prompt: str = "p1") -> CompletionEvent:
    return CompletionEvent(
        completion_id=cid, request_id="r", prompt_id=prompt, user_id="ann",
        messages=[ChatMessage(role="user", content=prompt)], completion=f"answer {cid}",
        choice_index=0, adapter=AdapterRef(scope="base"), model="demo", sampling=SamplingParams(),
        prompt_tokens=3, completion_tokens=2, latency_ms=1.0,
    )


def vote(cid: str, up: bool, minute: int, user: str = "ann", event_id: str | None = None) -> ThumbsFeedback:
    fields = {"event_id": event_id} if event_id else {}
    return ThumbsFeedback(completion_id=cid, user_id=user, vote="up" if up else "down",
                          created_at=T0 + timedelta(minutes=minute), **fields)


def ranking(order: str, minute: int, labeler: str = "ann", prompt: str = "p1") -> RankingFeedback:
    return RankingFeedback(prompt_id=prompt, user_id=labeler, labeler_id=labeler,
                           ranking=[[cid] for cid in order], created_at=T0 + timedelta(minutes=minute))


def records(events: list[Event]) -> list[Record]:
    return [Record("t", 0, i, None, event, T0) for i, event in enumerate(events)]


def pairs_of(store: DatasetStore) -> list[tuple[str, str, str, float]]:
    return [(p.chosen_id, p.rejected_id, p.source, p.weight) for p in store.build_pairs().pairs]


def test_up_down_up_counts_as_up_once(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "dataset.db")
    store.apply(records([completion("a"), completion("b"), vote("b", False, 0)]))
    for minute, up in enumerate((True, False, True), start=1):
        store.apply(records([vote("a", up, minute)]))
        assert pairs_of(store) == ([("a", "b", "thumbs", 1.0)] if up else [])


def test_a_ranking_changed_back_counts_as_the_last_one_once(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "dataset.db")
    store.apply(records([completion("a"), completion("b")]))
    for minute, order in enumerate(("ab", "ba", "ab")):
        store.apply(records([ranking(order, minute)]))
        assert pairs_of(store) == [(order[0], order[1], "ranking", 1.0)]
    assert [p.labelers for p in store.build_pairs().pairs] == [("ann",)]


def test_a_retry_counts_as_of_its_latest_arrival_in_any_order(tmp_path: Path) -> None:
    up = vote("a", True, 1, event_id="vote-up")
    down = vote("a", False, 2)
    # The same request again, accepted after the down: by a replica that never saw the down,
    # or a client's late retry. The latest request accepted wins.
    up_again = vote("a", True, 3, event_id="vote-up")
    before = [completion("a"), completion("b"), vote("b", False, 0)]
    dumps = []
    for n, order in enumerate(itertools.permutations([up, down, up_again])):
        store = DatasetStore(tmp_path / f"order-{n}.db")
        store.apply(records(before))
        assert sum(store.apply(records([event])) for event in order) == 2  # two events, not three
        assert pairs_of(store) == [("a", "b", "thumbs", 1.0)], order
        dumps.append(store.dump())
    assert all(dump == dumps[0] for dump in dumps)


def test_every_delivery_order_gives_the_same_store(tmp_path: Path) -> None:
    events: list[Event] = [completion(c, prompt=f"p{i % 2}") for i, c in enumerate("abcdef")]
    events += [vote("a", True, 1), vote("a", False, 2), vote("a", True, 3), vote("c", False, 1),
               vote("c", False, 2, user="bo"), vote("e", True, 4, user="bo"),
               ranking("ace", 1, prompt="p0"), ranking("eca", 2, prompt="p0"),
               ranking("ace", 3, prompt="p0"), ranking("bdf", 1, labeler="lena", prompt="p1")]
    events.append(events[-3].model_copy(update={"created_at": T0 + timedelta(minutes=9)}))  # a retry
    reference = DatasetStore(tmp_path / "reference.db")
    assert reference.apply(records(events)) == len(events) - 1  # the retry is no new event
    shuffle = random.Random(0)
    for n in range(20):
        order = shuffle.sample(events, len(events))
        store = DatasetStore(tmp_path / f"shuffled-{n}.db")
        for start in range(0, len(order), 3):
            store.apply(records(order[start : start + 3]))
        assert store.dump() == reference.dump()
        assert store.build_pairs().pairs == reference.build_pairs().pairs
    thumbs = {(p.chosen_id, p.rejected_id) for p in reference.build_pairs().pairs if p.source == "thumbs"}
    assert thumbs == {("a", "c"), ("e", "c")}  # ann's a counts as up: her latest, at minute 3


def test_a_rebuild_equals_the_incremental_store_after_changes_of_mind(
    event_log: EventLog, tmp_path: Path
) -> None:
    first = [completion("a"), completion("b"), vote("a", True, 1), vote("b", False, 1),
             ranking("ab", 1)]
    later = [vote("a", False, 2), ranking("ba", 2), vote("a", True, 3), ranking("ab", 3)]
    incremental = DatasetStore(tmp_path / "incremental.db")
    for batch in (first, later):
        for event in batch:
            event_log.publish(COMPLETIONS if isinstance(event, CompletionEvent) else FEEDBACK, "ann", event)
        event_log.flush()
        assert ingest_available(event_log, incremental, idle_s=0.5) == len(batch)
    rebuilt = DatasetStore(tmp_path / "rebuilt.db")
    ingest_available(event_log, rebuilt, group="rebuild", from_beginning=True, idle_s=0.5)
    assert rebuilt.dump() == incremental.dump()
    assert sorted(pairs_of(rebuilt)) == [("a", "b", "ranking", 1.0), ("a", "b", "thumbs", 1.0)]


def test_a_store_of_the_previous_schema_keeps_its_votes(tmp_path: Path) -> None:
    path = tmp_path / "dataset.db"
    with sqlite3.connect(path) as old:  # the layout before every thumbs event was kept
        old.executescript("""
            CREATE TABLE votes (
                user_id TEXT NOT NULL, completion_id TEXT NOT NULL, criterion TEXT NOT NULL,
                vote TEXT NOT NULL, comment TEXT, created_at TEXT NOT NULL, event_id TEXT NOT NULL,
                PRIMARY KEY (user_id, completion_id, criterion)) WITHOUT ROWID;""")
        old.executemany("INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?, ?)", [
            ("ann", "a", "helpfulness", "up", None, T0.isoformat(), "e1"),
            ("ann", "b", "helpfulness", "down", "no", T0.isoformat(), "e2"),
        ])
    old.close()
    store = DatasetStore(path)
    store.apply(records([completion("a"), completion("b")]))
    assert pairs_of(store) == [("a", "b", "thumbs", 1.0)]
    store.apply(records([vote("a", False, 5)]))  # and later votes supersede them
    assert pairs_of(store) == []
    migrated = store.dump()
    store.close()
    reopened = DatasetStore(path)  # migrated once: opening again changes nothing
    assert reopened.dump() == migrated and len(migrated["thumbs"]) == 3
    tables = {name for (name,) in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "votes" not in tables
