"""Demo step of ImageMapReduce: split the synthetic exposure into the default grid of overlapping
cells, run an identity mapper through the native (C++, all cores) path and through the Python
path, check both reproduce the input exactly, and draw the grid over the image
(``mapreduce_grid.png``)."""

from __future__ import annotations

import time

from ._framework import DemoContext, demo_step


@demo_step("mapreduce", "ImageMapReduce: identity mapper over the default grid, native vs Python")
def _step_mapreduce(ctx: DemoContext) -> None:
    import numpy as np

    from ..mapreduce import IdentityImageMapper, ImageMapReduceConfig, ImageMapReduceTask

    exposure = ctx.data["exposure"]
    results = {}
    for native in (True, False):
        config = ImageMapReduceConfig()
        config.mapper.retarget(IdentityImageMapper)
        config.useNativeMapper = native
        task = ImageMapReduceTask(config=config)
        t0 = time.perf_counter()
        out = task.run(exposure).exposure
        results[native] = (out, time.perf_counter() - t0, task)

    out, t_native, task = results[True]
    out_py, t_python, _ = results[False]
    valid_in = ~np.isnan(exposure.image * exposure.variance)
    flagged = (out.mask & out.maskedImage.mask.getPlaneBitMask("INVALID_MAPREDUCE")) != 0
    exact = bool(np.array_equal(out.image[valid_in], exposure.image[valid_in])
                 and np.array_equal(out.variance[valid_in], exposure.variance[valid_in]))
    same_paths = bool(np.array_equal(out.image, out_py.image, equal_nan=True)
                      and np.array_equal(out.mask, out_py.mask))
    n_cells = len(task.boxes0)
    inner0 = task.boxes0[0]
    expanded0 = task.boxes1[0]

    section = ctx.report.section("mapreduce")
    section.update({
        "cells": n_cells, "inner_size_first_cell": [inner0.getWidth(), inner0.getHeight()],
        "expanded_size_first_cell": [expanded0.getWidth(), expanded0.getHeight()],
        "seconds_native": t_native, "seconds_python": t_python,
        "identity_exact": exact, "native_equals_python": same_paths,
        "invalid_input_pixels": int(np.count_nonzero(~valid_in)), "flagged_output_pixels": int(np.count_nonzero(flagged)),
    })
    ctx.report.line(f"{n_cells} cells (inner {inner0.getWidth()}x{inner0.getHeight()} px, expanded up to "
                    f"{max(b.getWidth() for b in task.boxes1)} px), average reduce")
    ctx.report.line(f"native C++ mapper {1e3 * t_native:.0f} ms; Python mapper {1e3 * t_python:.0f} ms "
                    f"(x{t_python / t_native:.1f}); identical results: {same_paths}")
    ctx.report.line(f"identity reproduces every valid pixel exactly: {exact}; "
                    f"{int(np.count_nonzero(~valid_in))} invalid input pixels -> {int(np.count_nonzero(flagged))} flagged")
    ctx.report.check("mapreduce_identity_exact", exact)
    ctx.report.check("mapreduce_native_equals_python", same_paths)
    ctx.report.check("mapreduce_invalid_flagged", int(np.count_nonzero(flagged)) == int(np.count_nonzero(~valid_in)))

    try:
        from ..plotting import plot_cell_grid

        path = ctx.output / "mapreduce_grid.png"
        plot_cell_grid(exposure, task.boxes0, task.boxes1, path,
                       title=f"ImageMapReduce default grid: {n_cells} cells (FWHM-scaled 10/10/5)")
        ctx.report.add_file("mapreduce_grid", path, ctx.output)
        ctx.report.line(f"{path.name}: the cell grid over the image")
    except ImportError:
        ctx.report.note("matplotlib is not installed: mapreduce_grid.png skipped (pip install diffcal[plots])")
