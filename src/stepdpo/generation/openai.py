"""Any OpenAI-compatible server as a generator (``/v1/completions``) and chat backend (``/v1/chat/completions``).

Requests run ``max_concurrency`` at a time. A request that times out, cannot
connect, is reset, gets 429 or 5xx, or returns a body that is not a usable
completion (malformed JSON, no choices) is retried up to ``max_retries`` times
with exponential backoff (``retry_backoff_s * 2**attempt``, or the server's
``Retry-After`` when it sends one, capped at ``MAX_WAIT_S``). After the last
retry the completion comes back with ``finish_reason='error: <reason>'`` and
empty text, so callers record the failure per item and keep finished work.
The API key is read from the environment variable ``api_key_env`` and only
ever placed in the Authorization header: it is never logged or returned.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from stepdpo.generation.base import Completion, GeneratorConfig, SamplingParams

log = logging.getLogger(__name__)

MAX_WAIT_S = 60.0
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class RequestFailed(Exception):
    """One attempt failed; ``retry`` says whether another attempt may succeed; ``wait_s`` is the server's Retry-After."""

    def __init__(self, reason: str, retry: bool, wait_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.wait_s = wait_s


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class OpenAIGenerator:
    """Generation through an OpenAI-compatible HTTP API with bounded retries."""

    def __init__(self, config: GeneratorConfig):
        self.config = config
        self.name = f"openai:{config.model}"
        key = os.environ.get(config.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=config.base_url.rstrip("/") + "/", headers=headers,
                                    timeout=httpx.Timeout(config.request_timeout_s))

    def _post_once(self, endpoint: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            response = self._client.post(endpoint, json=body)
        except httpx.TimeoutException:
            raise RequestFailed("timeout", retry=True) from None
        except httpx.TransportError as err:
            raise RequestFailed(f"connection error ({type(err).__name__})", retry=True) from None
        if response.status_code != 200:
            retry = response.status_code in RETRY_STATUS
            raise RequestFailed(f"HTTP {response.status_code}", retry=retry, wait_s=_retry_after(response))
        try:
            choices = response.json()["choices"]
        except (ValueError, KeyError, TypeError):
            raise RequestFailed("malformed response body", retry=True) from None
        if not isinstance(choices, list) or not choices:
            raise RequestFailed("no choices in response", retry=True)
        return choices

    def _post(self, endpoint: str, body: dict[str, Any]) -> list[dict[str, Any]] | str:
        """The response's choices, or the reason of the last failure."""
        for attempt in range(self.config.max_retries + 1):
            try:
                return self._post_once(endpoint, body)
            except RequestFailed as err:
                if not err.retry or attempt == self.config.max_retries:
                    log.warning("%s request failed after %d attempt(s): %s", endpoint, attempt + 1, err.reason)
                    return err.reason
                wait = err.wait_s if err.wait_s is not None else self.config.retry_backoff_s * 2 ** attempt
                time.sleep(min(wait, MAX_WAIT_S))
        raise AssertionError("unreachable")

    def _completions(self, choices: list[dict[str, Any]] | str, n: int, text_of) -> list[Completion]:
        if isinstance(choices, str):
            return [Completion(text="", num_tokens=0, finish_reason=f"error: {choices}") for _ in range(n)]
        out = []
        for choice in sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)[:n]:
            text = text_of(choice) if isinstance(choice, dict) else None
            if not isinstance(text, str):
                out.append(Completion(text="", num_tokens=0, finish_reason="error: choice without text"))
                continue
            finish = choice.get("finish_reason") or "stop"
            out.append(Completion(text=text, num_tokens=len(text.split()), finish_reason="length" if finish == "length" else "stop"))
        out += [Completion(text="", num_tokens=0, finish_reason="error: fewer choices than requested")] * (n - len(out))
        return out

    def _params(self, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.config.model, "n": params.n, "temperature": params.temperature,
                                "top_p": params.top_p, "max_tokens": params.max_new_tokens}
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _map(self, fn, items: list) -> list:
        with ThreadPoolExecutor(max_workers=max(1, self.config.max_concurrency)) as pool:
            return list(pool.map(fn, items))

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions of each prompt (``/completions``), in prompt order."""
        def one(prompt: str) -> list[Completion]:
            choices = self._post("completions", {**self._params(params), "prompt": prompt})
            return self._completions(choices, params.n, lambda c: c.get("text"))
        return self._map(one, prompts)

    def chat(self, conversations: list[list[dict]], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` replies to each conversation (``/chat/completions``), in order."""
        def one(messages: list[dict]) -> list[Completion]:
            choices = self._post("chat/completions", {**self._params(params), "messages": messages})
            return self._completions(choices, params.n, lambda c: (c.get("message") or {}).get("content"))
        return self._map(one, conversations)
