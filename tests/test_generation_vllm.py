"""The vLLM backend: runs only where vllm and a CUDA GPU are present."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from stepdpo.errors import ConfigError
from stepdpo.generation.base import Generator, GeneratorConfig, SamplingParams, build_generator

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAVE_VLLM, reason="checks the message shown when vllm is not installed")
def test_missing_vllm_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="pip install vllm"):
        build_generator(GeneratorConfig(backend="vllm"))


@pytest.fixture(scope="module")
def generator():
    pytest.importorskip("vllm", reason="vllm is not installed (optional GPU extra)")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU and none is available")
    return build_generator(GeneratorConfig(backend="vllm", model="smollm2-135m", gpu_memory_utilization=0.3))


@pytest.mark.gpu
def test_vllm_generates_in_order_with_counts(generator):
    assert isinstance(generator, Generator)
    tok = generator.tokenizer
    questions = ["What is the capital of France?", "Name a color.", "What is 2 + 3?"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) for q in questions]
    greedy = generator.generate(prompts, SamplingParams(max_new_tokens=24))
    assert [len(c) for c in greedy] == [1, 1, 1]
    assert "Paris" in greedy[0][0].text
    for [completion] in greedy:
        assert 0 < completion.num_tokens <= 24
        assert completion.finish_reason in ("stop", "length")
    params = SamplingParams(n=4, temperature=0.8, max_new_tokens=16, seed=7, stop=("\n",))
    first = generator.generate(prompts, params)
    again = generator.generate(prompts, params)
    assert [len(c) for c in first] == [4, 4, 4]
    assert [[c.text for c in cs] for cs in first] == [[c.text for c in cs] for cs in again]
    assert all("\n" not in c.text for cs in first for c in cs)
