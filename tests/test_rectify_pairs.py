"""stepdpo rectify and pairs: candidates from the correct prefix, pairs in the public schema, three output formats."""

from __future__ import annotations

import re

import pytest

from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.records import LocatedError, Problem, RecordStore, Rectification, Sample, StepPair
from stepdpo.stages.pairs import PairsConfig, check_pair, dpo_pairs, run as pairs_run, write_pairs
from stepdpo.stages.rectify import RectifyConfig, candidates, normalize_ws, run as rectify_run
from stepdpo.steps import STEP_HEADER, PromptFormat, split_steps

FMT = PromptFormat(style="plain")
WRONG = "Step 1: 2 * 3 = 6\nStep 2: 6 + 4 = 11\nStep 3: 11 - 1 = 10\nThe answer is: \\boxed{10}"
RIGHT = "Step 1: 2 * 3 = 6\nStep 2: 6 + 4 = 10\nStep 3: 10 - 1 = 9\nThe answer is: \\boxed{9}"
PROBLEM = Problem(id="p", question="Compute 2*3+4-1.", answer="9", source="toy:train")


def sample(sample_id: str, response: str, correct: bool) -> Sample:
    return Sample(id=sample_id, problem_id="p", prompt="", response=response, steps=split_steps(response),
                  predicted=None, correct=correct, model="m")


def test_candidates_dedup_and_filter():
    prefix = "Step 1: 2 * 3 = 6\n"
    rejected = "Step 2: 6 + 4 = 11\n"
    continuations = [
        " 6 + 4 = 10\nStep 3: 9",        # kept
        " 6  +  4 = 10\nStep 3: 9 ",      # duplicate after whitespace normalisation
        " 6 + 4 = 11\nStep 3: 9",        # equals the rejected step
        " 6 + 4 = 10, so\nStep 3: 9",    # kept (different text)
        " 6 + 4 = 10\nStep 3: 9",        # did not reach gold (flag below)
    ]
    chosen, full = candidates(prefix, rejected, 2, continuations, [True, True, True, True, False])
    assert chosen == ["Step 2: 6 + 4 = 10\n", "Step 2: 6 + 4 = 10, so\n"]
    assert full == ["Step 2: 6 + 4 = 10\nStep 3: 9", "Step 2: 6 + 4 = 10, so\nStep 3: 9"]
    assert normalize_ws(" a \n\t b ") == "a b"


def test_rectify_continues_from_the_prefix(tmp_path):
    prompts = []

    def script(prompt, params, index):
        prompts.append(prompt)
        return [" 6 + 4 = 10\nStep 3: 10 - 1 = 9\nThe answer is: \\boxed{9}", " 6 + 4 = 11\nStep 3: 11 - 2 = 9\nThe answer is: \\boxed{9}",
                " 6 + 4 = 12\nThe answer is: \\boxed{12}"][index % 3]

    wrong = sample("p#0", WRONG, False)
    located = [LocatedError(sample_id="p#0", problem_id="p", first_wrong_step=2, localizer="exact"),
               LocatedError(sample_id="p#9", problem_id="p", first_wrong_step=None, localizer="exact", status="no_wrong_step")]
    store = RecordStore(tmp_path / "rectified.jsonl", Rectification, key="sample_id")
    generator = ScriptedGenerator(script)
    out = rectify_run(RectifyConfig(r=6, seed=3), {"p": PROBLEM}, {"p#0": wrong}, located, generator, FMT, store)
    assert len(out) == 1
    rect = out[0]
    assert prompts[0].endswith(STEP_HEADER + "Step 1: 2 * 3 = 6\nStep 2:")
    assert rect.prefix == "Step 1: 2 * 3 = 6\n" and rect.rejected == "Step 2: 6 + 4 = 11\n"
    assert rect.chosen == ["Step 2: 6 + 4 = 10\n"]  # the '= 11' continuation reached gold but repeats the rejected step
    assert rect.full_chosen == ["Step 2: 6 + 4 = 10\nStep 3: 10 - 1 = 9\nThe answer is: \\boxed{9}"]
    assert (rect.tried, rect.reached_gold) == (6, 4)
    assert generator.calls[0][1].n == 6 and generator.calls[0][1].temperature == 0.8 and generator.calls[0][1].top_p == 0.95
    again = ScriptedGenerator(script)
    rectify_run(RectifyConfig(r=6), {"p": PROBLEM}, {"p#0": wrong}, located, again, FMT, RecordStore(store.path, Rectification, key="sample_id"))
    assert again.calls == []


def test_rectify_error_in_step_one():
    wrong = sample("p#0", WRONG, False)
    located = [LocatedError(sample_id="p#0", problem_id="p", first_wrong_step=1, localizer="exact")]
    generator = ScriptedGenerator(lambda prompt, params, index: " 2 * 3 = 6\nStep 2: 10\nStep 3: 9\nThe answer is: \\boxed{9}")
    rect = rectify_run(RectifyConfig(r=2), {"p": PROBLEM}, {"p#0": wrong}, located, generator, FMT)[0]
    assert rect.prefix == "" and rect.rejected == "Step 1: 2 * 3 = 6\n"
    assert generator.calls[0][0] == 1
    # Both continuations reached gold, but their step 1 is the rejected step 1 of WRONG, so none is a candidate.
    assert rect.chosen == [] and rect.reached_gold == 2


def make_inputs():
    samples = [sample("p#0", WRONG, False), sample("p#1", RIGHT, True), sample("p#2", WRONG.replace("11", "12"), False)]
    located = [LocatedError(sample_id=s, problem_id="p", first_wrong_step=2, localizer="rollout-binary", confidence=0.9,
                            rollouts=16, rollout_tokens=400) for s in ("p#0", "p#2")]
    rectified = [Rectification(sample_id=s.id, problem_id="p", first_wrong_step=2, prefix=s.steps[0], rejected=s.steps[1],
                               chosen=["Step 2: 6 + 4 = 10\n", "Step 2: 4 + 6 = 10\n"],
                               full_chosen=["Step 2: 6 + 4 = 10\nStep 3: 9", "Step 2: 4 + 6 = 10\nStep 3: 9"], tried=20, reached_gold=5)
                 for s in samples if not s.correct]
    rectified.append(Rectification(sample_id="p#3", problem_id="p", first_wrong_step=1, prefix="", rejected="x", chosen=[], full_chosen=[]))
    return samples, located, rectified


def test_step_pairs_schema_invariants_and_caps():
    samples, located, rectified = make_inputs()
    steps, dpo = pairs_run(PairsConfig(max_pairs_per_error=0), {"p": PROBLEM}, samples, located, rectified)
    assert len(steps) == 4 and len(dpo) == 1
    by_id = {s.id: s for s in samples}
    for pair in steps:
        assert pair.initial_reason_steps.startswith(STEP_HEADER)
        assert by_id[pair.sample_id].response.startswith(pair.initial_reason_steps[len(STEP_HEADER):])
        assert pair.chosen != pair.rejected and pair.kind == "step-dpo" and pair.step_index == 2
        assert pair.prompt == PROBLEM.question and pair.answer == "9" and pair.dataset == "toy:train"
        assert pair.full_rejected == "".join(by_id[pair.sample_id].steps[1:])
        assert pair.provenance["rollouts"] == 16 and pair.localizer == "rollout-binary"
    assert [len(pairs_run(PairsConfig(max_pairs_per_error=e, max_pairs_per_problem=c), {"p": PROBLEM}, samples, located, rectified)[0])
            for e, c in ((1, None), (2, 3), (0, 1))] == [2, 3, 1]
    (pair,) = dpo
    assert pair.kind == "dpo" and pair.initial_reason_steps == STEP_HEADER and pair.chosen == RIGHT and pair.rejected == WRONG
    assert pair.full_chosen == RIGHT and pair.step_index is None


def test_check_pair_rejects_broken_pairs():
    wrong = sample("p#0", WRONG, False)
    good = StepPair(id="x", dataset="d", prompt="q", initial_reason_steps=STEP_HEADER + wrong.steps[0], chosen="Step 2: 6 + 4 = 10\n",
                    rejected=wrong.steps[1], full_chosen="", full_rejected="", answer="9")
    check_pair(good, wrong)
    with pytest.raises(ValueError, match="prefix"):
        check_pair(StepPair(**{**good.__dict__, "initial_reason_steps": STEP_HEADER + "Step 1: 2*3=6\n"}), wrong)
    with pytest.raises(ValueError, match="equals"):
        check_pair(StepPair(**{**good.__dict__, "chosen": " " + wrong.steps[1]}), wrong)


def test_dpo_pairs_cap():
    samples = [sample(f"p#{i}", RIGHT if i % 2 else WRONG, bool(i % 2)) for i in range(6)]
    assert len(dpo_pairs(PairsConfig(max_dpo_pairs_per_problem=2), {"p": PROBLEM}, samples)) == 2
    assert len(dpo_pairs(PairsConfig(max_dpo_pairs_per_problem=5), {"p": PROBLEM}, samples)) == 3


def test_written_pairs_load_with_datasets(tmp_path):
    import datasets

    samples, located, rectified = make_inputs()
    steps, dpo = pairs_run(PairsConfig(), {"p": PROBLEM}, samples, located, rectified)
    paths = write_pairs(steps, tmp_path, "step_pairs")
    empty = write_pairs([], tmp_path, "dpo_pairs")
    columns = {"dataset", "prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen", "full_rejected", "answer"}
    from_json = datasets.load_dataset("json", data_files=str(paths["jsonl"]), split="train", cache_dir=str(tmp_path / "cache"))
    from_parquet = datasets.load_dataset("parquet", data_files=str(paths["parquet"]), split="train", cache_dir=str(tmp_path / "cache"))
    from_disk = datasets.load_from_disk(str(paths["hf"]))
    for ds in (from_json, from_parquet, from_disk):
        assert columns <= set(ds.column_names) and len(ds) == 2
        assert ds[0]["chosen"] == steps[0].chosen and ds[0]["initial_reason_steps"] == steps[0].initial_reason_steps
    assert from_disk[0]["provenance"]["rejected_sample_id"] == "p#0"
    assert len(datasets.load_from_disk(str(empty["hf"]))) == 0 and columns <= set(datasets.load_from_disk(str(empty["hf"])).column_names)
    assert RecordStore(paths["jsonl"], StepPair).records() == steps
