"""bench/organism_build.py and bench/generation.py --side-by-side, end to end on a tiny organism."""

from __future__ import annotations

import json
import sys

import pytest

TINY = ["data=[\"synthetic:train?n=32&min_steps=2&max_steps=3&difficulty=0&seed=0\"]",
        "validation=synthetic:train?n=4&min_steps=3&max_steps=3&difficulty=0&seed=1000", "validation_max_new_tokens=16",
        "tokenizer_problems=32", "batch_size=1", "vocab_size=300", "hidden_size=32", "intermediate_size=64", "num_layers=1", "num_heads=2", "num_kv_heads=2", "device=cpu"]


@pytest.fixture(scope="module")
def organism_build(load_bench, tmp_path_factory):
    """Runs bench/organism_build.py on a tiny config; returns (result json, markdown, output folder)."""
    bench = load_bench("organism_build")
    tmp = tmp_path_factory.mktemp("organism_bench")
    argv = ["organism_build.py", *[a for o in TINY for a in ("--option", o)], "--threads", "1", "--output-dir", str(tmp / "built"), "--out", str(tmp / "result.json")]
    old, sys.argv = sys.argv, argv
    try:
        bench.main()
    finally:
        sys.argv = old
    return json.loads((tmp / "result.json").read_text()), (tmp / "result.md").read_text(), tmp / "built"


def test_organism_build_records_build_and_validation(organism_build):
    result, markdown, built = organism_build
    assert result["config"]["hidden_size"] == 32 and result["config"]["threads"] == 1
    assert result["build"]["parameters"] > 0 and result["build"]["cpu_seconds"] > 0
    assert result["validation"]["problems"] == 4
    assert sum(result["validation"]["first_wrong_step"].values()) == result["validation"]["errors"]
    assert result["loss_curve"] and all("loss" in point for point in result["loss_curve"])
    assert "--option hidden_size=32" in result["command"] and "--threads 1" in result["command"]
    assert "| 3 | 4 |" in markdown and "First wrong step" in markdown
    assert result["model_dir"] == str(built / "model")


def test_option_parsing_is_strict(load_bench):
    from stepdpo.errors import ConfigError

    bench = load_bench("organism_build")
    assert bench.parse_options(["hidden_size=96", "learning_rate=3e-3"]).learning_rate == 3e-3
    with pytest.raises(ConfigError, match="hidden_sise"):
        bench.parse_options(["hidden_sise=96"])


def test_side_by_side_times_each_model_and_dtype(load_bench, organism_build, tmp_path):
    _, _, built = organism_build
    bench = load_bench("generation")
    model = str(built / "model")
    out = tmp_path / "side.json"
    argv = ["generation.py", "--side-by-side", model, model, "--threads", "1", "--batch", "4", "--max-new-tokens", "8",
            "--problems", "synthetic:train?n=4&min_steps=3&max_steps=3&difficulty=0&seed=1000", "--out", str(out)]
    old, sys.argv = sys.argv, argv
    try:
        bench.main()
    finally:
        sys.argv = old
    result = json.loads(out.read_text())
    settings = [(dtype, loop) for dtype in ("auto", "float32") for loop in ("own", "generate")]
    assert [(row["model"], row["dtype"], row["decode_loop"]) for row in result["rows"]] == [(model, *s) for s in settings] * 2
    assert all(0 < row["tokens"] <= 4 * 8 and row["tok_per_s"] > 0 for row in result["rows"])
    # Both loops sample the same completions (each row from its own seed) on a float32 model this small.
    assert {row["own_equals_generate"] for row in result["rows"] if row["dtype"] == "float32"} == {"4/4"}
    assert "--side-by-side" in result["command"] and result["machine"]["cores"] >= 1
    assert "| tok/s |" in out.with_suffix(".md").read_text()
