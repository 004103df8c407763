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


def describe(threads: int | None = None) -> str:
    parts = [processor(), f"{os.cpu_count()} cores"]
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
