"""Helpers of the reliability tests: run a CLI stage as a child process, kill it at a chosen moment, read outputs strictly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from stepdpo.records import Problem, atomic_write_text, record_to_dict

CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
             "PYTHONUNBUFFERED": "1"}


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **CHILD_ENV, **(extra or {})}


def stepdpo_argv(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "stepdpo.cli", *args]


def run_stepdpo(args: Sequence[str], env: dict[str, str] | None = None, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """Run ``stepdpo ARGS`` to completion in a child process, capturing text output."""
    return subprocess.run(stepdpo_argv(args), env=child_env(env), capture_output=True, text=True, timeout=timeout_s)


def complete_lines(path: Path) -> int:
    """Newline-terminated lines in ``path`` (0 when it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_when(args: Sequence[str], ready: Callable[[], bool], env: dict[str, str] | None = None, timeout_s: float = 300,
              log_path: Path | None = None) -> bool:
    """Start ``stepdpo ARGS``; SIGKILL it as soon as ``ready()`` holds. Returns True if killed, False if it finished first."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        child = subprocess.Popen(stepdpo_argv(args), env=child_env(env), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while child.poll() is None:
            if ready():
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                return True
            if time.monotonic() > deadline:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                raise TimeoutError(f"stepdpo {' '.join(args[:1])} neither finished nor reached the kill point in {timeout_s} s")
            time.sleep(0.005)
        assert child.returncode == 0, f"stepdpo {args[0]} failed with exit {child.returncode}"
        return False
    finally:
        if log_path:
            log.close()


def strict_lines(path: Path) -> list[dict]:
    """Every line of a finished JSONL file, parsed; fails on a torn or blank line."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"{path}: last line is not terminated"
    return [json.loads(line) for line in raw.decode("utf-8").split("\n")[:-1]]


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def toy_problems(count: int) -> list[Problem]:
    return [Problem(id=f"toy-{i}", question=f"Take {i} + 3, then multiply by 4.", answer=str((i + 3) * 4), source="toy:train",
                    solution=f"Step 1: {i} + 3 = {i + 3}\nStep 2: {i + 3} * 4 = {(i + 3) * 4}\nThe answer is: \\boxed{{{(i + 3) * 4}}}")
            for i in range(count)]


def wrong_sample_rows(problems: Sequence[Problem], prompt: str = "q") -> list[dict]:
    """One sample per problem, wrong at step 2, as samples.jsonl rows."""
    rows = []
    for p in problems:
        a = int(p.answer) // 4
        steps = [f"Step 1: {a - 3} + 3 = {a}\n", f"Step 2: {a} * 4 = {a * 4 + 1}\n", f"Step 3: The answer is: \\boxed{{{a * 4 + 1}}}"]
        rows.append({"id": f"{p.id}#0", "problem_id": p.id, "prompt": prompt, "response": "".join(steps), "steps": steps,
                     "predicted": str(a * 4 + 1), "correct": False})
    return rows


def problem_rows(problems: Sequence[Problem]) -> list[dict]:
    return [record_to_dict(p) for p in problems]


class FaultServer:
    """A local OpenAI-compatible chat server that answers each request with the next scripted behaviour.

    Behaviours: 'ok' (a verdict 'Step 1: correct; Step 2: incorrect'), '429', '429-retry-after', '500', '503',
    'reset' (connection closed without a reply), 'hang' (no reply until the server stops, so the client's timeout
    always fires, however slow the machine), 'bad-json', 'no-choices',
    'wrong-format' (a reply without a verdict). When the script runs out, ``default`` answers.
    """

    VERDICT = "The student multiplies wrongly in step 2.\nStep 1: correct; Step 2: incorrect"

    def __init__(self, script: list[str], default: str = "ok"):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.script = list(script)
        self.default = default
        self.release = threading.Event()
        self.requests: list[tuple[str, str]] = []  # (behaviour, Authorization header)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    behaviour = server.script.pop(0) if server.script else server.default
                    server.requests.append((behaviour, self.headers.get("Authorization", "")))

                def reply(text: str) -> bytes:
                    return json.dumps({"id": "x", "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}).encode()

                if behaviour == "ok":
                    self._send(200, reply(server.VERDICT))
                elif behaviour == "wrong-format":
                    self._send(200, reply("I think the second step is the culprit."))
                elif behaviour == "429":
                    self._send(429, b'{"error": "rate limited"}')
                elif behaviour == "429-retry-after":
                    self._send(429, b'{"error": "rate limited"}', {"Retry-After": "0.2"})
                elif behaviour in ("400", "500", "503"):
                    self._send(int(behaviour), b'{"error": "server error"}')
                elif behaviour == "bad-json":
                    self._send(200, b'{"choices": [{"message": ')
                elif behaviour == "no-choices":
                    self._send(200, b'{"id": "x", "choices": []}')
                elif behaviour == "hang":
                    server.release.wait()
                    self.close_connection = True
                elif behaviour == "reset":
                    import socket
                    import struct

                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                else:
                    raise ValueError(behaviour)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FaultServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def judge_args(run_dir: Path, base_url: str, **overrides: str) -> list[str]:
    """``stepdpo locate --localizer judge`` against ``base_url`` with small, bounded retry settings."""
    options = {"--generator.max-retries": "2", "--generator.retry-backoff-s": "0.01", "--generator.request-timeout-s": "5",
               "--generator.max-concurrency": "1", "--chunk-size": "2", **overrides}
    return ["locate", "--localizer", "judge", "--generator.backend", "openai", "--generator.base-url", base_url,
            "--generator.model", "judge", "--run-dir", str(run_dir), *[x for kv in options.items() for x in kv]]


def prepare_judge_run(run_dir: Path, count: int) -> list[dict]:
    """A run directory with ``count`` problems and one wrong sample each; returns the sample rows."""
    problems = toy_problems(count)
    write_jsonl(run_dir / "problems" / "train.jsonl", problem_rows(problems))
    samples = wrong_sample_rows(problems)
    write_jsonl(run_dir / "samples.jsonl", samples)
    return samples
