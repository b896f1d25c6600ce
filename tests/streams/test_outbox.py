"""The outbox: durable before return, delivered at-least-once through outages and crashes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from streams.codec import FEEDBACK, EventTooLargeError, encode
from streams.config import KafkaSettings
from streams.events import ThumbsFeedback
from streams.kafka_log import KafkaEventLog
from streams.log import EventLog
from streams.outbox import Outbox, OutboxDrainer
from streams.sqlite_log import SqliteEventLog
from common.processes import free_port
from tests.fixtures.tansu import TansuBroker
from tests.streams.test_event_log_contract import drain

REPO = Path(__file__).resolve().parents[2]


def thumbs(i: int) -> ThumbsFeedback:
    return ThumbsFeedback(completion_id=f"c{i}", user_id=f"u{i % 5}", vote="up")


def metric(name: str, outbox: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"outbox": outbox, **labels}) or 0.0


def distinct_events(event_log: EventLog, expected: int) -> dict[str, ThumbsFeedback]:
    """Read the feedback topic until ``expected`` distinct events arrived (deduped by
    event_id, as every consumer does), then until it stays quiet."""
    with event_log.consumer("check", [FEEDBACK]) as consumer:
        seen: dict[str, ThumbsFeedback] = {}
        deadline = time.monotonic() + 60
        while len(seen) < expected:
            assert time.monotonic() < deadline, f"{len(seen)} of {expected} distinct events"
            seen |= {r.event.event_id: r.event for r in consumer.poll(timeout_s=0.5)}
        seen |= {r.event.event_id: r.event for r in drain(consumer, quiet_s=1.0)}
    return seen


def unique_ids(event_log: EventLog, expected: int) -> set[str]:
    """The distinct event ids on the feedback topic (see ``distinct_events``)."""
    return set(distinct_events(event_log, expected))


def test_put_is_durable_and_survives_reopening(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", name="reopen")
    events = [thumbs(i) for i in range(3)]
    for event in events:
        outbox.put(FEEDBACK, event.user_id, event)
    assert outbox.depth() == 3
    assert metric("hhh_outbox_depth", "reopen") == 3
    outbox.close()

    reopened = Outbox(tmp_path / "outbox.db", name="reopen")
    assert [entry.payload for entry in reopened.take(10)] == [encode(FEEDBACK, e) for e in events]


def test_a_bad_event_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", name="bad")
    huge = ThumbsFeedback(completion_id="c", user_id="u", vote="up", comment="x" * 4000)
    outbox.put(FEEDBACK, "u", huge)  # within limits
    with pytest.raises(ValueError, match="does not carry"):
        outbox.put("completions", "u", thumbs(1))
    with pytest.raises(ValueError, match="unknown topic"):
        outbox.put_many([(FEEDBACK, "u", thumbs(2)), ("nope", "u", thumbs(3))])
    assert outbox.depth() == 1  # the valid event of the refused batch was not stored either
    assert EventTooLargeError.reason == "too_large"


def test_drainer_delivers_everything_to_the_embedded_log(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", name="embedded")
    event_log = SqliteEventLog(tmp_path / "events.db")
    drainer = OutboxDrainer(outbox, lambda: SqliteEventLog(tmp_path / "events.db"), batch_size=64)
    drainer.start()
    try:
        delivered_before = metric("hhh_outbox_delivered_total", "embedded")
        events = [thumbs(i) for i in range(300)]
        for event in events:
            outbox.put(FEEDBACK, event.user_id, event)
        assert unique_ids(event_log, 300) == {e.event_id for e in events}
    finally:
        drainer.stop()
    assert outbox.depth() == 0
    assert metric("hhh_outbox_delivered_total", "embedded") - delivered_before == 300


def test_an_event_this_build_cannot_deliver_is_dead_lettered(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", name="poison")
    outbox.put(FEEDBACK, "u0", first := thumbs(0))
    with sqlite3.connect(tmp_path / "outbox.db") as raw:  # written by another build of hhh
        raw.execute(
            "INSERT INTO outbox (topic, key, payload, created) VALUES ('retired-topic', NULL, x'7b7d', 0)"
        )
    outbox = Outbox(tmp_path / "outbox.db", name="poison")
    outbox.put(FEEDBACK, "u2", last := thumbs(2))
    event_log = SqliteEventLog(tmp_path / "events.db")

    OutboxDrainer(outbox, lambda: event_log).drain(timeout_s=10)

    assert unique_ids(event_log, 2) == {first.event_id, last.event_id}
    ((entry, reason),) = outbox.dead_letters()
    assert entry.topic == "retired-topic" and "unknown topic 'retired-topic'" in reason
    assert metric("hhh_outbox_dead_lettered_total", "poison", reason="UnknownTopicError") == 1


@pytest.mark.kafka
def test_events_put_while_the_broker_is_down_all_arrive_once_it_is_up(tmp_path: Path) -> None:
    port = free_port()
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", topic_prefix="outage.")

    def connect() -> KafkaEventLog:
        event_log = KafkaEventLog(settings)
        event_log.create_topics()
        return event_log

    outbox = Outbox(tmp_path / "outbox.db", name="outage")
    drainer = OutboxDrainer(outbox, connect, initial_backoff_s=0.05, max_backoff_s=0.5)
    failures_before = metric("hhh_outbox_delivery_failures_total", "outage")
    drainer.start()
    broker = TansuBroker(port)
    try:
        events = [thumbs(i) for i in range(1000)]
        outbox.put_many([(FEEDBACK, e.user_id, e) for e in events])
        deadline = time.monotonic() + 30
        while metric("hhh_outbox_delivery_failures_total", "outage") == failures_before:
            assert time.monotonic() < deadline, "the drainer never noticed the broker was down"
            time.sleep(0.05)
        assert outbox.depth() == 1000

        broker.start()
        received = unique_ids(connect(), 1000)
        assert received == {e.event_id for e in events}
        deadline = time.monotonic() + 30
        while outbox.depth():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        drainer.stop()
        broker.stop()


@pytest.mark.kafka
def test_killing_the_publisher_mid_drain_loses_nothing(
    tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    outbox_path = tmp_path / "outbox.db"
    command = [sys.executable, "-m", "tests.streams.outbox_worker", str(outbox_path),
               kafka_settings.bootstrap_servers, kafka_settings.topic_prefix]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    publisher = subprocess.Popen([*command, "--put", "1000"], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, text=True)
    assert publisher.stdout is not None and publisher.stdout.readline().strip() == "filled"
    deadline = time.monotonic() + 60
    while (depth := Outbox(outbox_path, name="crash-probe").depth()) > 600:
        assert time.monotonic() < deadline and publisher.poll() is None
        time.sleep(0.01)
    publisher.send_signal(signal.SIGKILL)
    publisher.wait()
    assert 0 < depth < 1000, "the kill must land mid-drain"

    restarted = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stderr

    received = distinct_events(KafkaEventLog(kafka_settings), 1000)
    assert len(received) == 1000  # nothing duplicated past dedupe …
    assert sorted(e.completion_id for e in received.values()) == sorted(f"c{i}" for i in range(1000))
    assert Outbox(outbox_path, name="crash-probe").depth() == 0


def test_concurrent_async_puts_share_commits_and_are_durable_when_awaited(tmp_path: Path) -> None:
    import asyncio

    outbox = Outbox(tmp_path / "outbox.db", name="group-commit")
    events = [thumbs(i) for i in range(300)]

    async def put_all() -> None:
        await asyncio.gather(*(outbox.put_many_async([(FEEDBACK, e.user_id, e)]) for e in events))
        with pytest.raises(ValueError, match="unknown topic"):
            await outbox.put_many_async([("nope", None, thumbs(0))])

    asyncio.run(put_all())
    outbox.close()
    stored = Outbox(tmp_path / "outbox.db", name="group-commit-reopened").take(1000)
    assert sorted(entry.payload for entry in stored) == sorted(encode(FEEDBACK, e) for e in events)
