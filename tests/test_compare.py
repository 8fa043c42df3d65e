import json

import pytest

from stepdpo.config import parse_cli
from stepdpo.errors import ConfigError, InputError
from stepdpo.stages.compare import CompareConfig, command, verdict


def write_eval(folder, sets, **settings):
    folder.mkdir(parents=True)
    results = {
        "model": folder.name,
        "fingerprint": {"model": folder.name, "path": None, "sha256": None},
        "settings": {"prompt": "boxed", "n": 1, "temperature": 0.0, "max_new_tokens": 512} | settings,
        "sets": {name: {"per_problem": per_problem} for name, per_problem in sets.items()},
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_compare_two_eval_dirs(tmp_path, capsys):
    # gsm8k: A right on 1 problem B misses, B right on 9 that A misses (p = 22/1024), 5 both right, 3 both wrong.
    a_gsm = [True] * 1 + [False] * 9 + [True] * 5 + [False] * 3
    b_gsm = [False] * 1 + [True] * 9 + [True] * 5 + [False] * 3
    run_a = write_eval(tmp_path / "a", {
        "gsm8k:test": {f"g{i}": v for i, v in enumerate(a_gsm)},
        "toy:test": {"t0": True, "t1": False, "t2": True, "extra": True},
        "only-a:test": {"x": True},
    })
    run_b = write_eval(tmp_path / "b", {
        "gsm8k:test": {f"g{i}": v for i, v in enumerate(b_gsm)},
        "toy:test": {"t0": True, "t1": False, "t2": True},
    }, max_new_tokens=256)
    output = tmp_path / "out" / "compare.json"
    config = CompareConfig(run_a=str(run_a), run_b=str(run_b / "results.json"), bootstrap_samples=2000, output=str(output))
    assert command(config) == 0
    comparison = json.loads(output.read_text())
    gsm, toy = comparison["rows"]
    assert gsm["set"] == "gsm8k:test" and gsm["problems"] == 18
    assert gsm["accuracy_a"] == pytest.approx(6 / 18) and gsm["accuracy_b"] == pytest.approx(14 / 18)
    assert gsm["diff"] == pytest.approx(8 / 18)
    assert gsm["p_value"] == pytest.approx(22 / 1024)
    assert 0 < gsm["ci_low"] < gsm["diff"] < gsm["ci_high"]
    assert gsm["verdict"] == "B better"
    # Identical outcomes on the shared problems: difference 0, CI [0, 0], p = 1 -> noise.
    assert (toy["problems"], toy["only_in_a"], toy["only_in_b"]) == (3, 1, 0)
    assert (toy["diff"], toy["ci_low"], toy["ci_high"], toy["p_value"], toy["verdict"]) == (0.0, 0.0, 0.0, 1.0, "noise")
    assert comparison["sets_only_in_a"] == ["only-a:test"] and comparison["sets_only_in_b"] == []
    assert comparison["settings_differ"] == {"max_new_tokens": [512, 256]}
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert "| gsm8k:test | 18 | 33.3% | 77.8% | +44.4 [" in markdown and "B better" in markdown
    assert "settings differ: max_new_tokens" in markdown
    assert "| toy:test |" in capsys.readouterr().out


def test_verdict_rule():
    assert verdict(0.01, 0.2, 0.01, 0.05) == "B better"
    assert verdict(-0.2, -0.01, 0.01, 0.05) == "A better"
    assert verdict(-0.01, 0.2, 0.01, 0.05) == "noise"  # CI covers 0
    assert verdict(0.01, 0.2, 0.06, 0.05) == "noise"  # p >= alpha


def test_compare_rejects_missing_or_foreign_results(tmp_path):
    with pytest.raises(InputError, match="not found"):
        command(CompareConfig(run_a=str(tmp_path / "nope"), run_b=str(tmp_path / "nope"), output=""))
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"sets": {"gsm8k:test": {"accuracy": 0.5}}}))
    with pytest.raises(InputError, match="per_problem"):
        command(CompareConfig(run_a=str(folder), run_b=str(folder), output=""))


def test_cli_takes_two_positional_paths():
    config = parse_cli(CompareConfig, ["runs/a", "runs/b", "--bootstrap_samples", "50"], prog="stepdpo compare")
    assert (config.run_a, config.run_b, config.bootstrap_samples) == ("runs/a", "runs/b", 50)


def compute(dtype: str, cpu: str = "Intel(R) Xeon(R) Platinum 8488C", device: str = "cpu") -> dict:
    return {"device": device, "compute_dtype": dtype, "cpu": cpu, "avx512_bf16": dtype == "bfloat16", "amx_bf16": False, "gpu": None}


def write_computed(folder, outcome, computed):
    write_eval(folder, {"toy:test": {"t0": outcome, "t1": True}})
    results = json.loads((folder / "results.json").read_text())
    if computed is not None:
        results["compute"] = computed
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_compare_refuses_evaluations_computed_differently(tmp_path, capsys):
    # The same config ('dtype auto'): float32 on one CPU, bfloat16 autocast on one with AVX512-BF16.
    run_a = write_computed(tmp_path / "a", True, compute("float32", cpu="AMD EPYC 7B13"))
    run_b = write_computed(tmp_path / "b", False, compute("bfloat16"))
    output = tmp_path / "compare.json"
    with pytest.raises(ConfigError, match=r"compute_dtype 'float32' \(A\) vs 'bfloat16' \(B\).*--allow_compute_mismatch"):
        command(CompareConfig(run_a=str(run_a), run_b=str(run_b), bootstrap_samples=100, output=str(output)))
    assert not output.exists()
    # A GPU against a CPU is refused too, whatever the dtypes.
    gpu = write_computed(tmp_path / "gpu", True, compute("float32", device="cuda:0"))
    with pytest.raises(ConfigError, match=r"device 'cpu' \(A\) vs 'cuda' \(B\)"):
        command(CompareConfig(run_a=str(run_a), run_b=str(gpu), bootstrap_samples=100, output=""))
    # Overridden: compared, with a loud warning in the table and the JSON.
    assert command(CompareConfig(run_a=str(run_a), run_b=str(run_b), bootstrap_samples=100, output=str(output), allow_compute_mismatch=True)) == 0
    comparison = json.loads(output.read_text())
    assert comparison["compute_differ"] == {"compute_dtype": ["float32", "bfloat16"]}
    assert "WARNING: computed differently" in output.with_suffix(".md").read_text() and "WARNING" in capsys.readouterr().out


def test_compare_notes_other_hardware_and_unrecorded_compute(tmp_path):
    # Same dtype on two CPU models: compared, the hardware noted.
    run_a = write_computed(tmp_path / "a", True, compute("float32", cpu="AMD EPYC 7B13"))
    run_b = write_computed(tmp_path / "b", False, compute("float32"))
    output = tmp_path / "c.json"
    assert command(CompareConfig(run_a=str(run_a), run_b=str(run_b), bootstrap_samples=100, output=str(output))) == 0
    comparison = json.loads(output.read_text())
    assert comparison["compute_differ"] == {} and comparison["compute_noted"] == {"cpu": ["AMD EPYC 7B13", "Intel(R) Xeon(R) Platinum 8488C"]}
    assert "computed on different hardware: cpu" in output.with_suffix(".md").read_text()
    # A results.json written before the record: compared, and the markdown says nothing could be checked.
    old = write_computed(tmp_path / "old", True, None)
    assert command(CompareConfig(run_a=str(old), run_b=str(run_b), bootstrap_samples=100, output=str(output))) == 0
    assert "compute not recorded for A" in output.with_suffix(".md").read_text()
