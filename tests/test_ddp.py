"""`accelerate launch` with DDP: two CPU processes over gloo train `stepdpo train` as ONE job of world size 2.

The proof is arithmetic and numeric, not a log line: with N training pairs at per-device batch b, a
2-rank job takes ceil(N / (2 b)) optimizer steps per epoch (two lone rank-0 processes would each take
ceil(N / b)); and since DDP averages gradients over the ranks, its loss curve equals that of one
process at batch 2 b on the same pairs (accelerate hands rank r the batches r, r + 2, ... of the same
seeded order, so global batch i holds the same pairs in both runs).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from reliability_helpers import child_env, run_stepdpo, write_jsonl
from test_train import make_pairs

DDP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "ddp_cpu.yaml"
PAIRS, EVAL_SPLIT, BATCH, PROCESSES = 16, 0.25, 2, 2


def train_args(pairs: Path, model: Path, out: Path, batch_size: int) -> list[str]:
    return ["train", "--pairs", str(pairs), "--model", str(model), "--output-dir", str(out), "--run-dir", str(out.parent / "run"),
            "--optim.learning-rate", "2e-3", "--optim.batch-size", str(batch_size), "--eval-batch-size", "2", "--optim.epochs", "1",
            "--logging-steps", "1", "--eval-split", str(EVAL_SPLIT), "--eval-steps", "2", "--report-to", "none"]


def curve(out: Path, split: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(row["step"], row["loss"]) for row in rows if row["split"] == split and "loss" in row]


def test_accelerate_launch_ddp_two_cpu_processes(tmp_path, tiny_model_dir):
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [p.__dict__ for p in make_pairs(PAIRS)])
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG),
              "-m", "stepdpo.cli", *train_args(pairs, tiny_model_dir, ddp_out, BATCH)]
    ddp = subprocess.run(launch, env=child_env(), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]

    n_train = PAIRS - round(PAIRS * EVAL_SPLIT)
    result = json.loads((ddp_out / "result.json").read_text(encoding="utf-8"))
    assert result["pairs_train"] == n_train
    # World size 2: 12 pairs at 2 per device make 3 steps per epoch (one process alone would take 6).
    assert result["global_step"] == math.ceil(n_train / (PROCESSES * BATCH)) == 3
    train = curve(ddp_out, "train")
    assert [step for step, _ in train] == [1, 2, 3]
    # Only rank 0 reports and saves the final model.
    assert ddp.stdout.count("final model:") == 1 and ddp.stdout.count("[train-step-dpo]") == 1
    assert (ddp_out / "final" / "model.safetensors").is_file() and (ddp_out / "final" / "tokenizer_config.json").is_file()

    # One process at the global batch (2 x 2 = 4) on the same pairs: the same curve, step for step.
    single = run_stepdpo(train_args(pairs, tiny_model_dir, single_out, PROCESSES * BATCH), timeout_s=600)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    assert json.loads((single_out / "result.json").read_text(encoding="utf-8"))["global_step"] == 3
    for split in ("train", "eval"):
        single_curve, ddp_curve = curve(single_out, split), curve(ddp_out, split)
        assert [s for s, _ in ddp_curve] == [s for s, _ in single_curve] and ddp_curve
        for (_, a), (_, b) in zip(ddp_curve, single_curve):
            assert a == pytest.approx(b, abs=1e-4)
    assert train[0][1] == pytest.approx(math.log(2), abs=1e-6)  # the first batch: policy == reference in both runs
    assert train[-1][1] < 0.5  # and the runs moved: the shared curve is not a flat ln 2


def test_ddp_counts_each_pair_once_at_the_uneven_epoch_end(tmp_path, tiny_model_dir):
    """10 pairs at 4 per device on 2 ranks: the last global batch holds 2 real pairs (accelerate pads it with repeats).

    Each logged ``pairs`` is the number of distinct training pairs of that step, so over an epoch they sum
    to the pairs trained on (a per-rank count cut by gather_for_metrics said 8 + 8).
    """
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [p.__dict__ for p in make_pairs(10)])
    out = tmp_path / "ddp"
    args = [*train_args(pairs, tiny_model_dir, out, 4), "--eval-split", "0", "--optim.epochs", "2"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG), "-m", "stepdpo.cli", *args]
    ddp = subprocess.run(launch, env=child_env(), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    counts = [row["pairs"] for row in rows if row["split"] == "train" and "pairs" in row]
    assert counts == [8, 2, 8, 2]  # two epochs of ceil(10 / 8) = 2 steps
