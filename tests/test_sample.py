"""stepdpo sample: k graded samples per problem, resumable by sample id, accuracy and pass@k."""

from __future__ import annotations

import json

import pytest

from stepdpo.generation.base import GeneratorConfig
from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.records import Problem, RecordStore, Sample
from stepdpo.rundir import RunDir
from stepdpo.seeding import derive_seed
from stepdpo.stages.sample import SampleConfig, command, read_problems, run, summarize
from stepdpo.steps import PromptFormat

FMT = PromptFormat(style="plain")


def right_first(prompt, params, index):
    """Sample 0 of every problem is right (gold = the number after 'add'), the others are wrong."""
    gold = prompt.split("add ")[1].split()[0]
    answer = gold if index == 0 else "0"
    return f" 1 + 1 = 2\nStep 2: then {answer}\nThe answer is: \\boxed{{{answer}}}"


def problems(n: int) -> list[Problem]:
    return [Problem(id=f"p{i}", question=f"add {i + 5} now", answer=str(i + 5)) for i in range(n)]


def test_run_samples_grades_and_splits():
    generator = ScriptedGenerator(right_first)
    config = SampleConfig(k=3, chunk_size=2, temperature=0.7, seed=5)
    samples = run(config, problems(3), generator, FMT)
    assert [s.id for s in samples] == [f"p{i}#{j}" for i in range(3) for j in range(3)]
    first = samples[0]
    assert first.response.startswith("Step 1: 1 + 1 = 2\nStep 2:") and first.prompt.endswith("Let's think step by step.\nStep 1:")
    assert first.steps == ["Step 1: 1 + 1 = 2\n", "Step 2: then 5\nThe answer is: \\boxed{5}"]
    assert first.correct and first.predicted == "5" and first.temperature == 0.7 and first.model == "scripted"
    assert [s.correct for s in samples] == [True, False, False] * 3
    # Two chunks (2 + 1 problems), n = k; each problem's samples seeded by (seed, "sample", problem id).
    assert [(count, params.n, params.temperature) for count, params in generator.calls] == [(2, 3, 0.7), (1, 3, 0.7)]
    assert generator.seeds == [[derive_seed(5, "sample", "p0"), derive_seed(5, "sample", "p1")], [derive_seed(5, "sample", "p2")]]


def test_summarize_accuracy_and_pass_at_k():
    samples = [Sample(id=f"{p}#{j}", problem_id=p, prompt="", response="", steps=[], predicted=None, correct=c)
               for p, flags in (("a", [True, False, False, False]), ("b", [False] * 4), ("c", [True] * 4)) for j, c in enumerate(flags)]
    stats = summarize(samples, 2)
    assert stats["accuracy"] == pytest.approx(5 / 12)
    assert stats["pass@2"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)  # problem a: 1 - C(3,2)/C(4,2)
    assert stats["problems_with_wrong"] == 2 and stats["problems_with_right_and_wrong"] == 1


def test_resume_skips_finished_problems(tmp_path):
    store = RecordStore(tmp_path / "samples.jsonl", Sample)
    config = SampleConfig(k=2, chunk_size=1)
    run(config, problems(2), ScriptedGenerator(right_first), FMT, store)
    again = ScriptedGenerator(right_first)
    samples = run(config, problems(3), again, FMT, RecordStore(store.path, Sample))
    assert [count for count, _ in again.calls] == [1]  # only the new problem p2
    assert len(samples) == 6 and len(RecordStore(store.path, Sample)) == 6


def test_command_on_tiny_model(tmp_path, tiny_model_dir):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    config = SampleConfig(data=str(data), k=2, max_new_tokens=6, run_dir=str(tmp_path / "run"),
                          generator=GeneratorConfig(model=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=8))
    assert command(config) == 0
    rd = RunDir(tmp_path / "run")
    saved = RecordStore(rd.samples, Sample).records()
    assert len(saved) == 6 and all(s.response.startswith("Step 1:") and 0 < s.num_tokens <= 6 for s in saved)
    assert len(read_problems(rd)) == 3
    funnel = json.loads(rd.funnel("sample").read_text())
    assert funnel["records_in"] == 3 and funnel["records_out"] == 6 and "pass@2" in funnel["extra"]
