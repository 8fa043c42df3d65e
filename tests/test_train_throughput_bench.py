"""bench/train_throughput.py: its pair builders, token bound and timing arithmetic, and one tiny end-to-end run."""

from __future__ import annotations

import json
import math
import random

import pytest

from stepdpo.steps import STEP_HEADER



@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("train_throughput")


def test_perturb_step_changes_every_standalone_result(bench):
    step = "Step 2: After losing 10, Hugo has 19 - 10 = 9 muffins, so 9 remain.\n"
    changed = bench.perturb_step(step, "9", random.Random(0))
    assert changed is not None and changed != step
    # 19 and 10 are untouched: only the standalone 9s changed, both to the same wrong number.
    assert "19 - 10 = " in changed
    wrong = changed.split("= ")[1].split(" ")[0]
    assert wrong != "9" and changed.count(wrong) >= 2
    assert bench.perturb_step(step, "42", random.Random(0)) is None
    assert bench.perturb_step(step, "2.5", random.Random(0)) is None


def test_synthetic_pairs_are_step_dpo_shaped(bench):
    pairs = bench.synthetic_pairs(6, seed=0)
    assert len(pairs) == 6
    for pair in pairs:
        assert pair.initial_reason_steps.startswith(STEP_HEADER)
        assert pair.chosen.startswith(f"Step {pair.step_index}:")
        assert pair.rejected != pair.chosen and pair.rejected.startswith(f"Step {pair.step_index}:")


def test_realistic_pairs_have_exact_lengths_and_the_bound_matches_the_formula(bench, embedded_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_tokenizer_dir)
    pairs = bench.realistic_pairs(tokenizer, "chat", n=3, prefix_tokens=160, step_tokens=12, seed=1)
    stats = bench.token_stats(pairs, tokenizer, "chat")
    assert (stats["mean_prefix_tokens"], stats["mean_chosen_tokens"], stats["mean_rejected_tokens"]) == (160, 12, 12)
    P, S = 160, 12
    assert stats["bound_vs_trl_best"] == pytest.approx(2 * (P + S) / (P + 2 * S))
    assert stats["bound_vs_trl_default"] == pytest.approx(8 * (P + S) / (3 * (P + 2 * S)))
    with pytest.raises(ValueError, match="prefix-tokens"):
        bench.realistic_pairs(tokenizer, "chat", n=1, prefix_tokens=10, step_tokens=12, seed=1)


def test_timing_counts_only_the_steps_after_warmup(bench):
    marks = [0.0, 5.0, 7.0, 9.0, 11.0]  # train begin, then the end of steps 1..4
    out = bench.timing(marks, warmup=1, steps=3, batch_size=4)
    assert out["measured_seconds"] == 6.0
    assert out["pairs_per_second"] == pytest.approx(12 / 6)
    assert out["step_seconds"] == [5.0, 2.0, 2.0, 2.0]
    with pytest.raises(RuntimeError, match="expected 5 optimizer steps"):
        bench.timing(marks, warmup=2, steps=3, batch_size=4)


def test_end_to_end_on_a_tiny_model(bench, tiny_model_dir, tmp_path):
    out = tmp_path / "tt.json"
    argv = [
        "--model", str(tiny_model_dir), "--profiles", "realistic", "--systems", "ours", "trl-best",
        "--prefix-tokens", "200", "--step-tokens", "6", "--n-pairs", "5", "--batch-size", "2",
        "--steps", "1", "--warmup", "1", "--threads", "1", "--out", str(out),
    ]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    profile = report["profiles"]["realistic"]
    assert profile["token_stats"]["pairs"] == 4  # cut to a multiple of the batch size
    ours, trl = profile["systems"]["ours"], profile["systems"]["trl-best"]
    # Equal loss at step 0 (policy = reference): log 2 for both.
    assert ours["step0_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert trl["step0_loss"] == pytest.approx(math.log(2), abs=1e-4)
    # TRL appends EOS to each completion; ours does not for a step that does not end the solution.
    assert ours["tokens"] == {"prefix": 200, "chosen": 6, "rejected": 6}
    assert trl["tokens"] == {"prefix": 200, "chosen": 7, "rejected": 7}
    assert ours["precompute_seconds"] > 0 and trl["precompute_seconds"] > 0
    assert ours["peak_rss_mb"] > 0 and len(ours["loadavg_before"]) == 3
    assert "ours/trl-best" in profile["ratios"]
    page = out.with_suffix(".md").read_text()
    assert "| ours |" in page and "| trl-best |" in page and "Bound vs TRL-best" in page
