"""Timing and peak-memory harness shared by the benchmarks.

Timings are medians of repeated runs (this project runs on shared 2-core machines, so single
timings are noise). Peak memory is the growth of the process's resident-set high-water mark
during a call, measured by resetting the kernel's counter (Linux ``/proc/self/clear_refs``),
so it covers C++ and numpy allocations alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory added while ``fn()`` runs, in MiB (Linux only; NaN elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        result = fn()
        peak = _status_kib("VmHWM")
        del result
        return max(0.0, (peak - before) / 1024.0)
    except OSError:
        fn()
        return float("nan")


@dataclass
class Measurement:
    name: str
    median_s: float
    min_s: float
    repeats: int
    peak_extra_mib: float


def measure(name: str, fn: Callable[[], object], repeats: int = 7, warmup: int = 1) -> Measurement:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Measurement(name, statistics.median(times), min(times), repeats, peak_extra_mib(fn))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def report(title: str, ours: Measurement, baseline: Measurement, out: Path | None = None, **extra) -> dict:
    ratio = baseline.median_s / ours.median_s
    print(f"\n{title}")
    print(f"  machine: {machine()}")
    for m in (ours, baseline):
        print(f"  {m.name:<34} median {m.median_s * 1e3:9.2f} ms  (min {m.min_s * 1e3:8.2f} ms, "
              f"n={m.repeats})  peak +{m.peak_extra_mib:8.1f} MiB")
    print(f"  speed-up (baseline median / ours median): {ratio:.1f}x")
    record = {"title": title, "machine": machine(), "ours": asdict(ours), "baseline": asdict(baseline),
              "speedup": ratio, **extra}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2))
    return record
