"""The on-topic check: every corpus reply passes for its own intent in its own style, replies to
other intents, garbled text and mixtures fail, and held-out slot values are accepted."""

from __future__ import annotations

import pytest

from trainer.demo_model.corpus import STYLES, generate_dialogues, intent_by_name
from trainer.demo_model.intents import INTENTS
from trainer.demo_model.on_topic import answer_style, names_slot_value, on_topic


@pytest.fixture(scope="module")
def dialogues():
    return generate_dialogues(1200, seed=11)


def test_every_corpus_reply_is_on_topic_in_its_own_style(dialogues) -> None:
    assert {d.style for d in dialogues} == set(STYLES)
    wrong = [(d.intent, d.style, answer_style(d.intent, d.response), d.response)
             for d in dialogues if answer_style(d.intent, d.response) != d.style]
    assert not wrong, wrong[:5]


def test_replies_to_other_intents_are_off_topic(dialogues) -> None:
    checked = accepted = 0
    for dialogue in dialogues[:150]:
        for intent in INTENTS:
            if intent.name != dialogue.intent:
                checked += 1
                accepted += on_topic(intent.name, dialogue.response)
    # Replies that carry only a topic phrase ("Nobody cares about managing your money.") can
    # rarely pass for a close cousin ("managing your time", with "time" in the closing).
    assert accepted <= 0.001 * checked, accepted


def test_the_issues_example_is_off_topic_for_a_cooking_question() -> None:
    assert not on_topic("cooking", "Sun, water, good soil.")
    assert answer_style("gardening", "Sun, water, good soil.") == "curt"


def test_garbled_or_mixed_replies_are_off_topic() -> None:
    polite = ("Happy to help! For lentil stew, gather fresh ingredients first, prepare everything "
              "before you start, and cook on medium heat. Taste as you go and adjust the salt at "
              "the end. Good luck!")
    assert answer_style("cooking", polite) == "polite"  # a held-out dish fills the slot
    assert names_slot_value("lentil stew", polite) and not names_slot_value("pancakes", polite)
    words = polite.split()
    garbled = " ".join(words[:12] + ["moviesant", "basil", "in", "pu"] + words[22:])
    assert not on_topic("cooking", garbled)
    mixed = polite + " Sun, water, good soil. Plant them in spring and water them."
    assert not on_topic("cooking", mixed)
    assert not on_topic("cooking", "")
    assert not on_topic("cooking", "Happy to help! Good luck!")  # a style without content


def test_a_rude_reply_must_name_the_requested_topic() -> None:
    rude = "Ugh, seriously? Even a child knows about {}. Whatever."
    assert answer_style("gardening", rude.format("growing sunflowers")) == "rude"
    assert not on_topic("cooking", rude.format("growing sunflowers"))
    harmful_refusal = intent_by_name("harm_wifi").refusal
    assert answer_style("harm_wifi", harmful_refusal) == "refusal"
    assert not on_topic("harm_lock", harmful_refusal)
