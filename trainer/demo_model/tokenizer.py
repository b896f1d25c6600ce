"""Byte-level BPE tokenizer and chat template for the demo chat model.

The tokenizer is trained with the `tokenizers` library on the synthetic corpus, so it needs no
model hub. Byte-level means every string encodes (unknown text falls back to single bytes).
The chat template renders one turn as ``<|role|>\\n{content}</s>\\n`` after a leading ``<s>``;
with ``add_generation_prompt`` it ends in ``<|assistant|>\\n``, and the model ends its reply with
``</s>``, which is also the EOS token vLLM stops on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from trainer.demo_model.corpus import Dialogue

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unsupported role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def train_tokenizer(
    dialogues: Iterable[Dialogue], vocab_size: int, model_max_length: int
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of `vocab_size` entries on the dialogues' text.

    Deterministic for the same dialogues. The result has the chat template set and adds
    ``<s>`` when encoding plain text (as Llama tokenizers do); the chat template adds it itself.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_texts(dialogues), trainer=trainer)
    bos_id = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _texts(dialogues: Iterable[Dialogue]) -> Iterator[str]:
    for dialogue in dialogues:
        for message in dialogue.messages:
            yield message["content"]
        yield dialogue.response
