"""Clipped mean (MEANCLIP) of a 4096x4096 float32 image with masked and NaN pixels:
diffcal's C++ core against a numpy implementation of the same algorithm (spec §2.2).

Run: python bench/bench_statistics.py [--size 4096] [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import measure, report  # noqa: E402

from diffcal import _core  # noqa: E402
from diffcal.reference import clipped_statistics_numpy  # noqa: E402
from diffcal.statistics import clippedStatistics  # noqa: E402

AND_MASK = 0x17F  # the decorrelation task's default ignoreMaskPlanes bits


def make_image(size: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 5.0, (size, size)).astype(np.float32)
    mask = np.zeros(img.shape, np.int32)
    mask[rng.random(img.shape) < 0.05] = 1 << 3   # CR
    mask[rng.random(img.shape) < 0.02] = 1 << 5   # DETECTED
    img[rng.random(img.shape) < 0.01] = np.nan
    img[rng.random(img.shape) < 0.005] = 1e5      # outliers to clip
    return img, mask


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="core threads (0 = all)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    _core.set_num_threads(args.threads)
    img, mask = make_image(args.size)
    ours = clippedStatistics(img, mask, andMask=AND_MASK)
    ref_mean, ref_var = clipped_statistics_numpy(img, mask, AND_MASK)
    rel = max(abs(ours.mean - ref_mean) / abs(ref_mean), abs(ours.variance - ref_var) / abs(ref_var))
    print(f"agreement: max relative difference {rel:.2e} (mean {ours.mean:.10g}, variance {ours.variance:.10g})")
    m_ours = measure(f"diffcal C++ ({_core.get_num_threads()} threads)",
                     lambda: clippedStatistics(img, mask, andMask=AND_MASK), args.repeats)
    m_base = measure("numpy implementation", lambda: clipped_statistics_numpy(img, mask, AND_MASK),
                     args.repeats)
    return report(f"clipped mean, {args.size}x{args.size} float32, 1% NaN, 7% masked", m_ours, m_base,
                  args.json, max_relative_difference=rel)


if __name__ == "__main__":
    main()
