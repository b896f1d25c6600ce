"""The labeler queue: answers sets that need more judgements, handed to one labeler at a time.

An item is one chat request answered with n ≥ 2 completions (compare mode, ``n`` > 1, the demo
labeler). It needs judgements while fewer than ``min_rankings`` labelers ranked it, or while
two of its labelers order some pair of answers oppositely and fewer than ``max_rankings`` did.
A labeler gets the oldest such item that they have neither ranked nor skipped and that no other
labeler holds: ``next`` reserves it for ``reservation_s`` (asking again renews it), so labelers
working at once do not get the same item at the same time.

State: in memory, rebuilt from the event log — a reader of the ``completions`` and ``feedback``
topics from the beginning, as the hot-swap controller reads ``adapters`` — so it needs no store
of its own and a restarted replica finds the same queue (reservations and skips are per
replica and are lost on restart, which can only cause a duplicate judgement; the trainer merges
several labelers anyway). The newest ``max_items`` items are kept. A ranking reaches the queue
through the outbox and the log, about a second after it was accepted.

Agreement with the consensus: over the answer pairs that a labeler ordered and that at least
one other labeler ordered too, the share where the labeler sides with the majority of the
others (pairs where the others are split are left out). It is a plain majority, so it can
differ from the trainer's agreement-weighted consensus (``trainer/preferences/``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import combinations

from pydantic import BaseModel, Field

from serving.config import LabelingSettings
from streams.codec import COMPLETIONS, FEEDBACK
from streams.events import ChatMessage, CompletionEvent, RankingFeedback
from streams.log import EventLog

log = logging.getLogger(__name__)

_DAY_S = 24 * 3600


class QueueAnswer(BaseModel):
    """One answer of an item to rank."""

    completion_id: str
    text: str
    adapter: str = Field(description="What served it: base, global@3, user:ann@2.")


class QueueItem(BaseModel):
    """A prompt and its answers, reserved for the labeler who asked."""

    item_id: str = Field(description="Pass as `skip` to the next call once ranked or skipped.")
    prompt_id: str
    messages: list[ChatMessage]
    answers: list[QueueAnswer]
    rankings: int = Field(description="Labelers who ranked it so far.")
    reserved_until: datetime


class LabelerProgress(BaseModel):
    """A labeler's progress: done today (UTC), left for them, and agreement with the others."""

    done_today: int
    remaining: int
    agreement: float | None = Field(description="Share of compared pairs that agree; None: none.")
    compared_pairs: int


class LabelingTask(BaseModel):
    """``GET /v1/labeling/next``: the next item (None when the queue is empty) and progress."""

    item: QueueItem | None
    progress: LabelerProgress


@dataclass
class _Item:
    request_id: str
    prompt_id: str
    messages: list[ChatMessage]
    n: int
    answers: dict[int, QueueAnswer] = field(default_factory=dict)
    rankings: dict[str, list[list[str]]] = field(default_factory=dict)  # labeler -> tie groups

    @property
    def complete(self) -> bool:
        return len(self.answers) == self.n

    def disputed(self) -> bool:
        seen: set[tuple[str, str]] = set()
        for groups in self.rankings.values():
            pairs = _preferences(groups)
            if any((loser, winner) in seen for winner, loser in pairs):
                return True
            seen |= pairs
        return False

    def needs_judgement(self, settings: LabelingSettings) -> bool:
        count = len(self.rankings)
        return count < settings.min_rankings or (count < settings.max_rankings and self.disputed())


def _preferences(groups: list[list[str]]) -> set[tuple[str, str]]:
    """(winner, loser) for every pair of answers in different tie groups."""
    return {
        (winner, loser)
        for better, worse in combinations(groups, 2) for winner in better for loser in worse
    }


class LabelingQueue:
    """The queue's state; thread-safe (the follower thread feeds it, requests read it)."""

    def __init__(self, settings: LabelingSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, _Item] = OrderedDict()  # oldest first
        self._item_of: dict[str, str] = {}  # completion id -> request id
        self._reserved: dict[str, tuple[str, float]] = {}  # request id -> (labeler, until)
        self._skipped: set[tuple[str, str]] = set()  # (labeler, request id)
        self._ranked_at: dict[str, dict[str, datetime]] = {}  # labeler -> event id -> when (24 h)

    def add_completion(self, event: CompletionEvent) -> None:
        """Record one answer; an item is offered once all its answers are in."""
        if event.sampling.n < 2 or event.truncated:
            return  # nothing to compare, or an answer cut short: the item is never offered
        with self._lock:
            item = self._items.get(event.request_id)
            if item is None:
                item = _Item(
                    event.request_id, event.prompt_id, list(event.messages), event.sampling.n
                )
                self._items[event.request_id] = item
                while len(self._items) > self.settings.max_items:
                    _, dropped = self._items.popitem(last=False)
                    for answer in dropped.answers.values():
                        self._item_of.pop(answer.completion_id, None)
            item.answers[event.choice_index] = QueueAnswer(
                completion_id=event.completion_id, text=event.completion,
                adapter=event.adapter.label,
            )
            self._item_of[event.completion_id] = event.request_id

    def add_ranking(self, event: RankingFeedback) -> None:
        """Record a labeler's ranking of an item (their latest one counts)."""
        with self._lock:
            request_id = self._item_of.get(event.ranking[0][0])
            if event.created_at.timestamp() > self._clock() - _DAY_S:  # only today's are counted
                self._ranked_at.setdefault(event.labeler_id, {})[event.event_id] = event.created_at
            if request_id is None:
                return
            self._items[request_id].rankings[event.labeler_id] = event.ranking
            holder = self._reserved.get(request_id)
            if holder and holder[0] == event.labeler_id:
                del self._reserved[request_id]

    def next(self, labeler: str, skip: str | None = None) -> LabelingTask:
        """Reserve the next item for ``labeler`` (after dropping ``skip`` from their queue)."""
        now = self._clock()
        with self._lock:
            if skip is not None:
                self._skipped.add((labeler, skip))
                if self._reserved.get(skip, ("",))[0] == labeler:
                    del self._reserved[skip]
            self._reserved = {rid: hold for rid, hold in self._reserved.items() if hold[1] > now}
            open_items = [item for item in self._items.values() if self._open_for(labeler, item)]
            holder = {rid: who for rid, (who, _) in self._reserved.items()}
            mine = [item for item in open_items if holder.get(item.request_id) == labeler]
            free = [item for item in open_items if item.request_id not in holder]
            chosen = (mine or free or [None])[0]
            task_item = None
            if chosen is not None:
                until = now + self.settings.reservation_s
                self._reserved[chosen.request_id] = (labeler, until)
                task_item = QueueItem(
                    item_id=chosen.request_id, prompt_id=chosen.prompt_id, messages=chosen.messages,
                    answers=[chosen.answers[index] for index in sorted(chosen.answers)],
                    rankings=len(chosen.rankings),
                    reserved_until=datetime.fromtimestamp(until, UTC),
                )
            progress = self._progress(labeler, len(open_items), now)
            return LabelingTask(item=task_item, progress=progress)

    def _open_for(self, labeler: str, item: _Item) -> bool:
        return (item.complete and labeler not in item.rankings
                and (labeler, item.request_id) not in self._skipped
                and item.needs_judgement(self.settings))

    def _progress(self, labeler: str, remaining: int, now: float) -> LabelerProgress:
        today = datetime.fromtimestamp(now, UTC).date()
        ranked_at = self._ranked_at.get(labeler, {}).values()
        done = sum(1 for at in ranked_at if at.astimezone(UTC).date() == today)
        agreed = compared = 0
        for item in self._items.values():
            if labeler not in item.rankings or len(item.rankings) < 2:
                continue
            others = [_preferences(g) for who, g in item.rankings.items() if who != labeler]
            for winner, loser in _preferences(item.rankings[labeler]):
                with_me = sum((winner, loser) in prefs for prefs in others)
                against = sum((loser, winner) in prefs for prefs in others)
                if with_me != against:
                    compared += 1
                    agreed += with_me > against
        return LabelerProgress(
            done_today=done, remaining=remaining, compared_pairs=compared,
            agreement=agreed / compared if compared else None,
        )


class LabelingFollower:
    """Feeds a ``LabelingQueue`` from the event log in a background thread."""

    def __init__(self, queue: LabelingQueue, open_log: Callable[[], EventLog]) -> None:
        self.queue = queue
        self._open_log = open_log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labeling-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._open_log() as event_log, \
                        event_log.consumer(None, [COMPLETIONS, FEEDBACK]) as reader:
                    while not self._stop.is_set():
                        for record in reader.poll(timeout_s=self.queue.settings.poll_s):
                            if isinstance(record.event, CompletionEvent):
                                self.queue.add_completion(record.event)
                            elif isinstance(record.event, RankingFeedback):
                                self.queue.add_ranking(record.event)
            except Exception:
                # The queue must outlive a broken log connection. A new reader starts from the
                # beginning again; recording an event twice changes nothing.
                log.exception("the labeler queue lost the event log; reading it again in 5 s")
                self._stop.wait(5)


