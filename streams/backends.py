"""Open the configured event log."""

from __future__ import annotations

from streams.config import EventLogSettings, KafkaSettings
from streams.log import EventLog


def open_event_log(
    settings: EventLogSettings | None = None, kafka: KafkaSettings | None = None
) -> EventLog:
    """The event log ``settings`` selects (from the environment when omitted), topics created."""
    settings = settings or EventLogSettings()
    if settings.backend == "kafka":
        from streams.kafka_log import KafkaEventLog

        event_log: EventLog = KafkaEventLog(kafka or KafkaSettings())
        event_log.create_topics()
        return event_log
    from streams.sqlite_log import SqliteEventLog

    return SqliteEventLog(
        settings.sqlite_path,
        partitions=settings.sqlite_partitions,
        durable_sync=settings.sqlite_durable_sync,
    )
