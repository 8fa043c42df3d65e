"""A generator whose answers are decided by a Python function: for tests and dry runs.

Pipelines and search logic are tested against it deterministically: the script
sees the prompt, the sampling settings and the index of the completion, and
returns the continuation text. The settings it sees carry the completion's own
seed (``completion_seed(prompt seed, index)``, or None when unseeded), so a
script can make its samples depend on the seed as a real backend's do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from stepdpo.generation.base import Completion, SamplingParams, prompt_seeds
from stepdpo.seeding import completion_seed

Script = Callable[[str, SamplingParams, int], str]


@dataclass
class ScriptedGenerator:
    script: Script
    name: str = "scripted"
    calls: list[tuple[int, SamplingParams]] = field(default_factory=list)
    """(number of prompts, params) per call, so tests can count the cost of a search."""
    seeds: list[list[int | None]] = field(default_factory=list)
    """The per-prompt seeds of each call."""

    def generate(self, prompts: list[str], params: SamplingParams, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        per_prompt = prompt_seeds(prompts, params, seeds)
        self.calls.append((len(prompts), params))
        self.seeds.append(per_prompt)
        out = []
        for prompt, seed in zip(prompts, per_prompt):
            texts = [self.script(prompt, replace(params, seed=None if seed is None else completion_seed(seed, index)), index)
                     for index in range(params.n)]
            out.append([Completion(text=t, num_tokens=len(t.split()), finish_reason="stop") for t in texts])
        return out
