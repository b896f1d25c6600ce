"""The event-log contract, run unchanged against SqliteEventLog and KafkaEventLog (real broker)."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from streams.codec import (
    ADAPTERS,
    COMPLETIONS,
    DEAD_LETTERS,
    FEEDBACK,
    MAX_EVENT_BYTES,
    EventTooLargeError,
    UnknownTopicError,
    WrongEventTypeError,
)
from streams.events import (
    AdapterPublishedEvent,
    AdapterRef,
    ChatMessage,
    CompletionEvent,
    DeadLetterEvent,
    RankingFeedback,
    SamplingParams,
    ThumbsFeedback,
)
from streams.log import Batch, EventConsumer, EventLog, Record


def thumbs(i: int, user: str = "alice") -> ThumbsFeedback:
    return ThumbsFeedback(completion_id=f"c{i}", user_id=user, vote="up" if i % 2 else "down")


def completion(text: str = "Preheat the oven.") -> CompletionEvent:
    return CompletionEvent(
        completion_id="cmpl-1",
        request_id="req-1",
        prompt_id="p-1",
        user_id="alice",
        messages=[ChatMessage(role="user", content="How do I bake bread?")],
        completion=text,
        choice_index=0,
        adapter=AdapterRef(scope="global", version=3),
        model="demo",
        sampling=SamplingParams(temperature=0.7, max_tokens=64),
        prompt_tokens=7,
        completion_tokens=4,
        latency_ms=12.5,
    )


def consume(consumer: EventConsumer, count: int, timeout_s: float = 30.0) -> list[Record]:
    """Poll until ``count`` records arrived (or fail after ``timeout_s``)."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count:
        assert time.monotonic() < deadline, f"got {len(records)} of {count} records"
        records.extend(consumer.poll(max_records=500, timeout_s=0.5))
    return records


def drain(consumer: EventConsumer, quiet_s: float = 1.0) -> list[Record]:
    """Everything the consumer can read until it stays quiet for ``quiet_s``."""
    records: list[Record] = []
    while batch := consumer.poll(max_records=500, timeout_s=quiet_s):
        records.extend(batch)
    return records


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def letter_bytes(letter: DeadLetterEvent) -> bytes:
    """The original bytes a dead letter kept."""
    if letter.payload_encoding == "base64":
        return base64.b64decode(letter.payload, validate=True)
    return letter.payload.encode("utf-8")


def handle_until_quiet(consumer: EventConsumer, handler, **options: object) -> list[Batch]:  # noqa: ANN001
    """Run ``consumer.handle`` until a poll is quiet; the batches it fetched before."""
    consumer.wait_for_assignment()
    batches = []
    while not (batch := consumer.handle(handler, **options)).quiet:
        batches.append(batch)
    return batches


def test_every_topic_round_trips_its_event(event_log: EventLog) -> None:
    ranking = RankingFeedback(
        prompt_id="p-1", user_id="bob", labeler_id="bob", ranking=[["a"], ["b", "c"]], unusable=["d"]
    )
    adapter = AdapterPublishedEvent(
        scope="user:bob", version=2, path="/adapters/user:bob/2", sha256="0" * 64,
        parent_version=1, base_model="demo", metrics={"reward": 0.5},
    )
    sent = {COMPLETIONS: [completion()], FEEDBACK: [thumbs(1), ranking], ADAPTERS: [adapter]}
    for topic, events in sent.items():
        for event in events:
            event_log.publish(topic, "k", event)
    event_log.flush()

    with event_log.consumer("round-trip", list(sent)) as consumer:
        records = consume(consumer, 4)

    received = {(record.topic, record.event.event_id): record.event for record in records}
    assert received == {(t, e.event_id): e for t, events in sent.items() for e in events}
    assert all(record.key == "k" for record in records)


def test_events_with_one_key_stay_in_order_on_one_partition(event_log: EventLog) -> None:
    events = [thumbs(i, user=f"user-{i % 3}") for i in range(60)]
    for event in events:
        event_log.publish(FEEDBACK, event.user_id, event)
    event_log.flush()

    with event_log.consumer("ordering", [FEEDBACK]) as consumer:
        records = consume(consumer, 60)

    for user in ("user-0", "user-1", "user-2"):
        mine = [record for record in records if record.key == user]
        assert len({record.partition for record in mine}) == 1
        assert [r.event.event_id for r in mine] == [e.event_id for e in events if e.user_id == user]
        assert [r.offset for r in mine] == sorted(r.offset for r in mine)


def test_committed_offsets_are_where_the_group_resumes(event_log: EventLog) -> None:
    first = [thumbs(i) for i in range(10)]
    for event in first:
        event_log.publish(FEEDBACK, "alice", event)
    event_log.flush()
    with event_log.consumer("resume", [FEEDBACK]) as consumer:
        assert len(consume(consumer, 10)) == 10
        consumer.commit()

    second = [thumbs(i) for i in range(10, 15)]
    for event in second:
        event_log.publish(FEEDBACK, "alice", event)
    event_log.flush()
    with event_log.consumer("resume", [FEEDBACK]) as consumer:
        consume(consumer, 5)
        resumed = drain(consumer)  # nothing more: the first ten were committed
        assert resumed == []


def test_uncommitted_records_are_read_again(event_log: EventLog) -> None:
    events = [thumbs(i) for i in range(8)]
    for event in events:
        event_log.publish(FEEDBACK, "alice", event)
    event_log.flush()
    with event_log.consumer("redeliver", [FEEDBACK]) as consumer:
        consume(consumer, 8)  # handled but never committed: the consumer "crashed"
    with event_log.consumer("redeliver", [FEEDBACK]) as consumer:
        again = consume(consumer, 8)
    assert sorted(r.event.event_id for r in again) == sorted(e.event_id for e in events)


def test_every_group_gets_every_event(event_log: EventLog) -> None:
    events = [thumbs(i, user=f"u{i}") for i in range(20)]
    for event in events:
        event_log.publish(FEEDBACK, event.user_id, event)
    event_log.flush()
    for group in ("trainer", "auditor"):
        with event_log.consumer(group, [FEEDBACK]) as consumer:
            assert {r.event.event_id for r in consume(consumer, 20)} == {e.event_id for e in events}


def test_members_of_one_group_split_the_partitions(event_log: EventLog) -> None:
    events = [thumbs(i, user=f"u{i}") for i in range(40)]
    first = event_log.consumer("split", [FEEDBACK])
    second = event_log.consumer("split", [FEEDBACK])
    try:
        deadline = time.monotonic() + 30
        # Both members poll (the topic is still empty) until the group settles on two
        # disjoint, non-empty shares of the partitions.
        while not (
            first.assignment()
            and second.assignment()
            and first.assignment().isdisjoint(second.assignment())
        ):
            assert time.monotonic() < deadline, (first.assignment(), second.assignment())
            assert first.poll(timeout_s=0.2) + second.poll(timeout_s=0.2) == []
        for event in events:
            event_log.publish(FEEDBACK, event.user_id, event)
        event_log.flush()
        received: list[Record] = []
        while len(received) < 40:
            assert time.monotonic() < deadline + 30, f"{len(received)} of 40"
            received += first.poll(timeout_s=0.2) + second.poll(timeout_s=0.2)
        assert sorted(r.event.event_id for r in received) == sorted(e.event_id for e in events)
        assert first.assignment() | second.assignment() == {(FEEDBACK, p) for p in range(4)}
    finally:
        first.close()
        second.close()


def test_a_rebuild_reads_from_the_beginning_despite_commits(event_log: EventLog) -> None:
    events = [thumbs(i) for i in range(12)]
    for event in events:
        event_log.publish(FEEDBACK, "alice", event)
    event_log.flush()
    with event_log.consumer("rebuild", [FEEDBACK]) as consumer:
        consume(consumer, 12)
        consumer.commit()
        consumer.seek_to_beginning()
        assert len(consume(consumer, 12)) == 12
    with event_log.consumer("rebuild", [FEEDBACK], from_beginning=True) as consumer:
        assert {r.event.event_id for r in consume(consumer, 12)} == {e.event_id for e in events}


def test_a_reader_without_group_sees_everything_and_cannot_commit(event_log: EventLog) -> None:
    adapters = [
        AdapterPublishedEvent(
            scope=scope, version=v, path=f"/a/{scope}/{v}", sha256="a" * 64, base_model="demo"
        )
        for scope in ("global", "user:ann") for v in (1, 2)
    ]
    for event in adapters:
        event_log.publish(ADAPTERS, event.scope, event)
    event_log.flush()
    with event_log.consumer(None, [ADAPTERS]) as reader:
        records = consume(reader, 4)
        latest = {r.event.scope: r.event.version for r in records}
        assert latest == {"global": 2, "user:ann": 2}
        with pytest.raises(RuntimeError, match="without a group"):
            reader.commit()


def test_bad_events_are_refused_at_publish_and_counted(event_log: EventLog) -> None:
    refused_before = counter("hhh_events_rejected_total", topic="nope", reason="unknown_topic")
    with pytest.raises(UnknownTopicError, match="unknown topic 'nope'"):
        event_log.publish("nope", None, thumbs(1))
    assert counter("hhh_events_rejected_total", topic="nope", reason="unknown_topic") == refused_before + 1

    with pytest.raises(WrongEventTypeError, match="does not carry ThumbsFeedback"):
        event_log.publish(COMPLETIONS, None, thumbs(1))
    with pytest.raises(EventTooLargeError, match="the limit is 1,000,000"):
        event_log.publish(COMPLETIONS, None, completion("x" * MAX_EVENT_BYTES))
    with pytest.raises(UnknownTopicError):
        event_log.consumer("g", ["nope"])

    event_log.publish(FEEDBACK, "alice", good := thumbs(2))
    event_log.flush()
    with event_log.consumer("after-refusals", [COMPLETIONS, FEEDBACK]) as consumer:
        assert [r.event for r in consume(consumer, 1)] == [good]  # only the good event was stored
        assert [r.event for r in drain(consumer, quiet_s=0.5)] == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe binary", "invalid_json"),
        (b'{"schema_version": 99, "type": "thumbs"}', "unsupported_schema_version"),
        (b'{"schema_version": 1, "type": "thumbs", "vote": "sideways"}', "schema_mismatch"),
        (b"[1, 2]", "schema_mismatch"),
        (b"[" * 200_000 + b"]" * 200_000, "too_deep"),  # 400 KB: RecursionError in the parser
        (b'{"schema_version": 1, "type": "thumbs", "vote": "\xff"}', "invalid_json"),
        (b"x" * (MAX_EVENT_BYTES + 1), "too_large"),
        (b'{"schema_version": 1, "type": "thumbs", "completion_id": "c", "user_id": "..", "vote": "up"}',
         "schema_mismatch"),  # a user id that names a folder (streams.user_ids)
    ],
    ids=["not-json", "binary", "version", "schema", "array", "deep", "bad-utf8", "too-large", "dot-user"],
)
def test_undecodable_messages_go_to_dead_letters_and_others_flow(
    event_log: EventLog, payload: bytes, reason: str
) -> None:
    before = counter("hhh_events_dead_lettered_total", topic=FEEDBACK, reason=reason)
    event_log.publish(FEEDBACK, "alice", first := thumbs(1))
    event_log.publish_bytes(FEEDBACK, "alice", payload)
    event_log.publish(FEEDBACK, "alice", last := thumbs(2))
    event_log.flush()

    with event_log.consumer("dlq", [FEEDBACK]) as consumer:
        records = consume(consumer, 2)
        consumer.commit()
    assert [r.event.event_id for r in records] == [first.event_id, last.event_id]
    assert counter("hhh_events_dead_lettered_total", topic=FEEDBACK, reason=reason) == before + 1

    with event_log.consumer(None, [DEAD_LETTERS]) as reader:
        (letter,) = [r.event for r in consume(reader, 1)]
    assert isinstance(letter, DeadLetterEvent)
    assert (letter.source_topic, letter.reason, letter.key) == (FEEDBACK, reason, "alice")
    assert letter.source_offset == records[0].offset + 1
    assert (letter.payload_size, letter.payload_sha256) == (
        len(payload), hashlib.sha256(payload).hexdigest()
    )
    assert letter_bytes(letter) == payload[: len(letter_bytes(letter))]
    if len(payload) > MAX_EVENT_BYTES:  # the letter must fit the limit itself: it keeps the start
        assert letter.payload_truncated and letter.payload_encoding == "base64"
        assert len(letter_bytes(letter)) == 512 * 1024
    else:
        assert not letter.payload_truncated and letter_bytes(letter) == payload
        assert letter.payload_encoding == ("base64" if b"\xff" in payload else "utf-8")

    skipped_before = counter("hhh_events_skipped_total", topic=FEEDBACK, reason=reason)
    with event_log.consumer(None, [FEEDBACK]) as reader:  # re-reading repeats no dead letter
        assert [r.event.event_id for r in consume(reader, 2)] == [first.event_id, last.event_id]
    assert counter("hhh_events_skipped_total", topic=FEEDBACK, reason=reason) == skipped_before + 1
    with event_log.consumer(None, [DEAD_LETTERS]) as reader:
        assert len(drain(reader, quiet_s=0.5)) == 1


def test_a_handler_that_keeps_raising_dead_letters_only_its_record(event_log: EventLog) -> None:
    events = [thumbs(i) for i in range(5)]
    for event in events:
        event_log.publish(FEEDBACK, "alice", event)
    event_log.flush()
    poisoned = events[2].event_id
    handled: list[str] = []
    attempts: list[list[str]] = []

    def handler(batch: Sequence[Record]) -> None:  # all or nothing, like a transaction
        ids = [record.event.event_id for record in batch]
        attempts.append(ids)
        if poisoned in ids:
            raise ValueError("cannot store this one")
        handled.extend(ids)

    with event_log.consumer("handler", [FEEDBACK]) as consumer:
        deadline = time.monotonic() + 30
        while len(handled) < 4:
            assert time.monotonic() < deadline
            consumer.handle(handler, timeout_s=0.5)
    assert handled == [e.event_id for e in events if e.event_id != poisoned]
    assert attempts.count([poisoned]) == 3  # tried alone three times before it was given up

    with event_log.consumer("handler", [FEEDBACK]) as consumer:  # all committed
        assert drain(consumer, quiet_s=0.5) == []
    with event_log.consumer(None, [DEAD_LETTERS]) as reader:
        (letter,) = [r.event for r in consume(reader, 1)]
        assert drain(reader, quiet_s=0.5) == []
    assert letter.reason == "handler_error"
    assert "ValueError: cannot store this one" in letter.detail["message"]
    assert letter_bytes(letter) == events[2].model_dump_json().encode()


def test_a_poll_of_only_dead_letters_is_not_quiet_and_is_committed_past(event_log: EventLog) -> None:
    before = counter("hhh_events_dead_lettered_total", topic=FEEDBACK, reason="invalid_json")
    for i in range(1000):  # one key: one partition, the bad messages before every good one
        event_log.publish_bytes(FEEDBACK, "alice", b"{not json %d" % i)
    good = [thumbs(i) for i in range(50)]
    for event in good:
        event_log.publish(FEEDBACK, "alice", event)
    event_log.flush()

    handled: list[str] = []
    with event_log.consumer("poison", [FEEDBACK]) as consumer:
        batches = handle_until_quiet(
            consumer, lambda batch: handled.extend(r.event.event_id for r in batch),
            max_records=100, timeout_s=1.0,
        )
    assert any(not b.records and b.rejected for b in batches)  # what used to look "quiet"
    assert sum(b.rejected for b in batches) == 1000
    assert handled == [e.event_id for e in good]
    assert counter("hhh_events_dead_lettered_total", topic=FEEDBACK, reason="invalid_json") == before + 1000

    with event_log.consumer("poison", [FEEDBACK]) as consumer:  # committed past all of them
        assert handle_until_quiet(consumer, lambda b: pytest.fail(f"re-read {len(b)}"), timeout_s=0.5) == []
    with event_log.consumer(None, [DEAD_LETTERS]) as reader:
        letters = consume(reader, 1000)
        assert drain(reader, quiet_s=0.5) == []  # each bad message dead-lettered once
    assert sorted(letter_bytes(r.event) for r in letters) == sorted(b"{not json %d" % i for i in range(1000))


def test_a_failing_environment_is_raised_and_nothing_is_dead_lettered(event_log: EventLog) -> None:
    events = [thumbs(i) for i in range(3)]
    for event in events:
        event_log.publish(FEEDBACK, "alice", event)
    event_log.flush()
    tried: list[int] = []

    def disk_full(batch: Sequence[Record]) -> None:
        tried.append(len(batch))
        raise OSError(28, "No space left on device")

    with event_log.consumer("fatal", [FEEDBACK]) as consumer:
        consumer.wait_for_assignment()
        deadline = time.monotonic() + 30
        with pytest.raises(OSError, match="No space left"):
            while time.monotonic() < deadline:
                consumer.handle(disk_full, timeout_s=0.5, retry_backoff_s=0.0, fatal=(OSError,))
    assert len(tried) == 3  # retried, not split into records to dead-letter one by one

    handled: list[str] = []
    with event_log.consumer("fatal", [FEEDBACK]) as consumer:  # nothing was committed
        handle_until_quiet(consumer, lambda b: handled.extend(r.event.event_id for r in b), timeout_s=0.5)
    assert sorted(handled) == sorted(e.event_id for e in events)
    with event_log.consumer(None, [DEAD_LETTERS]) as reader:
        assert drain(reader, quiet_s=0.5) == []
