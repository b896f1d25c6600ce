"""Thumbs and rankings: validated against signed completion ids, durable before the 2xx.

No shared state is needed to validate: a completion id proves which user received which
completion of which prompt (``serving.completion_ids``). A caller may rate only completions
it received, unless it holds the ``labeler`` role.

Identity: one request is one event, however often it is retried; every change is a new event.

- With an ``Idempotency-Key`` header (any 1-255 visible ASCII characters, fresh for each
  vote or ranking the client means to give) the event id is a hash of the caller, the key and
  the body: every retry of that request, on any replica and after restarts, is the same event.
- Without one, feedback equal to the caller's latest on the same target (a completion and
  criterion; a labeler, prompt and criterion) that this replica accepted is a retry of it and
  keeps its event id; anything else is a new event with a fresh id. A retry that reaches
  another replica, or this one after a restart, becomes a second event with the same content:
  it changes no vote or ranking and counts nothing twice. Each gateway worker
  (``HHH_GATEWAY_WORKERS``) is a replica here: a retry on a new connection may reach another
  worker of the same port, with that same, harmless, outcome.

A changed vote or ranking is a new event that supersedes the previous one: the dataset counts
each user's latest vote per completion and criterion and each labeler's latest ranking per
prompt and criterion (by ``created_at``; an event id accepted again counts as of its latest
acceptance), so up, down, up again counts as up, once, also when the second "up" reached a
replica that never saw the "down" and took it for a retry of the first.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, OrderedDict

from serving import metrics
from serving.chat import Caller
from serving.completion_ids import CompletionClaim, CompletionIdSigner, InvalidCompletionId
from serving.errors import GatewayError
from serving.limits.config import DEFAULT_CRITERIA
from serving.protocol import FeedbackAccepted, RankingRequest, ThumbsRequest
from streams.codec import FEEDBACK
from streams.events import RankingFeedback, ThumbsFeedback, new_event_id
from streams.outbox import Outbox

LABELER = "labeler"

IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
"""What an ``Idempotency-Key`` header may hold: 1-255 visible ASCII characters."""


class LatestFeedback:
    """The latest feedback this replica accepted from each caller on each target (LRU-bounded).

    A target is ``(kind, caller, ...what is rated)``; content is the canonical request body.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._latest: OrderedDict[tuple[str, ...], tuple[str, str]] = OrderedDict()

    def event_id(self, target: tuple[str, ...], content: str, idempotency_key: str | None) -> str:
        """The event id of feedback ``content`` on ``target``: see the module docstring."""
        if idempotency_key is not None:
            if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
                raise GatewayError(
                    400, "invalid_idempotency_key",
                    "Idempotency-Key must be 1-255 visible ASCII characters (no spaces), "
                    f"got {len(idempotency_key)} characters",
                )
            return _digest([*target, idempotency_key, content])
        remembered = self._latest.get(target)
        if remembered is not None and remembered[0] == content:
            return remembered[1]
        return new_event_id()

    def accepted(self, target: tuple[str, ...], content: str, event_id: str) -> None:
        """Remember ``event_id`` as the caller's latest feedback on ``target``."""
        self._latest[target] = (content, event_id)
        self._latest.move_to_end(target)
        if len(self._latest) > self._capacity:
            self._latest.popitem(last=False)


class FeedbackService:
    """Serves ``POST /v1/feedback`` and ``POST /v1/rankings``."""

    def __init__(
        self, signer: CompletionIdSigner, outbox: Outbox, criteria: tuple[str, ...] = DEFAULT_CRITERIA
    ) -> None:
        """``criteria``: those feedback may name (``HHH_LIMITS_CRITERIA``); a metric label each."""
        self._signer = signer
        self._outbox = outbox
        self._criteria = criteria
        self._latest = LatestFeedback()

    async def thumbs(
        self, request: ThumbsRequest, caller: Caller, idempotency_key: str | None = None
    ) -> FeedbackAccepted:
        """Record a thumbs up/down; raises ``GatewayError`` if the caller may not."""
        self._check_criterion(request.criterion)
        claim = self._claim(request.completion_id, caller)
        target = ("thumbs", caller.user_id, request.completion_id, request.criterion)
        content = _canonical(request.model_dump(exclude={"user"}))
        event = ThumbsFeedback(
            event_id=self._latest.event_id(target, content, idempotency_key),
            completion_id=request.completion_id,
            user_id=caller.user_id,
            vote=request.vote,
            comment=request.comment,
            criterion=request.criterion,
        )
        await self._outbox.put_many_async([(FEEDBACK, caller.user_id, event)])
        self._latest.accepted(target, content, event.event_id)
        metrics.FEEDBACK.labels(kind="thumbs", criterion=request.criterion, vote=request.vote,
                                adapter=metrics.feedback_adapter_label(claim.adapter)).inc()
        return FeedbackAccepted(event_id=event.event_id)

    async def ranking(
        self, request: RankingRequest, caller: Caller, idempotency_key: str | None = None
    ) -> FeedbackAccepted:
        """Record a ranking of one prompt's completions; raises ``GatewayError`` if invalid."""
        self._check_criterion(request.criterion)
        groups = request.groups()
        ids = [cid for group in groups for cid in group] + request.unusable
        repeated = sorted(cid for cid, count in Counter(ids).items() if count > 1)
        if repeated:
            raise GatewayError(400, "duplicate_ids", f"completion ids appear more than once: {repeated}")
        if any(not group for group in groups):
            raise GatewayError(400, "empty_tie_group", "a tie group in 'ranking' is empty")
        usable = len(ids) - len(request.unusable)
        if usable < 2:
            raise GatewayError(
                400, "too_few_completions",
                f"a ranking needs at least two usable completions, got {usable}",
            )
        claims = {cid: self._claim(cid, caller) for cid in ids}
        prompts = {claim.prompt_id for claim in claims.values()}
        if len(prompts) > 1:
            by_prompt: dict[str, list[str]] = {}
            for cid, claim in claims.items():
                by_prompt.setdefault(claim.prompt_id, []).append(_short(cid))
            raise GatewayError(
                400, "mixed_prompts",
                "all ranked completions must answer the same prompt; these come from "
                f"{len(prompts)} prompts: {list(by_prompt.values())}",
            )
        labeler_id = request.labeler_id or caller.user_id
        if labeler_id != caller.user_id and LABELER not in caller.roles:
            raise GatewayError(403, "not_a_labeler", "only labelers may set labeler_id to another id")
        if labeler_id != caller.user_id and labeler_id not in caller.labeler_ids:
            raise GatewayError(
                403, "not_your_labeler_id",
                f"this API key may rank as {sorted({caller.user_id, *caller.labeler_ids})}, not as "
                f"{labeler_id!r}; ask the operator to add it to the key's labeler_ids",
            )
        prompt_id = prompts.pop()
        target = ("ranking", caller.user_id, labeler_id, prompt_id, request.criterion)
        content = _canonical(request.model_dump(exclude={"user"}))
        event = RankingFeedback(
            event_id=self._latest.event_id(target, content, idempotency_key),
            prompt_id=prompt_id,
            user_id=caller.user_id,
            labeler_id=labeler_id,
            criterion=request.criterion,
            ranking=groups,
            unusable=request.unusable,
        )
        await self._outbox.put_many_async([(FEEDBACK, caller.user_id, event)])
        self._latest.accepted(target, content, event.event_id)
        metrics.FEEDBACK.labels(
            kind="ranking", criterion=request.criterion, vote="ranking",
            adapter=metrics.feedback_adapter_label(claims[groups[0][0]].adapter),
        ).inc()
        return FeedbackAccepted(event_id=event.event_id)

    def _check_criterion(self, criterion: str) -> None:
        if criterion not in self._criteria:
            raise GatewayError(
                400, "unknown_criterion",
                f"criterion {criterion!r} is not one of {', '.join(self._criteria)}; use one of "
                "them (the operator sets the list: HHH_LIMITS_CRITERIA)",
            )

    def _claim(self, completion_id: str, caller: Caller) -> CompletionClaim:
        try:
            claim = self._signer.verify(completion_id)
        except InvalidCompletionId as error:
            raise GatewayError(404, "unknown_completion", f"unknown completion: {error}") from error
        if claim.user_id != caller.user_id and LABELER not in caller.roles:
            raise GatewayError(
                403, "not_your_completion",
                f"completion {_short(completion_id)} was served to another user; only labelers "
                "may rate completions they did not receive",
            )
        return claim


def _canonical(content: object) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


def _digest(parts: list[str]) -> str:
    """An event id determined by ``parts``: 128 bits of their SHA-256, in hex."""
    return hashlib.sha256(_canonical(parts).encode("utf-8")).hexdigest()[:32]


def _short(completion_id: str) -> str:
    return completion_id if len(completion_id) <= 24 else completion_id[:20] + "…"
