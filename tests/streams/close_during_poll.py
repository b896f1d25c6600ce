"""A process that closes SQLite event-log connections while other threads use them.

    python -m tests.streams.close_during_poll LOG_PATH [--trials N]

Each trial starts a thread that reads the whole log again and again (a reader) and one that
publishes and flushes (a writer), waits a random few milliseconds, closes the consumer and the
log from the main thread, and joins both. A thread may end with ``sqlite3.ProgrammingError``
(it used a closed connection: the documented outcome); any other error, or the process crashing,
fails the parent's test. Prints ``ok TRIALS`` at the end.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from streams.codec import FEEDBACK
from streams.events import ThumbsFeedback
from streams.sqlite_log import SqliteEventLog

_MESSAGES = 3000


def _vote(i: int) -> ThumbsFeedback:
    return ThumbsFeedback(completion_id=f"c{i}-" + "x" * 200, user_id=f"u{i % 7}", vote="up")


def _until_closed(work: Callable[[], object], errors: list[BaseException]) -> None:
    try:
        while True:
            work()
    except sqlite3.ProgrammingError:
        return  # the connection was closed under the next call, as documented
    except BaseException as error:  # noqa: BLE001 - reported by the main thread
        errors.append(error)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log_path", type=Path)
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    with SqliteEventLog(args.log_path) as event_log:
        for i in range(_MESSAGES):
            event_log.publish(FEEDBACK, f"u{i % 7}", _vote(i))
    chooser = random.Random(0)
    for _ in range(args.trials):
        event_log = SqliteEventLog(args.log_path)
        consumer = event_log.consumer("readers", [FEEDBACK], from_beginning=True)

        def read_all(consumer=consumer) -> None:
            consumer.seek_to_beginning()
            consumer.poll_batch(max_records=_MESSAGES, timeout_s=0.0)

        def publish(event_log=event_log) -> None:
            event_log.publish(FEEDBACK, "u0", _vote(0))
            event_log.flush()

        errors: list[BaseException] = []
        threads = [threading.Thread(target=_until_closed, args=(work, errors), daemon=True)
                   for work in (read_all, publish)]
        for thread in threads:
            thread.start()
        time.sleep(chooser.uniform(0.001, 0.03))
        consumer.close()
        event_log.close()
        for thread in threads:
            thread.join(30)
        if errors:
            raise errors[0]
    print(f"ok {args.trials}", flush=True)


if __name__ == "__main__":
    main()
