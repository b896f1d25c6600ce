"""The hot-swap controller and a message on the ``adapters`` topic that does not decode: it is
dead-lettered at once (its letter durable in ``dead-letters``) and the controller goes on.

A fake engine is enough: no adapter is ever loaded here.
"""

from __future__ import annotations

import time
from pathlib import Path

from serving.adapters.config import AdapterSettings
from streams.codec import ADAPTERS, DEAD_LETTERS
from streams.sqlite_log import SqliteEventLog
from tests.fixtures.fake_engine import fake_engine
from tests.fixtures.gateway import start_gateway


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
            deadline = time.monotonic() + 20
            while dead_letters_of(log_path) != [ADAPTERS]:
                assert time.monotonic() < deadline, "the dead letter never reached the log"
                time.sleep(0.2)
            while not controller.caught_up.is_set():  # it read on past the poison message
                assert time.monotonic() < deadline, "the controller never caught up"
                time.sleep(0.05)
            assert controller.last_error is None
        finally:
            running.stop()
