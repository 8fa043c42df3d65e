"""Localizers: the search logic against scripted oracles, and rollout / judge / exact / file localizers."""

from __future__ import annotations

import json
import math
import re

import pytest

from stepdpo.errors import ConfigError, InputError
from stepdpo.generation.base import Completion
from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.localizers.base import locate
from stepdpo.localizers.exact import ExactLocalizer, first_mismatch, stated_value
from stepdpo.localizers.file import FileLocalizer
from stepdpo.localizers.judge import JudgeConfig, JudgeLocalizer, first_wrong, parse_verdict, render_template
from stepdpo.localizers.rollout import (RolloutConfig, RolloutLocalizer, binary_queries, boundary_confidence, drive,
                                        first_dead_binary, first_dead_linear, linear_queries)
from stepdpo.records import LocatedError, Problem, RecordStore, Sample
from stepdpo.seeding import derive_seed
from stepdpo.stages.locate import LocateConfig, run as locate_run
from stepdpo.steps import PromptFormat, split_steps


def oracle(alive: dict[int, bool]):
    def is_alive(i: int) -> bool:
        assert i in alive, f"queried prefix {i} outside 1..n-1"
        return alive[i]
    return is_alive


# --- the searches, step by step ---------------------------------------------------------------

def test_error_in_the_middle_monotone():
    alive = oracle({1: True, 2: True, 3: False, 4: False})
    assert drive(linear_queries(5), alive) == (3, [1, 2, 3])
    assert drive(binary_queries(5), alive) == (3, [2, 3])  # mid 2 alive -> lo 2; mid 3 dead -> hi 3


def test_error_in_step_1():
    alive = oracle({1: False, 2: False, 3: False, 4: False})
    assert drive(linear_queries(5), alive) == (1, [1])
    assert drive(binary_queries(5), alive) == (1, [2, 1])


def test_no_dead_prefix_blames_the_last_step():
    # Every tested prefix can still be finished correctly, and prefix n (the wrong sample) is dead by definition.
    alive = oracle({1: True, 2: True, 3: True, 4: True})
    assert drive(linear_queries(5), alive) == (5, [1, 2, 3, 4])
    assert drive(binary_queries(5), alive) == (5, [2, 3, 4])


def test_non_monotone_patterns():
    # Dead at 1 but alive after: linear stops at the first dead prefix, binary never looks at 1.
    alive = oracle({1: False, 2: True, 3: True, 4: True})
    assert drive(linear_queries(5), alive) == (1, [1])
    assert drive(binary_queries(5), alive) == (5, [2, 3, 4])
    # Alternating: both find a boundary alive(k-1), dead(k); here the same one.
    alive = oracle({1: True, 2: False, 3: True, 4: False})
    assert drive(linear_queries(5), alive) == (2, [1, 2])
    assert drive(binary_queries(5), alive) == (2, [2, 1])
    # A dead prefix that bisection jumps over: n=8, dead at {2, 6, 7}.
    alive = oracle({1: True, 2: False, 3: True, 4: True, 5: True, 6: False, 7: False})
    assert drive(linear_queries(8), alive) == (2, [1, 2])
    assert drive(binary_queries(8), alive) == (6, [4, 6, 5])  # a later boundary: 5 alive, 6 dead


def test_one_and_two_steps():
    assert drive(linear_queries(1), oracle({})) == (1, [])
    assert drive(binary_queries(1), oracle({})) == (1, [])
    assert drive(linear_queries(2), oracle({1: True})) == (2, [1])
    assert drive(binary_queries(2), oracle({1: False})) == (1, [1])


@pytest.mark.parametrize("n", range(1, 13))
def test_binary_equals_linear_on_monotone_patterns_with_log_queries(n):
    for k in range(1, n + 1):
        alive = {i: i < k for i in range(1, n)}
        linear, lin_queries = drive(linear_queries(n), oracle(alive))
        binary, bin_queries = drive(binary_queries(n), oracle(alive))
        assert linear == binary == k
        assert len(lin_queries) == min(k, n - 1)
        assert len(bin_queries) <= math.ceil(math.log2(n)) if n > 1 else len(bin_queries) == 0
    assert first_dead_linear(n, lambda i: True) == first_dead_binary(n, lambda i: True) == n


def test_boundary_confidence():
    stats = {2: (6, 8), 3: (0, 8)}
    assert boundary_confidence(stats, 3, 5) == pytest.approx((6 / 8 + 1.0) / 2)
    assert boundary_confidence({1: (1, 4)}, 1, 5) == pytest.approx(0.75)  # prefix 0 untested
    assert boundary_confidence({4: (2, 4)}, 5, 5) == pytest.approx(0.5)  # prefix n untested
    assert boundary_confidence({}, 1, 1) is None


# --- rollout localizer on a scripted policy ---------------------------------------------------

FMT = PromptFormat(style="plain")


def make_sample(sample_id: str, problem_id: str, n: int) -> Sample:
    response = "".join(f"Step {i}: value {i}\n" for i in range(1, n)) + f"Step {n}: The answer is: \\boxed{{99}}"
    return Sample(id=sample_id, problem_id=problem_id, prompt="", response=response, steps=split_steps(response),
                  predicted="99", correct=False)


def policy(first_wrong: dict[str, int], successes_when_alive: int = 2):
    """Completions reach gold '7' (successes_when_alive of every n) iff the prefix ends before the problem's first wrong step."""
    def script(prompt, params, index):
        question = re.search(r"Question: (\S+)", prompt).group(1)
        next_step = int(re.findall(r"Step (\d+):", prompt)[-1])
        alive = next_step - 1 < first_wrong[question]
        return " more\nThe answer is: \\boxed{7}" if alive and index < successes_when_alive else " more\nThe answer is: \\boxed{8}"
    return script


@pytest.mark.parametrize("search,expected_rollouts", [("binary", 2 * 8), ("linear", 3 * 8)])
def test_rollout_localizer_counts_and_evidence(search, expected_rollouts):
    problem = Problem(id="p", question="qA", answer="7")
    generator = ScriptedGenerator(policy({"qA": 3}))
    localizer = RolloutLocalizer(RolloutConfig(search=search, rollouts_per_prefix=8, alive_threshold=0.2), generator, FMT)
    result = locate(localizer, problem, make_sample("p#0", "p", 5))
    assert result.first_wrong_step == 3 and result.status == "ok" and result.localizer == f"rollout-{search}"
    assert result.rollouts == expected_rollouts
    assert result.localizer_tokens == expected_rollouts * 5  # the scripted generator counts words
    assert result.evidence["prefix_stats"]["3"] == [0, 8] and result.evidence["prefix_stats"]["2"] == [2, 8]
    assert result.confidence == pytest.approx((2 / 8 + 1.0) / 2)


def test_rollout_threshold_decides_aliveness():
    # 2 of 8 successes = 0.25: alive at threshold 0.25, dead at 0.3 (then every prefix is dead -> step 1).
    problem = Problem(id="p", question="qA", answer="7")
    for threshold, expected in ((0.25, 3), (0.3, 1)):
        localizer = RolloutLocalizer(RolloutConfig(search="linear", alive_threshold=threshold), ScriptedGenerator(policy({"qA": 3})), FMT)
        assert locate(localizer, problem, make_sample("p#0", "p", 5)).first_wrong_step == expected


def test_rollouts_of_many_samples_share_generator_calls():
    problems = [Problem(id=f"p{j}", question=f"q{j}", answer="7") for j in range(3)]
    errors = {"q0": 1, "q1": 4, "q2": 6}
    samples = [make_sample(f"p{j}#0", f"p{j}", n) for j, n in enumerate((3, 6, 9))]
    generator = ScriptedGenerator(policy(errors))
    localizer = RolloutLocalizer(RolloutConfig(search="binary", rollouts_per_prefix=4), generator, FMT)
    results = localizer.locate_many(list(zip(problems, samples)))
    assert [r.first_wrong_step for r in results] == [1, 4, 6]
    assert [r.sample_id for r in results] == ["p0#0", "p1#0", "p2#0"]
    # One call per search round (the longest search takes ceil(log2 9) = 4 rounds), not one per query.
    assert len(generator.calls) == max(len(r.evidence["queried"]) for r in results) <= 4
    assert sum(prompts for prompts, _ in generator.calls) == sum(len(r.evidence["queried"]) for r in results)
    # Rollouts are seeded by (run seed, stage, sample id, prefix length), not by round or position in the call.
    expected = [[derive_seed(0, "locate", r.sample_id, r.evidence["queried"][round_index]) for r in results
                 if round_index < len(r.evidence["queried"])] for round_index in range(len(generator.calls))]
    assert generator.seeds == expected


def test_rollout_empty_response_is_not_searched():
    localizer = RolloutLocalizer(RolloutConfig(), ScriptedGenerator(lambda *_: ""), FMT)
    sample = Sample(id="p#0", problem_id="p", prompt="", response="", steps=[], predicted=None, correct=False)
    result = locate(localizer, Problem(id="p", question="q", answer="1"), sample)
    assert result.status == "no_wrong_step" and result.rollouts == 0


# --- judge ------------------------------------------------------------------------------------

def test_parse_verdict_forms():
    assert parse_verdict("Step 1: correct; Step 2: neutral; Step 3: incorrect") == ["correct", "neutral", "incorrect"]
    assert parse_verdict("**Step 1**: Correct\n**Step 2:** **INCORRECT**") == ["correct", "incorrect"]
    # Mentions in the analysis do not count: the verdict is the part from the last 'Step 1:' on.
    text = "Analysis: Step 3: incorrect use of the rate, though Step 1: correct.\nStep 1: correct; Step 2: incorrect"
    assert parse_verdict(text) == ["correct", "incorrect"]
    assert parse_verdict("The second step is wrong.") is None
    assert parse_verdict("Step 1: correct; Step 3: incorrect") is None  # gap
    assert parse_verdict("Step 1: fine; Step 2: bad") is None  # unknown labels


def test_first_wrong_settings():
    labels = ["correct", "neutral", "incorrect"]
    assert first_wrong(labels, "neutral_or_incorrect") == 2
    assert first_wrong(labels, "incorrect") == 3
    assert first_wrong(["correct", "neutral"], "incorrect") is None


class FakeChat:
    name = "fake-judge"

    def __init__(self, answers):
        self.answers = answers
        self.seen = []

    def chat(self, conversations, params):
        self.seen += conversations
        return [[self.answers(conv[0]["content"])] for conv in conversations]


def test_judge_localizer_statuses():
    replies = {
        "qa": Completion("Analysis.\nStep 1: correct; Step 2: neutral; Step 3: incorrect", 20, "stop"),
        "qb": Completion("I cannot tell.", 4, "stop"),
        "qc": Completion("", 0, "error: HTTP 503 after 6 retries"),
        "qd": Completion("Step 1: correct; Step 2: correct; Step 3: correct; Step 4: correct; Step 5: correct; Step 6: incorrect", 30, "stop"),
        "qe": Completion("Step 1: correct; Step 2: correct; Step 3: correct", 10, "stop"),
    }
    chat = FakeChat(lambda content: replies[re.search(r"(q[a-e])", content).group(1)])
    problems = [Problem(id=q, question=q, answer="7", solution="Step 1: 3+4=7\nThe answer is: \\boxed{7}") for q in replies]
    samples = [make_sample(f"{q}#0", q, 5) for q in replies]
    results = JudgeLocalizer(JudgeConfig(), chat).locate_many(list(zip(problems, samples)))
    by = {r.problem_id: r for r in results}
    assert by["qa"].status == "ok" and by["qa"].first_wrong_step == 2
    assert by["qb"].status == "unparseable" and by["qb"].first_wrong_step is None
    assert by["qc"].status.startswith("failed: HTTP 503")
    assert by["qd"].status == "unparseable"  # names step 6 of a 5-step sample
    assert by["qe"].status == "no_wrong_step"
    incorrect_only = JudgeLocalizer(JudgeConfig(setting="incorrect"), chat).locate_many([(problems[0], samples[0])])
    assert incorrect_only[0].first_wrong_step == 3
    prompt = chat.seen[0][0]["content"]
    assert "Step 1: 3+4=7" in prompt and samples[0].response.strip() in prompt


class ReadingJudge:
    """A judge that reads the solution it is shown literally: it blames the ``Step N:`` whose text holds ``wrong``.

    It knows only the step numbers written in the prompt, as a real judge does; where none
    precedes the wrong line it cannot answer with a verdict.
    """

    name = "reading-judge"

    def __init__(self, wrong: str):
        self.wrong = wrong
        self.seen: list[str] = []

    def chat(self, conversations, params):
        answers = []
        for conversation in conversations:
            content = conversation[0]["content"]
            self.seen.append(content)
            shown = content.split("### Student's solution", 1)[1].split("### Task", 1)[0]
            number = None
            for line in shown.splitlines():
                marker = re.match(r"Step (\d+):", line)
                number = int(marker.group(1)) if marker else number
                if self.wrong in line:
                    break
            text = "I cannot tell which step." if number is None else "; ".join(
                f"Step {i}: {'incorrect' if i == number else 'correct'}" for i in range(1, number + 1))
            answers.append([Completion(text, 10, "stop")])
        return answers


@pytest.mark.parametrize("response, wrong_step, shown", [
    # Text before 'Step 1:' is the project's step 1, so the student's 'Step 2:' is step 3.
    ("Let me work this out.\nStep 1: Tom has 3 apples.\nStep 2: He gets 4 more: 3 + 4 = 8.\nThe answer is: \\boxed{8}", 3,
     "Step 1: Let me work this out.\nStep 2: Tom has 3 apples.\nStep 3: He gets 4 more: 3 + 4 = 8.\nThe answer is: \\boxed{8}"),
    # No markers: the project cuts paragraphs.
    ("Tom has 3 apples.\n\nHe gets 4 more: 3 + 4 = 8.\n\nThe answer is 8.", 2,
     "Step 1: Tom has 3 apples.\nStep 2: He gets 4 more: 3 + 4 = 8.\nStep 3: The answer is 8."),
    # A numbered list in one paragraph is one step for the project, whatever its own numbers say.
    ("1. Tom has 3 apples.\n2. He gets 4 more: 3 + 4 = 8.\n3. The answer is 8.", 1,
     "Step 1: 1. Tom has 3 apples.\n2. He gets 4 more: 3 + 4 = 8.\n3. The answer is 8."),
    # A numbered list in paragraphs: one step per paragraph.
    ("1. Tom has 3 apples.\n\n2. He gets 4 more: 3 + 4 = 8.\n\n3. The answer is 8.", 2,
     "Step 1: 1. Tom has 3 apples.\nStep 2: 2. He gets 4 more: 3 + 4 = 8.\nStep 3: 3. The answer is 8."),
])
def test_judge_sees_the_steps_as_the_project_cuts_them(response, wrong_step, shown):
    steps = split_steps(response)
    sample = Sample(id="p#0", problem_id="p", prompt="", response=response, steps=steps, predicted="8", correct=False)
    judge = ReadingJudge("3 + 4 = 8")
    result = locate(JudgeLocalizer(JudgeConfig(), judge), Problem(id="p", question="Tom has 3 apples and gets 4. How many?", answer="7"), sample)
    assert result.status == "ok" and result.first_wrong_step == wrong_step
    assert "3 + 4 = 8" in steps[result.first_wrong_step - 1]  # the verdict points at the step that holds the error
    assert shown in judge.seen[0] and f"in {len(steps)} numbered steps" in judge.seen[0]


def test_judge_template_file_and_braces(tmp_path):
    path = tmp_path / "judge.txt"
    path.write_text("P={problem}\nR={reference}\nA={response}", encoding="utf-8")
    # Filled text is not re-scanned: a '{response}' inside the problem stays literal.
    assert render_template(path.read_text(), "x^{2} {response}", "ref", "ans") == "P=x^{2} {response}\nR=ref\nA=ans"
    chat = FakeChat(lambda content: Completion("Step 1: incorrect", 3, "stop"))
    result = locate(JudgeLocalizer(JudgeConfig(template=str(path)), chat), Problem(id="p", question="Q", answer="1"), make_sample("p#0", "p", 2))
    assert result.first_wrong_step == 1 and chat.seen[0][0]["content"].startswith("P=Q\nR=(No worked solution")
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholders", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.txt"):
        JudgeLocalizer(JudgeConfig(template=str(bad)), chat)


def test_locate_stage_retries_failed_judge_calls(tmp_path):
    problems = {"p": Problem(id="p", question="q", answer="7")}
    samples = [make_sample("p#0", "p", 3), make_sample("p#1", "p", 3)]
    store = RecordStore(tmp_path / "located.jsonl", LocatedError, key="sample_id")
    failures = tmp_path / "located_failed.jsonl"
    flaky = FakeChat(lambda content: Completion("", 0, "error: timeout"))
    config = LocateConfig(localizer="judge", chunk_size=1)
    first = locate_run(config, problems, samples, JudgeLocalizer(JudgeConfig(), flaky), store, failures)
    assert [x.status for x in first] == ["failed: timeout", "failed: timeout"]
    assert len(store) == 0 and len(failures.read_text().splitlines()) == 2
    good = FakeChat(lambda content: Completion("Step 1: correct; Step 2: incorrect", 5, "stop"))
    second = locate_run(config, problems, samples, JudgeLocalizer(JudgeConfig(), good), RecordStore(store.path, LocatedError, key="sample_id"), failures)
    assert [x.first_wrong_step for x in second] == [2, 2] and len(good.seen) == 2
    third = FakeChat(lambda content: Completion("unused", 1, "stop"))
    locate_run(config, problems, samples, JudgeLocalizer(JudgeConfig(), third), RecordStore(store.path, LocatedError, key="sample_id"), failures)
    assert third.seen == []  # nothing left to do


# --- exact and file ---------------------------------------------------------------------------

def test_exact_first_mismatch():
    steps = split_steps("Step 1: 3 + 4 = 7\nStep 2: 7 * 1,000 = 7,000\nStep 3: 7000 - 1 = 6998\nThe answer is: \\boxed{6998}")
    assert [stated_value(s) for s in steps] == [7, 7000, 6998]
    assert first_mismatch(steps, ["7", "7000", "6999"], "6999") == 3
    assert first_mismatch(steps, ["7", "7000.0", "6998"], "6998") is None
    assert first_mismatch(steps, ["8", "7000", "6998"], "6998") == 1
    assert first_mismatch(split_steps("Step 1: no numbers here\nStep 2: 5"), ["1", "5"], "5") == 1
    # Steps beyond the reference's are compared with the final answer.
    assert first_mismatch(split_steps("Step 1: 1\nStep 2: 2\nStep 3: 4"), ["1", "2"], "3") == 3


def test_exact_blames_the_last_step_of_a_solution_that_concludes_too_early():
    # Two right steps of three, then the answer: the step that gives 8 as the answer is the error.
    early = split_steps("Step 1: 6 * 4 = 24\nStep 2: 4 * 2 = 8\nThe answer is: \\boxed{8}")
    assert first_mismatch(early, ["24", "8", "32"], "32") == 2
    # Cut off by the token limit, it concluded nothing: no step is to blame.
    assert first_mismatch(early[:1], ["24", "8", "32"], "32", concluded=False) is None
    # A wrong value is still found first.
    assert first_mismatch(split_steps("Step 1: 6 * 4 = 23\nThe answer is: \\boxed{23}"), ["24", "8", "32"], "32") == 1

    problem = Problem(id="z", question="q", answer="32", metadata={"step_values": ["24", "8", "32"]})
    sample = Sample(id="z#0", problem_id="z", prompt="", response="".join(early), steps=early, predicted="8", correct=False, finish_reason="stop")
    result = locate(ExactLocalizer(), problem, sample)
    assert (result.first_wrong_step, result.status) == (2, "ok")
    truncated = Sample(**{**sample.__dict__, "steps": early[:1], "response": early[0], "predicted": "", "finish_reason": "length"})
    assert locate(ExactLocalizer(), problem, truncated).status == "no_wrong_step"


def test_exact_localizer():
    problem = Problem(id="s", question="q", answer="6999", metadata={"step_values": ["7", "7000", "6999"]})
    sample = make_sample("s#0", "s", 3)
    sample = Sample(**{**sample.__dict__, "response": "Step 1: 7\nStep 2: 700\nStep 3: 699", "steps": split_steps("Step 1: 7\nStep 2: 700\nStep 3: 699")})
    result = locate(ExactLocalizer(), problem, sample)
    assert result.first_wrong_step == 2 and result.evidence["stated"] == ["7", "700", "699"]
    no_values = locate(ExactLocalizer(), Problem(id="s", question="q", answer="1"), sample)
    assert no_values.status == "unlabeled"


def test_file_localizer(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"sample_id": "p#0", "first_wrong_step": 2}) + "\n" + json.dumps({"sample_id": "p#1", "first_wrong_step": None}) + "\n")
    localizer = FileLocalizer(path)
    problem = Problem(id="p", question="q", answer="7")
    results = localizer.locate_many([(problem, make_sample(f"p#{j}", "p", 3)) for j in range(3)])
    assert [(r.first_wrong_step, r.status) for r in results] == [(2, "ok"), (None, "no_wrong_step"), (None, "unlabeled")]
    path.write_text(json.dumps({"sample_id": "p#0", "first_wrong_step": 2}) + "\n" + json.dumps({"sample_id": "p#1", "first_wrong_step": "2"}) + "\n")
    with pytest.raises(InputError) as err:
        FileLocalizer(path)
    assert err.value.line == 2 and err.value.field == "first_wrong_step"


def test_exact_finds_no_error_in_synthetic_reference_solutions():
    from stepdpo.problems import load_problems

    problems = load_problems("synthetic:train?n=50&min_steps=2&max_steps=4&seed=3")
    for problem in problems:
        assert first_mismatch(split_steps(problem.solution), problem.metadata["step_values"], problem.answer) is None
        # Corrupting step 2's result is found at step 2.
        steps = split_steps(problem.solution)
        value = problem.metadata["step_values"][1]
        steps[1] = steps[1][::-1].replace(value[::-1], str(int(value) + 1)[::-1], 1)[::-1]
        assert first_mismatch(steps, problem.metadata["step_values"], problem.answer) == 2


def test_locate_records_agreement_with_ground_truth():
    from stepdpo.stages.locate import agreement_with_exact

    problem = Problem(id="s", question="q", answer="6999", metadata={"step_values": ["7", "7000", "6999"]})
    unlabeled = Problem(id="u", question="q", answer="1")
    texts = {"s#0": "Step 1: 7\nStep 2: 700\nStep 3: 699", "s#1": "Step 1: 8\nStep 2: 800\nStep 3: 799",
             "s#2": "Step 1: 7\nStep 2: 7000\nStep 3: 6998", "u#0": "Step 1: 2"}
    samples = [Sample(id=i, problem_id=i.split("#")[0], prompt="", response=t, steps=split_steps(t), predicted=None, correct=False)
               for i, t in texts.items()]
    decisions = {"s#0": 2, "s#1": 2, "s#2": 1, "u#0": 1}  # truth: 2, 1, 3, unknown
    located = [LocatedError(sample_id=i, problem_id=i.split("#")[0], first_wrong_step=k, localizer="rollout-binary")
               for i, k in decisions.items()]
    agreement = agreement_with_exact(located, {"s": problem, "u": unlabeled}, samples)
    assert agreement == {"compared": 3, "exact": 1 / 3, "within_one": 2 / 3, "earlier": 1 / 3, "later": 1 / 3}
    assert agreement_with_exact(located[3:], {"s": problem, "u": unlabeled}, samples) is None
