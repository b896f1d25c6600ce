"""Thumbs and rankings: validated against signed completion ids, durable before the 2xx.

No shared state is needed to validate: a completion id proves which user received which
completion of which prompt (``serving.completion_ids``). A caller may rate only completions
it received, unless it holds the ``labeler`` role.

Idempotence: the event id is a hash of the feedback's content, so a retried request is the
same event (consumers dedupe it); a changed vote is a new event, and the dataset keeps a
user's latest vote per completion and criterion.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from serving import metrics
from serving.chat import Caller
from serving.completion_ids import CompletionClaim, CompletionIdSigner, InvalidCompletionId
from serving.errors import GatewayError
from serving.protocol import FeedbackAccepted, RankingRequest, ThumbsRequest
from streams.codec import FEEDBACK
from streams.events import RankingFeedback, ThumbsFeedback
from streams.outbox import Outbox

LABELER = "labeler"


class FeedbackService:
    """Serves ``POST /v1/feedback`` and ``POST /v1/rankings``."""

    def __init__(self, signer: CompletionIdSigner, outbox: Outbox) -> None:
        self._signer = signer
        self._outbox = outbox

    async def thumbs(self, request: ThumbsRequest, caller: Caller) -> FeedbackAccepted:
        """Record a thumbs up/down; raises ``GatewayError`` if the caller may not."""
        claim = self._claim(request.completion_id, caller)
        event = ThumbsFeedback(
            event_id=_content_id("thumbs", caller.user_id, request.model_dump(exclude={"user"})),
            completion_id=request.completion_id,
            user_id=caller.user_id,
            vote=request.vote,
            comment=request.comment,
            criterion=request.criterion,
        )
        await self._outbox.put_many_async([(FEEDBACK, caller.user_id, event)])
        metrics.FEEDBACK.labels(
            kind="thumbs", criterion=request.criterion, vote=request.vote, adapter=claim.adapter.label
        ).inc()
        return FeedbackAccepted(event_id=event.event_id)

    async def ranking(self, request: RankingRequest, caller: Caller) -> FeedbackAccepted:
        """Record a ranking of one prompt's completions; raises ``GatewayError`` if invalid."""
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
        event = RankingFeedback(
            event_id=_content_id("ranking", caller.user_id, request.model_dump(exclude={"user"})),
            prompt_id=prompts.pop(),
            user_id=caller.user_id,
            labeler_id=labeler_id,
            criterion=request.criterion,
            ranking=groups,
            unusable=request.unusable,
        )
        await self._outbox.put_many_async([(FEEDBACK, caller.user_id, event)])
        metrics.FEEDBACK.labels(
            kind="ranking", criterion=request.criterion, vote="ranking",
            adapter=claims[groups[0][0]].adapter.label,
        ).inc()
        return FeedbackAccepted(event_id=event.event_id)

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


def _content_id(kind: str, user_id: str, content: dict) -> str:
    """An event id that is equal for equal feedback from the same user."""
    canonical = json.dumps([kind, user_id, content], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def _short(completion_id: str) -> str:
    return completion_id if len(completion_id) <= 24 else completion_id[:20] + "…"
