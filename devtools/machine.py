"""What this machine is, for the header of a measurement: read once, written in the same words everywhere."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Machine:
    cpu: str  # the model name /proc/cpuinfo gives
    cores: int
    memory_gib: float
    arch: str  # x86_64, aarch64, ...
    platform: str
    python: str
    flags: tuple[str, ...]  # the CPU's feature flags

    @property
    def simd(self) -> list[str]:
        """The vector-instruction flags that decide model speed (AVX2, AVX-512, AMX, FMA, VNNI)."""
        return [f for f in self.flags if f.startswith(("avx512", "avx2", "amx")) or f in ("fma", "avx_vnni")]

    def describe(self) -> str:
        """One line with everything: CPU, cores, memory, OS, SIMD flags."""
        return (f"{self.cpu}, {self.cores} cores, {self.memory_gib:.0f} GiB, {self.platform}; "
                f"flags: {' '.join(self.simd)}")  # fmt: skip

    def short(self) -> str:
        """Architecture, cores and Python: enough where the CPU model does not change the result."""
        return f"{self.arch}, {self.cores} cores, Python {self.python}"


@lru_cache(maxsize=1)
def machine() -> Machine:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return Machine(
        cpu=model, cores=os.cpu_count() or 1, memory_gib=psutil.virtual_memory().total / 2**30,
        arch=platform.machine(), platform=platform.platform(), python=platform.python_version(), flags=tuple(flags),
    )  # fmt: skip
