"""Demo steps of the kernel decorrelation (issue #4): decorrelate a synthetic A&L pair with the
spatial task, report the noise correlation before/after and the variance-plane agreement, and
write ``decorrelation.png``."""

from __future__ import annotations

import math
import time

from ..cli import CommandError
from ._framework import DemoContext, demo_step

#: The pair is at most this many pixels on a side (keeps the step well under 10 s) and at least
#: this many (enough pixels for the correlation estimates at any demo size).
MAX_PAIR_SIZE = 1024
MIN_PAIR_SIZE = 256


@demo_step("decorrelation", "Decorrelating a synthetic A&L difference image (spatial task)")
def _step_decorrelation(ctx: DemoContext) -> None:
    import numpy as np

    from ..decorrelation import DecorrelateALKernelSpatialTask
    from ..decorrelation_cli import pixelCorrelation, simulatePair
    from ..statistics import clippedStatistics

    size = min(max(ctx.options.size, MIN_PAIR_SIZE), MAX_PAIR_SIZE)
    t0 = time.perf_counter()
    pair = simulatePair(size, ctx.options.seed)
    t_sim = time.perf_counter() - t0
    sci, tmpl, diffim, kernel, truth = (pair[k] for k in ("science", "template", "diffim", "kernel", "truth"))
    task = DecorrelateALKernelSpatialTask()
    t0 = time.perf_counter()
    corrected = task.run(sci, tmpl, diffim, kernel, spatiallyVarying=True).correctedExposure
    t_dec = time.perf_counter() - t0
    flat = task.run(sci, tmpl, diffim, kernel, spatiallyVarying=False).correctedExposure
    andMask = diffim.maskedImage.mask.getPlaneBitMask(["EDGE"])
    before = pixelCorrelation(diffim.image, 3)
    after = pixelCorrelation(corrected.image, 3)
    pix = clippedStatistics(corrected.image, corrected.mask, andMask=andMask).variance
    plane = clippedStatistics(corrected.variance, corrected.mask, andMask=andMask).mean
    expected = truth["expectedCorrectedVariance"]
    diff_flat = float(np.nanmax(np.abs(corrected.image - flat.image)))
    ncells = int(task.metadata["nCells"]) if "nCells" in task.metadata else 1

    section = ctx.report.section("decorrelation")
    section.update({
        "size": size, "cells": ncells, "seconds_simulate": t_sim, "seconds_decorrelate": t_dec,
        "correlation_before": [float(v) for v in before[1:]], "correlation_after": [float(v) for v in after[1:]],
        "pixel_variance": float(pix), "variance_plane": float(plane), "expected_variance": expected,
        "max_abs_difference_spatial_vs_whole_image": diff_flat,
    })
    ctx.report.line(f"{size}x{size} pair (science variance {truth['scienceVariance']:g}, template "
                    f"{truth['templateVariance']:g}, kernel sigma {truth['kernelSigma']:.3f} px), {ncells} cell(s), "
                    f"{1e3 * t_dec:.0f} ms")
    ctx.report.line("noise correlation at lags 1-3: before " + ", ".join(f"{v:+.3f}" for v in before[1:]) +
                    "; after " + ", ".join(f"{v:+.3f}" for v in after[1:]))
    ctx.report.line(f"variance: clipped pixel variance {pix:.4g}, variance plane {plane:.4g}, expected {expected:.4g}")
    ctx.report.line(f"spatial vs whole-image result: max |difference| {diff_flat:.2g}")
    ctx.report.check("decorrelation_whitens", bool(np.all(np.abs(after[1:]) < 0.02)) and before[1] > 0.05)
    ctx.report.check("decorrelation_variance_plane", abs(plane / expected - 1) < 0.02)
    ctx.report.check("decorrelation_pixel_variance", abs(pix / plane - 1) < 0.05)
    ctx.report.highlight(f"decorrelation lag-1 {before[1]:+.2f} -> {after[1]:+.3f}")

    try:
        import matplotlib  # noqa: F401  (optional dependency)
    except ImportError:
        ctx.report.note("matplotlib is not installed: skipping decorrelation.png")
        return
    from ..plotting import plot_decorrelation

    path = ctx.output / "decorrelation.png"
    try:
        plot_decorrelation(diffim, corrected, path, title=f"diffcal demo: decorrelation of a {size}x{size} pair")
    except OSError as exc:
        raise CommandError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    ctx.report.add_file("decorrelation_plot", path, ctx.output)
    if not math.isfinite(pix):
        raise CommandError("decorrelation demo: no valid pixels")
