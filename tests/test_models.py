"""Model resolution: the embedded alias, local paths, and hub ids that cannot be reached."""

from __future__ import annotations

import pytest

from stepdpo.errors import ModelLoadError
from stepdpo.models import EMBEDDED_ALIAS, cache_dir, load_model, load_tokenizer, resolve_model


@pytest.fixture()
def offline(monkeypatch):
    """Hub offline, whether or not huggingface_hub already read its environment."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_path_is_one_line(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as err:
        load_model(str(missing))
    assert str(missing) in _one_line(err)


def test_folder_without_config_is_one_line(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer(str(tmp_path))
    assert "no config.json" in _one_line(err)


def test_hub_id_offline_is_one_line(offline):
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer("some-org/some-model-that-is-not-cached")
    message = _one_line(err)
    assert "some-org/some-model-that-is-not-cached" in message and "offline" in message
    with pytest.raises(ModelLoadError) as err:
        load_model("some-org/some-model-that-is-not-cached")
    _one_line(err)


def test_local_tiny_model_loads(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    model = load_model(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2


@pytest.mark.slow
def test_embedded_alias_resolves_and_loads(offline):
    folder = resolve_model(EMBEDDED_ALIAS)
    assert folder == str(cache_dir() / "models" / EMBEDDED_ALIAS)
    tokenizer = load_tokenizer(EMBEDDED_ALIAS)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    model = load_model(EMBEDDED_ALIAS)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49_152
