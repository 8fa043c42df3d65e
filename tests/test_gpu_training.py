"""Training on a CUDA GPU (skipped without one): the reference on the accelerator in bf16, a verified save that reloads.

bench/gpu_check.sh runs these with ``-m gpu``; its 2-process part (FSDP over NCCL, save and reload)
needs two GPUs and lives in the script.
"""

from __future__ import annotations

import json

import pytest
import torch

from test_train import _config, make_pairs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_training_on_the_gpu_uses_a_gpu_reference_and_saves_a_verified_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepdpo.stages.train import run
    from stepdpo.steps import PromptFormat
    from stepdpo.training.data import TokenizeOptions, tokenize_pairs
    from stepdpo.training.reference import compute_reference_logps
    from stepdpo.training.saving import saved_weight_problems

    pairs = make_pairs(8)
    result = run(_config(tmp_path, "run", model=str(tiny_model_dir), max_steps=3, eval_split=0.0, bf16=True), pairs)
    [cache] = (tmp_path / "run" / "reference").glob("*.json")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    kept, _ = tokenize_pairs(pairs, tokenizer, PromptFormat(style="chat", chat_template_owner=tokenizer), TokenizeOptions(mode="step-dpo"))
    on_gpu = compute_reference_logps(AutoModelForCausalLM.from_pretrained(tiny_model_dir).cuda(), [t for _, t in kept],
                                     tokenizer.pad_token_id, bf16=True)
    cached = json.loads(cache.read_text())["logps"]
    assert [x for pair in cached for x in pair] == pytest.approx([x for pair in on_gpu for x in pair], abs=0.05)
    assert saved_weight_problems(result.final_dir) == []
    reloaded = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert not torch.equal(reloaded.model.layers[0].mlp.up_proj.weight,
                           AutoModelForCausalLM.from_pretrained(tiny_model_dir).model.layers[0].mlp.up_proj.weight)
