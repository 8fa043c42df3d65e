"""Saving a trained model from every kind of launch, and checking that what was saved is a model.

Under DeepSpeed ZeRO-3 each rank holds a shard of every weight, and under FSDP with a sharded
state dict so does each rank of FSDP: ``unwrap_model(model).save_pretrained`` on rank 0 alone
then writes empty tensors (shape ``[0]``) or only rank 0's shards, beside a perfectly good
``config.json``. So the final save goes through ``Trainer.save_model`` on *every* rank, which
gathers the weights (ZeRO-3: ``zero3_save_16bit_model``; FSDP: switched to a full state dict
here) and lets the main process write them. A LoRA run keeps its adapter and also writes the
merged model; when the base weights are sharded the merge is done on the main process from the
base checkpoint and the saved adapter, never from the shards.

:func:`saved_weight_problems` then reads the saved files' headers (no tensor data) and compares
every parameter the model's config implies with what is on disk: a missing, empty or wrongly
shaped weight makes the save a failure, and the pipeline never takes such a folder for a
finished model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from stepdpo.errors import StepdpoError

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


class IncompleteModelError(StepdpoError):
    """A saved model folder whose weights are missing, empty or do not match its config."""


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [path / name for name in names]
    return sorted(path.glob("*.safetensors"))


def saved_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape in the folder's safetensors files, read from their headers."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in _weight_files(Path(path)):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def expected_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The parameters the folder's ``config.json`` implies (built on the meta device: no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # named_parameters() lists a tied weight once, under the name that is saved.
    return {name: tuple(param.shape) for name, param in model.named_parameters()}


def saved_weight_problems(path: str | Path) -> list[str]:
    """What is wrong with the weights saved in ``path`` (empty when they are complete)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return [f"{path}: no config.json"]
    if not _weight_files(path):
        return [f"{path}: no safetensors weight files"]
    try:
        saved = saved_shapes(path)
    except Exception as err:  # noqa: BLE001 - a torn or foreign file is a problem to report, whatever the library raises
        return [f"{path}: weight files unreadable ({type(err).__name__}: {err})"]
    problems = []
    for name, shape in expected_shapes(path).items():
        if name not in saved:
            problems.append(f"{name}: missing")
        elif 0 in saved[name]:
            problems.append(f"{name}: empty (shape {list(saved[name])}; a ZeRO-3 shard saved without gathering?)")
        elif saved[name] != shape:
            problems.append(f"{name}: shape {list(saved[name])}, config implies {list(shape)}")
    return problems


def verify_saved_model(path: str | Path) -> None:
    """Raise :class:`IncompleteModelError` unless every weight the config implies is saved with its full shape."""
    problems = saved_weight_problems(path)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise IncompleteModelError(f"{path}: the saved model is incomplete ({len(problems)} weights): {shown}")


def is_verified_model(path: str | Path) -> bool:
    """A finished model folder: config, tokenizer and every weight present with its full shape."""
    path = Path(path)
    return (path / "tokenizer_config.json").is_file() and not saved_weight_problems(path)


def weights_are_sharded(trainer: Any) -> bool:
    """True under DeepSpeed or FSDP, where no single rank holds every weight whole."""
    return bool(getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False))


def save_trained_model(trainer: Any, target: str | Path, tokenizer: Any, base_model: Optional[str] = None) -> None:
    """Save ``trainer.model`` to ``target`` (merged, when it is a LoRA model) from every rank; call it on all ranks.

    - full fine-tuning: ``Trainer.save_model`` (ZeRO-3 gathers 16-bit weights; FSDP gathers a full state dict);
    - LoRA: the adapter to ``target/adapter`` the same way, then the merged model to ``target`` on the
      main process: merged in memory when every rank holds the base whole, else loaded from
      ``base_model`` (the checkpoint training started from) and merged with the saved adapter.
    The main process then verifies the saved weights (:func:`verify_saved_model`).
    """
    target = Path(target)
    accelerator = trainer.accelerator
    if getattr(trainer, "is_fsdp_enabled", False):
        # The final checkpoint must be one loadable file set, whatever state dict the run checkpointed with.
        accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    unwrapped = accelerator.unwrap_model(trainer.model)
    is_lora = hasattr(unwrapped, "peft_config")
    trainer.save_model(str(target / ADAPTER_DIR if is_lora else target))
    try:
        if trainer.is_world_process_zero():
            if is_lora:
                merged = _merge_from_disk(base_model, target / ADAPTER_DIR) if weights_are_sharded(trainer) else unwrapped.merge_and_unload()
                merged.save_pretrained(target, safe_serialization=True)
            if not (target / "tokenizer_config.json").is_file():
                tokenizer.save_pretrained(target)
    finally:
        # Also when the main process failed: the other ranks must not wait for it forever.
        accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        verify_saved_model(target)


def _merge_from_disk(base_model: Optional[str], adapter_dir: Path) -> Any:
    from peft import PeftModel

    from stepdpo.models import load_model

    if base_model is None:
        raise IncompleteModelError("a sharded LoRA run needs the base model's name to write the merged model")
    log.info("merging the adapter %s into %s on the main process", adapter_dir, base_model)
    base = load_model(base_model, dtype="auto")
    if getattr(base, "hf_quantizer", None) is not None:
        base.hf_quantizer.remove_quantization_config(base)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
