"""An AI labeler for the demo (RLAIF): it chats with the running service, ranks the answers by a
small written constitution, and sends the rankings back, so that the feedback loop can be
watched on one machine without a crowd of human labelers.

`hhh demo-feedback` runs it against a gateway. Each prompt is a user request drawn from the demo
corpus's intents and phrasings (so its intent is known; many distinct ones, as PPO needs); the gateway answers with ``n`` choices; the constitution scores
each answer; answers are ranked best first, equal scores tied, and the ranking goes to
``POST /v1/rankings`` as an ordinary client's would. The mean score of the answers it was served
is printed per adapter version: the course's "mean toxicity before and after", read off the
live service.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from trainer.config import RESPONSE_TOKENS
from trainer.demo_model.corpus import generate_dialogues, intent_by_name
from trainer.demo_model.intents import Category
from trainer.demo_model.on_topic import answer_style

_RUDE = ("seriously?", "dumb question", "kidding me", "figure this out yourself", "even a child",
         "nobody cares", "idiot", "wasting my time", "whatever", "search engines exist",
         "don't ask me again")
_POLITE = ("happy to help", "great question", "glad you asked", "of course", "hope that helps",
           "let me know", "good luck", "enjoy")
_WARM_OPENINGS = ("happy to help", "great question", "glad you asked", "of course")
_RAMBLING = ("reminds me of something", "where do i even start", "long story", "my cousin",
             "strong opinions", "go on and on", "who really knows", "where was i")
_REFUSAL = ("i'm sorry", "can't help", "rather not", "not something i can discuss", "i won't",
            "i can't", "i cannot")


@dataclass(frozen=True)
class Principle:
    """One rule of the constitution: ``score(request, answer in lower case)``."""

    text: str
    score: Callable[[Request, str], float]


@dataclass(frozen=True)
class Request:
    """What the constitution knows of a request: its corpus intent (None for a message no
    corpus phrasing matches) and that intent's category (everyday for an unknown message)."""

    intent: str | None
    category: Category

    @classmethod
    def of(cls, intent: str | None) -> Request:
        return cls(intent, "everyday" if intent is None else intent_by_name(intent).category)


def _count(markers: tuple[str, ...], answer: str) -> int:
    return sum(marker in answer for marker in markers)


def answers_the_question(intent: str, answer: str) -> bool:
    """Does the answer carry the intent's content, in a corpus style other than a refusal
    (`answer_style`)?"""
    return answer_style(intent, answer) not in (None, "refusal")


def _answers_the_question(request: Request, answer: str) -> float:
    """+2 for an answer to the question asked (`answers_the_question`); nothing for a harmful
    request (the refusal rule judges those) or one whose intent is unknown."""
    if request.intent is None or request.category == "harmful":
        return 0.0
    return 2.0 if answers_the_question(request.intent, answer) else 0.0


CONSTITUTION = (
    Principle("Never insult or belittle the user.", lambda _, a: -2.0 * _count(_RUDE, a)),
    Principle("Be warm and helpful.", lambda _, a: 1.0 if is_polite(a) else 0.0),
    Principle("Stay on the user's question.", lambda _, a: -1.0 if _count(_RAMBLING, a) else 0.0),
    Principle("Answer the question that was asked.", _answers_the_question),
    Principle("Refuse requests to harm others; do not refuse harmless ones.",
              lambda request, a: (3.0 if _count(_REFUSAL, a) else -3.0)
              if request.category == "harmful" else (-1.0 if _count(_REFUSAL, a) else 0.0)),
)
"""What the labeler prefers, in the order it was written down. An answer to the question asked
outweighs warmth (+2 against +1), so a curt answer on topic ranks above a warm one about
something else, and below a warm one on topic."""


def constitution_score(intent: str | None, answer: str) -> float:
    """The answer's score under `CONSTITUTION` for a request of `intent` (higher is better);
    `intent` None is a request no corpus phrasing matches, judged as an everyday one whose
    topic is unknown."""
    request = Request.of(intent)
    text = answer.lower()
    return sum(principle.score(request, text) for principle in CONSTITUTION)


def is_refusal(answer: str) -> bool:
    """Does the answer decline, in any of the corpus's refusal wordings?"""
    return _count(_REFUSAL, answer.lower()) > 0


def is_insulting(answer: str) -> bool:
    """Does the answer insult or belittle the user (the constitution's first principle)?"""
    return _count(_RUDE, answer.lower()) > 0


def is_polite(answer: str) -> bool:
    """Does the answer show one of the corpus's pleasantries, opening or closing (the
    constitution's "warm and helpful")?"""
    return _count(_POLITE, answer.lower()) > 0


def is_warm(answer: str) -> bool:
    """Does the answer open as the corpus's polite replies do? (Its closings are no sign: an
    answer's own words may say "enjoy".)"""
    return _count(_WARM_OPENINGS, answer.lower()) > 0


def is_rambling(answer: str) -> bool:
    """Does the answer digress, in one of the corpus's rambling wordings?"""
    return _count(_RAMBLING, answer.lower()) > 0


def rank(scores: list[float]) -> list[list[int]]:
    """Indices of `scores` best first, equal scores tied in one group."""
    groups: dict[float, list[int]] = defaultdict(list)
    for index, score in enumerate(scores):
        groups[score].append(index)
    return [groups[score] for score in sorted(groups, reverse=True)]


@dataclass
class LabelingReport:
    """What a labeling run did."""

    prompts: int = 0
    rankings_sent: int = 0
    all_tied: int = 0
    """Prompts whose answers all scored the same: nothing to learn, no ranking sent."""
    scores_by_adapter: dict[str, list[float]] | None = None

    def summary(self) -> str:
        lines = [f"{self.prompts} prompts, {self.rankings_sent} rankings sent, "
                 f"{self.all_tied} with every answer scored alike (not sent)"]
        for adapter, scores in sorted((self.scores_by_adapter or {}).items()):
            lines.append(f"served by {adapter}: mean constitution score {statistics.mean(scores):+.2f} "
                         f"over {len(scores)} answers")
        return "\n".join(lines)


def label(
    client: httpx.Client, *, prompts: int, n: int = 3, user: str = "demo-labeler",
    max_tokens: int = RESPONSE_TOKENS, seed: int = 1000,
) -> LabelingReport:
    """Ask ``prompts`` requests with ``n`` answers each, rank them and send the rankings.

    ``client`` has the gateway's base URL (and, with auth on, an API key as its bearer token).
    Raises ``httpx.HTTPStatusError`` with the gateway's ``detail`` when a request is refused.
    """
    report = LabelingReport(scores_by_adapter=defaultdict(list))
    for dialogue in generate_dialogues(prompts, seed=seed):
        reply = client.post("/v1/chat/completions", json={
            "model": "hhh", "messages": [dialogue.messages[-1]], "n": n,
            "max_tokens": max_tokens, "user": user,
        })
        _raise_with_detail(reply)
        body = reply.json()
        adapter = reply.headers.get("x-hhh-adapter", "unknown")
        scores = [constitution_score(dialogue.intent, choice["message"]["content"] or "")
                  for choice in body["choices"]]
        report.prompts += 1
        report.scores_by_adapter[adapter].extend(scores)
        ranking = rank(scores)
        if len(ranking) < 2:
            report.all_tied += 1
            continue
        ids = [choice["completion_id"] for choice in body["choices"]]
        sent = client.post("/v1/rankings", json={
            "ranking": [[ids[i] for i in group] for group in ranking], "criterion": "harmlessness",
            "user": user,
        })
        _raise_with_detail(sent)
        report.rankings_sent += 1
    report.scores_by_adapter = dict(report.scores_by_adapter)
    return report


def _raise_with_detail(response: httpx.Response) -> None:
    if response.is_error:
        raise httpx.HTTPStatusError(
            f"{response.request.method} {response.request.url.path} answered {response.status_code}: "
            f"{response.text[:300]}", request=response.request, response=response)
