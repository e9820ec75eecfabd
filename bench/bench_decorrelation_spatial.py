"""Spatially varying kernel decorrelation of a 4000x4072 float32 exposure with PSF FWHM 4 px:
``DecorrelateALKernelSpatialTask`` (default grid: 164-px cells, 32-px borders, 625 cells; native
C++ mapper, cells in parallel) against a numpy implementation of the reference's per-cell
algorithm (``diffcal.reference.decorrelation.decorrelate_spatial_numpy``: per cell, the kernel
image, two numpy clipped means and complex ``fft2`` on the reference grid, then an ``average``
stitch; without the reference's aliasing bug).

Inputs as ``bench_decorrelation.py`` (variance planes with 2 % pixel scatter). The numpy baseline
is slow (minutes for 625 cells), so by default it is timed on ``--baseline-cells`` cells and
scaled to the full grid (per-cell cost is uniform: all cells have the same size but the edge ones,
which are smaller); ``--full-baseline`` runs all of them. Agreement is checked on the cells run.

Run: python bench/bench_decorrelation_spatial.py [--repeats 5] [--threads N] [--fast]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Measurement, machine, measure, report  # noqa: E402
from bench_decorrelation import make_inputs  # noqa: E402

from diffcal import _core  # noqa: E402
from diffcal.decorrelation import DecorrelateALKernelSpatialConfig, DecorrelateALKernelSpatialTask  # noqa: E402
from diffcal.mapreduce import ImageMapReduceTask  # noqa: E402
from diffcal.reference.decorrelation import decorrelate_spatial_numpy  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--cols", type=int, default=4072)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="core threads (0 = all)")
    ap.add_argument("--fast", action="store_true", help="also time fftShape='fast' (2/3/5/7-smooth grids)")
    ap.add_argument("--baseline-cells", type=int, default=40)
    ap.add_argument("--full-baseline", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    _core.set_num_threads(args.threads)
    print(f"machine: {machine()}; diffcal threads: {_core.get_num_threads()}; FFT: {_core.fft_backend()}")
    sci, tmpl, diffim, kernel = make_inputs(args.rows, args.cols)

    configs = {"exact": DecorrelateALKernelSpatialConfig()}
    if args.fast:
        configs["fast"] = DecorrelateALKernelSpatialConfig()
        configs["fast"].decorrelateMapReduceConfig.mapper.fftShape = "fast"
    tasks = {m: DecorrelateALKernelSpatialTask(config=c) for m, c in configs.items()}
    out = tasks["exact"].run(sci, tmpl, diffim, kernel).correctedExposure
    ncells = int(tasks["exact"].metadata["nCells"])
    mr = ImageMapReduceTask(config=configs["exact"].decorrelateMapReduceConfig)
    inner, expanded = mr._generateGrid(diffim, forceEvenSized=True)
    w = expanded[:, 2] - expanded[:, 0] + 1
    print(f"{args.cols}x{args.rows}: {ncells} cells, expanded boxes up to {w.max()} px, native mapper: "
          f"{tasks['exact'].metadata['native']}")

    m_ours = {m: measure(f"diffcal spatial task ({m})", lambda t=t: t.run(sci, tmpl, diffim, kernel), args.repeats)
              for m, t in tasks.items()}

    # numpy baseline on a subset of cells (interior ones first: the typical full-size cell)
    n = len(inner) if args.full_baseline else min(args.baseline_cells, len(inner))
    order = np.argsort(-(w * (expanded[:, 3] - expanded[:, 1] + 1)), kind="stable")[:n]
    andMask = 0x17F
    t0 = time.perf_counter()
    ref_img, _ = decorrelate_spatial_numpy(diffim.image, sci.variance, sci.mask, tmpl.variance, tmpl.mask,
                                           lambda x, y: kernel.computeImage(x, y), inner[order], expanded[order],
                                           andMask=andMask, psfShape=(25, 25))
    t_sub = time.perf_counter() - t0
    t_full = t_sub * len(inner) / n
    done = ~np.isnan(ref_img)
    # pixels covered only by the cells run are comparable where every covering cell was run;
    # compare the inner boxes of the cells run that overlap no other cell's inner box (approx.: use
    # the centre quarter of each inner box)
    diffs = []
    for x0, y0, x1, y1 in inner[order].tolist():
        cx0, cx1 = x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4
        cy0, cy1 = y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4
        s = np.s_[cy0:cy1 + 1, cx0:cx1 + 1]
        diffs.append(float(np.max(np.abs(out.image[s] - ref_img[s]))))
    agree = max(diffs) / float(np.nanmax(np.abs(ref_img[done])))
    print(f"numpy baseline: {n} cells in {t_sub:.2f} s -> {t_full:.1f} s for {len(inner)} cells; "
          f"agreement (cell centres, float32 output) max |diff|/max|ref| = {agree:.2e}")
    base = Measurement(f"numpy per-cell reference ({'all' if n == len(inner) else f'{n} cells, scaled'})",
                       t_full, t_full, 1, float("nan"))
    records = {m: report(f"spatial decorrelation ({m} grids) vs the numpy per-cell reference", mo, base)
               for m, mo in m_ours.items()}
    ok = m_ours["exact"].median_s
    print(f"\ntargets: >= 20x numpy baseline: {records['exact']['speedup']:.1f}x; < 0.5 s on 2 cores: "
          f"{ok:.3f} s ({_core.get_num_threads()} threads)")
    summary = {"machine": machine(), "threads": _core.get_num_threads(), "cells": ncells, "agreement": agree,
               **{f"vs_reference_{m}": r for m, r in records.items()}}
    if args.json is not None:
        import json
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
