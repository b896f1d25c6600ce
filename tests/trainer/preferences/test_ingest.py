"""Ingest from the event log into the dataset store: poison neither stalls nor crashes it.

Run against the embedded log and the real Kafka-protocol broker (the ``event_log`` fixture).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from streams.codec import COMPLETIONS, DEAD_LETTERS, FEEDBACK
from streams.events import (
    AdapterRef,
    ChatMessage,
    CompletionEvent,
    DeadLetterEvent,
    Event,
    ThumbsFeedback,
)
from streams.log import EventLog
from trainer.preferences.ingest import ingest_available
from trainer.preferences.store import DatasetStore


def completion(cid: str) -> CompletionEvent:
    return CompletionEvent(
        completion_id=cid, request_id="r", prompt_id="p1", user_id="ann",
        messages=[ChatMessage(role="user", content="question")], completion=f"answer {cid}",
        choice_index=0, adapter=AdapterRef(scope="base"), model="demo", sampling={},
        prompt_tokens=3, completion_tokens=2, latency_ms=1.0,
    )


def vote(cid: str, up: bool) -> ThumbsFeedback:
    return ThumbsFeedback(completion_id=cid, user_id="ann", vote="up" if up else "down")


def dead_letters(event_log: EventLog, quiet_s: float = 1.0) -> list[DeadLetterEvent]:
    """Every letter on the dead-letter topic (read until it stays quiet for ``quiet_s``)."""
    letters = []
    with event_log.consumer(None, [DEAD_LETTERS]) as reader:
        while batch := reader.poll(max_records=1000, timeout_s=quiet_s):
            letters += [record.event for record in batch]
    return letters


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def publish(event_log: EventLog, *events: Event) -> None:
    for event in events:
        topic = COMPLETIONS if isinstance(event, CompletionEvent) else FEEDBACK
        event_log.publish(topic, "ann", event)
    event_log.flush()


def test_a_thousand_undecodable_records_neither_stall_ingest_nor_repeat(
    event_log: EventLog, tmp_path: Path
) -> None:
    store = DatasetStore(tmp_path / "dataset.db")
    publish(event_log, *[completion(f"c{i}") for i in range(25)])
    assert ingest_available(event_log, store, idle_s=1.0) == 25
    for i in range(1000):  # then whole fetches of nothing but poison, then the votes
        event_log.publish_bytes(FEEDBACK, "ann", b'{"schema_version": 1, "type": "thumbs", %d' % i)
    publish(event_log, *[vote(f"c{i}", i % 2 == 0) for i in range(25)])

    assert ingest_available(event_log, store, idle_s=1.0) == 25
    assert ingest_available(event_log, store, idle_s=0.5) == 0  # committed: nothing re-read
    letters = dead_letters(event_log)
    assert len(letters) == 1000  # once each, not once per round
    assert {(letter.reason, letter.source_topic) for letter in letters} == {("invalid_json", FEEDBACK)}
    assert len(store.build_pairs().pairs) == 13 * 12


def test_ingest_returns_under_votes_that_never_stop(event_log: EventLog, tmp_path: Path) -> None:
    """A busy service's log is never quiet for ``idle_s``: ingest still returns after ``max_s``
    (so the round can train), and the next one reads on from where it stopped."""
    store = DatasetStore(tmp_path / "dataset.db")
    stop = threading.Event()

    def voters() -> None:
        i = 0
        while not stop.is_set():
            publish(event_log, completion(f"busy{i}"))
            i += 1
            time.sleep(0.05)  # 20 events/s: never 0.5 s without one

    thread = threading.Thread(target=voters, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        first = ingest_available(event_log, store, idle_s=0.5, max_s=2.0)
        took = time.monotonic() - started
        second = ingest_available(event_log, store, idle_s=0.5, max_s=2.0)
    finally:
        stop.set()
        thread.join(10)
    assert first > 0 and second > 0
    assert took < 2.0 + 0.5 + 5.0, f"ingest took {took:.1f} s under steady votes"


def test_a_deeply_nested_message_is_dead_lettered_and_the_trainer_goes_on(
    event_log: EventLog, tmp_path: Path
) -> None:
    before = counter("hhh_events_dead_lettered_total", topic=FEEDBACK, reason="too_deep")
    publish(event_log, completion("a"), completion("b"))
    nested = b'{"schema_version": 1, "type": "thumbs", "comment": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    event_log.publish_bytes(FEEDBACK, "ann", nested)  # 400 KB: RecursionError in json.loads
    publish(event_log, vote("a", True), vote("b", False))
    store = DatasetStore(tmp_path / "dataset.db")

    assert ingest_available(event_log, store, idle_s=1.0) == 4
    assert [(p.chosen_id, p.rejected_id) for p in store.build_pairs().pairs] == [("a", "b")]
    (letter,) = dead_letters(event_log)
    assert (letter.reason, letter.payload_size) == ("too_deep", len(nested))
    assert counter("hhh_events_dead_lettered_total", topic=FEEDBACK, reason="too_deep") == before + 1


class StoreRefusing(DatasetStore):
    """A dataset store that cannot store one completion (as if its row broke a constraint)."""

    refused = "poison"

    def _store(self, event: Event) -> None:
        if getattr(event, "completion_id", None) == self.refused:
            raise sqlite3.IntegrityError(f"cannot store completion {self.refused}")
        super()._store(event)


def test_an_event_the_store_keeps_refusing_is_dead_lettered_and_the_rest_stored(
    event_log: EventLog, tmp_path: Path
) -> None:
    events = [completion("a"), completion(StoreRefusing.refused), completion("b"),
              vote("a", True), vote("b", False)]
    publish(event_log, *events)
    store = StoreRefusing(tmp_path / "dataset.db")

    assert ingest_available(event_log, store, idle_s=1.0) == 4
    assert ingest_available(event_log, store, idle_s=0.5) == 0
    assert [(p.chosen_id, p.rejected_id) for p in store.build_pairs().pairs] == [("a", "b")]
    (letter,) = dead_letters(event_log)
    assert letter.reason == "handler_error" and "IntegrityError" in letter.detail["message"]
    assert CompletionEvent.model_validate_json(letter.payload) == events[1]


class StoreOnAFullDisk(DatasetStore):
    """A dataset store whose file cannot be written."""

    def apply(self, records) -> int:  # noqa: ANN001
        raise sqlite3.OperationalError("database or disk is full")


def test_a_failing_store_stops_ingest_and_loses_nothing(event_log: EventLog, tmp_path: Path) -> None:
    publish(event_log, completion("a"), completion("b"), vote("a", True))
    full = StoreOnAFullDisk(tmp_path / "full.db")
    deadline = time.monotonic() + 30
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        while time.monotonic() < deadline:
            ingest_available(event_log, full, idle_s=1.0)
    store = DatasetStore(tmp_path / "dataset.db")  # the disk freed: the same group resumes
    assert ingest_available(event_log, store, idle_s=0.5) == 3
    assert dead_letters(event_log, quiet_s=0.5) == []
