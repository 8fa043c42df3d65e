"""Model text is data, never code: crafted answers run nothing, pathological math is judged wrong, nothing unpickles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stepdpo import cli
from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.grading import extract_answer, is_correct
from stepdpo.records import Problem, Sample, atomic_write_text, record_to_dict
from stepdpo.stages import evaluate
from stepdpo.steps import split_steps

SRC = Path(__file__).resolve().parents[1] / "src" / "stepdpo"


def payloads(marker: Path) -> list[str]:
    """Answers that would create ``marker`` if any layer evaluated, shelled out, TeX-compiled or unpickled them."""
    m = str(marker)
    return [
        f"__import__('os').system('touch {m}')",
        f"eval(\"__import__('os').system('touch {m}')\")",
        f"`touch {m}`",
        f"$(touch {m})",
        f"\\immediate\\write18{{touch {m}}}",
        f"\\input{{|touch {m}}}",
        "cos\nsystem\n(S'touch " + m + "'\ntR.",  # protocol-0 pickle of os.system
        f"{{{{ ''.__class__.__mro__[1].__subclasses__() }}}} ; touch {m}",
        f"<script>fetch('/x')</script><img src=x onerror=\"touch {m}\">",
    ]


def responses(marker: Path) -> list[str]:
    out = []
    for p in payloads(marker):
        out += [f"Step 1: compute.\nThe answer is \\boxed{{{p}}}", f"Step 1: {p}\nStep 2: The answer is {p}", p]
    return out


def test_grading_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    for response in responses(marker):
        extract_answer(response)
        assert is_correct(response, "42", timeout_s=2.0) is False
        assert is_correct(response, response, timeout_s=2.0) in (True, False)
    assert not marker.exists()


def test_grade_command_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    rows = [{"id": f"r{i}", "response": r, "answer": "42"} for i, r in enumerate(responses(marker))]
    src = tmp_path / "rows.jsonl"
    atomic_write_text(src, "".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["grade", str(src), "--id-field", "id", "--timeout-s", "2"]) == 0
    graded = [json.loads(line) for line in (tmp_path / "rows.jsonl.graded.jsonl").read_text().splitlines()]
    assert len(graded) == len(rows) and not any(r["correct"] for r in graded)
    assert not marker.exists()


def test_eval_and_report_run_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    texts = responses(marker)
    problems = [Problem(id=f"p{i}", question=f"What is {i} + 1? {texts[i]}", answer=str(i + 1), source="crafted")
                for i in range(len(texts))]

    def script(prompt: str, params, index: int) -> str:
        for i, p in enumerate(problems):
            if p.question in prompt:
                return texts[i]
        return texts[0]

    run_dir = tmp_path / "run"
    config = evaluate.EvalConfig(data=["crafted"], run_dir=str(run_dir), name="crafted", prompt="step",
                                 generator=evaluate.GeneratorConfig(prompt_style="plain"))
    results = evaluate.run(config, {"crafted": problems}, ScriptedGenerator(script))
    assert results is not None
    # Samples with the same text in the run directory, so the report renders them (steps, diffs, tables).
    samples = [Sample(id=f"p{i}#0", problem_id=f"p{i}", prompt="q", response=t, steps=split_steps(t), predicted=extract_answer(t),
                      correct=False) for i, t in enumerate(texts)]
    atomic_write_text(run_dir / "samples.jsonl", "".join(json.dumps(record_to_dict(s)) + "\n" for s in samples))
    (run_dir / "problems").mkdir(exist_ok=True)
    atomic_write_text(run_dir / "problems" / "train.jsonl", "".join(json.dumps(record_to_dict(p)) + "\n" for p in problems))
    assert cli.main(["report", str(run_dir)]) == 0
    html = (run_dir / "report" / "report.html").read_text(encoding="utf-8")
    assert "<script>fetch" not in html  # crafted markup is escaped, not live
    assert not marker.exists()


@pytest.mark.parametrize("pred", [
    "(" * 5000 + "1" + ")" * 5000,
    "{" * 3000 + "x" + "}" * 3000,
    "9^{9^{9^{9^{9^{9^{9}}}}}}",
    "10**10**10**10",
    "2^{99999999999}",
    "1+" * 50_000 + "1",
    "\\frac{" * 2000 + "1" + "}{2}" * 2000,
    "x" * 100_000,
    "9" * 100_000,
])
def test_pathological_math_is_wrong(pred):
    assert is_correct(f"The answer is \\boxed{{{pred}}}", "7", timeout_s=2.0) is False
    assert is_correct(f"Step 1: so\nThe answer is {pred}", "7", timeout_s=2.0) is False


@pytest.mark.parametrize("text", [
    "Step 1:" * 200_000,
    "Step " * 200_000 + "1:",
    "Step 1: a\n" + "Step 99999999999999999999: b\n" * 20_000,
    ("Step 1 " + "\n" * 50 + ":" ) * 10_000,
    "Step 1: " + "x" * 1_000_000,
])
def test_split_steps_adversarial_completes(text):
    steps = split_steps(text)
    assert isinstance(steps, list)
    assert sum(len(s) for s in steps) <= len(text) + len(steps) * 2


def test_no_unsafe_deserialization_in_source():
    offenders = []
    for path in SRC.rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"torch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{path}:{number}: {line.strip()}")
            if re.search(r"\bpickle\.loads?\(|\bdill\.loads?\(|\bmarshal\.loads?\(|yaml\.load\((?!.*SafeLoader)|yaml\.unsafe_load", line):
                offenders.append(f"{path}:{number}: {line.strip()}")
            if re.search(r"(?<![\w.])(?<!def )(eval|exec)\(|sympify\(|parse_expr\(", line):
                offenders.append(f"{path}:{number}: {line.strip()}")
    assert offenders == []
