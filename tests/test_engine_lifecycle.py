"""`stepdpo run` shuts every generation engine down before the next stage, and all of them before training.

On a GPU each engine holds ~90% of the memory until it is shut down; on CPU the observable fact is that
every generator a stage built had ``close()`` called before the next stage started and before training.
"""

from __future__ import annotations

import pytest

from stepdpo.cli import main
from stepdpo.generation.base import GeneratorConfig
from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.stages import pipeline
from test_run_pipeline import _answers, _argv, _script


class StopBeforeTraining(Exception):
    pass


class RecordingGenerator(ScriptedGenerator):
    def __init__(self, script, events: list[str], label: str):
        super().__init__(script)
        self.events, self.label, self.closed = events, label, False
        events.append(f"open {label}")

    def close(self) -> None:
        self.closed = True
        self.events.append(f"close {self.label}")


def test_each_stage_closes_its_engines_before_the_next_and_before_training(tmp_path, tiny_model_dir, monkeypatch):
    from stepdpo.generation import registry
    from stepdpo.stages import locate, rectify, sample, scdpo

    events: list[str] = []
    built: list[RecordingGenerator] = []
    script = _script(_answers())

    def build(config):
        built.append(RecordingGenerator(script, events, f"engine{len(built)}"))
        return built[-1]

    for module in (registry, locate, rectify, sample, scdpo):
        monkeypatch.setattr(module, "build_generator", build)

    def fake_train(config):
        events.append("train")
        raise StopBeforeTraining

    monkeypatch.setattr(pipeline.train, "command", fake_train)
    argv = _argv(tmp_path / "run", tiny_model_dir) + ["--methods", "step-dpo", "scdpo", "--locate.localizer", "rollout"]
    with pytest.raises(StopBeforeTraining):
        main(argv)
    # eval-base, sample, locate (rollout), rectify, scdpo: one engine each, closed in turn.
    assert len(built) == 5 and all(g.closed for g in built)
    assert events == [item for i in range(5) for item in (f"open engine{i}", f"close engine{i}")] + ["train"]


def test_an_engine_is_closed_when_its_stage_fails(tmp_path, monkeypatch):
    from stepdpo.stages import sample

    built: list[RecordingGenerator] = []

    def failing(prompt, params, index):
        raise RuntimeError("scripted generation failure")

    monkeypatch.setattr(sample, "build_generator", lambda config: built.append(RecordingGenerator(failing, [], "e")) or built[-1])
    with pytest.raises(RuntimeError, match="scripted generation failure"):
        sample.command(sample.SampleConfig(run_dir=str(tmp_path / "run"), data="synthetic:train?n=2&seed=1", k=1,
                                           generator=GeneratorConfig(prompt_style="plain")))
    assert built and built[0].closed

