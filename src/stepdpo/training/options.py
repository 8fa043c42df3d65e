"""What `stepdpo sft` and `stepdpo train` share: the optimizer and LoRA options, and the one place that
turns them into ``transformers.TrainingArguments`` and LoRA adapters.

Both configs nest :class:`OptimizerConfig` (``--sft.optim.*``, ``--train.optim.*``) and
:class:`LoRAConfig` (``--sft.lora.*``, ``--train.lora.*``); each owner picks its own defaults
(SFT: learning rate 1e-4, batch 8; preference training: the mode's learning rate, batch 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from stepdpo.config import OptionCheck

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class OptimizerConfig:
    """AdamW, its learning-rate schedule, and how many examples a step and the run see."""

    learning_rate: Optional[float] = field(default=1e-4, metadata={"help": "Peak learning rate (AdamW). In `stepdpo train`, None = the mode's default (MODE_DEFAULTS: 5e-6 for step-dpo and dpo, 1e-7 for scdpo); a value given always wins."})
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = field(default="cosine", metadata={"help": "Learning-rate schedule after warmup."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the optimizer steps spent warming the learning rate up from 0."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training data (the Step-DPO paper: 8 for 7B, 4 for >30B)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1 = run all epochs)."})
    batch_size: int = field(default=8, metadata={"help": "Examples (SFT) or pairs (preference training) per device per forward pass."})
    grad_accum: int = field(default=1, metadata={"help": "Forward passes per optimizer step (global batch = batch_size * grad_accum * processes; the Step-DPO paper: 128)."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.above(0, "learning_rate", "epochs")
        check.require(self.max_steps == -1 or self.max_steps >= 1, "max_steps", "must be -1 (all epochs) or >= 1")
        check.share("warmup_ratio")
        check.at_least(0, "weight_decay")
        check.at_least(1, "batch_size", "grad_accum")


@dataclass
class LoRAConfig:
    """LoRA adapters instead of training all weights; they are merged into the saved model."""

    enabled: bool = field(default=False, metadata={"help": "Train LoRA adapters (in preference training the reference is the base with adapters disabled)."})
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS), metadata={"help": "Module names that get LoRA adapters."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.at_least(1, "r", "alpha")
        check.share("dropout", one=False)


def apply_lora(model: Any, lora: LoRAConfig) -> Any:
    """``model`` with LoRA adapters on ``lora.target_modules`` (a PEFT model)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


def training_arguments(optim: OptimizerConfig, *, output_dir: str, seed: int, bf16: bool, logging_steps: int, save_steps: int,
                       save_total_limit: int, **extra: Any) -> Any:
    """The ``TrainingArguments`` of a run: the optimizer options, step-wise checkpoints, seeded data order;
    ``extra`` holds what only one kind of training sets (evaluation, trackers, activation checkpointing, ...)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=optim.epochs,
        max_steps=optim.max_steps,
        learning_rate=optim.learning_rate,
        lr_scheduler_type=optim.lr_scheduler,
        warmup_steps=optim.warmup_ratio,  # a float below 1 is a share of the steps
        weight_decay=optim.weight_decay,
        per_device_train_batch_size=optim.batch_size,
        gradient_accumulation_steps=optim.grad_accum,
        bf16=bf16,
        logging_steps=logging_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,  # the collators need fields the model's forward does not name
        dataloader_num_workers=0,
        **extra,
    )
