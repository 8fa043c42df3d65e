"""One generation interface for every stage; backends live in their own modules, built by the registry."""

from stepdpo.generation.base import Completion, Generator, GeneratorConfig, SamplingParams
from stepdpo.generation.registry import build_generator

__all__ = ["Completion", "Generator", "GeneratorConfig", "SamplingParams", "build_generator"]
