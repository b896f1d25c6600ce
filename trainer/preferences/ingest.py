"""Ingest: the ``completions`` and ``feedback`` topics into the dataset store.

Through the consumer's retry-then-dead-letter path (``EventConsumer.handle``): a batch is
stored in one ``DatasetStore.apply`` transaction and offsets are committed only after it
committed, so a crash between the two re-delivers the batch, which the store ignores by
``event_id``. A message that does not decode, or an event the store keeps refusing, is
dead-lettered with its reason and skipped: it neither stalls ingest nor crashes the trainer.
A failing store (its file locked or its disk full) is not the events' fault: that is raised
after the retries, with nothing dead-lettered or committed.

Ingest returns once the log has been quiet for ``idle_s`` — or after ``max_s`` at the latest:
on a service whose users vote more often than once per ``idle_s`` the log is never quiet, and
a round must still get to train (the rest is read by the next round; nothing is skipped).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from streams.codec import COMPLETIONS, FEEDBACK
from streams.log import EventLog, Record
from trainer.preferences.store import DatasetStore

INGEST_GROUP = "trainer-ingest"

STORE_FAILURES: tuple[type[Exception], ...] = (sqlite3.OperationalError, OSError)
"""Errors of the dataset store's environment rather than of an event: raised, never dead-lettered."""


def ingest_available(
    event_log: EventLog,
    store: DatasetStore,
    *,
    group: str = INGEST_GROUP,
    from_beginning: bool = False,
    idle_s: float = 1.0,
    max_s: float = 60.0,
) -> int:
    """Apply what the group has not stored yet; return once the log stays quiet for
    ``idle_s``, or once ``max_s`` have passed. Returns the number of new events stored."""
    stored = 0
    deadline = time.monotonic() + max_s

    def apply(records: Sequence[Record]) -> None:
        nonlocal stored
        stored += store.apply(records)

    with event_log.consumer(group, [COMPLETIONS, FEEDBACK], from_beginning=from_beginning) as consumer:
        consumer.wait_for_assignment()  # an empty poll while joining is not "quiet"
        while not consumer.handle(
            apply, max_records=1000, timeout_s=idle_s, fatal=STORE_FAILURES
        ).quiet and time.monotonic() < deadline:
            pass
    return stored
