"""Preference pairs to token ids: reading pair files and tokenizing context and continuations.

A pair's training text is ``context ‖ continuation`` with
``context = PromptFormat.context(question, initial_reason_steps)`` (the chat turn opened plus
the correct prefix, which starts with "Let's think step by step.\\n"). Context and
continuation are tokenized *separately* and their ids concatenated, so the boundary between
what is conditioned on and what is scored is exact (no merge across it).

Modes decide where a continuation ends:

- ``step-dpo``: the continuation is one step; it gets an end-of-sequence token only when the
  step ends the solution (it states the final answer, or it is all of ``full_chosen`` /
  ``full_rejected``), as in the released Step-DPO trainer;
- ``dpo``: whole solutions, ``initial_reason_steps`` is just the header; EOS appended;
- ``scdpo``: whole solutions sharing a prefix up to a branch point (the prefix lives in
  ``initial_reason_steps``); EOS appended.

TRL-style rows (``prompt``, ``chosen``, ``rejected`` only) use ``prompt`` verbatim as context.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from stepdpo.errors import InputError
from stepdpo.grading import states_final_answer
from stepdpo.records import StepPair, read_jsonl_dicts, record_from_dict
from stepdpo.steps import PromptFormat
from stepdpo.training.packing import PairTokens

log = logging.getLogger(__name__)

Mode = Literal["step-dpo", "dpo", "scdpo"]
TRL_FORMAT = "trl"


def _pair_from_row(row: dict[str, Any], path: Path, line: int) -> StepPair:
    if "initial_reason_steps" in row:
        row = {"id": f"{path.stem}:{line}", "dataset": "", "full_chosen": "", "full_rejected": "", "answer": "", **row}
        return record_from_dict(StepPair, row, path, line)
    for key in ("prompt", "chosen", "rejected"):
        if not isinstance(row.get(key), str):
            raise InputError(str(path), "a pair row needs the StepPair fields or TRL's prompt/chosen/rejected strings", line, key)
    return StepPair(
        id=str(row.get("id", f"{path.stem}:{line}")),
        dataset=str(row.get("dataset", "")),
        prompt=row["prompt"],
        initial_reason_steps="",
        chosen=row["chosen"],
        rejected=row["rejected"],
        full_chosen=row["chosen"],
        full_rejected=row["rejected"],
        answer=str(row.get("answer", "")),
        kind="dpo",
        provenance={"format": TRL_FORMAT},
    )


def read_pairs(paths: Iterable[str | Path]) -> list[StepPair]:
    """Read pairs from JSONL or Parquet files (StepPair schema, or TRL prompt/chosen/rejected rows)."""
    pairs: list[StepPair] = []
    for path in map(Path, paths):
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            if not path.is_file():
                raise InputError(str(path), "file not found")
            rows: Iterable[tuple[int, dict[str, Any]]] = enumerate(pq.read_table(path).to_pylist(), start=1)
        else:
            rows = read_jsonl_dicts(path)
        pairs.extend(_pair_from_row(row, path, line) for line, row in rows)
    return pairs


def step_ends_solution(step: str, full: str) -> bool:
    """True when a step is the solution's last: it states the final answer (:func:`stepdpo.grading.states_final_answer`,
    the rule SCDPO ends its continuations by) or is the whole remaining solution."""
    return states_final_answer(step) or (bool(full.strip()) and full.strip() == step.strip())


@dataclass(frozen=True)
class TokenizeOptions:
    mode: Mode = "step-dpo"
    max_length: int = 1024
    """Longest ``context + continuation`` per branch, in tokens."""
    max_prompt_length: int = 512
    """Longest context; longer ones keep their last tokens (the nearest steps)."""


def pair_context(pair: StepPair, prompt_format: PromptFormat) -> str:
    if pair.provenance.get("format") == TRL_FORMAT:
        return pair.prompt
    return prompt_format.context(pair.prompt, pair.initial_reason_steps)


def tokenize_pair(pair: StepPair, tokenizer: Any, prompt_format: PromptFormat, options: TokenizeOptions) -> PairTokens | str:
    """Token ids of a pair, or the reason it cannot be trained on (a string, for the funnel)."""
    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    prefix = ids(pair_context(pair, prompt_format))[-options.max_prompt_length :]
    eos = [tokenizer.eos_token_id]
    if options.mode == "step-dpo":
        chosen = ids(pair.chosen) + (eos if step_ends_solution(pair.chosen, pair.full_chosen) else [])
        rejected = ids(pair.rejected) + (eos if step_ends_solution(pair.rejected, pair.full_rejected) else [])
    else:
        chosen, rejected = ids(pair.chosen) + eos, ids(pair.rejected) + eos
    room = options.max_length - len(prefix)
    chosen, rejected = chosen[:room], rejected[:room]
    if not prefix:
        return "empty context"
    if not pair.chosen.strip() or not pair.rejected.strip() or room <= 0:
        return "empty continuation"
    if chosen == rejected:
        return "chosen equals rejected"
    return PairTokens(prefix, chosen, rejected)


def tokenize_pairs(
    pairs: Sequence[StepPair], tokenizer: Any, prompt_format: PromptFormat, options: TokenizeOptions
) -> tuple[list[tuple[StepPair, PairTokens]], dict[str, int]]:
    """Tokenize every pair; returns the usable ones and the count dropped per reason."""
    kept: list[tuple[StepPair, PairTokens]] = []
    dropped: dict[str, int] = {}
    for pair in pairs:
        result = tokenize_pair(pair, tokenizer, prompt_format, options)
        if isinstance(result, str):
            dropped[result] = dropped.get(result, 0) + 1
        else:
            kept.append((pair, result))
    if dropped:
        log.warning("dropped %d of %d pairs: %s", sum(dropped.values()), len(pairs), dropped)
    return kept, dropped


class PairDataset:
    """A map-style dataset of tokenized pairs with their reference log-probs (what the collator packs)."""

    def __init__(self, tokens: Sequence[PairTokens], reference: Sequence[tuple[float, float]]):
        if len(tokens) != len(reference):
            raise ValueError("one reference (chosen, rejected) log-prob pair per tokenized pair")
        self.tokens = list(tokens)
        self.reference = list(reference)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.tokens[index]
        ref_chosen, ref_rejected = self.reference[index]
        return {
            "prefix": pair.prefix,
            "chosen": pair.chosen,
            "rejected": pair.rejected,
            "ref_chosen_logps": ref_chosen,
            "ref_rejected_logps": ref_rejected,
        }


class PackedCollator:
    """Data collator: a list of :class:`PairDataset` items -> one packed batch (see ``packing.pack_pairs``)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from stepdpo.training.packing import pack_pairs

        batch = pack_pairs([PairTokens(i["prefix"], i["chosen"], i["rejected"]) for i in items], self.pad_token_id)
        batch["ref_chosen_logps"] = torch.tensor([i["ref_chosen_logps"] for i in items], dtype=torch.float32)
        batch["ref_rejected_logps"] = torch.tensor([i["ref_rejected_logps"] for i in items], dtype=torch.float32)
        return batch
