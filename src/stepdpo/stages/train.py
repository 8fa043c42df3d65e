"""`stepdpo train`: preference training (step-dpo, dpo, scdpo) on pairs, full or LoRA.

Pipeline of ``run``: tokenize pairs (``training.data``), hold out the pairs of a share of the
problems for evaluation (:func:`split_by_problem`), compute
reference log-probs once (``training.reference``, cached), then train with
``training.trainer.PreferenceTrainer`` (a ``transformers.Trainer``), one packed shared-prefix
forward per batch. Launch with ``accelerate launch -m stepdpo.cli train ...`` for DDP,
DeepSpeed or FSDP (configs/accelerate/, docs/training.md).

Layout of ``output_dir`` (``RUN/train/<mode>`` by default)::

    checkpoint-<step>/   Trainer checkpoints; a rerun with the same output_dir resumes from the last
    reference/           cached reference log-probs, named by a fingerprint of data + model
    runs/                TensorBoard event files
    metrics.jsonl        one line per logging step (train and eval split), then a summary line
    final/               the trained model (safetensors) + tokenizer; with LoRA merged, adapter in final/adapter
    result.json          what ``run`` returns
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from stepdpo.config import OptionCheck, save_config, validate_config
from stepdpo.errors import ConfigError, InputError
from stepdpo.hardware import describe
from stepdpo.records import StepPair, atomic_write_json
from stepdpo.rundir import Funnel, RunDir
from stepdpo.seeding import derive_seed
from stepdpo.steps import PromptFormat
from stepdpo.training.data import Mode, TokenizeOptions, read_pairs, tokenize_pairs
from stepdpo.training.options import LoRAConfig, OptimizerConfig, apply_lora, training_arguments

log = logging.getLogger(__name__)

# Pair files the `pairs` / `scdpo` stages write under RUN/pairs, per mode.
RUN_PAIR_FILES: dict[str, str] = {"step-dpo": "step_pairs.jsonl", "dpo": "dpo_pairs.jsonl", "scdpo": "scdpo_pairs.jsonl"}


def preference_optim(**changes: Any) -> OptimizerConfig:
    """The optimizer defaults of preference training (learning rate left to the mode), with ``changes``."""
    return OptimizerConfig(**{"learning_rate": None, "epochs": 2.0, "batch_size": 4, "warmup_ratio": 0.1, **changes})


@dataclass
class TrainConfig:
    """Options of `stepdpo train`."""

    pairs: list[str] = field(default_factory=list, metadata={"help": "Pair files (JSONL/Parquet; StepPair schema or TRL prompt/chosen/rejected). Empty = RUN/pairs/<file for mode>."})
    max_pairs: Optional[int] = field(default=None, metadata={"help": "Train on this many pairs only (None = all): the first of a fixed order keyed on `seed` and each pair's id, so a smaller budget's pairs are inside a larger one's (a data-efficiency curve) and the subset does not depend on the order of the files. More than there are: all, with a warning."})
    run_dir: str = field(default="runs/default", metadata={"help": "Run directory: pairs are read from RUN/pairs, output goes to RUN/train/<name>."})
    name: str = field(default="", metadata={"help": "Name of this training run under RUN/train ('' = the mode)."})
    output_dir: str = field(default="", metadata={"help": "Where checkpoints, metrics and the final model go ('' = RUN/train/<name>)."})
    model: str = field(default="smollm2-135m", metadata={"help": "Policy (and reference) model: Hugging Face id, local path, or 'smollm2-135m'. Use RUN/sft/model after SFT."})
    prompt_style: Literal["chat", "plain"] = field(default="chat", metadata={"help": "How the context is built (must match sampling): chat template or 'Question: ... Answer:'."})
    mode: Mode = field(default="step-dpo", metadata={"help": "step-dpo: score one step, EOS only on a final step; dpo: whole solutions + EOS; scdpo: solutions after a shared branch prefix + EOS."})
    loss_type: Literal["sigmoid", "ipo", "hinge"] = field(default="sigmoid", metadata={"help": "sigmoid (DPO), ipo (Azar et al.), hinge (SLiC)."})
    beta: Optional[float] = field(default=None, metadata={"help": "β: strength of the KL tie to the reference. None = the mode's default (MODE_DEFAULTS): 0.4 for step-dpo and dpo (the Step-DPO paper; 0.5 for 72B), 0.1 for scdpo (the SCDPO paper). A value given always wins."})
    label_smoothing: float = field(default=0.0, metadata={"help": "cDPO label smoothing ε (sigmoid loss only)."})
    sft_weight: float = field(default=0.0, metadata={"help": "Weight of a per-token NLL term on the chosen continuation (0 = pure preference loss)."})
    optim: OptimizerConfig = field(default_factory=lambda: preference_optim(), metadata={"help": "Optimizer, schedule and batch (learning rate: the mode's default, batch 4 pairs, 2 epochs, warmup 0.1)."})
    lora: LoRAConfig = field(default_factory=LoRAConfig, metadata={"help": "LoRA adapters instead of all weights; the reference is then the base with adapters disabled (off by default)."})
    eval_batch_size: int = field(default=8, metadata={"help": "Pairs per device per evaluation forward pass."})
    global_batch: int = field(default=0, metadata={"help": "The global batch these settings are written for (batch_size * grad_accum * processes); a launch with another number of processes is warned about at start. 0 = no check."})
    max_length: int = field(default=1024, metadata={"help": "Longest context + continuation per branch, in tokens (released config: 1024)."})
    max_prompt_length: int = field(default=512, metadata={"help": "Longest context in tokens; longer contexts keep their last tokens (released config: 512)."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (autocast); reference log-probs are computed the same way."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward to save memory."})
    eval_split: float = field(default=0.1, metadata={"help": "Share of the problems whose pairs are all held out for evaluation (0 = none); pairs of one problem share prefixes, so they stay on one side."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every this many optimizer steps (0 = every logging step)."})
    seed: int = field(default=0, metadata={"help": "Seed for the eval split, data order and LoRA initialisation."})
    resume: bool = field(default=True, metadata={"help": "Resume from the last checkpoint in output_dir when there is one."})
    logging_steps: int = field(default=5, metadata={"help": "Log metrics every this many optimizer steps."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every this many optimizer steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={"help": "Trackers: tensorboard, wandb, ... or none (metrics.jsonl is always written)."})
    attn_implementation: Literal["sdpa", "eager"] = field(default="sdpa", metadata={"help": "Attention kernel; both take the packed 4D mask."})
    reference_batch_size: int = field(default=8, metadata={"help": "Pairs per forward pass when precomputing reference log-probs."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.not_empty("model")
        check.above(0, "beta")
        check.share("label_smoothing", one=False)
        check.require(self.loss_type == "sigmoid" or not self.label_smoothing, "label_smoothing", f"applies to loss_type sigmoid only (loss_type={self.loss_type})")
        check.at_least(0, "sft_weight", "eval_steps", "global_batch")
        check.at_least(1, "max_pairs")
        check.share("eval_split", one=False)
        check.at_least(1, "eval_batch_size", "max_prompt_length", "logging_steps", "save_steps", "save_total_limit", "reference_batch_size")
        check.require(self.max_length > self.max_prompt_length, "max_length", f"must exceed max_prompt_length ({self.max_prompt_length}) to leave room for a continuation")
        validate_config(self.optim, prefix + "optim.")
        validate_config(self.lora, prefix + "lora.")


MODE_DEFAULTS: dict[str, dict[str, float]] = {
    "step-dpo": {"beta": 0.4, "learning_rate": 5e-6},
    "dpo": {"beta": 0.4, "learning_rate": 5e-6},
    "scdpo": {"beta": 0.1, "learning_rate": 1e-7},
}
"""What ``beta`` and ``optim.learning_rate`` left at None become, per mode. step-dpo/dpo: the Step-DPO paper's β and
a learning rate that moves the 135M default in a few steps; scdpo: the SCDPO paper's β and learning rate (7B)."""


def with_mode_defaults(config: TrainConfig) -> TrainConfig:
    """``config`` with ``beta`` and ``optim.learning_rate`` left at None set to its mode's defaults; values given are kept.

    Resolved when a run starts, not when the config is built, so that a config whose mode is changed later
    (``replace(config, mode="scdpo")``, as ``stepdpo run`` does per method) still gets that mode's defaults.
    """
    defaults = MODE_DEFAULTS[config.mode]
    beta = config.beta if config.beta is not None else defaults["beta"]
    learning_rate = config.optim.learning_rate if config.optim.learning_rate is not None else defaults["learning_rate"]
    return replace(config, beta=beta, optim=replace(config.optim, learning_rate=learning_rate))


@dataclass
class TrainResult:
    output_dir: str
    final_dir: str
    pairs_train: int
    pairs_eval: int
    global_step: int
    reference_cached: bool
    metrics: list[dict[str, Any]]
    """Rows of metrics.jsonl."""
    funnel: Funnel
    compute: dict[str, Any] = field(default_factory=dict)
    """What computed the numbers: device, compute dtype, CPU model and its bfloat16 support (``hardware.describe``)."""


def resolve_output_dir(config: TrainConfig) -> Path:
    return Path(config.output_dir) if config.output_dir else RunDir(config.run_dir).train(config.name or config.mode)


def problem_key(pair: StepPair) -> str:
    """The problem a pair belongs to: its question text (the same for every pair of one problem, whatever its id;
    for TRL rows, the prompt as given)."""
    return " ".join(pair.prompt.split())


def pair_budget(pairs: Sequence[StepPair], max_pairs: Optional[int], seed: int) -> list[StepPair]:
    """The ``max_pairs`` pairs training uses (all when None): the first ``max_pairs`` in the order of
    ``derive_seed(seed, "pair-budget", pair.id)``, kept in their file order.

    Keyed on the pair's id rather than its position, budgets are nested (the 100 pairs of a budget of 100
    are among a budget of 300's) and the same whichever order the pair files were read in.
    """
    if max_pairs is None or max_pairs >= len(pairs):
        if max_pairs is not None:
            log.warning("max_pairs %d: only %d pairs, training on all of them", max_pairs, len(pairs))
        return list(pairs)
    ranked = sorted(range(len(pairs)), key=lambda i: (derive_seed(seed, "pair-budget", pairs[i].id), i))
    return [pairs[i] for i in sorted(ranked[:max_pairs])]


def split_by_problem(pairs: Sequence[StepPair], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, eval indices) into ``pairs``: every pair of a held-out problem is in eval, the rest in train.

    Pairs of one problem share prefixes (the pairs of one error, an SCDPO sample's branch points), so a split
    per pair would score the policy on text it trained on. ``round(fraction * problems)`` problems are held
    out (at least one when fraction > 0, never all), chosen by a shuffle of the sorted problem keys seeded
    with ``seed``: the same pairs and seed give the same split.
    """
    groups: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        groups.setdefault(problem_key(pair), []).append(index)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_eval = min(len(keys) - 1, max(1, round(len(keys) * fraction))) if fraction > 0 and len(keys) >= 2 else 0
    if fraction > 0 and n_eval == 0:
        log.warning("eval_split %.2f: all %d pairs come from one problem, nothing held out", fraction, len(pairs))
    held_out = {index for key in keys[:n_eval] for index in groups[key]}
    return [i for i in range(len(pairs)) if i not in held_out], sorted(held_out)


def last_complete_checkpoint(out_dir: Path) -> Optional[str]:
    """The newest ``out_dir/checkpoint-<step>`` whose ``trainer_state.json`` parses, or None.

    The Trainer writes a checkpoint's files in place and ``trainer_state.json`` last, so a folder
    without it (or with it torn) is what a run killed while saving leaves; resuming from it would fail.
    """
    if not out_dir.is_dir():
        return None
    numbered = [(int(m.group(1)), path) for path in out_dir.iterdir() if path.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", path.name))]
    for _, path in sorted(numbered, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("skipping %s: incomplete (the run was stopped while saving it)", path)
            continue
        return str(path)
    return None


def check_global_batch(config: TrainConfig, processes: int) -> Optional[str]:
    """Warn (and return the warning) when this launch's global batch is not the ``global_batch`` the config was written for."""
    actual = config.optim.batch_size * config.optim.grad_accum * processes
    if not config.global_batch or actual == config.global_batch:
        return None
    message = (f"global batch {actual} = batch_size {config.optim.batch_size} x grad_accum {config.optim.grad_accum} x {processes} process(es), "
               f"but the config is written for global_batch {config.global_batch}")
    fits, remainder = divmod(config.global_batch, config.optim.batch_size * config.optim.grad_accum)
    message += f": launch {fits} processes" if fits and not remainder else ": change batch_size or grad_accum"
    log.warning(message)
    return message


def is_complete(final: Path) -> bool:
    """A finished training run: its final folder holds a tokenizer and every weight with its full shape."""
    from stepdpo.training.saving import is_verified_model

    return is_verified_model(final)


def _model_key(config: TrainConfig) -> str:
    """What the reference cache is keyed by for a model loaded from ``config.model``: its checkpoint files' fingerprint."""
    from stepdpo.stages.evaluate import checkpoint_fingerprint

    return checkpoint_fingerprint(config.model)["sha256"] or f"hub:{config.model}"


def _load_model(config: TrainConfig) -> Any:
    from stepdpo.models import load_model

    # No .to(): the Trainer places the model (and under ZeRO-3 / FSDP it is not whole on any one rank).
    model = load_model(config.model, device=None, attn_implementation=config.attn_implementation)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model


def preference_arguments(config: TrainConfig, out_dir: Path, has_eval: bool) -> Any:
    """The ``TrainingArguments`` of preference training: the shared ones plus evaluation, trackers and the packed forward's needs."""
    import torch

    return training_arguments(
        config.optim, output_dir=str(out_dir), seed=config.seed, bf16=config.bf16, logging_steps=config.logging_steps,
        save_steps=config.save_steps, save_total_limit=config.save_total_limit,
        per_device_eval_batch_size=config.eval_batch_size,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps or config.logging_steps,
        report_to=[r for r in config.report_to if r != "none"] or "none",
        dataloader_pin_memory=False,
        # Without an accelerator, say so: only then does accelerate form a gloo process group from the
        # torchrun environment (WORLD_SIZE, RANK) instead of running every launched process as a lone rank 0.
        use_cpu=not torch.accelerator.is_available(),
        # Every trainable parameter takes part in the packed forward; the search for unused ones costs an extra
        # autograd traversal per step (and DDP warns about it).
        ddp_find_unused_parameters=False,
    )


def pair_datasets(tokens: Sequence[Any], train_index: Sequence[int], eval_index: Sequence[int]) -> tuple[Any, Any, Any]:
    """(train set, eval set or None, fill): ``fill(logps)`` puts the reference log-probs of all pairs into both sets;
    they are filled in when training starts, by the prepared model (see training.reference_pass)."""
    from stepdpo.training.data import PairDataset

    train_set = PairDataset([tokens[i] for i in train_index], [(0.0, 0.0)] * len(train_index))
    eval_set = PairDataset([tokens[i] for i in eval_index], [(0.0, 0.0)] * len(eval_index)) if eval_index else None

    def fill(logps: list[tuple[float, float]]) -> None:
        train_set.reference[:] = [logps[i] for i in train_index]
        if eval_set is not None:
            eval_set.reference[:] = [logps[i] for i in eval_index]

    return train_set, eval_set, fill


def last_losses(metrics: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Loss, reward margin and accuracy of the last train and eval logs, for the funnel."""
    last_train = next((m for m in reversed(metrics) if m["split"] == "train" and "rewards/margins" in m), {})
    last_eval = next((m for m in reversed(metrics) if m["split"] == "eval"), {})
    return {**{f"train {k}": float(last_train[k]) for k in ("loss", "rewards/margins", "rewards/accuracies") if k in last_train},
            **{f"eval {k}": float(last_eval[k]) for k in ("loss", "rewards/margins", "rewards/accuracies") if k in last_eval}}


def run(config: TrainConfig, pairs: list[StepPair], model: Any = None, tokenizer: Any = None, callbacks: Optional[list[Any]] = None) -> TrainResult:
    """Train ``model`` (default: ``config.model``) on ``pairs``; saves to ``resolve_output_dir(config)`` and returns a summary.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (progress hooks, early stopping).
    """
    from transformers import set_seed

    from stepdpo.models import load_tokenizer
    from stepdpo.training.data import PackedCollator
    from stepdpo.training.reference import weights_fingerprint
    from stepdpo.training.reference_pass import ReferencePass, cache_path, read_cache
    from stepdpo.training.saving import save_trained_model
    from stepdpo.training.trainer import LossSettings, MetricsJsonlCallback, PreferenceTrainer, read_metrics

    config = with_mode_defaults(config)
    config.validate()
    out_dir = resolve_output_dir(config)
    set_seed(config.seed)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompt_format = PromptFormat(style=config.prompt_style, chat_template_owner=tokenizer)
    options = TokenizeOptions(mode=config.mode, max_length=config.max_length, max_prompt_length=config.max_prompt_length)
    pairs = pair_budget(pairs, config.max_pairs, config.seed)
    kept, dropped = tokenize_pairs(pairs, tokenizer, prompt_format, options)
    funnel = Funnel(f"train-{config.name or config.mode}", records_in=len(pairs), dropped=dict(dropped) or None)
    if not kept:
        raise InputError("<pairs>", f"no trainable pairs among {len(pairs)} (dropped: {dropped})")
    train_index, eval_index = split_by_problem([pair for pair, _ in kept], config.eval_split, config.seed)
    tokens = [pair_tokens for _, pair_tokens in kept]

    # TrainingArguments before the model: under DeepSpeed ZeRO-3 it is what makes from_pretrained load
    # partitioned weights (zero.Init) instead of a full float32 copy on every rank.
    args = preference_arguments(config, out_dir, has_eval=bool(eval_index))
    check_global_batch(config, args.world_size)
    model_key = _model_key(config) if model is None else weights_fingerprint(model)
    if model is None:
        model = _load_model(config)
    if config.lora.enabled and not hasattr(model, "peft_config"):
        model = apply_lora(model, config.lora)

    train_set, eval_set, fill = pair_datasets(tokens, train_index, eval_index)
    reference_path = cache_path(out_dir / "reference", model_key, tokens, config.bf16)
    cached = read_cache(reference_path, len(tokens))
    last = last_complete_checkpoint(out_dir) if config.resume else None
    if last and cached is None:
        raise ConfigError(f"{out_dir}: resuming from {last}, but the reference log-probs {reference_path} are gone; they must come "
                          "from the starting weights, not the trained ones: restore that file, or remove the checkpoints to start over")
    reference_pass = ReferencePass(tokens, fill, reference_path, tokenizer.pad_token_id, config.reference_batch_size, config.bf16, cached)
    trainer = PreferenceTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
                                data_collator=PackedCollator(tokenizer.pad_token_id),
                                callbacks=[MetricsJsonlCallback(out_dir), reference_pass, *(callbacks or [])],
                                loss_settings=LossSettings(config.loss_type, config.beta, config.label_smoothing, config.sft_weight))
    reference_pass.bind(trainer)
    if last:
        log.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)

    final = out_dir / "final"
    # Every rank takes part (ZeRO-3 and FSDP gather the weights); the saved weights are verified before result.json says done.
    save_trained_model(trainer, final, tokenizer, base_model=config.model)
    metrics = read_metrics(out_dir)
    funnel.records_out = len(kept)
    funnel.extra = {"pairs_train": len(train_index), "pairs_eval": len(eval_index), "steps": trainer.state.global_step, **last_losses(metrics)}
    compute = describe(str(trainer.args.device), "bfloat16" if config.bf16 else str(next(model.parameters()).dtype).removeprefix("torch."))
    result = TrainResult(str(out_dir), str(final), len(train_index), len(eval_index), trainer.state.global_step, cached is not None, metrics, funnel, compute)
    if trainer.is_world_process_zero():
        atomic_write_json(out_dir / "result.json", {k: v for k, v in asdict(result).items() if k != "metrics"})
    return result


def command(config: TrainConfig) -> int:
    """Read pairs (config.pairs or the run directory), train, print and save the funnel."""
    config = with_mode_defaults(config)  # train_config.yaml records the values the run used
    config.validate()
    run_dir = RunDir(config.run_dir)
    paths = [Path(p) for p in config.pairs] or [run_dir.pairs / RUN_PAIR_FILES[config.mode]]
    for path in paths:
        if not path.is_file():
            raise InputError(str(path), "pair file not found (run `stepdpo pairs` first, or pass --pairs)")
    pairs = read_pairs(paths)
    out_dir = resolve_output_dir(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "train_config.yaml")
    result = run(config, pairs)
    if os.environ.get("RANK", "0") != "0":  # under accelerate/torchrun only the main process reports
        return 0
    if Path(config.run_dir).is_dir():
        result.funnel.save(run_dir)
    print(result.funnel.render())
    print(f"final model: {result.final_dir}")
    return 0
