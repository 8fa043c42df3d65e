"""The shared-prefix packed forward equals two separate forward passes."""

from __future__ import annotations

import pytest
import torch

from stepdpo.training.packing import CHOSEN, PREFIX, REJECTED, PairTokens, naive_logps, pack_pairs, packed_attention_mask, packed_logps

# Unequal prefix and continuation lengths, so rows are right-padded differently.
PAIRS = [
    PairTokens(prefix=[5, 17, 33, 90, 7, 8], chosen=[44, 45, 46], rejected=[60, 61]),
    PairTokens(prefix=[9, 10], chosen=[300], rejected=[301, 302, 303, 304, 305]),
    PairTokens(prefix=[11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], chosen=[1000, 1001, 1002, 1003], rejected=[2000]),
]


def test_layout_positions_and_prediction_rows():
    batch = pack_pairs(PAIRS[:1], pad_token_id=0)
    assert batch["segment_ids"][0].tolist() == [PREFIX] * 6 + [CHOSEN] * 3 + [REJECTED] * 2
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 6, 7]
    # Predicting positions: chosen from 5,6,7; rejected r0 from 5 (last prefix), r1 from 9.
    assert torch.nonzero(batch["predict_mask"][0]).flatten().tolist() == [5, 6, 7, 9]
    kept = [5, 6, 7, 9]
    assert [kept[r] for r in batch["score_rows"].tolist()] == [5, 6, 7, 5, 9]


def test_mask_bars_rejected_from_chosen():
    batch = pack_pairs(PAIRS[:1], pad_token_id=0)
    allowed = packed_attention_mask(batch["segment_ids"], torch.float32)[0, 0] == 0
    assert allowed[9, :6].all() and not allowed[9, 6:9].any() and allowed[9, 9]
    assert allowed[8, :9].all() and not allowed[8, 9:].any()
    assert not allowed[3, 4:].any()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_naive(tiny_model_dir, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn).eval()
    with torch.no_grad():
        packed = packed_logps(model, pack_pairs(PAIRS, pad_token_id=model.config.pad_token_id))
        naive = naive_logps(model, PAIRS)
    torch.testing.assert_close(packed.chosen, naive.chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed.rejected, naive.rejected, atol=1e-5, rtol=0)
    assert packed.chosen_counts.tolist() == [3, 1, 4] and packed.rejected_counts.tolist() == [2, 5, 1]


def test_packed_gradients_equal_naive(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    grads = []
    for fn in (lambda m: packed_logps(m, pack_pairs(PAIRS, 0)), lambda m: naive_logps(m, PAIRS)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        out = fn(model)
        (out.chosen - 0.5 * out.rejected).sum().backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
