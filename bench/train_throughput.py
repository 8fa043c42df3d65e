"""Training throughput of `stepdpo train` against TRL's DPOTrainer on the same pairs, in one run.

    .venv/bin/python bench/train_throughput.py --profiles embedded realistic \
        --n-pairs 48 --batch-size 4 --steps 8 --warmup 2 --threads 2 \
        --out bench/results/train_throughput.json

What it measures, per length profile and per system, each system in its own subprocess
(so that peak memory and allocator state of one never pollute another):

- ``pairs/s``: pairs trained per second of optimizer steps, timed from the end of the
  ``--warmup`` first steps to the end of the last of ``--steps`` measured ones
  (``pairs/s = steps · batch_size / seconds``; data collation between steps is included);
- ``precompute s``: the one pass of the reference over all ``--n-pairs`` pairs, for the
  systems that precompute it, and ``amortised pairs/s = N / (N / (pairs/s) + precompute s)``:
  one epoch over the N pairs with the reference paid once (more epochs amortise it better);
- ``peak RSS``: ``ru_maxrss`` of the subprocess (model loading included; with CUDA also
  ``torch.cuda.max_memory_allocated``);
- the loss of the first step and the mean policy log-prob of chosen/rejected at that step: at
  step 0 the policy equals the reference, so every system should report ``log 2 = 0.6931``
  (the "equal loss" check; log-probs differ by TRL's appended EOS token, see below).

Systems, all float32 (or all bf16 autocast with ``--bf16``), no gradient checkpointing, same learning rate (constant schedule),
β = 0.4 sigmoid loss, same batch size, same seed, same model weights:

- ``ours``: ``stepdpo.stages.train.run`` in ``step-dpo`` mode (shared-prefix packed forward,
  reference precomputed and cached, logits only at scored positions);
- ``trl-default``: ``trl.DPOTrainer`` at its defaults apart from the equalised settings (so a
  second model holds the reference and runs every step);
- ``trl-best``: the same with ``precompute_ref_log_probs=True``.

TRL gets ``prompt`` = the exact context text our trainer tokenizes (chat turn + problem +
``initial_reason_steps``) and ``chosen``/``rejected`` = the step texts; it appends an EOS
token to every completion (our step-dpo mode does so only for a step that ends the solution),
so TRL scores one token more per completion. Token counts of both are recorded.

Profiles:

- ``embedded``: Step-DPO-shaped pairs: ``--pairs`` (StepPair JSONL, e.g. RUN/pairs/step_pairs.jsonl)
  or, without it, ``synthetic:train`` problems with a correct next step as chosen and the same
  step with its result number changed as rejected (prefix ~100-150 tokens, steps ~15-30);
- ``realistic``: exact lengths, prefix ``--prefix-tokens`` (400) and both steps
  ``--step-tokens`` (60), made of random single-token words.

Bound from token counts: TRL at its best runs the policy on ``prefix+chosen`` and
``prefix+rejected``, ours on ``prefix+chosen+rejected``, so over the N pairs
``bound = Σ(2·P_i + C_i + R_i) / Σ(P_i + C_i + R_i)`` (= ``2(P+S)/(P+2S)`` for C = R = S).
It counts transformer-body tokens only: the output projection computed only at scored
positions and padding differences can put a measured ratio above it. Against TRL's default
(a reference forward on both sequences every step too), assuming backward ≈ 2 × forward,
``bound_default = (3·Σ(2P+C+R) + Σ(2P+C+R)) / (3·Σ(P+C+R))``.

Writes ``--out`` (JSON) and the same name with ``.md`` (a table), with the command line, date,
CPU model, torch threads and ``os.getloadavg()`` before and after every system, because the
machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("embedded", "realistic")
SYSTEMS = ("ours", "trl-default", "trl-best")


@dataclass
class Job:
    """What one subprocess runs: one system on one profile's pairs."""

    system: str
    profile: str
    pairs_file: str
    work_dir: str
    model: str
    prompt_style: str
    batch_size: int
    steps: int
    warmup: int
    threads: int
    learning_rate: float
    beta: float
    seed: int
    ref_batch_size: int
    bf16: bool = False


# ---------------------------------------------------------------- pairs


def perturb_step(step: str, value: str, rng: random.Random) -> str | None:
    """The step with every standalone occurrence of its result ``value`` replaced by a wrong number.

    None when ``value`` is not a plain integer or does not occur in the step.
    """
    if not re.fullmatch(r"\d+", value):
        return None
    wrong = int(value) + rng.choice([d for d in range(-9, 10) if d and int(value) + d >= 0])
    pattern = re.compile(rf"(?<![\d.]){re.escape(value)}(?!\d|\.\d)")
    changed = pattern.sub(str(wrong), step)
    return changed if changed != step else None


def synthetic_pairs(n: int, seed: int) -> list[Any]:
    """``n`` Step-DPO pairs from ``synthetic:train``: correct prefix steps, the correct next step, the step with a wrong result."""
    from stepdpo.problems import load_problems
    from stepdpo.records import StepPair
    from stepdpo.steps import STEP_HEADER, split_steps

    rng = random.Random(seed)
    pairs: list[StepPair] = []
    # Some steps carry no integer result to perturb: draw a few more problems than needed.
    for problem in load_problems(f"synthetic:train?n={2 * n + 8}&min_steps=2&max_steps=4&seed={seed}"):
        steps = split_steps(problem.solution or "")
        values = problem.metadata.get("step_values", [])
        if len(steps) != len(values):
            continue
        k = rng.randint(1, len(steps))
        rejected = perturb_step(steps[k - 1], str(values[k - 1]), rng)
        if rejected is None:
            continue
        pairs.append(
            StepPair(
                id=f"{problem.id}@{k}",
                dataset="synthetic:train",
                prompt=problem.question,
                initial_reason_steps=STEP_HEADER + "".join(steps[: k - 1]),
                chosen=steps[k - 1],
                rejected=rejected,
                full_chosen="".join(steps[k - 1 :]),
                full_rejected="",
                answer=problem.answer,
                problem_id=problem.id,
                step_index=k,
            )
        )
        if len(pairs) == n:
            return pairs
    raise RuntimeError(f"synthetic:train gave only {len(pairs)} perturbable steps, {n} asked")


def single_token_words(tokenizer: Any, limit: int = 2000) -> list[str]:
    """Lower-case words ``w`` (3-8 letters) for which ``" " + w`` is exactly one token.

    A text ``" w1 w2 ... wn"`` of such words is ``n`` tokens: the byte-level pre-tokenizer
    splits at every space before a letter, so no merge crosses a word boundary.
    """
    words: list[str] = []
    for token in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        if token.startswith("Ġ") and re.fullmatch(r"[a-z]{3,8}", token[1:]):
            if len(tokenizer(" " + token[1:], add_special_tokens=False)["input_ids"]) == 1:
                words.append(token[1:])
        if len(words) == limit:
            break
    return words


def realistic_pairs(tokenizer: Any, prompt_style: str, n: int, prefix_tokens: int, step_tokens: int, seed: int) -> list[Any]:
    """``n`` pairs whose context is exactly ``prefix_tokens`` tokens and whose steps are exactly ``step_tokens`` each.

    Context = chat turn with a synthetic problem + ``"Let's think step by step.\\n"`` + random
    words filling it up; chosen and rejected = different random word sequences. Lengths are
    checked with the trainer's own tokenization.
    """
    from stepdpo.problems import load_problems
    from stepdpo.records import StepPair
    from stepdpo.steps import STEP_HEADER, PromptFormat
    from stepdpo.training.data import TokenizeOptions, tokenize_pair

    rng = random.Random(seed)
    words = single_token_words(tokenizer)
    fmt = PromptFormat(style=prompt_style, chat_template_owner=tokenizer)  # type: ignore[arg-type]
    options = TokenizeOptions(mode="step-dpo", max_length=prefix_tokens + step_tokens, max_prompt_length=prefix_tokens)

    def text(count: int) -> str:
        return "".join(" " + rng.choice(words) for _ in range(count))

    def count(context: str) -> int:
        return len(tokenizer(context, add_special_tokens=False)["input_ids"])

    pairs: list[StepPair] = []
    for problem in load_problems(f"synthetic:train?n={n}&seed={seed}"):
        fill = prefix_tokens - count(fmt.context(problem.question, STEP_HEADER))
        if fill < 0:
            raise ValueError(f"--prefix-tokens {prefix_tokens} is shorter than the bare context of {problem.id}")
        chosen, rejected = text(step_tokens), text(step_tokens)
        pair = StepPair(
            id=f"{problem.id}@realistic", dataset="realistic", prompt=problem.question,
            initial_reason_steps=STEP_HEADER + text(fill),
            chosen=chosen, rejected=rejected, full_chosen="", full_rejected="", answer=problem.answer,
        )
        tokens = tokenize_pair(pair, tokenizer, fmt, options)
        if isinstance(tokens, str) or (len(tokens.prefix), len(tokens.chosen), len(tokens.rejected)) != (prefix_tokens, step_tokens, step_tokens):
            got = tokens if isinstance(tokens, str) else (len(tokens.prefix), len(tokens.chosen), len(tokens.rejected))
            raise RuntimeError(f"realistic pair {pair.id}: token lengths {got}, wanted {(prefix_tokens, step_tokens, step_tokens)}")
        pairs.append(pair)
    return pairs


def token_stats(pairs: list[Any], tokenizer: Any, prompt_style: str) -> dict[str, float]:
    """Mean context P, chosen C, rejected R (our tokenization) and the token-count bounds of the module docstring."""
    from stepdpo.steps import PromptFormat
    from stepdpo.training.data import TokenizeOptions, tokenize_pairs

    fmt = PromptFormat(style=prompt_style, chat_template_owner=tokenizer)  # type: ignore[arg-type]
    kept, dropped = tokenize_pairs(pairs, tokenizer, fmt, TokenizeOptions(mode="step-dpo"))
    if dropped:
        raise RuntimeError(f"pairs the trainer would drop: {dropped}")
    P = [len(t.prefix) for _, t in kept]
    C = [len(t.chosen) for _, t in kept]
    R = [len(t.rejected) for _, t in kept]
    separate = sum(2 * p + c + r for p, c, r in zip(P, C, R))
    packed = sum(p + c + r for p, c, r in zip(P, C, R))
    n = len(kept)
    return {
        "pairs": n,
        "mean_prefix_tokens": sum(P) / n,
        "mean_chosen_tokens": sum(C) / n,
        "mean_rejected_tokens": sum(R) / n,
        "mean_step_tokens": (sum(C) + sum(R)) / (2 * n),
        "separate_tokens": separate,
        "packed_tokens": packed,
        "bound_vs_trl_best": separate / packed,
        "bound_vs_trl_default": (3 * separate + separate) / (3 * packed),
    }


def write_pairs(pairs: list[Any], path: Path) -> None:
    from stepdpo.records import atomic_write_text, record_to_dict

    atomic_write_text(path, "".join(json.dumps(record_to_dict(p), ensure_ascii=False) + "\n" for p in pairs))


# ---------------------------------------------------------------- one system (subprocess side)


def step_timer() -> Any:
    """A ``TrainerCallback`` recording the wall time at train begin and at every step end, and the first logged metrics."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []
            self.first_log: dict[str, float] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.marks = [time.perf_counter()]

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.marks.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs and not self.first_log:
                self.first_log = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}

    return StepTimer()


def timing(marks: list[float], warmup: int, steps: int, batch_size: int) -> dict[str, Any]:
    """pairs/s over the measured steps: ``marks[i]`` is the end of step i (``marks[0]`` train begin)."""
    if len(marks) != warmup + steps + 1:
        raise RuntimeError(f"expected {warmup + steps} optimizer steps, saw {len(marks) - 1}")
    seconds = marks[-1] - marks[warmup]
    step_seconds = [b - a for a, b in zip(marks, marks[1:])]
    return {
        "measured_seconds": seconds,
        "pairs_per_second": steps * batch_size / seconds,
        "seconds_per_step": seconds / steps,
        "step_seconds": step_seconds,
    }


def first_step(first_log: dict[str, float]) -> dict[str, float | None]:
    return {
        "step0_loss": first_log.get("loss"),
        "step0_logps_chosen": first_log.get("logps/chosen"),
        "step0_logps_rejected": first_log.get("logps/rejected"),
    }


def run_ours(job: Job, pairs: list[Any], model: Any, tokenizer: Any) -> dict[str, Any]:
    """`stepdpo train` (step-dpo mode) on the pairs; the reference pass is timed first and then read from its cache by ``run``."""
    from stepdpo.stages import train
    from stepdpo.steps import PromptFormat
    from stepdpo.training.data import TokenizeOptions, tokenize_pairs
    from stepdpo.training.reference import cached_reference_logps

    config = train.TrainConfig(
        output_dir=str(Path(job.work_dir) / "ours"), model=job.model, prompt_style=job.prompt_style, mode="step-dpo",  # type: ignore[arg-type]
        loss_type="sigmoid", beta=job.beta, eval_split=0.0, logging_steps=1,
        optim=train.preference_optim(learning_rate=job.learning_rate, lr_scheduler="constant", warmup_ratio=0.0,
                                     max_steps=job.warmup + job.steps, batch_size=job.batch_size),
        save_steps=10**9, report_to=["none"], resume=False, seed=job.seed, reference_batch_size=job.ref_batch_size, bf16=job.bf16,
    )
    fmt = PromptFormat(style=config.prompt_style, chat_template_owner=tokenizer)
    options = TokenizeOptions(mode=config.mode, max_length=config.max_length, max_prompt_length=config.max_prompt_length)
    kept, _ = tokenize_pairs(pairs, tokenizer, fmt, options)
    started = time.perf_counter()
    cached_reference_logps(model, [t for _, t in kept], tokenizer.pad_token_id, train.resolve_output_dir(config) / "reference", config.reference_batch_size, config.bf16)
    precompute = time.perf_counter() - started
    timer = step_timer()
    result = train.run(config, pairs, model=model, tokenizer=tokenizer, callbacks=[timer])
    if not result.reference_cached:
        raise RuntimeError("the trainer recomputed the reference: the timed precompute was not the one it used")
    return {
        "precompute_seconds": precompute,
        "tokens": {
            "prefix": sum(len(t.prefix) for _, t in kept) / len(kept),
            "chosen": sum(len(t.chosen) for _, t in kept) / len(kept),
            "rejected": sum(len(t.rejected) for _, t in kept) / len(kept),
        },
        **timing(timer.marks, job.warmup, job.steps, job.batch_size),
        **first_step(timer.first_log),
    }


def run_trl(job: Job, pairs: list[Any], model: Any, tokenizer: Any, precompute: bool) -> dict[str, Any]:
    """TRL's DPOTrainer on ``prompt`` = our exact context text, ``chosen``/``rejected`` = the step texts."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from stepdpo.steps import PromptFormat
    from stepdpo.training.data import pair_context

    fmt = PromptFormat(style=job.prompt_style, chat_template_owner=tokenizer)  # type: ignore[arg-type]
    rows = [{"prompt": pair_context(p, fmt), "chosen": p.chosen, "rejected": p.rejected} for p in pairs]

    class TimedDPOTrainer(DPOTrainer):
        """DPOTrainer that adds up the time of its reference precompute pass(es)."""

        precompute_seconds = 0.0

        def _precompute_ref_logps(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            out = super()._precompute_ref_logps(*args, **kwargs)
            TimedDPOTrainer.precompute_seconds += time.perf_counter() - started
            return out

    args = DPOConfig(
        output_dir=str(Path(job.work_dir) / ("trl-best" if precompute else "trl-default")),
        # Equalised with ours (TRL's defaults are bf16=True, checkpointing on, lr 1e-6, beta 0.1):
        bf16=job.bf16, fp16=False, activation_checkpointing=False, gradient_checkpointing=False,
        learning_rate=job.learning_rate, lr_scheduler_type="constant", warmup_steps=0, beta=job.beta,
        loss_type=["sigmoid"], per_device_train_batch_size=job.batch_size, max_steps=job.warmup + job.steps,
        seed=job.seed, data_seed=job.seed,
        # Only what TRL-at-its-best changes:
        precompute_ref_log_probs=precompute,
        # Bench plumbing, no effect on the computation:
        logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0, dataloader_pin_memory=False,
    )
    timer = step_timer()
    trainer = TimedDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[timer])
    dataset = trainer.train_dataset
    if len(dataset) != len(rows):
        raise RuntimeError(f"TRL kept {len(dataset)} of {len(rows)} pairs")
    trainer.train()
    return {
        "precompute_seconds": TimedDPOTrainer.precompute_seconds if precompute else None,
        "tokens": {
            "prefix": sum(map(len, dataset["prompt_ids"])) / len(dataset),
            "chosen": sum(map(len, dataset["chosen_ids"])) / len(dataset),
            "rejected": sum(map(len, dataset["rejected_ids"])) / len(dataset),
        },
        "reference_model_held": trainer.ref_model is not None,
        **timing(timer.marks, job.warmup, job.steps, job.batch_size),
        **first_step(timer.first_log),
    }


def peak_memory_mb() -> dict[str, float]:
    """This process's peak resident set (``ru_maxrss`` is in KiB on Linux), and CUDA's peak allocation when there is a GPU."""
    import torch

    memory = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        memory["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return memory


def worker(job_file: Path, result_file: Path) -> None:
    """Subprocess entry: load the model, run one system, write its numbers to ``result_file``."""
    import torch

    from stepdpo.models import load_model, load_tokenizer
    from stepdpo.records import atomic_write_json
    from stepdpo.training.data import read_pairs

    job = Job(**json.loads(job_file.read_text(encoding="utf-8")))
    torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)
    pairs = read_pairs([job.pairs_file])
    tokenizer = load_tokenizer(job.model)
    model = load_model(job.model, device="cuda" if torch.cuda.is_available() else "cpu")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if job.system == "ours":
        numbers = run_ours(job, pairs, model, tokenizer)
    else:
        numbers = run_trl(job, pairs, model, tokenizer, precompute=job.system == "trl-best")
    n = len(pairs)
    if numbers["precompute_seconds"] is not None:
        numbers["amortised_pairs_per_second"] = n / (n / numbers["pairs_per_second"] + numbers["precompute_seconds"])
    atomic_write_json(result_file, {"system": job.system, "torch_threads": torch.get_num_threads(), **numbers, **peak_memory_mb()})


# ---------------------------------------------------------------- driver


def run_system(job: Job, tmp: Path) -> dict[str, Any]:
    """Run one system in a fresh Python process; returns its numbers plus the load average around it."""
    job_file, result_file = tmp / f"{job.profile}-{job.system}.job.json", tmp / f"{job.profile}-{job.system}.result.json"
    job_file.write_text(json.dumps(asdict(job)), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(job.threads), "MKL_NUM_THREADS": str(job.threads), "TOKENIZERS_PARALLELISM": "false"}
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", str(job_file), str(result_file)], env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    if proc.returncode != 0:
        raise RuntimeError(f"{job.profile}/{job.system} failed with exit status {proc.returncode}")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    return {**result, "process_wall_seconds": wall, "loadavg_before": list(load_before), "loadavg_after": list(load_after)}


def ratios(systems: dict[str, dict[str, Any]], stats: dict[str, float]) -> dict[str, float]:
    """ours / TRL pairs/s, raw and amortised (precompute included where a system has one), beside the token-count bounds."""
    out: dict[str, float] = {}
    ours = systems.get("ours")
    for name in ("trl-default", "trl-best"):
        other = systems.get(name)
        if ours and other:
            out[f"ours/{name}"] = ours["pairs_per_second"] / other["pairs_per_second"]
            # TRL's default pays no precompute; at its best it pays one, as ours does.
            other_amortised = other.get("amortised_pairs_per_second", other["pairs_per_second"])
            out[f"ours/{name} amortised"] = ours["amortised_pairs_per_second"] / other_amortised
    out["bound vs trl-best"] = stats["bound_vs_trl_best"]
    out["bound vs trl-default"] = stats["bound_vs_trl_default"]
    return out


NOTES = [
    "TRL appends EOS to every completion (string data), so its chosen/rejected are one token longer than ours "
    "(our step-dpo mode adds EOS only to a step that ends the solution); tokens column: mean prefix/chosen/rejected.",
    "TRL 1.16 computes log-probs with its fused, vocabulary-tiled LM head (trl.trainer.utils.add_fused_lm_head). "
    "Off Triton devices (this CPU) it scores EVERY position, prompt included, and recomputes the tiles in backward; "
    "on CUDA with Triton it scores only completion positions. Much of the gap on a small-hidden model on CPU is that "
    "head; on a GPU the ratio will be smaller.",
    "TRL's defaults also compute per-token entropy, mean logits and top-1 accuracy for logging; they stay on "
    "(defaults), both TRL rows pay them.",
    "Our precompute uses the same packed forward as training (pairs sorted by length); TRL's is its own pass "
    "over prompt+chosen and prompt+rejected. Both use --ref-batch-size pairs per batch.",
]


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: settings, one table per profile, ratios against the bounds."""
    lines = [
        "# Training throughput: `stepdpo train` vs TRL DPOTrainer",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"CPU: {report['cpu']} ({report['cpu_count']} logical cores); torch threads {report['threads']}; "
        f"torch {report['versions']['torch']}, transformers {report['versions']['transformers']}, trl {report['versions']['trl']}  ",
        f"Model: `{report['model']}`, float32, no gradient checkpointing, lr {report['learning_rate']} constant, "
        f"β {report['beta']} sigmoid, batch {report['batch_size']} pairs, {report['warmup']} warmup + {report['steps']} timed steps.",
        "",
        "pairs/s = timed steps × batch / seconds of those steps; amortised = N / (N / pairs/s + precompute s), one epoch "
        "over the N pairs. Peak RSS per system from its own subprocess (model load included). Step-0 loss should be "
        "log 2 = 0.6931 for all (equal-loss check). TRL appends EOS to every completion, so its chosen/rejected are "
        "one token longer (tokens column: prefix/chosen/rejected means).",
        "",
        "Notes:",
        "",
        *[f"- {note}" for note in report["notes"]],
        "",
    ]
    for name, profile in report["profiles"].items():
        stats = profile["token_stats"]
        lines += [
            f"## {name}: {stats['pairs']} pairs, mean P {stats['mean_prefix_tokens']:.1f}, C {stats['mean_chosen_tokens']:.1f}, "
            f"R {stats['mean_rejected_tokens']:.1f} tokens ({profile['source']})",
            "",
            "| system | pairs/s | s/step | precompute s | amortised pairs/s | peak RSS MB | step-0 loss | step-0 logps chosen / rejected | tokens P/C/R | load before → after |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for system, r in profile["systems"].items():
            tokens = "/".join(f"{r['tokens'][k]:.1f}" for k in ("prefix", "chosen", "rejected"))
            load = f"{r['loadavg_before'][0]:.2f} → {r['loadavg_after'][0]:.2f}"
            logps = f"{fmt(r['step0_logps_chosen'], 2)} / {fmt(r['step0_logps_rejected'], 2)}"
            lines.append(
                f"| {system} | {fmt(r['pairs_per_second'])} | {fmt(r['seconds_per_step'], 2)} | {fmt(r['precompute_seconds'], 1)} | "
                f"{fmt(r.get('amortised_pairs_per_second'))} | {fmt(r['peak_rss_mb'], 0)} | {fmt(r['step0_loss'], 4)} | {logps} | {tokens} | {load} |"
            )
        lines += ["", "| ratio | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f}× |" for k, v in profile["ratios"].items()]
        lines += [
            "",
            f"Bound vs TRL-best = Σ(2P+C+R)/Σ(P+C+R) = {stats['separate_tokens']}/{stats['packed_tokens']} = {stats['bound_vs_trl_best']:.2f} "
            f"(body tokens only; computing logits only at scored positions can beat it). Bound vs TRL-default assumes backward ≈ 2× forward: "
            f"4·Σ(2P+C+R)/(3·Σ(P+C+R)) = {stats['bound_vs_trl_default']:.2f}.",
            "",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--profiles", nargs="+", choices=PROFILES, default=list(PROFILES), help="Length profiles to measure.")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="Trainers to measure.")
    parser.add_argument("--pairs", default=None, help="StepPair JSONL for the embedded profile (e.g. RUN/pairs/step_pairs.jsonl); default: built from synthetic:train.")
    parser.add_argument("--n-pairs", type=int, default=48, help="Pairs per profile (the reference is precomputed over all of them); cut to a multiple of the batch size.")
    parser.add_argument("--batch-size", type=int, default=4, help="Pairs per optimizer step, every system.")
    parser.add_argument("--steps", type=int, default=8, help="Timed optimizer steps per system.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed optimizer steps before them.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every system's process.")
    parser.add_argument("--model", default="smollm2-135m", help="Model alias or folder (a converted checkpoint; tiny models for development).")
    parser.add_argument("--prompt-style", choices=("chat", "plain"), default="chat", help="How the context is built (stepdpo PromptFormat).")
    parser.add_argument("--learning-rate", type=float, default=5e-6, help="Constant learning rate, every system.")
    parser.add_argument("--beta", type=float, default=0.4, help="β of the sigmoid DPO loss, every system.")
    parser.add_argument("--ref-batch-size", type=int, default=0, help="Pairs per reference precompute batch, ours and TRL-best (0 = --batch-size, TRL's default).")
    parser.add_argument("--prefix-tokens", type=int, default=400, help="Context length of the realistic profile.")
    parser.add_argument("--step-tokens", type=int, default=60, help="Chosen and rejected length of the realistic profile.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for pairs, data order and initialisation.")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision for every system (autocast; TRL bf16=True), e.g. on a GPU.")
    parser.add_argument("--out", default="bench/results/train_throughput.json", help="JSON result; the Markdown table goes beside it (.md).")
    parser.add_argument("--worker", nargs=2, metavar=("JOB", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and args.n_pairs < args.batch_size:
        parser.error("--n-pairs must be at least --batch-size")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]))
        return 0

    import torch
    import transformers
    import trl

    from stepdpo.models import load_tokenizer, resolve_model
    from stepdpo.records import atomic_write_json, atomic_write_text
    from stepdpo.training.data import read_pairs

    # Every step must hold exactly batch_size pairs (Trainer does not drop a short last batch).
    n = args.n_pairs - args.n_pairs % args.batch_size
    model = resolve_model(args.model)
    tokenizer = load_tokenizer(model)
    report: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": args.threads,
        "bf16": args.bf16,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__, "python": platform.python_version()},
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "learning_rate": args.learning_rate,
        "beta": args.beta,
        "notes": NOTES,
        "profiles": {},
    }
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp_name:
        tmp = Path(tmp_name)
        for profile in args.profiles:
            if profile == "embedded" and args.pairs:
                pairs, source = read_pairs([args.pairs])[:n], f"pairs from {args.pairs}"
                if len(pairs) < n:
                    raise SystemExit(f"{args.pairs}: {len(pairs)} pairs, --n-pairs {n} asked")
            elif profile == "embedded":
                pairs, source = synthetic_pairs(n, args.seed), "synthetic:train, chosen = correct step, rejected = step with a wrong result"
            else:
                pairs = realistic_pairs(tokenizer, args.prompt_style, n, args.prefix_tokens, args.step_tokens, args.seed)
                source = f"random single-token words, prefix {args.prefix_tokens}, steps {args.step_tokens}"
            pairs_file = tmp / f"{profile}.pairs.jsonl"
            write_pairs(pairs, pairs_file)
            stats = token_stats(pairs, tokenizer, args.prompt_style)
            systems: dict[str, dict[str, Any]] = {}
            for system in args.systems:
                job = Job(
                    system=system, profile=profile, pairs_file=str(pairs_file), work_dir=str(tmp / profile), model=model,
                    prompt_style=args.prompt_style, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                    threads=args.threads, learning_rate=args.learning_rate, beta=args.beta, seed=args.seed,
                    ref_batch_size=args.ref_batch_size or args.batch_size, bf16=args.bf16,
                )
                print(f"[{profile}] {system} ...", flush=True)
                systems[system] = run_system(job, tmp)
                print(f"[{profile}] {system}: {systems[system]['pairs_per_second']:.3f} pairs/s, step-0 loss {systems[system]['step0_loss']}", flush=True)
            report["profiles"][profile] = {"source": source, "token_stats": stats, "systems": systems, "ratios": ratios(systems, stats)}
            for key, value in report["profiles"][profile]["ratios"].items():
                print(f"[{profile}] {key}: {value:.2f}x")
    out = Path(args.out)
    atomic_write_json(out, report)
    atomic_write_text(out.with_suffix(".md"), markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    from stepdpo.hardware import cpu_info

    return cpu_info()[0]


if __name__ == "__main__":
    sys.exit(main())
