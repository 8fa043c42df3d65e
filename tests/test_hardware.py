"""What computed the numbers: the CPU model and its bfloat16 flags, read from /proc/cpuinfo."""

from __future__ import annotations

import pytest

from stepdpo import hardware

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
"""


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    def use(text: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(hardware, "CPU_INFO", str(path))
        hardware.cpu_info.cache_clear()

    yield use
    hardware.cpu_info.cache_clear()


def test_describe_records_cpu_model_and_bf16_support(cpuinfo):
    cpuinfo(CPUINFO)
    assert hardware.cpu_supports_bf16()
    assert hardware.describe("cpu", "bfloat16") == {"device": "cpu", "compute_dtype": "bfloat16", "cpu": "Intel(R) Xeon(R) Platinum 8488C",
                                                    "avx512_bf16": True, "amx_bf16": False, "gpu": None}
    cpuinfo(CPUINFO.replace(" avx512_bf16", ""))
    assert not hardware.cpu_supports_bf16() and hardware.describe("cpu", "float32")["avx512_bf16"] is False
