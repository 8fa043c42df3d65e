"""The transformers backend: batched ``model.generate`` on CPU or one GPU.

Prompts are tokenized without special tokens (the chat template already holds
them), expanded to one row per sample, sorted by length so that a batch wastes
little left padding, and generated in batches of ``config.batch_size`` rows.
Results come back in the original prompt order. A batch is decoded by
:mod:`stepdpo.generation.decode` (finished rows leave the batch; the KV cache
grows in place), or by ``model.generate`` with ``decode_loop: generate`` and for
models that loop cannot run.

Sampling is per row: each sampled row draws from its own seed (see
:class:`KeyedSampler`), so a completion is the same whatever batch, chunk or
position it was generated in (up to the float rounding that padding and batch
shape cause in the logits, as with greedy decoding).

Token counts: ``num_tokens`` is the number of tokens the model generated for
the completion, up to and including the end-of-sequence token or the token
that completed a stop string (what vLLM reports too); padding written after a
row finished is not counted.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import Any, Sequence

from stepdpo.errors import ConfigError
from stepdpo.generation.base import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Completion, GeneratorConfig, SamplingParams, prompt_seeds
from stepdpo.hardware import cpu_supports_bf16
from stepdpo.seeding import SEED_BITS, completion_seed, derive_seed

log = logging.getLogger(__name__)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return device


def _check_params(params: SamplingParams) -> None:
    if params.n < 1:
        raise ConfigError(f"sampling n must be >= 1, got {params.n}")
    if params.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if params.temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0 disables it), got {params.top_k}")
    if any(not s for s in params.stop):
        raise ConfigError("stop strings must be non-empty")


class NumpySortTopP:
    """transformers' ``TopPLogitsWarper`` (at least one token kept), sorting with numpy.

    On a CPU ``torch.sort`` over the vocabulary is several times slower than
    numpy's argsort (``bench/results/keyed_sampler.md``), and for the embedded
    model's 49k-token vocabulary it was a large part of each sampled step. The
    sorted logits, and so the softmax, the cumulative sums and the cut, are the
    ones transformers computes; only which of several exactly equal logits sits
    first in the sorted order may differ, as it may between torch's own unstable
    sorts.
    """

    def __init__(self, top_p: float):
        self.top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np
        import torch

        order = torch.from_numpy(np.argsort(scores.detach().numpy(), axis=-1))
        cumulative_probs = scores.gather(1, order).softmax(dim=-1).cumsum(dim=-1)
        sorted_to_remove = cumulative_probs <= (1 - self.top_p)
        sorted_to_remove[..., -1:] = False
        return scores.masked_fill(sorted_to_remove.scatter(1, order, sorted_to_remove), float("-inf"))


class KeyedSampler:
    """A logits processor that samples each row's next token from the row's own seed.

    transformers applies user logits processors *before* its temperature, top-k and
    top-p warpers (``_get_logits_processor`` in transformers 5), and then samples all
    rows from one global RNG. So generate runs greedy, and this processor does both:
    it applies transformers' own warpers in generate's order (temperature, top-k,
    top-p), then picks a token by the Gumbel-max trick (argmax of scores - log E,
    E ~ Exp(1)) with noise from a generator seeded by ``derive_seed(row seed,
    "token", "", position)``, and leaves only that token finite, which greedy then
    takes. A row's tokens depend on its seed, position and logits only.
    """

    def __init__(self, params: SamplingParams, row_seeds: Sequence[int], prompt_width: int, device: str):
        import torch
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.warpers: list[Any] = [TemperatureLogitsWarper(params.temperature)]
        if params.top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k=params.top_k))
        if params.top_p < 1.0:
            self.warpers.append(NumpySortTopP(params.top_p) if device.split(":")[0] == "cpu" else TopPLogitsWarper(top_p=params.top_p))
        self.row_seeds = list(row_seeds)
        self.prompt_width = prompt_width
        self.rng = torch.Generator(device=device)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        choice = self.draw(scores, range(len(self.row_seeds)), input_ids.shape[1] - self.prompt_width)
        return torch.full_like(scores, float("-inf")).scatter_(1, choice[:, None], 0.0)

    def draw(self, scores: Any, rows: Sequence[int], position: int) -> Any:
        """The next token of each of ``rows`` (indices into ``row_seeds``) from their scores (len(rows), vocab)."""
        import torch

        for warper in self.warpers:
            scores = warper(None, scores)
        noise = torch.empty_like(scores)
        for i, row in enumerate(rows):
            self.rng.manual_seed(derive_seed(self.row_seeds[row], "token", "", position))
            noise[i].exponential_(generator=self.rng)
        # exponential_ may return 0, whose log would turn a filtered (-inf) token into nan.
        noise.clamp_(min=torch.finfo(noise.dtype).tiny)
        return (scores - noise.log()).argmax(dim=-1)


class HFGenerator:
    """A :class:`~stepdpo.generation.base.Generator` over a transformers causal LM."""

    def __init__(self, config: GeneratorConfig):
        from stepdpo.models import load_model, load_tokenizer

        device = _resolve_device(config.device)
        weights_dtype, _ = self._dtypes(config.dtype, device)
        tokenizer = load_tokenizer(config.model)
        model = load_model(config.model, dtype=weights_dtype, device=device)
        self._setup(model, tokenizer, config, device)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, config: GeneratorConfig) -> "HFGenerator":
        """Wrap a model already in memory (e.g. right after training); it stays on its device and dtype."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, config, str(next(model.parameters()).device))
        return self

    @staticmethod
    def _dtypes(dtype: str, device: str) -> tuple[str, Any]:
        """(dtype to load the weights in, dtype to autocast to or None).

        On CUDA the weights themselves take the reduced precision. On CPU the
        weights stay float32 and matmuls autocast to bfloat16, but only when the
        CPU computes bfloat16 natively; emulated bfloat16 is slower than float32.
        """
        import torch

        on_cuda = device.startswith("cuda")
        if dtype == "auto":
            if on_cuda:
                return "bfloat16", None
            return "float32", (torch.bfloat16 if cpu_supports_bf16() else None)
        if dtype == "float32":
            return "float32", None
        if on_cuda:
            return dtype, None
        return "float32", {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]

    def _setup(self, model: Any, tokenizer: Any, config: GeneratorConfig, device: str) -> None:
        if config.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {config.batch_size}")
        self.config = config
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        _, self.autocast_dtype = self._dtypes(config.dtype, device)
        # What the matmuls really run in ('auto' resolves differently per machine); results record it.
        self.compute_dtype = str(self.autocast_dtype or next(model.parameters()).dtype).removeprefix("torch.")
        self.name = f"hf:{config.model}"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = int(tokenizer.pad_token_id)
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(int(tokenizer.eos_token_id))
        self.eos_ids = sorted(eos_ids)
        from stepdpo.generation.decode import supports_own_loop

        self.own_loop = config.decode_loop == "own" and supports_own_loop(model)
        if config.decode_loop == "own" and not self.own_loop:
            log.info("hf backend: %s cannot run stepdpo's decoding loop; using transformers' generate", type(model).__name__)

    def _autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast_dtype)

    def _generation_config(self, params: SamplingParams) -> Any:
        from transformers import GenerationConfig

        # Always greedy for generate itself: sampling happens in KeyedSampler, which leaves one token per row
        # (generate's own sampling would draw every row from one RNG, so a row's sample would depend on its batch).
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            # Explicit values: unset ones would be filled from the model's or the global defaults (top_k=50).
            temperature=1.0,
            top_p=1.0,
            # None keeps the default, which generate's validation does not flag as unused when greedy.
            top_k=None,
            num_beams=1,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            stop_strings=list(params.stop) or None,
        )

    def generate(self, prompts: list[str], params: SamplingParams, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """Return ``params.n`` completions for each prompt, in prompt order.

        With ``temperature == 0`` the n completions of a prompt are identical,
        so each prompt is decoded once and the result repeated. Sampled rows draw
        from their own seed (``completion_seed(prompt seed, j)``), so a completion
        does not depend on the batch it was generated in; unseeded rows get a seed
        from torch's global RNG.
        """
        import torch
        from tqdm.auto import tqdm

        _check_params(params)
        if not prompts:
            return []
        per_prompt = prompt_seeds(prompts, params, seeds)
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        sampled = params.temperature > 0
        copies = params.n if sampled else 1
        rows = [(p, s) for p in range(len(prompts)) for s in range(copies)]
        row_seed: dict[tuple[int, int], int] = {}
        if sampled:
            for p, s in rows:
                seed = per_prompt[p]
                row_seed[(p, s)] = completion_seed(seed, s) if seed is not None else int(torch.randint(2**SEED_BITS, ()).item())
        # Longest first: similar lengths share a batch, and an out-of-memory batch shows up at once.
        rows.sort(key=lambda row: (-len(encoded[row[0]]), row))
        results: dict[tuple[int, int], Completion] = {}
        batches = [rows[i : i + self.config.batch_size] for i in range(0, len(rows), self.config.batch_size)]
        for batch in tqdm(batches, desc="generate", unit="batch", disable=len(batches) < 2, leave=False):
            input_ids, attention_mask = self._left_pad([encoded[p] for p, _ in batch])
            sampler = KeyedSampler(params, [row_seed[row] for row in batch], input_ids.shape[1], self.device) if sampled else None
            with torch.inference_mode(), self._autocast():
                if self.own_loop:
                    generated = self._decode(input_ids, attention_mask, params, sampler)
                else:
                    generated = self._generate(input_ids, attention_mask, params, sampler)
            for row, tokens in zip(batch, generated):
                results[row] = self._completion(tokens, params, padded=not self.own_loop)
        # Separate objects per sample, so that a caller editing one does not edit its greedy twins.
        return [[replace(results[(p, s if copies > 1 else 0)]) for s in range(params.n)] for p in range(len(prompts))]

    def _decode(self, input_ids: Any, attention_mask: Any, params: SamplingParams, sampler: KeyedSampler | None) -> list[list[int]]:
        from stepdpo.generation.decode import decode

        stop = None
        if params.stop:
            from transformers import StopStringCriteria

            criteria = StopStringCriteria(self.tokenizer, list(params.stop))
            stop = lambda sequences: criteria(sequences, None)  # noqa: E731
        pick = sampler.draw if sampler is not None else lambda logits, rows, position: logits.argmax(dim=-1)
        return decode(self.model, input_ids, attention_mask, params.max_new_tokens, pick, self.eos_ids, stop)

    def _generate(self, input_ids: Any, attention_mask: Any, params: SamplingParams, sampler: KeyedSampler | None) -> list[list[int]]:
        from transformers import LogitsProcessorList

        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self._generation_config(params),
            logits_processor=LogitsProcessorList([sampler]) if sampler is not None else None,
            tokenizer=self.tokenizer if params.stop else None,
        )
        return output[:, input_ids.shape[1] :].tolist()

    def _left_pad(self, sequences: list[list[int]]) -> tuple[Any, Any]:
        """Left-pad token lists into (input_ids, attention_mask), both of shape (batch, longest)."""
        import torch

        width = max(len(seq) for seq in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            if seq:
                input_ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                attention_mask[i, width - len(seq) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _completion(self, tokens: list[int], params: SamplingParams, padded: bool) -> Completion:
        """Cut one generated row at end-of-sequence or the first stop string, whichever came first.

        ``padded``: generate pads a row that a stop string ended up to the batch's
        last step (when pad is not an eos token); the own loop never pads.
        """
        eos = set(self.eos_ids)
        end = next((i for i, tok in enumerate(tokens) if tok in eos), None)
        if end is None:
            end = len(tokens)
            while padded and end and tokens[end - 1] == self.pad_id:
                end -= 1
            finish, count = FINISH_LENGTH, end
        else:
            finish, count = FINISH_EOS, end + 1
        text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
        cuts = [(at, stop) for at, stop in ((text.find(s), s) for s in params.stop) if at >= 0]
        if cuts:
            # With pad == eos a row ended by a stop string looks ended by eos: count the
            # tokens up to the one that completed the stop string instead.
            at, stop = min(cuts)
            text, count = text[:at], self._tokens_until_stop(tokens[:end], params.stop)
            return Completion(text=text, num_tokens=count, finish_reason=FINISH_STOP, stop_string=stop)
        return Completion(text=text, num_tokens=count, finish_reason=finish)

    def _tokens_until_stop(self, tokens: list[int], stops: tuple[str, ...]) -> int:
        """The least k such that the first k tokens decode to text containing a stop string (binary search)."""
        low, high = 1, len(tokens)
        while low < high:
            mid = (low + high) // 2
            text = self.tokenizer.decode(tokens[:mid], skip_special_tokens=True)
            if any(s in text for s in stops):
                high = mid
            else:
                low = mid + 1
        return high
