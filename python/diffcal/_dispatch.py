"""Choose which build of the compiled core is imported as ``diffcal._core``.

A wheel or ``pip install .`` on x86-64 holds two builds of the same extension: the portable
baseline (SSE2) as ``diffcal/_core*.so`` and an x86-64-v3 build (AVX, AVX2, FMA, BMI1/2, F16C,
LZCNT, MOVBE) as ``diffcal/_isa_x86_64_v3/_core*.so``. On a CPU that has every x86-64-v3 feature
the second is loaded under the name ``diffcal._core`` (the jointcal solves run about 1.3x faster,
the spatial decorrelation about 1.1x); everywhere else the baseline is. Only one of them is
ever loaded in a process.

``DIFFCAL_ISA=baseline`` (environment) forces the portable build; ``diffcal._core.build_info()["isa"]``
says which one is running. The v3 build is compiled without multiply-add contraction, so our own
code (statistics, grids, stitching, FFTs, decorrelation) gives the same bits as the baseline; only
Eigen's kernels (jointcal's sparse and dense linear algebra) use FMA instructions there, so jointcal
results agree to rounding. Each build is bit-identical for any thread count.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import platform
import sys
from pathlib import Path

CORE = "diffcal._core"
V3_DIR = "_isa_x86_64_v3"
# /proc/cpuinfo flag names of the x86-64-v3 level (lzcnt is reported as "abm"); "avx" is only
# listed when the kernel enables the AVX state, so the OS side is covered as well
_V3_FLAGS = frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})


def cpu_has_x86_64_v3() -> bool:
    """True when this CPU (and OS) supports every x86-64-v3 instruction (Linux x86-64 only)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return cpuinfo_has_x86_64_v3(f.read())
    except OSError:
        return False


def cpuinfo_has_x86_64_v3(cpuinfo: str) -> bool:
    """True when the first ``flags`` line of a /proc/cpuinfo text lists every x86-64-v3 feature."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return _V3_FLAGS <= set(line.split(":", 1)[1].split())
    return False


def _v3_extension(package_dir: Path) -> Path | None:
    folder = package_dir / V3_DIR
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = folder / f"_core{suffix}"
        if candidate.is_file():
            return candidate
    return None


class _CoreFinder(importlib.abc.MetaPathFinder):
    """Finds ``diffcal._core``: the x86-64-v3 build when the CPU has it, else the default search."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if fullname != CORE or os.environ.get("DIFFCAL_ISA", "").lower() == "baseline":
            return None
        if not path or not cpu_has_x86_64_v3():
            return None
        for entry in path:
            extension = _v3_extension(Path(entry))
            if extension is not None:
                loader = importlib.machinery.ExtensionFileLoader(CORE, str(extension))
                return importlib.util.spec_from_file_location(CORE, extension, loader=loader)
        return None


def install() -> None:
    """Put the finder in front of the import system (once)."""
    if not any(isinstance(f, _CoreFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CoreFinder())
