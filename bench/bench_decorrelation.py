"""Non-spatial kernel decorrelation of a 4000x4072 float32 exposure (LSST CCD size):
diffcal's ``DecorrelateALKernelTask`` (C++ core) against

1. one full-image numpy ``rfft2`` + ``irfft2`` pair of the same padded size (the floor any
   FFT-based implementation pays; target: ours within 2x of it), and
2. the numpy reference implementation of the task (``diffcal.reference.decorrelate_numpy``:
   complex ``fft2`` on the reference grid, as the LSST code does).

Setup: science PSF FWHM 4.0 px, template PSF FWHM 3.0 px (25x25 Gaussian stamps), a 21x21
unit-sum Gaussian matching kernel of sigma sqrt(s_sci^2 - s_tmpl^2); white noise science
(variance 4) and template (variance 1), diffim = science - kernel * template; the variance planes
scatter by 2 % pixel to pixel (``--constant-variance``: exactly constant planes, which hit a slow
path of the clipped statistics). Both FFT-grid modes
of the task are timed: "exact" (the reference grid, 4024x4096 here: 4024 = 8 x 503 needs
Bluestein transforms) and "fast" (4032x4096). The task time includes its two clipped-mean
statistics (science and template variance; the logging-only diffim statistics are skipped
because the task does not log at INFO here).

Run: python bench/bench_decorrelation.py [--repeats 5] [--threads N] [--rows 4000 --cols 4072]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine, measure, report  # noqa: E402

from diffcal import _core  # noqa: E402
from diffcal.convolve import convolveMaskedImage  # noqa: E402
from diffcal.decorrelation import DecorrelateALKernelConfig, DecorrelateALKernelTask  # noqa: E402
from diffcal.image import Exposure  # noqa: E402
from diffcal.kernel import FixedKernel  # noqa: E402
from diffcal.psf import SIGMA_TO_FWHM, GaussianPsf  # noqa: E402
from diffcal.reference import decorrelate_numpy  # noqa: E402


def make_inputs(rows: int, cols: int, seed: int = 3, constant_variance: bool = False):
    rng = np.random.default_rng(seed)
    s_sci, s_tmpl = 4.0 / SIGMA_TO_FWHM, 3.0 / SIGMA_TO_FWHM
    svar, tvar = 4.0, 1.0

    def variance(value):
        if constant_variance:
            return np.full((rows, cols), value, np.float32)
        return (value * (1.0 + 0.02 * rng.standard_normal((rows, cols)))).astype(np.float32)

    sci = Exposure(rng.normal(0.0, math.sqrt(svar), (rows, cols)).astype(np.float32),
                   variance=variance(svar), psf=GaussianPsf(25, 25, s_sci))
    tmpl = Exposure(rng.normal(0.0, math.sqrt(tvar), (rows, cols)).astype(np.float32),
                    variance=variance(tvar), psf=GaussianPsf(25, 25, s_tmpl))
    kernel = FixedKernel(GaussianPsf(21, 21, math.sqrt(s_sci ** 2 - s_tmpl ** 2)).computeKernelImage())
    matched = convolveMaskedImage(tmpl.maskedImage, kernel)
    diffim = Exposure.fromMaskedImage(sci.maskedImage - matched, psf=sci.getPsf())
    return sci, tmpl, diffim, kernel


def numpy_pair(shape):
    a = np.random.default_rng(0).normal(size=shape)

    def run():
        return np.fft.irfft2(np.fft.rfft2(a), shape)

    return run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--cols", type=int, default=4072)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reference-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="core threads (0 = all)")
    ap.add_argument("--constant-variance", action="store_true",
                    help="exactly constant variance planes (default: 2 %% pixel-to-pixel scatter, like real data)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    _core.set_num_threads(args.threads)
    print(f"machine: {machine()}; diffcal threads: {_core.get_num_threads()}; FFT: {_core.fft_backend()}")
    sci, tmpl, diffim, kernel = make_inputs(args.rows, args.cols, constant_variance=args.constant_variance)

    tasks = {}
    for mode in ("exact", "fast"):
        config = DecorrelateALKernelConfig()
        config.fftShape = mode
        tasks[mode] = DecorrelateALKernelTask(config=config)
    out = {mode: t.run(sci, tmpl, diffim, kernel).correctedExposure for mode, t in tasks.items()}
    shapes = {mode: t.freqSpaceShape for mode, t in tasks.items()}
    print(f"FFT grids: exact {shapes['exact']}, fast {shapes['fast']}")

    # agreement with the numpy reference (exact grid) and fast-vs-exact difference
    svar, tvar = tasks["exact"].metadata["svar"], tasks["exact"].metadata["tvar"]
    kappa = kernel.computeImage()
    ref_img, ref_var, _ = decorrelate_numpy(diffim.image, sci.variance, tmpl.variance, kappa, svar, tvar,
                                            psfShape=(25, 25))
    scale = np.abs(ref_img).max()
    agree = float(np.max(np.abs(out["exact"].image - ref_img)) / scale)
    fast_diff = float(np.max(np.abs(out["fast"].image.astype(np.float64) - out["exact"].image)) / scale)
    print(f"exact vs numpy reference: max |diff| / max|ref| = {agree:.2e} (float32 output); "
          f"fast vs exact: {fast_diff:.2e}")
    del ref_img, ref_var

    records = {}
    m_ours = {mode: measure(f"diffcal task, {mode} grid {shapes[mode][0]}x{shapes[mode][1]}",
                            lambda t=t: t.run(sci, tmpl, diffim, kernel), args.repeats)
              for mode, t in tasks.items()}
    for mode in ("exact", "fast"):
        base = measure(f"numpy rfft2+irfft2 {shapes[mode][0]}x{shapes[mode][1]}", numpy_pair(shapes[mode]),
                       args.repeats)
        records[f"vs_numpy_pair_{mode}"] = report(
            f"decorrelation task ({mode} grid) vs one numpy rfft2+irfft2 pair of the same padded size",
            m_ours[mode], base)
    ref = measure("numpy reference task (complex fft2)",
                  lambda: decorrelate_numpy(diffim.image, sci.variance, tmpl.variance, kappa, svar, tvar,
                                            psfShape=(25, 25)),
                  args.reference_repeats, warmup=0)
    for mode in ("exact", "fast"):
        records[f"vs_reference_{mode}"] = report(
            f"decorrelation task ({mode} grid) vs the numpy reference implementation", m_ours[mode], ref)
    summary = {"machine": machine(), "threads": _core.get_num_threads(), "fft_grids": shapes,
               "agreement_exact_vs_reference": agree, "fast_vs_exact": fast_diff, **records}
    if args.json is not None:
        import json
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
