"""`stepdpo pretrain`: build the model organism, a small Llama trained from scratch on synthetic problems.

The organism is what makes a powered experiment affordable on a CPU: a few-million
parameter ``LlamaForCausalLM`` that generates tens of times faster than the 135M
embedded model, trained only on the synthetic generator's step-format solutions,
so every step of its output can be judged exactly (``localizers/exact.py``).

``run`` does, deterministically from ``config.seed``:

1. trains a byte-level BPE tokenizer (digits split, chat template) on the text of
   the first ``tokenizer_problems`` training problems (:mod:`stepdpo.organism.tokenizer`);
2. initialises a Llama of the configured size from the seed;
3. trains it with the SFT stage (:func:`stepdpo.stages.sft.run`: the pipeline's own
   prompt and solutions, the loss on every token with ``score_prompt`` (the default) or
   on the solution only, checkpoints a rerun resumes from);
4. evaluates it greedily on the validation problems (never the test split) and
   locates the first wrong step of every error with the exact localizer.

The result is an ordinary checkpoint folder that every stage loads like any model.
`stepdpo pretrain` with the default options builds the ``organism`` alias's model once into
``$STEPDPO_CACHE/models/organism-<fingerprint>`` (:mod:`stepdpo.organism.spec`), which
``models.resolve_model("organism")`` then finds; ``stepdpo run`` builds it first when a run names it.

Layout of ``output_dir``::

    model/              the organism (config, safetensors weights, tokenizer with chat template)
    pretrain_config.yaml
    build.json          parameters, sizes, seconds per phase, training tokens/s, machine
    validation.json     greedy accuracy by chain length, first-wrong-step distribution
    validation/         the evaluation's samples.jsonl and results.json
    metrics.jsonl, summary.json   the SFT stage's training log
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from stepdpo.config import save_config
from stepdpo.errors import ConfigError
from stepdpo.records import Problem, atomic_write_json
from stepdpo.organism.spec import PretrainConfig, fingerprint, model_dir, output_dir
from stepdpo.steps import PromptFormat
from stepdpo.training.options import OptimizerConfig

log = logging.getLogger(__name__)

def check_config(config: PretrainConfig) -> None:
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "batch_size", "max_length", "tokenizer_problems"):
        if getattr(config, name) < 1:
            raise ConfigError(f"pretrain: {name} must be >= 1, got {getattr(config, name)}")
    if config.hidden_size % config.num_heads or (config.hidden_size // config.num_heads) % 2:
        raise ConfigError(f"pretrain: hidden_size {config.hidden_size} must split into num_heads={config.num_heads} heads of even size")
    if config.num_heads % config.num_kv_heads:
        raise ConfigError(f"pretrain: num_heads {config.num_heads} must be a multiple of num_kv_heads {config.num_kv_heads}")
    if config.max_length > config.max_position_embeddings:
        raise ConfigError(f"pretrain: max_length {config.max_length} exceeds max_position_embeddings {config.max_position_embeddings}")


def use_bf16(config: PretrainConfig, device: str) -> bool:
    """Whether training autocasts to bfloat16 (on a CPU without native bf16 it is emulated and slow)."""
    from stepdpo.generation.hf import cpu_supports_bf16

    if config.precision == "auto":
        return device.startswith("cuda") or cpu_supports_bf16()
    return config.precision == "bf16"


def tokenizer_texts(problems: list[Problem], count: int) -> list[str]:
    """What the tokenizer learns from: each problem's plain prompt and solution (chat role markers are special tokens)."""
    plain = PromptFormat(style="plain")
    return [plain.head(p.question) + (p.solution or "") for p in problems[:count]]


def build_model(config: PretrainConfig, tokenizer: Any) -> Any:
    """A freshly initialised ``LlamaForCausalLM``, the same weights for the same seed and sizes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(llama)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def machine() -> dict[str, Any]:
    """CPU model and flags that matter for speed, threads, load: recorded beside every timing."""
    import torch

    from stepdpo.hardware import cpu_info, speed_flags

    cpu, flags = cpu_info()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "flags": speed_flags(flags),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def training_config(config: PretrainConfig, out: Path, device: str, bf16: bool) -> Any:
    """The SFT stage's options that train the freshly built model into ``out``."""
    from stepdpo.stages import sft

    return sft.SFTConfig(
        model="(built in memory by stepdpo pretrain)",
        data=list(config.data),
        prompt_style=config.prompt_style,
        output_dir=str(out),
        optim=OptimizerConfig(
            epochs=config.epochs,
            learning_rate=config.learning_rate,
            lr_scheduler=config.lr_scheduler,
            warmup_ratio=config.warmup_ratio,
            weight_decay=config.weight_decay,
            batch_size=config.batch_size,
        ),
        max_length=config.max_length,
        score_prompt=config.score_prompt,
        bf16=bf16,
        seed=config.seed,
        save_steps=500,
        logging_steps=20,
        device=device,
        threads=config.threads,
    )


def build_record(config: PretrainConfig, out: Path, tokenizer: Any, problems: int, parameters: int, bf16: bool,
                 seconds: dict[str, float], cpu_seconds: float) -> dict[str, Any]:
    """What ``build.json`` says of a finished build: sizes, the SFT stage's summary, times, machine."""
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    build = {
        "fingerprint": fingerprint(config),
        "parameters": parameters,
        "vocab_size": len(tokenizer),
        "training_problems": problems,
        "examples": summary["examples"],
        "optimizer_steps": summary["optimizer_steps"],
        "train_tokens": summary["total_tokens"] * config.epochs,
        "response_tokens": summary["response_tokens"] * config.epochs,
        "train_loss": summary["train_loss"],
        "bf16_autocast": bf16,
        "seconds": seconds,
        # CPU seconds of this process (all its threads): with other jobs on the cores, wall
        # seconds say little, while CPU seconds at one thread are what a quiet core would take.
        "cpu_seconds": cpu_seconds,
        "resumed_from": summary["resumed_from"],
        "machine": machine(),
    }
    # Tokens/s only means something for a build trained in one go.
    if not summary["resumed_from"]:
        build["train_tokens_per_s"] = round(build["train_tokens"] / max(seconds["training"], 1e-9), 1)
    return build


def run(config: PretrainConfig, problems: list[Problem]) -> Path:
    """Build the organism from ``problems`` (with solutions) into ``model_dir(config)``; returns that folder.

    A complete model folder is kept as it is (``overwrite`` builds again); a killed
    build resumes from the SFT stage's last checkpoint.
    """
    import torch

    from stepdpo.organism.tokenizer import train_tokenizer
    from stepdpo.stages import sft

    check_config(config)
    out, final = output_dir(config), model_dir(config)
    if config.overwrite:
        shutil.rmtree(out, ignore_errors=True)
    if sft.is_complete(final):
        log.info("pretrain: %s is complete; not building again (overwrite=true does)", final)
        return final
    if not problems:
        raise ConfigError("pretrain: no training problems")
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "pretrain_config.yaml")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = "cuda" if config.device == "auto" and torch.cuda.is_available() else ("cpu" if config.device == "auto" else config.device)
    bf16 = use_bf16(config, device)
    started, cpu_started = time.perf_counter(), time.process_time()

    tokenizer = train_tokenizer(tokenizer_texts(problems, config.tokenizer_problems), config.vocab_size, config.max_position_embeddings)
    tokenizer_seconds = time.perf_counter() - started
    model = build_model(config, tokenizer)
    parameters = sum(p.numel() for p in model.parameters())
    log.info("pretrain: %d parameters, vocabulary %d, bf16 autocast %s, %d threads", parameters, len(tokenizer), bf16, torch.get_num_threads())

    sft_config = training_config(config, out, device, bf16)
    train_started = time.perf_counter()
    sft.run(sft_config, problems, model=model, tokenizer=tokenizer)
    train_seconds = time.perf_counter() - train_started
    seconds = {"tokenizer": round(tokenizer_seconds, 1), "training": round(train_seconds, 1), "build": round(time.perf_counter() - started, 1)}
    build = build_record(config, out, tokenizer, len(problems), parameters, bf16, seconds, round(time.process_time() - cpu_started, 1))
    atomic_write_json(out / "build.json", build)
    return final


def validate(config: PretrainConfig, model_path: Path, problems: list[Problem]) -> dict[str, Any]:
    """Greedy accuracy of the built model on ``problems`` by chain length, and where its errors start.

    Runs the `stepdpo eval` stage (step prompt, the model's prompt style) into
    ``output_dir/validation`` and the exact localizer over its wrong responses (:func:`stepdpo.report.flawed_steps.flawed_step_rates`).
    """
    from stepdpo import metrics
    from stepdpo.generation.base import GeneratorConfig
    from stepdpo.generation.hf import HFGenerator
    from stepdpo.report.flawed_steps import flawed_step_rates
    from stepdpo.stages import evaluate

    generator_config = GeneratorConfig(model=str(model_path), prompt_style=config.prompt_style, batch_size=64, device=config.device)
    eval_config = evaluate.EvalConfig(model=str(model_path), data=[config.validation], prompt="step", max_new_tokens=config.validation_max_new_tokens,
                                      output_dir=str(output_dir(config) / "validation"), generator=generator_config)
    started = time.perf_counter()
    results = evaluate.run(eval_config, {"validation": problems}, HFGenerator(generator_config))
    seconds = time.perf_counter() - started
    samples = {s.problem_id: s for s in _read_eval_samples(output_dir(config) / "validation" / "samples.jsonl")}
    correct = {p.id: samples[p.id].correct for p in problems}
    by_length: dict[int, list[bool]] = {}
    for problem in problems:
        by_length.setdefault(int(problem.metadata["num_steps"]), []).append(correct[problem.id])
    wrong = [p for p in problems if not correct[p.id]]
    rates = flawed_step_rates(problems, [samples[p.id] for p in problems])
    positions = {**{str(k): n for k, n in rates.first_wrong.items()}, **({"none": rates.unlocated} if rates.unlocated else {})}
    after_first = sum(n for k, n in rates.first_wrong.items() if k > 1)
    summary = {
        "set": config.validation,
        "problems": len(problems),
        **metrics.accuracy([correct[p.id] for p in problems]),
        "by_chain_length": {str(n): {"problems": len(v), "accuracy": round(sum(v) / len(v), 4)} for n, v in sorted(by_length.items())},
        "errors": len(wrong),
        "first_wrong_step": dict(sorted(positions.items())),
        "errors_first_wrong_after_step_1": round(after_first / len(wrong), 4) if wrong else None,
        "truncated": sum(1 for p in problems if samples[p.id].finish_reason == "length"),
        "generated_tokens": results["sets"]["validation"]["generated_tokens"],
        "seconds": round(seconds, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    atomic_write_json(output_dir(config) / "validation.json", summary)
    return summary


def _read_eval_samples(path: Path) -> list[Any]:
    from stepdpo.records import RecordStore
    from stepdpo.stages.evaluate import EvalSample

    return list(RecordStore(path, EvalSample).records())


def load_problems(specs: list[str], seed: int) -> list[Problem]:
    """Problems of every spec in order (synthetic specs, shipped sets, JSONL files with solutions)."""
    from stepdpo.stages import sft

    return sft.load_training_problems(sft.SFTConfig(data=list(specs), seed=seed))


def is_built(config: PretrainConfig) -> bool:
    from stepdpo.stages import sft

    return sft.is_complete(model_dir(config))


def build(config: PretrainConfig, validate_after: bool = True) -> Path:
    """Build (or find) the organism of ``config``; validate it once when asked and configured. Returns the model folder."""
    final = model_dir(config)
    if config.overwrite or not is_built(config):
        run(config, load_problems(config.data, config.seed))
    if validate_after and config.validation and not (output_dir(config) / "validation.json").is_file():
        validate(config, final, load_problems([config.validation], config.seed))
    return final


def command(config: PretrainConfig) -> int:
    """Build the organism, print where it is and how it did on the validation problems."""
    final = build(config)
    for name in ("build.json", "validation.json"):
        path = output_dir(config) / name
        if path.is_file():
            shown = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k not in ("machine",)}
            print(f"{name}: {json.dumps(shown)}")
    print(f"model: {final}")
    return 0
