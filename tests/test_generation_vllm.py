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
from stepdpo.generation.base import Generator, GeneratorConfig, SamplingParams
from stepdpo.generation.registry import build_generator
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
        assert completion.finish_reason in ("eos", "length")
    params = SamplingParams(n=4, temperature=0.8, max_new_tokens=16, seed=7, stop=("\n",))
    first = generator.generate(prompts, params)
    again = generator.generate(prompts, params)
    assert [len(c) for c in first] == [4, 4, 4]
    assert [[c.text for c in cs] for cs in first] == [[c.text for c in cs] for cs in again]
    assert all("\n" not in c.text for cs in first for c in cs)
    # A row cut at the stop string says so and names it; the others ended by EOS or the token limit.
    assert all(c.finish_reason in ("eos", "length") or (c.finish_reason, c.stop_string) == ("stop", "\n") for cs in first for c in cs)


class _FakeVLLM:
    """A stand-in ``vllm`` module with the rules of the real one that the backend must respect (CPU tests)."""

    def __init__(self):
        self.engines: list = []

        fake = self

        class SamplingParams:
            def __init__(self, n=1, temperature=1.0, **kwargs):
                if temperature == 0 and n > 1:
                    raise ValueError(f"n must be 1 when using greedy sampling, got {n}.")
                self.n, self.temperature, self.kwargs = n, temperature, kwargs

        class LLM:
            def __init__(self, model, **kwargs):
                if kwargs.get("data_parallel_size", 1) > 1:
                    raise ValueError("data_parallel_size is not supported for single-process usage and may hang")
                self.kwargs, self.shut_down = kwargs, False
                fake.engines.append(self)

            def get_tokenizer(self):
                class Tokenizer:
                    def encode(self, text, add_special_tokens=False):
                        return [ord(c) for c in text]

                return Tokenizer()

            def generate(self, prompts, params, use_tqdm=True):
                assert not self.shut_down
                class Out:
                    def __init__(self, text, finish):
                        self.text, self.token_ids, self.finish_reason = text, [1] * len(text), finish

                class Request:
                    def __init__(self, outputs):
                        self.outputs = outputs

                per_request = params if isinstance(params, list) else [params] * len(prompts)
                # Greedy is deterministic; sampled sequences differ; a prompt of 'x' runs into the token limit.
                return [Request([Out(f"{len(p['prompt_token_ids'])}:{i if q.temperature else 'g'}", "length" if p["prompt_token_ids"] == [120] else "stop")
                                 for i in range(q.n)]) for p, q in zip(prompts, per_request)]

            def shutdown(self):
                self.shut_down = True

        self.SamplingParams, self.LLM, self.__version__ = SamplingParams, LLM, "fake"


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    import sys

    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    (tmp_path / "config.json").write_text("{}")
    return fake, str(tmp_path)


def test_greedy_with_n_above_one_decodes_once_and_repeats(fake_vllm):
    fake, model = fake_vllm
    generator = build_generator(GeneratorConfig(backend="vllm", model=model))
    greedy = generator.generate(["ab", "x"], SamplingParams(n=3, temperature=0.0))
    assert [[c.text for c in cs] for cs in greedy] == [["2:g"] * 3, ["1:g"] * 3]
    assert [c.finish_reason for c in greedy[1]] == ["length"] * 3
    assert greedy[0][0] is not greedy[0][1]  # separate objects: editing one leaves its twins alone
    sampled = generator.generate(["ab"], SamplingParams(n=3, temperature=0.8))
    assert [c.text for c in sampled[0]] == ["2:0", "2:1", "2:2"]


def test_close_shuts_the_engine_down(fake_vllm):
    from stepdpo.generation.base import close_generator

    fake, model = fake_vllm
    generator = build_generator(GeneratorConfig(backend="vllm", model=model))
    close_generator(generator)
    assert fake.engines[0].shut_down and generator.llm is None
    close_generator(generator)  # twice is harmless


@pytest.mark.gpu
def test_vllm_greedy_n_above_one_and_the_memory_comes_back_on_close():
    pytest.importorskip("vllm", reason="vllm is not installed (optional GPU extra)")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU and none is available")
    from stepdpo.generation.base import close_generator

    # Each engine takes 60% of the GPU: the second starts only if the first gave its memory back.
    for _ in range(2):
        engine = build_generator(GeneratorConfig(backend="vllm", model="smollm2-135m", gpu_memory_utilization=0.6))
        [completions] = engine.generate(["Name a color."], SamplingParams(n=3, temperature=0.0, max_new_tokens=8))
        assert len(completions) == 3 and len({c.text for c in completions}) == 1
        close_generator(engine)
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
def seeded_fake_vllm(monkeypatch, tmp_path):
    """VLLMGenerator over a stand-in vllm module (no GPU needed): checks what the backend hands to vLLM."""
    module = ModuleType("vllm")
    module.__version__ = "fake"
    module.LLM = _FakeLLM
    module.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    (tmp_path / "config.json").write_text("{}")
    return build_generator(GeneratorConfig(backend="vllm", model=str(tmp_path)))


def test_vllm_gets_one_seed_per_request(seeded_fake_vllm):
    fake_vllm = seeded_fake_vllm
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


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason", "expected"),
    [("stop", None, ("eos", None)), ("stop", "\nStep ", ("stop", "\nStep ")), ("stop", 2, ("eos", None)),
     ("length", None, ("length", None)), ("abort", None, ("error: abort", None)), (None, None, ("length", None))],
)
def test_vllm_output_finish_reasons(finish_reason, stop_reason, expected):
    """vLLM says 'stop' for EOS and for a stop string alike; its stop_reason tells them apart (None: EOS)."""
    from types import SimpleNamespace

    from stepdpo.generation.vllm import _completion

    output = SimpleNamespace(text="x", token_ids=[1, 2], finish_reason=finish_reason, stop_reason=stop_reason)
    completion = _completion(output)
    assert (completion.finish_reason, completion.stop_string) == expected and completion.num_tokens == 2
