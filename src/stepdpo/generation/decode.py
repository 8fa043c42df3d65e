"""The hf backend's own decoding loop: finished rows leave the batch, and the KV cache grows in place.

``model.generate`` keeps every row of a batch until its longest row ends and grows
the key/value cache by concatenation, copying the whole cache at every step. For
a small model on a CPU both dominate: the model organism's rows end by EOS after
96 tokens on average in batches that run for about 160 steps, and 68 % of its
operator time was ``aten::cat`` (``docs/organism.md``). This loop runs the same
forward passes (same masks, positions and logits) but

- drops finished rows from the batch (the cache, mask and positions with them)
  once a quarter of the rows still computed have finished, so a copy of the cache
  buys a smaller batch for every later step;
- keeps each full-attention layer's keys and values in a buffer that doubles when
  full (:class:`GrowingLayer`), so a step writes one position instead of copying
  the cache. Other layer kinds (sliding window, linear attention) keep
  transformers' own cache layers.

It needs a decoder-only model whose ``forward`` takes ``attention_mask``,
``position_ids``, a cache argument and ``logits_to_keep``, as transformers'
causal LMs do; :func:`supports_own_loop` says whether a model does, and the
backend falls back to ``model.generate`` when not.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

#: Drop finished rows once they are this share of the rows still computed.
COMPACT_SHARE = 0.25


def _cache_argument(model: Any) -> str | None:
    """The name ``model.forward`` takes its KV cache by (``cache`` in recent transformers 5, else ``past_key_values``)."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def supports_own_loop(model: Any) -> bool:
    """Whether :func:`decode` can run ``model``: a decoder-only causal LM with the forward arguments it passes."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    parameters = inspect.signature(model.forward).parameters
    return _cache_argument(model) is not None and all(name in parameters for name in ("attention_mask", "position_ids", "logits_to_keep"))


@functools.cache  # one class, not one per batch; built lazily so that importing this module does not import transformers
def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A full-attention cache layer whose keys and values live in a buffer that doubles when full.

        ``keys`` / ``values`` are views of the first ``length`` positions of the
        buffers, shaped (batch, kv_heads, length, head_dim) like DynamicLayer's.
        """

        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            super().lazy_initialization(key_states, value_states)
            self.key_buffer = self.value_buffer = None
            self.length = 0

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if self.key_buffer is None or end > self.key_buffer.shape[-2]:
                self.key_buffer = self._grown(self.key_buffer, key_states, end)
                self.value_buffer = self._grown(self.value_buffer, value_states, end)
            self.key_buffer[..., self.length : end, :] = key_states
            self.value_buffer[..., self.length : end, :] = value_states
            self.length = end
            self.keys = self.key_buffer[..., :end, :]
            self.values = self.value_buffer[..., :end, :]
            return self.keys, self.values

        def _grown(self, buffer: Any, states: Any, needed: int) -> Any:
            capacity = max(2 * needed, needed + 64)
            grown = states.new_empty((*states.shape[:-2], capacity, states.shape[-1]))
            if buffer is not None:
                grown[..., : self.length, :] = buffer[..., : self.length, :]
            return grown

        def batch_select_indices(self, indices: Any) -> None:
            if self.is_initialized and self.key_buffer is not None:
                self.key_buffer = self.key_buffer[indices]
                self.value_buffer = self.value_buffer[indices]
                self.keys = self.key_buffer[..., : self.length, :]
                self.values = self.value_buffer[..., : self.length, :]

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("the decoding loop never crops its cache")

        def batch_repeat_interleave(self, repeats: int) -> None:
            raise NotImplementedError("the decoding loop never repeats rows of its cache")

    return GrowingLayer


def new_cache(model: Any) -> Any:
    """A DynamicCache for ``model`` whose full-attention layers are :class:`GrowingLayer` s."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache(config=model.config)
    growing = _growing_layer_class()
    cache.layers = [growing() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def decode(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    max_new_tokens: int,
    pick: Callable[[Any, list[int], int], Any],
    eos_ids: list[int],
    stop: Callable[[Any], Any] | None = None,
) -> list[list[int]]:
    """Decode a left-padded batch; returns each row's generated tokens, ending with its EOS token if it met one.

    Args:
        input_ids: (rows, prompt width) left-padded prompt tokens.
        attention_mask: (rows, prompt width), 0 on padding.
        pick: ``pick(logits, rows, position) -> tokens``: the next token of each
            row still computed, from its float32 logits (len(rows), vocab);
            ``rows`` are their indices in the batch, ``position`` the index of
            the token being generated (0 for the first).
        stop: ``stop(sequences) -> bool tensor``: which rows have just completed
            a stop string, given (rows, prompt + generated) token ids; such a row
            ends after that token.
    """
    import torch

    cache_argument = _cache_argument(model)
    cache = new_cache(model)
    rows = list(range(input_ids.shape[0]))
    generated: list[list[int]] = [[] for _ in rows]
    ended = [False] * len(rows)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=input_ids.device)
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    # Only stop strings need the whole sequence so far.
    sequences = input_ids if stop is not None else None
    step_ids, mask = input_ids, attention_mask
    for position in range(max_new_tokens):
        output = model(
            input_ids=step_ids, attention_mask=mask, position_ids=position_ids, use_cache=True, logits_to_keep=1, **{cache_argument: cache}
        )
        tokens = pick(output.logits[:, -1, :].float(), rows, position)
        finished = torch.isin(tokens, eos)
        if sequences is not None:
            sequences = torch.cat([sequences, tokens[:, None]], dim=-1)
            finished |= stop(sequences)
        for row, token, done in zip(rows, tokens.tolist(), finished.tolist()):
            if not ended[row]:
                generated[row].append(token)
                ended[row] = done
        live = [i for i, row in enumerate(rows) if not ended[row]]
        if not live:
            break
        step_ids = tokens[:, None]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        position_ids = position_ids[:, -1:] + 1
        if len(rows) - len(live) >= COMPACT_SHARE * len(rows):
            keep = torch.tensor(live, dtype=torch.long, device=input_ids.device)
            cache.batch_select_indices(keep)
            rows = [rows[i] for i in live]
            step_ids, mask, position_ids = step_ids[keep], mask[keep], position_ids[keep]
            sequences = sequences[keep] if sequences is not None else None
    return generated
