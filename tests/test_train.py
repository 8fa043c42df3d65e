"""Preference training on the tiny model: data preparation, reference cache, a run whose margin rises, resumption."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from stepdpo.errors import InputError
from stepdpo.records import StepPair
from stepdpo.steps import PromptFormat
from stepdpo.training.data import TokenizeOptions, read_pairs, step_ends_solution, tokenize_pair


def make_pairs(n: int) -> list[StepPair]:
    pairs = []
    for i in range(n):
        a, b = 3 + i, 10 + 2 * i
        prefix = f"Let's think step by step.\nStep 1: Tom has {a} apples and gets {b} more.\n"
        pairs.append(
            StepPair(
                id=f"p{i}",
                dataset="toy",
                prompt=f"Tom has {a} apples and gets {b} more. How many apples does he have?",
                initial_reason_steps=prefix,
                chosen=f"Step 2: So he has {a} + {b} = {a + b} apples, correct and careful.\n",
                rejected=f"Step 2: So he has {a} - {b} = {a - b} apples, wrong and sloppy.\n",
                full_chosen=f"Step 2: So he has {a} + {b} = {a + b} apples, correct and careful.\nThe answer is: \\boxed{{{a + b}}}",
                full_rejected=f"Step 2: So he has {a} - {b} = {a - b} apples, wrong and sloppy.\nThe answer is: \\boxed{{{a - b}}}",
                answer=str(a + b),
            )
        )
    return pairs


@pytest.fixture(scope="module")
def tokenizer(embedded_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_tokenizer_dir)


def test_context_and_continuation_tokenized_separately(tokenizer):
    fmt = PromptFormat(chat_template_owner=tokenizer)
    pair = make_pairs(1)[0]
    tokens = tokenize_pair(pair, tokenizer, fmt, TokenizeOptions(mode="step-dpo"))
    context = fmt.context(pair.prompt, pair.initial_reason_steps)
    assert tokens.prefix == tokenizer(context, add_special_tokens=False)["input_ids"]
    assert tokens.chosen == tokenizer(pair.chosen, add_special_tokens=False)["input_ids"]  # a middle step: no EOS
    dpo = tokenize_pair(pair, tokenizer, fmt, TokenizeOptions(mode="dpo"))
    assert dpo.chosen[-1] == tokenizer.eos_token_id and dpo.rejected[-1] == tokenizer.eos_token_id
    short = tokenize_pair(pair, tokenizer, fmt, TokenizeOptions(max_length=len(tokens.prefix) + 14, max_prompt_length=10_000))
    assert len(short.chosen) == 14 and short.prefix == tokens.prefix
    clipped = tokenize_pair(pair, tokenizer, fmt, TokenizeOptions(max_prompt_length=5))
    assert clipped.prefix == tokens.prefix[-5:]


def test_final_step_gets_eos(tokenizer):
    assert step_ends_solution("Step 3: 4 + 5 = 9.\nThe answer is: \\boxed{9}", "")
    assert step_ends_solution("Step 3: 4 + 5 = 9.", "Step 3: 4 + 5 = 9.\n")
    assert not step_ends_solution("Step 2: 4 + 5 = 9.\n", "Step 2: 4 + 5 = 9.\nStep 3: done")
    # The same rule SCDPO ends its continuations by: GSM8K's '#### 7' and any 'the answer is' end a solution;
    # an unclosed box does not state an answer.
    assert step_ends_solution("Step 3: 4 + 3 = 7\n#### 7", "Step 3: 4 + 3 = 7\n#### 7\nStep 4: more")
    assert step_ends_solution("Step 3: so the answer is 7.", "")
    assert not step_ends_solution("Step 3: \\boxed{7", "")
    pair = make_pairs(1)[0]
    pair.chosen = pair.full_chosen = "Step 2: So he has 3 + 10 = 13 apples.\n#### 13"
    tokens = tokenize_pair(pair, tokenizer, PromptFormat(chat_template_owner=tokenizer), TokenizeOptions(mode="step-dpo"))
    assert tokens.chosen[-1] == tokenizer.eos_token_id and tokens.rejected[-1] != tokenizer.eos_token_id


def test_weights_fingerprint_follows_the_weights():
    from stepdpo.training.reference import weights_fingerprint

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    first = weights_fingerprint(model)
    assert weights_fingerprint(model) == first
    with torch.no_grad():
        model.weight[0, 0] += 1.0
    assert weights_fingerprint(model) != first


def test_read_pairs_step_and_trl_rows(tmp_path):
    path = tmp_path / "pairs.jsonl"
    step = {k: v for k, v in make_pairs(1)[0].__dict__.items()}
    trl = {"prompt": "Q: 1+1?\nA: ", "chosen": "2", "rejected": "3"}
    path.write_text(json.dumps(step) + "\n" + json.dumps(trl) + "\n")
    first, second = read_pairs([path])
    assert first.kind == "step-dpo" and second.provenance == {"format": "trl"} and second.initial_reason_steps == ""
    path.write_text(json.dumps({"prompt": "Q", "chosen": 1, "rejected": "3"}) + "\n")
    with pytest.raises(InputError, match=r"pairs.jsonl:1: field 'chosen'"):
        read_pairs([path])


def flat(logps):
    return [value for pair in logps for value in pair]


def test_reference_cache_and_lora_reference_is_base(tiny_model_dir, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from stepdpo.training.data import tokenize_pairs
    from stepdpo.training.reference import cached_reference_logps, compute_reference_logps

    fmt = PromptFormat(chat_template_owner=tokenizer)
    kept, _ = tokenize_pairs(make_pairs(3), tokenizer, fmt, TokenizeOptions())
    tokens = [t for _, t in kept]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    expected = compute_reference_logps(base, tokens, tokenizer.pad_token_id, batch_size=2)
    first, cached_first = cached_reference_logps(base, tokens, tokenizer.pad_token_id, tmp_path)
    again, cached_again = cached_reference_logps(base, tokens, tokenizer.pad_token_id, tmp_path)
    assert (cached_first, cached_again) == (False, True)
    assert flat(again) == pytest.approx(flat(first)) and flat(first) == pytest.approx(flat(expected))

    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.fill_(0.05)  # adapters now change the output; the reference must not see them
    assert flat(compute_reference_logps(lora, tokens, tokenizer.pad_token_id)) == pytest.approx(flat(expected), abs=1e-4)
    # Same base weights: the fingerprint (adapters excluded) hits the same cache entry.
    assert cached_reference_logps(lora, tokens, tokenizer.pad_token_id, tmp_path)[1]


def _config(tmp_path, name, **overrides):
    from stepdpo.stages.train import TrainConfig

    from stepdpo.stages.train import preference_optim

    # Optimizer options (learning_rate, batch_size, max_steps, ...) go to the nested optim config.
    optim = dict(learning_rate=2e-3, batch_size=4, max_steps=12, warmup_ratio=0.1)
    optim.update({k: overrides.pop(k) for k in list(overrides) if k in optim or k in ("epochs", "grad_accum", "lr_scheduler", "weight_decay")})
    settings = dict(output_dir=str(tmp_path / name), eval_batch_size=4, logging_steps=1, save_steps=100, eval_split=0.25, eval_steps=4,
                    report_to=["none"])
    settings.update(overrides)
    return TrainConfig(optim=preference_optim(**optim), **settings)


def test_short_run_margin_rises(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from stepdpo.stages.train import run

    config = _config(tmp_path, "run", model=str(tiny_model_dir))
    result = run(config, make_pairs(16))
    train = [m for m in result.metrics if m["split"] == "train" and "rewards/margins" in m]
    evals = [m for m in result.metrics if m["split"] == "eval"]
    assert len(train) == 12 and len(evals) == 3 and result.pairs_eval == 4
    assert train[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)  # policy == reference before the first update
    assert train[-1]["rewards/margins"] > 0.5 and train[-1]["rewards/accuracies"] == 1.0
    assert evals[-1]["rewards/margins"] > evals[0]["rewards/margins"] > 0
    for key in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "learning_rate", "pairs", "pairs_per_second"):
        assert key in train[-1]
    assert sum(m["pairs"] for m in train) == 12 * 4  # 12 training pairs, 12 steps of 4 pairs: 4 epochs, each pair once per epoch
    assert result.compute["device"] == "cpu" and result.compute["compute_dtype"] == "float32"
    assert {"cpu", "avx512_bf16", "amx_bf16"} <= set(result.compute)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["compute"] == result.compute
    trained = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert trained.num_parameters() > 0 and (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "final" / "tokenizer_config.json").is_file()


class _Interrupt(Exception):
    pass


def test_resume_continues_the_same_curve(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    from stepdpo.stages.train import run

    class KillAfter(TrainerCallback):
        """Simulates a process killed mid-run: dies at step 7, after the checkpoint at step 4."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 7:
                raise _Interrupt

    pairs = make_pairs(16)
    straight = run(_config(tmp_path, "straight", model=str(tiny_model_dir), save_steps=4, eval_split=0.0), pairs)
    config = _config(tmp_path, "resumed", model=str(tiny_model_dir), save_steps=4, eval_split=0.0)
    with pytest.raises(_Interrupt):
        run(config, pairs, callbacks=[KillAfter()])
    resumed = run(config, pairs)
    assert resumed.reference_cached
    curve = lambda r: [(m["step"], m["loss"]) for m in r.metrics if m["split"] == "train" and "loss" in m]  # noqa: E731
    assert [s for s, _ in curve(resumed)] == list(range(1, 13))
    for (_, a), (_, b) in zip(curve(straight), curve(resumed)):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


# --- what training measures: split by problem, dropout off, pairs counted, mode defaults ----------

def problem_pairs(problems: int, per_problem: int) -> list[StepPair]:
    """``per_problem`` pairs per problem sharing its question and prefix, as the pairs of one error or of one SCDPO sample's branch points do."""
    pairs = []
    for p in range(problems):
        base = make_pairs(problems)[p]
        for j in range(per_problem):
            pairs.append(StepPair(**{**base.__dict__, "id": f"q{p}:{j}", "problem_id": f"q{p}",
                                     "chosen": f"{base.chosen}({j})", "rejected": f"{base.rejected}({j})"}))
    return pairs


def test_eval_split_holds_out_whole_problems():
    from stepdpo.stages.train import split_by_problem

    pairs = problem_pairs(10, 4)
    train_index, eval_index = split_by_problem(pairs, 0.2, seed=3)
    assert sorted(train_index + eval_index) == list(range(40))
    train_problems = {pairs[i].problem_id for i in train_index}
    eval_problems = {pairs[i].problem_id for i in eval_index}
    assert not train_problems & eval_problems  # no problem on both sides
    assert len(eval_problems) == 2 and len(eval_index) == 8  # 20 % of the problems, with all their pairs
    # Deterministic given the seed, whatever order the pairs come in; another seed holds out others.
    assert split_by_problem(pairs, 0.2, seed=3) == (train_index, eval_index)
    shuffled = pairs[::-1]
    assert {shuffled[i].problem_id for i in split_by_problem(shuffled, 0.2, seed=3)[1]} == eval_problems
    assert any({pairs[i].problem_id for i in split_by_problem(pairs, 0.2, seed=s)[1]} != eval_problems for s in range(4, 10))
    # One problem cannot be split; a fraction of 0 holds nothing out.
    assert split_by_problem(problem_pairs(1, 5), 0.5, seed=0) == (list(range(5)), [])
    assert split_by_problem(pairs, 0.0, seed=0) == (list(range(40)), [])


def test_pair_budgets_are_nested_and_independent_of_file_order(tiny_model_dir, tmp_path):
    from stepdpo.stages.train import pair_budget, run

    pairs = problem_pairs(10, 4)
    ids = {n: [p.id for p in pair_budget(pairs, n, seed=1)] for n in (5, 12, 30)}
    assert [len(v) for v in ids.values()] == [5, 12, 30]
    assert set(ids[5]) < set(ids[12]) < set(ids[30])
    assert ids[12] == [p.id for p in pairs if p.id in set(ids[12])]  # kept in file order
    assert {p.id for p in pair_budget(pairs[::-1], 12, seed=1)} == set(ids[12])
    assert any({p.id for p in pair_budget(pairs, 12, seed=s)} != set(ids[12]) for s in range(2, 8))
    assert pair_budget(pairs, 100, seed=1) == pairs and pair_budget(pairs, None, seed=1) == pairs
    result = run(_config(tmp_path, "budget", model=str(tiny_model_dir), max_steps=1, eval_split=0.0, max_pairs=6), pairs)
    assert result.pairs_train == 6


def test_train_run_holds_out_whole_problems(tiny_model_dir, tmp_path):
    from stepdpo.stages.train import run

    pairs = problem_pairs(4, 4)
    result = run(_config(tmp_path, "grouped", model=str(tiny_model_dir), max_steps=1, eval_split=0.3), pairs)
    assert (result.pairs_train, result.pairs_eval) == (12, 4)  # 1 of 4 problems (per pair: 5 of 16 pairs)


def _dropout_model_dir(tiny_model_dir, tmp_path):
    """The tiny Llama with attention dropout 0.5 (applied functionally in training mode, which TRL's helper misses)."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.attention_dropout = 0.5
    torch.manual_seed(0)
    target = tmp_path / "dropout-llama"
    LlamaForCausalLM(config).save_pretrained(target)
    for item in tiny_model_dir.iterdir():
        if "token" in item.name or item.name.endswith(".jinja"):
            shutil.copy(item, target / item.name)
    return target


def test_dropout_is_off_so_training_starts_at_log_2(tiny_model_dir, tmp_path):
    from stepdpo.stages.train import run

    model_dir = _dropout_model_dir(tiny_model_dir, tmp_path)
    result = run(_config(tmp_path, "dropout", model=str(model_dir), max_steps=2, eval_split=0.0), make_pairs(8))
    first = next(m for m in result.metrics if m["split"] == "train" and "loss" in m)
    # The reference was computed in eval mode: with dropout on in the policy the first margin would not be 0.
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.parametrize("kind", ["llama-attention", "gpt2-modules"])
def test_disable_dropout_covers_modules_and_functional_rates(kind):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from stepdpo.training.trainer import disable_dropout

    torch.manual_seed(0)
    if kind == "gpt2-modules":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, attention_dropout=0.5))
    ids = torch.arange(12).unsqueeze(0)
    expected = model.eval()(ids).logits
    model.train()
    assert not torch.allclose(model(ids).logits, expected)  # dropout really is on in training mode
    disable_dropout(model)
    assert torch.allclose(model(ids).logits, expected, atol=1e-6)


def test_mode_defaults_and_explicit_values():
    from dataclasses import replace

    from stepdpo.config import parse_cli
    from stepdpo.stages.pipeline import RunConfig
    from stepdpo.stages.train import TrainConfig, with_mode_defaults

    step = with_mode_defaults(TrainConfig())
    scdpo = with_mode_defaults(TrainConfig(mode="scdpo"))
    assert (step.beta, step.optim.learning_rate) == (0.4, 5e-6)
    assert (scdpo.beta, scdpo.optim.learning_rate) == (0.1, 1e-7)  # the SCDPO paper's
    # Resolved when the run starts: a config whose mode is set later (as `stepdpo run` does) gets that mode's.
    assert with_mode_defaults(replace(TrainConfig(), mode="scdpo")).beta == 0.1
    # A value given always wins, whether it equals another mode's default or not.
    assert with_mode_defaults(TrainConfig(mode="scdpo", beta=0.4)).beta == 0.4
    given = with_mode_defaults(parse_cli(TrainConfig, ["--mode", "scdpo", "--optim.learning-rate", "3e-6"], prog="t"))
    assert (given.beta, given.optim.learning_rate) == (0.1, 3e-6)
    # The CPU runs give every method one β and learning rate (README: "Settings the CPU runs override").
    run_train = RunConfig.preset_config("quick-smollm2").train
    assert (with_mode_defaults(replace(run_train, mode="scdpo")).beta, run_train.optim.learning_rate) == (0.4, 5e-6)


def test_the_quick_presets_single_step_changes_the_weights(tiny_model_dir, tmp_path):
    """The quick run trains on a handful of pairs: one optimizer step. With warmup that step had learning
    rate 0 and every 'trained' model equalled its start; the preset's schedule must move the weights."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from stepdpo.stages.pipeline import RunConfig
    from stepdpo.stages.train import run

    quick_optim = RunConfig.preset_config("quick-smollm2").train.optim
    config = _config(tmp_path, "quick", model=str(tiny_model_dir), eval_split=0.0)
    config = replace(config, optim=replace(quick_optim, learning_rate=2e-3, batch_size=4))
    result = run(config, make_pairs(4))
    assert [m["learning_rate"] for m in result.metrics if m["split"] == "train" and "learning_rate" in m][0] > 0
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    trained = load_file(str(Path(result.final_dir) / "model.safetensors"))
    assert any(not torch.equal(start[name], trained[name]) for name in start)
