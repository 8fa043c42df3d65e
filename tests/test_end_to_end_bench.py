"""bench/end_to_end.py: reads GNU time's report and the run's stage timings of a `make` run."""

from __future__ import annotations

import json
import subprocess

import pytest


GNU_TIME = """\
run finished in 38.3 min (stages this invocation): report at runs/default/report/report.html
\tCommand being timed: "make demo"
\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.50
\tMaximum resident set size (kbytes): 6223248
"""


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("end_to_end")


def test_parse_gnu_time_reads_hours_minutes_seconds_and_rss(bench):
    assert bench.parse_gnu_time(GNU_TIME) == {"wall_s": 3723.5, "peak_rss_gib": 5.93}
    assert bench.parse_gnu_time("\tElapsed (wall clock) time (h:mm:ss or m:ss): 40:24.63\n"
                                "\tMaximum resident set size (kbytes): 1048576\n") == {"wall_s": 2424.6, "peak_rss_gib": 1.0}


def test_parse_gnu_time_without_a_report_says_so(bench):
    with pytest.raises(SystemExit, match="no GNU time report"):
        bench.parse_gnu_time("make: *** [Makefile:21: demo] Error 1\n")


def _clone_with_run(tmp_path, timings: dict[str, float], run_dir_name: str = "default"):
    """A git clone whose runs/RUN_DIR_NAME holds ``timings``, and a GNU time log of 3723.5 s."""
    clone = tmp_path / "clone"
    run_dir = clone / "runs" / run_dir_name
    run_dir.mkdir(parents=True)
    (run_dir / "timings.json").write_text(json.dumps(timings))
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    time_log = tmp_path / "time.log"
    time_log.write_text(GNU_TIME)
    return clone, time_log


def test_collect_splits_wall_time_into_stages_and_the_rest(tmp_path, bench):
    clone, time_log = _clone_with_run(tmp_path, {"sft": 3000.0, "eval-base": 600.0})
    (clone / "runs" / "default" / "report").mkdir()
    (clone / "runs" / "default" / "report" / "report.html").write_text("<html></html>")

    result = bench.collect(clone, time_log, "demo")

    assert result["wall_s"] == 3723.5
    assert result["stages_total_s"] == 3600.0
    assert result["install_and_other_s"] == 123.5
    assert result["report_exists"] is True
    assert len(result["commit"]) >= 7
    assert "| sft | 3000.0 |" in bench.markdown(result)


def test_stages_from_other_runs_compose_an_estimate_from_the_longest_time_per_stage(tmp_path, bench):
    clone, time_log = _clone_with_run(tmp_path, {"sft": 3000.0, "rectify": 100.0})  # 623.5 s outside the stages
    first, resumed = tmp_path / "first.json", tmp_path / "resumed.json"
    first.write_text(json.dumps({"rectify": 400.0, "train": 50.0}))
    resumed.write_text(json.dumps({"sft": 1.0, "rectify": 2.0, "eval": 30.0}))  # sft and rectify only skipped here

    result = bench.collect(clone, time_log, "demo", [first, resumed])

    # sft: the clone's own time survives a file that does not name it (or only skipped it)
    assert result["stages_s"] == {"sft": 3000.0, "rectify": 400.0, "train": 50.0, "eval": 30.0}
    assert result["install_and_other_s"] == 623.5
    assert result["wall_s"] == 623.5 + 3480.0
    assert "Composed, not one run" in bench.markdown(result)


def test_the_organism_target_reads_its_own_run_and_the_result_names_the_cpu(tmp_path, bench, monkeypatch):
    clone, time_log = _clone_with_run(tmp_path, {"sample": 200.0, "eval-base": 100.0}, run_dir_name="organism")
    monkeypatch.setattr(bench, "cpu_info", lambda: ("Test CPU 9000", frozenset({"avx512_bf16", "sse2"})))
    monkeypatch.setattr(bench, "speed_flags", lambda: ["avx512_bf16"])

    result = bench.collect(clone, time_log, "demo-organism")

    assert result["stages_total_s"] == 300.0
    assert result["report_exists"] is False
    assert (result["cpu_model"], result["cpu_flags"]) == ("Test CPU 9000", ["avx512_bf16"])
    assert "(Test CPU 9000; flags avx512_bf16)" in bench.markdown(result)
