"""Event-log throughput: publish and consume 1 KB events on both backends, and outbox → Kafka.

    .venv/bin/python -m bench.streams --bootstrap-servers HOST:PORT [--events 50000]

Phases per backend (each on a fresh topic namespace):
  publish      publish N events and flush: events/s until the last one is durable
  consume      one group consumer reads the N events back: events/s
  concurrent   a producer process and a consumer process at once: each one's events/s, and
               the consumer's lag when the producer finished (does it keep up?)
Kafka publish paths: the same N events published as event objects (validated and encoded per
call), as pre-encoded bytes (``publish_bytes``, the outbox drainer's path), and by a bare
kafka-python producer with the same settings (the ceiling: what the client library alone does).
Outbox: ``Outbox.put`` rate (the request path's cost), then an ``OutboxDrainer`` delivering
the backlog to Kafka: events/s until the outbox is empty.
Kafka is whatever broker ``--bootstrap-servers`` names; the figures in BENCHMARKS.md are the
Tansu test broker (memory storage) on loopback, sharing the 2 cores, started by hand as
BENCHMARKS.md shows.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaProducer

from streams.codec import COMPLETIONS, encode
from streams.config import KafkaSettings
from streams.events import AdapterRef, ChatMessage, CompletionEvent, SamplingParams
from streams.kafka_log import KafkaEventLog
from streams.log import EventLog
from streams.outbox import Outbox, OutboxDrainer
from streams.sqlite_log import SqliteEventLog

EVENT_BYTES = 1024


def make_events(count: int) -> list[CompletionEvent]:
    """``count`` completion events of about ``EVENT_BYTES`` each when encoded."""
    def event(text: str) -> CompletionEvent:
        return CompletionEvent(
            completion_id=uuid.uuid4().hex, request_id=uuid.uuid4().hex, prompt_id="p",
            user_id=f"user-{uuid.uuid4().hex[:6]}", model="demo",
            messages=[ChatMessage(role="user", content="How do I keep basil alive indoors?")],
            completion=text, choice_index=0, adapter=AdapterRef(scope="global", version=1),
            sampling=SamplingParams(temperature=0.7), prompt_tokens=12, completion_tokens=40,
            latency_ms=85.0,
        )
    padding = EVENT_BYTES - len(encode(COMPLETIONS, event("")))
    return [event("a" * padding) for _ in range(count)]


def open_log(backend: str, location: str) -> EventLog:
    if backend == "sqlite":
        return SqliteEventLog(Path(location))
    bootstrap, prefix = location.split("|")
    event_log = KafkaEventLog(KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix))
    event_log.create_topics()
    return event_log


def publish(backend: str, location: str, count: int) -> float:
    """Publish ``count`` events and flush; return events/s."""
    events = make_events(count)
    event_log = open_log(backend, location)
    start = time.perf_counter()
    for event in events:
        event_log.publish(COMPLETIONS, event.user_id, event)
    event_log.flush()
    elapsed = time.perf_counter() - start
    event_log.close()
    return count / elapsed


def publish_encoded(location: str, count: int) -> float:
    """Publish ``count`` pre-encoded events to Kafka with ``publish_bytes`` and flush; events/s."""
    payloads = [(event.user_id, encode(COMPLETIONS, event)) for event in make_events(count)]
    event_log = open_log("kafka", location)
    start = time.perf_counter()
    for key, payload in payloads:
        event_log.publish_bytes(COMPLETIONS, key, payload)
    event_log.flush()
    elapsed = time.perf_counter() - start
    event_log.close()
    return count / elapsed


def kafka_python_alone(location: str, count: int) -> float:
    """The same pre-encoded events through a bare ``KafkaProducer`` configured as hhh's; events/s."""
    payloads = [(event.user_id.encode(), encode(COMPLETIONS, event)) for event in make_events(count)]
    event_log = open_log("kafka", location)  # creates the topics
    event_log.close()
    bootstrap, prefix = location.split("|")
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    producer = KafkaProducer(acks="all", linger_ms=settings.producer_linger_ms,
                             batch_size=settings.producer_batch_bytes, enable_idempotence=False,
                             **settings.client_options())
    start = time.perf_counter()
    for key, payload in payloads:
        producer.send(prefix + COMPLETIONS, key=key, value=payload)
    producer.flush()
    elapsed = time.perf_counter() - start
    producer.close()
    return count / elapsed


def consume(backend: str, location: str, count: int, timing: dict | None = None) -> float:
    """Read ``count`` events with one group consumer; return events/s from the first event."""
    event_log = open_log(backend, location)
    with event_log.consumer("bench", [COMPLETIONS]) as consumer:
        received = len(consumer.poll(max_records=5000, timeout_s=30))
        start = time.perf_counter()
        while received < count:
            received += len(consumer.poll(max_records=5000, timeout_s=5))
        elapsed = time.perf_counter() - start
        consumer.commit()
    if timing is not None:
        timing["finished"] = time.time()
    return count / max(elapsed, 1e-9)


def _consume_in_child(backend: str, location: str, count: int, queue: multiprocessing.Queue) -> None:
    timing: dict = {}
    rate = consume(backend, location, count, timing)
    queue.put((rate, timing["finished"]))


def concurrent(backend: str, location: str, count: int) -> tuple[float, float, float]:
    """Producer here, consumer in another process; (producer/s, consumer/s, lag seconds)."""
    queue: multiprocessing.Queue = multiprocessing.Queue()
    child = multiprocessing.Process(target=_consume_in_child, args=(backend, location, count, queue))
    child.start()
    time.sleep(4)  # let the consumer join its group before the clock starts
    produced = publish(backend, location, count)
    producer_done = time.time()
    consumed, consumer_done = queue.get(timeout=300)
    child.join()
    return produced, consumed, max(0.0, consumer_done - producer_done)


def outbox_to_kafka(bootstrap: str, count: int, folder: Path) -> tuple[float, float]:
    """(puts/s into the outbox, events/s delivered from the outbox to Kafka)."""
    events = make_events(count)
    outbox = Outbox(folder / "outbox.db", name="bench")
    start = time.perf_counter()
    for event in events:
        outbox.put(COMPLETIONS, event.user_id, event)
    put_rate = count / (time.perf_counter() - start)
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"outbox{uuid.uuid4().hex[:6]}.")
    event_log = KafkaEventLog(settings)
    event_log.create_topics()
    drainer = OutboxDrainer(outbox, lambda: event_log, batch_size=5000)
    start = time.perf_counter()
    drainer.drain(timeout_s=600)
    return put_rate, count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per phase")
    parser.add_argument("--bootstrap-servers", required=True, metavar="HOST:PORT",
                        help="the Kafka broker to measure (each phase uses fresh topics)")
    args = parser.parse_args()
    count = args.events
    bootstrap = args.bootstrap_servers
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for backend in ("sqlite", "kafka"):
            def location(name: str) -> str:
                if backend == "sqlite":
                    return str(folder / f"{name}.db")
                return f"{bootstrap}|{name}{uuid.uuid4().hex[:6]}."
            here = location("sequential")
            published = publish(backend, here, count)
            consumed = consume(backend, here, count)
            produced_live, consumed_live, lag = concurrent(backend, location("concurrent"), count)
            rows.append((backend, published, consumed, produced_live, consumed_live, lag))
        kafka_paths = [
            (name, measure(f"{bootstrap}|{name.split()[0]}{uuid.uuid4().hex[:6]}.", count))
            for name, measure in (("events (publish)", lambda loc, n: publish("kafka", loc, n)),
                                  ("pre-encoded (publish_bytes)", publish_encoded),
                                  ("kafka-python alone", kafka_python_alone))
        ]
        put_rate, delivered = outbox_to_kafka(bootstrap, count, folder)

    print(f"\n{count:,} events of {EVENT_BYTES} bytes per phase\n")
    print("| backend | publish ev/s | consume ev/s | concurrent: produce ev/s | consume ev/s | consumer lag at end |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend, published, consumed, produced_live, consumed_live, lag in rows:
        print(f"| {backend} | {published:,.0f} | {consumed:,.0f} | {produced_live:,.0f} | "
              f"{consumed_live:,.0f} | {lag:.2f} s |")
    print("\n| Kafka publish path | ev/s |\n|---|---:|")
    for name, rate in kafka_paths:
        print(f"| {name} | {rate:,.0f} |")
    print(f"\n| outbox | put ev/s (request path) | delivered to Kafka ev/s |\n|---|---:|---:|\n"
          f"| sqlite → kafka | {put_rate:,.0f} | {delivered:,.0f} |")


if __name__ == "__main__":
    main()
