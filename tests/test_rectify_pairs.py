"""stepdpo rectify and pairs: candidates from the correct prefix, pairs in the public schema, three output formats."""

from __future__ import annotations

import json
import re

import pytest

from stepdpo.errors import ConfigError
from stepdpo.generation.base import Completion
from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.localizers.judge import JudgeConfig
from stepdpo.records import LocatedError, Problem, RecordStore, Rectification, Sample, StepPair
from stepdpo.pairing import check_pair, dpo_pairs
from stepdpo.stages.pairs import PairsConfig, run as pairs_run, write_pairs
from stepdpo.stages.confirmation import StepJudge, StepVerdict, clip_judgement, decide, is_pending, verdict_key
from stepdpo.stages.rectify import RectifyConfig, candidates, funnel_for, run as rectify_run
from stepdpo.steps import STEP_HEADER, PromptFormat, normalize_ws, split_steps

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
                            rollouts=16, localizer_tokens=400) for s in ("p#0", "p#2")]
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


def test_pairs_whose_sides_differ_in_concluding_are_kept_dropped_or_made_whole():
    early = "Step 1: 2 * 3 = 6\nStep 2: 6 + 4 = 10\nThe answer is: \\boxed{10}"  # concludes a step too early
    samples = [sample("p#0", early, False), sample("p#1", WRONG, False)]
    located = [LocatedError(sample_id=s.id, problem_id="p", first_wrong_step=2, localizer="exact", confidence=1.0) for s in samples]
    rest = "Step 2: 6 + 4 = 10\nStep 3: 10 - 1 = 9\nThe answer is: \\boxed{9}"
    rectified = [Rectification(sample_id=s.id, problem_id="p", first_wrong_step=2, prefix=s.steps[0], rejected=s.steps[1],
                               chosen=["Step 2: 6 + 4 = 10\n"], full_chosen=[rest], tried=4, reached_gold=1) for s in samples]

    def built(mode):
        return {p.sample_id: p for p in pairs_run(PairsConfig(stop_mismatch=mode, dpo=False), {"p": PROBLEM}, samples, located, rectified)[0]}

    kept = built("keep")
    assert kept["p#0"].rejected == samples[0].steps[1] and kept["p#0"].chosen == "Step 2: 6 + 4 = 10\n"
    assert set(built("drop")) == {"p#1"}  # only the pair whose sides both go on
    whole = built("whole")
    assert (whole["p#0"].chosen, whole["p#0"].rejected) == (rest, samples[0].steps[1])  # the rest of both solutions
    assert whole["p#1"] == kept["p#1"]


def test_check_pair_rejects_broken_pairs():
    wrong = sample("p#0", WRONG, False)
    good = StepPair(id="x", dataset="d", prompt="q", initial_reason_steps=STEP_HEADER + wrong.steps[0], chosen="Step 2: 6 + 4 = 10\n",
                    rejected=wrong.steps[1], full_chosen="", full_rejected="", answer="9")
    check_pair(good, wrong.response, wrong.id)
    with pytest.raises(ValueError, match="prefix"):
        check_pair(StepPair(**{**good.__dict__, "initial_reason_steps": STEP_HEADER + "Step 1: 2*3=6\n"}), wrong.response, wrong.id)
    with pytest.raises(ValueError, match="equals"):
        check_pair(StepPair(**{**good.__dict__, "chosen": " " + wrong.steps[1]}), wrong.response, wrong.id)


def test_dpo_pairs_cap():
    samples = [sample(f"p#{i}", RIGHT if i % 2 else WRONG, bool(i % 2)) for i in range(6)]
    assert len(dpo_pairs({"p": PROBLEM}, samples, 2)) == 2
    assert len(dpo_pairs({"p": PROBLEM}, samples, 5)) == 5


def test_dpo_pairs_all_combinations_diagonal_first():
    right = [sample(f"p#r{i}", RIGHT + " " * i, True) for i in range(2)]
    wrong = [sample(f"p#w{i}", WRONG + " " * i, False) for i in range(3)]
    every = dpo_pairs({"p": PROBLEM}, right + wrong, 0)
    made = [(p.provenance["chosen_sample_id"], p.provenance["rejected_sample_id"]) for p in every]
    assert len(made) == len(set(made)) == 6  # every right x wrong combination, once
    assert made[:2] == [("p#r0", "p#w0"), ("p#r1", "p#w1")]  # distinct samples on both sides come first
    assert dpo_pairs({"p": PROBLEM}, right + wrong, 2) == every[:2]


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


# --- rectify --confirm: a judge checks each chosen step -------------------------------------------

CONTINUATIONS = {
    "ok": " 6 + 4 = 10\nStep 3: 10 - 1 = 9\nThe answer is: \\boxed{9}",
    "wrong": " 4 + 6 = 10\nStep 3: 10 - 1 = 9\nThe answer is: \\boxed{9}",
    "mumble": " 10 = 4 + 6\nStep 3: 10 - 1 = 9\nThe answer is: \\boxed{9}",
    "prefix": " 6 + 4 = 10, so\nStep 3: 10 - 1 = 9\nThe answer is: \\boxed{9}",
    "off": " 6 + 4 = 12\nThe answer is: \\boxed{12}",
}
POLICY_ORDER = ["ok", "wrong", "mumble", "prefix", "off"]
# What the judge answers, by the candidate step under review (the last line of the partial solution it is shown).
VERDICTS = {
    "Step 2: 6 + 4 = 10": "The step adds correctly. " + "x" * 300 + "\nStep 1: correct; Step 2: correct",
    "Step 2: 4 + 6 = 10": "Analysis: the order is odd.\nStep 1: correct; Step 2: incorrect",
    "Step 2: 10 = 4 + 6": "I think it is fine.",
    "Step 2: 6 + 4 = 10, so": "Step 1: incorrect",
}
SECOND = "Step 1: 3 * 2 = 6\nStep 2: 6 + 4 = 12\nStep 3: 12 - 1 = 11\nThe answer is: \\boxed{11}"
UNDER_REVIEW = re.compile(r"\(its last step is the one under review\)\n(.*?)\n\n### Task", re.DOTALL)


def policy_script(prompt, params, index):
    return CONTINUATIONS[POLICY_ORDER[index % len(POLICY_ORDER)]]


def judge_script(prompt, params, index):
    partial = UNDER_REVIEW.search(prompt).group(1)
    return VERDICTS[partial.splitlines()[-1]]


class FlakyJudge(ScriptedGenerator):
    """The scripted judge, but calls about the steps in ``failing`` (with prefix marker ``when``) come back as API errors."""

    def __init__(self, failing=(), when="3 * 2"):
        super().__init__(judge_script, name="scripted-judge")
        self.failing = set(failing)
        self.when = when

    def generate(self, prompts, params, seeds=None):
        out = super().generate(prompts, params, seeds)
        for prompt, completions in zip(prompts, out):
            partial = UNDER_REVIEW.search(prompt).group(1)
            if self.when in partial and partial.splitlines()[-1] in self.failing:
                completions[0] = Completion(text="", num_tokens=0, finish_reason="error: HTTP 503 (after 3 attempts)")
        return out


def judge_calls(generator):
    return sum(count for count, _ in generator.calls)


def confirm_inputs():
    samples = {"p#0": sample("p#0", WRONG, False), "p#2": sample("p#2", SECOND, False)}
    located = [LocatedError(sample_id=s, problem_id="p", first_wrong_step=2, localizer="exact") for s in ("p#0", "p#2")]
    return samples, located


def confirm_stores(tmp_path):
    return (RecordStore(tmp_path / "rectified.jsonl", Rectification, key="sample_id"),
            RecordStore(tmp_path / "rectify_candidates.jsonl", Rectification, key="sample_id"),
            RecordStore(tmp_path / "rectify_verdicts.jsonl", StepVerdict, key="key"))


def test_decide_reads_the_candidate_label():
    assert decide(["correct", "correct"], 2, "neutral_or_incorrect")[0] == "confirmed"
    assert decide(["correct", "incorrect"], 2, "neutral_or_incorrect")[0] == "rejected"
    assert decide(["correct", "neutral"], 2, "neutral_or_incorrect")[0] == "rejected"
    assert decide(["correct", "neutral"], 2, "incorrect")[0] == "confirmed"
    assert decide(["incorrect"], 2, "neutral_or_incorrect") == ("prefix_rejected", "step 1 of the prefix judged incorrect")
    assert decide(None, 2, "neutral_or_incorrect")[0] == "unparseable"
    assert decide(["correct"], 2, "neutral_or_incorrect")[0] == "unparseable"  # stops before the candidate
    assert decide(["correct", "correct", "correct"], 2, "neutral_or_incorrect")[0] == "unparseable"  # names a step that is not there
    assert clip_judgement("abcdef", 3) == "[... 3 characters cut ...]def" and clip_judgement("abc", 3) == "abc"
    assert verdict_key("p#0", "Step 1: a\n", "Step 2:  b\n") == verdict_key("p#0", "Step 1: a\n", "Step 2: b")


def test_confirm_keeps_confirmed_drops_rejected_and_unparseable(tmp_path):
    samples, located = confirm_inputs()
    store, candidates_store, verdicts = confirm_stores(tmp_path)
    seen = []
    judge_backend = ScriptedGenerator(lambda prompt, params, index: seen.append(prompt) or judge_script(prompt, params, index),
                                      name="scripted-judge")
    judge = StepJudge(JudgeConfig(), judge_backend, PromptFormat(style="plain", instruction=""), verdicts, tmp_path / "failed.jsonl",
                      judgement_chars=120)
    config = RectifyConfig(r=5, confirm=True)
    out = rectify_run(config, {"p": PROBLEM}, samples, located[:1], ScriptedGenerator(policy_script), FMT, store, judge, candidates_store)
    (rect,) = out
    assert rect.chosen == ["Step 2: 6 + 4 = 10\n"]
    assert rect.full_chosen == ["Step 2: 6 + 4 = 10\nStep 3: 10 - 1 = 9\nThe answer is: \\boxed{9}"]
    assert (rect.tried, rect.reached_gold) == (5, 4)
    rows = {row["step"]: row for row in rect.evidence["candidates"]}
    assert {step: row["verdict"] for step, row in rows.items()} == {
        "Step 2: 6 + 4 = 10\n": "confirmed", "Step 2: 4 + 6 = 10\n": "rejected",
        "Step 2: 10 = 4 + 6\n": "unparseable", "Step 2: 6 + 4 = 10, so\n": "prefix_rejected"}
    assert rows["Step 2: 4 + 6 = 10\n"]["judgement"] == VERDICTS["Step 2: 4 + 6 = 10"]
    assert rows["Step 2: 4 + 6 = 10\n"]["labels"] == ["correct", "incorrect"]
    long = rows["Step 2: 6 + 4 = 10\n"]["judgement"]  # clipped from the front; the verdict at the end survives
    assert long.startswith("[... ") and long.endswith("Step 1: correct; Step 2: correct") and len(long) < 160
    assert rect.evidence["judge"] == "scripted-judge" and rect.evidence["setting"] == "neutral_or_incorrect"
    # The judge saw the problem, the reference (gold answer here) and the prefix ending in the candidate, one call per candidate.
    assert judge_calls(judge_backend) == 4 and judge.asked == 4
    assert seen[0].startswith("Question: You are checking the last step") and PROBLEM.question in seen[0]
    assert "The correct final answer is 9." in seen[0]
    assert UNDER_REVIEW.search(seen[0]).group(1) == "Step 1: 2 * 3 = 6\nStep 2: 6 + 4 = 10"
    assert judge_backend.calls[0][1].temperature == 0.0 and judge_backend.calls[0][1].max_new_tokens == 1024
    # The unconfirmed candidates are kept apart; rectified.jsonl holds the judged record.
    assert len(candidates_store.records()[0].chosen) == 4
    assert RecordStore(store.path, Rectification, key="sample_id").records() == [rect]
    funnel = funnel_for(out, 1, 0.0)
    assert funnel.records_out == 1 and not funnel.dropped
    assert (funnel.extra["judge_confirmed_steps"], funnel.extra["judge_rejected_steps"], funnel.extra["judge_unparseable_steps"],
            funnel.extra["judge_prefix_rejected_steps"]) == (1, 1, 1, 1)


def test_confirm_drops_errors_without_confirmed_steps_and_counts_them(tmp_path):
    samples, located = confirm_inputs()
    harsh = dict(VERDICTS, **{"Step 2: 6 + 4 = 10": "Step 1: correct; Step 2: neutral"})
    judge = StepJudge(JudgeConfig(), ScriptedGenerator(lambda p, s, i: harsh[UNDER_REVIEW.search(p).group(1).splitlines()[-1]]),
                      PromptFormat(style="plain", instruction=""))
    out = rectify_run(RectifyConfig(r=5, confirm=True), {"p": PROBLEM}, samples, located, ScriptedGenerator(policy_script), FMT, None, judge)
    assert [r.chosen for r in out] == [[], []]
    funnel = funnel_for(out, 2, 0.0)
    assert funnel.records_out == 0 and funnel.dropped == {"judge rejected chosen step": 2}
    assert funnel.extra["judge_rejected_steps"] == 4 and funnel.extra["judge_confirmed_steps"] == 0
    # An error whose every verdict is unreadable is counted as such.
    mute = StepJudge(JudgeConfig(), ScriptedGenerator(lambda p, s, i: "No idea."), PromptFormat(style="plain", instruction=""))
    out = rectify_run(RectifyConfig(r=5, confirm=True), {"p": PROBLEM}, samples, located[:1], ScriptedGenerator(policy_script), FMT, None, mute)
    assert funnel_for(out, 1, 0.0).dropped == {"judge verdict unparseable": 1}


def test_confirm_failed_calls_are_retried_on_rerun_and_nothing_is_asked_twice(tmp_path):
    samples, located = confirm_inputs()
    failures = tmp_path / "rectify_judge_failed.jsonl"
    config = RectifyConfig(r=5, confirm=True, chunk_size=1)
    plain = PromptFormat(style="plain", instruction="")

    def attempt(judge_backend):
        store, candidates_store, verdicts = confirm_stores(tmp_path)
        policy = ScriptedGenerator(policy_script)
        judge = StepJudge(JudgeConfig(), judge_backend, plain, verdicts, failures)
        return rectify_run(config, {"p": PROBLEM}, samples, located, policy, FMT, store, judge, candidates_store), policy, store

    # Run 1: one call about p#2 fails; p#0 is judged and stored, p#2 is pending (reported, not stored) with its failure logged.
    flaky = FlakyJudge(failing={"Step 2: 4 + 6 = 10"})
    out, policy, store = attempt(flaky)
    assert judge_calls(flaky) == 8
    assert [r.sample_id for r in out] == ["p#0", "p#2"] and is_pending(out[1]) and not is_pending(out[0])
    assert out[1].evidence["status"].startswith("failed") and "HTTP 503" in out[1].evidence["status"]
    assert [r.sample_id for r in RecordStore(store.path, Rectification, key="sample_id").records()] == ["p#0"]
    logged = [json.loads(line) for line in failures.read_text().splitlines()]
    assert [(x["sample_id"], x["step"]) for x in logged] == [("p#2", "Step 2: 4 + 6 = 10\n")] and "HTTP 503" in logged[0]["status"]
    funnel = funnel_for(out, 2, 0.0)
    assert funnel.dropped == {"judge call failed (retried on rerun)": 1} and funnel.extra["judge_failed_calls"] == 1
    assert funnel.records_out == 1

    # Run 2: the judge is healthy; only the failed candidate is asked again, and the policy samples nothing.
    healthy = FlakyJudge()
    out, policy, store = attempt(healthy)
    assert judge_calls(healthy) == 1 and policy.calls == []
    assert not any(is_pending(r) for r in out)
    assert [r.sample_id for r in RecordStore(store.path, Rectification, key="sample_id").records()] == ["p#0", "p#2"]
    assert out[1].chosen == ["Step 2: 6 + 4 = 10\n"] and len(out[1].evidence["candidates"]) == 4

    # Run 3: everything is decided; nobody is asked anything.
    idle = FlakyJudge()
    out, policy, _ = attempt(idle)
    assert judge_calls(idle) == 0 and policy.calls == [] and len(out) == 2


def test_confirm_reuses_verdicts_when_candidates_are_resampled(tmp_path):
    """Losing rectify_candidates.jsonl costs a resample, not a second judge call: verdicts are keyed by prefix and step text."""
    samples, located = confirm_inputs()
    plain = PromptFormat(style="plain", instruction="")
    store, candidates_store, verdicts = confirm_stores(tmp_path)
    rectify_run(RectifyConfig(r=5, confirm=True), {"p": PROBLEM}, samples, located, ScriptedGenerator(policy_script), FMT,
                None, StepJudge(JudgeConfig(), FlakyJudge(), plain, verdicts), candidates_store)
    candidates_store.path.unlink()
    again = FlakyJudge()
    _, candidates_store, verdicts = confirm_stores(tmp_path)
    out = rectify_run(RectifyConfig(r=5, confirm=True), {"p": PROBLEM}, samples, located, ScriptedGenerator(policy_script), FMT,
                      store, StepJudge(JudgeConfig(), again, plain, verdicts), candidates_store)
    assert judge_calls(again) == 0 and [r.chosen for r in out] == [["Step 2: 6 + 4 = 10\n"]] * 2


def test_confirm_is_off_by_default(tmp_path):
    assert RectifyConfig().confirm is False
    samples, located = confirm_inputs()
    judge_backend = FlakyJudge()
    judge = StepJudge(JudgeConfig(), judge_backend, PromptFormat(style="plain", instruction=""))
    with_judge = rectify_run(RectifyConfig(r=5), {"p": PROBLEM}, samples, located, ScriptedGenerator(policy_script), FMT, None, judge)
    without = rectify_run(RectifyConfig(r=5), {"p": PROBLEM}, samples, located, ScriptedGenerator(policy_script), FMT)
    assert judge_backend.calls == [] and with_judge == without
    assert [len(r.chosen) for r in without] == [4, 4] and all(r.evidence == {} for r in without)
    assert funnel_for(without, 2, 0.0).extra.keys() == {"continuations", "reached_gold_share", "chosen_candidates", "wall_s"}
    with pytest.raises(ConfigError, match="needs a judge"):
        rectify_run(RectifyConfig(r=5, confirm=True), {"p": PROBLEM}, samples, located, ScriptedGenerator(policy_script), FMT)


def write_run(run_dir, samples, located):
    RecordStore(run_dir / "problems" / "train.jsonl", Problem).append([PROBLEM])
    RecordStore(run_dir / "samples.jsonl", Sample).append(samples.values())
    RecordStore(run_dir / "located.jsonl", LocatedError, key="sample_id").append(located)


def test_rectify_command_confirm_end_to_end(tmp_path, monkeypatch, capsys):
    """`stepdpo rectify --confirm`: the judge is built from --judge-generator (monkeypatched to a scripted one), files and funnel."""
    from stepdpo import cli
    from stepdpo.stages import rectify

    samples, located = confirm_inputs()
    run_dir = tmp_path / "run"
    write_run(run_dir, samples, located)
    judges = [FlakyJudge(failing={"Step 2: 10 = 4 + 6"}), FlakyJudge()]
    built = []

    def fake_build(config):
        built.append(config.backend)
        return judges.pop(0) if config.model == "judge" else ScriptedGenerator(policy_script)

    monkeypatch.setattr(rectify, "build_generator", fake_build)
    args = ["rectify", "--run-dir", str(run_dir), "--r", "5", "--confirm", "True", "--generator.prompt-style", "plain",
            "--judge-generator.model", "judge", "--judge-generator.prompt-style", "plain"]
    assert cli.main(args) == 0
    assert built == ["hf", "openai"]
    funnel = json.loads((run_dir / "funnel" / "rectify.json").read_text())
    assert funnel["dropped"] == {"judge call failed (retried on rerun)": 1} and funnel["extra"]["judge_calls"] == 8
    assert len((run_dir / "rectify_judge_failed.jsonl").read_text().splitlines()) == 1
    assert len((run_dir / "rectify_verdicts.jsonl").read_text().splitlines()) == 7
    assert "judge call failed" in capsys.readouterr().out

    assert cli.main(args) == 0
    funnel = json.loads((run_dir / "funnel" / "rectify.json").read_text())
    assert funnel["records_out"] == 2 and not funnel["dropped"] and funnel["extra"]["judge_calls"] == 1
    rectified = RecordStore(run_dir / "rectified.jsonl", Rectification, key="sample_id").records()
    assert [r.chosen for r in rectified] == [["Step 2: 6 + 4 = 10\n"]] * 2
    assert all(len(r.evidence["candidates"]) == 4 for r in rectified)
    assert cli.main(["pairs", "--run-dir", str(run_dir)]) == 0
    step_pairs = [json.loads(line) for line in (run_dir / "pairs" / "step_pairs.jsonl").read_text().splitlines()]
    assert step_pairs and all(p["provenance"]["chosen_confirmed_by"] == rectified[0].evidence["judge"] for p in step_pairs)

    # Without --confirm no judge is built.
    built.clear()
    other = tmp_path / "plain"
    write_run(other, samples, located)
    assert cli.main(["rectify", "--run-dir", str(other), "--r", "5", "--generator.prompt-style", "plain"]) == 0
    assert built == ["hf"] and not (other / "rectify_verdicts.jsonl").exists()
    assert all(r.evidence == {} and len(r.chosen) == 4 for r in RecordStore(other / "rectified.jsonl", Rectification, key="sample_id").records())


def test_confirm_with_a_chat_judge_and_a_template_file(tmp_path):
    """An OpenAI-style judge gets one user message per candidate; --judge.template replaces the built-in prompt."""

    class Chat:
        name = "chat-judge"

        def __init__(self):
            self.seen = []

        def chat(self, conversations, params):
            self.seen += conversations
            return [[Completion("Step 1: correct; Step 2: correct", 5, "stop")] for _ in conversations]

    template = tmp_path / "check.txt"
    template.write_text("P={problem}\nR={reference}\nS={response}\nVerdict?", encoding="utf-8")
    chat = Chat()
    samples, located = confirm_inputs()
    out = rectify_run(RectifyConfig(r=5, confirm=True), {"p": PROBLEM}, samples, located[:1], ScriptedGenerator(policy_script), FMT,
                      None, StepJudge(JudgeConfig(template=str(template)), chat))
    assert len(out[0].chosen) == 4 and out[0].evidence["judge"] == "chat-judge"
    assert chat.seen[0] == [{"role": "user", "content": "P=Compute 2*3+4-1.\nR=(No worked solution available.) The correct final answer is 9.\n"
                                                        "S=Step 1: 2 * 3 = 6\nStep 2: 6 + 4 = 10\nVerdict?"}]
    with pytest.raises(ConfigError, match="prompt format"):
        StepJudge(JudgeConfig(), ScriptedGenerator(judge_script))
