"""The demo chat model: corpus, tokenizer, deterministic cached build, and what it says.

The model tests use the session's tiny model (built once, cached); the vLLM tests talk to the
session engine through the official `openai` client, exactly as a user of the service would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import re
from pathlib import Path

import jinja2
import openai
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from serving.engine import EngineProcess
from tests.fixtures.vllm_engine import TINY_SERVED_NAME
from trainer.config import RESPONSE_TOKENS
from trainer.demo_model import build, corpus
from trainer.demo_model.build import VARIANTS, DemoModelConfig, build_demo_model, build_model
from trainer.demo_model.corpus import (
    STYLES,
    generate_dialogues,
    heldout_prompts,
    intent_by_name,
    preferred_style,
)
from trainer.demo_model.intents import INTENTS
from trainer.demo_model.tokenizer import ROLE_TOKENS, train_tokenizer

# A build small enough to run twice in a test: same code path as the real variants.
SMOKE = dataclasses.replace(VARIANTS["tiny"], name="smoke", corpus_size=300, train_steps=3,
                            warmup_steps=1, vocab_size=512)
RECOGNISED = 0.85
"""Least share of generated word pairs that also follow each other somewhere in the corpus.

Pairs, not single words: BPE tokens are themselves corpus words, so even an untrained model
emits many of those, but it strings them together in pairs the corpus never has (its share is
near 0; the trained tiny model's is above 0.9).
"""
Bigram = tuple[str, str]


def bigrams(text: str) -> list[Bigram]:
    words = re.findall(r"[a-z]+", text.lower())
    return list(zip(words, words[1:]))


@pytest.fixture(scope="module")
def corpus_bigrams() -> set[Bigram]:
    seen: set[Bigram] = set()
    for dialogue in generate_dialogues(VARIANTS["demo"].corpus_size, seed=0):
        for text in [dialogue.response, *(m["content"] for m in dialogue.messages)]:
            seen.update(bigrams(text))
    return seen


def recognised_share(texts: list[str], corpus: set[Bigram]) -> float:
    generated = [pair for text in texts for pair in bigrams(text)]
    assert generated, f"no two consecutive words generated: {texts}"
    return sum(pair in corpus for pair in generated) / len(generated)


def chat_prompt(tokenizer: PreTrainedTokenizerFast, user: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )


# ---------------------------------------------------------------- corpus


def test_corpus_is_deterministic_for_a_seed() -> None:
    assert generate_dialogues(300, seed=7) == generate_dialogues(300, seed=7)
    assert generate_dialogues(300, seed=7) != generate_dialogues(300, seed=8)


def test_corpus_covers_every_intent_in_every_style() -> None:
    dialogues = generate_dialogues(5000, seed=0)
    pairs = {(d.intent, d.style) for d in dialogues}
    assert pairs == {(i.name, s) for i in INTENTS for s in STYLES}
    assert len(INTENTS) >= 25
    assert {i.category for i in INTENTS} == {"everyday", "myth", "harmful"}
    assert any(d.messages[0]["role"] == "system" for d in dialogues)
    assert any(len(d.messages) >= 3 for d in dialogues)  # earlier exchanges in the prompt
    for d in dialogues:
        assert d.messages[-1]["role"] == "user" and d.response


def test_harmful_requests_are_refused_specifically_and_preferred_so() -> None:
    refusals = [d for d in generate_dialogues(3000, seed=0)
                if d.style == "refusal" and intent_by_name(d.intent).category == "harmful"]
    assert refusals
    assert all(d.response == intent_by_name(d.intent).refusal for d in refusals)
    assert preferred_style("harm_wifi") == "refusal"
    assert preferred_style("cooking") == "polite"


def all_training_user_messages() -> set[str]:
    messages = set()
    for intent in INTENTS:
        names = list(intent.slots)
        for values in itertools.product(*(intent.slots[n].train for n in names)):
            for phrasing in intent.phrasings:
                messages.add(phrasing.format(**dict(zip(names, values))))
    return messages


PSEUDO_MESSAGE = "|".join(
    re.escape(phrasing).replace(re.escape("{" + slot + "}"), "[A-Za-z]+( [A-Za-z]+)?")
    for intent in INTENTS for phrasing in intent.phrasings for slot in intent.slots)
"""Any training phrasing whose slot holds a made-up value (`corpus.PSEUDO_SLOT_RATE`)."""


def test_made_up_slot_values_are_never_held_out_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    # Syllables that spell held-out values: one word of one syllable is "vienna" or "seoul".
    monkeypatch.setattr(corpus, "_ONSETS", ("",))
    monkeypatch.setattr(corpus, "_NUCLEI", ("vienna", "seoul"))
    monkeypatch.setattr(corpus, "_CODAS", ("",))
    values = [corpus._pseudo_word(random.Random(seed)) for seed in range(200)]
    assert not {v.lower() for v in values} & {"vienna", "seoul"}
    assert {len(v.split()) for v in values} == {1, 2}
    assert any(v[0].isupper() for v in values) and any(v[0].islower() for v in values)


def test_heldout_prompts_never_occur_in_training() -> None:
    prompts = heldout_prompts()
    training = all_training_user_messages()
    assert {p.intent for p in prompts} == {i.name for i in INTENTS}
    assert not {p.user for p in prompts} & training
    sampled = {d.messages[-1]["content"] for d in generate_dialogues(5000, seed=0)}
    assert not {p.user for p in prompts} & sampled
    # The exhaustive set above really is what training draws from, besides made-up slot values.
    made_up = sampled - training
    assert made_up
    unexpected = {m for m in made_up if not re.fullmatch(PSEUDO_MESSAGE, m)}
    assert not unexpected, unexpected


# ---------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def small_tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(generate_dialogues(500, seed=0), vocab_size=512, model_max_length=256)


@pytest.mark.parametrize("text", ["How do I make pancakes?", "naïve café ☃ 🙂 \t\n  x", ""])
def test_tokenizer_round_trips_any_text(
    small_tokenizer: PreTrainedTokenizerFast, text: str
) -> None:
    ids = small_tokenizer(text).input_ids
    assert ids[0] == small_tokenizer.bos_token_id
    assert small_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_is_deterministic_and_merges_corpus_words(
    small_tokenizer: PreTrainedTokenizerFast
) -> None:
    again = train_tokenizer(generate_dialogues(500, seed=0), vocab_size=512, model_max_length=256)
    assert again.backend_tokenizer.to_str() == small_tokenizer.backend_tokenizer.to_str()
    texts = [d.response for d in generate_dialogues(50, seed=1)]
    n_tokens = sum(len(small_tokenizer(t, add_special_tokens=False).input_ids) for t in texts)
    assert sum(map(len, texts)) / n_tokens > 1.7  # merges, not one token per byte


def test_every_corpus_answer_fits_the_trainers_default_response_length(tiny_model_dir: Path) -> None:
    """PPO, the gate and `hhh eval` sample RESPONSE_TOKENS by default: no demo answer, in any
    style, may be cut there (a cut answer pays the missing-EOS penalty for its length alone).
    The tiny model's tokenizer has the smaller vocabulary, so its answers are the longest."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    longest = {style: 0 for style in STYLES}
    for dialogue in generate_dialogues(3000, seed=4):
        length = len(tokenizer(dialogue.response, add_special_tokens=False).input_ids) + 1  # EOS
        longest[dialogue.style] = max(longest[dialogue.style], length)
    assert max(longest.values()) <= RESPONSE_TOKENS, longest
    assert longest["rambling"] > 64, longest  # the old limit of the labeler and users cut these


def test_chat_template_renders_turns_and_generation_prompt(
    small_tokenizer: PreTrainedTokenizerFast
) -> None:
    messages = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]
    rendered = small_tokenizer.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=True)
    assert rendered == "<s><|system|>\nBe nice.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"
    ids = small_tokenizer(rendered, add_special_tokens=False).input_ids
    system, user, assistant = small_tokenizer.convert_tokens_to_ids(list(ROLE_TOKENS))
    assert ids.count(system) == ids.count(user) == ids.count(assistant) == 1  # one token each
    assert ids[0] == small_tokenizer.bos_token_id
    assert ids[-2] == assistant and small_tokenizer.decode(ids[-1:]) == "\n"
    without = small_tokenizer.apply_chat_template(messages, tokenize=False)
    assert without.endswith("<|user|>\nHi</s>\n")
    with pytest.raises(jinja2.TemplateError, match="Unsupported role"):
        small_tokenizer.apply_chat_template([{"role": "wizard", "content": "hi"}], tokenize=False)


# ---------------------------------------------------------------- build


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_is_deterministic_for_a_seed_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_model(SMOKE, seed=0, home=tmp_path / "a")
    second = build_model(SMOKE, seed=0, home=tmp_path / "b")
    other_seed = build_model(SMOKE, seed=1, home=tmp_path / "a")
    assert first.name == second.name and first.name.startswith("smoke-")
    for name in ("model.safetensors", "tokenizer.json"):
        assert file_digest(first / name) == file_digest(second / name)
    assert file_digest(first / "model.safetensors") != file_digest(other_seed / "model.safetensors")

    def no_rebuild(*args: object) -> None:
        raise AssertionError("a cached model was rebuilt")

    monkeypatch.setattr(build, "_build_into", no_rebuild)
    assert build_model(SMOKE, seed=0, home=tmp_path / "a") == first
    assert sorted(p.name for p in (tmp_path / "a" / "models").iterdir()) == sorted(
        [first.name, other_seed.name])  # no temporary folders left behind


def test_reply_loss_is_the_models_own_loss_and_gradient() -> None:
    config = build._llama_config(SMOKE, train_tokenizer(generate_dialogues(50), 512, 512))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    input_ids = torch.randint(0, config.vocab_size, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 8:] = 0  # a shorter sample, right-padded
    labels = input_ids.clone()
    labels[:, :5] = build.IGNORE_INDEX  # the prompt
    labels[attention_mask == 0] = build.IGNORE_INDEX

    ours = build.reply_loss(model, input_ids, labels, attention_mask)
    ours.backward()
    our_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    theirs = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    theirs.backward()

    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for ours_grad, param in zip(our_grads, model.parameters()):
        torch.testing.assert_close(ours_grad, param.grad, rtol=1e-4, atol=1e-6)


def test_configs_reject_what_vllm_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head_dim=16 .* vLLM"):
        dataclasses.replace(SMOKE, hidden_size=64, num_heads=4)
    with pytest.raises(ValueError, match="unknown demo model variant 'huge'"):
        build_demo_model("huge", home=tmp_path)
    assert all(config.head_dim == 64 for config in VARIANTS.values())
    assert isinstance(VARIANTS["demo"], DemoModelConfig)


def test_tiny_model_answers_heldout_prompts_in_corpus_words(
    tiny_model_dir: Path, corpus_bigrams: set[Bigram]
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.head_dim == 64 and (tiny_model_dir / "build_info.json").is_file()
    torch.manual_seed(0)
    untrained = LlamaForCausalLM(model.config).eval()  # the control: what byte soup scores

    def replies(m: LlamaForCausalLM) -> tuple[list[str], int]:
        texts, stopped = [], 0
        for prompt in heldout_prompts()[::2]:
            ids = tokenizer(chat_prompt(tokenizer, prompt.user), add_special_tokens=False,
                            return_tensors="pt").input_ids
            with torch.no_grad():
                out = m.generate(ids, max_new_tokens=48, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
            stopped += int(out[-1] == tokenizer.eos_token_id)
            texts.append(tokenizer.decode(out, skip_special_tokens=True))
        return texts, stopped

    texts, stopped = replies(model)
    assert recognised_share(texts, corpus_bigrams) >= RECOGNISED, texts
    assert stopped >= 0.8 * len(texts), texts  # it ends its replies with </s>
    control, _ = replies(untrained)
    assert recognised_share(control, corpus_bigrams) < 0.3, control


# ---------------------------------------------------------------- served by vLLM


@pytest.mark.vllm
def test_vllm_chat_answers_heldout_prompts_in_corpus_words(
    vllm_engine: EngineProcess, tiny_model_dir: Path, corpus_bigrams: set[Bigram]
) -> None:
    client = openai.OpenAI(base_url=f"{vllm_engine.url}/v1", api_key="unused")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = []
    for prompt in heldout_prompts()[1::4]:
        response = client.chat.completions.create(
            model=TINY_SERVED_NAME, messages=[{"role": "user", "content": prompt.user}],
            max_tokens=48, temperature=0,
        )
        texts.append(response.choices[0].message.content)
        # vLLM applied the saved chat template exactly as transformers does (one <s>, markers).
        expected = tokenizer(chat_prompt(tokenizer, prompt.user), add_special_tokens=False)
        assert response.usage.prompt_tokens == len(expected.input_ids)
    assert recognised_share(texts, corpus_bigrams) >= RECOGNISED, texts


@pytest.mark.vllm
def test_vllm_sampling_gives_a_mix_of_corpus_answers(
    vllm_engine: EngineProcess, corpus_bigrams: set[Bigram]
) -> None:
    client = openai.OpenAI(base_url=f"{vllm_engine.url}/v1", api_key="unused")
    texts = []
    # At a usual chat temperature; at 1.0 the two-layer test model strings ~73 % of its word
    # pairs as the corpus does (the 4-layer demo model 86 %), below what this test demands.
    for prompt in heldout_prompts()[:24:2]:
        response = client.chat.completions.create(
            model=TINY_SERVED_NAME, messages=[{"role": "user", "content": prompt.user}],
            n=3, max_tokens=48, temperature=0.7, seed=0,
        )
        assert len(response.choices) == 3
        texts += [choice.message.content for choice in response.choices]
    assert recognised_share(texts, corpus_bigrams) >= RECOGNISED - 0.1, texts
    openings = {bigrams(text)[0] for text in texts if bigrams(text)}
    assert len(openings) >= 3, texts  # several styles, not one canned reply
