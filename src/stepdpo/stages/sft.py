"""`stepdpo sft`: supervised fine-tuning on step-formatted solutions.

The model learns to write ``Step 1: ... Step n: ... The answer is: \\boxed{A}``
after the same prompt the rest of the pipeline uses (``PromptFormat.head``), with
the loss on the solution tokens only (see :mod:`stepdpo.training.sft_data`).
It runs on ``transformers.Trainer``: full fine-tuning or LoRA (merged into the
saved model), bf16 autocast on CPUs that support it, length-grouped batches,
checkpoints every ``save_steps`` so a rerun resumes, and a finished model is
never trained twice.

Layout of ``output_dir`` (``RUN/sft`` by default)::

    model/           the fine-tuned model (safetensors) and its tokenizer; with LoRA merged, the adapter in model/adapter
    checkpoints/     Trainer checkpoints (the last ``save_total_limit``), removed when done
    metrics.jsonl    one line per logging step, and a final summary line
    summary.json     examples, optimizer steps, tokens, seconds, final loss
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from stepdpo.config import OptionCheck, save_config, validate_config
from stepdpo.errors import ConfigError, InputError
from stepdpo.hardware import describe
from stepdpo.records import Problem, atomic_write_json, read_jsonl_dicts
from stepdpo.rundir import Funnel, RunDir
from stepdpo.steps import PromptFormat
from stepdpo.training.options import LoRAConfig, OptimizerConfig, apply_lora, training_arguments
from stepdpo.training.sft_data import IGNORE_INDEX, SFTCollator, build_examples

log = logging.getLogger(__name__)

DEFAULT_DATA = ["synthetic:train?n=320&min_steps=2&max_steps=4&seed=0"]


@dataclass
class SFTConfig:
    """Options of `stepdpo sft`."""

    model: str = field(default="smollm2-135m", metadata={"help": "Model to fine-tune: Hugging Face id, local path, or 'smollm2-135m'."})
    data: list[str] = field(default_factory=lambda: list(DEFAULT_DATA), metadata={"help": "Problem sets with step-format solutions: loader specs (synthetic:train?..., gsm8k:train) or JSONL files."})
    limit: int = field(default=0, metadata={"help": "At most this many problems from each data spec (0 = all)."})
    question_field: str = field(default="question", metadata={"help": "Field holding the problem text in a JSONL data file."})
    solution_field: str = field(default="solution", metadata={"help": "Field holding the step-format solution in a JSONL data file."})
    prompt_style: Literal["chat", "plain"] = field(default="chat", metadata={"help": "chat: the model's chat template; plain: 'Question: ... Answer:' (must match sampling and evaluation)."})
    run_dir: str = field(default="runs/default", metadata={"help": "Run directory (the funnel goes to RUN/funnel/sft.json)."})
    output_dir: str = field(default="", metadata={"help": "Where the model, checkpoints and metrics go ('' = RUN/sft)."})
    optim: OptimizerConfig = field(default_factory=OptimizerConfig, metadata={"help": "Optimizer, schedule and batch (learning rate 1e-4, batch 8, 1 epoch)."})
    lora: LoRAConfig = field(default_factory=LoRAConfig, metadata={"help": "LoRA adapters instead of all weights (off by default)."})
    max_length: int = field(default=512, metadata={"help": "Longest example in tokens (prompt + solution); longer ones are dropped and counted."})
    score_prompt: bool = field(default=False, metadata={"help": "Score the prompt's tokens too (language-model pretraining from scratch, as `stepdpo pretrain` can); false: the loss is on the solution only."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast (weights stay float32). For GPUs: on this project's CPU (torch 2.13) a bf16 training step measured over 10x slower than float32."})
    seed: int = field(default=0, metadata={"help": "Seed for data order, initialisation of adapters, and problem sampling."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every this many optimizer steps (a rerun resumes from the last one)."})
    save_total_limit: int = field(default=1, metadata={"help": "Checkpoints kept on disk."})
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep the checkpoints after the final model is saved."})
    logging_steps: int = field(default=5, metadata={"help": "Log loss and learning rate every this many optimizer steps."})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda when available, else cpu), 'cpu', 'cuda'."})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0 = torch's default). On a CPU shared with other busy processes use 1: oversubscribed threads measured 15x slower."})
    overwrite: bool = field(default=False, metadata={"help": "Train again even if output_dir/model is complete (checkpoints are discarded)."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.not_empty("model", "data")
        check.at_least(0, "limit", "threads")
        check.at_least(1, "max_length", "save_steps", "save_total_limit", "logging_steps")
        validate_config(self.optim, prefix + "optim.")
        validate_config(self.lora, prefix + "lora.")


def output_dir(config: SFTConfig) -> Path:
    return Path(config.output_dir) if config.output_dir else RunDir(config.run_dir).sft


def model_dir(config: SFTConfig) -> Path:
    """Where the fine-tuned model is (or will be) saved."""
    return output_dir(config) / "model"


def is_complete(path: Path) -> bool:
    """A saved model is complete when its tokenizer and every weight its config implies, whole, are there."""
    from stepdpo.training.saving import is_verified_model

    return is_verified_model(path)


def _read_jsonl_problems(path: Path, config: SFTConfig) -> list[Problem]:
    problems = []
    for line, obj in read_jsonl_dicts(path):
        for name in (config.question_field, config.solution_field):
            if not isinstance(obj.get(name), str):
                raise InputError(str(path), "missing or not a string", line, name)
        problems.append(
            Problem(
                id=str(obj.get("id", f"{path.stem}-{line}")),
                question=obj[config.question_field],
                answer=str(obj.get("answer", "")),
                source=str(path),
                solution=obj[config.solution_field],
            )
        )
        if config.limit and len(problems) >= config.limit:
            break
    return problems


def load_training_problems(config: SFTConfig) -> list[Problem]:
    """Problems with reference solutions from every spec in ``config.data`` (JSONL files read with the configured fields)."""
    if not config.data:
        raise ConfigError("sft: 'data' is empty; give at least one problem set with solutions")
    problems: list[Problem] = []
    for spec in config.data:
        path = Path(spec).expanduser()
        if path.suffix == ".jsonl" and path.is_file():
            problems.extend(_read_jsonl_problems(path, config))
        else:
            from stepdpo.problems import load_problems

            problems.extend(load_problems(spec, limit=config.limit or None, seed=config.seed))
    return problems


def _device(config: SFTConfig) -> str:
    import torch

    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def _make_trainer_class() -> type:
    """A Trainer whose loss projects onto the vocabulary only where a label is scored.

    With prompt tokens masked, most positions carry no loss; passing a boolean
    ``logits_to_keep`` mask (B, L) makes the model compute logits (N, V) for the
    N scored positions only, N = Σ_b |R_b|, instead of (B, L, V). The loss is
    Σ CE / (scored tokens in the whole accumulated batch), which is what
    ``num_items_in_batch`` counts.
    """
    import torch
    from transformers import Trainer

    class ResponseOnlyTrainer(Trainer):
        loss_is_scaled_for_ga = True

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            # Make Trainer count the scored tokens of each accumulated batch for us.
            self.model_accepts_loss_kwargs = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            # Position t predicts token t+1: keep t where labels[t+1] is scored.
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
            targets = labels[:, 1:][keep[:, :-1]]
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep, use_cache=False)
            summed = torch.nn.functional.cross_entropy(outputs.logits.float(), targets, reduction="sum")
            if num_items_in_batch is not None:
                loss = summed / num_items_in_batch
            else:
                loss = summed / max(1, targets.numel()) / self.args.gradient_accumulation_steps
            return (loss, outputs) if return_outputs else loss

    return ResponseOnlyTrainer


def _metrics_callback(path: Path) -> Any:
    from transformers import TrainerCallback

    class JsonlMetrics(TrainerCallback):
        """Appends each Trainer log (loss, learning rate, grad norm) as a line of metrics.jsonl."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}) + "\n")

    return JsonlMetrics()


def save_final(trainer: Any, final: Path, tokenizer: Any, base_model: str) -> None:
    """Save the trained model to ``final`` through a temporary folder, verified: a half-written model is never taken for a finished one."""
    from stepdpo.training.saving import save_trained_model

    # One name on every rank: all of them take part in the save (ZeRO-3 and FSDP gather the weights).
    tmp = final.with_name(final.name + ".tmp")
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    save_trained_model(trainer, tmp, tokenizer, base_model=base_model)  # verified: every weight saved whole
    if trainer.is_world_process_zero():
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)


def write_summary(config: SFTConfig, out: Path, trainer: Any, result: Any, examples: list[Any], dropped: dict[str, int],
                  resume: Optional[str], seconds: float, model: Any) -> dict[str, Any]:
    """``summary.json`` (also appended to metrics.jsonl): examples, steps, tokens, loss, what computed it."""
    summary = {
        "examples": len(examples),
        "optimizer_steps": trainer.state.global_step,
        "epochs": config.optim.epochs,
        "response_tokens": sum(sum(1 for t in e.labels if t != IGNORE_INDEX) for e in examples),
        "total_tokens": sum(len(e.input_ids) for e in examples),
        "train_seconds_this_run": round(seconds, 1),
        "train_loss": result.training_loss,
        "resumed_from": resume,
        "dropped": dropped,
        "compute": describe(str(trainer.args.device), "bfloat16" if config.bf16 else str(next(model.parameters()).dtype).removeprefix("torch.")),
    }
    atomic_write_json(out / "summary.json", summary)
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"summary": summary}) + "\n")
    return summary


def run(config: SFTConfig, problems: list[Problem], model: Any = None, tokenizer: Any = None, funnel: Optional[Funnel] = None) -> Path:
    """Fine-tune on ``problems``' solutions and save the model; returns the saved model's folder.

    ``model`` / ``tokenizer`` default to loading ``config.model``. When the
    model folder is already complete the training is skipped; otherwise training
    resumes from the last checkpoint in ``output_dir/checkpoints`` if there is one.
    """
    import torch
    from transformers import set_seed

    from stepdpo.stages.train import last_complete_checkpoint

    funnel = funnel if funnel is not None else Funnel(stage="sft")
    funnel.records_in = len(problems)
    out = output_dir(config)
    final = model_dir(config)
    if config.overwrite:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
    if is_complete(final):
        log.info("sft: %s is complete; skipping training (overwrite=true trains again)", final)
        funnel.records_out = len(problems)
        funnel.extra = {"skipped": "model already complete"}
        return final
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    set_seed(config.seed)

    if tokenizer is None:
        from stepdpo.models import load_tokenizer

        tokenizer = load_tokenizer(config.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    fmt = PromptFormat(style=config.prompt_style, chat_template_owner=tokenizer if config.prompt_style == "chat" else None)
    examples, stats = build_examples(((p.id, p.question, p.solution or "") for p in problems), tokenizer, fmt, config.max_length, config.score_prompt)
    for reason, count in stats.dropped.items():
        funnel.drop(reason, count)
    if not examples:
        raise ConfigError(f"sft: none of the {len(problems)} problems has a usable solution (dropped: {stats.dropped})")
    funnel.records_out = len(examples)

    # TrainingArguments before the model: under DeepSpeed ZeRO-3 it makes from_pretrained load partitioned weights (zero.Init).
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    device = _device(config)
    args = training_arguments(config.optim, output_dir=str(checkpoints), seed=config.seed, bf16=config.bf16,
                              logging_steps=config.logging_steps, save_steps=config.save_steps, save_total_limit=config.save_total_limit,
                              use_cpu=device == "cpu", train_sampling_strategy="group_by_length", report_to="none", disable_tqdm=False)
    if model is None:
        from stepdpo.models import load_model

        model = load_model(config.model, dtype="float32", device=None)  # the Trainer places it
    if config.lora.enabled:
        model = apply_lora(model, config.lora)
    model.config.use_cache = False

    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    trainer = _make_trainer_class()(model=model, args=args, train_dataset=dataset, data_collator=SFTCollator(pad_token_id=tokenizer.pad_token_id),
                                    callbacks=[_metrics_callback(out / "metrics.jsonl")])
    resume = last_complete_checkpoint(checkpoints)
    if resume:
        log.info("sft: resuming from %s", resume)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - started

    trainer.accelerator.unwrap_model(trainer.model).config.use_cache = True
    save_final(trainer, final, tokenizer, config.model)
    if not config.keep_checkpoints and trainer.is_world_process_zero():
        shutil.rmtree(checkpoints, ignore_errors=True)
    summary = write_summary(config, out, trainer, result, examples, stats.dropped, resume, seconds, model)
    funnel.extra = {"optimizer_steps": summary["optimizer_steps"], "train_loss": float(result.training_loss), "train_seconds": round(seconds, 1)}
    return final


def command(config: SFTConfig) -> int:
    """Load the training problems, fine-tune, save the model; print and save the funnel."""
    problems = load_training_problems(config)
    out = output_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "sft_config.yaml")
    funnel = Funnel(stage="sft")
    path = run(config, problems, funnel=funnel)
    funnel.save(RunDir(config.run_dir))
    print(funnel.render())
    print(f"model: {path}")
    return 0
