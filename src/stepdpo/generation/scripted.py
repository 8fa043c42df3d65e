"""A generator whose answers are decided by a Python function: for tests and dry runs.

Pipelines and search logic are tested against it deterministically: the script
sees the prompt, the sampling settings and the index of the completion, and
returns what the model writes. The settings it sees carry the completion's own
seed (``completion_seed(prompt seed, index)``, or None when unseeded), so a
script can make its samples depend on the seed as a real backend's do.

A script returns either a string, the text the model would write up to its
end-of-sequence token, which the generator then ends as a real backend would
(cut before the first stop string: finish ``stop``; else cut after
``max_new_tokens`` tokens: finish ``length``; else ``eos``), or a whole
:class:`Completion`, passed through as it is (an error, or any finish reason set
by hand). Tokens are whitespace-separated words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence, Union

from stepdpo.generation.base import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Completion, SamplingParams, prompt_seeds
from stepdpo.seeding import completion_seed

Script = Callable[[str, SamplingParams, int], Union[str, Completion]]

_WORD = re.compile(r"\S+")


def end_like_a_backend(text: str, params: SamplingParams) -> Completion:
    """``text`` (what the model writes before its EOS) ended at a stop string, the token limit or EOS."""
    words = list(_WORD.finditer(text))
    truncated = len(words) > params.max_new_tokens
    if truncated:
        text = text[: words[params.max_new_tokens - 1].end()] if params.max_new_tokens > 0 else ""
    cuts = [(at, stop) for at, stop in ((text.find(s), s) for s in params.stop) if at >= 0]
    if cuts:
        at, stop = min(cuts)
        return Completion(text=text[:at], num_tokens=len(text[:at].split()), finish_reason=FINISH_STOP, stop_string=stop)
    return Completion(text=text, num_tokens=len(text.split()), finish_reason=FINISH_LENGTH if truncated else FINISH_EOS)


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
            written = [self.script(prompt, replace(params, seed=None if seed is None else completion_seed(seed, index)), index)
                       for index in range(params.n)]
            out.append([replace(w) if isinstance(w, Completion) else end_like_a_backend(w, params) for w in written])
        return out
