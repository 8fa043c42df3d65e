"""The reference pass inside the launch: on each rank's accelerator, in the policy's precision, over its share.

Reference log-probs are computed once, when training starts (``on_train_begin``), by the model
the Trainer has already prepared: the DeepSpeed engine or the FSDP module when weights are
sharded (ZeRO-3 ``zero.Init``, or FSDP's ``cpu_ram_efficient_loading``, where ranks other than 0
hold empty weights until FSDP broadcasts them), the plain model otherwise. Each rank takes every
``world``-th pair of the length-sorted data, the pieces are gathered once, and the main process
writes the cache. On one CPU process this is the same pass over the same weights as before.

Forward passes over sharded weights are collectives (each layer is gathered from every rank), so
every rank runs the same number of batches, padding its share with a repeat of a pair.

The cache key cannot come from the weights in memory (they are shards, or empty, before the
Trainer prepares them, and trained weights after a resume): ``stepdpo train`` keys a model it
loads by the fingerprint of its checkpoint files; a model handed in by a caller keeps the weight
fingerprint of ``reference.weights_fingerprint``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from transformers import TrainerCallback

from stepdpo.records import atomic_write_json
from stepdpo.training.packing import PairTokens
from stepdpo.training.reference import compute_reference_logps, data_fingerprint
from stepdpo.training.saving import weights_are_sharded

log = logging.getLogger(__name__)

def cache_path(cache_dir: str | Path, model_key: str, pairs: Sequence[PairTokens], bf16: bool) -> Path:
    """``cache_dir/<key>.json``, the key hashing the model, the token ids of every pair and the precision."""
    key = hashlib.sha256(f"{model_key}|{data_fingerprint(pairs)}|bf16={bf16}".encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{key}.json"


def read_cache(path: Path, count: int) -> Optional[list[tuple[float, float]]]:
    """The cached log-probs when ``path`` holds ``count`` of them, else None."""
    if not path.is_file():
        return None
    cached = json.loads(path.read_text(encoding="utf-8"))
    if len(cached["logps"]) != count:
        return None
    return [(float(chosen), float(rejected)) for chosen, rejected in cached["logps"]]


def rank_share(pairs: Sequence[PairTokens], rank: int, world: int, batch_size: int) -> tuple[list[int], list[int]]:
    """(this rank's pair indices, the same padded so every rank runs the same number of batches of ``batch_size``)."""
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].packed_length)
    mine = order[rank::world]
    batches = math.ceil(math.ceil(len(pairs) / world) / batch_size)
    filler = mine[-1] if mine else order[0]
    return mine, mine + [filler] * (batches * batch_size - len(mine))


def sharded_reference_logps(trainer: Any, pairs: Sequence[PairTokens], pad_token_id: int, batch_size: int, bf16: bool) -> list[tuple[float, float]]:
    """Every pair's reference log-probs, each rank computing its share on its device; the same full list on every rank."""
    from accelerate.utils import gather_object

    accelerator = trainer.accelerator
    owner = accelerator.unwrap_model(trainer.model)  # the PEFT model whose adapters are switched off
    forward = trainer.model_wrapped if weights_are_sharded(trainer) else owner
    mine, padded = rank_share(pairs, accelerator.process_index, accelerator.num_processes, batch_size)
    values = compute_reference_logps(forward, [pairs[i] for i in padded], pad_token_id, batch_size, bf16,
                                     device=accelerator.device, adapter_owner=owner)
    gathered = gather_object([(i, chosen, rejected) for i, (chosen, rejected) in zip(mine, values)])
    result: list[Optional[tuple[float, float]]] = [None] * len(pairs)
    for i, chosen, rejected in gathered:
        result[i] = (chosen, rejected)
    missing = [i for i, value in enumerate(result) if value is None]
    if missing:
        raise RuntimeError(f"reference pass: {len(missing)} pairs got no log-probs from any rank (first: {missing[:5]})")
    return result  # type: ignore[return-value]


class ReferencePass(TrainerCallback):
    """At ``on_train_begin``: the reference log-probs of ``pairs`` from the cache, or computed by the prepared model.

    ``fill(logps)`` receives them (in ``pairs`` order) before the first batch is read. Call
    :meth:`bind` with the trainer once it exists.
    """

    def __init__(self, pairs: Sequence[PairTokens], fill: Callable[[list[tuple[float, float]]], None], path: Path,
                 pad_token_id: int, batch_size: int, bf16: bool, cached: Optional[list[tuple[float, float]]] = None):
        self.pairs, self.fill, self.path = pairs, fill, path
        self.pad_token_id, self.batch_size, self.bf16 = pad_token_id, batch_size, bf16
        self.cached = cached
        self.trainer: Any = None
        if cached is not None:
            fill(cached)

    def bind(self, trainer: Any) -> "ReferencePass":
        self.trainer = trainer
        return self

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.cached is not None:
            return
        logps = sharded_reference_logps(self.trainer, self.pairs, self.pad_token_id, self.batch_size, self.bf16)
        if self.trainer.is_world_process_zero():
            atomic_write_json(self.path, {"pairs": len(self.pairs), "bf16": self.bf16, "logps": logps})
        self.cached = logps
        self.fill(logps)
