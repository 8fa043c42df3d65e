"""vLLM data parallelism as worker processes, on CPU: real spawned workers around a scripted fake engine.

The fake engine (built by ``fake_engine`` inside each worker) answers ``<prompt>@<its CUDA_VISIBLE_DEVICES>#<i>``,
and scripted prompts make it misbehave the ways a real engine can: ``RAISE`` (an exception in generate),
``CRASH`` (the process dies), ``HANG`` (no answer), ``LONG`` (truncated at the token limit). Engines log
their shutdown to the file named by $FAKE_ENGINE_LOG, so a test can see each worker closed its engine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stepdpo.generation import data_parallel
from stepdpo.generation.base import Completion, GeneratorConfig, SamplingParams
from stepdpo.generation.registry import build_generator
from stepdpo.generation.data_parallel import DataParallelGenerator, WorkerError, gpu_groups, shard_bounds


class FakeEngine:
    def __init__(self, config: GeneratorConfig):
        self.devices = os.environ["CUDA_VISIBLE_DEVICES"]
        self.config = config

    def generate(self, prompts: list[str], params: SamplingParams, seeds=None) -> list[list[Completion]]:
        self.seeds = seeds
        if "RAISE" in prompts:
            raise RuntimeError("scripted engine failure")
        if "CRASH" in prompts:
            os._exit(7)
        if "HANG" in prompts:
            time.sleep(600)
        out = []
        for prompt in prompts:
            finish = "length" if prompt == "LONG" else "stop"
            out.append([Completion(f"{prompt}@{self.devices}#{i}", 3, finish) for i in range(params.n)])
        if seeds is not None:  # the seed each prompt reached its engine with
            out = [[Completion(f"{c.text}~{seed}", c.num_tokens, c.finish_reason) for c in cs] for cs, seed in zip(out, seeds)]
        return out

    def close(self) -> None:
        with open(os.environ["FAKE_ENGINE_LOG"], "a", encoding="utf-8") as log:
            log.write(f"closed {self.devices} dp={self.config.data_parallel_size}\n")


def fake_engine(config: GeneratorConfig) -> FakeEngine:
    return FakeEngine(config)


def failing_engine(config: GeneratorConfig) -> FakeEngine:
    if os.environ["CUDA_VISIBLE_DEVICES"] == "3":
        raise RuntimeError("CUDA out of memory (scripted)")
    return FakeEngine(config)


@pytest.fixture
def engine_log(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "engines.log"
    path.touch()
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(path))
    return path


def config(dp: int = 2, tp: int = 1, timeout: float = 120.0) -> GeneratorConfig:
    return GeneratorConfig(backend="vllm", model="fake", data_parallel_size=dp, tensor_parallel_size=tp, worker_timeout_s=timeout)


def test_shards_are_contiguous_and_cover_every_prompt():
    assert shard_bounds(5, 2) == [(0, 2), (2, 5)]
    assert shard_bounds(1, 3) == [(0, 0), (0, 0), (0, 1)]
    assert gpu_groups(["0", "1", "2", "3"], 2, 2) == [["0", "1"], ["2", "3"]]
    with pytest.raises(Exception, match="needs 4 GPUs, but 3 are visible"):
        gpu_groups(["0", "1", "2"], 2, 2)


def test_workers_split_the_prompts_pin_their_gpus_and_merge_in_order(engine_log):
    prompts = [f"p{i}" for i in range(5)] + ["LONG"]
    with DataParallelGenerator(config(dp=2, tp=2), engine_factory=fake_engine, devices=["4", "5", "6", "7"]) as generator:
        out = generator.generate(prompts, SamplingParams(n=2, temperature=0.7))
        assert [[c.text for c in cs] for cs in out] == [
            [f"{p}@{gpus}#{i}" for i in range(2)] for p, gpus in zip(prompts, ["4,5"] * 3 + ["6,7"] * 3)
        ]
        assert out[-1][0].finish_reason == "length"
        # Fewer prompts than workers: the idle worker gets nothing, the answer is still in order.
        assert [cs[0].text for cs in generator.generate(["only"], SamplingParams())] == ["only@6,7#0"]
        assert generator.generate([], SamplingParams()) == []
    # Each worker shut its own engine down, and each engine was one replica.
    assert sorted(engine_log.read_text().splitlines()) == ["closed 4,5 dp=1", "closed 6,7 dp=1"]
    with pytest.raises(WorkerError, match="shut down"):
        generator.generate(["late"], SamplingParams())


def test_each_prompt_keeps_its_seed_whatever_shard_it_falls_in(engine_log):
    prompts = ["a", "b", "c"]
    with DataParallelGenerator(config(dp=2), engine_factory=fake_engine, devices=["0", "1"]) as generator:
        out = generator.generate(prompts, SamplingParams(temperature=0.7), seeds=[7, 8, 9])
        assert [cs[0].text.split("~")[1] for cs in out] == ["7", "8", "9"]
        # Seeded through SamplingParams.seed: resolved per prompt before sharding, as one engine would.
        from stepdpo.generation.base import prompt_seeds

        params = SamplingParams(temperature=0.7, seed=5)
        by_seed = generator.generate(prompts, params)
        assert [cs[0].text.split("~")[1] for cs in by_seed] == [str(s) for s in prompt_seeds(prompts, params, None)]


def test_an_engine_error_names_the_gpu_and_stops_every_worker(engine_log):
    generator = DataParallelGenerator(config(), engine_factory=fake_engine, devices=["0", "1"])
    with pytest.raises(WorkerError, match=r"(?s)GPU 1 failed while generating prompts 1-2.*scripted engine failure"):
        generator.generate(["a", "b", "RAISE"], SamplingParams())
    assert not any(w.process.is_alive() for w in generator._workers)
    assert sorted(engine_log.read_text().splitlines()) == ["closed 0 dp=1", "closed 1 dp=1"]


def test_a_worker_that_dies_is_an_error_with_its_exit_code(engine_log):
    generator = DataParallelGenerator(config(), engine_factory=fake_engine, devices=["0", "1"])
    with pytest.raises(WorkerError, match="GPU 0 exited with code 7"):
        generator.generate(["CRASH", "b"], SamplingParams())
    assert not any(w.process.is_alive() for w in generator._workers)


def test_a_silent_worker_times_out_instead_of_hanging(engine_log):
    # Started with time to spare (spawning the workers can take seconds on a loaded machine), then
    # given 3 s per call: what is tested is a call that never returns.
    generator = DataParallelGenerator(config(timeout=120.0), engine_factory=fake_engine, devices=["0", "1"])
    generator.timeout_s = 3.0
    with pytest.raises(WorkerError, match="GPU 1 did not answer within worker_timeout_s=3"):
        generator.generate(["a", "HANG"], SamplingParams())
    assert not any(w.process.is_alive() for w in generator._workers)


def test_an_engine_that_cannot_start_names_its_gpu(engine_log):
    with pytest.raises(WorkerError, match=r"(?s)GPU 3 failed while starting its engine.*out of memory"):
        DataParallelGenerator(config(), engine_factory=failing_engine, devices=["2", "3"])


def test_build_generator_runs_vllm_data_parallelism_as_workers(engine_log, monkeypatch):
    # The shipped path: backend vllm with data_parallel_size > 1 never hands data_parallel_size to one vllm.LLM.
    monkeypatch.setattr(data_parallel, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr("stepdpo.generation.vllm.VLLMGenerator", FakeEngine)
    generator = build_generator(config(dp=2))
    try:
        assert [cs[0].text for cs in generator.generate(["x", "y"], SamplingParams())] == ["x@0#0", "y@1#0"]
    finally:
        generator.close()
