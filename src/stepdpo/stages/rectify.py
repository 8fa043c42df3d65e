"""Rectification (``stepdpo rectify``): resample from the correct prefix, keep first steps that reach gold.

For a located error at step k of a wrong sample, the policy continues
``question + steps 1..k-1`` (prompt ends with the ``Step k:`` marker) r times.
A continuation whose full response reaches the gold answer (states it and ends by
itself, not at the token limit: :func:`stepdpo.grading.grade_for_data`) contributes its
step k as a *chosen* candidate, unless that step equals the rejected step or an
earlier candidate after whitespace normalisation. ``full_chosen`` keeps the
whole continuation from step k on. Records are appended per chunk to
``rectified.jsonl`` (keyed by sample id), including errors for which no
candidate survived, so a rerun does not redo them.

Optional confirmation (``--confirm``, off by default). The paper located
errors with GPT-4(o) and names the weak spot of rectification: a right final
answer can follow a wrong step. With ``confirm`` a judge (an LLM, by default
on an OpenAI-compatible server, key from the environment only) is asked about
every surviving candidate: it sees the problem, a reference solution and the
partial solution ``prefix + candidate``, and labels its steps in the paper's
form (``Step 1: correct; ...; Step k: correct``), read by the judge
localizer's :func:`~stepdpo.localizers.judge.parse_verdict`. A candidate is
kept only when the judge labels step k correct (or, with
``--judge.setting incorrect``, not incorrect) and no earlier step wrong.
Confirmation runs in three resumable steps, each with its own file:

- ``rectify_candidates.jsonl``: the unconfirmed rectifications (sampling is
  never redone);
- ``rectify_verdicts.jsonl``: one verdict per (error, prefix, candidate text),
  so a rerun never asks the judge again about a candidate it has judged;
  unparseable answers are verdicts too (dropped and counted, never guessed);
- ``rectified.jsonl``: an error is written once every one of its candidates
  has a verdict, with the verdicts and the judge's answers in ``evidence``.

A judge call that fails (an API error after the backend's retries) is no
verdict: it is logged to ``rectify_judge_failed.jsonl``, the error stays out
of ``rectified.jsonl``, is counted in the funnel, and is asked again on the
next run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from tqdm.auto import tqdm

from stepdpo.config import OptionCheck, validate_config
from stepdpo.errors import ConfigError, InputError
from stepdpo.generation.base import Completion, Generator, GeneratorConfig, SamplingParams, build_generator, close_generator, prompt_format
from stepdpo.grading import grade_for_data
from stepdpo.localizers.base import FAILED_PREFIX, STATUS_OK
from stepdpo.localizers.judge import JudgeConfig, first_wrong, load_template, numbered_solution, parse_verdict, reference_text, render_template
from stepdpo.records import LocatedError, Problem, RecordStore, Rectification, Sample, append_failures
from stepdpo.rundir import Funnel, RunDir
from stepdpo.seeding import derive_seed
from stepdpo.stages.sample import read_problems, read_samples
from stepdpo.steps import PromptFormat, next_marker, normalize_ws, prefix_before, split_steps

log = logging.getLogger(__name__)

DEFAULT_CONFIRM_TEMPLATE = """You are checking the last step of a partial step-by-step solution to a math problem.

### Problem
{problem}

### Correct reference solution
{reference}

### Partial solution (its last step is the one under review)
{response}

### Task
First write a short analysis (at most 150 words) of whether the last step is mathematically correct and a sound continuation of the steps before it; it need not reach the final answer.
Then, on the last line, judge the steps of the partial solution in order, each as correct, neutral (sound but not useful progress) or incorrect, and stop at the first incorrect step. Use exactly this form:
Step 1: correct; Step 2: correct; Step 3: incorrect"""

CONFIRMED = "confirmed"
REJECTED = "rejected"
PREFIX_REJECTED = "prefix_rejected"
UNPARSEABLE = "unparseable"


@dataclass
class RectifyConfig:
    """Resample from the correct prefix of each located error."""

    r: int = field(default=20, metadata={"help": "Continuations sampled per located error (the release: 20)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (the release: 0.8)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling (the release: 0.95)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token limit of each continuation."})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "Extra stop strings."})
    seed: int = field(default=0, metadata={"help": "Sampling seed; the continuations of a located error are seeded by (seed, its sample id)."})
    limit: Optional[int] = field(default=None, metadata={"help": "Rectify at most this many located errors."})
    chunk_size: int = field(default=8, metadata={"help": "Located errors per generation call; saved after each chunk."})
    run_dir: str = field(default="runs/default", metadata={"help": "Run directory: reads located.jsonl, writes rectified.jsonl."})
    generator: GeneratorConfig = field(default_factory=GeneratorConfig, metadata={"help": "The policy that continues (the same model that sampled)."})
    confirm: bool = field(default=False, metadata={"help": "Ask a judge whether each chosen candidate step is correct (given the problem and the prefix) and keep only confirmed ones; failed judge calls are retried on the next run."})
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "Judge options for --confirm; --judge.template is a file with {problem}, {reference} and {response} (the partial solution ending in the candidate step); default: a built-in step-check prompt."})
    judge_generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(backend="openai"), metadata={"help": "The judge model for --confirm (default: an OpenAI-compatible server; its key only from the environment variable named by --judge-generator.api-key-env). A backend without chat gets the prompt through its model's chat template."})
    judgement_chars: int = field(default=4000, metadata={"help": "Longest judge answer kept in the records (--confirm); a longer one keeps its end, where the verdict is."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.at_least(1, "r", "max_new_tokens", "limit", "chunk_size", "judgement_chars")
        check.at_least(0, "temperature")
        check.share("top_p", zero=False)
        check.no_empty_strings("stop")
        validate_config(self.generator, prefix + "generator.")
        if self.confirm:
            validate_config(self.judge, prefix + "judge.")
            validate_config(self.judge_generator, prefix + "judge_generator.")


def candidates(prefix: str, rejected: str, step_number: int, continuations: Sequence[str], reached_gold: Sequence[bool]) -> tuple[list[str], list[str]]:
    """(chosen steps, full continuations) from continuations after ``prefix + "Step k:"``.

    A continuation counts when it reached gold and its full response (split from step 1)
    has a step k; its step k is kept unless it equals ``rejected`` or an earlier candidate
    (whitespace-normalised). The full continuation is the response from step k on.
    """
    marker = next_marker(prefix)
    seen = {normalize_ws(rejected)}
    chosen: list[str] = []
    full: list[str] = []
    for continuation, good in zip(continuations, reached_gold):
        if not good:
            continue
        steps = split_steps(prefix + marker + continuation)
        if len(steps) < step_number:
            continue
        step = steps[step_number - 1]
        key = normalize_ws(step)
        if key in seen:
            continue
        seen.add(key)
        chosen.append(step)
        full.append("".join(steps[step_number - 1:]))
    return chosen, full


def verdict_key(sample_id: str, prefix: str, step: str) -> str:
    """Cache key of a judge verdict: the error, plus a hash of the prefix and the whitespace-normalised candidate."""
    digest = hashlib.sha256((prefix + "\x00" + normalize_ws(step)).encode("utf-8")).hexdigest()[:20]
    return f"{sample_id}|{digest}"


def clip_judgement(text: str, limit: int) -> str:
    """``text`` if at most ``limit`` characters, else its last ``limit`` characters (the verdict ends the answer) after a marker."""
    if limit <= 0 or len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters cut ...]" + text[-limit:]


def decide(labels: list[str] | None, step_number: int, setting: Literal["neutral_or_incorrect", "incorrect"]) -> tuple[str, str]:
    """(verdict, reason) on candidate step k = ``step_number`` from the judge's labels of steps 1..k.

    ``unparseable`` when there are no labels, or they name more steps than k, or stop before k
    without a wrong step; ``prefix_rejected`` when a step before k is the first wrong one (the
    judge never vouched for step k); ``rejected`` when step k is the first wrong one; else
    ``confirmed``. Which labels count as wrong follows ``setting`` (as in the judge localizer).
    """
    if labels is None:
        return UNPARSEABLE, "no verdict of the form 'Step 1: correct; ...'"
    if len(labels) > step_number:
        return UNPARSEABLE, f"verdict names {len(labels)} steps, the partial solution has {step_number}"
    wrong = first_wrong(labels, setting)
    if wrong is not None and wrong < step_number:
        return PREFIX_REJECTED, f"step {wrong} of the prefix judged {labels[wrong - 1]}"
    if len(labels) < step_number:
        return UNPARSEABLE, f"verdict stops at step {len(labels)}, before the candidate step {step_number}"
    if wrong == step_number:
        return REJECTED, f"step {step_number} judged {labels[-1]}"
    return CONFIRMED, f"step {step_number} judged {labels[-1]}"


@dataclass
class StepVerdict:
    """The judge's answer about one candidate step (``rectify_verdicts.jsonl``, keyed by :func:`verdict_key`)."""

    key: str
    sample_id: str
    step_number: int
    step: str
    labels: list[str] | None
    """parse_verdict of the answer; None when it could not be read. The decision is made from these with the current setting."""
    judgement: str
    """The judge's answer, clipped to ``judgement_chars``."""
    judge: str
    status: str = STATUS_OK
    """'ok', or 'failed: <reason>' for a call that failed (logged, never stored, asked again on rerun)."""


class StepJudge:
    """Asks a judge about candidate steps, remembering verdicts so that no candidate is asked about twice.

    ``backend`` is a chat backend (``chat(conversations, params)``, e.g. the openai generator) or any
    :class:`Generator`, which then gets the prompt through ``fmt`` (the judge model's chat template).
    Decided verdicts go to ``store``; failed calls to ``failures_path`` (one JSON line each, with a UTC time).
    """

    def __init__(self, config: JudgeConfig, backend: Any, fmt: PromptFormat | None = None,
                 store: RecordStore[StepVerdict] | None = None, failures_path: Path | None = None, judgement_chars: int = 4000):
        if not hasattr(backend, "chat") and fmt is None:
            raise ConfigError("the rectify judge is not a chat backend: it needs the judge model's prompt format")
        self.config = config
        self.backend = backend
        self.fmt = fmt
        self.store = store
        self.failures_path = failures_path
        self.judgement_chars = judgement_chars
        self.template = load_template(config.template) if config.template else DEFAULT_CONFIRM_TEMPLATE
        self.cache: dict[str, StepVerdict] = {v.key: v for v in store.records()} if store is not None else {}
        self.asked = 0
        """Judge calls made by this object (cached verdicts are not calls)."""

    def _ask(self, contents: list[str]) -> list[Completion]:
        params = SamplingParams(n=1, temperature=self.config.temperature, max_new_tokens=self.config.max_new_tokens)
        if hasattr(self.backend, "chat"):
            outputs = self.backend.chat([[{"role": "user", "content": c}] for c in contents], params)
        else:
            assert self.fmt is not None
            outputs = self.backend.generate([self.fmt.opened(c) for c in contents], params)
        self.asked += len(contents)
        return [completions[0] for completions in outputs]

    def verdicts(self, jobs: Sequence[tuple[Problem, Rectification, str]]) -> list[StepVerdict]:
        """One verdict per (problem, rectification, candidate step), in order: remembered ones, then new ones asked in one batch."""
        keys = [verdict_key(rect.sample_id, rect.prefix, step) for _, rect, step in jobs]
        todo: dict[str, tuple[Problem, Rectification, str]] = {}
        for key, job in zip(keys, jobs):
            if key not in self.cache:
                todo.setdefault(key, job)
        # The partial solution as the project cut it (prefix steps, then the candidate as step k), numbered so the labels line up with k.
        contents = [render_template(self.template, problem.question, reference_text(problem), numbered_solution([*split_steps(rect.prefix), step]),
                                    rect.first_wrong_step) for problem, rect, step in todo.values()]
        fresh: dict[str, StepVerdict] = {}
        for (key, (_, rect, step)), completion in zip(todo.items(), self._ask(contents) if contents else []):
            base = dict(key=key, sample_id=rect.sample_id, step_number=rect.first_wrong_step, step=step, judge=getattr(self.backend, "name", ""))
            if completion.finish_reason.startswith("error"):
                # The backend already scrubbed its reason of the API key.
                reason = completion.finish_reason.split(":", 1)[-1].strip() or "request failed"
                fresh[key] = StepVerdict(labels=None, judgement="", status=f"{FAILED_PREFIX}: {reason}", **base)
            else:
                fresh[key] = StepVerdict(labels=parse_verdict(completion.text),
                                         judgement=clip_judgement(completion.text, self.judgement_chars), **base)
        decided = [v for v in fresh.values() if v.status == STATUS_OK]
        failed = [v for v in fresh.values() if v.status != STATUS_OK]
        self.cache.update({v.key: v for v in decided})
        if self.store is not None:
            self.store.append(decided)
        if self.failures_path is not None:
            append_failures(self.failures_path, failed)
        return [self.cache.get(key) or fresh[key] for key in keys]


def confirmed(rect: Rectification, verdicts: Sequence[StepVerdict], setting: Literal["neutral_or_incorrect", "incorrect"], judge: str) -> Rectification:
    """``rect`` with only the candidates the judge confirmed; every candidate's verdict, reason, labels and answer in ``evidence``.

    If a call failed, the result is marked pending (``evidence["status"] = "failed: ..."``, candidates
    untouched): it is reported, not stored, and judged again on the next run.
    """
    failures = [v.status for v in verdicts if v.status != STATUS_OK]
    if failures:
        return Rectification(**{**rect.__dict__, "evidence": {"status": failures[0], "judge": judge, "failed_calls": len(failures)}})
    rows: list[dict[str, Any]] = []
    chosen: list[str] = []
    full: list[str] = []
    for step, whole, v in zip(rect.chosen, rect.full_chosen, verdicts):
        verdict, reason = decide(v.labels, rect.first_wrong_step, setting)
        rows.append({"step": step, "verdict": verdict, "reason": reason, "labels": v.labels, "judgement": v.judgement})
        if verdict == CONFIRMED:
            chosen.append(step)
            full.append(whole)
    evidence = {"judge": judge, "setting": setting, "candidates": rows}
    return Rectification(**{**rect.__dict__, "chosen": chosen, "full_chosen": full, "evidence": evidence})


def is_pending(rect: Rectification) -> bool:
    """True for a rectification whose judge calls failed (not stored; judged again on rerun)."""
    return str(rect.evidence.get("status", "")).startswith(FAILED_PREFIX)


def sample_candidates(config: RectifyConfig, problems: dict[str, Problem], samples: dict[str, Sample], usable: Sequence[LocatedError],
                      generator: Generator, fmt: PromptFormat, done: set[str],
                      save: Callable[[list[Rectification]], object] | None) -> list[Rectification]:
    """Sample continuations for the errors of ``usable`` not in ``done``; returns the new rectifications (``save`` gets each chunk)."""
    todo = [x for x in usable if x.sample_id not in done]
    new: list[Rectification] = []
    chunk_size = max(1, config.chunk_size)
    with tqdm(total=len(usable), initial=len(usable) - len(todo), desc="rectify", unit="error") as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start: start + chunk_size]
            jobs = []
            for x in chunk:
                sample, problem = samples[x.sample_id], problems[x.problem_id]
                k = x.first_wrong_step
                assert k is not None
                prefix = prefix_before(sample.steps, k)
                jobs.append((x, sample, problem, k, prefix))
            prompts = [fmt.prompt(problem.question, prefix) for _, _, problem, _, prefix in jobs]
            params = SamplingParams(n=config.r, temperature=config.temperature, top_p=config.top_p,
                                    max_new_tokens=config.max_new_tokens, stop=tuple(config.stop))
            outputs = generator.generate(prompts, params, seeds=[derive_seed(config.seed, "rectify", x.sample_id) for x in chunk])
            graded = grade_for_data([(prefix + next_marker(prefix) + c.text, c.finish_reason, problem.answer)
                                     for (_, _, problem, _, prefix), cs in zip(jobs, outputs) for c in cs])
            at = 0
            chunk_out = []
            for (x, sample, problem, k, prefix), completions in zip(jobs, outputs):
                good = graded[at: at + len(completions)]
                at += len(completions)
                chosen, full = candidates(prefix, sample.steps[k - 1], k, [c.text for c in completions], good)
                chunk_out.append(Rectification(sample_id=x.sample_id, problem_id=x.problem_id, first_wrong_step=k, prefix=prefix,
                                               rejected=sample.steps[k - 1], chosen=chosen, full_chosen=full,
                                               tried=len(completions), reached_gold=sum(good)))
            if save is not None:
                save(chunk_out)
            new += chunk_out
            bar.update(len(chunk))
    return new


def confirm_all(config: RectifyConfig, problems: dict[str, Problem], unconfirmed: Sequence[Rectification], judge: StepJudge,
                store: RecordStore[Rectification] | None) -> list[Rectification]:
    """Judge the candidates of ``unconfirmed`` chunk by chunk; store each error whose candidates all have a verdict.

    Returns the judged rectifications of this run, pending ones (a failed call) included.
    """
    out: list[Rectification] = []
    chunk_size = max(1, config.chunk_size)
    with tqdm(total=len(unconfirmed), desc="confirm", unit="error") as bar:
        for start in range(0, len(unconfirmed), chunk_size):
            chunk = unconfirmed[start: start + chunk_size]
            jobs = [(problems[rect.problem_id], rect, step) for rect in chunk for step in rect.chosen]
            verdicts = judge.verdicts(jobs)
            at = 0
            judged = []
            for rect in chunk:
                judged.append(confirmed(rect, verdicts[at: at + len(rect.chosen)], config.judge.setting, getattr(judge.backend, "name", "")))
                at += len(rect.chosen)
            if store is not None:
                store.append([r for r in judged if not is_pending(r)])
            out += judged
            bar.update(len(chunk))
    return out


def run(config: RectifyConfig, problems: dict[str, Problem], samples: dict[str, Sample], located: Sequence[LocatedError],
        generator: Generator, fmt: PromptFormat | None = None, store: RecordStore[Rectification] | None = None,
        judge: StepJudge | None = None, unconfirmed_store: RecordStore[Rectification] | None = None) -> list[Rectification]:
    """Rectify every located error (status ok) not yet in ``store``; returns all rectifications of ``located``.

    With ``config.confirm`` the candidates are sampled into ``unconfirmed_store`` first and then
    judged by ``judge``; the result then also holds this run's pending rectifications (a judge
    call failed, :func:`is_pending`), which are not in ``store``.
    """
    fmt = fmt or prompt_format(config.generator)
    usable = [x for x in located if x.status == STATUS_OK and x.first_wrong_step is not None]
    if config.limit is not None:
        usable = usable[: config.limit]
    for x in usable:
        if x.sample_id not in samples:
            raise InputError("samples.jsonl", f"no sample {x.sample_id!r} for a located error", None, "sample_id")
    done = store.keys() if store is not None else set()
    wanted = {x.sample_id for x in usable}
    if not config.confirm:
        new = sample_candidates(config, problems, samples, usable, generator, fmt, done, store.append if store is not None else None)
        return new if store is None else [r for r in store.records() if r.sample_id in wanted]
    if judge is None:
        raise ConfigError("rectify --confirm needs a judge")
    earlier = [r for r in (store.records() if store is not None else []) if r.sample_id in wanted]
    unjudged_earlier = sum(not r.evidence for r in earlier)
    if unjudged_earlier:
        log.warning("%d error(s) were rectified without --confirm earlier and stay unconfirmed; remove %s to judge them",
                    unjudged_earlier, store.path if store is not None else "rectified.jsonl")
    sampled = {r.sample_id: r for r in (unconfirmed_store.records() if unconfirmed_store is not None else [])}
    new = sample_candidates(config, problems, samples, usable, generator, fmt, done | set(sampled),
                            unconfirmed_store.append if unconfirmed_store is not None else None)
    sampled.update({r.sample_id: r for r in new})
    todo = [sampled[x.sample_id] for x in usable if x.sample_id not in done and x.sample_id in sampled]
    judged = confirm_all(config, problems, todo, judge, store)
    pending = [r for r in judged if is_pending(r)]
    if store is None:
        return judged
    return [r for r in store.records() if r.sample_id in wanted] + pending


def funnel_for(rectified: Sequence[Rectification], located_ok: int, wall_s: float) -> Funnel:
    """in: located errors; out: errors with at least one chosen candidate; dropped by reason.

    With judge confirmation, an error whose candidates the judge turned all down is dropped as
    'judge rejected chosen step' (or 'judge verdict unparseable' when no verdict could be read),
    one with a failed judge call as 'judge call failed (retried on rerun)'; per-candidate counts
    of the verdicts are in ``extra``.
    """
    final = [r for r in rectified if not is_pending(r)]
    pending = len(rectified) - len(final)
    funnel = Funnel("rectify", records_in=located_ok, records_out=sum(bool(r.chosen) for r in final))
    verdicts = Counter(row["verdict"] for r in final for row in r.evidence.get("candidates", []))

    def reason(r: Rectification) -> str:
        if r.reached_gold == 0:
            return "no continuation reached gold"
        rows = r.evidence.get("candidates", [])
        if not rows:
            return "only the rejected step or duplicates"
        if all(row["verdict"] == UNPARSEABLE for row in rows):
            return "judge verdict unparseable"
        return "judge rejected chosen step"

    for why, count in Counter(reason(r) for r in final if not r.chosen).items():
        funnel.drop(why, count)
    if pending:
        funnel.drop("judge call failed (retried on rerun)", pending)
    if located_ok > len(rectified):
        funnel.drop("not attempted (limit)", located_ok - len(rectified))
    tried = sum(r.tried for r in rectified)
    funnel.extra = {"continuations": tried, "reached_gold_share": sum(r.reached_gold for r in rectified) / tried if tried else 0.0,
                    "chosen_candidates": sum(len(r.chosen) for r in final), "wall_s": round(wall_s, 2)}
    if verdicts:
        funnel.extra.update({"judge_confirmed_steps": verdicts[CONFIRMED], "judge_rejected_steps": verdicts[REJECTED],
                             "judge_prefix_rejected_steps": verdicts[PREFIX_REJECTED], "judge_unparseable_steps": verdicts[UNPARSEABLE]})
    if pending:
        funnel.extra["judge_failed_calls"] = sum(int(r.evidence.get("failed_calls", 0)) for r in rectified if is_pending(r))
    return funnel


def command(config: RectifyConfig) -> int:
    started = time.perf_counter()
    rd = RunDir(config.run_dir)
    if not rd.located.is_file():
        raise InputError(str(rd.located), "not found: run `stepdpo locate` first")
    problems = read_problems(rd)
    samples = {s.id: s for s in read_samples(rd)}
    located = RecordStore(rd.located, LocatedError, key="sample_id").records()
    generator = build_generator(config.generator)
    backend = None
    try:
        judge = None
        if config.confirm:
            backend = build_generator(config.judge_generator)
            judge_fmt = None if hasattr(backend, "chat") else prompt_format(config.judge_generator, instruction="")
            judge = StepJudge(config.judge, backend, judge_fmt, RecordStore(rd.root / "rectify_verdicts.jsonl", StepVerdict, key="key"),
                              rd.root / "rectify_judge_failed.jsonl", config.judgement_chars)
        rectified = run(config, problems, samples, located, generator, prompt_format(config.generator),
                        RecordStore(rd.rectified, Rectification, key="sample_id"), judge,
                        RecordStore(rd.root / "rectify_candidates.jsonl", Rectification, key="sample_id"))
    finally:
        # Both engines go before the next stage (or training) in this process needs the GPU memory.
        close_generator(backend)
        close_generator(generator)
    funnel = funnel_for(rectified, sum(x.status == STATUS_OK for x in located), time.perf_counter() - started)
    if judge is not None:
        funnel.extra = {**(funnel.extra or {}), "judge_calls": judge.asked}
    funnel.save(rd)
    print(funnel.render())
    return 0
