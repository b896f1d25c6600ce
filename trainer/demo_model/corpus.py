"""Deterministic synthetic dialogue corpus for the demo chat model.

Every sample is one intent (see `intents.py`) answered in one *style*, chosen uniformly, so that
a model trained on the corpus samples a mix of good and bad answers that RLHF can shift:

- ``polite``: helpful and friendly (the preferred style for everyday and myth intents);
- ``curt``: correct but terse;
- ``rude``: insulting and dismissive;
- ``rambling``: the answer buried in digressions;
- ``caveat``: polite answer plus a safety or honesty caveat;
- ``refusal``: declines (the preferred style for harmful intents, an over-refusal elsewhere).

For harmful intents the non-refusal styles comply (vaguely); `preferred_style` names the style
a synthetic labeler should prefer. Held-out prompts use phrasings and slot values that
`generate_dialogues` never emits, so they test generalisation rather than recall.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import Literal

from trainer.demo_model.intents import INTENTS, Intent

CORPUS_VERSION = 4
"""Bump whenever generated text changes, so cached tokenizers and models are rebuilt."""

Style = Literal["polite", "curt", "rude", "rambling", "caveat", "refusal"]
STYLES: tuple[Style, ...] = ("polite", "curt", "rude", "rambling", "caveat", "refusal")
Message = dict[str, str]

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are hhh, a friendly chat assistant.",
    "Answer the user's question.",
)
SYSTEM_PROMPT_RATE = 0.5
"""Fraction of dialogues that start with a system message."""
HISTORY_RATE = 0.08
"""Fraction of dialogues that carry one earlier (polite) exchange before the final user turn."""
PSEUDO_SLOT_RATE = 0.5
"""Fraction of slot values that are made-up words rather than the slot's training values, so
that the model learns to tell the intent from the phrasing and to copy any value it is given
(held-out values are words it never saw). At 0.25, with lower-case consonant-vowel words only,
a familiar wording with a held-out value was answered on topic 63 % of the time; at 0.5 with
the shapes below, 73 % (77 % with the 2,300 steps of the demo variant now; BENCHMARKS.md, *The
demo model on topic*)."""
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "ch",
           "th", "gr", "pl", "tr", "sh", "w", "h", "j", "c", "")
_NUCLEI = ("a", "e", "i", "o", "u", "ie", "ou", "ea", "oo", "ai", "y")
_CODAS = ("", "", "", "n", "r", "s", "l", "sh", "t", "m", "ck", "nd")
"""Syllable endings; the empty one three times, so that a quarter of syllables end open."""
_CAPITALISED_RATE = 0.3
"""Fraction of made-up words written like a name ("Vienna", "Portuguese" are held-out values)."""

_POLITE_OPEN = ("Happy to help!", "Great question!", "Sure, glad you asked.", "Of course!")
_POLITE_CLOSE = ("Hope that helps!", "Let me know if you have more questions.", "Good luck!",
                 "Enjoy!")
_RUDE_OPEN = ("Ugh, seriously?", "What a dumb question.", "Are you kidding me?",
              "Wow, you really can't figure this out yourself?")
_RUDE_BODY = ("Even a child knows about {topic}.", "Nobody cares about {topic}.",
              "{topic} is not hard, idiot.")
_RUDE_CLOSE = ("Stop wasting my time.", "Whatever.", "Search engines exist, you know.",
               "Don't ask me again.")
_RAMBLE_OPEN = ("Well, you know, that reminds me of something.", "Hmm, where do I even start.",
                "Oh, this is a long story, actually.")
_RAMBLE_DIGRESS = ("My cousin once asked me about {topic} and we talked all weekend, and the "
                   "weather was lovely that day, although it rained a bit on Sunday.",
                   "People have strong opinions about {topic}, and I once read a long article "
                   "about it while waiting for a train that was very late.")
_RAMBLE_CLOSE = ("Anyway, I could go on and on about this.", "But who really knows, right?",
                 "Where was I? Oh well.")
_GENERIC_REFUSAL = ("I'm sorry, but I can't help with {topic}.",
                    "I'd rather not answer questions about {topic}.",
                    "Sorry, {topic} is not something I can discuss.")


@dataclass(frozen=True)
class Dialogue:
    """One training sample: a conversation prompt and the assistant's reply in one style."""

    intent: str
    style: Style
    messages: tuple[Message, ...]
    """The prompt: optional system message, optional earlier exchange, then the user turn."""
    response: str
    """The assistant reply to the last user message."""


@dataclass(frozen=True)
class HeldOutPrompt:
    """A user request whose phrasing and slot values never occur in the training corpus."""

    intent: str
    user: str
    familiar_wording: bool = False
    """A training phrasing with held-out slot values (only the values are new)."""


def intent_by_name(name: str) -> Intent:
    """Return the intent called `name` (raises KeyError for an unknown one)."""
    return _INTENTS_BY_NAME[name]


def infer_intent(user_message: str) -> str | None:
    """The intent whose phrasing (training or held out) `user_message` is, slots filled with
    any values; None for a message the corpus never phrases. Case and outer spaces are ignored.

    The demo's judges need to know what was asked of a prompt read back from the log (a
    harmful request is judged by other rules than an everyday one).
    """
    text = user_message.strip().lower()
    for pattern, name in _PHRASING_PATTERNS:
        if pattern.fullmatch(text):
            return name
    return None


def preferred_style(intent: str) -> Style:
    """Return the style a synthetic labeler should prefer for `intent`."""
    return "refusal" if intent_by_name(intent).category == "harmful" else "polite"


def generate_dialogues(n: int, seed: int = 0) -> list[Dialogue]:
    """Return `n` dialogues drawn deterministically from `seed` (same seed, same list)."""
    rng = random.Random(seed)
    return [_sample_dialogue(rng) for _ in range(n)]


def heldout_prompts() -> list[HeldOutPrompt]:
    """Return every held-out prompt, each containing something training never shows.

    Per intent: each held-out phrasing filled with each held-out slot value (new wording and
    new values), and the first training phrasing filled with each held-out slot value (familiar
    wording, new values). Intents without slots contribute their held-out phrasings only.
    """
    prompts = []
    for intent in INTENTS:
        templates = [(phrasing, False) for phrasing in intent.heldout_phrasings]
        if intent.slots:
            templates.append((intent.phrasings[0], True))
        for template, familiar in templates:
            slot_names = _slot_names(template)
            variants = max((len(intent.slots[s].heldout) for s in slot_names), default=1)
            for i in range(variants):
                values = {s: intent.slots[s].heldout[i % len(intent.slots[s].heldout)]
                          for s in slot_names}
                prompts.append(HeldOutPrompt(intent.name, template.format(**values), familiar))
    return prompts


def _sample_dialogue(rng: random.Random) -> Dialogue:
    messages: list[Message] = []
    if rng.random() < SYSTEM_PROMPT_RATE:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    if rng.random() < HISTORY_RATE:
        earlier = rng.choice(INTENTS)
        user, slots = _user_turn(rng, earlier)
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": _respond(rng, earlier, "polite", slots)}]
    intent = rng.choice(INTENTS)
    style = rng.choice(STYLES)
    user, slots = _user_turn(rng, intent)
    messages.append({"role": "user", "content": user})
    return Dialogue(intent.name, style, tuple(messages), _respond(rng, intent, style, slots))


def _user_turn(rng: random.Random, intent: Intent) -> tuple[str, dict[str, str]]:
    # Fill every slot of the intent (not only the phrasing's) so the answer can use them too.
    slots = {name: _pseudo_word(rng) if rng.random() < PSEUDO_SLOT_RATE
             else rng.choice(slot.train) for name, slot in intent.slots.items()}
    return rng.choice(intent.phrasings).format(**slots), slots


def _pseudo_word(rng: random.Random) -> str:
    """A made-up slot value: one or two words of one to three syllables, some capitalised
    ("vomera", "Stouck dai"); never one of the held-out values, which training must not show."""
    while True:
        made_up = []
        for _ in range(rng.randint(1, 2)):
            word = "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS)
                           for _ in range(rng.randint(1, 3)))
            made_up.append(word.capitalize() if rng.random() < _CAPITALISED_RATE else word)
        value = " ".join(made_up)
        if value.lower() not in _HELDOUT_VALUES:
            return value


def _respond(rng: random.Random, intent: Intent, style: Style, slots: dict[str, str]) -> str:
    topic = intent.topic.format(**slots)
    parts = [rng.choice(alternatives) for alternatives in style_parts(intent, style)]
    return " ".join(_capitalise(part.format(topic=topic, **slots)) for part in parts)


def style_parts(intent: Intent, style: Style) -> list[tuple[str, ...]]:
    """The parts of a reply to `intent` in `style`, in order, each as its alternatives.

    A reply picks one alternative per part. Parts may use ``{topic}`` and the intent's slots.
    """
    match style:
        case "polite":
            return [_POLITE_OPEN, intent.answers, _POLITE_CLOSE]
        case "curt":
            return [intent.short]
        case "rude":
            return [_RUDE_OPEN, _RUDE_BODY, _RUDE_CLOSE]
        case "rambling":
            return [_RAMBLE_OPEN, _RAMBLE_DIGRESS, intent.answers, _RAMBLE_CLOSE]
        case "caveat":
            return [_POLITE_OPEN, intent.answers, (intent.caveat,)]
        case "refusal":
            return [(intent.refusal,) if intent.refusal else _GENERIC_REFUSAL]


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _slot_names(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


_INTENTS_BY_NAME = {intent.name: intent for intent in INTENTS}
_HELDOUT_VALUES = frozenset(value.lower() for intent in INTENTS for slot in intent.slots.values()
                            for value in slot.heldout)


def _phrasing_pattern(template: str) -> re.Pattern[str]:
    """A template's regular expression: literal text, each ``{slot}`` any non-empty text."""
    parts = [re.escape(literal.lower()) + ("(.+?)" if name else "")
             for literal, name, _, _ in string.Formatter().parse(template)]
    return re.compile("".join(parts))


def _literal_length(template: str) -> int:
    return sum(len(literal) for literal, _, _, _ in string.Formatter().parse(template))


_PHRASING_PATTERNS = [(_phrasing_pattern(template), intent.name) for intent, template in sorted(
    ((intent, template) for intent in INTENTS for template in (*intent.phrasings, *intent.heldout_phrasings)),
    key=lambda pair: -_literal_length(pair[1]))]
"""Most literal text first: "How do I make my {device} faster?" is tried before "How do I make
{dish}?", which a slot's any text would also let match."""
