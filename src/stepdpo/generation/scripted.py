"""A generator whose answers are decided by a Python function: for tests and dry runs.

Pipelines and search logic are tested against it deterministically: the script
sees the prompt, the sampling settings and the index of the completion, and
returns the continuation text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from stepdpo.generation.base import Completion, SamplingParams

Script = Callable[[str, SamplingParams, int], str]


@dataclass
class ScriptedGenerator:
    script: Script
    name: str = "scripted"
    calls: list[tuple[int, SamplingParams]] = field(default_factory=list)
    """(number of prompts, params) per call, so tests can count the cost of a search."""

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        self.calls.append((len(prompts), params))
        out = []
        for prompt in prompts:
            texts = [self.script(prompt, params, index) for index in range(params.n)]
            out.append([Completion(text=t, num_tokens=len(t.split()), finish_reason="stop") for t in texts])
        return out
