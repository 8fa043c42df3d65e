"""`stepdpo eval`: accuracy, pass@k and maj@k of a model on test sets.

For every problem of every set the model answers ``n`` times (greedy when
``n == 1`` and ``temperature == 0``, the paper's protocol); each response is
graded against the gold answer. Responses are appended to ``samples.jsonl`` as
they come, keyed by set, problem and sample index, so a rerun (after a crash,
or with a larger ``--limit``) only generates what is missing. ``results.json``
holds, per set: accuracy with its 95 % Wilson interval, pass@k, maj@k, how many
responses reach a final answer, response lengths, and for MATH the breakdown by
subject and level; plus the model's fingerprint, the settings, and what computed the
numbers (``compute``: device, resolved compute dtype, CPU model and its bfloat16 support;
``dtype auto`` resolves differently on different machines).

Accuracy is the share of problems whose first sample (index 0) is right: with
greedy decoding that is *the* answer, and a per-problem right/wrong outcome is
what ``stepdpo compare`` pairs across runs. pass@k uses all ``n`` samples
(unbiased estimator); maj@k votes over the first ``k``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from stepdpo import metrics
from stepdpo.config import OptionCheck, validate_config
from stepdpo.errors import ConfigError, ModelLoadError
from stepdpo.generation.base import Generator, GeneratorConfig, SamplingParams, prompt_format
from stepdpo.grading import answers_match, extract_answer
from stepdpo.hardware import describe
from stepdpo.records import Problem, RecordStore, atomic_write_json
from stepdpo.rundir import Funnel, RunDir
from stepdpo.stages.keyed import run_keyed
from stepdpo.steps import FIRST_MARKER

log = logging.getLogger(__name__)

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
"""The instruction of the Step-DPO paper's evaluation: no step priming, answer in a box."""

BREAKDOWN_KEYS = ("type", "subject", "level")
"""Problem metadata keys whose values get their own accuracy row (MATH: subject and level)."""

# Settings that change a stored sample or its grade (grades are stored with the samples): a rerun
# into a folder made with other values would mix two evaluations under the new settings' name, so it
# is refused rather than resumed. compute_dtype is what 'dtype' resolved to on this machine.
_GRADE_SETTINGS = ("model", "prompt", "prompt_style", "n", "temperature", "top_p", "max_new_tokens", "seed",
                   "last_number_fallback", "backend", "dtype", "compute_dtype")


@dataclass
class EvalConfig:
    model: Optional[str] = field(default=None, metadata={"help": "Model to evaluate (hub id, path or 'smollm2-135m'); overrides generator.model when set."})
    data: list[str] = field(default_factory=lambda: ["gsm8k:test"], metadata={"help": "Test sets, as loader specs (gsm8k:test, math500:test, multiarith:test, a file, ...); comma-separated or repeated."})
    limit: Optional[int] = field(default=None, metadata={"help": "At most this many problems per set (a seeded random subset); None: all."})
    seed: int = field(default=0, metadata={"help": "Seed of the subset choice and of sampling (a problem's samples are seeded by (seed, set, problem id))."})
    prompt: Literal["boxed", "step"] = field(default="boxed", metadata={"help": "boxed: the paper's 'reason step by step ... \\boxed{}' instruction, no priming; step: the step-wise format primed with 'Step 1:'."})
    n: int = field(default=1, metadata={"help": "Samples per problem (n > 1 needs temperature > 0)."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 = greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    ks: list[int] = field(default_factory=list, metadata={"help": "k values for pass@k and maj@k (each <= n); empty: 1 and n."})
    max_new_tokens: int = field(default=512, metadata={"help": "Most tokens generated per response."})
    last_number_fallback: Optional[bool] = field(default=None, metadata={"help": "Grade a response that states no final answer (boxed, 'The answer is', '####') by its last number outside 'Step N:' markers. None: on with the boxed prompt (the paper's protocol), off with the step prompt (where a response cut off mid-step would be graded by a number it was still working with). The setting used is recorded in results.json."})
    on_bad_row: Literal["error", "skip"] = field(default="error", metadata={"help": "A test-set row that cannot be used: stop with an error naming file, line and field, or skip it and count it in the funnel."})
    chunk_size: int = field(default=64, metadata={"help": "Problems per generation call; their samples are on disk after each call."})
    run_dir: str = field(default="runs/default", metadata={"help": "Run directory (the output goes to RUN/eval/<name>, the funnel to RUN/funnel)."})
    name: Optional[str] = field(default=None, metadata={"help": "Evaluation name (folder under RUN/eval); None: derived from the model."})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Write results here instead of RUN/eval/<name>."})
    generator: GeneratorConfig = field(default_factory=GeneratorConfig, metadata={"help": "Generation backend and its settings."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.not_empty("data")
        check.at_least(1, "limit", "n", "max_new_tokens", "chunk_size")
        check.at_least(0, "temperature")
        check.share("top_p", zero=False)
        check.require(self.n == 1 or self.temperature > 0, "temperature", f"must be > 0 when n > 1 (n={self.n}): greedy samples would be identical")
        check.require(all(1 <= k <= self.n for k in self.ks), "ks", f"must lie in 1..n (n={self.n})")
        validate_config(self.generator, prefix + "generator.")


@dataclass
class EvalSample:
    """One graded response of an evaluation (a line of samples.jsonl)."""

    id: str
    """'<set>|<problem_id>#<index>'."""
    set: str
    problem_id: str
    index: int
    prompt: str
    response: str
    """The assistant's text (for the step prompt: from 'Step 1:' on)."""
    predicted: Optional[str]
    gold: str
    correct: bool
    has_final_answer: bool
    """Whether the response states a final answer (box, 'The answer is', '####'), not just a last number."""
    num_tokens: int
    finish_reason: str
    metadata: dict[str, Any] = field(default_factory=dict)


def sample_key(set_name: str, problem_id: str, index: int) -> str:
    return f"{set_name}|{problem_id}#{index}"


def data_specs(config: EvalConfig) -> list[str]:
    """The set specs, split on commas, in order, without repeats."""
    specs: list[str] = []
    for item in config.data:
        for spec in item.split(","):
            spec = spec.strip()
            if spec and spec not in specs:
                specs.append(spec)
    if not specs:
        raise ConfigError("eval: --data names no test set")
    return specs


def model_name(config: EvalConfig) -> str:
    return config.model or config.generator.model


def k_values(config: EvalConfig) -> list[int]:
    """The k of pass@k / maj@k, checked against n."""
    ks = sorted(set(config.ks)) if config.ks else sorted({1, config.n})
    bad = [k for k in ks if not 1 <= k <= config.n]
    if bad:
        raise ConfigError(f"eval: ks {bad} must lie in 1..n (n={config.n})")
    return ks


def check_config(config: EvalConfig) -> None:
    config.validate()


def default_name(model: str) -> str:
    """A folder name for a model: the alias, or the last two parts of a path / hub id."""
    parts = [p for p in Path(model).parts if p not in ("/", ".", "..")][-2:]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-") or "model"


def output_dir(config: EvalConfig) -> Path:
    if config.output_dir:
        return Path(config.output_dir)
    return RunDir(config.run_dir).eval(config.name or default_name(model_name(config)))


_SMALL_FILE = 4 << 20
_CHUNK = 64 << 10
_CHUNKS = 16


def _file_digest(path: Path, digest: "hashlib._Hash") -> None:
    """Feed a file's name, size and content (whole when small, else a fixed sample of it) to ``digest``."""
    size = path.stat().st_size
    digest.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as handle:
        if size <= _SMALL_FILE:
            digest.update(handle.read())
            return
        # Header (safetensors/GGUF metadata) plus evenly spaced chunks: training moves every
        # weight, so any real change of the checkpoint changes the sampled bytes.
        digest.update(handle.read(1 << 20))
        for i in range(_CHUNKS + 1):
            handle.seek((size - _CHUNK) * i // _CHUNKS)
            digest.update(handle.read(_CHUNK))


def checkpoint_fingerprint(name: str) -> dict[str, Any]:
    """Identify the evaluated weights: ``{model, path, sha256}``.

    For a local model (folder or file) the hash covers every file's name and size,
    small files (configs, tokenizer) whole and large weight files by their header
    and 17 evenly spaced 64 KiB chunks: cheap on multi-GB checkpoints, and unlike
    modification times it is the same for a copy. A hub id has ``path`` and
    ``sha256`` null (its revision is whatever the hub served).
    """
    try:
        resolved = Path(name if Path(name).exists() else _resolve(name))
    except ModelLoadError:
        return {"model": name, "path": None, "sha256": None}
    if not resolved.exists():
        return {"model": name, "path": None, "sha256": None}
    files = [resolved] if resolved.is_file() else sorted(p for p in resolved.rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    for path in files:
        _file_digest(path, digest)
    return {"model": name, "path": str(resolved.resolve()), "sha256": digest.hexdigest()}


def _resolve(name: str) -> str:
    from stepdpo.models import resolve_model

    return resolve_model(name)


def make_prompter(config: EvalConfig) -> Callable[[str], tuple[str, str]]:
    """``question -> (prompt, response_prefix)``: the text the model continues and what its response starts with."""
    fmt = prompt_format(replace(config.generator, model=model_name(config)), BOXED_INSTRUCTION if config.prompt == "boxed" else None)
    if config.prompt == "boxed":
        return lambda question: (fmt.opened(question), "")
    return lambda question: (fmt.prompt(question), FIRST_MARKER)


def uses_last_number_fallback(config: EvalConfig) -> bool:
    """The fallback setting in force: the explicit one, else on for the boxed prompt and off for the step prompt."""
    if config.last_number_fallback is not None:
        return config.last_number_fallback
    return config.prompt == "boxed"


def grade_sample(config: EvalConfig, set_name: str, problem: Problem, index: int, prompt: str, response: str, num_tokens: int, finish_reason: str) -> EvalSample:
    predicted = extract_answer(response, last_number_fallback=uses_last_number_fallback(config))
    return EvalSample(
        id=sample_key(set_name, problem.id, index),
        set=set_name,
        problem_id=problem.id,
        index=index,
        prompt=prompt,
        response=response,
        predicted=predicted,
        gold=problem.answer,
        correct=answers_match(predicted, problem.answer),
        has_final_answer=extract_answer(response, last_number_fallback=False) is not None,
        num_tokens=num_tokens,
        finish_reason=finish_reason,
        metadata={k: problem.metadata[k] for k in BREAKDOWN_KEYS if k in problem.metadata},
    )


def settings_of(config: EvalConfig) -> dict[str, Any]:
    return {
        "model": model_name(config),
        "prompt": config.prompt,
        "prompt_style": config.generator.prompt_style,
        "n": config.n,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "limit": config.limit,
        "ks": k_values(config),
        "last_number_fallback": uses_last_number_fallback(config),
        "backend": config.generator.backend,
        "dtype": config.generator.dtype,
    }


def generator_compute(generator: Generator) -> dict[str, Any]:
    """What computes a generator's numbers (``hardware.describe``): its device and resolved compute dtype when
    the backend says (hf, vllm), else unknown (e.g. a remote server)."""
    return describe(str(getattr(generator, "device", "unknown")), getattr(generator, "compute_dtype", None))


def _guard_settings(out: Path, settings: dict[str, Any], fingerprint: dict[str, Any], compute: dict[str, Any]) -> None:
    """Refuse to resume a folder whose samples were generated or graded with other settings or weights.

    A setting the folder did not record (made by an older version) counts as different: its samples'
    grades cannot be vouched for.
    """
    path = out / "eval_settings.json"
    current = {key: settings[key] for key in _GRADE_SETTINGS if key in settings} | {"compute_dtype": compute["compute_dtype"], "sha256": fingerprint["sha256"]}
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in current if k not in previous or previous[k] != current[k]]
        if changed:
            was = ", ".join(f"{k}={previous[k]!r}, now {current[k]!r}" if k in previous else f"{k} not recorded" for k in changed)
            raise ConfigError(
                f"{out}: holds samples made or graded with other {', '.join(changed)} ({was}); "
                "use another --name or --output_dir, or delete the folder to evaluate again"
            )
        return
    atomic_write_json(path, current)


def _breakdown(problems: list[Problem], first: dict[str, bool]) -> dict[str, dict[str, dict[str, float | int]]]:
    """Accuracy by each metadata key in BREAKDOWN_KEYS that the problems carry (MATH: type, level)."""
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for key in BREAKDOWN_KEYS:
        groups: dict[str, list[bool]] = {}
        for problem in problems:
            if key in problem.metadata:
                groups.setdefault(str(problem.metadata[key]), []).append(first[problem.id])
        if groups:
            out[key] = {value: {"problems": len(g), "correct": sum(g), "accuracy": sum(g) / len(g)} for value, g in sorted(groups.items())}
    return out


def summarize_set(problems: list[Problem], samples: dict[str, list[EvalSample]], ks: list[int], n: int) -> dict[str, Any]:
    """Per-set metrics from the graded samples (``samples[problem_id]`` ordered by index, length n)."""
    first = {p.id: samples[p.id][0].correct for p in problems}
    every = [s for p in problems for s in samples[p.id]]
    summary: dict[str, Any] = {"problems": len(problems), "samples_per_problem": n}
    summary.update(metrics.accuracy([first[p.id] for p in problems]))
    summary["pass_at_k"] = {
        str(k): sum(metrics.pass_at_k(n, sum(s.correct for s in samples[p.id]), k) for p in problems) / len(problems) for k in ks
    }
    summary["maj_at_k"] = {
        str(k): sum(
            metrics.maj_at_k([s.predicted for s in samples[p.id]], [s.correct for s in samples[p.id]], k, answers_match) for p in problems
        )
        / len(problems)
        for k in ks
    }
    summary["final_answer_rate"] = sum(s.has_final_answer for s in every) / len(every)
    summary["extracted_rate"] = sum(s.predicted is not None for s in every) / len(every)
    summary["truncated_rate"] = sum(s.finish_reason == "length" for s in every) / len(every)
    summary["generated_tokens"] = sum(s.num_tokens for s in every)
    summary["mean_response_tokens"] = summary["generated_tokens"] / len(every)
    summary["breakdown"] = _breakdown(problems, first)
    summary["per_problem"] = first
    return summary


def evaluate_set(config: EvalConfig, set_name: str, problems: list[Problem], generator: Generator, store: RecordStore[EvalSample],
                 ks: list[int]) -> dict[str, Any]:
    """Generate and grade what ``store`` lacks for one set; returns the set's summary."""
    if not problems:
        raise ConfigError(f"eval: set {set_name!r} has no problems")
    if len({p.id for p in problems}) != len(problems):
        raise ConfigError(f"eval: set {set_name!r} has repeated problem ids")
    started = time.perf_counter()
    stored = store.keys()
    params = SamplingParams(n=config.n, temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens)
    prompter = functools.cache(lambda: make_prompter(config))  # made on first use: a finished set loads no tokenizer

    def make(chunk: list[Problem], seeds: list[int]) -> list[EvalSample]:
        prompts = [prompter()(p.question) for p in chunk]
        completions = generator.generate([prompt for prompt, _ in prompts], params, seeds=seeds)
        return [grade_sample(config, set_name, problem, index, prompt, head + c.text, c.num_tokens, c.finish_reason)
                for problem, (prompt, head), outs in zip(chunk, prompts, completions) for index, c in enumerate(outs)]

    new_samples = 0

    def save(graded: list[EvalSample]) -> None:
        nonlocal new_samples
        new_samples += store.append(graded)

    run_keyed(problems, make, stage="eval", seed=config.seed, key=lambda p: f"{set_name}|{p.id}", save=save, unit="problem",
              done=lambda p: all(sample_key(set_name, p.id, i) in stored for i in range(config.n)),
              chunk_size=config.chunk_size, desc=f"eval {set_name}")
    by_problem: dict[str, list[EvalSample]] = {}
    wanted = {p.id for p in problems}
    for sample in store.records():
        if sample.set == set_name and sample.problem_id in wanted and sample.index < config.n:
            by_problem.setdefault(sample.problem_id, []).append(sample)
    for samples in by_problem.values():
        samples.sort(key=lambda s: s.index)
    summary = summarize_set(problems, by_problem, ks, config.n)
    summary["new_samples"] = new_samples
    summary["wall_time_s"] = time.perf_counter() - started
    return summary


def run(config: EvalConfig, problems_by_set: dict[str, list[Problem]], generator: Generator) -> dict[str, Any]:
    """Generate what ``samples.jsonl`` lacks, grade it, and write and return the results.

    ``problems_by_set`` maps a set name to its problems (ids unique within a set).
    Returns the dict written to ``results.json``.
    """
    check_config(config)
    ks = k_values(config)
    out = output_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    model = model_name(config)
    fingerprint = checkpoint_fingerprint(model)
    settings = settings_of(config)
    compute = generator_compute(generator)
    _guard_settings(out, settings, fingerprint, compute)
    store: RecordStore[EvalSample] = RecordStore(out / "samples.jsonl", EvalSample)
    started = time.perf_counter()
    sets = {set_name: evaluate_set(config, set_name, problems, generator, store, ks) for set_name, problems in problems_by_set.items()}
    results = {
        "model": model,
        "fingerprint": fingerprint,
        "generator": getattr(generator, "name", type(generator).__name__),
        "settings": settings,
        "compute": compute,
        "wall_time_s": time.perf_counter() - started,
        "load_average": list(os.getloadavg()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sets": sets,
    }
    atomic_write_json(out / "results.json", results)
    return results


def render_table(results: dict[str, Any]) -> str:
    """A Markdown table of the per-set results."""
    ks = results["settings"]["ks"]
    head = ["set", "problems", "accuracy (95% CI)"] + [f"pass@{k}" for k in ks if k > 1] + [f"maj@{k}" for k in ks if k > 1] + ["final answer", "mean tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in results["sets"].items():
        row = [name, str(s["problems"]), f"{100 * s['accuracy']:.1f}% [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}] ({s['correct']}/{s['total']})"]
        row += [f"{100 * s['pass_at_k'][str(k)]:.1f}%" for k in ks if k > 1]
        row += [f"{100 * s['maj_at_k'][str(k)]:.1f}%" for k in ks if k > 1]
        row += [f"{100 * s['final_answer_rate']:.0f}%", f"{s['mean_response_tokens']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def load_sets(config: EvalConfig, skipped: dict[str, int] | None = None) -> dict[str, list[Problem]]:
    """The test sets by spec; with ``on_bad_row='skip'`` the skipped rows are counted into ``skipped`` (by set and reason)."""
    from stepdpo.problems import load_problems_with_report

    sets = {}
    for spec in data_specs(config):
        sets[spec], report = load_problems_with_report(spec, limit=config.limit, seed=config.seed, on_bad_row=config.on_bad_row)
        if skipped is not None:
            for reason, count in report.reasons.items():
                skipped[f"bad row in {spec}: {reason}"] = skipped.get(f"bad row in {spec}: {reason}", 0) + count
    return sets


def command(config: EvalConfig) -> int:
    from stepdpo.generation.base import close_generator
    from stepdpo.generation.registry import build_generator

    check_config(config)
    skipped: dict[str, int] = {}
    problems_by_set = load_sets(config, skipped)
    generator = build_generator(replace(config.generator, model=model_name(config)))
    try:
        results = run(config, problems_by_set, generator)
    finally:
        close_generator(generator)  # the next stage in this process gets the GPU memory back
    out = output_dir(config)
    print(render_table(results))
    print(f"results: {out / 'results.json'}  samples: {out / 'samples.jsonl'}")
    records_in = sum(len(p) for p in problems_by_set.values()) * config.n
    records_out = sum(s["new_samples"] for s in results["sets"].values())
    extra: dict[str, float | int | str] = {f"{name} accuracy": s["accuracy"] for name, s in results["sets"].items()}
    extra["resumed (already on disk)"] = records_in - records_out
    funnel = Funnel(stage=f"eval-{out.name}", records_in=records_in, records_out=records_out, extra=extra)
    for reason, count in skipped.items():
        funnel.drop(reason, count)
    funnel.save(RunDir(config.run_dir))
    print(funnel.render())
    return 0
