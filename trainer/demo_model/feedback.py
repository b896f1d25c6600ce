"""Synthetic feedback on the demo corpus: a known preference to learn, for tests, benchmarks
and demos.

`politeness_events` gives, per prompt, a polite, a curt and a rude reply of the prompt's intent
(as the gateway logs completions), then feedback that prefers polite over curt over rude: a
labeler's ranking on even prompts, a user's thumbs (polite up, rude down) on odd ones. A reward
model trained on it must order held-out pairs the same way. `publish_all` writes events to an
event log under the topics and keys the gateway uses.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from streams.codec import COMPLETIONS, FEEDBACK
from streams.events import (
    AdapterRef,
    ChatMessage,
    CompletionEvent,
    Event,
    RankingFeedback,
    SamplingParams,
    ThumbsFeedback,
)
from streams.log import EventLog
from trainer.demo_model.corpus import Dialogue, generate_dialogues, preferred_style

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def politeness_events(prompts: range) -> list[Event]:
    """Completions, then feedback, for ``prompts`` (module docstring); deterministic."""
    by_style: dict[tuple[str, str], list[Dialogue]] = {}
    for dialogue in generate_dialogues(6000, seed=11):
        by_style.setdefault((dialogue.intent, dialogue.style), []).append(dialogue)
    askers = [d for d in generate_dialogues(4 * len(prompts) + 4 * prompts.start, seed=12)
              if preferred_style(d.intent) == "polite"][prompts.start : prompts.stop]
    completions: list[Event] = []
    feedback: list[Event] = []
    for number, asker in zip(prompts, askers, strict=True):
        prompt_id, user = f"prompt-{number}", f"user-{number % 7}"
        ids = {}
        for style in ("polite", "curt", "rude"):
            replies = by_style[(asker.intent, style)]
            ids[style] = f"{prompt_id}-{style}"
            completions.append(CompletionEvent(
                completion_id=ids[style], request_id=prompt_id, prompt_id=prompt_id, user_id=user,
                messages=[ChatMessage(**m) for m in asker.messages],
                completion=replies[number % len(replies)].response, choice_index=len(ids) - 1,
                adapter=AdapterRef(scope="base"), model="tiny", sampling=SamplingParams(n=3),
                prompt_tokens=10, completion_tokens=10, latency_ms=1.0, created_at=T0,
            ))
        if number % 2 == 0:
            feedback.append(RankingFeedback(
                prompt_id=prompt_id, user_id="lena", labeler_id="lena",
                ranking=[[ids["polite"]], [ids["curt"]], [ids["rude"]]],
                created_at=T0 + timedelta(minutes=1)))
        else:
            feedback += [ThumbsFeedback(completion_id=ids["polite"], user_id=user, vote="up"),
                         ThumbsFeedback(completion_id=ids["rude"], user_id=user, vote="down")]
    return completions + feedback


def publish_all(event_log: EventLog, events: list[Event]) -> None:
    """Publish completions keyed by prompt and feedback keyed by user, then flush."""
    for event in events:
        if isinstance(event, CompletionEvent):
            event_log.publish(COMPLETIONS, event.prompt_id, event)
        else:
            event_log.publish(FEEDBACK, event.user_id, event)
    event_log.flush()
