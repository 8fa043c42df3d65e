"""What the hf backend's tests share: prompts of mixed lengths and the tiny model with varied continuations."""

from __future__ import annotations

import torch

from stepdpo.generation.base import GeneratorConfig
from stepdpo.generation.hf import HFGenerator

PROMPTS = [
    "Short.",
    "A much longer prompt, with many more tokens in it than the first one has, to force padding.",
    "Medium length prompt here.",
    "x",
    "Another prompt of some middling length, for the batch.",
]


def lively(tiny_model_dir, batch_size: int = 3) -> HFGenerator:
    """The tiny model with larger random weights.

    At its default initialisation the tiny model repeats one token forever, which
    would let ordering, padding and stop bugs pass unseen; with weights of std 0.3
    its greedy continuations are varied.
    """
    config = GeneratorConfig(model=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=batch_size)
    base = HFGenerator(config)
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in base.model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=rng) * 0.3)
    return HFGenerator.from_model(base.model, base.tokenizer, config)
