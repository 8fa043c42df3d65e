"""Step-Controlled DPO and judge-free step pairs (``stepdpo scdpo``).

Scripted generators decide each step from the prompt and the temperature they are
given, so the tests pin down: the exact rising temperature per generated step, the
retry budget, the per-problem cap, the token-exact shared prefix, and that judge-free
pairs survive only when rollouts find the rejected step's prefix dead. A tiny-model
run goes through ``command`` on a run directory.
"""

from __future__ import annotations

import json

import datasets
import pytest

from stepdpo.generation.base import Completion, GeneratorConfig, SamplingParams
from stepdpo.generation.registry import build_generator
from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.records import Problem, RecordStore, Sample, StepPair
from stepdpo.rundir import RunDir
from stepdpo.stages import sample as sample_stage
from stepdpo.stages import scdpo
from stepdpo.stages.scdpo import STEP_STOP, Branch, JudgeFreeCheck, SCDPOConfig, step_temperature
from stepdpo.steps import STEP_HEADER, PromptFormat, split_steps

FMT = PromptFormat(style="plain")
RIGHT = "Step 1: 2 + 3 = 5\nStep 2: 5 * 4 = 20\nThe answer is: \\boxed{20}"
RIGHT3 = "Step 1: 2 + 3 = 5\nStep 2: 5 * 4 = 20\nStep 3: So it is 20.\nThe answer is: \\boxed{20}"


@pytest.fixture(scope="module")
def tokenizer(embedded_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_tokenizer_dir)


def problem(pid: str = "p0", answer: str = "20") -> Problem:
    return Problem(id=pid, question=f"Take 2 + 3, then multiply by 4. ({pid})", answer=answer, source="toy:train")


def make_sample(pid: str, index: int, response: str, correct: bool = True) -> Sample:
    return Sample(id=f"{pid}#{index}", problem_id=pid, prompt="", response=response, steps=split_steps(response),
                  predicted=None, correct=correct, model="scripted")


def after_header(prompt: str) -> str:
    return prompt.split(STEP_HEADER, 1)[1]


def is_step_call(params: SamplingParams) -> bool:
    return STEP_STOP in params.stop


def config(**kwargs) -> SCDPOConfig:
    base = dict(judge_free=False, dpo=False, max_attempts=3, max_steps=6)
    return SCDPOConfig(**{**base, **kwargs})


def test_step_temperature_rises_and_caps():
    assert [step_temperature(i, 1.1, 0.05, 1.4) for i in range(8)] == [1.1, 1.15, 1.2, 1.25, 1.3, 1.35, 1.4, 1.4]
    assert [step_temperature(i, 1.0, 0.1, 1.2) for i in range(4)] == [1.0, 1.1, 1.2, 1.2]


def test_generator_sees_a_rising_temperature_per_generated_step(tokenizer):
    """Three steps without an answer, each followed by the next step's marker (a call stops there), then a wrong
    answer at the fourth: temperatures 1.1, 1.15, 1.2, 1.25."""
    seen: list[tuple[str, float]] = []

    def script(prompt, params, index):
        seen.append((after_header(prompt), params.temperature))
        generated = after_header(prompt).count("hmm")
        return " hmm\nStep 9: the model goes on" if generated < 3 else " The answer is: \\boxed{7}"

    gen = ScriptedGenerator(script)
    out = scdpo.run(config(), {"p0": problem()}, [make_sample("p0", 0, RIGHT)], gen, FMT, tokenizer)
    assert [t for _, t in seen] == [1.1, 1.15, 1.2, 1.25]
    assert [p for p, _ in seen] == ["Step 1: 2 + 3 = 5\nStep 2:", "Step 1: 2 + 3 = 5\nStep 2: hmm\nStep 3:",
                                    "Step 1: 2 + 3 = 5\nStep 2: hmm\nStep 3: hmm\nStep 4:",
                                    "Step 1: 2 + 3 = 5\nStep 2: hmm\nStep 3: hmm\nStep 4: hmm\nStep 5:"]
    assert all(params.stop == (STEP_STOP,) and params.n == 1 for _, params in gen.calls)
    [branch] = out.branches
    assert branch.branch_step == 1 and branch.attempts == 1 and branch.temperatures == [1.1, 1.15, 1.2, 1.25]
    assert branch.negative == "Step 1: 2 + 3 = 5\nStep 2: hmm\nStep 3: hmm\nStep 4: hmm\nStep 5: The answer is: \\boxed{7}"
    [pair] = out.scdpo
    assert pair.kind == "scdpo" and pair.step_index == 2 and pair.id == "p0#0@1:scdpo"
    assert pair.initial_reason_steps == STEP_HEADER + "Step 1: 2 + 3 = 5\n"
    assert pair.chosen == pair.full_chosen == "Step 2: 5 * 4 = 20\nThe answer is: \\boxed{20}"
    assert pair.rejected == pair.full_rejected == "Step 2: hmm\nStep 3: hmm\nStep 4: hmm\nStep 5: The answer is: \\boxed{7}"
    assert pair.provenance["temperatures"] == [1.1, 1.15, 1.2, 1.25] and pair.provenance["branch_step"] == 1
    assert out.funnel.records_in == 1 and out.funnel.records_out == 1
    assert out.funnel.extra["correct_samples_with_pair"] == 1 and out.funnel.extra["retries"] == 0


def test_retry_budget_and_what_counts_as_a_negative(tokenizer):
    """Right, then unanswered (max steps), then wrong: the third attempt is the negative; all-right spends the budget."""
    attempt = {"n": 0}

    def script(prompt, params, index):
        if after_header(prompt) == "Step 1: 2 + 3 = 5\nStep 2:":
            attempt["n"] += 1
        return {1: " 5 * 4 = 20\nThe answer is: \\boxed{20}", 2: " still going", 3: " 5 * 4 = 21. The answer is 21."}[attempt["n"]]

    out = scdpo.run(config(max_steps=2), {"p0": problem()}, [make_sample("p0", 0, RIGHT)], ScriptedGenerator(script), FMT, tokenizer)
    [branch] = out.branches
    assert branch.attempts == 3 and branch.outcomes == {"right": 1, "no answer": 1, "wrong": 1}
    assert branch.predicted == "21" and len(out.scdpo) == 1 and out.funnel.extra["retries"] == 2

    always_right = ScriptedGenerator(lambda prompt, params, index: " 5 * 4 = 20\nThe answer is: \\boxed{20}")
    out = scdpo.run(config(max_attempts=4), {"p0": problem()}, [make_sample("p0", 0, RIGHT)], always_right, FMT, tokenizer)
    [branch] = out.branches
    assert branch.attempts == 4 and branch.negative is None and branch.outcomes == {"right": 4}
    assert out.scdpo == [] and out.funnel.dropped == {"retry budget spent without a wrong answer": 1}
    assert out.funnel.extra["correct_samples_with_pair"] == 0 and len(always_right.calls) == 4


def test_a_continuation_the_model_ended_is_not_continued(tokenizer):
    """A step that ends with EOS and no answer ends the continuation there ('no answer'): no newline and next marker
    are appended and the model is not asked for another step. A step cut off at the token limit ends it too, even
    when its text states an answer: a cut-off response is never graded."""
    prompts: list[str] = []

    def script(prompt, params, index):
        prompts.append(after_header(prompt))
        return {1: " I am done here", 2: " 5 * 4 = 21 so the answer is \\boxed{21} and then I keep talking on and on"}[len(prompts)]

    out = scdpo.run(config(max_attempts=2, max_step_tokens=12), {"p0": problem()}, [make_sample("p0", 0, RIGHT)],
                    ScriptedGenerator(script), FMT, tokenizer)
    assert prompts == ["Step 1: 2 + 3 = 5\nStep 2:"] * 2  # one step per attempt, never a forced "Step 3:"
    [branch] = out.branches
    assert branch.attempts == 2 and branch.outcomes == {"no answer": 2} and branch.negative is None and out.scdpo == []

    jobs = [scdpo._Job(problem(), make_sample("p0", 0, RIGHT), 1, "Step 1: 2 + 3 = 5\n")]
    [ended] = scdpo.continue_stepwise(jobs, config(), ScriptedGenerator(lambda p, s, i: " I am done here"), FMT)
    assert ended.end == "eos" and ended.response == "Step 1: 2 + 3 = 5\nStep 2: I am done here"
    [cut] = scdpo.continue_stepwise(jobs, config(max_step_tokens=2), ScriptedGenerator(lambda p, s, i: " so \\boxed{20} right"), FMT)
    assert cut.end == "length" and cut.response == "Step 1: 2 + 3 = 5\nStep 2: so \\boxed{20}"
    filtered = ScriptedGenerator(lambda p, s, i: Completion(" so \\boxed{21}", 3, "content_filter"))
    [unfinished] = scdpo.continue_stepwise(jobs, config(), filtered, FMT)
    assert unfinished.end == "content_filter"  # a server's own reason: not ended by the model, never a negative


def test_an_extra_stop_string_ends_the_continuation(tokenizer):
    jobs = [scdpo._Job(problem(), make_sample("p0", 0, RIGHT), 1, "Step 1: 2 + 3 = 5\n")]
    gen = ScriptedGenerator(lambda p, s, i: " 5 * 4 = 20\n\nQuestion: next one\nStep 1: more")
    [ended] = scdpo.continue_stepwise(jobs, config(stop=("\n\nQuestion:",)), gen, FMT)
    assert ended.end == "stop string" and ended.response == "Step 1: 2 + 3 = 5\nStep 2: 5 * 4 = 20" and len(gen.calls) == 1


def test_cap_per_problem_is_never_exceeded(tokenizer):
    """Three 3-step samples per problem = 6 branch points each; every continuation is wrong; cap 2 per problem."""
    problems = {pid: problem(pid) for pid in ("a", "b")}
    samples = [make_sample(pid, i, RIGHT3) for pid in problems for i in range(3)]
    gen = ScriptedGenerator(lambda prompt, params, index: " The answer is: \\boxed{99}")
    out = scdpo.run(config(max_negatives_per_problem=2, branch="every"), problems, samples, gen, FMT, tokenizer)
    assert len(gen.calls) == 1 and gen.calls[0][0] == 4  # two open branch points per problem, one batched call
    assert sorted(p.problem_id for p in out.scdpo) == ["a", "a", "b", "b"]
    assert out.funnel.dropped == {"branch point not tried (problem reached its cap)": 8}
    for pair in out.scdpo:
        assert pair.rejected.endswith("\\boxed{99}") and STEP_HEADER + "".join(split_steps(RIGHT3)[: pair.step_index - 1]) == pair.initial_reason_steps

    out = scdpo.run(config(max_negatives_per_problem=1, branch="random"), problems, samples, gen, FMT, tokenizer)
    assert len(out.scdpo) == 2 and len(out.branches) == 2


class CountingSample(Sample):
    """A Sample that counts how often its problem id is read: the work a pass over the samples does."""

    reads = [0]

    @property
    def problem_id(self):
        self.reads[0] += 1
        return self._problem_id

    @problem_id.setter
    def problem_id(self, value):
        self._problem_id = value


def test_naive_dpo_selection_is_linear_in_the_samples(tokenizer):
    """The problems with a correct sample are collected once, not once per sample (quadratic at 80k samples)."""
    n = 400
    problems = {f"p{i}": problem(f"p{i}") for i in range(n)}
    samples = [CountingSample(id=f"p{i}#{j}", problem_id=f"p{i}", prompt="", response=text, steps=split_steps(text), predicted=None,
                              correct=j == 0, model="m")
               for i in range(n) for j, text in enumerate(("Step 1: \\boxed{20}", "Step 1: \\boxed{21}"))]
    CountingSample.reads[0] = 0
    out = scdpo.run(config(dpo=True), problems, samples, ScriptedGenerator(lambda *_: ""), FMT, tokenizer)
    assert len(out.dpo) == n and out.scdpo == []
    assert CountingSample.reads[0] < 20 * len(samples)  # the old set-per-sample read n * n = 160000 ids


def test_branch_points_random_is_seeded_and_every_covers_all():
    s = make_sample("p", 0, RIGHT3)
    assert scdpo.branch_points(s, "every", 0) == [1, 2]
    picks = {scdpo.branch_points(make_sample("p", i, RIGHT3), "random", 3)[0] for i in range(20)}
    assert picks == {1, 2}
    assert scdpo.branch_points(s, "random", 3) == scdpo.branch_points(s, "random", 3)
    assert scdpo.branch_points(make_sample("p", 0, "Step 1: \\boxed{20}"), "every", 0) == []


class MergingTokenizer:
    """Character ids, except that a newline before 'Step 2: oops' fuses with the 'S' (a merge across the branch point)."""

    def __call__(self, text, add_special_tokens=False):
        ids, at = [], 0
        while at < len(text):
            if text.startswith("\nStep 2: oops", at):
                ids.append(100_000)
                at += 2
            else:
                ids.append(ord(text[at]))
                at += 1
        return {"input_ids": ids}


def test_continuations_whose_prefix_tokens_differ_are_not_accepted():
    attempt = {"n": 0}

    def script(prompt, params, index):
        attempt["n"] += 1
        return " oops\\boxed{7}" if attempt["n"] == 1 else " 5 * 4 = 24 \\boxed{24}"

    out = scdpo.run(config(), {"p0": problem()}, [make_sample("p0", 0, RIGHT)], ScriptedGenerator(script), FMT, MergingTokenizer())
    [branch] = out.branches
    assert branch.outcomes == {"prefix tokens differ": 1, "wrong": 1} and branch.attempts == 2
    assert branch.negative.endswith("\\boxed{24}")


def test_prefix_checker_compares_token_ids(tokenizer):
    checker = scdpo.PrefixChecker(FMT, tokenizer)
    q = problem().question
    assert checker.tokens_shared(q, "Step 1: 2 + 3 = 5\n", RIGHT)
    assert not checker.tokens_shared(q, "Step 1: 2 + 3 = 5\n", "Step 1: 2 + 3 = 6\n")
    merging = scdpo.PrefixChecker(FMT, MergingTokenizer())
    assert merging.tokens_shared(q, "Step 1: 2 + 3 = 5\n", RIGHT)
    assert not merging.tokens_shared(q, "Step 1: 2 + 3 = 5\n", "Step 1: 2 + 3 = 5\nStep 2: oops")


def test_samples_split_differently_are_caught_by_the_text_check(tokenizer):
    """A sample whose stored steps join to its response but are cut elsewhere: continuations do not share its steps 1..k."""
    odd = Sample(id="p0#0", problem_id="p0", prompt="", response=RIGHT3, steps=["Step 1: 2 + 3 = 5\nStep 2: 5 * 4 = 20\n", "Step 3: So it is 20.\nThe answer is: \\boxed{20}"],
                 predicted="20", correct=True)
    gen = ScriptedGenerator(lambda prompt, params, index: " The answer is: \\boxed{1}")
    out = scdpo.run(config(max_attempts=2), {"p0": problem()}, [odd], gen, FMT, tokenizer)
    assert out.branches[0].outcomes == {"prefix text differs": 2} and out.scdpo == []


ROLLOUT_PROMPTS: list[str] = []


def judge_free_script(prompt, params, index):
    """Step calls: a wrong first step, then a wrong answer. Rollouts: problem 'alive' can still reach 20, 'dead' cannot."""
    if not is_step_call(params):
        ROLLOUT_PROMPTS.append(after_header(prompt))
    if is_step_call(params):
        generated = after_header(prompt).count("Step") - 2
        return " 5 * 5 = 25\nStep 3: then" if generated == 0 else " The answer is: \\boxed{25}"
    return " The answer is: \\boxed{20}" if "(alive)" in prompt else " The answer is: \\boxed{25}"


def test_judge_free_pairs_keep_only_dead_prefixes(tokenizer):
    problems = {pid: problem(pid) for pid in ("alive", "dead")}
    samples = [make_sample(pid, 0, RIGHT) for pid in problems]
    gen = ScriptedGenerator(judge_free_script)
    out = scdpo.run(config(judge_free=True, rollouts=4, alive_threshold=0.5), problems, samples, gen, FMT, tokenizer)
    assert len(out.scdpo) == 2
    [pair] = out.judge_free
    assert pair.problem_id == "dead" and pair.kind == "judge-free" and pair.step_index == 2 and pair.localizer == "rollout-linear"
    assert pair.initial_reason_steps == STEP_HEADER + "Step 1: 2 + 3 = 5\n"
    assert pair.chosen == "Step 2: 5 * 4 = 20\nThe answer is: \\boxed{20}" and pair.rejected == "Step 2: 5 * 5 = 25\n"
    assert pair.full_rejected == "Step 2: 5 * 5 = 25\nStep 3: The answer is: \\boxed{25}"
    assert pair.provenance["rollout_successes"] == 0 and pair.provenance["rollout_trials"] == 4
    checks = {c.key: c for c in out.checks}
    assert checks["alive#0@1"].dead is False and checks["alive#0@1"].successes == 4
    assert checks["dead#0@1"].dead is True
    rollout_calls = [params for n, params in gen.calls if not is_step_call(params)]
    assert len(rollout_calls) == 1 and rollout_calls[0].n == 4 and rollout_calls[0].temperature == 0.8  # both problems, one call
    assert out.funnel.dropped == {"judge-free: rejected step alive in rollouts": 1}
    assert out.funnel.extra["judge_free_rollouts"] == 8
    assert set(ROLLOUT_PROMPTS) == {"Step 1: 2 + 3 = 5\nStep 2: 5 * 5 = 25\nStep 3:"}  # from the prefix ending with the rejected step


def test_judge_free_last_step_is_dead_without_rollouts_and_same_step_is_dropped(tokenizer):
    gen = ScriptedGenerator(lambda prompt, params, index: " 5 * 4 = 20 so \\boxed{24}")
    out = scdpo.run(config(judge_free=True), {"p0": problem()}, [make_sample("p0", 0, RIGHT)], gen, FMT, tokenizer)
    assert [c.trials for c in out.checks] == [0] and out.checks[0].dead and len(out.judge_free) == 1
    assert all(is_step_call(p) for _, p in gen.calls)

    # Branch at k=1: the wrong continuation starts with the correct step 2, so no judge-free pair (the SCDPO pair stays);
    # branch at k=2: its first generated step is a wrong final step, dead by definition.
    right3 = "Step 1: 2 + 3 = 5\nStep 2: 5 * 4 = 20\nStep 3: \\boxed{20}"

    def script(prompt, params, index):
        if is_step_call(params) and after_header(prompt).endswith("Step 2:"):
            return " 5 * 4 = 20\nStep 3: next"
        return " \\boxed{3}"

    out = scdpo.run(config(judge_free=True), {"p0": problem()}, [make_sample("p0", 0, right3)], ScriptedGenerator(script), FMT, tokenizer)
    assert sorted(p.step_index for p in out.scdpo) == [2, 3]
    assert [p.step_index for p in out.judge_free] == [3]
    assert out.funnel.dropped == {"judge-free: first wrong step equals the correct step": 1}


def test_naive_dpo_pairs_are_mixed_in_and_runs_resume(tmp_path, tokenizer):
    problems = {"p0": problem()}
    samples = [make_sample("p0", 0, RIGHT), make_sample("p0", 1, "Step 1: 2 + 3 = 6\nThe answer is: \\boxed{24}", correct=False)]
    stores = lambda: dict(branch_store=RecordStore(tmp_path / "branches.jsonl", Branch, key="key"),  # noqa: E731
                          check_store=RecordStore(tmp_path / "jf.jsonl", JudgeFreeCheck, key="key"))
    first = scdpo.run(config(dpo=True, judge_free=True), problems, samples, ScriptedGenerator(judge_free_script), FMT, tokenizer, **stores())
    assert [p.kind for p in first.scdpo] == ["scdpo"] and [p.kind for p in first.dpo] == ["dpo"]
    assert first.dpo[0].chosen == RIGHT and first.funnel.records_in == 1

    def refuse(prompt, params, index):
        raise AssertionError("a resumed run must not generate again")

    again = scdpo.run(config(dpo=True, judge_free=True), problems, samples, ScriptedGenerator(refuse), FMT, tokenizer, **stores())
    assert again.scdpo == first.scdpo and again.judge_free == first.judge_free


def test_bad_config_and_bad_samples(tokenizer):
    from stepdpo.errors import ConfigError, InputError

    gen = ScriptedGenerator(lambda prompt, params, index: "")
    with pytest.raises(ConfigError):
        scdpo.run(config(max_attempts=0), {}, [], gen, FMT, tokenizer)
    with pytest.raises(ConfigError):
        scdpo.run(config(temperature_start=1.5, temperature_cap=1.4), {}, [], gen, FMT, tokenizer)
    with pytest.raises(InputError, match="p9"):
        scdpo.run(config(), {}, [make_sample("p9", 0, RIGHT)], gen, FMT, tokenizer)
    broken = make_sample("p0", 0, RIGHT)
    broken.steps = broken.steps[:1]
    with pytest.raises(InputError, match="steps"):
        scdpo.run(config(), {"p0": problem()}, [broken], gen, FMT, tokenizer)


class Forced:
    """The tiny model, except that the first step after 'Step 1: 2 + 3 = 5' is forced to a wrong answer on the 2nd attempt."""

    def __init__(self, inner):
        self.inner = inner
        self.name = f"forced({inner.name})"
        self.branch_calls = 0

    def generate(self, prompts: list[str], params: SamplingParams, seeds=None) -> list[list[Completion]]:
        out = self.inner.generate(prompts, params, seeds)
        for prompt, completions in zip(prompts, out):
            if STEP_STOP in params.stop and after_header(prompt) == "Step 1: 2 + 3 = 5\nStep 2:":
                self.branch_calls += 1
                if self.branch_calls == 2:
                    completions[0] = Completion(text=" 5 * 4 = 24\nThe answer is: \\boxed{24}", num_tokens=12, finish_reason="eos")
        return out


def test_tiny_model_end_to_end_command(tmp_path, tiny_model_dir, monkeypatch):
    gen_config = GeneratorConfig(model=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=16)
    forced: list[Forced] = []

    def build(cfg):
        forced.append(Forced(build_generator(cfg)))
        return forced[-1]

    monkeypatch.setattr(scdpo, "build_generator", build)
    rd = RunDir(tmp_path / "run").ensure()
    sample_stage.save_problems(rd.problems("train"), [problem()])
    RecordStore(rd.samples, Sample).append([make_sample("p0", 0, RIGHT), make_sample("p0", 1, "Step 1: 9\n\\boxed{9}", correct=False)])
    cfg = SCDPOConfig(max_attempts=3, max_steps=2, max_step_tokens=6, rollouts=2, rollout_max_new_tokens=6, run_dir=str(rd.root), generator=gen_config)
    assert scdpo.command(cfg) == 0
    rows = [json.loads(line) for line in (rd.pairs / "scdpo_pairs.jsonl").read_text().splitlines()]
    kinds = sorted(r["kind"] for r in rows)
    assert kinds == ["dpo", "scdpo"]
    scdpo_row = next(r for r in rows if r["kind"] == "scdpo")
    assert scdpo_row["rejected"] == "Step 2: 5 * 4 = 24\nThe answer is: \\boxed{24}" and scdpo_row["provenance"]["attempts"] == 2
    # The forced negative ends in its first generated step, so it is dead by definition: one judge-free pair.
    jf = datasets.load_from_disk(str(rd.pairs / "hf" / "judge_free_pairs"))
    assert jf.num_rows == 1 and jf[0]["rejected"] == scdpo_row["rejected"]
    assert datasets.load_from_disk(str(rd.pairs / "hf" / "scdpo_pairs")).num_rows == 2
    funnel = json.loads(rd.funnel("scdpo").read_text())
    assert funnel["records_in"] == 1 and funnel["records_out"] == 1 and funnel["extra"]["correct_samples_with_pair"] == 1
    for row in rows:
        StepPair(**row)
    # Rerun: nothing new is generated.
    assert scdpo.command(cfg) == 0 and forced[-1].branch_calls == 0
