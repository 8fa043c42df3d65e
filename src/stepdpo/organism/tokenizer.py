"""A small byte-level BPE tokenizer trained on step-format text, with digits kept apart.

Every digit is its own token (the pre-tokenizer isolates digits before BPE sees
them), so ``408`` is always ``4 0 8``: a small model then learns column-wise
arithmetic once instead of one token per number. Byte-level BPE decodes every
text it encoded exactly (``decode(encode(t)) == t``), which the pipeline relies
on when it cuts responses into steps.

The tokenizer carries a minimal chat template, so the project's default
``PromptFormat(style="chat")`` works on the organism unchanged::

    <|user|>\\n{question and instruction}\\n<|assistant|>\\n
"""

from __future__ import annotations

from typing import Any, Iterable

EOS = "<|endoftext|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""Role marker, newline, content, newline per message; the opened assistant turn last."""


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 1024) -> Any:
    """Train a byte-level BPE of ``vocab_size`` tokens (256 bytes + special + merges) on ``texts``.

    Returns a ``transformers.PreTrainedTokenizerFast`` with eos = pad = ``<|endoftext|>``
    and :data:`CHAT_TEMPLATE`. Deterministic: the same texts in the same order give
    the same vocabulary and merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = [EOS, *ROLE_TOKENS]
    if vocab_size < 256 + len(special) + 1:
        raise ValueError(f"vocab_size must exceed 256 bytes + {len(special)} special tokens, got {vocab_size}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS,
        pad_token=EOS,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
