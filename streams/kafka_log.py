"""The event log on Kafka (kafka-python), for deployments of several machines.

Producer: ``acks="all"``, unbounded retries within ``delivery_timeout_ms``, keyed messages,
large batches with a short linger (throughput comes from batching: see BENCHMARKS.md). Idempotence stays off: kafka-python 2.3's idempotent producer
fails against some Kafka-protocol brokers, and consumers dedupe by ``event_id`` anyway.
Consumers: auto-commit off, ``auto_offset_reset="earliest"`` (a new group reads everything;
``latest`` would silently skip events published before it joined), commits after the effect.
Topics: created explicitly with the configured partitions; ``adapters`` as compacted, but
readers still compute "latest per key" themselves (not every broker compacts, and compaction
is eventual anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.codec import COMPACTED_TOPICS, MAX_EVENT_BYTES, TOPIC_SCHEMAS, check_topic
from streams.config import KafkaSettings
from streams.log import EventConsumer, EventLog, RawRecord

log = logging.getLogger(__name__)

_ENVELOPE_BYTES = 64 * 1024
"""Room for record headers and batch framing above the largest event."""


class DeliveryError(RuntimeError):
    """Some published events were not acknowledged by the brokers."""


class KafkaEventLog(EventLog):
    """An ``EventLog`` on a Kafka cluster; see the module docstring."""

    backend = "kafka"

    def __init__(self, settings: KafkaSettings, *, client_id: str = "hhh") -> None:
        """Connect a producer (raises ``kafka.errors.NoBrokersAvailable`` if none answers)."""
        self.settings = settings
        self._client_id = client_id
        self._producer = KafkaProducer(
            client_id=client_id,
            acks="all",
            linger_ms=settings.producer_linger_ms,
            batch_size=settings.producer_batch_bytes,
            enable_idempotence=False,
            max_request_size=MAX_EVENT_BYTES + _ENVELOPE_BYTES,
            **settings.client_options(),
        )
        self._pending: list = []

    def physical(self, topic: str) -> str:
        """The Kafka topic name of a logical topic."""
        return self.settings.topic_prefix + topic

    def logical(self, physical_topic: str) -> str:
        """The logical topic of a Kafka topic name."""
        return physical_topic.removeprefix(self.settings.topic_prefix)

    def create_topics(self) -> None:
        admin = KafkaAdminClient(client_id=f"{self._client_id}-admin", **self.settings.client_options())
        try:
            for topic in TOPIC_SCHEMAS:
                configs = {"cleanup.policy": "compact"} if topic in COMPACTED_TOPICS else {}
                new_topic = NewTopic(
                    self.physical(topic),
                    num_partitions=self.settings.partitions,
                    replication_factor=self.settings.replication_factor,
                    topic_configs=configs,
                )
                try:
                    admin.create_topics([new_topic])
                except TopicAlreadyExistsError:
                    pass
        finally:
            admin.close()

    def _send(self, topic: str, key: str | None, payload: bytes) -> None:
        future = self._producer.send(
            self.physical(topic), key=key.encode("utf-8") if key is not None else None, value=payload
        )
        self._pending.append(future)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every pending send; raise ``DeliveryError`` if any failed."""
        pending, self._pending = self._pending, []
        self._producer.flush(timeout=timeout_s)
        failures = [future.exception for future in pending if future.failed() or not future.is_done]
        if failures:
            raise DeliveryError(
                f"{len(failures)} of {len(pending)} events were not acknowledged; first: {failures[0]!r}"
            )

    def consumer(
        self, group: str | None, topics: Sequence[str], *, from_beginning: bool = False
    ) -> KafkaEventConsumer:
        for topic in topics:
            check_topic(topic)
        return KafkaEventConsumer(self, group, topics, from_beginning=from_beginning)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush (raising ``DeliveryError`` for what did not get through) and disconnect."""
        try:
            self.flush(timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)


class _SeekToBeginningOnAssign(ConsumerRebalanceListener):
    """Rewinds every partition the group assigns (a rebuild ignores committed offsets)."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Nothing to do: positions are committed by the poll loop, after the effect."""

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            self._consumer.seek_to_beginning(*assigned)


class KafkaEventConsumer(EventConsumer):
    """A consumer of a ``KafkaEventLog``: a group member, or a group-less reader."""

    def __init__(
        self,
        event_log: KafkaEventLog,
        group: str | None,
        topics: Sequence[str],
        *,
        from_beginning: bool,
    ) -> None:
        super().__init__(event_log, group)
        self._kafka_log = event_log
        settings = event_log.settings
        self._consumer = KafkaConsumer(
            group_id=settings.topic_prefix + group if group is not None else None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_partition_fetch_bytes=MAX_EVENT_BYTES + _ENVELOPE_BYTES,
            **settings.client_options(),
        )
        physical_topics = [event_log.physical(topic) for topic in topics]
        self._stash: list[RawRecord] = []
        if group is None:
            partitions = [
                TopicPartition(topic, partition)
                for topic in physical_topics
                for partition in sorted(self._consumer.partitions_for_topic(topic))
            ]
            self._consumer.assign(partitions)
            self._consumer.seek_to_beginning(*partitions)
        else:
            listener = _SeekToBeginningOnAssign(self._consumer) if from_beginning else None
            self._consumer.subscribe(physical_topics, listener=listener)

    def _fetch(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        if self._stash:
            fetched, self._stash = self._stash[:max_records], self._stash[max_records:]
            return fetched
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [
            RawRecord(
                topic=self._kafka_log.logical(message.topic),
                partition=message.partition,
                offset=message.offset,
                key=message.key.decode("utf-8", "replace") if message.key is not None else None,
                payload=message.value if message.value is not None else b"",
                timestamp=datetime.fromtimestamp(message.timestamp / 1000, UTC),
            )
            for messages in batches.values()
            for message in messages
        ]

    def _join(self) -> None:
        self._stash.extend(self._fetch(500, 0.2))

    def _commit(self) -> None:
        try:
            self._consumer.commit()
        except KafkaError:
            log.warning("commit failed (rebalance?); uncommitted records will be re-read")
            raise

    def assignment(self) -> set[tuple[str, int]]:
        return {
            (self._kafka_log.logical(tp.topic), tp.partition) for tp in self._consumer.assignment()
        }

    def seek_to_beginning(self) -> None:
        self._stash.clear()
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.seek_to_beginning(*assigned)

    def close(self) -> None:
        self._consumer.close(autocommit=False)
