"""The judge API misbehaves: bounded retries, no finished work lost, failures recorded per item, reruns redo only those."""

from __future__ import annotations

import json

from reliability_helpers import FaultServer, judge_args, prepare_judge_run, strict_lines
from stepdpo import cli

# With max_retries=2 each item gets 3 attempts; max_concurrency=1 makes the server see them in this order.
PHASE_1 = [
    "429", "429-retry-after", "ok",       # toy-0: rate limited twice, then answered -> located
    "500", "503", "reset",                # toy-1: fails every attempt -> failed
    "hang", "bad-json", "no-choices",     # toy-2: timeout, malformed body, empty choice list -> failed
    "wrong-format",                       # toy-3: answered without a verdict -> decided 'unparseable', not retried
    "503", "ok",                          # toy-4: one 5xx, then answered -> located
]


def test_judge_faults_are_retried_recorded_and_resumed(tmp_path, capsys):
    run_dir = tmp_path / "run"
    prepare_judge_run(run_dir, 5)
    with FaultServer(PHASE_1, default="500") as server:
        assert cli.main(judge_args(run_dir, server.base_url)) == 0
        assert [b for b, _ in server.requests] == PHASE_1  # every retry bounded: exactly 3 attempts at most per item

    located = {r["sample_id"]: r for r in strict_lines(run_dir / "located.jsonl")}
    assert set(located) == {"toy-0#0", "toy-3#0", "toy-4#0"}
    assert located["toy-0#0"]["first_wrong_step"] == 2 and located["toy-0#0"]["status"] == "ok"
    assert located["toy-4#0"]["first_wrong_step"] == 2
    assert located["toy-3#0"]["status"] == "unparseable" and located["toy-3#0"]["first_wrong_step"] is None
    failed = {r["sample_id"]: r for r in strict_lines(run_dir / "located_failed.jsonl")}
    assert set(failed) == {"toy-1#0", "toy-2#0"}
    assert failed["toy-1#0"]["status"].startswith("failed") and "connection" in failed["toy-1#0"]["status"]
    assert "no choices" in failed["toy-2#0"]["status"]
    funnel = json.loads((run_dir / "funnel" / "locate.json").read_text())
    assert json.dumps(funnel).count("failed") >= 1

    # The server is healthy now: a rerun asks only about the two failed items and keeps the earlier decisions.
    before = (run_dir / "located.jsonl").read_bytes()
    with FaultServer([], default="ok") as server:
        assert cli.main(judge_args(run_dir, server.base_url)) == 0
        assert len(server.requests) == 2
    after = (run_dir / "located.jsonl").read_bytes()
    assert after.startswith(before)
    located = {r["sample_id"]: r for r in strict_lines(run_dir / "located.jsonl")}
    assert set(located) == {f"toy-{i}#0" for i in range(5)}
    assert all(located[f"toy-{i}#0"]["first_wrong_step"] == 2 for i in (1, 2))

    # A third run has nothing left to do.
    with FaultServer([], default="ok") as server:
        assert cli.main(judge_args(run_dir, server.base_url)) == 0
        assert server.requests == []


def test_non_retryable_status_fails_at_once(tmp_path, capsys):
    """A 400 is the client's fault: no retries, the item is recorded as failed with the status."""
    run_dir = tmp_path / "run"
    prepare_judge_run(run_dir, 1)
    with FaultServer([], default="400") as server:
        server.script = []
        assert cli.main(judge_args(run_dir, server.base_url)) == 0
        assert len(server.requests) == 1
    failed = strict_lines(run_dir / "located_failed.jsonl")
    assert [r["sample_id"] for r in failed] == ["toy-0#0"] and "HTTP 400" in failed[0]["status"]
