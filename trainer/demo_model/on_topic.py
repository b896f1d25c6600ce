"""Is an answer on topic? It must carry the requested intent's content in one of the corpus styles.

`answer_style(intent, answer)` returns the style (see `corpus.py`) whose reply to `intent` the
answer reproduces, or None when it reproduces none; `on_topic` is "not None". A reply in a style
is a sequence of parts, each one of a few alternatives (`corpus.style_parts`): for example a
polite reply is an opening, one of the intent's answers, and a closing. For each style the best
alternative of every part is aligned with the answer's words (a longest common subsequence in
which a ``{slot}`` matches one to `SLOT_WORDS` consecutive words, so that a reply about the
held-out "lentil stew" matches the cooking answers), and the style matches when

- the parts' words are there: at least `MIN_RECALL` of the chosen alternatives' words, and at
  least `MIN_RECALL` of their *content* words (those from the intent: its answers, terse
  answers, caveat and refusal, and its topic inside the generic wrappers such as "Even a child
  knows about {topic}"), so a rude reply about gardening does not pass for one about cooking;
- and little else is: at least `MIN_PRECISION` of the answer's words are aligned, so garbled
  text or another intent's content appended to the right one fails.

The answer's words are lower-case letters, digits and apostrophes; punctuation and case are
ignored. Slot values are not checked (a cooking answer about pancakes to a question about lentil
stew counts as on topic); `names_slot_value` is the stricter check for that.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from functools import cache

from trainer.demo_model.corpus import STYLES, Style, intent_by_name, style_parts
from trainer.demo_model.intents import Intent

MIN_RECALL = 0.8
"""Least share of a style's words (and of its content words) that the answer must contain."""
MIN_PRECISION = 0.8
"""Least share of the answer's words that must belong to the matched style's reply."""
SLOT_WORDS = 3
"""Most words a slot value may have (the corpus's longest, such as "science fiction", have two)."""
_SLOT_WEIGHT = 0.1
"""Alignment score of a word matched by a slot: a slot's words together score below one
literal match, so literals win."""

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class _Token:
    word: str | None
    """The word, or None for a slot (one to `SLOT_WORDS` words of any value)."""
    content: bool
    """Whether the word comes from the intent rather than a generic style wrapper."""


Template = tuple[_Token, ...]


def words(text: str) -> list[str]:
    """The lower-case words of `text`, as the on-topic check compares them."""
    return _WORD.findall(text.lower())


def answer_style(intent: str, answer: str) -> Style | None:
    """The corpus style in which `answer` answers a request of `intent`, or None (off topic)."""
    answer_words = words(answer)
    if not answer_words:
        return None
    best: tuple[float, Style] | None = None
    for style in STYLES:
        score = _style_match(_templates(intent, style), answer_words)
        if score is not None and (best is None or score > best[0]):
            best = (score, style)
    return best[1] if best else None


def on_topic(intent: str, answer: str) -> bool:
    """Whether `answer` carries the content of `intent` in one of the corpus styles."""
    return answer_style(intent, answer) is not None


def names_slot_value(value: str, answer: str) -> bool:
    """Whether `answer` names the slot `value` (say, the dish asked about) as a whole phrase."""
    wanted, said = words(value), words(answer)
    return any(said[i : i + len(wanted)] == wanted for i in range(len(said) - len(wanted) + 1))


def _style_match(parts: list[list[Template]], answer: list[str]) -> float | None:
    """F1 of the answer against the best alternative of every part, or None if it fails."""
    if not _content_may_match(parts, Counter(answer)):
        return None
    matched_words = matched_content = total_words = total_content = 0
    covered: set[int] = set()
    for alternatives in parts:
        # the alternative with most words matched and fewest missing
        best = max((_align(template, answer) for template in alternatives),
                   key=lambda a: 2 * a.matched_literals - a.literals)
        matched_words += best.matched_literals
        matched_content += best.matched_content
        total_words += best.literals
        total_content += best.content
        covered |= best.covered
    recall = matched_words / total_words
    precision = len(covered) / len(answer)
    if (recall < MIN_RECALL or precision < MIN_PRECISION
            or (total_content and matched_content / total_content < MIN_RECALL)):
        return None
    return 2 * recall * precision / (recall + precision)


def _content_may_match(parts: list[list[Template]], answer: Counter[str]) -> bool:
    """A cheap necessary condition for the content recall, counting words regardless of order."""
    present = needed = 0
    for alternatives in parts:
        present += max(sum(min(n, answer[w]) for w, n in _content_words(t).items())
                       for t in alternatives)
        needed += min(sum(_content_words(t).values()) for t in alternatives)
    return present >= MIN_RECALL * needed


@cache
def _content_words(template: Template) -> Counter[str]:
    return Counter(t.word for t in template if t.content and t.word is not None)


@dataclass(frozen=True)
class _Alignment:
    literals: int
    content: int
    matched_literals: int
    matched_content: int
    covered: frozenset[int]
    """Positions of the answer's words that the template matched."""


def _align(template: Template, answer: list[str]) -> _Alignment:
    """Longest common subsequence of template and answer; a slot matches 1 to SLOT_WORDS words.

    A slot's words score `_SLOT_WEIGHT` each, so that matching a literal always wins.
    """
    rows, cols = len(template), len(answer)
    # score[i][j]: best alignment of template[:i] with answer[:j]
    score = [[0.0] * (cols + 1) for _ in range(rows + 1)]
    for i, token in enumerate(template, start=1):
        above, row = score[i - 1], score[i]
        for j in range(1, cols + 1):
            best = max(above[j], row[j - 1])
            if token.word is None:
                for k in range(1, min(SLOT_WORDS, j) + 1):
                    best = max(best, above[j - k] + k * _SLOT_WEIGHT)
            elif token.word == answer[j - 1]:
                best = max(best, above[j - 1] + 1.0)
            row[j] = best
    matched_literals = matched_content = 0
    covered: set[int] = set()
    i, j = rows, cols
    while i and j:
        token = template[i - 1]
        if score[i][j] == score[i - 1][j]:
            i -= 1
        elif score[i][j] == score[i][j - 1]:
            j -= 1
        elif token.word is None:
            k = next(k for k in range(1, min(SLOT_WORDS, j) + 1)
                     if score[i][j] == score[i - 1][j - k] + k * _SLOT_WEIGHT)
            covered.update(range(j - k, j))
            i, j = i - 1, j - k
        else:
            covered.add(j - 1)
            matched_literals += 1
            matched_content += token.content
            i, j = i - 1, j - 1
    literals = [t for t in template if t.word is not None]
    return _Alignment(len(literals), sum(t.content for t in literals), matched_literals,
                      matched_content, frozenset(covered))


@cache
def _templates(intent_name: str, style: Style) -> list[list[Template]]:
    """Each part of `style`'s reply to the intent, as the token templates of its alternatives."""
    intent = intent_by_name(intent_name)
    own = {*intent.answers, *intent.short, intent.caveat, intent.refusal}
    return [[_tokenise(text, intent, content=text in own) for text in alternatives]
            for alternatives in style_parts(intent, style)]


def _tokenise(text: str, intent: Intent, *, content: bool) -> Template:
    tokens: list[_Token] = []
    for literal, field, _, _ in string.Formatter().parse(text):
        tokens += [_Token(word, content) for word in words(literal)]
        if field == "topic":
            tokens += _tokenise(intent.topic, intent, content=True)
        elif field:
            tokens.append(_Token(None, content))
    return tuple(tokens)
