"""`stepdpo grade`: re-grade a JSONL of responses against gold answers.

Each row keeps its fields and gains ``predicted`` (the extracted final answer,
or null) and ``correct``; the accuracy is printed. A gold field that holds a
whole worked solution (a ``\\boxed{}`` answer or GSM8K's ``#### N``) is reduced
to its final answer first, so dataset rows can be graded as they are.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import tyro
from tqdm import tqdm

from stepdpo.config import OptionCheck
from stepdpo.errors import InputError
from stepdpo.grading import answers_match, extract_answer
from stepdpo.records import atomic_write_text, read_jsonl_dicts
from stepdpo.rundir import Funnel, RunDir

log = logging.getLogger(__name__)


@dataclass
class GradeConfig:
    input: tyro.conf.Positional[str] = field(metadata={"help": "JSONL file of rows holding a response and a gold answer."})
    response_field: str = field(default="response", metadata={"help": "Field holding the model's response text."})
    gold_field: str = field(default="answer", metadata={"help": "Field holding the gold answer (or a solution ending in \\boxed{} / '#### N')."})
    output: str = field(default="", metadata={"help": "Where to write the graded rows; empty: '<input>.graded.jsonl'."})
    id_field: Optional[str] = field(default=None, metadata={"help": "Field identifying each row; when set it must be present and unique."})
    last_number_fallback: bool = field(default=True, metadata={"help": "Take the last number of a response that has no boxed/'The answer is'/'####' answer."})
    timeout_s: float = field(default=5.0, metadata={"help": "Seconds one answer comparison may take before it counts as wrong."})
    run_dir: str = field(default="", metadata={"help": "Run directory to save the funnel in (funnel/grade.json); empty: do not save."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        OptionCheck(self, prefix).above(0, "timeout_s")


def gold_answer(gold: str) -> str:
    """The final answer of a gold field: the last box or '#### N' of a worked solution, else the text itself."""
    if "\\boxed" in gold or "\\fbox" in gold or "####" in gold:
        return extract_answer(gold, last_number_fallback=False) or gold.strip()
    return gold.strip()


def output_path(config: GradeConfig) -> Path:
    return Path(config.output) if config.output else Path(config.input).with_name(Path(config.input).name + ".graded.jsonl")


def load_rows(config: GradeConfig) -> list[dict[str, Any]]:
    """Read and check the input rows: the response is a string, the gold a string or number, ids unique."""
    rows: list[dict[str, Any]] = []
    seen: dict[Any, int] = {}
    for line, row in read_jsonl_dicts(config.input):
        if config.response_field not in row:
            raise InputError(config.input, "missing", line, config.response_field)
        response = row[config.response_field]
        if not isinstance(response, str):
            raise InputError(config.input, f"expected a string, got {type(response).__name__}", line, config.response_field)
        if config.gold_field not in row:
            raise InputError(config.input, "missing", line, config.gold_field)
        gold = row[config.gold_field]
        if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
            raise InputError(config.input, f"expected a string or a number, got {type(gold).__name__}", line, config.gold_field)
        if config.id_field is not None:
            if config.id_field not in row:
                raise InputError(config.input, "missing", line, config.id_field)
            key = json.dumps(row[config.id_field], sort_keys=True)
            if key in seen:
                raise InputError(config.input, f"duplicate id (first on line {seen[key]})", line, config.id_field)
            seen[key] = line
        rows.append(row)
    return rows


def run(config: GradeConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with ``predicted`` (extracted answer or None) and ``correct`` (bool) added."""
    graded = []
    for row in tqdm(rows, desc="grade", unit="row", disable=len(rows) < 100):
        gold = row[config.gold_field]
        predicted = extract_answer(row[config.response_field], last_number_fallback=config.last_number_fallback)
        correct = answers_match(predicted, gold_answer(str(gold)), timeout_s=config.timeout_s)
        graded.append({**row, "predicted": predicted, "correct": correct})
    return graded


def command(config: GradeConfig) -> int:
    rows = load_rows(config)
    graded = run(config, rows)
    target = output_path(config)
    atomic_write_text(target, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in graded))
    right = sum(row["correct"] for row in graded)
    no_answer = sum(row["predicted"] is None for row in graded)
    funnel = Funnel("grade", records_in=len(rows), records_out=len(graded))
    funnel.extra = {"correct": right, "no_answer": no_answer, "accuracy": right / len(graded) if graded else 0.0, "output": str(target)}
    if config.run_dir:
        funnel.save(RunDir(config.run_dir).ensure())
    print(funnel.render())
    print(f"accuracy: {right}/{len(graded)} = {right / len(graded):.2%}" if graded else "accuracy: no rows")
    return 0
