"""The checks of bench/gpu_check.sh, each in its own subprocess with a time limit, written to one JSON file.

    python bench/gpu_check.py --out bench/results/gpu_check.json [--cpu] [--budget-s 450]

Parts (each recorded as ``ok``, ``failed`` or ``skipped`` with its reason, seconds and numbers):

1. ``environment``: torch, CUDA, GPUs, library versions, CPU model and flags;
2. ``gpu_tests``: ``pytest -m gpu`` (they skip on a machine without CUDA, and say so);
3. ``vllm``: one engine on the embedded model, 4 prompts with ``n = 4`` greedy (all four equal, one
   decode) and sampled (seeded, repeatable), tokens/s; the engine closed and the GPU memory it
   gave back; skipped where vLLM is not installed;
4. ``throughput``: ``bench/train_throughput.py`` (ours against TRL) in bf16 on the GPU; with ``--cpu``
   float32 on the tiny model, a check of the plumbing only;
5. ``save_reload``: two processes (FSDP over NCCL with two GPUs; DDP over gloo with ``--cpu``) train
   the tiny model, the final save is verified and reloaded, and its weights are compared with a
   one-process run at the same global batch; skipped with one GPU.

The embedded model's weights (a 98 MB GGUF) cannot travel to a device machine (64 MiB per call):
there, ``smollm2-135m`` is the SmolLM2-135M architecture and tokenizer with random weights, built
from the carried ``config.json`` and tokenizer files (the result says which). Throughput and the
generation mechanics do not depend on the weights' values; answers do, and none are scored here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], timeout_s: float, env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-2000:] if isinstance(err.stdout, bytes) else (err.stdout or "")[-2000:]
        return {"status": "failed", "reason": f"timed out after {timeout_s:.0f}s", "seconds": round(time.perf_counter() - started, 1), "tail": str(tail)}
    out = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - started, 1), "tail": (proc.stdout + proc.stderr)[-3000:]}
    out["status"] = "ok" if proc.returncode == 0 else "failed"
    return out


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "status": "ok",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [],
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }
    for name in ("transformers", "trl", "accelerate", "peft", "vllm", "deepspeed"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def _cpu_model() -> str:
    from stepdpo.hardware import cpu_info

    return cpu_info()[0]


def _cpu_flags() -> list[str]:
    from stepdpo.hardware import speed_flags

    return speed_flags()


def embedded_model(assets: Path, work: Path) -> dict[str, Any]:
    """Make ``smollm2-135m`` resolve: the real converted model when it can be had, else its architecture with random weights.

    The random-weight stand-in goes to a fresh $STEPDPO_CACHE under ``work`` (the parts' subprocesses inherit it).
    """
    from stepdpo import models

    try:
        path = models.resolve_model(models.EMBEDDED_ALIAS)
        return {"path": path, "weights": "SmolLM2-135M-Instruct (the embedded GGUF, converted)"}
    except models.ModelLoadError as err:
        missing = str(err)
    os.environ["STEPDPO_CACHE"] = str(work / "cache")
    cache = work / "cache"
    source = assets / "smollm2-135m-shape"
    if not (source / "config.json").is_file():
        raise SystemExit(f"no embedded model ({missing}) and no {source}/config.json: run bench/gpu_check.sh --fetch-wheels where it is installed")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target = cache / "models" / models.EMBEDDED_ALIAS
    if not (target / "config.json").is_file():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
        model.save_pretrained(target)
        for item in source.iterdir():
            if item.name != "config.json":
                shutil.copy(item, target / item.name)
    return {"path": str(target), "weights": "random (SmolLM2-135M architecture and tokenizer; the 98 MB GGUF cannot travel)"}


VLLM_SCRIPT = r"""
import json, sys, time, torch
from stepdpo.generation.base import GeneratorConfig, SamplingParams, close_generator
from stepdpo.generation.registry import build_generator
prompts = ["Name a color.", "What is 2 + 3?", "Write a word.", "Count to three."]
free_before = torch.cuda.mem_get_info()[0]
engine = build_generator(GeneratorConfig(backend="vllm", model="smollm2-135m", gpu_memory_utilization=0.5))
greedy = engine.generate(prompts, SamplingParams(n=4, temperature=0.0, max_new_tokens=64))
started = time.perf_counter()
sampled = engine.generate(prompts, SamplingParams(n=4, temperature=0.8, top_p=0.95, max_new_tokens=64, seed=7))
seconds = time.perf_counter() - started
again = engine.generate(prompts, SamplingParams(n=4, temperature=0.8, top_p=0.95, max_new_tokens=64, seed=7))
free_engine = torch.cuda.mem_get_info()[0]
close_generator(engine)
free_after = torch.cuda.mem_get_info()[0]
tokens = sum(c.num_tokens for cs in sampled for c in cs)
json.dump({
    "greedy_n4_identical": all(len({c.text for c in cs}) == 1 and len(cs) == 4 for cs in greedy),
    "sampled_n4_distinct_texts": [len({c.text for c in cs}) for cs in sampled],
    "sampled_repeatable_with_seed": [[c.text for c in cs] for cs in sampled] == [[c.text for c in cs] for cs in again],
    "sampled_tokens_per_s": tokens / seconds,
    "gpu_free_gib": {"before": free_before / 2**30, "with_engine": free_engine / 2**30, "after_close": free_after / 2**30},
}, open(sys.argv[1], "w"), indent=1)
"""


def vllm_check(work: Path, timeout_s: float) -> dict[str, Any]:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return {"status": "skipped", "reason": "no CUDA GPU"}
    if importlib.util.find_spec("vllm") is None:
        return {"status": "skipped", "reason": "vllm is not installed (its wheels, hundreds of MB, cannot travel in the 64 MiB a device call carries)"}
    script, result = work / "vllm_check.py", work / "vllm_check.json"
    script.write_text(VLLM_SCRIPT)
    out = _run([sys.executable, str(script), str(result)], timeout_s)
    if out["status"] == "ok":
        out.update(json.loads(result.read_text()))
        ok = out["greedy_n4_identical"] and out["sampled_repeatable_with_seed"]
        out["status"] = "ok" if ok else "failed"
    return out


def throughput(work: Path, cpu: bool, timeout_s: float, model: str) -> dict[str, Any]:
    out_file = work / "throughput.json"
    if cpu:
        command = ["--profiles", "embedded", "--n-pairs", "8", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--threads", "1"]
    else:
        command = ["--profiles", "embedded", "realistic", "--n-pairs", "64", "--batch-size", "8", "--steps", "10", "--warmup", "3", "--bf16"]
    out = _run([sys.executable, "bench/train_throughput.py", *command, "--model", model, "--out", str(out_file)], timeout_s)
    if cpu:
        out["note"] = "tiny random model, float32, 2 timed steps on a shared CPU: checks that the comparison runs, not how fast anything is"
    if out["status"] == "ok":
        report = json.loads(out_file.read_text())
        out["report"] = {k: report[k] for k in ("command", "bf16", "gpu", "cpu", "model", "batch_size", "steps") if k in report}
        out["profiles"] = {name: {"ratios": p["ratios"], "pairs_per_second": {s: v["pairs_per_second"] for s, v in p["systems"].items()},
                                  "step0_loss": {s: v["step0_loss"] for s, v in p["systems"].items()}}
                           for name, p in report["profiles"].items()}
    return out


def _tiny_model(folder: Path, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_reload(work: Path, cpu: bool, timeout_s: float, model: Path) -> dict[str, Any]:
    import torch

    if not cpu and torch.cuda.device_count() < 2:
        return {"status": "skipped", "reason": f"{torch.cuda.device_count()} GPU(s): the 2-process save needs two"}
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "tests"))
    from test_train import make_pairs

    from stepdpo.records import atomic_write_text
    from stepdpo.training.saving import saved_weight_problems

    pairs = work / "pairs.jsonl"
    atomic_write_text(pairs, "".join(json.dumps(p.__dict__) + "\n" for p in make_pairs(16)))
    launch_config = ROOT / "configs" / "accelerate" / ("ddp_cpu.yaml" if cpu else "fsdp.yaml")

    def train(out: Path, batch: int) -> list[str]:
        return ["-m", "stepdpo.cli", "train", "--pairs", str(pairs), "--model", str(model), "--output-dir", str(out), "--run-dir", str(work / "run"),
                "--optim.learning-rate", "2e-3", "--optim.batch-size", str(batch), "--optim.epochs", "1", "--logging-steps", "1", "--eval-split", "0", "--report-to", "none",
                "--bf16", str(not cpu)]

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config), "--num_processes", "2"]
    env = {"OMP_NUM_THREADS": "1"}
    two = _run([*launch, *train(work / "two", 2)], timeout_s / 2, env)
    if two["status"] != "ok":
        return {**two, "part": "2-process training"}
    one = _run([sys.executable, *train(work / "one", 4)], timeout_s / 2, env)
    if one["status"] != "ok":
        return {**one, "part": "1-process training"}
    problems = saved_weight_problems(work / "two" / "final")
    saved_two, saved_one = load_file(work / "two" / "final" / "model.safetensors"), load_file(work / "one" / "final" / "model.safetensors")
    diff = max(float((saved_two[k].float() - saved_one[k].float()).abs().max()) for k in saved_one)
    # float32 DDP equals one process to rounding; bf16 under FSDP vs one GPU differs by bf16 rounding over 3 Adam steps of 2e-3.
    tolerance = 1e-4 if cpu else 2e-2
    return {"status": "ok" if not problems and saved_two.keys() == saved_one.keys() and diff < tolerance else "failed", "tolerance": tolerance,
            "launch": launch_config.name, "verify_problems": problems, "max_abs_weight_diff_vs_one_process": diff,
            "seconds": two["seconds"] + one["seconds"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="The one result file (JSON).")
    parser.add_argument("--cpu", action="store_true", help="The CPU-possible parts: GPU tests skip, vLLM skips, throughput float32 on the tiny budget, save-and-reload over gloo.")
    parser.add_argument("--assets", default=str(ROOT / ".gpu-assets"), help="Carried SmolLM2-135M config and tokenizer (made by gpu_check.sh --fetch-wheels).")
    parser.add_argument("--budget-s", type=float, default=450, help="Seconds for all parts together (each part gets a share).")
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    result: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv), "mode": "cpu" if args.cpu else "gpu"}
    result["environment"] = environment()
    result["embedded_model"] = embedded_model(Path(args.assets), work)
    tokenizer_dir = Path(result["embedded_model"]["path"])
    os.environ.setdefault("STEPDPO_TEST_TOKENIZER", str(tokenizer_dir))
    share = args.budget_s

    def remaining(fraction: float) -> float:
        return max(30.0, min(share * fraction, args.budget_s - (time.perf_counter() - started)))

    gpu_test_files = ["tests/test_gpu_training.py", "tests/test_generation_vllm.py"]
    result["gpu_tests"] = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:randomly", "-p", "no:cacheprovider", *gpu_test_files], remaining(0.25))
    result["vllm"] = vllm_check(work, remaining(0.25))
    tiny = _tiny_model(work / "tiny", tokenizer_dir)
    # On CPU the plumbing is what is checked: the tiny model (the 135M one takes minutes per system on 2 cores).
    result["throughput"] = throughput(work, args.cpu, remaining(0.35), str(tiny) if args.cpu else "smollm2-135m")
    result["save_reload"] = save_reload(work, args.cpu, remaining(0.3), tiny)
    result["seconds"] = round(time.perf_counter() - started, 1)
    parts = [name for name in ("gpu_tests", "vllm", "throughput", "save_reload") if result[name]["status"] == "failed"]
    result["failed_parts"] = parts
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({name: result[name].get("status") for name in ("gpu_tests", "vllm", "throughput", "save_reload")}), f"-> {args.out} in {result['seconds']}s")
    return 1 if parts else 0


if __name__ == "__main__":
    sys.exit(main())
