"""The soak's load: users chatting and rating what they got, a labeler ranking, a flooder — and
the ledger of every feedback event the gateway accepted, to compare with the dataset.

Each user is a thread that asks for two answers (``n=2``, the `openai` client), votes one up and
the other down (httpx, one fresh ``Idempotency-Key`` per vote), sometimes sends the same vote
again with the same key (a client's retry: the gateway must answer with the same event id) and
sometimes changes its mind (a new key: a new event that supersedes the old one). The labeler
ranks the users' answer pairs. A feedback request is retried with its key until the gateway
answers 2xx or refuses it with a 4xx other than 429 — as a client that must not lose a vote
does — so everything the soak meant to send is accepted in the end, across any fault.

Every HTTP attempt is counted (`Tally`): that is what the operator's dashboards see.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import numpy as np
from openai import APIConnectionError, APIStatusError, APITimeoutError, OpenAI

CHAT_MODEL = "hhh"
PROMPTS = [f"{question} ({detail})" for question in (
    "How do I keep basil alive indoors?", "What is a good way to start running?",
    "How long should I boil an egg?", "Can you suggest a quick vegetarian dinner?",
    "How do I remove a coffee stain?", "What should I pack for a hike?",
    "How can I fall asleep faster?", "How often should I water a cactus?",
    "How do I clean a cast iron pan?", "Why is the sky blue?",
) for detail in ("briefly", "for a beginner", "step by step", "in one sentence", "for kids",
                 "on a budget", "in winter", "with examples", "politely", "as a list")]
"""100 distinct prompts: enough for the trainer's held-out split to get some."""
FEEDBACK_GIVE_UP_S = 600.0
"""A vote still not accepted after this long is reported as unresolved."""


@dataclass
class Tally:
    """Counts of HTTP attempts, by kind and outcome, and the latency of served chats."""

    counts: Counter[str] = field(default_factory=Counter)
    """``<kind>:<outcome>``: kind ``chat``/``feedback``/``flood``; outcome ``2xx``, ``4xx``,
    ``429``, ``5xx`` or ``transport`` (no answer: connection refused or reset, timeout)."""
    chat_latencies_s: list[tuple[float, float]] = field(default_factory=list)
    """(when, seconds) of every served chat of an ordinary user."""
    retry_after_missing: int = 0
    """429 answers without a ``Retry-After`` header (must stay 0)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, kind: str, status: int | None) -> None:
        outcome = ("transport" if status is None else "2xx" if status < 300 else "429" if status == 429
                   else "4xx" if status < 500 else "5xx")
        with self._lock:
            self.counts[f"{kind}:{outcome}"] += 1

    def missing_retry_after(self) -> None:
        with self._lock:
            self.retry_after_missing += 1

    def served_chat(self, latency_s: float) -> None:
        with self._lock:
            self.chat_latencies_s.append((time.monotonic(), latency_s))

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def chat_p99_s(self, since: float, until: float) -> float | None:
        """p99 latency of ordinary users' served chats between two ``time.monotonic()`` marks."""
        with self._lock:
            window = [s for when, s in self.chat_latencies_s if since <= when <= until]
        return float(np.percentile(window, 99)) if window else None


@dataclass(frozen=True)
class AcceptedFeedback:
    """One feedback event the gateway answered 2xx for."""

    target: tuple[str, ...]
    """What it rates: ``("thumbs", user, completion, criterion)`` or ``("ranking", labeler, a
    completion of the prompt, criterion)``."""
    vote: str
    """``up``/``down``, or ``ranking``."""
    accepted_at: float
    """``time.monotonic()`` of the 2xx."""


@dataclass
class Ledger:
    """Every feedback event id the gateway accepted, and what each target's latest vote is."""

    accepted: dict[str, AcceptedFeedback] = field(default_factory=dict)
    served_completions: set[str] = field(default_factory=set)
    """Completion ids of every chat answer the users were served (their events must be stored too)."""
    latest_thumbs: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """(user, completion, criterion) -> the vote the user sent last."""
    notes: Counter[str] = field(default_factory=Counter)
    """``retries_with_same_key``; ``retries_given_a_new_event_id`` (must stay 0);
    ``changed_votes``; ``refused_<status>``: feedback refused with a 4xx other than 429 (a
    harness bug if any); ``unresolved``: not accepted within ``FEEDBACK_GIVE_UP_S``."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def accept(self, event_id: str, feedback: AcceptedFeedback) -> None:
        with self._lock:
            self.accepted.setdefault(event_id, feedback)
            if feedback.target[0] == "thumbs":
                _, user, completion, criterion = feedback.target
                self.latest_thumbs[(user, completion, criterion)] = feedback.vote

    def note(self, what: str) -> None:
        with self._lock:
            self.notes[what] += 1

    def accepted_since(self, since: float) -> set[str]:
        with self._lock:
            return {eid for eid, feedback in self.accepted.items() if feedback.accepted_at >= since}

    def served(self, completion_ids: list[str]) -> None:
        with self._lock:
            self.served_completions.update(completion_ids)

    def completions(self) -> set[str]:
        with self._lock:
            return set(self.served_completions)

    def latest_votes(self) -> dict[tuple[str, str, str], str]:
        with self._lock:
            return dict(self.latest_thumbs)

    def event_ids(self) -> set[str]:
        with self._lock:
            return set(self.accepted)


class Traffic:
    """Steady chat and feedback load against ``url`` from ``user_keys`` and ``labeler_key``."""

    def __init__(self, url: str, user_keys: dict[str, str], labeler_key: str, *, think_s: float = 0.3,
                 seed: int = 0) -> None:
        self.url = url
        self.user_keys = user_keys
        self.labeler_key = labeler_key
        self.think_s = think_s
        self.tally = Tally()
        self.ledger = Ledger()
        self._seed = seed
        self._stop = threading.Event()
        self._load_allowed = threading.Event()
        self._load_allowed.set()
        self._to_rank: list[tuple[str, str]] = []
        self._to_rank_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._inflight = 0
        self._inflight_lock = threading.Lock()

    def start(self) -> None:
        for index, (user, key) in enumerate(sorted(self.user_keys.items())):
            self._threads.append(threading.Thread(target=self._user, args=(user, key, index),
                                                  name=f"soak-{user}", daemon=True))
        self._threads.append(threading.Thread(target=self._labeler, name="soak-labeler", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop sending new requests; return once every feedback in flight is resolved."""
        self._stop.set()
        self._load_allowed.set()
        for thread in self._threads:
            thread.join(FEEDBACK_GIVE_UP_S + 60)

    def hold(self) -> None:
        """New chats and votes wait until `release`; return once those in flight are done."""
        self._load_allowed.clear()
        while True:
            with self._inflight_lock:
                if self._inflight == 0:
                    return
            time.sleep(0.05)

    def release(self) -> None:
        self._load_allowed.set()

    @contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Wait while the load is held, then count the request as in flight while it lasts."""
        self._load_allowed.wait()
        with self._inflight_lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._inflight_lock:
                self._inflight -= 1

    # -- the clients --------------------------------------------------------------------------

    def _user(self, user: str, key: str, index: int) -> None:
        rng = random.Random(self._seed * 1000 + index)
        chat = OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)
        with httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
            while not self._stop.is_set():
                with self._in_flight():
                    ids = self._chat(chat, rng)
                if len(ids) == 2:
                    self._rate(http, user, ids, rng)
                    with self._to_rank_lock:
                        self._to_rank.append((ids[0], ids[1]))
                self._stop.wait(self.think_s)

    def _chat(self, chat: OpenAI, rng: random.Random) -> list[str]:
        """One chat with two answers; their completion ids ([] when not served)."""
        started = time.monotonic()
        try:
            reply = chat.chat.completions.create(
                model=CHAT_MODEL, messages=[{"role": "user", "content": rng.choice(PROMPTS)}],
                max_tokens=8, n=2, temperature=1.0)
        except APIStatusError as error:
            self.tally.count("chat", error.status_code)
            if error.status_code >= 500:
                self._stop.wait(1.0)  # no engine: retry shortly, as the 503's detail asks
            return []
        except (APIConnectionError, APITimeoutError):
            self.tally.count("chat", None)
            self._stop.wait(0.5)  # the gateway is restarting: do not spin
            return []
        self.tally.count("chat", 200)
        self.tally.served_chat(time.monotonic() - started)
        ids = [choice.completion_id for choice in reply.choices]  # type: ignore[attr-defined]
        self.ledger.served(ids)
        return ids

    def _rate(self, http: httpx.Client, user: str, ids: list[str], rng: random.Random) -> None:
        liked, disliked = (ids[0], ids[1]) if rng.random() < 0.5 else (ids[1], ids[0])
        for completion, vote in ((liked, "up"), (disliked, "down")):
            self._thumbs(http, user, completion, vote, retry_with_same_key=rng.random() < 0.2)
        if rng.random() < 0.2:  # a change of mind: a new event that supersedes the first
            self.ledger.note("changed_votes")
            self._thumbs(http, user, liked, "down", retry_with_same_key=False)

    def _thumbs(self, http: httpx.Client, user: str, completion: str, vote: str, *,
                retry_with_same_key: bool) -> None:
        body = {"completion_id": completion, "vote": vote, "criterion": "helpfulness"}
        target = ("thumbs", user, completion, "helpfulness")
        key = uuid.uuid4().hex
        event_id = self._send_feedback(http, "/v1/feedback", body, key, target, vote)
        if event_id is not None and retry_with_same_key:
            self.ledger.note("retries_with_same_key")
            again = self._send_feedback(http, "/v1/feedback", body, key, target, vote)
            if again is not None and again != event_id:
                self.ledger.note("retries_given_a_new_event_id")

    def _labeler(self) -> None:
        with httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {self.labeler_key}"},
                          timeout=60) as http:
            while not self._stop.is_set():
                with self._to_rank_lock:
                    pair = self._to_rank.pop() if self._to_rank else None
                if pair is None:
                    self._stop.wait(self.think_s)
                    continue
                body = {"ranking": list(pair), "criterion": "helpfulness"}
                self._send_feedback(http, "/v1/rankings", body, uuid.uuid4().hex,
                                    ("ranking", "labeler", pair[0], "helpfulness"), "ranking")

    def _send_feedback(self, http: httpx.Client, path: str, body: dict, key: str,
                       target: tuple[str, ...], vote: str) -> str | None:
        """POST until a 2xx (its event id, entered in the ledger) or a refusal (None)."""
        with self._in_flight():
            deadline = time.monotonic() + FEEDBACK_GIVE_UP_S
            while time.monotonic() < deadline:
                try:
                    response = http.post(path, json=body, headers={"idempotency-key": key})
                except httpx.TransportError:
                    self.tally.count("feedback", None)
                    time.sleep(0.5)
                    continue
                self.tally.count("feedback", response.status_code)
                if response.status_code < 300:
                    event_id = response.json()["event_id"]
                    self.ledger.accept(event_id, AcceptedFeedback(target, vote, time.monotonic()))
                    return event_id
                if response.status_code == 429 or response.status_code >= 500:
                    time.sleep(float(response.headers.get("retry-after", 0.5)))
                    continue
                self.ledger.note(f"refused_{response.status_code}")
                return None
            self.ledger.note("unresolved")
            return None


def flood(url: str, key: str, tally: Tally, *, seconds: float, concurrency: int) -> None:
    """``concurrency`` threads sending chats as fast as they can with one API key, for
    ``seconds``; every 429 must carry ``Retry-After`` (`Tally.retry_after_missing`)."""
    pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60,
                      limits=pool) as http:
        stop_at = time.monotonic() + seconds

        def hammer() -> None:
            while time.monotonic() < stop_at:
                try:
                    response = http.post("/v1/chat/completions", json={
                        "model": CHAT_MODEL, "messages": [{"role": "user", "content": "flood"}],
                        "max_tokens": 4})
                except httpx.TransportError:
                    tally.count("flood", None)
                    continue
                tally.count("flood", response.status_code)
                if response.status_code == 429 and "retry-after" not in response.headers:
                    tally.missing_retry_after()

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
