"""`stepdpo run`: the whole method in one run directory.

SFT (optional) -> eval of the starting policy -> sample -> locate -> rectify ->
pairs [-> scdpo, when a method needs its pairs] -> for each method: train -> eval
-> compare with the start [-> the same for each pair budget of a budget method]
[-> on-policy rounds 2..N: stages/rounds.py] -> report. Every stage is the same ``command(config)`` the CLI runs on its own, so
each one skips what is already on disk and resumes what is partial: a killed run
continues where it stopped when started again with the same arguments.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import yaml

from stepdpo.config import OptionCheck, load_config, save_config, validate_config
from stepdpo.generation.base import GeneratorConfig
from stepdpo.localizers.rollout import RolloutConfig
from stepdpo.records import atomic_write_json
from stepdpo.report.collect import read_timings
from stepdpo.rundir import RunDir, budget_run_name
from stepdpo.models import ORGANISM_ALIAS
from stepdpo.organism import spec as organism_spec
from stepdpo.stages import compare, evaluate, locate, pairs, pretrain, rectify, rounds, sample, scdpo, sft, train
from stepdpo.stages.compare import CompareConfig
from stepdpo.stages.evaluate import EvalConfig
from stepdpo.stages.locate import LocateConfig
from stepdpo.stages.pairs import PairsConfig
from stepdpo.stages.rectify import RectifyConfig
from stepdpo.stages.rounds import ROUND_SEED_STEP
from stepdpo.stages.sample import SampleConfig
from stepdpo.stages.scdpo import SCDPOConfig
from stepdpo.stages.sft import SFTConfig
from stepdpo.stages.train import TrainConfig, preference_optim
from stepdpo.training.options import OptimizerConfig

log = logging.getLogger(__name__)

# The default problems: 2-3 steps with numbers below 20 (synthetic difficulty 0), where the
# 135M model after SFT is neither hopeless nor perfect.
_PROBLEMS = "min_steps=2&max_steps=3&difficulty=0"
# The model organism's problems (configs/organism.yaml): 3-5 steps, where its greedy accuracy is middling.
_ORGANISM_PROBLEMS = "min_steps=3&max_steps=5&difficulty=0"

Method = Literal["step-dpo", "dpo", "scdpo", "judge-free"]

# method -> (training mode, pair files under RUN/pairs). scdpo_pairs.jsonl holds the
# step-controlled pairs and the naive whole-solution pairs the paper trains on together;
# judge-free pairs are single-step pairs, so they train exactly like Step-DPO's.
METHOD_DATA: dict[str, tuple[str, tuple[str, ...]]] = {
    "step-dpo": ("step-dpo", ("step_pairs.jsonl",)),
    "dpo": ("dpo", ("dpo_pairs.jsonl",)),
    "scdpo": ("scdpo", ("scdpo_pairs.jsonl",)),
    "judge-free": ("step-dpo", ("judge_free_pairs.jsonl",)),
}
SCDPO_METHODS = ("scdpo", "judge-free")


@dataclass
class RunConfig:
    """Options of the whole run; each stage's own options sit under its name (``--sample.k 8``)."""

    run_dir: str = field(default="runs/default", metadata={"help": "Run directory holding every stage's output."})
    preset: Literal["default", "quick", "quick-smollm2"] = field(default="default", metadata={"help": "default: the CPU demo on the embedded model (the README gives its measured stage times); quick: every stage and method on the model organism with little data (configs/organism.yaml's settings; 0.5 min measured on 2 threads once the organism is built, which the first run does, about 15 min); quick-smollm2: every stage of the default run on less data (8.6 min measured on 2 threads). Options given in YAML or flags override the preset."})
    model: str = field(default="smollm2-135m", metadata={"help": "Starting model: Hugging Face id, local path, or 'smollm2-135m'."})
    do_sft: bool = field(default=True, metadata={"help": "Start with supervised fine-tuning on step-format solutions (the embedded model needs it)."})
    methods: list[Method] = field(default_factory=lambda: ["step-dpo", "dpo", "scdpo", "judge-free"], metadata={"help": "Preference-training runs to make from the same data, each evaluated against the starting policy."})
    pair_budgets: list[int] = field(default_factory=list, metadata={"help": "Data-efficiency curve: train each of budget_methods again on only this many of its pairs (train.max_pairs: a keyed subset, each budget's pairs inside every larger one's), as RUN/train/<method>@<n>, evaluated as eval/<method>@<n> and compared with the start; the report plots accuracy by pair budget. A budget not below the method's pair count is skipped with a message (that model would be its full-data run). []: none."})
    budget_methods: list[Method] = field(default_factory=lambda: ["step-dpo", "dpo"], metadata={"help": "Methods trained at each of pair_budgets; each must be one of methods, whose full-data run ends its curve."})
    seed: int = field(default=0, metadata={"help": "Seed of every stage (problem subsets, sampling, training)."})
    dry_run: bool = field(default=False, metadata={"help": "Print the plan (stage order, generation engines, global batch, every stage's resolved config) and stop: nothing is loaded or written."})
    rounds: int = field(default=1, metadata={"help": "On-policy rounds: round r >= 2 samples, locates, rectifies and trains with round r-1's trained rounds_method model (also its DPO reference) on new problems, in RUN/rounds/r<r>/, and is evaluated and compared with the starting policy; only rounds_method is trained after round 1. 1: the run as without rounds."})
    rounds_method: Method = field(default="step-dpo", metadata={"help": "The method whose trained model starts each next round (one of methods; used when rounds > 1)."})
    rounds_sample_data: list[str] = field(default_factory=list, metadata={"help": f"Problem sets of rounds 2..N (one spec each), disjoint from earlier rounds'. Empty: a synthetic: sample.data gets its seed raised by {ROUND_SEED_STEP:,} per round (stages/rounds.py); another source must list them."})
    stop_after: Literal["", "sft", "pairs"] = field(default="", metadata={"help": "Stop after this stage: sft (and the evaluation of the starting model; e.g. to start several seeds from one SFT model), pairs (all preference data built, nothing trained); '': run everything."})
    generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(batch_size=32), metadata={"help": "Generation backend for sampling, rollouts, rectification and evaluation (its model is set by the run)."})
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(data=[f"synthetic:train?n=640&{_PROBLEMS}&seed=0"], optim=OptimizerConfig(learning_rate=2e-4)), metadata={"help": "SFT stage (640 small-number synthetic problems: what brings the embedded model into a middling accuracy band)."})
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(data=f"synthetic:train?n=48&{_PROBLEMS}&seed=1", k=4, max_new_tokens=160), metadata={"help": "Error collection (problems disjoint from the SFT data by seed)."})
    locate: LocateConfig = field(default_factory=lambda: LocateConfig(localizer="exact", limit=None, rollout=RolloutConfig(rollouts_per_prefix=4, max_new_tokens=160)), metadata={"help": "First-wrong-step localization. The default run uses the synthetic problems' known intermediate values (exact), the stand-in for the paper's strong judge: rollouts of the 135M policy itself (--locate.localizer rollout) found the true first wrong step for only 17-33% of its errors, usually blaming a correct earlier step (bench/results/localization.md)."})
    rectify: RectifyConfig = field(default_factory=lambda: RectifyConfig(r=4, max_new_tokens=160), metadata={"help": "Rectification of the located step."})
    pairs: PairsConfig = field(default_factory=PairsConfig, metadata={"help": "Pair building."})
    scdpo: SCDPOConfig = field(default_factory=lambda: SCDPOConfig(branch="random", limit=12, max_attempts=3, max_step_tokens=48, max_steps=4, rollouts=4, rollout_max_new_tokens=160), metadata={"help": "Step-controlled negatives and judge-free pairs from correct samples (run when methods include scdpo or judge-free)."})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(optim=preference_optim(epochs=3.0, learning_rate=5e-6), logging_steps=2, beta=0.4), metadata={"help": "Preference training (mode and name are set per method). The CPU runs give every method β 0.4 and lr 5e-6, where `stepdpo train` alone uses each mode's defaults (scdpo: the SCDPO paper's β 0.1, lr 1e-7): one setting for all, so the methods differ only in their pairs, and a learning rate that moves the 135M model in the few dozen steps a CPU run has. `--train.beta None` gives each mode its default."})
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(data=[f"synthetic:test?n=64&{_PROBLEMS}", "multiarith:test", "svamp:test"], limit=64, prompt="step", max_new_tokens=160), metadata={"help": "Evaluation of the starting policy and of every trained model."})

    def validate(self, prefix: str = "") -> None:
        """Check the options of every stage this run will reach, before any model is loaded or file written.

        Each stage's config is checked as the run will pass it (with the run's generator); a bad value
        raises ConfigError naming it as YAML and flags spell it (``sample.k``).
        """
        check = OptionCheck(self, prefix)
        check.not_empty("model", "run_dir", "methods")
        check.require(all(type(n) is int and n >= 1 for n in self.pair_budgets), "pair_budgets", "must hold positive whole numbers of pairs")
        check.require(len(set(self.pair_budgets)) == len(self.pair_budgets), "pair_budgets", "must not repeat a budget")
        if self.pair_budgets:
            check.not_empty("budget_methods")
            check.require(set(self.budget_methods) <= set(self.methods), "budget_methods",
                          f"must be among methods {self.methods} (a budget curve ends at the method's full-data run)")
        rounds.validate(self, prefix)
        validate_config(self.generator, f"{prefix}generator.")
        stages: list[tuple[str, Any]] = [("sft", self.sft)] if self.do_sft else []
        stages.append(("eval", self.eval))
        if self.stop_after != "sft":
            stages += [("sample", self.sample), ("locate", self.locate), ("rectify", self.rectify), ("pairs", self.pairs)]
            if any(method in SCDPO_METHODS for method in self.methods):
                stages.append(("scdpo", self.scdpo))
        if not self.stop_after:
            stages += [("train", replace(self.train, mode=METHOD_DATA[method][0])) for method in dict.fromkeys(self.methods)]
        for name, stage in stages:
            if hasattr(stage, "generator"):
                stage = replace(stage, generator=self.generator)  # the run's generator replaces the stage's own
            validate_config(stage, f"{prefix}{name}.")

    @classmethod
    def preset_config(cls, name: str) -> "RunConfig":
        """The config a preset starts from (YAML and flags are applied on top)."""
        base = cls()
        if name == "default":
            return base
        if name == "quick":
            # configs/organism.yaml's settings (chosen on the validation split) on little data.
            return replace(
                base,
                preset="quick",
                run_dir="runs/quick",
                model="organism",
                do_sft=False,
                generator=replace(base.generator, batch_size=64),
                sample=replace(base.sample, data=f"synthetic:train?n=48&{_ORGANISM_PROBLEMS}&seed=1", k=4),
                locate=replace(base.locate, localizer="exact"),
                scdpo=replace(base.scdpo, limit=16, max_steps=5),
                pairs=replace(base.pairs, stop_mismatch="drop", max_dpo_pairs_per_problem=0),
                train=replace(base.train, optim=replace(base.train.optim, learning_rate=3e-5, epochs=2.0)),
                eval=replace(base.eval, data=[f"synthetic:test?n=96&{_ORGANISM_PROBLEMS}"], limit=None),
            )
        if name == "quick-smollm2":
            return replace(
                base,
                preset="quick-smollm2",
                sft=replace(base.sft, data=[f"synthetic:train?n=96&{_PROBLEMS}&seed=0"]),
                sample=replace(base.sample, data=f"synthetic:train?n=12&{_PROBLEMS}&seed=1", k=2),
                # rollout here, so that the quick run exercises the self-localization too
                locate=replace(base.locate, localizer="rollout", limit=8, rollout=replace(base.locate.rollout, rollouts_per_prefix=2)),
                rectify=replace(base.rectify, r=2),
                scdpo=replace(base.scdpo, limit=4, max_attempts=2, rollouts=2),
                # No warmup: a schedule's first step has learning rate 0, and here that is the only step.
                train=replace(base.train, optim=replace(base.train.optim, epochs=1.0, warmup_ratio=0.0), logging_steps=1),
                eval=replace(base.eval, data=[f"synthetic:test?n=16&{_PROBLEMS}", "multiarith:test"], limit=16),
            )
        raise ValueError(f"unknown preset {name!r} (default, quick, quick-smollm2)")


def _has_records(path: Path) -> bool:
    return path.is_file() and any(line.strip() for line in path.open(encoding="utf-8"))


def _timed(timings: dict[str, float], run_dir: RunDir, name: str, step: Callable[[], Any]) -> Any:
    """Run one stage; add its seconds to ``timings`` (this invocation) and to RUN/timings.json.

    RUN/timings.json sums every invocation's seconds per stage: a resumed run's stages skip
    their finished work in a second or two, and the file (which the report shows) must still
    say what the work took, not what its skip took.
    """
    started = time.perf_counter()
    log.info("=== stage %s ===", name)
    result = step()
    seconds = time.perf_counter() - started
    timings[name] = round(seconds, 1)
    recorded, _ = read_timings(run_dir)  # an unreadable file starts the sums again rather than failing the run
    recorded[name] = round(recorded.get(name, 0.0) + seconds, 1)
    atomic_write_json(run_dir.root / "timings.json", recorded)
    return result


def policy_model(config: RunConfig) -> str:
    """The model the run samples from and trains: the SFT model when the run starts with SFT, else ``config.model``."""
    return str(sft.model_dir(stage_config(config, "sft"))) if config.do_sft else config.model


def stage_config(config: RunConfig, section: str, method: Optional[str] = None, budget: Optional[int] = None) -> Any:
    """The config `stepdpo run` hands one stage: its section, with the run's directory, seed, policy and generator.

    ``method`` picks a training method's mode, name and pair files (train), or its final model (eval);
    without one, train keeps its section's mode and eval evaluates the starting policy. ``budget`` (with a
    method) is a pair budget's run: trained on that many pairs, named ``<method>@<budget>``. A stage command
    given a run config (``stepdpo sample --config RECIPE``) gets exactly this.
    """
    root = str(RunDir(config.run_dir).root)
    if section == "sft":
        return replace(config.sft, model=config.model, run_dir=root, output_dir="", seed=config.seed, prompt_style=config.generator.prompt_style)
    policy = policy_model(config)
    generator = replace(config.generator, model=policy)
    if section == "sample":
        return replace(config.sample, run_dir=root, seed=config.seed, generator=generator)
    if section == "locate":
        return replace(config.locate, run_dir=root, generator=generator, rollout=replace(config.locate.rollout, seed=config.seed))
    if section == "rectify":
        return replace(config.rectify, run_dir=root, seed=config.seed, generator=generator)
    if section == "pairs":
        return replace(config.pairs, run_dir=root)
    if section == "scdpo":
        return replace(config.scdpo, run_dir=root, seed=config.seed, generator=generator, judge_free="judge-free" in config.methods)
    if section == "train":
        trained = replace(config.train, model=policy, run_dir=root, output_dir="", seed=config.seed, prompt_style=config.generator.prompt_style)
        if method is None:
            return trained
        mode, files = METHOD_DATA[method]
        trained = replace(trained, mode=mode, name=method, pairs=[str(RunDir(root).pairs / f) for f in files])
        return trained if budget is None else replace(trained, name=budget_run_name(method, budget), max_pairs=budget)
    if section == "eval":
        # The test subsets follow eval.seed, not the run's seed: runs with different seeds are
        # then measured on the same problems (and greedy decoding needs no seed).
        model = str(train.resolve_output_dir(stage_config(config, "train", method, budget)) / "final") if method else policy
        name = budget_run_name(method, budget) if method and budget is not None else method or "base"
        return replace(config.eval, model=model, name=name, run_dir=root, output_dir=None, generator=replace(generator, model=model))
    raise ValueError(f"unknown stage section {section!r}")


STAGE_SECTIONS = ("sft", "sample", "locate", "rectify", "pairs", "scdpo", "train", "eval")


def recorded_config(config: RunConfig) -> RunConfig:
    """What RUN/config.yaml records: the run's options, each stage section as the run hands it to its stage.

    The run replaces a section's run directory, seed, model and generator with its own, so a section
    saved as given would show values that did not run (``model: smollm2-135m`` under ``sample`` in a run
    on the organism). Saving the handed-over sections shows what ran, and loading the file back gives
    the same run: the run sets those fields again. The shared ``generator`` section's model is never
    used (each stage gets the policy), so it shows the run's starting model.
    """
    sections = {section: stage_config(config, section) for section in STAGE_SECTIONS}
    return replace(config, generator=replace(config.generator, model=config.model), **sections)


def section_from_run_config(section: str, path: Path, mapping: dict[str, Any]) -> Any:
    """A stage's config from a run config file (its section, resolved as `stepdpo run` resolves it), or None.

    The file is a run config when every top-level key is an option of `stepdpo run` and some are
    not options of the stage (``model``, ``do_sft``, the other sections); otherwise it is the stage's
    own config file and None is returned.
    """
    run_fields = {f.name for f in fields(RunConfig)}
    stage_fields = {f.name for f in fields(type(getattr(RunConfig(), section)))}
    keys = set(mapping)
    if not (keys <= run_fields and keys - stage_fields):
        return None
    return stage_config(load_config(RunConfig, path), section)


def collection_sections(config: RunConfig) -> list[str]:
    """The stages that build the preference data, in order: scdpo only when a method trains on its pairs."""
    return ["sample", "locate", "rectify", "pairs"] + (["scdpo"] if any(method in SCDPO_METHODS for method in config.methods) else [])


def plan(config: RunConfig) -> dict[str, Any]:
    """What `stepdpo run` would do, resolved without loading a model: stage order, launches, global batch, stage configs."""
    gen = config.generator
    if gen.backend == "vllm":
        engines = f"vllm: {gen.data_parallel_size} engine process(es) x {gen.tensor_parallel_size} GPU(s) = {gen.data_parallel_size * gen.tensor_parallel_size} GPUs"
    elif gen.backend == "openai":
        engines = f"openai: {gen.base_url} ({gen.max_concurrency} requests in flight)"
    else:
        engines = f"hf: device {gen.device}, batch {gen.batch_size}"
    stages: dict[str, Any] = {}
    if config.do_sft:
        stages["sft"] = stage_config(config, "sft")
    stages["eval-base"] = stage_config(config, "eval")
    if config.stop_after != "sft":
        for section in collection_sections(config):
            stages[section] = stage_config(config, section)
        if config.stop_after != "pairs":
            for method in config.methods:
                stages[f"train-{method}"] = stage_config(config, "train", method)
                stages[f"eval-{method}"] = stage_config(config, "eval", method)
            for method, budget in budget_runs(config):  # each skipped at run time when the method has no more pairs than that
                stages[f"train-{budget_run_name(method, budget)}"] = stage_config(config, "train", method, budget)
                stages[f"eval-{budget_run_name(method, budget)}"] = stage_config(config, "eval", method, budget)
            for number in range(2, config.rounds + 1):
                round_config = rounds.round_config(config, number)
                for section in collection_sections(round_config):
                    stages[f"round{number}/{section}"] = stage_config(round_config, section)
                for section in ("train", "eval"):
                    stages[f"round{number}/{section}-{config.rounds_method}"] = stage_config(round_config, section, config.rounds_method)
    batch = config.train.optim.batch_size * config.train.optim.grad_accum
    global_batch: dict[str, Any] = {"per_device_batch": config.train.optim.batch_size, "grad_accum": config.train.optim.grad_accum, "per_process": batch}
    if config.train.global_batch:
        processes, remainder = divmod(config.train.global_batch, batch)
        global_batch["intended"] = config.train.global_batch
        global_batch["training_processes"] = processes if not remainder and processes else f"none: {config.train.global_batch} is not a multiple of {batch}"
    else:
        global_batch["in_one_process"] = batch
    return {
        "run_dir": config.run_dir,
        "policy": policy_model(config),
        "generation": engines,
        "order": list(stages),
        "global_batch": global_batch,
        "stages": {name: asdict(stage) for name, stage in stages.items()},
    }


def budget_runs(config: RunConfig) -> list[tuple[str, int]]:
    """(method, pair budget) of every run of the data-efficiency curve, smallest budgets first."""
    return [(method, budget) for method in dict.fromkeys(config.budget_methods) for budget in sorted(config.pair_budgets)]


def train_pair_budgets(config: RunConfig, rd: RunDir, timings: dict[str, float]) -> None:
    """The data-efficiency curve: each budget method trained on each pair budget, evaluated and compared with the start.

    A budget not below the method's pair count is skipped with a message: it would train on all of them,
    a second copy of the method's full-data run (the curve's last point).
    """
    from stepdpo.training.data import read_pairs

    available: dict[str, int] = {}
    for method, budget in budget_runs(config):
        if method not in available:
            files = stage_config(config, "train", method).pairs
            available[method] = len(read_pairs([p for p in files if Path(p).is_file()]))
        if budget >= available[method]:
            message = f"{budget_run_name(method, budget)}: skipped, {method} has {available[method]} pairs (all of them are its full-data run)"
            log.warning(message)
            print(message)
            continue
        train_and_compare(config, rd, timings, method, {"": rd.eval("base")}, budget)


COLLECTION_STAGES = {"sample": sample, "locate": locate, "rectify": rectify, "pairs": pairs, "scdpo": scdpo}
"""Section -> its stage module (whose ``command`` runs it)."""


def collect_pairs(config: RunConfig, rd: RunDir, timings: dict[str, float]) -> None:
    """Sample, locate, rectify and build the pairs (and SCDPO's, when a method needs them) with the run's policy."""
    for section in collection_sections(config):
        _timed(timings, rd, section, lambda: COLLECTION_STAGES[section].command(stage_config(config, section)))


def train_and_compare(config: RunConfig, rd: RunDir, timings: dict[str, float], method: str, baselines: dict[str, Path],
                      budget: Optional[int] = None) -> bool:
    """Train ``method`` (on ``budget`` of its pairs when given; unless its final model is complete), evaluate it, and
    compare it with each baseline evaluation, writing ``RUN/compare_<name><suffix>.json`` per ``suffix -> eval folder``
    of ``baselines`` (``name``: the method, or ``<method>@<budget>``); False when it has no pairs."""
    train_config = stage_config(config, "train", method, budget)
    name = train_config.name
    final = train.resolve_output_dir(train_config) / "final"
    if not any(_has_records(Path(path)) for path in train_config.pairs):
        # A small run can leave a method without pairs (e.g. no correct samples to branch
        # from); the other methods' results are still worth having.
        log.warning("%s: no pairs in %s, not trained", name, ", ".join(train_config.pairs))
        print(f"{name}: skipped, no pairs in {', '.join(train_config.pairs)}")
        return False
    if train.is_complete(final):  # verified weights, not just a config.json beside empty tensors
        log.info("train %s: %s is complete, skipping", name, final)
    else:
        _timed(timings, rd, f"train-{name}", lambda: train.command(train_config))
    eval_config = stage_config(config, "eval", method, budget)
    _timed(timings, rd, f"eval-{name}", lambda: evaluate.command(eval_config))
    for suffix, baseline in baselines.items():
        compare.command(CompareConfig(run_a=str(baseline), run_b=str(rd.eval(name)), seed=config.seed,
                                      output=str(rd.root / f"compare_{name}{suffix}.json")))
    return True


def run_round(config: RunConfig, number: int, timings: dict[str, float]) -> bool:
    """On-policy round ``number`` >= 2 in RUN/rounds/r<number> (stages/rounds.py): its data from round ``number - 1``'s
    model, which it trains further; compared with the starting policy and the previous round. False when it trained nothing."""
    round_config = rounds.round_config(config, number)
    rd = RunDir(round_config.run_dir).ensure()
    save_config(recorded_config(round_config), rd.config)
    log.info("=== round %d of %d: policy %s ===", number, config.rounds, round_config.model)
    round_timings: dict[str, float] = {}
    collect_pairs(round_config, rd, round_timings)
    previous = RunDir(rounds.round_dir(config.run_dir, number - 1)).eval(config.rounds_method)
    trained = train_and_compare(round_config, rd, round_timings, config.rounds_method,
                                {"": RunDir(config.run_dir).eval("base"), "_previous": previous})
    timings[f"round{number}"] = round(sum(round_timings.values()), 1)
    return trained


def command(config: RunConfig) -> int:
    from stepdpo import report

    config.validate()  # every stage's options, before minutes of SFT make a late stage's bad value matter
    if config.dry_run:
        print(yaml.safe_dump(plan(config), sort_keys=False, allow_unicode=True), end="")
        return 0
    if config.rounds > 1 and not config.stop_after:
        rounds.check_disjoint(config)  # a problem set given twice fails now, not after the first rounds
    rd = RunDir(config.run_dir).ensure()
    save_config(recorded_config(config), rd.config)
    timings: dict[str, float] = {}
    root = str(rd.root)

    if config.model == ORGANISM_ALIAS and not organism_spec.is_finished(organism_spec.organism_config()):
        # The alias names a model built once by `stepdpo pretrain`; the run builds it rather than fail.
        _timed(timings, rd, "pretrain", lambda: pretrain.build(organism_spec.organism_config(), validate_after=False))
    policy = policy_model(config)
    if config.do_sft:
        if sft.is_complete(Path(policy)):
            log.info("sft: %s is complete, skipping", policy)
        else:
            _timed(timings, rd, "sft", lambda: sft.command(stage_config(config, "sft")))

    base_eval = stage_config(config, "eval")
    _timed(timings, rd, "eval-base", lambda: evaluate.command(base_eval))
    if config.stop_after == "sft":
        print(f"stopped after sft and its evaluation: {policy}")
        return 0

    collect_pairs(config, rd, timings)
    if config.stop_after == "pairs":
        print(f"stopped after pairs: {rd.pairs}")
        return 0

    trained = {method: train_and_compare(config, rd, timings, method, {"": rd.eval("base")}) for method in dict.fromkeys(config.methods)}
    train_pair_budgets(config, rd, timings)
    for number in range(2, config.rounds + 1):
        if not trained[config.rounds_method]:
            print(f"rounds {number}-{config.rounds}: not run, round {number - 1} trained no {config.rounds_method} model to start from")
            break
        trained[config.rounds_method] = run_round(config, number, timings)

    _timed(timings, rd, "report", lambda: report.command(report.ReportConfig(run_dir=root)))
    total = sum(timings.values())
    print(f"run finished in {total / 60:.1f} min (stages this invocation): report at {rd.report / 'report.html'}")
    return 0
