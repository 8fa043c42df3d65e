"""The hf backend's own decoding loop gives what transformers' generate gives, with rows leaving the batch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from stepdpo.generation.base import GeneratorConfig, SamplingParams
from stepdpo.generation.decode import decode, new_cache, supports_own_loop
from stepdpo.generation.hf import HFGenerator

from generation_helpers import PROMPTS as BASE_PROMPTS, lively

PROMPTS = [*BASE_PROMPTS, "Seven words in this one, give or take.", "2 + 2 ="]


@pytest.fixture(scope="module")
def lively_model(tiny_model_dir):
    gen = lively(tiny_model_dir)
    return gen.model, gen.tokenizer


def _generator(lively_model, tiny_model_dir, loop: str, batch_size: int = 4) -> HFGenerator:
    model, tokenizer = lively_model
    config = GeneratorConfig(model=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=batch_size, decode_loop=loop)
    return HFGenerator.from_model(model, tokenizer, config)


def _ragged_eos(lively_model, tiny_model_dir, params: SamplingParams) -> list[int]:
    """EOS ids under which the rows ``params`` gives end at different steps (so rows leave the batch mid-way)."""
    gen = _generator(lively_model, tiny_model_dir, "generate")
    eos = list(gen.eos_ids)
    rows = gen.generate(PROMPTS, params)
    tokens = [gen.tokenizer(c.text, add_special_tokens=False)["input_ids"] for cs in rows for c in cs]
    # A token that one row makes early and the others later or never: some rows end early, others run to the limit.
    for row in tokens:
        for token in row[2:6]:
            ends = {next((i for i, t in enumerate(r) if t == token), None) for r in tokens}
            if len(ends) >= 3 and None in ends:
                return eos + [token]
    raise AssertionError("no token ends the rows at different steps")


def _with_eos(gen: HFGenerator, eos_ids: list[int]) -> HFGenerator:
    gen.eos_ids = sorted(eos_ids)
    return gen


@pytest.mark.parametrize("params", [
    SamplingParams(max_new_tokens=16),
    SamplingParams(n=3, temperature=1.0, top_p=0.9, top_k=40, max_new_tokens=16, seed=7),
])
def test_own_loop_equals_generate_when_rows_end_at_different_steps(lively_model, tiny_model_dir, params):
    eos = _ragged_eos(lively_model, tiny_model_dir, params)
    own = _with_eos(_generator(lively_model, tiny_model_dir, "own"), eos)
    reference = _with_eos(_generator(lively_model, tiny_model_dir, "generate"), eos)
    # generate reads the end tokens from its generation config; both runs use the same list.
    original = own.model.generation_config.eos_token_id
    own.model.generation_config.eos_token_id = eos
    try:
        assert own.own_loop and not reference.own_loop
        ours, theirs = own.generate(PROMPTS, params), reference.generate(PROMPTS, params)
    finally:
        own.model.generation_config.eos_token_id = original
    assert ours == theirs
    finishes = {c.finish_reason for cs in ours for c in cs}
    assert finishes == {"eos", "length"}, "the batch should hold rows that ended early and rows cut at the limit"


def test_own_loop_equals_generate_with_stop_strings(lively_model, tiny_model_dir):
    reference = _generator(lively_model, tiny_model_dir, "generate")
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=12, seed=3)
    first = reference.generate(PROMPTS, params)[1][0]
    stop = reference.tokenizer.decode(reference.tokenizer(first.text, add_special_tokens=False)["input_ids"][4:5]).strip()
    params = replace(params, stop=(stop,))
    ours = _generator(lively_model, tiny_model_dir, "own").generate(PROMPTS, params)
    assert ours == reference.generate(PROMPTS, params)
    assert "stop" in {c.finish_reason for cs in ours for c in cs}


def test_rows_leave_the_batch_and_keep_their_tokens(lively_model):
    """decode itself: a row that ends stops growing, and the rows still running are computed on fewer rows."""
    model, tokenizer = lively_model
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    width = max(map(len, encoded))
    input_ids = torch.tensor([[0] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    batch_sizes: list[int] = []

    def pick(logits, rows, position):
        batch_sizes.append(len(rows))
        tokens = logits.argmax(dim=-1)
        # Row i says its end token at step i: rows end at steps 0..6.
        return torch.tensor([999 if row == position else int(t) for row, t in zip(rows, tokens)])

    with torch.inference_mode():
        generated = decode(model, input_ids, mask, 10, pick, eos_ids=[999])
    assert [len(tokens) for tokens in generated] == [1, 2, 3, 4, 5, 6, 7]
    assert all(tokens[-1] == 999 and 999 not in tokens[:-1] for tokens in generated)
    assert batch_sizes[0] == 7 and batch_sizes[-1] < 7 and batch_sizes == sorted(batch_sizes, reverse=True)
    with torch.inference_mode():
        alone = decode(model, input_ids[3:4], mask[3:4], 10, lambda logits, rows, position: logits.argmax(-1), eos_ids=[999])
    assert generated[3][:-1] == alone[0][:3]


def test_growing_cache_holds_what_a_dynamic_cache_holds(lively_model):
    from transformers.cache_utils import DynamicCache

    model, _ = lively_model
    ours, theirs = new_cache(model), DynamicCache(config=model.config)
    torch.manual_seed(0)
    shape = (5, model.config.num_key_value_heads, 3, model.config.hidden_size // model.config.num_attention_heads)
    for step in range(80):  # past the first buffer's capacity, so it grows
        keys, values = torch.randn(shape), torch.randn(shape)
        for cache in (ours, theirs):
            out_keys, out_values = cache.layers[0].update(keys, values)
        assert torch.equal(out_keys, theirs.layers[0].keys) and torch.equal(out_values, theirs.layers[0].values)
        assert torch.equal(ours.layers[0].keys, theirs.layers[0].keys)
        if step == 40:
            for cache in (ours, theirs):
                cache.batch_select_indices(torch.tensor([0, 2, 3]))
            shape = (3, *shape[1:])
    assert ours.get_seq_length() == theirs.get_seq_length() == 240


def test_models_the_loop_cannot_run_use_generate(tiny_model_dir):
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2))
    assert not supports_own_loop(t5)
    gen = HFGenerator(GeneratorConfig(model=str(tiny_model_dir), dtype="float32", device="cpu"))
    assert supports_own_loop(gen.model) and gen.own_loop
    forced = HFGenerator.from_model(gen.model, gen.tokenizer, replace(gen.config, decode_loop="generate"))
    assert not forced.own_loop
