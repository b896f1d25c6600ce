"""Judges that are not the reward model: the demo's constitution (with the request category
read off the prompt) and a local sequence classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from common.errors import UserError
from trainer.demo_model.corpus import heldout_prompts, infer_intent, intent_by_name
from trainer.demo_model.intents import INTENTS
from trainer.judges import ClassifierJudge, ConstitutionJudge, load_judge


def test_every_phrasing_is_read_back_as_its_intent_whatever_the_slot_values() -> None:
    """Held-out prompts use wording and slot values training never shows; the intent still
    comes back (the judge must know a harmful request read from the log)."""
    for prompt in heldout_prompts():
        assert infer_intent(prompt.user) == prompt.intent, prompt
    for intent in INTENTS:
        for template in intent.phrasings:
            filled = template.format(**{name: "a brand-new thing" for name in intent.slots})
            assert infer_intent("  " + filled.upper() + " ") == intent.name, filled
    assert infer_intent("What is the airspeed of an unladen swallow?") is None


def test_the_constitution_rewards_refusing_harm_and_helping_otherwise() -> None:
    judge = ConstitutionJudge()
    harmful = next(p for p in heldout_prompts() if intent_by_name(p.intent).category == "harmful")
    everyday = next(p for p in heldout_prompts() if intent_by_name(p.intent).category == "everyday")
    prompts = [[{"role": "user", "content": p.user}] for p in (harmful, harmful, everyday, everyday)]
    answers = ["I'm sorry, but I can't help with that.", "Sure, just do it.",
               "Happy to help! Water it daily.", "I'm sorry, but I can't help with that."]
    scores = judge(prompts, answers)
    assert scores[0] > scores[1] and scores[2] > scores[3], scores
    assert [judge.group_of(p) for p in prompts] == ["harmful", "harmful", "everyday", "everyday"]
    unknown = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hm?"}]
    assert judge.group_of(unknown) == "everyday"


@pytest.fixture(scope="module")
def tiny_classifier(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random Llama sequence classifier with labels ok / toxic, saved locally."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         num_labels=2, id2label={0: "ok", 1: "toxic"}, label2id={"ok": 0, "toxic": 1},
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("classifier")
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_classifier_judge_scores_one_minus_the_probability_of_a_bad_label(tiny_classifier: Path) -> None:
    answers = ["Happy to help!", "Ugh, seriously? Whatever, figure it out.", "Sure."]
    prompts = [[{"role": "user", "content": "hi"}]] * 3
    judge = load_judge(str(tiny_classifier), label="toxic", label_is_good=False)
    model = LlamaForSequenceClassification.from_pretrained(str(tiny_classifier)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_classifier))
    with torch.no_grad():  # one at a time: no padding to get wrong
        toxic = torch.stack([model(**tokenizer(a, return_tensors="pt")).logits[0].softmax(-1)[1]
                             for a in answers])
    assert torch.allclose(judge(prompts, answers), 1 - toxic, atol=1e-5)
    assert judge.name == "1 − P(toxic)" and judge.group_of(prompts[0]) == "all"
    good = ClassifierJudge(tiny_classifier, "OK", label_is_good=True)
    assert torch.allclose(good(prompts, answers), 1 - toxic, atol=1e-5)  # P(ok) = 1 − P(toxic)


def test_a_judge_that_cannot_be_loaded_says_what_to_set(tiny_classifier: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no label 'hateful'.*HHH_EVAL_JUDGE_LABEL"):
        load_judge(str(tiny_classifier), label="hateful", label_is_good=False)
    with pytest.raises(UserError, match="neither 'constitution' nor a folder"):
        load_judge(str(tmp_path / "nothing"), label="toxic", label_is_good=False)
