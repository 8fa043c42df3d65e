"""The generation interface: given prompts, return n completions each.

Every stage (sampling, rollouts, rectification, evaluation) talks to a
:class:`Generator` and never knows which backend runs it. Prompts are complete
texts (chat template and step priming already applied by
:class:`stepdpo.steps.PromptFormat`); completions are the continuation only.

Seeds are per prompt. ``generate(prompts, params, seeds)`` takes one seed per
prompt, and completion ``j`` of prompt ``i`` is drawn with
``completion_seed(seeds[i], j)`` (:mod:`stepdpo.seeding`): a prompt's samples
depend on its seed alone, not on the other prompts of the call, their order or
the batch size, and identical prompts with different seeds get different
samples. Stages derive each prompt's seed from the record it makes
(:func:`stepdpo.seeding.derive_seed`). Without ``seeds``, ``params.seed`` (when
set) seeds prompt ``i`` by its position in the call, which is reproducible for
the same call but not across batchings; with neither, sampling is unseeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence, runtime_checkable

from stepdpo.config import OptionCheck
from stepdpo.seeding import derive_seed
from stepdpo.steps import PromptFormat


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy decoding."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    """Generation ends at the first of these strings; the stop string is not included."""
    seed: int | None = None
    """Seeds a call whose ``generate`` gets no per-prompt ``seeds``: prompt i by its position (see the module docstring)."""


FINISH_EOS = "eos"
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass
class Completion:
    text: str
    num_tokens: int
    """Generated tokens (after truncation at a stop string, when the backend can tell)."""
    finish_reason: str = FINISH_LENGTH
    """Why generation ended: 'eos' (the model's end-of-sequence token), 'stop' (one of the
    request's stop strings; the text excludes it), 'length' (max_new_tokens), or 'error: ...'.
    An OpenAI-compatible server that does not say which (only vLLM's does) reports 'stop' for
    both when stop strings were asked for (see :mod:`stepdpo.generation.openai`)."""
    stop_string: str | None = None
    """The stop string that ended it, when finish_reason is 'stop' and the backend knows which."""


@runtime_checkable
class Generator(Protocol):
    """Anything that can continue prompts."""

    name: str
    """A short description for provenance, e.g. 'hf:/path/to/model'."""

    def generate(self, prompts: list[str], params: SamplingParams, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """Return, for each prompt in order, ``params.n`` completions; ``seeds``: one per prompt (see the module docstring)."""
        ...


def prompt_seeds(prompts: Sequence[str], params: SamplingParams, seeds: Sequence[int] | None) -> list[int | None]:
    """The seed of each prompt of a call: ``seeds``, else ``params.seed`` keyed by position, else None (unseeded)."""
    if seeds is not None:
        if params.seed is not None:
            raise ValueError("give per-prompt seeds or SamplingParams.seed, not both")
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        return [int(seed) for seed in seeds]
    if params.seed is None:
        return [None] * len(prompts)
    return [derive_seed(params.seed, "call", "", index) for index in range(len(prompts))]


@dataclass
class GeneratorConfig:
    """Which backend generates, and its settings. Shared by every stage that samples."""

    backend: Literal["hf", "vllm", "openai"] = field(default="hf", metadata={"help": "Generation backend: hf (transformers, CPU/GPU), vllm (GPU), openai (any OpenAI-compatible server)."})
    model: str = field(default="smollm2-135m", metadata={"help": "Hugging Face id, local path, or 'smollm2-135m' (the embedded default)."})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={"help": "Weights/compute dtype; 'auto' = bfloat16 autocast where the CPU/GPU supports it, else float32."})
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda', 'cuda:1', ... (hf backend)."})
    batch_size: int = field(default=32, metadata={"help": "Sequences per forward batch (hf backend)."})
    decode_loop: Literal["own", "generate"] = field(default="own", metadata={"help": "hf backend: 'own' = stepdpo's decoding loop (finished rows leave the batch, the KV cache grows in place; models it cannot run fall back to generate), 'generate' = transformers' model.generate."})
    prompt_style: Literal["chat", "plain"] = field(default="chat", metadata={"help": "chat: the model's chat template; plain: 'Question: ... Answer:' for base models."})
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "OpenAI-compatible server URL (openai backend)."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key (never logged or written)."})
    max_concurrency: int = field(default=8, metadata={"help": "Requests in flight at once (openai backend)."})
    request_timeout_s: float = field(default=120.0, metadata={"help": "Per-request timeout in seconds (openai backend)."})
    max_retries: int = field(default=6, metadata={"help": "Retries on timeouts, 429 and 5xx (openai backend)."})
    retry_backoff_s: float = field(default=1.0, metadata={"help": "First wait before a retry, doubled each retry, with full jitter; a server's Retry-After wins (openai backend)."})
    backoff_max_s: float = field(default=60.0, metadata={"help": "Longest retry delay in seconds, unless the server's Retry-After asks for more (openai backend)."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallelism."})
    data_parallel_size: int = field(default=1, metadata={"help": "vLLM data parallelism: engine replicas, one process per group of tensor_parallel_size GPUs, each generating its share of the prompts."})
    worker_timeout_s: float = field(default=1800.0, metadata={"help": "vLLM data parallelism: seconds a worker may take to start its engine or to answer one call before the run fails naming its GPUs."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM share of GPU memory."})
    enable_prefix_caching: bool = field(default=True, metadata={"help": "vLLM prefix caching (rollouts share long prefixes)."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.not_empty("model")
        check.at_least(1, "batch_size", "max_concurrency", "tensor_parallel_size", "data_parallel_size")
        check.at_least(0, "max_retries", "retry_backoff_s", "backoff_max_s")
        check.above(0, "request_timeout_s", "worker_timeout_s")
        check.share("gpu_memory_utilization", zero=False)


def prompt_format(config: GeneratorConfig, instruction: str | None = None) -> PromptFormat:
    """The prompt format for the configured model (its own chat template, or plain)."""
    kwargs = {} if instruction is None else {"instruction": instruction}
    if config.prompt_style == "plain":
        return PromptFormat(style="plain", **kwargs)
    from stepdpo.models import load_tokenizer

    return PromptFormat(style="chat", chat_template_owner=load_tokenizer(config.model), **kwargs)


def close_generator(generator: object) -> None:
    """Release what a generator holds (a vLLM engine's GPU memory, worker processes, connections).

    Backends that hold nothing have no ``close``; calling this on them (or on None) does nothing.
    """
    close = getattr(generator, "close", None)
    if callable(close):
        close()
