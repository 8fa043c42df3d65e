import json
from dataclasses import replace

import pytest

from stepdpo.errors import ConfigError
from stepdpo.generation.base import GeneratorConfig
from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.records import Problem, RecordStore
from stepdpo.stages.evaluate import BOXED_INSTRUCTION, EvalConfig, EvalSample, data_specs, default_name, checkpoint_fingerprint, render_table, run

PLAIN = GeneratorConfig(prompt_style="plain")


def problems(count: int, prefix: str = "p", **metadata) -> list[Problem]:
    return [Problem(id=f"{prefix}{i}", question=f"What is {i} + {i}?", answer=str(2 * i), metadata=dict(metadata)) for i in range(count)]


def answer_script(right: set[int]):
    """Right (boxed gold) on questions whose number is in ``right``, else boxed gold + 1."""

    def script(prompt, params, index):
        number = int(prompt.split("What is ")[1].split(" ")[0])
        value = 2 * number if number in right else 2 * number + 1
        return f"Adding gives {value}.\n\\boxed{{{value}}}"

    return script


def config(tmp_path, **kwargs) -> EvalConfig:
    return EvalConfig(model="scripted", output_dir=str(tmp_path / "eval"), generator=PLAIN, **kwargs)


def test_greedy_eval_end_to_end(tmp_path):
    generator = ScriptedGenerator(answer_script({0, 1, 2}))
    results = run(config(tmp_path), {"toy:test": problems(4)}, generator)
    toy = results["sets"]["toy:test"]
    assert (toy["accuracy"], toy["correct"], toy["total"], toy["problems"]) == (0.75, 3, 4, 4)
    assert toy["ci_low"] < 0.75 < toy["ci_high"]
    assert toy["pass_at_k"] == {"1": 0.75} and toy["maj_at_k"] == {"1": 0.75}
    assert toy["final_answer_rate"] == 1.0 and toy["truncated_rate"] == 0.0
    assert toy["generated_tokens"] == 4 * 4 and toy["mean_response_tokens"] == 4.0
    assert toy["per_problem"] == {"p0": True, "p1": True, "p2": True, "p3": False}
    assert toy["new_samples"] == 4 and toy["breakdown"] == {}
    assert results["settings"]["prompt"] == "boxed" and results["settings"]["n"] == 1
    assert results["fingerprint"] == {"model": "scripted", "path": None, "sha256": None}
    assert generator.calls[0][1].temperature == 0.0 and generator.calls[0][1].n == 1
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["sets"]["toy:test"]["accuracy"] == 0.75
    rows = RecordStore(tmp_path / "eval" / "samples.jsonl", EvalSample).records()
    assert [r.id for r in rows] == [f"toy:test|p{i}#0" for i in range(4)]
    assert rows[3].predicted == "7" and rows[3].gold == "6" and rows[3].correct is False
    assert rows[0].prompt.startswith("Question: What is 0 + 0?") and BOXED_INSTRUCTION in rows[0].prompt
    assert "Step 1:" not in rows[0].prompt and rows[0].response.startswith("Adding")
    assert "toy:test" in render_table(results)


def test_rerun_generates_only_missing(tmp_path):
    run(config(tmp_path, limit=2), {"toy:test": problems(2)}, ScriptedGenerator(answer_script({0})))
    generator = ScriptedGenerator(answer_script({0}))
    results = run(config(tmp_path), {"toy:test": problems(5)}, generator)
    assert sum(count for count, _ in generator.calls) == 3
    assert results["sets"]["toy:test"]["new_samples"] == 3 and results["sets"]["toy:test"]["problems"] == 5

    def must_not_generate(prompt, params, index):
        raise AssertionError("a finished evaluation was regenerated")

    again = run(config(tmp_path), {"toy:test": problems(5)}, ScriptedGenerator(must_not_generate))
    assert again["sets"]["toy:test"]["new_samples"] == 0
    assert again["sets"]["toy:test"]["accuracy"] == results["sets"]["toy:test"]["accuracy"] == 0.2


def test_rerun_with_other_settings_is_refused(tmp_path):
    run(config(tmp_path), {"toy:test": problems(1)}, ScriptedGenerator(answer_script({0})))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        run(config(tmp_path, max_new_tokens=7), {"toy:test": problems(1)}, ScriptedGenerator(answer_script({0})))


class ComputedGenerator(ScriptedGenerator):
    """A scripted generator that says what computed it, as the hf and vllm backends do."""

    def __init__(self, script, compute_dtype="float32", device="cpu"):
        super().__init__(script)
        self.compute_dtype, self.device = compute_dtype, device


@pytest.mark.parametrize("name, changed", [
    ("last_number_fallback", lambda c: replace(c, last_number_fallback=False)),  # the boxed prompt grades with it by default
    ("backend", lambda c: replace(c, generator=replace(c.generator, backend="openai"))),
    ("dtype", lambda c: replace(c, generator=replace(c.generator, dtype="bfloat16"))),
])
def test_resume_with_a_setting_that_changes_grades_is_refused(tmp_path, name, changed):
    # A response whose only number is its last: the fallback grades it right, without it it has no answer.
    def script(prompt, params, index):
        return "Adding gives 2"

    first = run(config(tmp_path), {"toy:test": problems(2)[1:]}, ScriptedGenerator(script))
    with pytest.raises(ConfigError, match=rf"other {name} \({name}=.*, now") as refused:
        run(changed(config(tmp_path)), {"toy:test": problems(2)[1:]}, ScriptedGenerator(script))
    assert "another --name" in str(refused.value)
    # Nothing was regraded or rewritten under the new setting's name.
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["settings"][name] == first["settings"][name]


def test_resume_on_a_machine_that_resolves_dtype_differently_is_refused(tmp_path):
    problem = {"toy:test": problems(1)}
    first = run(config(tmp_path), problem, ComputedGenerator(answer_script({0}), compute_dtype="float32"))
    assert first["compute"]["compute_dtype"] == "float32" and first["compute"]["device"] == "cpu"
    assert {"cpu", "avx512_bf16", "amx_bf16"} <= set(first["compute"])
    assert run(config(tmp_path), problem, ComputedGenerator(answer_script({0}), compute_dtype="float32"))["sets"]["toy:test"]["new_samples"] == 0
    # Same config ('dtype auto'), but this machine autocasts to bfloat16.
    with pytest.raises(ConfigError, match="compute_dtype='float32', now 'bfloat16'"):
        run(config(tmp_path), problem, ComputedGenerator(answer_script({0}), compute_dtype="bfloat16"))


def test_resume_of_a_folder_without_the_new_settings_is_refused(tmp_path):
    run(config(tmp_path), {"toy:test": problems(1)}, ScriptedGenerator(answer_script({0})))
    settings = tmp_path / "eval" / "eval_settings.json"
    old = {k: v for k, v in json.loads(settings.read_text()).items() if k not in ("last_number_fallback", "backend", "dtype", "compute_dtype")}
    settings.write_text(json.dumps(old))  # as written before these settings were guarded
    with pytest.raises(ConfigError, match="last_number_fallback not recorded"):
        run(config(tmp_path), {"toy:test": problems(1)}, ScriptedGenerator(answer_script({0})))


@pytest.mark.parametrize("has_bf16, expected", [(True, "bfloat16"), (False, "float32")])
def test_hf_generator_records_what_dtype_auto_resolved_to(tiny_model_dir, monkeypatch, has_bf16, expected):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepdpo.generation import hf
    from stepdpo.stages.evaluate import generator_compute

    monkeypatch.setattr(hf, "cpu_supports_bf16", lambda: has_bf16)
    generator = hf.HFGenerator.from_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir),
                                          GeneratorConfig(model=str(tiny_model_dir), dtype="auto", device="cpu"))
    assert generator.compute_dtype == expected
    assert generator_compute(generator)["compute_dtype"] == expected and generator_compute(generator)["device"] == "cpu"


def test_sampling_pass_and_maj_at_k(tmp_path):
    # Problem 0: samples right, wrong, wrong, right -> pass@1 1/2, maj@4 tie broken towards the first (right).
    # Problem 1: wrong, wrong, right, right (the two wrong agree) -> maj@4: the wrong cluster came first.
    plans = {"0": [0, 5, 5, 0], "1": [9, 9, 2, 2]}

    def script(prompt, params, index):
        number = prompt.split("What is ")[1].split(" ")[0]
        return f"\\boxed{{{plans[number][index]}}}"

    results = run(config(tmp_path, n=4, temperature=0.8, ks=[1, 2, 4]), {"toy:test": problems(2)}, ScriptedGenerator(script))
    toy = results["sets"]["toy:test"]
    assert toy["accuracy"] == 0.5  # first samples: right, wrong
    assert toy["pass_at_k"]["1"] == pytest.approx(0.5)
    assert toy["pass_at_k"]["2"] == pytest.approx(1 - 1 / 6)  # both problems: 1 - C(2,2)/C(4,2)
    assert toy["pass_at_k"]["4"] == 1.0
    assert toy["maj_at_k"] == {"1": 0.5, "2": 0.5, "4": 0.5}


def test_math_breakdown_by_subject_and_level(tmp_path):
    algebra = problems(2, "a", type="Algebra", level="Level 1")
    geometry = [Problem(id="g0", question="What is 5 + 5?", answer="10", metadata={"type": "Geometry", "level": "Level 5"})]
    results = run(config(tmp_path), {"math:test": algebra + geometry}, ScriptedGenerator(answer_script({0, 5})))
    breakdown = results["sets"]["math:test"]["breakdown"]
    assert breakdown["type"]["Algebra"] == {"problems": 2, "correct": 1, "accuracy": 0.5}
    assert breakdown["type"]["Geometry"] == {"problems": 1, "correct": 1, "accuracy": 1.0}
    assert set(breakdown["level"]) == {"Level 1", "Level 5"}


def test_step_prompt_with_chat_template(tmp_path, tiny_model_dir):
    seen = []

    def script(prompt, params, index):
        seen.append(prompt)
        return " 1 + 1 = 2.\nThe answer is: \\boxed{2}"

    cfg = EvalConfig(model=str(tiny_model_dir), prompt="step", output_dir=str(tmp_path / "eval"))
    results = run(cfg, {"toy:test": problems(2)[1:]}, ScriptedGenerator(script))
    assert seen[0].endswith("Let's think step by step.\nStep 1:") and "<|im_start|>assistant" in seen[0]
    row = RecordStore(tmp_path / "eval" / "samples.jsonl", EvalSample).records()[0]
    assert row.response.startswith("Step 1: 1 + 1 = 2.") and row.correct
    assert results["fingerprint"]["path"] and len(results["fingerprint"]["sha256"]) == 64
    assert checkpoint_fingerprint(str(tiny_model_dir)) == results["fingerprint"]


def test_config_checks_and_helpers(tmp_path):
    with pytest.raises(ConfigError, match="temperature"):
        run(config(tmp_path, n=4), {"toy:test": problems(1)}, ScriptedGenerator(answer_script(set())))
    with pytest.raises(ConfigError, match="ks"):
        run(config(tmp_path, n=2, temperature=1.0, ks=[3]), {"toy:test": problems(1)}, ScriptedGenerator(answer_script(set())))
    assert data_specs(EvalConfig(data=["gsm8k:test,math500:test", "gsm8k:test", " svamp:test "])) == ["gsm8k:test", "math500:test", "svamp:test"]
    assert default_name("smollm2-135m") == "smollm2-135m"
    assert default_name("/runs/a/train/step-dpo") == "train-step-dpo"


def test_fingerprint_changes_with_weights(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(bytes(5 << 20))
    first = checkpoint_fingerprint(str(folder))["sha256"]
    data = bytearray(5 << 20)
    data[-1] = 1
    (folder / "model.safetensors").write_bytes(bytes(data))
    assert checkpoint_fingerprint(str(folder))["sha256"] != first


@pytest.mark.slow
def test_real_eval_of_embedded_model(tmp_path, monkeypatch):
    from stepdpo.stages.evaluate import command

    monkeypatch.chdir(tmp_path)
    cfg = EvalConfig(model="smollm2-135m", data=["multiarith:test"], limit=4, max_new_tokens=48, run_dir=str(tmp_path / "run"))
    assert command(cfg) == 0
    results = json.loads((tmp_path / "run" / "eval" / "smollm2-135m" / "results.json").read_text())
    multiarith = results["sets"]["multiarith:test"]
    assert multiarith["problems"] == 4 and multiarith["total"] == 4 and 0 < multiarith["generated_tokens"] <= 4 * 48
    assert results["fingerprint"]["sha256"] and results["generator"]
    assert (tmp_path / "run" / "funnel" / "eval-smollm2-135m.json").is_file()


def test_last_number_fallback_is_off_by_default_with_the_step_prompt_and_recorded(tmp_path):
    """A step-prompt response that ends without stating its answer is wrong unless the fallback is asked for;
    the setting in force is written to results.json. The boxed prompt (the paper's protocol) keeps it on."""

    def unstated(prompt, params, index):
        number = int(prompt.split("What is ")[1].split(" ")[0])
        return f" {number} + {number} = {2 * number}\nStep 2:"

    default = run(config(tmp_path / "a", prompt="step"), {"toy:test": problems(2)}, ScriptedGenerator(unstated))
    assert default["settings"]["last_number_fallback"] is False and default["sets"]["toy:test"]["accuracy"] == 0.0
    asked = run(config(tmp_path / "b", prompt="step", last_number_fallback=True), {"toy:test": problems(2)}, ScriptedGenerator(unstated))
    assert asked["settings"]["last_number_fallback"] is True and asked["sets"]["toy:test"]["accuracy"] == 1.0
    boxed = run(config(tmp_path / "c"), {"toy:test": problems(2)}, ScriptedGenerator(unstated))
    assert boxed["settings"]["last_number_fallback"] is True
