"""On-policy rounds of `stepdpo run` (``--rounds N``): where each round lives, what it samples, which model starts it.

Round 1 is the run itself, laid out as without rounds. Round r >= 2 is a complete sub-run in
``RUN/rounds/r<r>/`` (its own config.yaml, problems/, samples.jsonl, located.jsonl, rectified.jsonl,
pairs/, train/, eval/, funnel/, compare files, timings.json), whose policy (it samples, rolls out,
rectifies, is trained, and is the DPO reference) is round r-1's final model of ``rounds_method``.
Only that method is trained in rounds >= 2.

Problems: round r draws new ones, never those of an earlier round. With a ``synthetic:`` spec
in ``sample.data``, round r's spec is round 1's with its ``seed`` (0 when not given) raised by
``(r - 1) * ROUND_SEED_STEP``; synthetic problem ids carry their seed, so the ids differ, and every
sampling seed of the pipeline is keyed on (run seed, problem or sample id) (:mod:`stepdpo.seeding`),
so no round replays another's draws. Any other source needs the specs of rounds 2..N spelled out
(``rounds_sample_data``); :func:`check_disjoint` refuses sets that share a problem id or question
with an earlier round before anything runs.

The functions here derive configs only; `stages/pipeline.py` runs the stages of each round.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from stepdpo.errors import ConfigError
from stepdpo.rundir import RunDir

RunOptions = Any
"""`stepdpo run`'s config (stages.pipeline.RunConfig), which imports this module: named here, not imported, so there is no cycle."""

ROUND_SEED_STEP = 1_000_000
"""Added to a synthetic ``sample.data`` seed per round: far from the small seeds configs pick by hand (0, 1, 1000)."""


def round_dir(run_dir: str | Path, number: int) -> Path:
    """Where round ``number`` lives: the run directory itself for round 1, else ``RUN/rounds/r<number>``."""
    root = RunDir(run_dir).root
    return root if number == 1 else root / "rounds" / f"r{number}"


def final_model(config: RunOptions, number: int) -> Path:
    """Round ``number``'s trained model of ``rounds_method`` (round 1: ``RUN/train/<method>/final``)."""
    return RunDir(round_dir(config.run_dir, number)).train(config.rounds_method) / "final"


def round_sample_data(config: RunOptions, number: int) -> str:
    """The problem set round ``number`` samples: ``rounds_sample_data[number - 2]`` when given, else round 1's
    ``synthetic:`` spec with its seed moved on by ``(number - 1) * ROUND_SEED_STEP``; a ConfigError otherwise."""
    if number == 1:
        return config.sample.data
    if config.rounds_sample_data:
        return config.rounds_sample_data[number - 2]
    spec = config.sample.data
    head, _, query = spec.partition("?")
    if not head.startswith("synthetic:"):
        raise ConfigError(f"option rounds_sample_data must list a problem set for each round after the first ({config.rounds - 1}) "
                          f"when sample.data is not a synthetic: spec (whose seed each round moves on), got sample.data {spec!r}")
    from stepdpo.problems.synthetic import parse_synthetic_spec

    seed = parse_synthetic_spec(spec).seed  # a malformed spec is refused here, naming it
    options = [(key, value) for key, value in parse_qsl(query, keep_blank_values=True) if key != "seed"]
    return f"{head}?{urlencode(options + [('seed', str(seed + (number - 1) * ROUND_SEED_STEP))])}"


def round_config(config: RunOptions, number: int) -> RunOptions:
    """Round ``number`` (>= 2) as a run of its own: in its folder, from round ``number - 1``'s model (no SFT),
    training ``rounds_method`` only (no pair budgets), on its own problems; every other option is the run's."""
    if number < 2:
        raise ValueError(f"round {number}: rounds are numbered from 2 (round 1 is the run itself)")
    return replace(
        config,
        run_dir=str(round_dir(config.run_dir, number)),
        model=str(final_model(config, number - 1)),
        do_sft=False,
        methods=[config.rounds_method],
        pair_budgets=[],  # the data-efficiency curve is round 1's
        sample=replace(config.sample, data=round_sample_data(config, number)),
        rounds=1,
        rounds_sample_data=[],
        stop_after="",
        dry_run=False,
    )


def validate(config: RunOptions, prefix: str = "") -> None:
    """The rounds options: ``rounds`` >= 1, ``rounds_method`` one of ``methods``, ``rounds_sample_data`` one spec per later round
    (or derivable); each error names its option."""
    if config.rounds < 1:
        raise ConfigError(f"option {prefix}rounds must be >= 1, got {config.rounds!r}")
    if config.rounds_sample_data and len(config.rounds_sample_data) != config.rounds - 1:
        raise ConfigError(f"option {prefix}rounds_sample_data must hold one problem set per round after the first "
                          f"({config.rounds - 1} for rounds {config.rounds}), got {config.rounds_sample_data!r}")
    if any(not spec.strip() for spec in config.rounds_sample_data):
        raise ConfigError(f"option {prefix}rounds_sample_data must not hold an empty string, got {config.rounds_sample_data!r}")
    if config.rounds == 1:
        return
    if config.rounds_method not in config.methods:
        raise ConfigError(f"option {prefix}rounds_method must be one of methods {list(config.methods)} (the method whose model "
                          f"starts each next round), got {config.rounds_method!r}")
    for number in range(2, config.rounds + 1):
        round_sample_data(config, number)


def check_disjoint(config: RunOptions) -> None:
    """Refuse rounds whose problems (the subsets the sample stage will draw) share an id or a question with an earlier round's.

    Loads every round's problem set once, before any round runs, so that a set given twice is an error at
    the start rather than after hours of earlier rounds.
    """
    from stepdpo.problems import load_problems

    seen_ids: dict[str, int] = {}
    seen_questions: dict[str, int] = {}
    for number in range(1, config.rounds + 1):
        spec = round_sample_data(config, number)
        option = "sample.data" if number == 1 or not config.rounds_sample_data else f"rounds_sample_data[{number - 2}]"
        for problem in load_problems(spec, limit=config.sample.limit, seed=config.seed, on_bad_row=config.sample.on_bad_row):
            question = " ".join(problem.question.split())
            # a set's own duplicates are its loader's business; only earlier rounds count here
            earlier = [seen for seen in (seen_ids.get(problem.id), seen_questions.get(question)) if seen is not None and seen != number]
            if earlier:
                raise ConfigError(f"option {option}: round {number}'s problems ({spec}) must be new, but problem {problem.id!r} "
                                  f"is also in round {earlier[0]}'s; give each round other problems")
            seen_ids.setdefault(problem.id, number)
            seen_questions.setdefault(question, number)
