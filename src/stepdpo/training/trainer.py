"""The preference trainer: ``transformers.Trainer`` with the packed shared-prefix forward as its loss.

Everything around the loss comes from the ecosystem: accelerate/DDP, DeepSpeed, FSDP,
gradient checkpointing, bf16, PEFT/LoRA, checkpointing and resumption, ``report_to``.
This module adds four things:

- dropout off in the policy (:func:`disable_dropout`, as TRL's DPO trainer does): the reference
  log-probs were computed in eval mode, so with dropout on the starting margin would not be 0;
- :meth:`PreferenceTrainer.compute_loss`: one packed forward per batch
  (``packing.packed_logps``) against precomputed reference log-probs (``reference.py``),
  and the loss of ``losses.preference_loss``;
- the metrics of the Step-DPO paper, per logging step, for the train and eval splits:
  ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
  ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``, plus ``pairs`` (training pairs
  since the last log, each counted once over all processes) and ``pairs_per_second``;
- :class:`MetricsJsonlCallback`, which writes every log line to ``metrics.jsonl`` in the output
  folder (beside TensorBoard's files) so reports can plot the curves.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from stepdpo.records import atomic_write_text
from stepdpo.training.losses import DEFAULT_BETA, LossType, preference_loss
from stepdpo.training.packing import packed_logps

METRICS_FILE = "metrics.jsonl"
_BATCH_KEYS = ("chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps")


@dataclass(frozen=True)
class LossSettings:
    loss_type: LossType = "sigmoid"
    beta: float = DEFAULT_BETA
    label_smoothing: float = 0.0
    sft_weight: float = 0.0


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout of ``model`` to 0: ``nn.Dropout`` modules (TRL's ``disable_dropout_in_model``) and the
    float dropout rates attention modules apply functionally (Llama's, Qwen's ``attention_dropout``), which TRL misses.

    The saved config keeps its values; only this training process runs without dropout.
    """
    from trl.trainer.utils import disable_dropout_in_model

    disable_dropout_in_model(model)
    for module in model.modules():
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float) and value > 0:
                setattr(module, name, 0.0)


class PreferenceTrainer(Trainer):
    """A ``Trainer`` whose batches are packed pairs (see ``data.PackedCollator``) and whose loss is DPO-family."""

    def __init__(self, *args: Any, loss_settings: LossSettings = LossSettings(), **kwargs: Any):
        super().__init__(*args, **kwargs)
        disable_dropout(self.model)
        self.loss_settings = loss_settings
        self._stored: dict[str, dict[str, list[torch.Tensor]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._pairs_since_log = 0
        self._last_log_time = time.perf_counter()

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        policy = packed_logps(model, inputs)
        settings = self.loss_settings
        out = preference_loss(
            policy.chosen,
            policy.rejected,
            inputs["ref_chosen_logps"],
            inputs["ref_rejected_logps"],
            loss_type=settings.loss_type,
            beta=settings.beta,
            label_smoothing=settings.label_smoothing,
            sft_weight=settings.sft_weight,
            chosen_token_counts=policy.chosen_counts,
        )
        split = "train" if model.training else "eval"
        values = {
            "chosen_rewards": out.chosen_rewards,
            "rejected_rewards": out.rejected_rewards,
            "chosen_logps": policy.chosen.detach(),
            "rejected_logps": policy.rejected.detach(),
        }
        # Every process records the whole global batch, so logged means cover all of it. gather_for_metrics
        # drops the pairs repeated to even out the last batch across processes, so the gathered length is
        # also the number of distinct pairs (a gathered per-process count would be cut to the leftover count).
        gathered = {key: self.accelerator.gather_for_metrics(value).float().cpu() for key, value in values.items()}
        for key, value in gathered.items():
            self._stored[split][key].append(value)
        if split == "train":
            self._pairs_since_log += len(gathered["chosen_rewards"])
        return (out.loss, {"losses": out.losses.detach()}) if return_outputs else out.loss

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None) -> tuple:
        """Eval batches only yield the loss (no logits to return: they were never computed in full)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _drain(self, split: str) -> dict[str, float]:
        stored = self._stored[split]
        if not stored["chosen_rewards"]:
            return {}
        chosen, rejected = torch.cat(stored["chosen_rewards"]), torch.cat(stored["rejected_rewards"])
        metrics = {
            "rewards/chosen": chosen.mean().item(),
            "rewards/rejected": rejected.mean().item(),
            "rewards/margins": (chosen - rejected).mean().item(),
            "rewards/accuracies": (chosen > rejected).float().mean().item(),
            "logps/chosen": torch.cat(stored["chosen_logps"]).mean().item(),
            "logps/rejected": torch.cat(stored["rejected_logps"]).mean().item(),
        }
        self._stored[split] = defaultdict(list)
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged reward metrics since the last log (prefixed ``eval_`` for evaluation) and pairs/s."""
        if any(key.startswith("eval_") for key in logs):
            logs.update({f"eval_{key}": value for key, value in self._drain("eval").items()})
        elif "loss" in logs:
            logs.update(self._drain("train"))
            now = time.perf_counter()
            logs["pairs"] = self._pairs_since_log
            logs["pairs_per_second"] = self._pairs_since_log / max(now - self._last_log_time, 1e-9)
            self._pairs_since_log, self._last_log_time = 0, now
        super().log(logs, start_time)


class MetricsJsonlCallback(TrainerCallback):
    """Appends every log line to ``<output_dir>/metrics.jsonl`` as ``{"step", "epoch", "split", ...}`` (main process only).

    On resumption, lines past the checkpoint's step (written by the interrupted run after its
    last checkpoint) are cut, so the file holds one continuous curve.
    """

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / METRICS_FILE

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not self.path.exists():
            return
        # A last piece without a newline is a line torn by a kill; the rewrite is atomic so a kill now loses nothing.
        lines = self.path.read_bytes().split(b"\n")[:-1]
        kept = [line.decode("utf-8") for line in lines if line.strip() and json.loads(line)["step"] <= state.global_step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, "split": split}
        for key, value in logs.items():
            row[key.removeprefix("eval_")] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (empty when training never logged)."""
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
