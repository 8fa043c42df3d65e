"""bench/organism_build.py, bench/generation.py --side-by-side and bench/organism_shapes.py, end to end on a tiny organism."""

from __future__ import annotations

import json
import sys

import pytest

TINY = ["data=[\"synthetic:train?n=32&min_steps=2&max_steps=3&difficulty=0&seed=0\"]",
        "validation=synthetic:train?n=4&min_steps=3&max_steps=3&difficulty=0&seed=1000", "validation_max_new_tokens=16",
        "tokenizer_problems=32", "batch_size=1", "vocab_size=300", "hidden_size=32", "intermediate_size=64", "num_layers=1", "num_heads=2", "num_kv_heads=2", "device=cpu"]


def run_main(bench, argv: list[str]) -> None:
    """``bench.main()`` as if run with ``argv`` (module-scoped fixtures cannot take monkeypatch)."""
    old, sys.argv = sys.argv, argv
    try:
        bench.main()
    finally:
        sys.argv = old


@pytest.fixture(scope="module")
def organism_build(load_bench, tmp_path_factory):
    """Runs bench/organism_build.py on a tiny config; returns (result json, markdown, output folder)."""
    bench = load_bench("organism_build")
    tmp = tmp_path_factory.mktemp("organism_bench")
    argv = ["organism_build.py", *[a for o in TINY for a in ("--option", o)], "--threads", "1", "--output-dir", str(tmp / "built"), "--out", str(tmp / "result.json")]
    run_main(bench, argv)
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
            "--problems", "synthetic:train?n=4&min_steps=3&max_steps=3&difficulty=0&seed=1000", "--repeats", "2", "--profile", model, "--out", str(out)]
    run_main(bench, argv)
    result = json.loads(out.read_text())
    settings = [(dtype, loop) for dtype in ("auto", "float32") for loop in ("own", "generate")]
    assert [(row["model"], row["dtype"], row["decode_loop"]) for row in result["rows"]] == [(model, *s) for s in settings] * 2
    assert all(0 < row["tokens"] <= 4 * 8 and row["tok_per_s"] > 0 for row in result["rows"])
    # Both loops sample the same completions (each row from its own seed) on a float32 model this small.
    assert {row["own_equals_generate"] for row in result["rows"] if row["dtype"] == "float32"} == {"4/4"}
    assert "--side-by-side" in result["command"] and "--profile" in result["command"] and result["machine"]["cores"] >= 1
    # Timed in 2 rounds, each with its own ratio; the profile splits each setting's time into operator groups.
    assert all(len(row["seconds_each"]) == len(row["load_each"]) == 2 for row in result["rows"])
    assert len(result["best_vs_best_by_round"]) == 2 and all(ratio > 0 for ratio in result["best_vs_best_by_round"])
    assert result["best_vs_best_each"][model]["median"] == result["best_vs_best"]
    assert all(row["profile"]["by_group_s"]["other matmuls (layers)"] > 0 for row in result["rows"])
    markdown = out.with_suffix(".md").read_text()
    assert "| tok/s |" in markdown and "## Where the time goes" in markdown and "other matmuls (layers)" in markdown


def test_organism_shapes_times_each_shape_on_equal_work(load_bench, organism_build, tmp_path):
    _, _, built = organism_build
    bench = load_bench("organism_shapes")
    out = tmp_path / "shapes.json"
    argv = ["organism_shapes.py", "--model", str(built / "model"), "--prompts", "4", "--tokens", "6", "--batch", "4", "--repeats", "2",
            "--threads", "1", "--shape", "num_kv_heads=3", "--shape", "num_layers=1,intermediate_size=64", "--out", str(out)]
    run_main(bench, argv)
    result = json.loads(out.read_text())
    rows = {row["shape"]: row for row in result["rows"]}
    assert list(rows) == ["built organism", "default", "num_kv_heads=3", "num_layers=1,intermediate_size=64"]
    assert rows["default"]["relative_to_default"] == 1.0 and all(len(row["seconds_each"]) == 2 for row in rows.values())
    # The shapes are what they say: more key/value heads have more parameters, a smaller model fewer.
    assert rows["num_layers=1,intermediate_size=64"]["parameters"] < rows["default"]["parameters"] < rows["num_kv_heads=3"]["parameters"]
    assert "(3 kv)" in rows["num_kv_heads=3"]["sizes"] and result["settings"]["tokens"] == 6
    assert "| relative to default |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="hidden_sise"):
        bench.shape_config("hidden_sise=96")


def test_side_by_side_writes_its_timings_before_profiling(load_bench, organism_build, tmp_path, monkeypatch):
    _, _, built = organism_build
    bench = load_bench("generation")
    model = str(built / "model")
    out = tmp_path / "side.json"

    def out_of_memory(*args, **kwargs):
        raise MemoryError("the profiler's trace")

    monkeypatch.setattr(bench, "profile", out_of_memory)
    argv = ["generation.py", "--side-by-side", model, "--threads", "1", "--batch", "4", "--max-new-tokens", "4", "--dtypes", "float32",
            "--decode-loops", "own", "--problems", "synthetic:train?n=2&min_steps=3&max_steps=3&difficulty=0&seed=1000", "--profile", model, "--out", str(out)]
    with pytest.raises(MemoryError):
        run_main(bench, argv)
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["tok_per_s"] > 0 and "profile" not in rows[0]
