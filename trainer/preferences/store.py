"""The trainer's dataset store: completions, votes and rankings materialised from the log.

``apply`` stores a batch of log records in one SQLite transaction and is idempotent by
``event_id``: a redelivered event changes nothing, so the ingest consumer can commit its
offsets after ``apply`` returns (at-least-once delivery, effectively-once effect).

Feedback identity (see ``serving.feedback``): one request, retries included, is one event id;
every changed vote or ranking is a new event. Every feedback event is kept, and the latest one
(``created_at``, then ``event_id``) of each user per completion and criterion, and of each
labeler per prompt and criterion, is the one that counts: up, down, up again counts as up,
once. An event id seen again with a later ``created_at`` (a retry of a request: with the same
``Idempotency-Key``, or repeating the caller's latest feedback) counts as of that later time:
the latest request accepted wins, even a retry that reached the gateways after a newer one.

Order does not matter: out-of-order delivery keeps the latest vote; feedback that arrives
before its completion is stored and simply yields no pair until the completion arrives. The
store is a pure function of the set of events, which is what makes ``hhh data rebuild``
(replay into a fresh store) give an identical store.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common.files import private_file
from common.sqlite import connect
from streams.events import CompletionEvent, Event, RankingFeedback, ThumbsFeedback
from streams.log import Record
from trainer.preferences.pairs import Consensus, Judgement, merge_judgements, thumbs_pairs
from trainer.preferences.voices import cap_voices, scaled_voices

_SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (event_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS completions (
    completion_id TEXT PRIMARY KEY, prompt_id TEXT NOT NULL, user_id TEXT NOT NULL,
    messages TEXT NOT NULL, completion TEXT NOT NULL, adapter TEXT NOT NULL,
    truncated INTEGER NOT NULL, created_at TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS completions_by_prompt ON completions (prompt_id);
CREATE TABLE IF NOT EXISTS thumbs (
    event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, completion_id TEXT NOT NULL,
    criterion TEXT NOT NULL, vote TEXT NOT NULL, comment TEXT, created_at TEXT NOT NULL
    ) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS thumbs_by_target ON thumbs (user_id, completion_id, criterion);
CREATE TABLE IF NOT EXISTS rankings (
    event_id TEXT PRIMARY KEY, prompt_id TEXT NOT NULL, user_id TEXT NOT NULL,
    labeler_id TEXT NOT NULL, criterion TEXT NOT NULL, groups TEXT NOT NULL,
    unusable TEXT NOT NULL, created_at TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)) WITHOUT ROWID;
"""

_MIGRATIONS = {
    # 1: every thumbs event kept (``thumbs``), instead of only the latest per target (``votes``).
    1: """CREATE TABLE IF NOT EXISTS votes (event_id TEXT, user_id TEXT, completion_id TEXT,
              criterion TEXT, vote TEXT, comment TEXT, created_at TEXT);
          INSERT OR IGNORE INTO thumbs SELECT event_id, user_id, completion_id, criterion, vote,
              comment, created_at FROM votes;
          DROP TABLE votes;""",
}
"""Schema changes of stores written by older versions, by ``PRAGMA user_version``."""

_LATEST_VOTES = """
SELECT user_id, completion_id, criterion, vote FROM (
    SELECT user_id, completion_id, criterion, vote, row_number() OVER (
        PARTITION BY user_id, completion_id, criterion ORDER BY created_at DESC, event_id DESC
    ) AS newest FROM thumbs)
WHERE newest = 1 ORDER BY user_id, completion_id
"""
"""Each user's latest vote per completion and criterion."""

_TABLES = ("applied", "completions", "thumbs", "rankings")
"""What the events say (``dump``); ``positions`` says where in one log they were read."""
Message = dict[str, str]
"""A chat message: ``{"role": ..., "content": ...}``."""


@dataclass(frozen=True)
class PreferencePair:
    """One training pair: ``chosen`` preferred over ``rejected`` for ``prompt_id``."""

    prompt_id: str
    criterion: str
    chosen_id: str
    rejected_id: str
    weight: float
    source: str
    """``ranking`` or ``thumbs`` (``votes``: a held-out vote comparison, built by
    ``trainer.reward.refresh`` for evaluation only)."""
    user_id: str | None
    """The user whose feedback alone gave the pair (for per-user adapters): a thumbs pair of
    their own up and down votes, or a ranking only they gave; None if several users' did."""
    labelers: tuple[str, ...]
    split: str
    """``train`` or ``eval``: stable per prompt (hash of the prompt id)."""


@dataclass(frozen=True)
class Vote:
    """One user's latest thumbs vote on one completion under one criterion."""

    prompt_id: str
    criterion: str
    completion_id: str
    user_id: str
    up: bool
    split: str
    """``train`` or ``eval``, as the pairs of the same prompt."""
    weight: float = 1.0
    """The vote's share of the pointwise reward loss: below 1 where its user's votes are capped
    (``trainer.preferences.voices``)."""


def split_of(prompt_id: str, eval_percent: int) -> str:
    """``eval`` for a stable ``eval_percent`` % of prompts, by the SHA-256 of the prompt id."""
    bucket = int(hashlib.sha256(prompt_id.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "eval" if bucket < eval_percent else "train"


class DatasetStore:
    """Completions and feedback in one SQLite file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        private_file(self.path)  # every user's prompts: owner only
        self._db = connect(self.path, durable_sync=True)
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for target in sorted(v for v in _MIGRATIONS if v > version):
            self._db.executescript(
                f"BEGIN IMMEDIATE; {_MIGRATIONS[target]} PRAGMA user_version = {target}; COMMIT;"
            )

    def apply(self, records: Iterable[Record]) -> int:
        """Store the events of ``records`` in one transaction; return how many were new."""
        new = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for record in records:
                event = record.event
                inserted = self._db.execute(
                    "INSERT OR IGNORE INTO applied VALUES (?)", (event.event_id,)
                ).rowcount
                new += inserted
                self._store(event)  # again for a known id too: it may carry a later time
                self._db.execute(
                    "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE"
                    " SET next_offset = max(next_offset, excluded.next_offset)",
                    (record.topic, record.partition, record.offset + 1),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return new

    def _store(self, event: Event) -> None:
        created = event.created_at.isoformat()
        if isinstance(event, CompletionEvent):
            messages = json.dumps([m.model_dump() for m in event.messages], separators=(",", ":"))
            self._db.execute(
                "INSERT OR IGNORE INTO completions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (event.completion_id, event.prompt_id, event.user_id, messages, event.completion,
                 event.adapter.label, int(event.truncated), created),
            )
        elif isinstance(event, ThumbsFeedback):
            self._db.execute(
                "INSERT INTO thumbs VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE"
                " SET created_at = max(created_at, excluded.created_at)",
                (event.event_id, event.user_id, event.completion_id, event.criterion, event.vote,
                 event.comment, created),
            )
        elif isinstance(event, RankingFeedback):
            self._db.execute(
                "INSERT INTO rankings VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE"
                " SET created_at = max(created_at, excluded.created_at)",
                (event.event_id, event.prompt_id, event.user_id, event.labeler_id, event.criterion,
                 json.dumps(event.ranking), json.dumps(event.unusable), created),
            )

    def dump(self) -> dict[str, list[tuple]]:
        """Every row of every table, sorted: equal dumps mean equal stores."""
        return {table: sorted(self._db.execute(f"SELECT * FROM {table}").fetchall()) for table in _TABLES}

    def build_pairs(
        self, *, eval_percent: int = 10, min_agreement: float = 0.6, cross_user_weight: float = 0.5,
        max_voice_share: float = 1.0,
    ) -> PairSet:
        """The preference pairs the stored feedback gives now (see ``trainer.preferences.pairs``);
        thumbs pairs across users weigh ``cross_user_weight`` (``_thumbs_pairs``); no labeler or
        user holds more than ``max_voice_share`` of a split's weight
        (``trainer.preferences.voices``; 1: no cap)."""
        prompt_of = dict(self._db.execute("SELECT completion_id, prompt_id FROM completions"))
        pairs: list[PreferencePair] = []
        skipped: dict[str, int] = defaultdict(int)
        judgements, users_of_prompt = self._judgements(prompt_of, skipped)
        consensus = merge_judgements(judgements, min_agreement=min_agreement)
        for pair in consensus.pairs:
            users = users_of_prompt[(pair.prompt_id, pair.criterion)]
            pairs.append(PreferencePair(
                pair.prompt_id, pair.criterion, pair.winner, pair.loser, pair.weight, "ranking",
                next(iter(users)) if len(users) == 1 else None, pair.labelers,
                split_of(pair.prompt_id, eval_percent),
            ))
        pairs += self._thumbs_pairs(prompt_of, eval_percent, skipped, cross_user_weight)
        return PairSet(cap_voices(pairs, max_voice_share), consensus, dict(skipped),
                       scaled_voices(pairs, max_voice_share))

    def _judgements(
        self, prompt_of: dict[str, str], skipped: dict[str, int]
    ) -> tuple[list[Judgement], dict[tuple[str, str], set[str]]]:
        """Each labeler's latest ranking per prompt and criterion, checked against the completions.

        Only the latest counts, also when it cannot be used (yet): an earlier ranking it
        superseded never stands in for it.
        """
        latest: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        rows = self._db.execute(
            "SELECT prompt_id, criterion, labeler_id, user_id, groups, unusable FROM rankings"
            " ORDER BY created_at, event_id"
        )
        for prompt_id, criterion, labeler_id, user_id, groups, unusable in rows:
            latest[(prompt_id, criterion, labeler_id)] = (user_id, groups, unusable)
        judgements: list[Judgement] = []
        users: dict[tuple[str, str], set[str]] = defaultdict(set)
        for (prompt_id, criterion, labeler_id), (user_id, groups, unusable) in latest.items():
            groups, unusable = json.loads(groups), set(json.loads(unusable))
            ids = [cid for group in groups for cid in group] + sorted(unusable)
            if any(cid not in prompt_of for cid in ids):
                skipped["waiting_for_completion"] += 1
                continue
            if any(prompt_of[cid] != prompt_id for cid in ids):
                skipped["mixed_prompts"] += 1
                continue
            kept = tuple(tuple(c for c in group if c not in unusable) for group in groups)
            kept = tuple(group for group in kept if group)
            if sum(len(group) for group in kept) < 2:
                skipped["too_few_usable"] += 1
                continue
            if unusable:
                skipped["unusable_completions"] += len(unusable)
            judgements.append(Judgement(prompt_id, criterion, labeler_id, kept))
            users[(prompt_id, criterion)].add(user_id)
        return judgements, users

    def _latest_votes(
        self, prompt_of: dict[str, str], skipped: dict[str, int]
    ) -> dict[tuple[str, str], dict[str, dict[str, str]]]:
        """(prompt, criterion) -> user -> completion -> that user's latest vote, for the votes
        whose completion is stored (the others are counted as waiting for it)."""
        by_prompt: dict[tuple[str, str], dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
        for user_id, completion_id, criterion, vote in self._db.execute(_LATEST_VOTES):
            if completion_id not in prompt_of:
                skipped["waiting_for_completion"] += 1
                continue
            by_prompt[(prompt_of[completion_id], criterion)][user_id][completion_id] = vote
        return by_prompt

    def _thumbs_pairs(
        self, prompt_of: dict[str, str], eval_percent: int, skipped: dict[str, int],
        cross_user_weight: float,
    ) -> list[PreferencePair]:
        """Thumbs-up × thumbs-down pairs on one prompt and criterion, of two kinds.

        - **A user's own**: chosen voted up and rejected voted down by the same user. Weight 1
          and that user's id (per-user training), whoever else voted on the prompt; two users
          who made the same comparison give one such pair each.
        - **Across users**: the others of the prompt's net-balance pairs (``thumbs_pairs``:
          chosen has more up than down votes, rejected more down than up), which no single
          user made: weight ``cross_user_weight``, user None. Two strangers' votes are weaker
          evidence of a preference than one person comparing two answers: they may simply
          differ in taste, or have seen the answers in different contexts.
        """
        pairs = []
        for (prompt_id, criterion), by_user in sorted(self._latest_votes(prompt_of, skipped).items()):
            split = split_of(prompt_id, eval_percent)
            own: set[tuple[str, str]] = set()
            for user_id, votes in sorted(by_user.items()):
                ups = sorted(c for c, v in votes.items() if v == "up")
                downs = sorted(c for c, v in votes.items() if v == "down")
                for chosen in ups:
                    for rejected in downs:
                        own.add((chosen, rejected))
                        pairs.append(PreferencePair(prompt_id, criterion, chosen, rejected, 1.0,
                                                    "thumbs", user_id, (user_id,), split))
            marks: dict[str, list[str]] = defaultdict(list)
            for votes in by_user.values():
                for completion_id, vote in votes.items():
                    marks[completion_id].append(vote)
            users = tuple(sorted(by_user))
            for chosen, rejected in thumbs_pairs(marks):
                if (chosen, rejected) not in own and (rejected, chosen) not in own:
                    pairs.append(PreferencePair(prompt_id, criterion, chosen, rejected,
                                                cross_user_weight, "thumbs", None, users, split))
        return pairs

    def votes(self, *, eval_percent: int = 10, max_voice_share: float = 1.0) -> list[Vote]:
        """Each user's latest thumbs vote per completion and criterion, paired or not, with the
        prompt's split (the same hash split as the pairs'): the reward model's pointwise targets.
        No user holds more than ``max_voice_share`` of a split's votes (weights below 1)."""
        prompt_of = dict(self._db.execute("SELECT completion_id, prompt_id FROM completions"))
        return cap_voices([Vote(prompt_id, criterion, completion_id, user_id, vote == "up",
                     split_of(prompt_id, eval_percent))
                for (prompt_id, criterion), by_user in sorted(self._latest_votes(prompt_of, defaultdict(int)).items())
                for user_id, votes in sorted(by_user.items())
                for completion_id, vote in sorted(votes.items())], max_voice_share)

    def positions(self) -> dict[str, int]:
        """Where in the event log the stored data reaches: ``"<topic>/<partition>"`` -> the
        next offset to read (every record before it is stored)."""
        rows = self._db.execute("SELECT topic, partition, next_offset FROM positions ORDER BY 1, 2")
        return {f"{topic}/{partition}": offset for topic, partition, offset in rows}

    def feedback_event_ids(self) -> set[str]:
        """The event id of every stored thumbs and ranking event (superseded ones included)."""
        rows = self._db.execute("SELECT event_id FROM thumbs UNION SELECT event_id FROM rankings")
        return {event_id for (event_id,) in rows}

    def event_count(self) -> int:
        """How many distinct events the store holds: where its data stands, for manifests."""
        return self._db.execute("SELECT COUNT(*) FROM applied").fetchone()[0]

    def completion_texts(self, completion_ids: Iterable[str]) -> dict[str, tuple[list[Message], str]]:
        """(prompt messages, completion text) of each stored completion among ``completion_ids``."""
        wanted = set(completion_ids)
        rows = self._db.execute("SELECT completion_id, messages, completion FROM completions")
        return {cid: (json.loads(messages), text) for cid, messages, text in rows if cid in wanted}

    def prompts(
        self, split: str, *, eval_percent: int, limit: int, criterion: str | None = None
    ) -> list[list[Message]]:
        """The messages of up to ``limit`` distinct prompts of ``split``, most recently used first.

        Prompts are what users sent (the messages before a completion); the split is the same
        stable hash split as the pairs', so held-out prompts never reach training. With
        ``criterion``, only prompts with feedback (thumbs or a ranking) on that criterion.
        """
        rated = "" if criterion is None else (
            " WHERE prompt_id IN (SELECT prompt_id FROM rankings WHERE criterion = :criterion"
            " UNION SELECT c.prompt_id FROM thumbs t JOIN completions c USING (completion_id)"
            " WHERE t.criterion = :criterion)")
        rows = self._db.execute(
            f"SELECT prompt_id, messages FROM completions{rated} GROUP BY prompt_id"
            " ORDER BY MAX(created_at) DESC, prompt_id", {"criterion": criterion}
        )
        chosen = []
        for prompt_id, messages in rows:
            if split_of(prompt_id, eval_percent) == split:
                chosen.append(json.loads(messages))
                if len(chosen) == limit:
                    break
        return chosen

    def close(self) -> None:
        """Close the file."""
        self._db.close()


@dataclass
class PairSet:
    """Pairs built from the store, the labeler consensus behind them, and what was skipped."""

    pairs: list[PreferencePair]
    consensus: Consensus
    skipped: dict[str, int]
    scaled_voices: dict[str, dict[str, float]] = field(default_factory=dict)
    """split -> labeler or user -> the factor their pair weights were scaled by (below 1: they
    held more than ``max_voice_share``; ``trainer.preferences.voices``)."""
