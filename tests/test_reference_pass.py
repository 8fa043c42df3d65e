"""The reference pass at the start of training: each rank's share, gathered; keyed by the checkpoint files.

tests/test_ddp.py runs it over two gloo ranks (each computing half the pairs) and checks the loss curve
equals a single process's to 1e-4, which it cannot unless every pair got its own reference values back.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest

from stepdpo.errors import ConfigError
from stepdpo.training.packing import PairTokens
from stepdpo.training.reference_pass import rank_share
from test_train import _config, make_pairs


@pytest.mark.parametrize("count,world,batch", [(10, 8, 2), (3, 4, 1), (17, 2, 4), (1, 2, 8), (16, 1, 8)])
def test_every_rank_runs_the_same_number_of_batches_and_every_pair_is_someones(count, world, batch):
    pairs = [PairTokens(prefix=[1] * (i % 5 + 1), chosen=[2] * (i % 3 + 1), rejected=[3]) for i in range(count)]
    shares = [rank_share(pairs, rank, world, batch) for rank in range(world)]
    assert sorted(i for mine, _ in shares for i in mine) == list(range(count))
    lengths = {len(padded) for _, padded in shares}
    # One padded length for all ranks, a whole number of batches: the collectives of a sharded forward line up.
    assert len(lengths) == 1 and lengths.pop() == batch * math.ceil(math.ceil(count / world) / batch)
    assert all(padded[: len(mine)] == mine for mine, padded in shares)


def test_reference_comes_from_the_starting_weights_and_is_keyed_by_the_checkpoint_files(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepdpo.stages.train import run
    from stepdpo.steps import PromptFormat
    from stepdpo.training.data import TokenizeOptions, tokenize_pairs
    from stepdpo.training.reference import compute_reference_logps

    pairs = make_pairs(6)
    first = run(_config(tmp_path, "first", model=str(tiny_model_dir), max_steps=2, eval_split=0.0), pairs)
    assert not first.reference_cached
    [cache] = (tmp_path / "first" / "reference").glob("*.json")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    kept, _ = tokenize_pairs(pairs, tokenizer, PromptFormat(style="chat", chat_template_owner=tokenizer), TokenizeOptions(mode="step-dpo"))
    expected = compute_reference_logps(AutoModelForCausalLM.from_pretrained(tiny_model_dir), [t for _, t in kept], tokenizer.pad_token_id)
    flat = lambda values: [x for pair in values for x in pair]  # noqa: E731
    assert flat(json.loads(cache.read_text())["logps"]) == pytest.approx(flat(expected), abs=1e-4)

    # A copy of the checkpoint is the same model: the same cache key.
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    shutil.copytree(tmp_path / "first" / "reference", tmp_path / "second" / "reference")
    assert run(_config(tmp_path, "second", model=str(copy), max_steps=1, eval_split=0.0), pairs).reference_cached


def test_resuming_without_the_reference_cache_is_refused(tiny_model_dir, tmp_path):
    from stepdpo.stages.train import run

    config = _config(tmp_path, "run", model=str(tiny_model_dir), max_steps=2, save_steps=1, eval_split=0.0)
    run(config, make_pairs(4))
    shutil.rmtree(tmp_path / "run" / "reference")
    with pytest.raises(ConfigError, match="reference log-probs .* are gone"):
        run(config, make_pairs(4))
