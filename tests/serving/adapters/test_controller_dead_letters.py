"""The hot-swap controller goes on past what would stop it: a message on the ``adapters`` topic
that does not decode is dead-lettered at once (its letter durable in ``dead-letters``), and an
event log that cannot be opened is tried again.

A fake engine is enough: no adapter is ever loaded here.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from serving import metrics
from serving.adapters.config import AdapterSettings
from streams.codec import ADAPTERS, DEAD_LETTERS
from streams.sqlite_log import SqliteEventLog
from tests.fixtures.fake_engine import fake_engine
from tests.fixtures.gateway import start_gateway
from tests.fixtures.waiting import wait_for


def dead_letters_of(log_path: Path) -> list[str]:
    """The source topic of every dead letter in the log."""
    event_log = SqliteEventLog(log_path)
    with event_log, event_log.consumer(None, [DEAD_LETTERS], from_beginning=True) as reader:
        return [record.event.source_topic for record in reader.poll(max_records=100, timeout_s=0.5)]


def test_a_poison_adapters_message_is_dead_lettered_at_once_not_at_the_next_good_event(tmp_path: Path) -> None:
    log_path = tmp_path / "events.db"
    with SqliteEventLog(log_path) as writer:
        writer.publish_bytes(ADAPTERS, "global", b"\xff\xfe not an event")
        writer.flush()
    with fake_engine() as engine:
        running = start_gateway(
            engine.url, tmp_path, adapter_log=lambda: SqliteEventLog(log_path),
            adapter_settings=AdapterSettings(store_root=tmp_path / "store", replica_id="r1"),
        )
        try:
            controller = running.gateway.adapters
            assert controller is not None
            wait_for(lambda: dead_letters_of(log_path) == [ADAPTERS], 20, "the dead letter to reach the log")
            wait_for(controller.caught_up.is_set, 20, "the controller to read on past the poison message")
            assert controller.last_error is None
        finally:
            running.stop()




def test_an_event_log_that_fails_to_open_is_logged_counted_and_followed_again(tmp_path: Path) -> None:
    log_path = tmp_path / "events.db"
    with SqliteEventLog(log_path) as writer:
        writer.publish_bytes(ADAPTERS, "global", b"\xff\xfe not an event")
        writer.flush()
    opened = []

    def open_log_locked_twice() -> SqliteEventLog:
        """The gateway's two readers (the controller, the labeler queue) each fail once."""
        opened.append(time.monotonic())
        if len(opened) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return SqliteEventLog(log_path)

    failures_before = metrics.ADAPTER_CONTROLLER_FAILURES._value.get()
    with fake_engine() as engine:
        running = start_gateway(
            engine.url, tmp_path, adapter_log=open_log_locked_twice,
            adapter_settings=AdapterSettings(store_root=tmp_path / "store", replica_id="r1"),
        )
        try:
            controller = running.gateway.adapters
            assert controller is not None
            wait_for(lambda: controller.last_error is not None, 20, "the failure to be recorded")
            assert controller.last_error == "following the adapters topic: OperationalError: database is locked"
            assert metrics.ADAPTER_CONTROLLER_FAILURES._value.get() == failures_before + 1
            wait_for(lambda: dead_letters_of(log_path) == [ADAPTERS], 20, "the controller to follow again")
            wait_for(controller.caught_up.is_set, 20, "the controller to catch up")
            assert len(opened) >= 3
        finally:
            running.stop()
