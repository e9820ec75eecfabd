"""ImageMapReduce on a 4096x4096 float32 exposure, default grid at a PSF FWHM of 4 px
(cell 40 px, border 20 px, 103 x 103 = 10609 cells).

(a) ``average`` reduce of per-cell results (read-only views of the input, as a pass-through mapper
    returns them): diffcal's C++ stitcher (ImageReducer.run) against the numpy per-cell loop of the
    reference (diffcal.reference.image_reduce_numpy: clone, reset, boolean-indexed float32
    accumulation per cell). Target: >= 20x.
(b) a whole map-reduce (grid + native identity mapper + average stitch, ImageMapReduceTask.run)
    against one numpy copy of the three planes (the memory-bandwidth floor). Target: within 3x.

Peak memory is the growth of the resident set during one call (the input exists beforehand).
Target: at most output + one double plane + one int32 weight plane (= 12 + 8 + 4 bytes per pixel).

Run: python bench/bench_mapreduce.py [--size 4096] [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import measure, report  # noqa: E402

from diffcal import _core  # noqa: E402
from diffcal.image import Exposure  # noqa: E402
from diffcal.mapreduce import (  # noqa: E402
    IdentityImageMapper,
    ImageMapReduceConfig,
    ImageMapReduceTask,
    ImageReducer,
    ImageReducerConfig,
)
from diffcal.psf import SIGMA_TO_FWHM, GaussianPsf  # noqa: E402
from diffcal.reference import image_reduce_numpy  # noqa: E402

FWHM = 4.0


def make_exposure(size: int, seed: int = 1) -> Exposure:
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 5.0, (size, size)).astype(np.float32)
    var = rng.uniform(20.0, 30.0, (size, size)).astype(np.float32)
    mask = np.zeros((size, size), np.int32)
    mask[rng.random((size, size)) < 0.02] = 1 << 5
    img[rng.random((size, size)) < 0.001] = np.nan
    return Exposure(img, mask, var, psf=GaussianPsf(21, 21, FWHM / SIGMA_TO_FWHM))


def make_task(useNative: bool = True) -> ImageMapReduceTask:
    config = ImageMapReduceConfig()
    config.mapper.retarget(IdentityImageMapper)
    config.reducer.reduceOperation = "average"
    config.useNativeMapper = useNative
    return ImageMapReduceTask(config=config)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="core threads (0 = all)")
    ap.add_argument("--json", type=Path, default=None, help="write the records of (a) and (b) here")
    args = ap.parse_args(argv)
    _core.set_num_threads(args.threads)
    exposure = make_exposure(args.size)
    nbytes = sum(a.nbytes for a in (exposure.image, exposure.mask, exposure.variance))
    print(f"exposure {args.size}x{args.size} float32: {nbytes / 2**20:.0f} MiB in 3 planes; "
          f"{_core.get_num_threads()} core threads")

    # ---- (a) reduce only ----
    task = make_task(useNative=False)
    boxes0, boxes1 = task._generateGrid(exposure)
    results = task._runMapper(exposure, boxes0=task.boxes0, boxes1=task.boxes1)
    print(f"grid: {len(results)} cells of {task.boxes0[len(results) // 2].getDimensions()} px")
    reducer = ImageReducer(config=ImageReducerConfig())
    ours = reducer.run(results, exposure).exposure
    ref, _ = image_reduce_numpy(results, exposure, "average")
    same_nan = np.array_equal(np.isnan(ours.image), np.isnan(ref.image))
    good = ~np.isnan(ours.image)
    diff = float(np.max(np.abs(ours.image[good] - ref.image[good]) / np.abs(ref.image[good])))
    print(f"agreement with the numpy reducer: NaN pattern equal {same_nan}, masks equal "
          f"{np.array_equal(ours.mask, ref.mask)}, max relative image difference {diff:.2e}")
    del ours, ref
    m_ours = measure(f"diffcal ImageReducer ({_core.get_num_threads()} thr)", lambda: reducer.run(results, exposure),
                     args.repeats)
    m_base = measure("numpy per-cell loop (reference)", lambda: image_reduce_numpy(results, exposure, "average"),
                     max(3, args.repeats // 2))
    rec_a = report(f"(a) average reduce of {len(results)} cells, {args.size}x{args.size} float32", m_ours, m_base,
                   None, max_relative_difference=diff)
    # where the time goes: the C++ stitch alone, into output planes whose pages are already mapped
    # (ImageReducer.run allocates new planes each call, so the kernel zero-fills 3 x 64 MiB of fresh
    # pages on first touch), and the per-cell Python gathering of the results
    images, masks, variances, boxes, _, _ = reducer._gather(results, exposure, "average")
    warm = (np.empty(exposure.shape, np.float32), np.empty(exposure.shape, np.int32),
            np.empty(exposure.shape, np.float32))
    bb = (0, 0, args.size - 1, args.size - 1)
    m_core = measure("C++ stitch only, warm output", lambda: _core.stitch(
        images, masks, variances, boxes, bb, exposure.mask, warm[0], warm[1], warm[2], "average", 1), args.repeats)
    m_gather = measure("Python gathering of the results", lambda: reducer._gather(results, exposure, "average"),
                       args.repeats)
    print(f"  breakdown: C++ stitch into warm planes {m_core.median_s * 1e3:.1f} ms "
          f"({m_base.median_s / m_core.median_s:.0f}x the numpy loop); gathering {len(results)} results in Python "
          f"{m_gather.median_s * 1e3:.1f} ms; the rest is mostly the kernel zero-filling the new output pages")
    rec_a["stitch_only_median_s"] = m_core.median_s
    rec_a["gather_median_s"] = m_gather.median_s
    warm = images = masks = variances = None  # free the planes before (b)
    results.clear()  # free the views before (b)

    # ---- (b) whole map-reduce with the native identity mapper vs one copy of the planes ----
    task = make_task(useNative=True)
    out = task.run(exposure).exposure
    valid = ~np.isnan(exposure.image * exposure.variance)
    exact = (np.array_equal(out.image[valid], exposure.image[valid])
             and np.array_equal(out.mask[valid], exposure.mask[valid]))
    print(f"identity map-reduce reproduces the valid input pixels exactly: {exact}")
    del out

    def one_copy():
        return exposure.image.copy(), exposure.mask.copy(), exposure.variance.copy()

    m_task = measure(f"diffcal map-reduce, native identity ({_core.get_num_threads()} thr)",
                     lambda: task.run(exposure), args.repeats)
    m_copy = measure("numpy copy of the 3 planes", one_copy, args.repeats)
    rec_b = report(f"(b) whole map-reduce, {args.size}x{args.size} float32 (ratio < 1: slower than one copy)",
                   m_task, m_copy, None)
    npix = args.size * args.size
    budget = npix * (12 + 8 + 4) / 2**20
    print(f"\npeak memory budget (output + double plane + int32 weight plane): {budget:.0f} MiB; "
          f"measured (a) {m_ours.peak_extra_mib:.0f} MiB, (b) {m_task.peak_extra_mib:.0f} MiB, "
          f"numpy reference {m_base.peak_extra_mib:.0f} MiB")
    print(f"summary: (a) {rec_a['speedup']:.1f}x faster than the numpy per-cell loop; "
          f"(b) {m_task.median_s / m_copy.median_s:.2f}x the time of one copy")
    record = {"a": rec_a, "b": rec_b, "peak_budget_mib": budget}
    if args.json is not None:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
