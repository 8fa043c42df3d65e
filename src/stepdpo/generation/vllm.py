"""The vLLM backend (GPU): offline ``vllm.LLM`` with prefix caching for rollouts.

vLLM is an optional extra (``pip install vllm``); it is imported when the
generator is built. Prompts are tokenized here without special tokens (the
chat template already holds them) and handed to vLLM as token ids, so that a
tokenizer that adds BOS does not add a second one.

``num_tokens`` is ``len(output.token_ids)``: every generated token, including
the end-of-sequence token or the tokens of a stop string (whose text vLLM
removes from the output).

Seeds: every request gets its own ``vllm.SamplingParams`` with its prompt's
seed (``LLM.generate`` takes one per prompt), and vLLM seeds each request's
sampling on its own, whatever else is in the batch. For ``n > 1`` vLLM splits
a request into n children and seeds child j with ``seed + j`` itself.
"""

from __future__ import annotations

from typing import Any, Sequence

from stepdpo.errors import ConfigError
from stepdpo.generation.base import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Completion, GeneratorConfig, SamplingParams, prompt_seeds


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ConfigError("backend 'vllm' needs the vllm package (pip install vllm) and a CUDA GPU") from None
    return vllm


class VLLMGenerator:
    """A :class:`~stepdpo.generation.base.Generator` over ``vllm.LLM``."""

    def __init__(self, config: GeneratorConfig):
        from stepdpo.models import resolve_model

        vllm = _import_vllm()
        kwargs: dict[str, Any] = {
            "model": resolve_model(config.model),
            "tensor_parallel_size": config.tensor_parallel_size,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            "enable_prefix_caching": config.enable_prefix_caching,
            # 'auto' follows the checkpoint, and the converted embedded model is stored in float32.
            "dtype": "bfloat16" if config.dtype == "auto" else config.dtype,
        }
        if config.data_parallel_size > 1:
            # vLLM refuses LLM(data_parallel_size=N) in one process: build_generator runs one of these per GPU group.
            raise ConfigError(f"data_parallel_size={config.data_parallel_size}: VLLMGenerator is one replica; use build_generator, which runs data parallelism as worker processes")
        self.config = config
        self.name = f"vllm:{config.model}"
        self.device, self.compute_dtype = "cuda", kwargs["dtype"]  # recorded in results (hardware.describe)
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self._vllm = vllm

    def sampling_params(self, params: SamplingParams, seed: int | None = None) -> Any:
        """Our :class:`SamplingParams` as vLLM's for one request seeded with ``seed`` (top_k -1 = off;
        temperature 0 = greedy, one sequence: vLLM refuses n > 1)."""
        return self._vllm.SamplingParams(
            n=params.n if params.temperature > 0 else 1,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            top_k=params.top_k if params.top_k > 0 and params.temperature > 0 else -1,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            seed=seed,
        )

    def generate(self, prompts: list[str], params: SamplingParams, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in prompt order (vLLM schedules the batch itself)."""
        if params.n < 1:
            raise ConfigError(f"sampling n must be >= 1, got {params.n}")
        if not prompts:
            return []
        token_prompts = [{"prompt_token_ids": self.tokenizer.encode(p, add_special_tokens=False)} for p in prompts]
        request_params = [self.sampling_params(params, seed) for seed in prompt_seeds(prompts, params, seeds)]
        outputs = self.llm.generate(token_prompts, request_params, use_tqdm=True)
        if params.temperature > 0:
            return [[_completion(out) for out in request.outputs] for request in outputs]
        # Greedy: vLLM decodes one sequence; the n answers are that one, as separate objects (as the hf backend does).
        return [[_completion(request.outputs[0]) for _ in range(params.n)] for request in outputs]

    def close(self) -> None:
        """Shut the engine down and free its GPU memory, so that the next stage's engine gets it.

        ``LLM.shutdown()`` where this vLLM has it, else the V1 engine core's ``shutdown()`` (which
        stops the engine-core process); either way the references are dropped and collected.
        """
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None)
        if not callable(shutdown):
            shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        self.llm = None
        del llm
        import gc

        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _completion(output: Any) -> Completion:
    """vLLM's output as a Completion: its 'stop' splits into 'eos' and 'stop' by ``stop_reason``.

    vLLM reports ``finish_reason="stop"`` both for the end-of-sequence token and for a stop
    string; ``stop_reason`` is None for EOS, the stop string for a stop string, and a token id
    for a stop token (the generation config's extra end-of-sequence ids land there; we ask
    for no other stop tokens), so a token id is an EOS too.
    """
    finish = output.finish_reason or FINISH_LENGTH
    stop_reason = getattr(output, "stop_reason", None)
    if finish == "stop" and isinstance(stop_reason, str):
        return Completion(text=output.text, num_tokens=len(output.token_ids), finish_reason=FINISH_STOP, stop_string=stop_reason)
    if finish == "stop":
        finish = FINISH_EOS
    elif finish != FINISH_LENGTH:
        finish = f"error: {finish}"
    return Completion(text=output.text, num_tokens=len(output.token_ids), finish_reason=finish)
