"""Ingest: the ``completions`` and ``feedback`` topics into the dataset store.

Offsets are committed only after ``DatasetStore.apply`` committed its transaction, so a crash
between the two re-delivers the batch, which the store ignores by ``event_id``.
"""

from __future__ import annotations

from streams.codec import COMPLETIONS, FEEDBACK
from streams.log import EventLog
from trainer.preferences.store import DatasetStore

INGEST_GROUP = "trainer-ingest"


def ingest_available(
    event_log: EventLog,
    store: DatasetStore,
    *,
    group: str = INGEST_GROUP,
    from_beginning: bool = False,
    idle_s: float = 1.0,
) -> int:
    """Apply everything the group has not stored yet; return once the log stays quiet
    for ``idle_s``. Returns the number of new events stored."""
    stored = 0
    with event_log.consumer(group, [COMPLETIONS, FEEDBACK], from_beginning=from_beginning) as consumer:
        consumer.wait_for_assignment()  # an empty poll while joining is not "quiet"
        while records := consumer.poll(max_records=1000, timeout_s=idle_s):
            stored += store.apply(records)
            consumer.commit()
    return stored
