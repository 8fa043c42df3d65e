"""Any OpenAI-compatible server (vLLM serve, llama.cpp, TGI, hosted APIs).

``generate`` posts to ``/completions`` (prompts are complete texts), ``chat``
posts to ``/chat/completions`` (for LLM judges). Requests run in a thread pool
of ``max_concurrency``; timeouts, connection errors, 408/409/429 and 5xx responses,
malformed JSON and responses without choices are retried with exponential
backoff and full jitter (``retry_backoff_s * 2**retry``, capped at
``backoff_max_s``); a 429 or 503 with ``Retry-After`` waits what the server
asks instead.

Failures do not raise: when a request still fails after ``max_retries``
retries (or fails with a 4xx that retrying cannot fix), every completion it
was to produce comes back as ``Completion(text="", num_tokens=0,
finish_reason="error: <reason>")``. Callers record such items as failed and
can retry them later; the rest of the batch is kept.

The API key is read from the environment variable ``config.api_key_env`` at
construction, sent only in the ``Authorization`` header, and never logged,
put in an error message, or shown in ``repr``. Server-provided text that ends
up in a reason (a short excerpt of a 4xx body) is scrubbed of it too.

``top_k`` is not an OpenAI parameter; it is sent only when it is > 0 (vLLM's
server accepts it). Servers report completion tokens as a total per request:
with several choices in one response, each gets an even share of that total.

Seeds: each prompt's request carries its own ``seed`` (servers that honour it,
such as vLLM's, seed the request's choices from it); a choice the server did
not return is asked for alone with ``completion_seed(prompt seed, j)``.

Finish reasons: the OpenAI API reports ``stop`` both when the model ends its turn
and when a stop string is hit. vLLM's server says which in ``stop_reason`` (null:
end-of-sequence; a string: that stop string), and that is used; a request without
stop strings can only have ended at end-of-sequence (``eos``). From any other server
a request with stop strings that ends in ``stop`` stays ``stop`` with no
``stop_string``: it is not knowable which of the two happened, so stages that must
tell them apart (SCDPO's step-by-step continuation) work exactly only against vLLM.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import httpx

from stepdpo.errors import ConfigError
from stepdpo.generation.base import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Completion, GeneratorConfig, SamplingParams, prompt_seeds
from stepdpo.seeding import completion_seed

log = logging.getLogger(__name__)

_BODY_EXCERPT = 200
# Request timeout, conflict and rate limiting are transient; other 4xx are the client's fault.
_RETRY_STATUS = {408, 409, 429}


def _finish(finish: str, choice: dict, asked_stop: bool) -> tuple[str, str | None]:
    """(finish_reason, stop string) of one choice: the server's 'stop' split into 'eos' and 'stop' where knowable.

    The OpenAI API says 'stop' both for the end of the model's turn and for a stop string.
    vLLM's server adds ``stop_reason``: null for EOS, the stop string, or a stop token id
    (an EOS). TGI says 'eos_token' / 'stop_sequence'. Without such a field, a request that
    asked for no stop strings can only have stopped at EOS; one that asked for some stays
    'stop' with no stop string: EOS or a stop string, the server does not say.
    """
    if finish in ("eos", "eos_token"):
        return FINISH_EOS, None
    if finish == "stop_sequence":
        return FINISH_STOP, None
    if finish != "stop":
        return finish, None
    if "stop_reason" in choice:
        reason = choice["stop_reason"]
        return (FINISH_STOP, reason) if isinstance(reason, str) else (FINISH_EOS, None)
    return (FINISH_STOP, None) if asked_stop else (FINISH_EOS, None)


@dataclass
class _Failure(Exception):
    """One failed attempt: why, whether retrying may help, and how long the server asked us to wait."""

    reason: str
    retryable: bool
    retry_after: float | None = None


def _retry_after_seconds(value: str | None) -> float | None:
    """Parse ``Retry-After``: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Secret:
    """Holds a string whose repr and str never show it (safe in vars(), tracebacks with locals, debug dumps)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class OpenAIGenerator:
    """A :class:`~stepdpo.generation.base.Generator` talking to an OpenAI-compatible HTTP API."""

    def __init__(self, config: GeneratorConfig, sleep: Callable[[float], None] = time.sleep):
        if config.max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {config.max_concurrency}")
        if config.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {config.max_retries}")
        if config.request_timeout_s <= 0:
            raise ConfigError(f"request_timeout_s must be > 0, got {config.request_timeout_s}")
        self.config = config
        self.name = f"openai:{config.model}@{config.base_url}"
        key = os.environ.get(config.api_key_env)
        self._api_key = _Secret(key) if key else None
        self._sleep = sleep
        self._base_url = config.base_url.rstrip("/")
        # httpx.Client is thread-safe; one pool shared by the workers reuses connections.
        limits = httpx.Limits(max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency)
        self._http = httpx.Client(timeout=config.request_timeout_s, limits=limits)

    def __repr__(self) -> str:
        return f"OpenAIGenerator(model={self.config.model!r}, base_url={self.config.base_url!r})"

    # -- public API -------------------------------------------------------------------

    def generate(self, prompts: list[str], params: SamplingParams, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """``params.n`` completions per prompt from ``/completions``, in prompt order; ``seeds``: one per prompt."""
        return self._run("/completions", [{"prompt": p} for p in prompts], params, prompt_seeds(prompts, params, seeds))

    def chat(self, conversations: list[list[dict]], params: SamplingParams, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """``params.n`` assistant replies per conversation (a list of ``{"role", "content"}``) from ``/chat/completions``."""
        return self._run("/chat/completions", [{"messages": c} for c in conversations], params,
                         prompt_seeds(conversations, params, seeds))

    # -- internals --------------------------------------------------------------------

    def _run(self, endpoint: str, inputs: list[dict], params: SamplingParams, seeds: list[int | None]) -> list[list[Completion]]:
        from tqdm.auto import tqdm

        if params.n < 1:
            raise ConfigError(f"sampling n must be >= 1, got {params.n}")
        if not inputs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, len(inputs))) as pool:
            futures = [pool.submit(self._one_input, endpoint, item, params, seed) for item, seed in zip(inputs, seeds)]
            with tqdm(total=len(futures), desc=f"openai {endpoint}", unit="req", disable=len(futures) < 2, leave=False) as bar:
                for future in futures:
                    future.add_done_callback(lambda _: bar.update())
                return [future.result() for future in futures]

    def _one_input(self, endpoint: str, item: dict, params: SamplingParams, seed: int | None) -> list[Completion]:
        """n completions for one prompt/conversation: one request with ``n``, then single requests for missing choices."""
        completions = self._request(endpoint, item, params, params.n, seed)
        for extra in range(len(completions), params.n):
            completions.extend(self._request(endpoint, item, params, 1, None if seed is None else completion_seed(seed, extra)))
        return completions

    def _payload(self, item: dict, params: SamplingParams, n: int, seed: int | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.config.model,
            **item,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.top_k > 0:
            payload["top_k"] = params.top_k
        if params.stop:
            payload["stop"] = list(params.stop)
        if seed is not None:
            payload["seed"] = seed
        return payload

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def _request(self, endpoint: str, item: dict, params: SamplingParams, n: int, seed: int | None) -> list[Completion]:
        """POST once per attempt until success or retries run out; returns up to n completions (or n error completions)."""
        payload = self._payload(item, params, n, seed)
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(endpoint, payload, headers, n)
            except _Failure as failure:
                reason = self._scrub(failure.reason)
                if not failure.retryable or attempt == attempts - 1:
                    tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                    log.warning("%s%s failed after %s: %s", self._base_url, endpoint, tries, reason)
                    return [Completion(text="", num_tokens=0, finish_reason=f"error: {reason} (after {tries})") for _ in range(n)]
                delay = self._delay(attempt, failure.retry_after)
                log.info("%s%s: %s; retry %d/%d in %.2fs", self._base_url, endpoint, reason, attempt + 1, self.config.max_retries, delay)
                self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns")

    def _delay(self, retry: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter, or the server's Retry-After when it gave one."""
        if retry_after is not None:
            return retry_after
        cap = min(self.config.backoff_max_s, self.config.retry_backoff_s * 2**retry)
        return random.uniform(0, cap)

    def _attempt(self, endpoint: str, payload: dict, headers: dict, n: int) -> list[Completion]:
        try:
            response = self._http.post(self._base_url + endpoint, json=payload, headers=headers)
        except httpx.TimeoutException:
            raise _Failure(f"timeout after {self.config.request_timeout_s:g}s", retryable=True) from None
        except httpx.TransportError as err:
            raise _Failure(f"connection error ({type(err).__name__})", retryable=True) from None
        status = response.status_code
        if status in _RETRY_STATUS or status >= 500:
            retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            raise _Failure(f"HTTP {status}", retryable=True, retry_after=retry_after)
        if status >= 400:
            excerpt = " ".join(response.text[:_BODY_EXCERPT].split())
            raise _Failure(f"HTTP {status}: {excerpt}", retryable=False)
        try:
            body = response.json()
            choices = body["choices"]
            if not isinstance(choices, list):
                raise TypeError("choices is not a list")
            usage = body.get("usage") or {}
            completions = [self._completion(choice, usage, len(choices), "stop" in payload) for choice in choices[:n]]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise _Failure(f"malformed response ({type(err).__name__})", retryable=True) from None
        if not completions:
            raise _Failure("no choices in response", retryable=True)
        return completions

    @staticmethod
    def _completion(choice: dict, usage: dict, num_choices: int, asked_stop: bool) -> Completion:
        if "message" in choice:
            text = choice["message"].get("content") or ""
        else:
            text = choice["text"]
        if not isinstance(text, str):
            raise TypeError("completion text is not a string")
        total = usage.get("completion_tokens")
        tokens = int(total) // num_choices if isinstance(total, (int, float)) else 0
        finish = str(choice.get("finish_reason") or FINISH_LENGTH)
        finish, stop_string = _finish(finish, choice, asked_stop)
        return Completion(text=text, num_tokens=tokens, finish_reason=finish, stop_string=stop_string)

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key.reveal(), "***") if self._api_key else text
