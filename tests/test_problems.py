import json
import os
import subprocess
import sys

import pytest

from stepdpo.cli import main
from stepdpo.errors import ConfigError, InputError, StepdpoError
from stepdpo.problems import gsm8k_to_steps, last_boxed, load_problems, load_problems_with_report, shipped_specs
from stepdpo.steps import split_steps, step_body

COUNTS = {
    "gsm8k:train": 7473,
    "gsm8k:test": 1319,
    "math:train": 7498,  # 7,500 rows, two with an empty \boxed{} are skipped
    "math:test": 5000,
    "math500:test": 500,
    "svamp:test": 1000,
    "mawps:test": 2065,
    "multiarith:test": 600,
}


@pytest.mark.parametrize("spec", sorted(COUNTS))
def test_shipped_sets_load_with_counts(spec, shared_data):
    problems = load_problems(spec)
    assert len(problems) == COUNTS[spec]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.source == spec and p.question and p.answer for p in problems)


def test_shipped_specs_are_all_tested():
    assert set(shipped_specs()) == set(COUNTS)


def test_known_gold_answers(shared_data):
    gsm = {p.id: p for p in load_problems("gsm8k:test")}
    assert gsm["gsm8k:test:0"].answer == "18"
    assert gsm["gsm8k:test:0"].question.startswith("Janet")
    train = load_problems("gsm8k:train")
    assert train[0].id == "gsm8k:train:0" and train[0].answer == "72"
    assert any(p.answer == "1000" or "," not in p.answer for p in train)
    assert all("," not in p.answer for p in train)
    math500 = {p.id: p for p in load_problems("math500:test")}
    first = math500["test/precalculus/807.json"]
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.metadata == {"level": "Level 2", "type": "Precalculus"}
    math_test = {p.id: p for p in load_problems("math:test")}
    assert math_test["test/algebra/1.json"].answer == "2"
    svamp = {p.id: p for p in load_problems("svamp:test")}
    assert svamp["svamp:chal-777"].answer == "145"
    assert svamp["svamp:chal-777"].question.endswith("groups. How big is each group of bananas?")
    mawps = load_problems("mawps:test")
    assert mawps[0].answer == "43" and mawps[0].metadata["type"] == "singleeq"
    assert any("." in p.answer for p in mawps)  # non-integral targets keep their decimals
    multi = load_problems("multiarith:test")
    assert multi[0].answer == "39" and multi[0].id == "multiarith:test:0"


def test_math_boxed_forms():
    assert last_boxed(r"so $\boxed{\frac{1}{2}}$ or \boxed{x^{2}+1}") == "x^{2}+1"
    assert last_boxed(r"our answer is $\boxed 2$.") == "2"
    assert last_boxed(r"\boxed{}") == ""
    assert last_boxed(r"\boxed{1") is None
    assert last_boxed("no box") is None


def test_gsm8k_to_steps_format():
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"
    converted = gsm8k_to_steps(text)
    assert converted == (
        "Step 1: Natalia sold 48/2 = 24 clips in May.\n"
        "Step 2: Natalia sold 48+24 = 72 clips altogether.\n"
        "The answer is: \\boxed{72}"
    )
    steps = split_steps(converted)
    assert len(steps) == 2
    assert step_body(steps[1]).endswith("The answer is: \\boxed{72}")
    assert gsm8k_to_steps("A = 1,000\n\n#### 1,000").endswith("\\boxed{1000}")


def test_gsm8k_solutions_split_into_their_lines(shared_data):
    for problem in load_problems("gsm8k:test"):
        steps = split_steps(problem.solution)
        assert len(steps) == problem.solution.count("\nStep ") + 1
        assert "<<" not in problem.solution
        assert steps[-1].endswith(f"The answer is: \\boxed{{{problem.answer}}}")


def test_limit_is_a_seeded_subset(shared_data):
    a = load_problems("gsm8k:test", limit=20, seed=3)
    b = load_problems("gsm8k:test", limit=20, seed=3)
    c = load_problems("gsm8k:test", limit=20, seed=4)
    assert [p.id for p in a] == [p.id for p in b] != [p.id for p in c]
    small = load_problems("gsm8k:test", limit=5, seed=3)
    assert {p.id for p in small} <= {p.id for p in a}
    assert len(load_problems("svamp:test", limit=5000)) == 1000


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_local_jsonl_with_column_names(tmp_path):
    path = _write(tmp_path / "mine.jsonl", [{"q": "1+1?", "a": 2, "uid": "x1"}, {"q": "2+2?", "a": "4", "uid": "x2"}])
    problems = load_problems(f"{path}?question=q&answer=a&id=uid")
    assert [(p.id, p.question, p.answer) for p in problems] == [("x1", "1+1?", "2"), ("x2", "2+2?", "4")]
    by_keywords = load_problems(str(path), question_field="q", answer_field="a", id_field="uid")
    assert [(p.id, p.answer) for p in by_keywords] == [(p.id, p.answer) for p in problems]
    assert by_keywords[0].source == str(path)
    with pytest.raises(ConfigError, match="unknown option"):
        load_problems(f"{path}?colour=red")


def test_local_files_detect_fields_and_solutions(tmp_path):
    path = _write(
        tmp_path / "gsm.jsonl",
        [{"question": "q1", "answer": "x = <<1+1=2>>2\n#### 2"}, {"problem": "q2", "solution": "so \\boxed{\\frac12}"}],
    )
    first, second = load_problems(str(path))
    assert (first.id, first.answer, first.solution) == ("gsm.jsonl:0", "2", "Step 1: x = 2\nThe answer is: \\boxed{2}")
    assert (second.answer, second.solution) == ("\\frac12", None)


def test_csv_json_parquet(tmp_path):
    import pyarrow
    import pyarrow.parquet

    (tmp_path / "p.csv").write_text("question,answer\nWhat is 3?,3\n\"Hi, what is 4?\",4\n", encoding="utf-8")
    assert [p.answer for p in load_problems(str(tmp_path / "p.csv"))] == ["3", "4"]
    (tmp_path / "p.json").write_text(json.dumps([{"question": "a", "answer": 1.0}]), encoding="utf-8")
    assert load_problems(str(tmp_path / "p.json"))[0].answer == "1"
    pyarrow.parquet.write_table(pyarrow.table({"problem": ["x", "y"], "target": [1, 2]}), tmp_path / "p.parquet")
    assert [p.answer for p in load_problems(str(tmp_path / "p.parquet"))] == ["1", "2"]
    pyarrow.parquet.write_table(pyarrow.table({"text": ["x"], "label2": [1]}), tmp_path / "wrong.parquet")
    with pytest.raises(InputError, match=r"wrong.parquet: field 'question': no question column"):
        load_problems(str(tmp_path / "wrong.parquet"))


def test_stored_problem_records_round_trip(tmp_path):
    from stepdpo.records import RecordStore, Problem

    stored = [Problem(id="a", question="q", answer="1", source="gsm8k:test", metadata={"k": 1})]
    RecordStore(tmp_path / "problems.jsonl", Problem).append(stored)
    assert load_problems(str(tmp_path / "problems.jsonl")) == stored


@pytest.mark.parametrize(
    "content, match",
    [
        (b'{"question": "a", "answer": "1"}\n{oops\n', r"bad.jsonl:2: malformed JSON"),
        (b'{"question": "a", "answer": "1"}\n{"question": "b"}\n', r"bad.jsonl:2: field 'answer': missing"),
        (b'{"question": "a", "answer": "  "}\n', r"bad.jsonl:1: field 'answer': empty"),
        (b'{"question": "a", "answer": "1", "id": "x"}\n{"question": "b", "answer": "2", "id": "x"}\n', r"bad.jsonl:2: field 'id': duplicate id 'x'"),
        (b'{"question": "a", "answer": "1"}\n{"question": "\xff", "answer": "2"}\n', r"bad.jsonl:2: not valid UTF-8"),
        (b"", r"bad.jsonl: no rows"),
        (b'{"question": "a", "answer": "\\\\boxed{}"}\n', r"bad.jsonl:1: field 'answer'"),
    ],
)
def test_bad_input_names_file_line_field(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_problems(str(path))


def test_skip_counts_bad_rows(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"question": "a", "answer": "1", "id": "x"}\n'
        '{"question": "b"}\n'
        '{"question": "c", "answer": ""}\n'
        '{"question": "d", "answer": "4", "id": "x"}\n'
        '{"question": "e", "answer": "5", "id": "y"}\n',
        encoding="utf-8",
    )
    problems, report = load_problems_with_report(str(path), on_bad_row="skip")
    assert [p.id for p in problems] == ["x", "y"]
    assert (report.rows, report.loaded, report.skipped) == (5, 2, 3)
    assert report.reasons["field 'answer': missing"] == 1
    assert any("mixed.jsonl:4" in example for example in report.examples)
    all_bad = tmp_path / "allbad.jsonl"
    all_bad.write_text('{"question": "b"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="no usable rows"):
        load_problems(str(all_bad), on_bad_row="skip")


def test_bad_specs():
    with pytest.raises(ConfigError, match="unknown problem set"):
        load_problems("gsm9k:test")
    with pytest.raises(ConfigError, match="split"):
        load_problems("svamp:train")
    with pytest.raises(InputError, match="file not found"):
        load_problems("/nonexistent/x.jsonl")


def test_hub_offline_is_one_clear_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = (
        "from stepdpo.errors import StepdpoError\n"
        "from stepdpo.problems import load_problems\n"
        "try:\n"
        "    load_problems('hf:openai/gsm8k:test?config=main')\n"
        "except StepdpoError as err:\n"
        "    print('ERR', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    line = out.stdout.strip()
    assert line.startswith("ERR hf:openai/gsm8k split 'test': cannot load from the Hugging Face hub (HF_HUB_OFFLINE is set)"), out.stdout + out.stderr
    assert "\n" not in line


@pytest.mark.parametrize("spec", sorted(COUNTS) + ["synthetic:test?n=10"])
def test_data_show_command(spec, capsys, shared_data):
    assert main(["data", "show", spec, "--limit", "2", "--show_solution", "True"]) == 0
    out = capsys.readouterr().out
    assert out.count("-- gold answer: ") == 2
    assert "2 of " in out


def test_data_show_bad_spec_exits_2(capsys):
    assert main(["data", "show", "nope:test"]) == 2
    assert "unknown problem set" in capsys.readouterr().err
