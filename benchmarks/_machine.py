"""One line about the machine for every benchmark header (../shared/docs/measuring.md): processor,
cores, the threads the benchmark uses, torch version, and the load average when it started, since
other jobs share these 2-core machines and absolute figures move with them."""

from __future__ import annotations

import os
import platform


def processor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vector_isa() -> str:
    """AVX-512 (and its bf16 extension) decides much of a CPU kernel's speed, and "AMD EPYC" names
    both chips with it (Genoa) and without (Milan): say which this one is."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "vector ISA unknown"
    if "avx512f" not in flags:
        return "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    return "AVX-512" + (" + bf16" if "avx512_bf16" in flags else ", no avx512_bf16")


def describe(threads: int | None = None) -> str:
    parts = [processor(), vector_isa(), f"{os.cpu_count()} cores"]
    if threads is not None:
        parts.append(f"{threads} threads")
    try:
        import torch
        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        parts.append("load average %.2f %.2f %.2f" % os.getloadavg())
    return ", ".join(parts)
