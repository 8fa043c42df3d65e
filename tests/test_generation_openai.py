"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1 that injects faults.

A prompt (or the last chat message) ``"<fault>:<k>"`` makes the server fail k
times in that way before answering normally; ``"always500"`` never succeeds;
``"after:<other>"`` is taken in only once ``<other>`` has been, so a test can make
the server see concurrent requests in an order other than the one they were made in.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stepdpo.errors import ConfigError
from stepdpo.generation.base import Generator, GeneratorConfig, SamplingParams
from stepdpo.generation.registry import build_generator
from stepdpo.generation.openai import OpenAIGenerator, _retry_after_seconds
from stepdpo.seeding import completion_seed, derive_seed

KEY = "sk-test-SECRET-5f3a9c"
KEY_ENV = "STEPDPO_TEST_OPENAI_KEY"
TIMEOUT_S = 30.0
"""The client's request timeout: long, so that a slow machine never times out a request the test expects to succeed."""
HANG_TIMEOUT_S = 1.0
"""The timeout of the tests that make the server hang (it never answers those requests, however long the client waits)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Condition()
        self.seen: Counter[str] = Counter()
        self.requests: list[dict] = []
        self.auth: set[str | None] = set()
        self.release = threading.Event()
        """Set at teardown: hanging handlers return."""

    def handle_error(self, request, client_address):
        """Faults close sockets under the handler on purpose; nothing to report."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = payload["prompt"] if "prompt" in payload else payload["messages"][-1]["content"]
        with self.server.lock:
            if key.startswith("after:"):
                self.server.lock.wait_for(lambda: self.server.seen[key.removeprefix("after:")] > 0, timeout=60)
            self.server.requests.append(payload)
            self.server.auth.add(self.headers.get("Authorization"))
            self.server.seen[key] += 1
            count = self.server.seen[key]
            self.server.lock.notify_all()
        fault, _, times = key.partition(":")
        failing = fault == "always500" or (times.isdigit() and count <= int(times))
        if failing and self._fault(fault):
            return
        n = 1 if fault == "fewer" else payload["n"]
        if "messages" in payload:
            choices = [{"index": i, "message": {"role": "assistant", "content": f"reply {i} to {key}"}, "finish_reason": "stop"} for i in range(n)]
        else:
            seed = payload.get("seed")
            choices = [{"index": i, "text": f"{key} -> {i} seed={seed}", "finish_reason": "length"} for i in range(n)]
        self._send(200, json.dumps({"choices": choices, "usage": {"completion_tokens": 4 * n}}).encode())

    def _fault(self, fault: str) -> bool:
        """Misbehave as asked; False when the fault name is not a fault (answer normally)."""
        if fault == "429after":
            self._send(429, b'{"error": "slow down"}', {"Retry-After": "2"})
        elif fault == "429":
            self._send(429, b'{"error": "slow down"}')
        elif fault in ("500", "always500"):
            self._send(500, b'{"error": "boom"}')
        elif fault == "503":
            self._send(503, b'{"error": "unavailable"}')
        elif fault == "400":
            # A server that echoes the request headers into its error body: the key must be scrubbed.
            self._send(400, json.dumps({"error": f"bad request, auth was {self.headers.get('Authorization')}"}).encode())
        elif fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif fault == "hang":
            self.server.release.wait()
            self.close_connection = True
        elif fault == "malformed":
            self._send(200, b'{"choices": [{"text": "trunc')
        elif fault == "empty":
            self._send(200, b'{"choices": []}')
        else:
            return False
        return True


@pytest.fixture()
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def make(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    made: list[OpenAIGenerator] = []

    def build(max_retries: int = 3, sleeps: list[float] | None = None, timeout_s: float = TIMEOUT_S) -> OpenAIGenerator:
        config = GeneratorConfig(
            backend="openai",
            model="test-model",
            base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
            api_key_env=KEY_ENV,
            max_concurrency=4,
            request_timeout_s=timeout_s,
            max_retries=max_retries,
            retry_backoff_s=0.01,
            backoff_max_s=0.05,
        )
        sleep = (lambda s: (sleeps.append(s), time.sleep(min(s, 0.05)))) if sleeps is not None else time.sleep
        gen = OpenAIGenerator(config, sleep=sleep)
        made.append(gen)
        return gen

    yield build
    for gen in made:
        gen.close()


def test_built_by_config_and_is_a_generator(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    gen = build_generator(GeneratorConfig(backend="openai", api_key_env=KEY_ENV))
    assert isinstance(gen, Generator)
    assert KEY not in repr(gen) and KEY not in repr(vars(gen))


def test_many_prompts_in_order_with_n_and_key_sent(make, server):
    gen = make()
    prompts = [f"p{i}" for i in range(20)]
    out = gen.generate(prompts, SamplingParams(n=2, temperature=0.7, max_new_tokens=16, stop=("\n\n",), seed=3))
    # Without per-prompt seeds, SamplingParams.seed seeds prompt i by its position.
    seeds = [derive_seed(3, "call", "", i) for i in range(20)]
    assert len(set(seeds)) == 20
    assert [[c.text for c in cs] for cs in out] == [[f"p{i} -> 0 seed={seeds[i]}", f"p{i} -> 1 seed={seeds[i]}"] for i in range(20)]
    assert all(c.num_tokens == 4 and c.finish_reason == "length" for cs in out for c in cs)
    assert server.auth == {f"Bearer {KEY}"}
    # Requests are sent concurrently, so the server sees them in any order: check every one.
    assert sorted(r["prompt"] for r in server.requests) == sorted(prompts)
    for sent in server.requests:
        assert sent["model"] == "test-model" and sent["n"] == 2 and sent["max_tokens"] == 16
        assert sent["stop"] == ["\n\n"] and sent["temperature"] == 0.7 and "top_k" not in sent


def test_each_request_carries_its_prompts_seed(make, server):
    """Identical prompts with their own seeds are separate requests with separate seeds (one seed for all would
    make a server that honours seeds return identical samples)."""
    gen = make()
    out = gen.generate(["same", "same", "other"], SamplingParams(temperature=1.0), seeds=[11, 12, 11])
    assert [cs[0].text for cs in out] == ["same -> 0 seed=11", "same -> 0 seed=12", "other -> 0 seed=11"]
    assert sorted(r["seed"] for r in server.requests) == [11, 11, 12]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        gen.generate(["a", "b", "c"], SamplingParams(temperature=1.0), seeds=[1, 2])


@pytest.mark.parametrize("fault", ["429", "500", "503", "reset", "hang", "malformed", "empty"])
def test_transient_faults_are_retried(make, server, fault):
    sleeps: list[float] = []
    gen = make(sleeps=sleeps, timeout_s=HANG_TIMEOUT_S if fault == "hang" else TIMEOUT_S)
    [[completion]] = gen.generate([f"{fault}:2"], SamplingParams())
    assert completion.text == f"{fault}:2 -> 0 seed=None"
    assert server.seen[f"{fault}:2"] == 3
    assert len(sleeps) == 2 and all(0 <= s <= 0.05 for s in sleeps)


def test_retry_after_is_honoured(make, server):
    sleeps: list[float] = []
    gen = make(sleeps=sleeps)
    [[completion]] = gen.generate(["429after:1"], SamplingParams())
    assert completion.finish_reason == "length"
    assert sleeps == [2.0]


def test_exhausted_retries_give_error_completions(make, server):
    gen = make(max_retries=2, sleeps=[])
    out = gen.generate(["always500", "fine"], SamplingParams(n=2))
    assert [c.finish_reason for c in out[0]] == ["error: HTTP 500 (after 3 attempts)"] * 2
    assert all(c.text == "" and c.num_tokens == 0 for c in out[0])
    assert out[0][0] is not out[0][1]
    assert [c.text for c in out[1]] == ["fine -> 0 seed=None", "fine -> 1 seed=None"]
    assert server.seen["always500"] == 3


def test_client_errors_are_not_retried(make, server):
    gen = make(sleeps=[])
    [[completion]] = gen.generate(["400:5"], SamplingParams())
    assert completion.finish_reason.startswith("error: HTTP 400: ")
    assert completion.finish_reason.endswith("(after 1 attempt)")
    assert server.seen["400:5"] == 1


def test_fewer_choices_fall_back_to_single_requests(make, server):
    gen = make()
    [completions] = gen.generate(["fewer"], SamplingParams(n=3, temperature=1.0), seeds=[10])
    # The missing choices are asked for one at a time, each with its own completion seed.
    expected = [10, completion_seed(10, 1), completion_seed(10, 2)]
    assert [c.text for c in completions] == [f"fewer -> 0 seed={seed}" for seed in expected]
    assert [r["n"] for r in server.requests] == [3, 1, 1]


def test_chat(make, server):
    gen = make(sleeps=[])
    # The server takes the first conversation in only after the second: replies still come back in input order.
    first = [{"role": "system", "content": "judge"}, {"role": "user", "content": "after:503:1"}]
    conversations = [first, [{"role": "user", "content": "503:1"}]]
    out = gen.chat(conversations, SamplingParams(n=2, max_new_tokens=8))
    assert [[c.text for c in cs] for cs in out] == [["reply 0 to after:503:1", "reply 1 to after:503:1"],
                                                    ["reply 0 to 503:1", "reply 1 to 503:1"]]
    # No stop strings were asked for, so the server's "stop" can only be the end of the model's turn.
    assert all(c.finish_reason == "eos" and c.num_tokens == 4 for cs in out for c in cs)
    # Requests are sent concurrently, in no fixed order: compare them as a set.
    assert server.requests[0]["messages"] != first
    assert sorted(json.dumps(r["messages"]) for r in server.requests) == sorted(
        json.dumps(c) for c in [conversations[0], conversations[1], conversations[1]])


def test_key_never_logged_or_shown(make, server, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    gen = make(max_retries=1, sleeps=[], timeout_s=HANG_TIMEOUT_S)
    prompts = ["429after:5", "429:5", "500:5", "503:5", "reset:5", "hang:5", "malformed:5", "empty:5", "400:5", "always500"]
    out = gen.generate(prompts, SamplingParams(n=2))
    reasons = [c.finish_reason for cs in out for c in cs]
    assert all(r.startswith("error: ") for r in reasons)
    out += gen.chat([[{"role": "user", "content": "400:1"}]], SamplingParams())
    errors = []
    for bad in (SamplingParams(n=0),):
        with pytest.raises(ConfigError) as info:
            gen.generate(["x"], bad)
        errors.append(f"{info.value!s} {info.value!r}")
    captured = capsys.readouterr()
    everything = "\n".join(
        [caplog.text, captured.out, captured.err, repr(gen), str(vars(gen)), repr(out), *errors]
        + [r.getMessage() + str(r.args) for r in caplog.records]
    )
    assert "HTTP 400" in everything and "***" in everything  # the echoed key was there, and scrubbed
    assert KEY not in everything


def test_retry_after_parsing():
    assert _retry_after_seconds("3") == 3.0
    assert _retry_after_seconds("0.5") == 0.5
    assert _retry_after_seconds(None) is None
    assert _retry_after_seconds("soon") is None
    assert _retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    ("choice", "asked_stop", "expected"),
    [
        # vLLM's server names what stopped it: null = end of sequence, a string = that stop string, an int = a stop token.
        ({"text": "a", "finish_reason": "stop", "stop_reason": None}, True, ("eos", None)),
        ({"text": "a", "finish_reason": "stop", "stop_reason": "\nStep "}, True, ("stop", "\nStep ")),
        ({"text": "a", "finish_reason": "stop", "stop_reason": 2}, True, ("eos", None)),
        # Other servers: without stop strings only EOS can stop; with them, "stop" cannot be told apart.
        ({"text": "a", "finish_reason": "stop"}, False, ("eos", None)),
        ({"text": "a", "finish_reason": "stop"}, True, ("stop", None)),
        ({"text": "a", "finish_reason": "eos_token"}, True, ("eos", None)),
        ({"text": "a", "finish_reason": "length", "stop_reason": None}, True, ("length", None)),
        ({"text": "a", "finish_reason": None}, False, ("length", None)),
        ({"text": "a", "finish_reason": "content_filter"}, False, ("content_filter", None)),
    ],
)
def test_finish_reason_tells_eos_from_a_stop_string_where_the_server_says(choice, asked_stop, expected):
    completion = OpenAIGenerator._completion(choice, {"completion_tokens": 3}, 1, asked_stop)
    assert (completion.finish_reason, completion.stop_string) == expected
