"""The final save under any launch, and the check that a saved folder holds a whole model.

What the CPU can show: a save shaped like the ZeRO-3 failure (every tensor ``[0]`` beside a good
config.json) or a half-written one is refused, by ``train``/``sft`` and by ``stepdpo run``'s
completion check; the save goes through ``Trainer.save_model`` (which gathers ZeRO-3 and FSDP
weights) on every rank, with FSDP switched to a full state dict first; a sharded LoRA run merges
from the base checkpoint and the saved adapter; ``TrainingArguments`` exists before the model is
loaded (ZeRO-3's ``zero.Init``). What only GPUs can show: the gathering itself (accelerate 1.15
runs FSDP only on accelerator devices, and DeepSpeed is not installed here): bench/gpu_check.sh.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from stepdpo.training.options import OptimizerConfig
from stepdpo.training.saving import IncompleteModelError, save_trained_model, saved_weight_problems, verify_saved_model
from test_train import _config, make_pairs


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _zero3_like(folder) -> None:
    """What rank 0's save_pretrained writes under ZeRO-3: every tensor a partition placeholder of shape [0]."""
    weights = load_file(folder / "model.safetensors")
    save_file({name: torch.empty(0) for name in weights}, folder / "model.safetensors", metadata={"format": "pt"})


def test_verification_refuses_empty_missing_and_misshapen_weights(tiny_model_dir, tmp_path):
    from stepdpo.stages import sft, train

    good = _copy(tiny_model_dir, tmp_path / "good")
    assert saved_weight_problems(good) == [] and train.is_complete(good) and sft.is_complete(good)
    verify_saved_model(good)

    empty = _copy(tiny_model_dir, tmp_path / "empty")
    _zero3_like(empty)
    assert any("empty (shape [0]" in p for p in saved_weight_problems(empty))
    assert not train.is_complete(empty) and not sft.is_complete(empty)
    with pytest.raises(IncompleteModelError, match="incomplete"):
        verify_saved_model(empty)

    missing = _copy(tiny_model_dir, tmp_path / "missing")
    weights = load_file(missing / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    weights["model.norm.weight"] = weights["model.norm.weight"][:10]
    save_file(weights, missing / "model.safetensors", metadata={"format": "pt"})
    assert sorted(saved_weight_problems(missing)) == ["model.layers.1.mlp.up_proj.weight: missing",
                                                      "model.norm.weight: shape [10], config implies [64]"]

    torn = _copy(tiny_model_dir, tmp_path / "torn")
    (torn / "model.safetensors").write_bytes((torn / "model.safetensors").read_bytes()[:1000])
    assert "unreadable" in saved_weight_problems(torn)[0] and not train.is_complete(torn)


def test_a_broken_final_save_fails_the_training_run(tiny_model_dir, tmp_path, monkeypatch):
    """Trainer.save_model is what writes the final weights; when what it wrote is empty, train fails and writes no result."""
    from stepdpo.stages.train import run
    from stepdpo.training.trainer import PreferenceTrainer

    real_save = PreferenceTrainer.save_model
    saved_to = []

    def zero3_without_gather(self, output_dir=None, _internal_call=False):
        real_save(self, output_dir, _internal_call)
        if not _internal_call:  # the final save, not a checkpoint
            saved_to.append(output_dir)
            _zero3_like(tmp_path / "run" / "final")

    monkeypatch.setattr(PreferenceTrainer, "save_model", zero3_without_gather)
    with pytest.raises(IncompleteModelError, match="empty"):
        run(_config(tmp_path, "run", model=str(tiny_model_dir), max_steps=2), make_pairs(8))
    assert saved_to == [str(tmp_path / "run" / "final")]
    assert not (tmp_path / "run" / "result.json").exists()


class _FakePlugin:
    def __init__(self, events):
        self.events = events

    def set_state_dict_type(self, kind):
        self.events.append(f"state dict {kind}")


def _fake_trainer(model, events, *, fsdp=False, deepspeed=False):
    """The parts of a Trainer the save uses, recording the order of what it is asked to do."""
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=_FakePlugin(events)), unwrap_model=lambda m: m,
                                  wait_for_everyone=lambda: events.append("barrier"))

    def save_model(path):
        events.append("save_model")
        model.save_pretrained(path)

    return SimpleNamespace(model=model, accelerator=accelerator, is_fsdp_enabled=fsdp, is_deepspeed_enabled=deepspeed,
                           save_model=save_model, is_world_process_zero=lambda: True)


def test_fsdp_final_save_switches_to_a_full_state_dict_first(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    events: list[str] = []
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    save_trained_model(_fake_trainer(model, events, fsdp=True), tmp_path / "final", AutoTokenizer.from_pretrained(tiny_model_dir))
    assert events == ["state dict FULL_STATE_DICT", "save_model", "barrier"]
    assert saved_weight_problems(tmp_path / "final") == []


def test_sharded_lora_merges_from_the_base_checkpoint_and_the_saved_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained adapter: the merge changes the weights
    events: list[str] = []
    save_trained_model(_fake_trainer(lora, events, deepspeed=True), tmp_path / "final", AutoTokenizer.from_pretrained(tiny_model_dir),
                       base_model=str(tiny_model_dir))
    assert events == ["save_model", "barrier"]
    assert (tmp_path / "final" / "adapter" / "adapter_config.json").is_file()
    expected = lora.merge_and_unload().state_dict()
    merged = load_file(tmp_path / "final" / "model.safetensors")
    assert merged.keys() <= expected.keys() and "model.layers.0.self_attn.q_proj.weight" in merged
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=1e-5)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], load_file(tiny_model_dir / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"])


def test_training_arguments_exist_before_the_model_is_loaded(tiny_model_dir, tmp_path, monkeypatch):
    """Under ZeRO-3, from_pretrained partitions weights as it loads (zero.Init) only once TrainingArguments exists."""
    import transformers

    from stepdpo.stages import sft, train

    events: list[str] = []
    real_args, real_load = transformers.TrainingArguments, train._load_model

    def args(*a, **k):
        events.append("TrainingArguments")
        return real_args(*a, **k)

    def load(config):
        events.append("load model")
        return real_load(config)

    monkeypatch.setattr(transformers, "TrainingArguments", args)
    monkeypatch.setattr(train, "_load_model", load)
    train.run(_config(tmp_path, "run", model=str(tiny_model_dir), max_steps=1, eval_split=0.0), make_pairs(4))
    assert events == ["TrainingArguments", "load model"]

    from stepdpo import models

    events.clear()
    real_models_load = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: events.append("load model") or real_models_load(*a, **k))
    from stepdpo.problems import load_problems

    sft.run(sft.SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "sft"), optim=OptimizerConfig(max_steps=1, batch_size=2), device="cpu"),
            load_problems("synthetic:train?n=4&seed=0"))
    assert events == ["TrainingArguments", "load model"]
    assert json.loads((tmp_path / "sft" / "summary.json").read_text())["optimizer_steps"] == 1
