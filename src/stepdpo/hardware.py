"""What computes the numbers: the device, the resolved compute dtype, the CPU and its bfloat16 support.

``dtype auto`` autocasts to bfloat16 on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX) and
stays float32 elsewhere, so one configuration gives different numbers on different machines. Every
result (evaluation ``results.json``, training ``result.json``) records :func:`describe`, and
``stepdpo compare`` refuses to pair evaluations whose compute differs.
"""

from __future__ import annotations

import functools
import platform
from typing import Any

CPU_INFO = "/proc/cpuinfo"


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(CPU model name, CPU flags) from /proc/cpuinfo; elsewhere ``platform.processor()`` and no flags."""
    model, flags = "", frozenset()
    try:
        with open(CPU_INFO, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def speed_flags(flags: frozenset[str] | None = None) -> list[str]:
    """The CPU flags that decide matmul speed (AVX2/AVX-512 families, FMA, AMX), sorted: what a bench result records."""
    if flags is None:
        flags = cpu_info()[1]
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), where autocast pays off."""
    _, flags = cpu_info()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def describe(device: str, compute_dtype: str | None) -> dict[str, Any]:
    """``{device, compute_dtype, cpu, avx512_bf16, amx_bf16, gpu}`` for a result file.

    ``device`` is where the model ran ('cpu', 'cuda:0', or e.g. 'remote' for a server); ``compute_dtype``
    the dtype its matmuls ran in after any autocast ('float32', 'bfloat16', ...; None when unknown, e.g.
    a remote server). ``gpu`` is the CUDA device's name when the device is one.
    """
    model, flags = cpu_info()
    gpu = None
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(torch.device(device))
    return {"device": device, "compute_dtype": compute_dtype, "cpu": model,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "gpu": gpu}
