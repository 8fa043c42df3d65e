"""Bad input gets one clear line naming the file, the line and the field, and a non-zero exit;
with ``--on-bad-row skip`` bad rows are skipped and counted in the funnel instead."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reliability_helpers import run_stepdpo, toy_problems, write_jsonl
from stepdpo import cli

GOOD = [{"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]


def jsonl_bytes(rows: list) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


# name -> (file name, content, pieces the error line must contain)
CORPUS: dict[str, tuple[str, bytes, list[str]]] = {
    "malformed-json": ("data.jsonl", jsonl_bytes([GOOD[0], GOOD[1], b'{"id": "q9", "question": "x", ']), ["data.jsonl:3", "JSON"]),
    "missing-answer": ("data.jsonl", jsonl_bytes([GOOD[0], {"id": "q9", "question": "What?"}, GOOD[2]]), ["data.jsonl:2", "answer"]),
    "empty-answer": ("data.jsonl", jsonl_bytes([GOOD[0], {"id": "q9", "question": "What?", "answer": "  "}]), ["data.jsonl:2", "answer"]),
    "null-question": ("data.jsonl", jsonl_bytes([GOOD[0], GOOD[1], {"id": "q9", "question": None, "answer": "3"}]), ["data.jsonl:3", "question"]),
    "duplicate-id": ("data.jsonl", jsonl_bytes([GOOD[0], GOOD[1], {**GOOD[2], "id": "q0"}]), ["data.jsonl:3", "id", "duplicate"]),
    "not-utf8": ("data.jsonl", jsonl_bytes([GOOD[0], b'{"id": "q9", "question": "caf\xe9 \xff", "answer": "1"}', GOOD[1]]), ["data.jsonl:2", "UTF-8"]),
    "10mb-line": ("data.jsonl", jsonl_bytes([GOOD[0], b'{"id": "big", "question": "' + b"x" * 10_000_000]), ["data.jsonl:2"]),
    "not-an-object": ("data.jsonl", jsonl_bytes([GOOD[0], [1, 2, 3]]), ["data.jsonl:2", "object"]),
    "empty-file": ("data.jsonl", b"", ["data.jsonl", "empty"]),
}


def parquet_wrong_columns(path: Path) -> None:
    pq.write_table(pa.table({"text": ["What is 1 + 1?"], "target_value": ["2"]}), path)


def error_line(stderr: str) -> str:
    """The single error line the CLI printed (logging lines aside); fails on tracebacks or multi-line errors."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("stepdpo ")]
    assert len(lines) == 1, stderr[-2000:]
    assert len(lines[0]) < 1000, "the error line echoes the input"
    return lines[0]


def cli_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code != 0
    return error_line(err)


@pytest.mark.parametrize("command", ["data show", "eval", "sample"])
@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_problem_file(tmp_path, capsys, case, command):
    name, content, pieces = CORPUS[case]
    path = tmp_path / name
    path.write_bytes(content)
    argv = {"data show": ["data", "show", str(path)],
            "eval": ["eval", "--data", str(path), "--run-dir", str(tmp_path / "run"), "--generator.model", str(tmp_path / "never-loaded")],
            "sample": ["sample", "--data", str(path), "--run-dir", str(tmp_path / "run"), "--generator.model", str(tmp_path / "never-loaded")]}[command]
    line = cli_error(capsys, argv)
    for piece in pieces:
        assert piece.lower() in line.lower(), line


def test_parquet_with_wrong_columns(tmp_path, capsys):
    path = tmp_path / "set.parquet"
    parquet_wrong_columns(path)
    line = cli_error(capsys, ["data", "show", str(path)])
    assert "set.parquet" in line and "question" in line.lower()


@pytest.mark.parametrize("yaml_text,pieces", [
    ("k: 4\nnot_an_option: 1\n", ["not_an_option"]),
    ("k: four\n", ["k"]),
    ("generator:\n  batch_size: [1, 2]\n", ["batch_size"]),
    ("k: 4\n  bad indent: [\n", ["config.yaml"]),
])
def test_bad_yaml_config(tmp_path, capsys, yaml_text, pieces):
    config = tmp_path / "config.yaml"
    config.write_text(yaml_text)
    line = cli_error(capsys, ["sample", "--config", str(config), "--run-dir", str(tmp_path / "run")])
    for piece in pieces:
        assert piece in line, line


def test_bad_record_in_run_directory(tmp_path, capsys):
    """A stage reading another stage's JSONL names the file, line and field of a broken record."""
    run_dir = tmp_path / "run"
    problems = toy_problems(2)
    write_jsonl(run_dir / "problems" / "train.jsonl", [vars(p) for p in problems])
    good = {"id": "toy-0#0", "problem_id": "toy-0", "prompt": "q", "response": "Step 1: 1", "steps": ["Step 1: 1"],
            "predicted": "1", "correct": False}
    bad = {k: v for k, v in good.items() if k != "steps"} | {"id": "toy-1#0", "problem_id": "toy-1"}
    write_jsonl(run_dir / "samples.jsonl", [good, bad])
    line = cli_error(capsys, ["locate", "--localizer", "exact", "--run-dir", str(run_dir)])
    assert "samples.jsonl:2" in line and "steps" in line


def test_model_path_that_does_not_exist(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl_bytes(GOOD))
    missing = tmp_path / "no-such-model"
    result = run_stepdpo(["eval", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--generator.model", str(missing),
                          "--generator.device", "cpu"], timeout_s=300)
    assert result.returncode != 0
    assert str(missing) in error_line(result.stderr)


@pytest.mark.parametrize("what", ["data", "model"])
def test_hub_id_while_offline(tmp_path, what):
    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl_bytes(GOOD))
    args = (["--data", "hf:no-such-org/no-such-dataset"] if what == "data" else
            ["--data", str(data), "--generator.model", "no-such-org/no-such-model", "--generator.device", "cpu"])
    result = run_stepdpo(["eval", "--run-dir", str(tmp_path / "run"), *args], env={"HF_HUB_OFFLINE": "1"}, timeout_s=300)
    assert result.returncode != 0
    line = error_line(result.stderr)
    assert "no-such-org/no-such-" in line and "offline" in line.lower()


@pytest.mark.parametrize("command", ["data show", "eval", "sample"])
def test_skip_mode_counts_bad_rows(tmp_path, capsys, tiny_model_dir, command):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(jsonl_bytes([GOOD[0], b"{broken", {"id": "q9", "question": "x"}, GOOD[1], {**GOOD[2], "id": "q0"}, GOOD[3]]))
    run_dir = tmp_path / "run"
    gen = ["--generator.model", str(tiny_model_dir), "--generator.device", "cpu", "--generator.dtype", "float32"]
    argv = {"data show": ["data", "show", str(path), "--on-bad-row", "skip"],
            "eval": ["eval", "--data", str(path), "--on-bad-row", "skip", "--max-new-tokens", "2", "--name", "t", "--run-dir", str(run_dir), *gen],
            "sample": ["sample", "--data", str(path), "--on-bad-row", "skip", "--k", "1", "--max-new-tokens", "2", "--run-dir", str(run_dir), *gen]}[command]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "3" in out
    if command == "data show":
        assert "3 bad row(s) skipped" in out
        return
    funnel = json.loads((run_dir / "funnel" / ("eval-t.json" if command == "eval" else "sample.json")).read_text())
    assert sum(funnel["dropped"].values()) == 3
    assert funnel["records_in"] == 3
