"""What names the model organism: the options of `stepdpo pretrain`, their fingerprint and the folder they build into.

Kept apart from the stage (:mod:`stepdpo.stages.pretrain`), which trains with the SFT stage and
evaluates, so that :func:`stepdpo.models.resolve_model` can find the ``organism`` alias's folder
without importing the stages that themselves load models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from stepdpo.cache import cache_dir

DEFAULT_DATA = ["synthetic:train?n=56000&min_steps=2&max_steps=6&difficulty=0&seed=0"]
DEFAULT_VALIDATION = "synthetic:train?n=300&min_steps=3&max_steps=5&difficulty=0&seed=1000"
"""Held-out problems for choosing settings: the train split with a seed the training data does not use."""


@dataclass
class PretrainConfig:
    """Options of `stepdpo pretrain` (every one of them changes the built model, except where said)."""

    data: list[str] = field(default_factory=lambda: list(DEFAULT_DATA), metadata={"help": "Training problems with step-format solutions (loader specs or JSONL files, as for `stepdpo sft`)."})
    validation: str = field(default=DEFAULT_VALIDATION, metadata={"help": "Problems the built model is evaluated on (greedy); '' skips. Choose settings on these, never on synthetic:test. The default build: 47.0 % (bench/results/organism_build_kv1.md)."})
    validation_max_new_tokens: int = field(default=200, metadata={"help": "Token limit of a validation response."})
    tokenizer_problems: int = field(default=4000, metadata={"help": "The first this many training problems' text trains the tokenizer."})
    vocab_size: int = field(default=1024, metadata={"help": "Tokenizer vocabulary: 256 bytes, 4 special tokens, the rest BPE merges."})
    hidden_size: int = field(default=192, metadata={"help": "Model width."})
    intermediate_size: int = field(default=768, metadata={"help": "MLP width (SwiGLU)."})
    num_layers: int = field(default=4, metadata={"help": "Transformer layers."})
    num_heads: int = field(default=3, metadata={"help": "Attention heads (hidden_size must divide by it)."})
    num_kv_heads: int = field(default=1, metadata={"help": "Key/value heads (grouped-query attention when fewer than num_heads). One: it generates 1.5x as fast as three at this size, and learned more (bench/results/organism_build_kv1.md)."})
    max_position_embeddings: int = field(default=512, metadata={"help": "Longest sequence (prompt + response) the model is built for."})
    prompt_style: Literal["chat", "plain"] = field(default="chat", metadata={"help": "Prompt the model is trained on: chat (its own template, the pipeline's default) or plain."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training problems."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate (AdamW); a from-scratch model this small wants a large one."})
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = field(default="cosine", metadata={"help": "Learning-rate schedule after warmup."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Share of the optimizer steps spent warming up."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    score_prompt: bool = field(default=True, metadata={"help": "Also score the prompt's tokens (the question's text), not only the solution's."})
    batch_size: int = field(default=8, metadata={"help": "Examples per optimizer step (small: on a CPU the tokens/s hardly change with it, and more steps learn more from the same examples)."})
    max_length: int = field(default=512, metadata={"help": "Longer examples (prompt + solution tokens) are dropped."})
    precision: Literal["auto", "float32", "bf16"] = field(default="auto", metadata={"help": "Training arithmetic: bf16 autocast (weights stay float32), float32, or auto (bf16 where the CPU has avx512_bf16/amx_bf16 or on CUDA)."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial weights and the data order."})
    threads: int = field(default=2, metadata={"help": "CPU threads for torch (0 = torch's default). Does not enter the cache fingerprint."})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda when available), 'cpu', 'cuda'. Does not enter the cache fingerprint."})
    output_dir: str = field(default="", metadata={"help": "Where the organism goes ('' = $STEPDPO_CACHE/models/organism-<fingerprint>, the folder the 'organism' alias uses for the default config)."})
    overwrite: bool = field(default=False, metadata={"help": "Build again even when output_dir/model is complete."})


# Options that change nothing about the weights (or, for threads/device, only float rounding).
_NOT_FINGERPRINTED = ("output_dir", "overwrite", "threads", "device", "validation", "validation_max_new_tokens")


def fingerprint(config: PretrainConfig) -> str:
    """12 hex digits naming what the build depends on (data, tokenizer, sizes, training, seed)."""
    options = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]


def output_dir(config: PretrainConfig) -> Path:
    if config.output_dir:
        return Path(config.output_dir)
    return cache_dir() / "models" / f"organism-{fingerprint(config)}"


def model_dir(config: PretrainConfig) -> Path:
    """Where the built organism is (or will be)."""
    return output_dir(config) / "model"


def organism_config() -> PretrainConfig:
    """The options of the ``organism`` model alias (the defaults)."""
    return PretrainConfig()


def is_finished(config: PretrainConfig) -> bool:
    """Whether a build of ``config`` ran to its end (``build.json`` is written after the verified save)."""
    return (output_dir(config) / "build.json").is_file()
