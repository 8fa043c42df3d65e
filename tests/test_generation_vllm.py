"""The vLLM backend: against a stand-in vllm module everywhere, and for real where vllm and a CUDA GPU are present."""

from __future__ import annotations

import importlib.util
import random
import sys
from dataclasses import replace
from types import ModuleType, SimpleNamespace

import pytest
import torch

from stepdpo.errors import ConfigError
from stepdpo.generation.base import Generator, GeneratorConfig, SamplingParams, build_generator
from stepdpo.seeding import derive_seed

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


class _FakeTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(ch) for ch in text]


class _FakeLLM:
    """vllm.LLM's generate contract: one SamplingParams for all prompts or one per prompt; a seeded request's
    children j = 0..n-1 draw with seed + j (as vLLM's parallel sampling does), whatever else is in the batch."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.requests: list[list] = []

    def get_tokenizer(self) -> _FakeTokenizer:
        return _FakeTokenizer()

    def generate(self, prompts, params, use_tqdm=True):
        per_request = params if isinstance(params, list) else [params] * len(prompts)
        assert len(per_request) == len(prompts)
        self.requests.append(per_request)
        out = []
        for prompt, p in zip(prompts, per_request):
            draws = [random.Random(p.seed + j) if p.seed is not None else random.Random() for j in range(p.n)]
            outputs = [SimpleNamespace(text=f"{len(prompt['prompt_token_ids'])}:{rng.random():.6f}", token_ids=[1, 2],
                                       finish_reason="length") for rng in draws]
            out.append(SimpleNamespace(outputs=outputs))
        return out


@pytest.fixture()
def fake_vllm(monkeypatch, tmp_path):
    """VLLMGenerator over a stand-in vllm module (no GPU needed): checks what the backend hands to vLLM."""
    module = ModuleType("vllm")
    module.__version__ = "fake"
    module.LLM = _FakeLLM
    module.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    (tmp_path / "config.json").write_text("{}")
    return build_generator(GeneratorConfig(backend="vllm", model=str(tmp_path)))


def test_vllm_gets_one_seed_per_request(fake_vllm):
    """Each request carries its prompt's seed, so identical prompts with their own seeds get different samples
    (one SamplingParams with one seed for the whole call made them identical)."""
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=16)
    out = fake_vllm.generate(["same", "same", "other"], params, seeds=[11, 12, 11])
    [requests] = fake_vllm.llm.requests
    assert [r.seed for r in requests] == [11, 12, 11] and all(r.n == 2 and r.temperature == 0.8 for r in requests)
    texts = [[c.text for c in cs] for cs in out]
    assert texts[0] != texts[1] and len(set(texts[0])) == 2
    # A prompt's samples follow its seed, not its place in the call.
    again = fake_vllm.generate(["other", "same"], params, seeds=[11, 12])
    assert [[c.text for c in cs] for cs in again] == [texts[2], texts[1]]
    # Seeded only through SamplingParams.seed, prompts are seeded by position: still one seed each.
    fake_vllm.generate(["same", "same"], replace(params, seed=3))
    assert [r.seed for r in fake_vllm.llm.requests[-1]] == [derive_seed(3, "call", "", 0), derive_seed(3, "call", "", 1)]
