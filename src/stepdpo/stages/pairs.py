"""Preference pairs (``stepdpo pairs``): Step-DPO pairs and the plain-DPO baseline, in the public schema.

Step-DPO pair (``kind="step-dpo"``), per rectified error at step k of sample y:
``prompt`` = the question, ``initial_reason_steps`` = ``"Let's think step by step.\\n"``
+ the exact text of y's steps 1..k-1, ``chosen`` = a rectified step k,
``rejected`` = y's step k, ``full_chosen`` / ``full_rejected`` = the whole
solutions from step k on, ``answer`` = gold, ``dataset`` = the problem's source
(the columns of Math-Step-DPO-10K), plus provenance.

Plain-DPO pair (``kind="dpo"``): a whole right sample against a whole wrong
one for the same problem; ``initial_reason_steps`` is the header alone.

Each set is written as ``pairs/<name>.jsonl``, ``pairs/<name>.parquet`` and a
``datasets`` folder ``pairs/hf/<name>`` (``load_from_disk``). Pairs are cheap to
rebuild, so this stage rewrites its outputs whole instead of resuming.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional, Sequence

from stepdpo.config import OptionCheck
from stepdpo.errors import InputError
from stepdpo.grading import states_final_answer
from stepdpo.pairing import check_pair, dpo_pairs
from stepdpo.records import LocatedError, Problem, RecordStore, Rectification, Sample, StepPair, atomic_write_text, record_to_dict
from stepdpo.rundir import Funnel, RunDir
from stepdpo.stages.sample import read_problems, read_samples
from stepdpo.steps import STEP_HEADER


@dataclass
class PairsConfig:
    """Build preference pairs from rectified errors (and plain-DPO pairs from samples)."""

    max_pairs_per_error: int = field(default=1, metadata={"help": "Chosen candidates paired with each rejected step (0 = all)."})
    max_pairs_per_problem: Optional[int] = field(default=None, metadata={"help": "Cap on Step-DPO pairs per problem (None = no cap)."})
    dpo: bool = field(default=True, metadata={"help": "Also build plain-DPO pairs (whole right vs whole wrong solution) in pairs/dpo_pairs.*."})
    max_dpo_pairs_per_problem: int = field(default=1, metadata={"help": "Plain-DPO pairs per problem (0 = every right x wrong combination): the i-th right sample against the i-th wrong one first, then the other combinations."})
    stop_mismatch: Literal["keep", "drop", "whole"] = field(default="keep", metadata={"help": "A Step-DPO pair where one side states the final answer and the other does not (the sample concluded too early, or went on past the end): keep it as one step; drop it; or 'whole': train it on both whole continuations (full_chosen / full_rejected), so the chosen side also shows where to conclude. As single steps such pairs only say 'do not conclude here' (or 'conclude here'), and on the model organism that spread to concluding nowhere (docs/organism.md)."})
    dataset: Optional[str] = field(default=None, metadata={"help": "Value of the 'dataset' column (default: each problem's source)."})
    run_dir: str = field(default="runs/default", metadata={"help": "Run directory: reads rectified.jsonl, located.jsonl, samples.jsonl; writes pairs/."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.at_least(0, "max_pairs_per_error", "max_dpo_pairs_per_problem")
        check.at_least(1, "max_pairs_per_problem")


def step_pairs(config: PairsConfig, problems: dict[str, Problem], samples: dict[str, Sample], located: dict[str, LocatedError],
               rectified: Sequence[Rectification], funnel: Funnel | None = None) -> list[StepPair]:
    """Step-DPO pairs from rectifications, capped per error and per problem, each checked by :func:`check_pair`."""
    per_problem: dict[str, int] = defaultdict(int)
    out: list[StepPair] = []
    for rect in rectified:
        if not rect.chosen:
            if funnel is not None:
                funnel.drop("no chosen candidate")
            continue
        if rect.sample_id not in samples or rect.problem_id not in problems:
            raise InputError("rectified.jsonl", f"sample {rect.sample_id!r} or its problem is missing from the run", None, "sample_id")
        sample, problem, loc = samples[rect.sample_id], problems[rect.problem_id], located.get(rect.sample_id)
        k = rect.first_wrong_step
        take = len(rect.chosen) if config.max_pairs_per_error == 0 else min(config.max_pairs_per_error, len(rect.chosen))
        for j in range(take):
            if config.max_pairs_per_problem is not None and per_problem[problem.id] >= config.max_pairs_per_problem:
                if funnel is not None:
                    funnel.drop("cap per problem")
                break
            pair = StepPair(
                id=f"{rect.sample_id}@{k}#{j}", dataset=config.dataset or problem.source or "unknown", prompt=problem.question,
                initial_reason_steps=STEP_HEADER + rect.prefix, chosen=rect.chosen[j], rejected=rect.rejected,
                full_chosen=rect.full_chosen[j], full_rejected="".join(sample.steps[k - 1:]), answer=problem.answer,
                kind="step-dpo", problem_id=problem.id, sample_id=sample.id, step_index=k,
                localizer=loc.localizer if loc else "",
                provenance={"rejected_sample_id": sample.id, "first_wrong_step": k, "chosen_rank": j,
                            "localizer_confidence": loc.confidence if loc else None,
                            "rollouts": loc.rollouts if loc else 0, "localizer_tokens": loc.localizer_tokens if loc else 0,
                            "rectify_tried": rect.tried, "rectify_reached_gold": rect.reached_gold, "model": sample.model,
                            # rectify --confirm keeps only the steps this judge confirmed
                            **({"chosen_confirmed_by": rect.evidence["judge"]} if rect.evidence.get("candidates") else {})})
            if states_final_answer(pair.chosen) != states_final_answer(pair.rejected) and config.stop_mismatch != "keep":
                if config.stop_mismatch == "drop":
                    if funnel is not None:
                        funnel.drop("one side concludes, the other does not (stop_mismatch drop)")
                    continue
                pair = replace(pair, chosen=pair.full_chosen, rejected=pair.full_rejected)
            check_pair(pair, sample.response, f"sample {sample.id}")
            per_problem[problem.id] += 1
            out.append(pair)
    return out


def write_pairs(pairs: Sequence[StepPair], folder: Path, name: str) -> dict[str, Path]:
    """Write ``name.jsonl``, ``name.parquet`` and the ``datasets`` folder ``hf/name``; returns their paths."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [record_to_dict(p) for p in pairs]
    paths = {"jsonl": folder / f"{name}.jsonl", "parquet": folder / f"{name}.parquet", "hf": folder / "hf" / name}
    atomic_write_text(paths["jsonl"], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if rows:
        table = pa.Table.from_pylist(rows)
    else:  # an empty table still needs the columns, so that loaders see the schema
        table = pa.Table.from_pylist([], schema=pa.schema([(f, pa.int64() if f == "step_index" else pa.string())
                                                          for f in StepPair.__dataclass_fields__]))
    tmp = paths["parquet"].with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(paths["parquet"])
    # One shard even when empty: datasets saves an empty set as zero shards, which load_from_disk cannot read.
    datasets.Dataset(table).save_to_disk(str(paths["hf"]), num_shards=1)
    return paths


def run(config: PairsConfig, problems: dict[str, Problem], samples: Sequence[Sample], located: Sequence[LocatedError],
        rectified: Sequence[Rectification], funnel: Funnel | None = None) -> tuple[list[StepPair], list[StepPair]]:
    """(Step-DPO pairs, plain-DPO pairs)."""
    by_id = {s.id: s for s in samples}
    steps = step_pairs(config, problems, by_id, {x.sample_id: x for x in located}, rectified, funnel)
    return steps, (dpo_pairs(problems, samples, config.max_dpo_pairs_per_problem, config.dataset) if config.dpo else [])


def command(config: PairsConfig) -> int:
    started = time.perf_counter()
    rd = RunDir(config.run_dir)
    if not rd.rectified.is_file():
        raise InputError(str(rd.rectified), "not found: run `stepdpo rectify` first")
    problems = read_problems(rd)
    samples = read_samples(rd)
    located = RecordStore(rd.located, LocatedError, key="sample_id").records() if rd.located.is_file() else []
    rectified = RecordStore(rd.rectified, Rectification, key="sample_id").records()
    funnel = Funnel("pairs", records_in=len(rectified))
    steps, dpo = run(config, problems, samples, located, rectified, funnel)
    write_pairs(steps, rd.pairs, "step_pairs")
    if config.dpo:
        write_pairs(dpo, rd.pairs, "dpo_pairs")
    funnel.records_out = len(steps)
    funnel.extra = {"step_pairs": len(steps), "problems_with_step_pairs": len({p.problem_id for p in steps}),
                    "dpo_pairs": len(dpo), "wall_s": round(time.perf_counter() - started, 2)}
    funnel.save(rd)
    print(funnel.render())
    return 0
