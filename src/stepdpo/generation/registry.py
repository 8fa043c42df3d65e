"""The backend registry: build the configured generator.

Kept apart from :mod:`stepdpo.generation.base` so that the interface never imports a
backend and a backend imports only the interface (no import cycle). Backends are
imported when built: vllm is an optional extra.
"""

from __future__ import annotations

from stepdpo.generation.base import Generator, GeneratorConfig


def build_generator(config: GeneratorConfig) -> Generator:
    """Instantiate the configured backend."""
    if config.backend == "hf":
        from stepdpo.generation.hf import HFGenerator

        return HFGenerator(config)
    if config.backend == "vllm":
        if config.data_parallel_size > 1:
            from stepdpo.generation.data_parallel import DataParallelGenerator

            return DataParallelGenerator(config)
        from stepdpo.generation.vllm import VLLMGenerator

        return VLLMGenerator(config)
    if config.backend == "openai":
        from stepdpo.generation.openai import OpenAIGenerator

        return OpenAIGenerator(config)
    raise ValueError(f"unknown generation backend {config.backend!r}")
