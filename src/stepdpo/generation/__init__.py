"""One generation interface for every stage; backends live in their own modules."""

from stepdpo.generation.base import Completion, Generator, GeneratorConfig, SamplingParams, build_generator

__all__ = ["Completion", "Generator", "GeneratorConfig", "SamplingParams", "build_generator"]
