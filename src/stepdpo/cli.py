"""The `stepdpo` command: a thin wrapper that parses a stage's config and calls the stage.

Each command names the module holding its config dataclass and a ``command(config)``
function; modules are imported only when their command runs, so ``--help`` is fast.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from stepdpo import __version__
from stepdpo.config import parse_cli, validate_config
from stepdpo.errors import StepdpoError

# command words -> (module, config class, one-line summary)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("stepdpo.stages.pipeline", "RunConfig", "Everything: SFT -> sample -> locate -> rectify -> pairs -> train -> eval -> report."),
    "data show": ("stepdpo.problems", "DataShowConfig", "Print problems of a set (gsm8k:test, synthetic:..., a file) with their gold answers."),
    "grade": ("stepdpo.stages.grade", "GradeConfig", "Re-grade a JSONL of responses against gold answers."),
    "pretrain": ("stepdpo.stages.pretrain", "PretrainConfig", "Build the model organism: a small Llama trained from scratch on synthetic problems."),
    "sft": ("stepdpo.stages.sft", "SFTConfig", "Supervised fine-tuning on step-formatted solutions."),
    "sample": ("stepdpo.stages.sample", "SampleConfig", "Error collection: k step-wise samples per problem, graded."),
    "locate": ("stepdpo.stages.locate", "LocateConfig", "Find the first wrong step of each wrong sample (judge, rollout, exact, file)."),
    "rectify": ("stepdpo.stages.rectify", "RectifyConfig", "Resample from the correct prefix; keep first steps that reach the gold answer."),
    "pairs": ("stepdpo.stages.pairs", "PairsConfig", "Build Step-DPO (and plain DPO) preference pairs: JSONL, Parquet, datasets."),
    "scdpo": ("stepdpo.stages.scdpo", "SCDPOConfig", "Step-Controlled DPO pairs and judge-free step pairs from correct samples."),
    "train": ("stepdpo.stages.train", "TrainConfig", "Preference training: step-dpo, dpo or scdpo, full or LoRA."),
    "eval": ("stepdpo.stages.evaluate", "EvalConfig", "Accuracy, pass@k and maj@k on test sets."),
    "compare": ("stepdpo.stages.compare", "CompareConfig", "Two evaluations side by side: paired difference, bootstrap CI, McNemar."),
    "report": ("stepdpo.report", "ReportConfig", "HTML + Markdown report of a run directory."),
    "try": ("stepdpo.tryout", "TryConfig", "A local page to try models side by side, step by step (needs the ui extra)."),
}


# Stage commands whose options are also a section of `stepdpo run`'s config (same name).
STAGE_COMMANDS = ("sft", "sample", "locate", "rectify", "pairs", "scdpo", "train", "eval")


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = "\n".join(f"  {name.ljust(width)}  {summary}" for name, (_, _, summary) in COMMANDS.items())
    return (
        f"stepdpo {__version__}: Step-DPO for long-chain reasoning\n\n"
        "usage: stepdpo COMMAND [--config FILE.yaml] [--option value ...]\n\n"
        f"commands:\n{rows}\n\n"
        "Every command takes --help; options can also come from a YAML file given with --config.\n"
        "A stage command given a run config (configs/recipes/...) takes its own section of it."
    )


def _match_command(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    for words in (2, 1):
        name = " ".join(argv[:words])
        if name in COMMANDS:
            return name, list(argv[words:])
    return None


def _run_config_section(name: str) -> Callable[[Path, dict[str, Any]], Any] | None:
    """For a stage command: reads its section of a run config (``stepdpo sample --config RECIPE``), resolved as `stepdpo run` does."""

    def from_run_config(path: Path, mapping: dict[str, Any]) -> Any:
        from stepdpo.stages.pipeline import section_from_run_config

        return section_from_run_config(name, path, mapping)

    return from_run_config if name in STAGE_COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    matched = _match_command(argv)
    if matched is None:
        print(f"stepdpo: error: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    name, rest = matched
    module_name, config_name, summary = COMMANDS[name]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        module = importlib.import_module(module_name)
        config = parse_cli(getattr(module, config_name), rest, prog=f"stepdpo {name}", description=summary,
                           from_other_file=_run_config_section(name))
        validate_config(config)  # bad options fail here, naming the option, before any model is loaded
        status = module.command(config)
    except StepdpoError as err:
        print(f"stepdpo {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stepdpo {name}: interrupted; finished records are on disk, rerun to resume", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
