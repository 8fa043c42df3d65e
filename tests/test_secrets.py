"""Secrets stay secret: the API key reaches the server's Authorization header and nowhere else."""

from __future__ import annotations

import secrets

from reliability_helpers import FaultServer, judge_args, prepare_judge_run, run_stepdpo


def test_api_key_never_written_or_printed(tmp_path):
    canary = "sk-canary-" + secrets.token_hex(16)
    env = {"OPENAI_API_KEY": canary}
    run_dir = tmp_path / "run"
    prepare_judge_run(run_dir, 4)
    outputs = []
    script = ["500", "500", "500", "429", "reset", "hang", "bad-json", "ok", "wrong-format", "ok", "ok"]
    with FaultServer(script, default="503") as server:
        first = run_stepdpo(judge_args(run_dir, server.base_url), env=env, timeout_s=120)
        outputs += [first.stdout, first.stderr]
        assert first.returncode == 0, first.stderr
        # A bad option too: error paths print configs and messages.
        bad = run_stepdpo(judge_args(run_dir, server.base_url, **{"--generator.max-retries": "many"}), env=env, timeout_s=120)
        outputs += [bad.stdout, bad.stderr]
        assert bad.returncode != 0
        assert server.requests and all(auth == f"Bearer {canary}" for _, auth in server.requests)  # the key was really used
    report = run_stepdpo(["report", str(run_dir)], env=env, timeout_s=300)
    outputs += [report.stdout, report.stderr]
    assert report.returncode == 0, report.stderr
    assert (run_dir / "located_failed.jsonl").is_file()  # failures were recorded, and must not carry the key either
    for text in outputs:
        assert canary not in text
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), f"API key written to {path}"
