"""`stepdpo grade`: graded rows, accuracy, default output path, and errors that name file, line and field."""

from __future__ import annotations

import json

import pytest

from stepdpo.cli import main
from stepdpo.errors import InputError
from stepdpo.stages.grade import GradeConfig, command, gold_answer, run


def _write(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return path


ROWS = [
    {"id": "a", "response": "Step 1: 3+4=7.\nThe answer is \\boxed{7}.", "answer": "7"},
    {"id": "b", "response": "Half of one is \\boxed{0.5}", "answer": "\\frac{1}{2}"},
    {"id": "c", "response": "She pays 1,000 dollars.\n#### 1,000", "answer": "Cost: 500*2 = 1000\n#### 1000"},
    {"id": "d", "response": "I am not sure.", "answer": 5},
    {"id": "e", "response": "The answer is: 12", "answer": 13},
]


def test_cli_grades_rows_and_prints_accuracy(tmp_path, capsys):
    source = _write(tmp_path / "responses.jsonl", ROWS)
    assert main(["grade", str(source), "--id_field", "id"]) == 0
    out = capsys.readouterr().out
    assert "accuracy: 3/5 = 60.00%" in out
    graded = [json.loads(line) for line in (tmp_path / "responses.jsonl.graded.jsonl").read_text().splitlines()]
    assert [row["id"] for row in graded] == ["a", "b", "c", "d", "e"]
    assert [row["correct"] for row in graded] == [True, True, True, False, False]
    assert [row["predicted"] for row in graded] == ["7", "0.5", "1,000", None, "12"]
    assert graded[0]["response"] == ROWS[0]["response"]  # every input field is kept


def test_cli_custom_fields_output_and_run_dir(tmp_path):
    rows = [{"text": "so \\boxed{(1, 2)}", "gold": "(1,2)"}, {"text": "answer 4", "gold": "5"}]
    source = _write(tmp_path / "in.jsonl", rows)
    target = tmp_path / "out" / "graded.jsonl"
    args = ["grade", str(source), "--response_field", "text", "--gold_field", "gold", "--output", str(target)]
    assert main(args + ["--last_number_fallback", "False", "--run_dir", str(tmp_path / "run")]) == 0
    graded = [json.loads(line) for line in target.read_text().splitlines()]
    assert [row["correct"] for row in graded] == [True, False]
    assert graded[1]["predicted"] is None
    funnel = json.loads((tmp_path / "run" / "funnel" / "grade.json").read_text())
    assert funnel["records_in"] == 2 and funnel["extra"]["correct"] == 1 and funnel["extra"]["no_answer"] == 1


def test_run_is_pure():
    config = GradeConfig(input="unused.jsonl")
    graded = run(config, [dict(row) for row in ROWS[:2]])
    assert [row["correct"] for row in graded] == [True, True]


def test_gold_answer_reduces_worked_solutions():
    assert gold_answer("3 + 4 = 7\n#### 7") == "7"
    assert gold_answer("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert gold_answer(" 42 ") == "42"


@pytest.mark.parametrize(
    ("rows", "line", "field", "extra"),
    [
        ([ROWS[0], {"id": "x", "answer": "1"}], 2, "response", []),
        ([ROWS[0], ROWS[1], {"id": "x", "response": 3, "answer": "1"}], 3, "response", []),
        ([{"id": "x", "response": "1"}], 1, "answer", []),
        ([{"id": "x", "response": "1", "answer": None}], 1, "answer", []),
        ([{"id": "x", "response": "1", "answer": ["1"]}], 1, "answer", []),
        ([ROWS[0], ROWS[0]], 2, "id", ["--id_field", "id"]),
        ([ROWS[0], {"response": "1", "answer": "1"}], 2, "id", ["--id_field", "id"]),
    ],
    ids=["missing-response", "non-string-response", "missing-gold", "null-gold", "list-gold", "duplicate-id", "missing-id"],
)
def test_bad_rows_name_file_line_and_field(tmp_path, capsys, rows, line, field, extra):
    source = _write(tmp_path / "bad.jsonl", rows)
    assert main(["grade", str(source), *extra]) == 2
    err = capsys.readouterr().err
    assert f"{source}:{line}: field '{field}'" in err
    assert not (tmp_path / "bad.jsonl.graded.jsonl").exists()


def test_malformed_json_and_missing_file(tmp_path):
    source = _write(tmp_path / "broken.jsonl", [ROWS[0], "{not json"])
    with pytest.raises(InputError) as caught:
        command(GradeConfig(input=str(source)))
    assert caught.value.line == 2 and caught.value.path == str(source)
    with pytest.raises(InputError, match="file not found"):
        command(GradeConfig(input=str(tmp_path / "absent.jsonl")))
