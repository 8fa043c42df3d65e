"""Problem sets: one call, ``load_problems(spec)``, for every source of questions with gold answers.

Specs:

- shipped benchmarks (read from ``<project>/../shared/data`` or ``$STEPDPO_DATA_DIR``):
  ``gsm8k:train``, ``gsm8k:test``, ``math:train``, ``math:test``, ``math500:test``,
  ``svamp:test``, ``mawps:test``, ``multiarith:test``;
- ``synthetic:train`` / ``synthetic:test`` with options, e.g.
  ``synthetic:test?n=200&min_steps=2&max_steps=4&seed=0&difficulty=1``
  (see :mod:`stepdpo.problems.synthetic`);
- a local file ``path.jsonl|.json|.csv|.parquet``, optionally
  ``path.jsonl?question=q&answer=a&id=uid`` to name its columns;
- ``hf:owner/name[:split][?config=main&question=...]`` through ``datasets.load_dataset``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

import tyro

from stepdpo.errors import ConfigError
from stepdpo.problems.answers import format_number, gsm8k_final, gsm8k_to_steps, last_boxed
from stepdpo.problems.loaders import FILE_SUFFIXES, SHIPPED, FieldNames, LoadReport, data_dir, load_file, load_hub, load_shipped
from stepdpo.records import Problem

__all__ = [
    "DataShowConfig",
    "LoadReport",
    "command",
    "data_dir",
    "format_number",
    "gsm8k_final",
    "gsm8k_to_steps",
    "last_boxed",
    "load_problems",
    "load_problems_with_report",
    "shipped_specs",
]


def shipped_specs() -> list[str]:
    """Every ``name:split`` of the shipped benchmarks."""
    return [f"{name}:{split}" for name, splits in SHIPPED.items() for split in splits]


def _options(query: str, allowed: tuple[str, ...], spec: str) -> dict[str, str]:
    """``a=1&b=2`` -> {'a': '1', 'b': '2'}; an unknown or repeated option is a ConfigError."""
    parsed = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(parsed) - set(allowed))
    if unknown:
        raise ConfigError(f"{spec}: unknown option(s) {', '.join(unknown)} (valid: {', '.join(allowed)})")
    repeated = sorted(key for key, values in parsed.items() if len(values) > 1)
    if repeated:
        raise ConfigError(f"{spec}: option(s) given twice: {', '.join(repeated)}")
    return {key: values[0] for key, values in parsed.items()}


def _fields(options: dict[str, str], question_field: str | None, answer_field: str | None, id_field: str | None, spec: str) -> FieldNames:
    chosen = {}
    for role, keyword in (("question", question_field), ("answer", answer_field), ("id", id_field)):
        in_spec = options.get(role)
        if in_spec is not None and keyword is not None and in_spec != keyword:
            raise ConfigError(f"{spec}: {role} column given twice ({in_spec!r} in the spec, {keyword!r} as an argument)")
        chosen[role] = in_spec if in_spec is not None else keyword
    return FieldNames(**chosen)


def _subset(problems: list[Problem], limit: int | None, seed: int) -> list[Problem]:
    """A fixed random subset of ``limit`` problems, in their original order.

    The subset is the first ``limit`` of a seeded permutation, so a smaller limit
    with the same seed picks a subset of a larger one.
    """
    if limit is None or limit >= len(problems):
        return problems
    if limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    return [problems[index] for index in sorted(order[:limit])]


def load_problems_with_report(
    spec: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    on_bad_row: Literal["error", "skip"] = "error",
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
) -> tuple[list[Problem], LoadReport]:
    """Problems of a set (see the module docstring for specs), optionally a fixed random subset of ``limit``,
    and the :class:`LoadReport` (rows read, loaded, skipped by reason).

    Bad rows (malformed, missing or empty fields, duplicate ids) raise an
    :class:`~stepdpo.errors.InputError` naming file, line and field, or with
    ``on_bad_row="skip"`` are skipped and counted in the report. The ``*_field``
    options name a file's or hub set's columns (as ``?question=...`` in the spec does).
    """
    if on_bad_row not in ("error", "skip"):
        raise ConfigError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    skip_bad = on_bad_row == "skip"
    report = LoadReport(spec=spec)
    head, _, query = spec.partition("?")
    prefix, _, rest = head.partition(":")
    if prefix == "synthetic":
        from stepdpo.problems.synthetic import synthetic_problems

        if any(value is not None for value in (question_field, answer_field, id_field)):
            raise ConfigError(f"{spec}: question_field/answer_field/id_field do not apply to synthetic problems")
        problems = synthetic_problems(spec)
        report.path, report.rows, report.loaded = spec, len(problems), len(problems)
    elif prefix == "hf":
        options = _options(query, ("question", "answer", "id", "config"), spec)
        name, _, split = rest.partition(":")
        if name.count("/") != 1 or not all(name.split("/")):
            raise ConfigError(f"{spec}: expected hf:owner/name[:split]")
        fields = _fields(options, question_field, answer_field, id_field, spec)
        problems = load_hub(name, split or "test", options.get("config"), fields, spec, report, skip_bad)
    elif prefix in SHIPPED and not Path(head).suffix:
        if rest not in SHIPPED[prefix]:
            raise ConfigError(f"{spec}: {prefix} has split(s) {', '.join(SHIPPED[prefix])}")
        if query or any(value is not None for value in (question_field, answer_field, id_field)):
            raise ConfigError(f"{spec}: shipped sets take no options or column names")
        problems = load_shipped(prefix, rest, report)
    else:
        path = Path(head).expanduser()
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise ConfigError(
                f"unknown problem set {spec!r}: expected one of {', '.join(shipped_specs())}, synthetic:train|test[?...], "
                f"hf:owner/name[:split], or a file ending in {', '.join(FILE_SUFFIXES)}"
            )
        options = _options(query, ("question", "answer", "id"), spec)
        fields = _fields(options, question_field, answer_field, id_field, spec)
        problems = load_file(path, fields, spec, report, skip_bad)
    return _subset(problems, limit, seed), report


def load_problems(spec: str, **options: Any) -> list[Problem]:
    """The problems of :func:`load_problems_with_report` without its report.

    ``options`` are its keywords (``limit``, ``seed``, ``on_bad_row``, ``question_field``,
    ``answer_field``, ``id_field``); an unknown one is a TypeError naming it.
    """
    return load_problems_with_report(spec, **options)[0]


@dataclass
class DataShowConfig:
    """Print problems of a set with their gold answers."""

    spec: tyro.conf.Positional[str] = field(
        metadata={"help": "problem set: gsm8k:test, math500:test, synthetic:test?n=100&max_steps=4, a .jsonl/.json/.csv/.parquet path, hf:owner/name:split"},
    )
    limit: int = field(default=5, metadata={"help": "how many problems to print (a seeded random subset when the set is larger)"})
    seed: int = field(default=0, metadata={"help": "seed of the random subset"})
    show_solution: bool = field(default=False, metadata={"help": "also print the reference solution (step format) when there is one"})
    on_bad_row: Literal["error", "skip"] = field(default="error", metadata={"help": "on a bad row: stop with an error, or skip it and count it"})


def command(config: DataShowConfig) -> int:
    problems, report = load_problems_with_report(config.spec, limit=config.limit, seed=config.seed, on_bad_row=config.on_bad_row)
    for problem in problems:
        print(f"== {problem.id}  [{problem.source}]")
        print(problem.question)
        print(f"-- gold answer: {problem.answer}")
        if problem.metadata:
            print(f"-- metadata: {problem.metadata}")
        if config.show_solution and problem.solution:
            print("-- solution:")
            print(problem.solution)
        print()
    skipped = f", {report.skipped} bad row(s) skipped" if report.skipped else ""
    print(f"{len(problems)} of {report.loaded} problems shown ({report.path}{skipped})")
    for reason, count in sorted(report.reasons.items(), key=lambda item: -item[1]):
        print(f"  skipped {count:>6}  {reason}")
    return 0
