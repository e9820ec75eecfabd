"""Runtime choice of the compiled core (diffcal._dispatch): the x86-64-v3 build on CPUs that have
it, the baseline otherwise or when DIFFCAL_ISA=baseline; both builds compute the same numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import diffcal
from diffcal import _core, _dispatch

PACKAGE_DIR = Path(diffcal.__file__).resolve().parent
HAS_V3_BUILD = _dispatch._v3_extension(PACKAGE_DIR) is not None


def run_python(code: str, **env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "DIFFCAL_ISA"}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_loaded_core_matches_cpu_and_files():
    info = _core.build_info()
    assert info["isa"] in ("baseline", "x86-64-v3", "native")
    assert _core.__name__ == "diffcal._core"
    forced = os.environ.get("DIFFCAL_ISA", "").lower() == "baseline"
    if info["isa"] != "native":
        expected = "x86-64-v3" if (HAS_V3_BUILD and _dispatch.cpu_has_x86_64_v3() and not forced) else "baseline"
        assert info["isa"] == expected


def test_environment_forces_the_baseline_build():
    code = "import diffcal._core as c; print(c.build_info()['isa']); print(c.__file__)"
    isa, path = run_python(code, DIFFCAL_ISA="baseline").splitlines()
    assert isa in ("baseline", "native")
    assert Path(path).parent == PACKAGE_DIR


def test_cpu_flag_parsing_needs_every_v3_feature():
    assert isinstance(_dispatch.cpu_has_x86_64_v3(), bool)
    v3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 bmi1 bmi2 f16c fma abm movbe xsave avx512f\n"
    assert _dispatch.cpuinfo_has_x86_64_v3(v3)
    for missing in ("fma", "avx2", "abm", "movbe"):
        assert not _dispatch.cpuinfo_has_x86_64_v3(v3.replace(f" {missing} ", " ")), missing
    assert not _dispatch.cpuinfo_has_x86_64_v3("processor\t: 0\n")  # no flags line (not x86)


# the same computation in a fresh process with each build: our own code is compiled without
# multiply-add contraction, so statistics, FFT filters and stitching give the same bits
SAME_BITS = """
import json, numpy as np
from diffcal import _core
from diffcal.statistics import clippedStatistics
from diffcal.decorrelation import DecorrelateALKernelSpatialTask
from diffcal.decorrelation_cli import simulatePair
rng = np.random.default_rng(3)
img = rng.normal(25.0, 0.5, (300, 280)).astype(np.float32)
s = clippedStatistics(img)
p = simulatePair(size=400, seed=2)
task = DecorrelateALKernelSpatialTask()
task.config.decorrelateMapReduceConfig.cellSizeX = task.config.decorrelateMapReduceConfig.cellSizeY = 20.0
out = task.run(p["science"], p["template"], p["diffim"], p["kernel"]).correctedExposure
assert task.metadata["nCells"] > 1
print(json.dumps({"isa": _core.build_info()["isa"], "stats": [s.mean.hex(), s.variance.hex(), s.median.hex()],
                  "image": float(np.nansum(out.image.astype(np.float64))).hex(),
                  "variance": float(np.nansum(out.variance.astype(np.float64))).hex()}))
"""


@pytest.mark.skipif(not (HAS_V3_BUILD and _dispatch.cpu_has_x86_64_v3()),
                    reason="no x86-64-v3 build installed or this CPU lacks AVX2/FMA: only one build can run here")
def test_both_builds_give_the_same_bits_outside_eigen():
    fast = json.loads(run_python(SAME_BITS))
    base = json.loads(run_python(SAME_BITS, DIFFCAL_ISA="baseline"))
    assert fast["isa"] == "x86-64-v3" and base["isa"] == "baseline"
    for key in ("stats", "image", "variance"):
        assert fast[key] == base[key], key
