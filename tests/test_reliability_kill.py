"""Killed runs lose nothing: each resumable stage, SIGKILLed at seeded random moments and rerun, ends with exactly the
records of an uninterrupted run (same keys, no duplicates, no torn line, and, since every chunk is seeded by its
position, the same record contents); whole-file outputs are never seen half-written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from reliability_helpers import (complete_lines, kill_when, problem_rows, run_stepdpo, strict_lines, toy_problems,
                                 write_jsonl, wrong_sample_rows)
from stepdpo import cli
from test_train import make_pairs

KILL_SEEDS = (1, 2)


def tiny_generator_args(model: Path) -> list[str]:
    return ["--generator.model", str(model), "--generator.dtype", "float32", "--generator.device", "cpu",
            "--generator.batch-size", "8"]


def stage_args(stage: str, run_dir: Path, model: Path, data: Path) -> tuple[list[str], str, str]:
    """(CLI arguments, output JSONL relative to the run directory, key field) of each stage under test."""
    gen = tiny_generator_args(model)
    if stage == "sample":
        return ["sample", "--data", str(data), "--k", "2", "--max-new-tokens", "6", "--chunk-size", "1",
                "--run-dir", str(run_dir), *gen], "samples.jsonl", "id"
    if stage == "locate":
        return ["locate", "--localizer", "rollout", "--rollout.search", "linear", "--rollout.rollouts-per-prefix", "2",
                "--rollout.max-new-tokens", "6", "--chunk-size", "1", "--run-dir", str(run_dir), *gen], "located.jsonl", "sample_id"
    if stage == "rectify":
        return ["rectify", "--r", "2", "--max-new-tokens", "6", "--chunk-size", "1", "--run-dir", str(run_dir), *gen], \
            "rectified.jsonl", "sample_id"
    if stage == "eval":
        return ["eval", "--data", str(data), "--max-new-tokens", "6", "--chunk-size", "1", "--name", "tiny",
                "--run-dir", str(run_dir), *gen], "eval/tiny/samples.jsonl", "id"
    raise ValueError(stage)


def prepare(run_dir: Path, stage: str, count: int) -> Path:
    """A run directory with the inputs ``stage`` reads (hand-written wrong samples and located errors); returns the data file."""
    problems = toy_problems(count)
    data = run_dir.parent / "problems.jsonl"  # one file for both runs: eval keys samples by the set's spec
    write_jsonl(data, [{"id": p.id, "question": p.question, "answer": p.answer} for p in problems])
    if stage in ("locate", "rectify"):
        write_jsonl(run_dir / "problems" / "train.jsonl", problem_rows(problems))
        samples = wrong_sample_rows(problems)
        write_jsonl(run_dir / "samples.jsonl", samples)
        if stage == "rectify":
            write_jsonl(run_dir / "located.jsonl", [
                {"sample_id": s["id"], "problem_id": s["problem_id"], "first_wrong_step": 2, "localizer": "file"} for s in samples])
    return data


def assert_no_partial_whole_files(run_dir: Path) -> None:
    """Whole-file outputs (results, funnels, configs) parse whenever they exist."""
    for path in list(run_dir.rglob("*.json")) + list(run_dir.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            json.loads(text)
        else:
            assert text.endswith("\n")


@pytest.mark.slow
@pytest.mark.parametrize("stage,count", [("sample", 6), ("locate", 4), ("rectify", 5), ("eval", 6)])
def test_killed_stage_resumes_to_identical_records(tmp_path, tiny_model_dir, stage, count):
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    ref_data, kill_data = prepare(ref_dir, stage, count), prepare(kill_dir, stage, count)
    ref_args, out_name, key = stage_args(stage, ref_dir, tiny_model_dir, ref_data)
    kill_args, _, _ = stage_args(stage, kill_dir, tiny_model_dir, kill_data)
    assert cli.main(ref_args) == 0
    reference = strict_lines(ref_dir / out_name)
    out = kill_dir / out_name
    killed = 0
    for seed in KILL_SEEDS:
        have = complete_lines(out)
        if have >= len(reference):
            break
        # Kill once the output has grown by a seeded random number of lines (at least one, short of the end).
        target = have + random.Random(seed).randint(1, max(1, (len(reference) - have) // 2))
        killed += kill_when(kill_args, lambda: complete_lines(out) >= target, log_path=tmp_path / "child.log")
        assert_no_partial_whole_files(kill_dir)
    assert killed >= 1, "the stage finished before any kill point: the test exercised nothing"
    assert cli.main(kill_args) == 0
    resumed = strict_lines(out)
    keys = [row[key] for row in resumed]
    assert len(keys) == len(set(keys)), "duplicated records after resume"
    ref_by_key = {row[key]: row for row in reference}
    assert set(keys) == set(ref_by_key)
    for row in resumed:
        assert row == ref_by_key[row[key]]
    if stage == "eval":
        ref_results = json.loads((ref_dir / "eval" / "tiny" / "results.json").read_text())
        results = json.loads((kill_dir / "eval" / "tiny" / "results.json").read_text())
        for field in ("total", "accuracy", "pass_at_k", "maj_at_k"):
            if field in ref_results:
                assert results[field] == ref_results[field]


def test_killed_pairs_never_leaves_partial_datasets(tmp_path):
    """pairs writes whole files: after a kill at any moment each output is absent or complete, and a rerun matches."""
    problems = toy_problems(40)
    rows = wrong_sample_rows(problems)
    rights = [{**r, "id": r["problem_id"] + "#1", "correct": True, "predicted": p.answer,
               "response": p.solution, "steps": [s + "\n" for s in p.solution.split("\n")[:-1]] + [p.solution.split("\n")[-1]]}
              for r, p in zip(rows, problems)]
    rectified = [{"sample_id": r["id"], "problem_id": r["problem_id"], "first_wrong_step": 2, "prefix": r["steps"][0],
                  "rejected": r["steps"][1], "chosen": [p.solution.split("\n", 1)[1]], "full_chosen": [p.solution.split("\n", 1)[1]],
                  "tried": 2, "reached_gold": 1} for r, p in zip(rows, problems)]
    located = [{"sample_id": r["id"], "problem_id": r["problem_id"], "first_wrong_step": 2, "localizer": "file"} for r in rows]
    dirs = []
    for name in ("ref", "killed"):
        d = tmp_path / name
        write_jsonl(d / "problems" / "train.jsonl", problem_rows(problems))
        write_jsonl(d / "samples.jsonl", rows + rights)
        write_jsonl(d / "located.jsonl", located)
        write_jsonl(d / "rectified.jsonl", rectified)
        dirs.append(d)
    ref, killed = dirs
    assert cli.main(["pairs", "--run-dir", str(ref)]) == 0
    expected = {p.relative_to(ref): p.read_bytes() for p in (ref / "pairs").rglob("*") if p.is_file() and p.suffix in (".jsonl",)}
    assert expected
    for seed in range(3):
        rng = random.Random(seed)
        polls = {"n": 0}
        stop_at = rng.randint(100, 1200)  # polls are ~5 ms apart: kill points spread over start-up, reading and writing

        def ready() -> bool:
            polls["n"] += 1
            return polls["n"] >= stop_at

        kill_when(["pairs", "--run-dir", str(killed)], ready)
        for rel, data in expected.items():
            path = killed / rel
            assert not path.exists() or path.read_bytes() == data, f"{rel} half-written after a kill"
        assert_no_partial_whole_files(killed)
    assert cli.main(["pairs", "--run-dir", str(killed)]) == 0
    for rel, data in expected.items():
        assert (killed / rel).read_bytes() == data


TRAIN_STEPS, SAVE_STEPS = 12, 3


def train_args(pairs: Path, model: Path, out: Path) -> list[str]:
    return ["train", "--pairs", str(pairs), "--model", str(model), "--output-dir", str(out), "--run-dir", str(out.parent / "run"),
            "--optim.learning-rate", "2e-3", "--optim.batch-size", "2", "--optim.max-steps", str(TRAIN_STEPS), "--save-steps", str(SAVE_STEPS),
            "--logging-steps", "1", "--eval-split", "0", "--report-to", "none"]


def checkpoints(out: Path) -> dict[int, bool]:
    """Step of each checkpoint folder -> whether it is complete (the Trainer writes trainer_state.json last)."""

    def complete(folder: Path) -> bool:
        try:
            json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
            return True
        except (OSError, ValueError):  # absent, or caught between its creation and its write
            return False

    return {int(d.name.split("-")[1]): complete(d) for d in out.glob("checkpoint-*") if d.is_dir()} if out.is_dir() else {}


def train_losses(metrics: list[dict]) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in metrics if m["split"] == "train" and "loss" in m]


@pytest.mark.slow
def test_killed_train_resumes_from_its_last_complete_checkpoint(tmp_path, tiny_model_dir):
    """SIGKILL `stepdpo train` once its first checkpoint is on disk and again as the next one appears; the rerun resumes
    from the newest complete checkpoint (skipping a half-saved one), keeps the metrics written before it, and ends
    with the step count and loss curve of a run never killed."""
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [p.__dict__ for p in make_pairs(16)])
    straight_out, out, child_log = tmp_path / "straight", tmp_path / "killed", tmp_path / "child.log"
    straight = run_stepdpo(train_args(pairs, tiny_model_dir, straight_out))
    assert straight.returncode == 0, straight.stderr[-3000:]
    args = train_args(pairs, tiny_model_dir, out)

    assert kill_when(args, lambda: any(checkpoints(out).values()), log_path=child_log), "train finished before its first checkpoint"
    first = max(step for step, complete in checkpoints(out).items() if complete)
    assert 0 < first < TRAIN_STEPS
    assert kill_when(args, lambda: any(step > first for step in checkpoints(out)), log_path=child_log)
    assert f"resuming from {out / f'checkpoint-{first}'}" in child_log.read_text(encoding="utf-8")
    state = checkpoints(out)
    newest = max(state)
    if state[newest]:
        # The second kill came after that checkpoint was whole: leave what a kill between its model files and its
        # trainer_state.json leaves, so the skip of a half-saved checkpoint is exercised on every run.
        (out / f"checkpoint-{newest}" / "trainer_state.json").unlink()
    resume_at = max(step for step, complete in checkpoints(out).items() if complete)
    kept_before = [m for m in strict_lines(out / "metrics.jsonl") if m["step"] <= resume_at]
    assert [s for s, _ in train_losses(kept_before)] == list(range(1, resume_at + 1))

    rerun = run_stepdpo(args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{resume_at}'}" in rerun.stderr
    assert f"skipping {out / f'checkpoint-{newest}'}: incomplete" in rerun.stderr
    metrics = strict_lines(out / "metrics.jsonl")
    assert metrics[:len(kept_before)] == kept_before, "metrics written before the checkpoint changed on resume"
    resumed, reference = train_losses(metrics), train_losses(strict_lines(straight_out / "metrics.jsonl"))
    assert [s for s, _ in resumed] == [s for s, _ in reference] == list(range(1, TRAIN_STEPS + 1)), "steps lost or repeated"
    for (_, a), (_, b) in zip(resumed, reference):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    result, straight_result = (json.loads((d / "result.json").read_text(encoding="utf-8")) for d in (out, straight_out))
    assert result["global_step"] == straight_result["global_step"] == TRAIN_STEPS
    assert (out / "final" / "model.safetensors").is_file()


def test_last_complete_checkpoint_skips_half_saved_ones(tmp_path):
    from stepdpo.stages.train import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "absent") is None
    assert last_complete_checkpoint(tmp_path) is None
    for step, state in ((3, '{"global_step": 3}'), (6, '{"global_st'), (9, None)):  # whole, torn state, no state yet
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (folder / "trainer_state.json").write_text(state, encoding="utf-8")
    (tmp_path / "checkpoint-12.tmp").mkdir()  # not a checkpoint name
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
