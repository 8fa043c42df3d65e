"""Reference log-probabilities, computed once before training and cached on disk.

DPO needs ``log πref(y_w|x)`` and ``log πref(y_l|x)`` for every pair. They do not change
during training, so one no-grad pass over the dataset replaces a second model held in
memory and a second forward per step. With LoRA the reference is the base model itself
(adapters disabled), never a copy.

The cache file is named by a fingerprint of the token ids of every pair, the model (names,
shapes, dtypes and a strided sample of every weight's values, adapters excluded) and the
precision, so a changed dataset or model never reuses stale numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from stepdpo.records import atomic_write_json
from stepdpo.training.packing import PairTokens, pack_pairs, packed_logps

log = logging.getLogger(__name__)

_SAMPLE_VALUES = 64


def weights_fingerprint(model: Any) -> str:
    """SHA-256 over each base weight's name, shape, dtype and up to 64 evenly strided values (LoRA weights excluded)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name or not torch.is_tensor(tensor):
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLE_VALUES)
        sample = flat[::step][:_SAMPLE_VALUES].float().cpu()
        # Names differ between a bare and a PEFT-wrapped model only by PEFT's prefixes.
        clean = name.replace("base_model.model.", "").replace(".base_layer", "")
        digest.update(f"{clean}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(pairs: Sequence[PairTokens]) -> str:
    """SHA-256 over the token ids of every pair, in order."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([pair.prefix, pair.chosen, pair.rejected]).encode())
    return digest.hexdigest()


def reference_context(model: Any) -> contextlib.AbstractContextManager:
    """``model.disable_adapter()`` for a PEFT model (the reference is the base), else nothing."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if callable(disable) and hasattr(model, "peft_config") else contextlib.nullcontext()


@torch.no_grad()
def compute_reference_logps(
    model: Any, pairs: Sequence[PairTokens], pad_token_id: int, batch_size: int = 8, bf16: bool = False,
    device: Any = None, adapter_owner: Any = None,
) -> list[tuple[float, float]]:
    """``[(log πref(chosen), log πref(rejected))]`` per pair, summed over tokens, by the packed forward.

    Pairs are processed in order of length so batches waste little padding; the result is
    in the input order. ``bf16`` runs under bf16 autocast, as training does with ``bf16=True``.
    ``device`` defaults to the model's; ``adapter_owner`` is the PEFT model whose adapters are
    switched off when ``model`` wraps it (DDP, a DeepSpeed engine).
    """
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].packed_length)
    result: list[tuple[float, float]] = [(0.0, 0.0)] * len(pairs)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    try:
        with reference_context(adapter_owner if adapter_owner is not None else model), autocast:
            for start in tqdm(range(0, len(order), batch_size), desc="reference log-probs", unit="batch"):
                index = order[start : start + batch_size]
                batch = {k: v.to(device) for k, v in pack_pairs([pairs[i] for i in index], pad_token_id).items()}
                logps = packed_logps(model, batch)
                for i, chosen, rejected in zip(index, logps.chosen.tolist(), logps.rejected.tolist()):
                    result[i] = (chosen, rejected)
    finally:
        model.train(was_training)
    return result


def cached_reference_logps(
    model: Any, pairs: Sequence[PairTokens], pad_token_id: int, cache_dir: str | Path, batch_size: int = 8, bf16: bool = False
) -> tuple[list[tuple[float, float]], bool]:
    """Reference log-probs from ``cache_dir/<fingerprint>.json`` when present, else computed and saved there.

    Returns the log-probs and whether they came from the cache.
    """
    key = hashlib.sha256(f"{weights_fingerprint(model)}|{data_fingerprint(pairs)}|bf16={bf16}".encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"{key}.json"
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if len(cached["logps"]) == len(pairs):
            log.info("reference log-probs from cache %s", path)
            return [tuple(item) for item in cached["logps"]], True  # type: ignore[misc]
    logps = compute_reference_logps(model, pairs, pad_token_id, batch_size, bf16)
    atomic_write_json(path, {"pairs": len(pairs), "bf16": bf16, "logps": logps})
    return logps, False
