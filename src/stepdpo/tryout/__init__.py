"""`stepdpo try`: a local page to try models side by side on a problem, step by step.

``stepdpo try RUN_DIR`` serves the run's starting model (``RUN/sft/model``, else
the config's model) and every trained one (``RUN/train/<method>/final``); model
paths, hub ids and ``smollm2-135m`` can be given too, and mixed with run
directories. Each model is loaded once, when the page starts; one that cannot
be loaded is named on the page and the others stay usable. Needs the ``ui``
extra: ``pip install -e ".[ui]"``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Annotated, Any

import tyro

from stepdpo.errors import ConfigError
from stepdpo.generation.base import GeneratorConfig
from stepdpo.tryout.models import ModelSlot, expand_models

DEFAULT_SETS = ["synthetic:test?n=100&min_steps=2&max_steps=3&difficulty=0", "synthetic:test?n=100&min_steps=2&max_steps=4", "gsm8k:test", "multiarith:test"]


@dataclass
class TryConfig:
    models: Annotated[list[str], tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR|MODEL")] = field(metadata={"help": "Run directories (their starting and trained models) and/or models (paths, hub ids, 'smollm2-135m')."})
    names: list[str] = field(default_factory=list, metadata={"help": "A label per RUN_DIR|MODEL, in order (default: the method, or the path's last parts)."})
    data: list[str] = field(default_factory=lambda: list(DEFAULT_SETS), metadata={"help": "Problem sets offered in the picker (loader specs: synthetic:test?..., gsm8k:test, a file, ...)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Initial 'max new tokens' on the page."})
    temperature: float = field(default=0.0, metadata={"help": "Initial decoding: 0 = greedy, else sampling at this temperature."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (127.0.0.1: this machine only)."})
    port: int = field(default=7860, metadata={"help": "Port to serve on; 0 = any free port."})
    generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(batch_size=1), metadata={"help": "Generation backend and its settings (its model is each of the models above)."})


def check_config(config: TryConfig) -> None:
    if not config.models:
        raise ConfigError("try: name at least one RUN_DIR or MODEL")
    if config.max_new_tokens < 1:
        raise ConfigError(f"try: max_new_tokens must be >= 1, got {config.max_new_tokens}")
    if config.temperature < 0:
        raise ConfigError(f"try: temperature must be >= 0, got {config.temperature}")
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError('try: the page needs Gradio, an optional extra: pip install -e ".[ui]"')


def load_slots(config: TryConfig) -> list[ModelSlot]:
    """Every model of the config, loaded once; a model that fails keeps its error for the page."""
    return [ModelSlot.load(label, model, config.generator) for label, model in expand_models(config.models, config.names)]


def build(config: TryConfig) -> tuple[Any, list[ModelSlot]]:
    """(the page, its model slots), not yet served; refuses when no model loads at all."""
    from stepdpo.tryout.page import ProblemSets, build_page

    check_config(config)
    slots = load_slots(config)
    if all(slot.error for slot in slots):
        raise ConfigError("try: no model could be loaded: " + "; ".join(slot.error or "" for slot in slots))
    return build_page(slots, ProblemSets(config.data), config.max_new_tokens, config.temperature), slots


def command(config: TryConfig) -> int:
    from stepdpo.tryout.page import launch

    page, _ = build(config)
    launch(page, config.host, config.port, block=True)
    return 0
