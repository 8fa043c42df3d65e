"""Data parallelism for vLLM: one engine process per GPU (or per group of tensor-parallel GPUs).

Current vLLM refuses ``LLM(data_parallel_size=N)`` in a single process, so replicas run the
supported way: ``data_parallel_size`` worker processes (``spawn``ed, so no CUDA state is
forked), each with its own ``CUDA_VISIBLE_DEVICES`` group of ``tensor_parallel_size`` GPUs and
its own single-replica engine. A call splits the prompts into contiguous shards (neighbouring
prompts often share a prefix, which each engine's prefix cache then reuses), sends one shard to
each worker and merges the answers back in prompt order.

A worker that raises, dies or stays silent past ``worker_timeout_s`` is an error that names its
GPUs (and its exit code or traceback); the other workers are stopped, never left holding memory.
The engine is built by an *engine factory* (``GeneratorConfig -> Generator``) inside the worker:
``VLLMGenerator`` in use, a scripted fake in the CPU tests.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import traceback
import weakref
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Optional, Sequence

from stepdpo.errors import ConfigError, StepdpoError
from stepdpo.generation.base import Completion, Generator, GeneratorConfig, SamplingParams, close_generator, prompt_seeds

log = logging.getLogger(__name__)

EngineFactory = Callable[[GeneratorConfig], Generator]


class WorkerError(StepdpoError):
    """A data-parallel engine worker failed: it raised, exited or did not answer in time."""


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every device torch counts."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def gpu_groups(devices: list[str], data_parallel_size: int, tensor_parallel_size: int) -> list[list[str]]:
    """``data_parallel_size`` disjoint groups of ``tensor_parallel_size`` devices, in order."""
    if data_parallel_size < 1 or tensor_parallel_size < 1:
        raise ConfigError(f"data_parallel_size and tensor_parallel_size must be >= 1, got {data_parallel_size} and {tensor_parallel_size}")
    needed = data_parallel_size * tensor_parallel_size
    if len(devices) < needed:
        raise ConfigError(
            f"data_parallel_size={data_parallel_size} x tensor_parallel_size={tensor_parallel_size} needs {needed} GPUs, "
            f"but {len(devices)} are visible ({','.join(devices) or 'none'}; CUDA_VISIBLE_DEVICES selects them)"
        )
    return [devices[i * tensor_parallel_size : (i + 1) * tensor_parallel_size] for i in range(data_parallel_size)]


def shard_bounds(count: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` ranges covering ``range(count)``, sizes differing by at most one."""
    return [(count * i // shards, count * (i + 1) // shards) for i in range(shards)]


def serve(conn: Connection, engine_factory: EngineFactory, config: GeneratorConfig, devices: list[str]) -> None:
    """A worker's life: pin its GPUs, build one engine, answer ``generate`` requests until told to stop.

    Messages in: ``("generate", prompts, params, seeds)`` or ``("stop",)``. Messages out: ``("ready",)``
    once the engine is built, then ``("ok", completions)`` or ``("error", traceback)`` per request.
    The engine is shut down on the way out, whatever ends the loop (a stop, or the parent gone).
    """
    # Before anything touches CUDA: this process sees only its own group, as devices 0..tp-1.
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    try:
        engine = engine_factory(config)
    except BaseException:  # noqa: BLE001 - whatever stops the engine from starting goes back to the parent
        conn.send(("error", traceback.format_exc()))
        return
    try:
        conn.send(("ready",))
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the parent is gone
                return
            if message[0] == "stop":
                return
            _, prompts, params, seeds = message
            try:
                conn.send(("ok", engine.generate(prompts, params, seeds=seeds)))
            except Exception:  # noqa: BLE001 - reported to the parent, which names this worker's GPUs
                conn.send(("error", traceback.format_exc()))
    finally:
        close_generator(engine)


@dataclass
class _Worker:
    devices: list[str]
    process: Any
    conn: Connection

    @property
    def where(self) -> str:
        return f"GPU {','.join(self.devices)}" if len(self.devices) == 1 else f"GPUs {','.join(self.devices)}"


def _stop_workers(workers: list[_Worker], grace_s: float) -> None:
    """Ask every worker to stop, wait ``grace_s`` for them, then terminate (and kill) the rest."""
    for worker in workers:
        try:
            worker.conn.send(("stop",))
        except (OSError, ValueError):
            pass  # already gone
    deadline = time.monotonic() + grace_s
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
    for worker in workers:
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(5)
        worker.conn.close()


class DataParallelGenerator:
    """A :class:`Generator` over ``data_parallel_size`` engine processes, one per GPU group."""

    def __init__(self, config: GeneratorConfig, engine_factory: Optional[EngineFactory] = None, devices: Optional[list[str]] = None):
        if engine_factory is None:
            from stepdpo.generation.vllm import VLLMGenerator

            engine_factory = VLLMGenerator
        groups = gpu_groups(visible_gpus() if devices is None else devices, config.data_parallel_size, config.tensor_parallel_size)
        self.config = config
        self.name = f"vllm:{config.model}"
        self.timeout_s = config.worker_timeout_s
        replica = replace(config, data_parallel_size=1)
        context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        # Not daemonic: a vLLM engine starts processes of its own, which daemonic processes may not.
        for group in groups:
            parent_end, child_end = context.Pipe()
            process = context.Process(target=serve, args=(child_end, engine_factory, replica, group), name=f"vllm-dp-{','.join(group)}")
            process.start()
            child_end.close()
            self._workers.append(_Worker(group, process, parent_end))
        # Stops the workers at interpreter exit (before multiprocessing joins its children) if close() was never called.
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers, 30.0)
        deadline = time.monotonic() + self.timeout_s
        try:
            for worker in self._workers:
                self._receive(worker, deadline, "starting its engine")
        except WorkerError:
            self.close()
            raise
        log.info("vllm data parallel: %d engines on %s", len(self._workers), "; ".join(w.where for w in self._workers))

    def generate(self, prompts: list[str], params: SamplingParams, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """Each worker generates its contiguous shard; the answers come back in prompt order.

        Each prompt keeps its own seed (resolved here, before sharding), so a sample does not
        depend on how many workers there are or which shard its prompt falls in.
        """
        if not self._finalizer.alive:
            raise WorkerError("the data-parallel vLLM workers were shut down")
        if not prompts:
            return []
        resolved = prompt_seeds(prompts, params, seeds)
        shard_seeds = None if all(seed is None for seed in resolved) else resolved
        params = replace(params, seed=None)
        bounds = [(worker, start, end) for worker, (start, end) in zip(self._workers, shard_bounds(len(prompts), len(self._workers))) if end > start]
        for worker, start, end in bounds:
            worker.conn.send(("generate", prompts[start:end], params, None if shard_seeds is None else shard_seeds[start:end]))
        deadline = time.monotonic() + self.timeout_s
        merged: list[list[Completion]] = []
        try:
            for worker, start, end in bounds:
                shard = self._receive(worker, deadline, f"generating prompts {start}-{end - 1}")
                if len(shard) != end - start:
                    raise WorkerError(f"vLLM worker on {worker.where} returned {len(shard)} results for {end - start} prompts")
                merged.extend(shard)
        except WorkerError:
            self.close()
            raise
        return merged

    def _receive(self, worker: _Worker, deadline: float, doing: str) -> Any:
        """The worker's next answer; a WorkerError naming its GPUs when it fails, dies or times out."""
        remaining = deadline - time.monotonic()
        ready = wait([worker.conn, worker.process.sentinel], timeout=max(0.0, remaining))
        if worker.conn in ready:
            try:
                message = worker.conn.recv()
            except EOFError:
                message = None
            if message is not None and message[0] == "error":
                raise WorkerError(f"vLLM worker on {worker.where} failed while {doing}:\n{message[1]}")
            if message is not None:
                return message[1] if len(message) > 1 else None
        if worker.process.sentinel in ready or not worker.process.is_alive():
            worker.process.join(5)
            raise WorkerError(f"vLLM worker on {worker.where} exited with code {worker.process.exitcode} while {doing}")
        raise WorkerError(f"vLLM worker on {worker.where} did not answer within worker_timeout_s={self.timeout_s:g} while {doing}")

    def close(self) -> None:
        """Stop every worker (each shuts its engine down, freeing its GPUs); safe to call twice."""
        self._finalizer()

    def __enter__(self) -> "DataParallelGenerator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
