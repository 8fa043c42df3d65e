"""The transformers backend on a tiny random Llama (fast) and on the embedded model (slow)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from stepdpo.errors import ConfigError
from stepdpo.generation.base import Generator, GeneratorConfig, SamplingParams
from stepdpo.generation.registry import build_generator
from stepdpo.generation.hf import HFGenerator, NumpySortTopP

from generation_helpers import PROMPTS, lively


@pytest.fixture(scope="module")
def generator(tiny_model_dir) -> HFGenerator:
    return lively(tiny_model_dir)


def _own_greedy(gen: HFGenerator, prompt: str, max_new_tokens: int) -> list[int]:
    """The model's own greedy continuation of one unpadded prompt."""
    ids = gen.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = gen.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=gen.eos_ids,
            pad_token_id=gen.pad_id,
        )
    return out[0, ids.shape[1] :].tolist()


def test_is_a_generator_and_built_by_config(tiny_model_dir):
    gen = build_generator(GeneratorConfig(backend="hf", model=str(tiny_model_dir), dtype="float32"))
    assert isinstance(gen, Generator)
    assert gen.name == f"hf:{tiny_model_dir}"


def test_greedy_batched_equals_own_greedy_in_prompt_order(generator):
    """Left padding must not change greedy output, and results come back in prompt order."""
    params = SamplingParams(max_new_tokens=12)
    batched = generator.generate(PROMPTS, params)
    assert len({c[0].text for c in batched}) == len(PROMPTS)
    assert len(batched) == len(PROMPTS)
    for prompt, completions in zip(PROMPTS, batched):
        assert len(completions) == 1
        expected = _own_greedy(generator, prompt, 12)
        assert completions[0].text == generator.tokenizer.decode(expected, skip_special_tokens=True)
        single = generator.generate([prompt], params)[0][0]
        assert single == completions[0]


def test_length_finish_counts_every_token(generator):
    out = generator.generate(PROMPTS[:2], SamplingParams(max_new_tokens=7))
    for [completion] in out:
        assert completion.finish_reason == "length"
        assert completion.num_tokens == 7


def test_n_samples_and_seed_repeatability(generator):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=123)
    first = generator.generate(PROMPTS, params)
    assert [len(c) for c in first] == [4] * len(PROMPTS)
    again = generator.generate(PROMPTS, params)
    assert [[c.text for c in cs] for cs in first] == [[c.text for c in cs] for cs in again]
    # Samples of a prompt differ (a random model spreads its probability over the vocabulary).
    assert all(len({c.text for c in cs}) > 1 for cs in first)
    other = generator.generate(PROMPTS, replace(params, seed=124))
    assert [[c.text for c in cs] for cs in first] != [[c.text for c in cs] for cs in other]


def test_seed_leaves_global_rng_alone(generator):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    generator.generate(PROMPTS[:1], SamplingParams(temperature=1.0, max_new_tokens=3, seed=9))
    assert torch.equal(torch.rand(3), expected)


def test_greedy_n_repeats_one_decode(generator):
    out = generator.generate(PROMPTS[:2], SamplingParams(n=3, max_new_tokens=5))
    for completions in out:
        assert len(completions) == 3
        assert len({c.text for c in completions}) == 1
        assert completions[0] is not completions[1]


def test_stop_string_truncates_and_stops_early(generator):
    prompt = PROMPTS[1]
    tokens = _own_greedy(generator, prompt, 20)
    full = generator.tokenizer.decode(tokens, skip_special_tokens=True)
    # A stop string taken from the middle of what greedy decoding produces.
    piece = generator.tokenizer.decode(tokens[6:7])
    assert piece.strip(), "the chosen token should decode to visible text"
    stop = piece.strip()
    expected = full[: full.find(stop)]
    [[completion]] = generator.generate([prompt], SamplingParams(max_new_tokens=20, stop=(stop,)))
    assert completion.finish_reason == "stop" and completion.stop_string == stop
    assert completion.text == expected
    assert completion.num_tokens <= 7


def test_stop_in_batch_with_unstopped_rows(generator):
    """A row that hits its stop string waits in the batch while the others continue."""
    prompt = PROMPTS[1]
    tokens = _own_greedy(generator, prompt, 10)
    stop = generator.tokenizer.decode(tokens[4:5]).strip()
    params = SamplingParams(max_new_tokens=10, stop=(stop,))
    together = generator.generate(PROMPTS, params)
    alone = [generator.generate([p], params)[0][0] for p in PROMPTS]
    assert [c[0] for c in together] == alone
    assert together[1][0].finish_reason == "stop"


def test_eos_ends_a_completion_and_is_counted(tiny_model_dir):
    """Make a later greedy token an end-of-sequence token: the completion stops before it."""
    probe = lively(tiny_model_dir)
    tokens = _own_greedy(probe, PROMPTS[0], 10)
    at = next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])
    probe.model.generation_config.eos_token_id = [probe.tokenizer.eos_token_id, tokens[at]]
    gen = HFGenerator.from_model(probe.model, probe.tokenizer, GeneratorConfig(model=str(tiny_model_dir), dtype="float32"))
    [[completion]] = gen.generate([PROMPTS[0]], SamplingParams(max_new_tokens=10))
    assert completion.finish_reason == "eos" and completion.stop_string is None  # not a stop string
    assert completion.num_tokens == at + 1
    assert completion.text == gen.tokenizer.decode(tokens[:at], skip_special_tokens=True)


def test_empty_prompt_list_and_bad_params(generator):
    assert generator.generate([], SamplingParams()) == []
    with pytest.raises(ConfigError):
        generator.generate(["a"], SamplingParams(n=0))
    with pytest.raises(ConfigError):
        generator.generate(["a"], SamplingParams(top_p=0.0))


@pytest.mark.slow
def test_embedded_model_answers_easy_prompts():
    from stepdpo.generation.base import prompt_format

    config = GeneratorConfig(model="smollm2-135m", device="cpu", batch_size=8)
    gen = HFGenerator(config)
    tokenizer = gen.tokenizer
    questions = ["What is the capital of France?", "What color is the sky on a clear day?"]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    out = gen.generate(prompts, SamplingParams(max_new_tokens=24))
    assert "Paris" in out[0][0].text
    assert "blue" in out[1][0].text.lower()
    for [completion] in out:
        assert 0 < completion.num_tokens <= 24
    assert prompt_format(config) is not None


def _texts(out) -> list[list[str]]:
    return [[c.text for c in cs] for cs in out]


def test_identical_prompts_get_different_samples(generator):
    """One seed per prompt: two identical prompts asked for one sample each do not get the same sample."""
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    [[a], [b]] = generator.generate([PROMPTS[0], PROMPTS[0]], params, seeds=[1, 2])
    assert a.text != b.text
    # The same holds for a call seeded only through SamplingParams.seed (prompts are then seeded by position).
    [[c], [d]] = generator.generate([PROMPTS[0], PROMPTS[0]], replace(params, seed=3))
    assert c.text != d.text


def test_samples_do_not_depend_on_batch_or_position(tiny_model_dir):
    """A prompt's samples depend on its seed alone: not on batch size, the other prompts of the call, or its place."""
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, top_k=40, max_new_tokens=8)
    seeds = [101, 202, 303, 404, 505]
    big = lively(tiny_model_dir, batch_size=4).generate(PROMPTS, params, seeds=seeds)
    small = lively(tiny_model_dir, batch_size=1)
    alone = [small.generate([p], params, seeds=[s])[0] for p, s in zip(PROMPTS, seeds)]
    backwards = small.generate(PROMPTS[::-1], params, seeds=seeds[::-1])[::-1]
    assert _texts(big) == _texts(alone) == _texts(backwards)
    assert all(len(set(texts)) > 1 for texts in _texts(big))  # the n samples of a prompt differ
    assert _texts(small.generate(PROMPTS, params, seeds=[s + 1 for s in seeds])) != _texts(big)


def test_sampling_applies_top_k_before_drawing(generator):
    """top_k = 1 leaves one token to draw from: sampling then gives the greedy continuation, at any temperature."""
    greedy = generator.generate(PROMPTS, SamplingParams(max_new_tokens=8))
    sampled = generator.generate(PROMPTS, SamplingParams(n=2, temperature=5.0, top_k=1, max_new_tokens=8), seeds=[1, 2, 3, 4, 5])
    assert _texts(sampled) == [[cs[0].text] * 2 for cs in greedy]


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.95, 0.999])
def test_numpy_sorted_top_p_cuts_where_transformers_cuts(top_p):
    """The CPU sampler's top-p keeps exactly the tokens transformers' TopPLogitsWarper keeps."""
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    rng = torch.Generator().manual_seed(int(top_p * 1000))
    for rows, vocab, spread in ((1, 7, 1.0), (8, 1024, 3.0), (5, 49152, 8.0)):
        scores = torch.randn(rows, vocab, generator=rng) * spread
        for given in (scores, TopKLogitsWarper(top_k=min(40, vocab - 1))(None, scores)):  # -inf ties after top-k
            expected = TopPLogitsWarper(top_p=top_p)(None, given.clone())
            assert torch.equal(NumpySortTopP(top_p)(None, given.clone()), expected)
    peaked = torch.tensor([[10.0, 0.0, 0.0, -1.0]])  # one token holds nearly all the mass: at least it is kept
    assert torch.isfinite(NumpySortTopP(0.5)(None, peaked)).tolist() == [[True, False, False, False]]
