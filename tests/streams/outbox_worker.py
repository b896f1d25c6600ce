"""A publishing process for the crash test: fills an outbox, then drains it to Kafka slowly.

    python -m tests.streams.outbox_worker OUTBOX BOOTSTRAP PREFIX [--put N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streams.codec import FEEDBACK
from streams.config import KafkaSettings
from streams.events import ThumbsFeedback
from streams.kafka_log import KafkaEventLog
from streams.outbox import Outbox, OutboxDrainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("outbox", type=Path)
    parser.add_argument("bootstrap")
    parser.add_argument("prefix")
    parser.add_argument("--put", type=int, default=0, help="events to add before draining")
    args = parser.parse_args()

    outbox = Outbox(args.outbox)
    for i in range(args.put):
        outbox.put(FEEDBACK, f"u{i % 7}", ThumbsFeedback(completion_id=f"c{i}", user_id=f"u{i % 7}", vote="up"))
    settings = KafkaSettings(bootstrap_servers=args.bootstrap, topic_prefix=args.prefix)
    print("filled", flush=True)
    # Small batches, so that the parent can kill this process between two of them.
    OutboxDrainer(outbox, lambda: KafkaEventLog(settings), batch_size=20).drain(timeout_s=120)
    print("drained", flush=True)


if __name__ == "__main__":
    main()
