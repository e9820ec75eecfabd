"""``diffcal decorrelate`` and ``diffcal simulate pair`` (registered from :mod:`diffcal.cli`).

``diffcal decorrelate --science S.fits --template T.fits --diffim D.fits --kernel K.fits
[--spatial] [--template-psf-sigma F] [--science-psf-sigma F] [-c field=value ...] [-C config.py]
-o OUT.fits [--plot OUT.png]``
    Decorrelate an A&L difference image with :class:`~diffcal.decorrelation.DecorrelateALKernelSpatialTask`
    (``--spatial``: the map-reduce path, else one kernel for the image). The PSFs come from the
    files' PSF HDU unless given as Gaussian sigmas (pixels); the kernel is read with
    :func:`diffcal.kernel.readKernelFits`. ``-C`` loads a config file (pex_config ``config.load``)
    and ``-c`` sets fields of :class:`~diffcal.decorrelation.DecorrelateALKernelSpatialConfig`
    (dotted names, e.g. ``-c decorrelateMapReduceConfig.cellSizeX=20``; values parsed as Python
    literals, else taken as strings), applied after ``-C``. ``--plot`` writes a diagnostic PNG
    (noise lag correlation and azimuthally averaged power spectrum, before and after).

``diffcal simulate pair OUTDIR [--size N] [--seed S]``
    Write ``science.fits``, ``template.fits``, ``diffim.fits``, ``kernel.fits`` and ``truth.json``:
    Gaussian PSFs (science sigma 2.0 px, template 1.4 px), the matching Gaussian kernel
    (sigma sqrt(2.0^2 - 1.4^2)), stars, white noise (science variance 1, template 4: a noisy template, so that the correlation is visible) and the
    difference ``science - kernel * template``; ``truth.json`` holds the expected corrected variance
    ``svar + tvar`` and the inputs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["add_command", "add_simulate_command", "pixelCorrelation", "radialPowerSpectrum", "simulatePair"]


# ---------------------------------------------------------------------------------------------
# diagnostics (numpy)
# ---------------------------------------------------------------------------------------------

def _centred(image: Any, edge: int) -> Any:
    import numpy as np

    a = np.asarray(image, dtype=np.float64)
    if edge > 0 and min(a.shape) > 4 * edge:
        a = a[edge:-edge, edge:-edge]
    finite = np.isfinite(a)
    out = np.where(finite, a - (a[finite].mean() if finite.any() else 0.0), 0.0)
    return out, finite


def pixelCorrelation(image: Any, maxLag: int = 5, edge: int = 16) -> Any:
    """Noise correlation coefficient at lags 0..maxLag (mean of the x and y shifts), of the image
    with an ``edge``-pixel margin removed; NaN pixels are ignored. ``[0] == 1``."""
    import numpy as np

    a, finite = _centred(image, edge)
    var = float(np.sum(a * a) / max(int(finite.sum()), 1))
    out = np.empty(maxLag + 1)
    for r in range(maxLag + 1):        # loop over a handful of lags, vectorised over pixels
        if r == 0:
            out[r] = 1.0
            continue
        px = a[:, r:] * a[:, :-r]
        py = a[r:, :] * a[:-r, :]
        nx = max(int(np.count_nonzero(finite[:, r:] & finite[:, :-r])), 1)
        ny = max(int(np.count_nonzero(finite[r:, :] & finite[:-r, :])), 1)
        out[r] = 0.5 * (px.sum() / nx + py.sum() / ny) / var if var > 0 else math.nan
    return out


def radialPowerSpectrum(image: Any, nBins: int = 40, edge: int = 16) -> tuple[Any, Any]:
    """Azimuthally averaged power spectrum ``|FFT|^2 / Npix`` (flat = white noise of that
    variance) versus spatial frequency (cycles/pixel, bin centres up to 0.5)."""
    import numpy as np

    a, _ = _centred(image, edge)
    p = np.abs(np.fft.rfft2(a)) ** 2 / a.size
    fy = np.fft.fftfreq(a.shape[0])[:, None]
    fx = np.fft.rfftfreq(a.shape[1])[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    bins = np.linspace(0.0, 0.5, nBins + 1)
    idx = np.digitize(f.ravel(), bins) - 1
    ok = (idx >= 0) & (idx < nBins)
    sums = np.bincount(idx[ok], weights=p.ravel()[ok], minlength=nBins)
    counts = np.bincount(idx[ok], minlength=nBins)
    with np.errstate(invalid="ignore", divide="ignore"):
        power = sums / counts
    return 0.5 * (bins[1:] + bins[:-1]), power


# ---------------------------------------------------------------------------------------------
# simulate pair
# ---------------------------------------------------------------------------------------------

SCIENCE_SIGMA = 2.0
TEMPLATE_SIGMA = 1.4
SCIENCE_VARIANCE = 1.0
TEMPLATE_VARIANCE = 4.0


def simulatePair(size: int = 512, seed: int = 1, nStars: int | None = None) -> dict[str, Any]:
    """A synthetic A&L pair with known truth.

    Returns a dict with ``science``, ``template``, ``diffim`` (Exposures, float32, with Gaussian
    PSFs), ``kernel`` (:class:`~diffcal.kernel.FixedKernel`, unit sum) and ``truth`` (a JSON-able dict).
    """
    import numpy as np
    from scipy.signal import fftconvolve

    from .convolve import convolveMaskedImage
    from .image import Exposure
    from .kernel import FixedKernel
    from .psf import GaussianPsf

    rng = np.random.default_rng(seed)
    n = int(size)
    nStars = int(nStars if nStars is not None else max(5, n * n // 4000))
    sky = np.zeros((n, n))
    ys, xs = rng.integers(8, n - 8, nStars), rng.integers(8, n - 8, nStars)
    np.add.at(sky, (ys, xs), rng.uniform(200.0, 20000.0, nStars))
    psfS, psfT = GaussianPsf(25, 25, SCIENCE_SIGMA), GaussianPsf(25, 25, TEMPLATE_SIGMA)
    science = fftconvolve(sky, psfS.computeKernelImage(), mode="same") + rng.normal(0, math.sqrt(SCIENCE_VARIANCE), (n, n))
    template = fftconvolve(sky, psfT.computeKernelImage(), mode="same") + rng.normal(0, math.sqrt(TEMPLATE_VARIANCE), (n, n))
    kSigma = math.sqrt(SCIENCE_SIGMA ** 2 - TEMPLATE_SIGMA ** 2)
    kernel = FixedKernel(GaussianPsf(21, 21, kSigma).computeKernelImage())
    f32 = np.float32
    sci = Exposure(science.astype(f32), variance=np.full((n, n), SCIENCE_VARIANCE, f32), psf=psfS)
    tmpl = Exposure(template.astype(f32), variance=np.full((n, n), TEMPLATE_VARIANCE, f32), psf=psfT)
    matched = convolveMaskedImage(tmpl.maskedImage, kernel, doNormalize=False, doCopyEdge=True)
    diffim = Exposure.fromMaskedImage(sci.maskedImage - matched, psf=psfS)
    truth = {
        "size": n, "seed": int(seed), "nStars": nStars,
        "scienceSigma": SCIENCE_SIGMA, "templateSigma": TEMPLATE_SIGMA, "kernelSigma": kSigma,
        "scienceVariance": SCIENCE_VARIANCE, "templateVariance": TEMPLATE_VARIANCE,
        "expectedCorrectedVariance": SCIENCE_VARIANCE + TEMPLATE_VARIANCE * float(kernel.getArray().sum()) ** 2,
    }
    return {"science": sci, "template": tmpl, "diffim": diffim, "kernel": kernel, "truth": truth}


def _run_simulate_pair(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"simulating a {args.size}x{args.size} pair (seed {args.seed})", flush=True)
    pair = simulatePair(args.size, args.seed)
    for name in ("science", "template", "diffim"):
        pair[name].writeFits(out / f"{name}.fits")
        print(f"  wrote {out / (name + '.fits')}", flush=True)
    pair["kernel"].writeFits(out / "kernel.fits")
    print(f"  wrote {out / 'kernel.fits'}", flush=True)
    tmp = out / f".truth.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(pair["truth"], indent=2) + "\n")
    os.replace(tmp, out / "truth.json")
    print(f"simulate pair: {args.size}x{args.size}, {pair['truth']['nStars']} stars, expected corrected variance "
          f"{pair['truth']['expectedCorrectedVariance']:.4g} -> {out} ({time.perf_counter() - t0:.2f} s)")
    return 0


# ---------------------------------------------------------------------------------------------
# decorrelate
# ---------------------------------------------------------------------------------------------

def _parse_value(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _apply_override(config: Any, item: str) -> None:
    from .cli import CommandError

    if "=" not in item:
        raise CommandError(f"-c {item!r}: expected field=value")
    name, _, value = item.partition("=")
    parts = name.strip().split(".")
    target = config
    try:
        for p in parts[:-1]:
            target = getattr(target, p)
        if not hasattr(target, parts[-1]):
            raise AttributeError(parts[-1])
        setattr(target, parts[-1], _parse_value(value.strip()))
    except AttributeError:
        raise CommandError(f"-c {item!r}: DecorrelateALKernelSpatialConfig has no field {name.strip()!r}") from None
    except Exception as exc:
        raise CommandError(f"-c {item!r}: {exc}") from None


def _read_exposure(path: str, role: str, sigma: float | None) -> Any:
    from .cli import CommandError
    from .image import Exposure
    from .psf import GaussianPsf

    if not Path(path).is_file():
        raise CommandError(f"--{role}: no such file: {path}")
    exp = Exposure.readFits(path)
    if sigma is not None:
        half = max(3, int(math.ceil(5.0 * sigma)))
        exp.setPsf(GaussianPsf(2 * half + 1, 2 * half + 1, sigma))
    return exp


def _positive_float(name: str) -> Any:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{name} must be positive and finite, got {text!r}")
        return value
    return convert


def _run_decorrelate(args: argparse.Namespace) -> int:
    import numpy as np

    from .cli import CommandError
    from .decorrelation import DecorrelateALKernelSpatialConfig, DecorrelateALKernelSpatialTask
    from .kernel import readKernelFits
    from .statistics import clippedStatistics

    t0 = time.perf_counter()
    config = DecorrelateALKernelSpatialConfig()
    if args.config_file:
        if not Path(args.config_file).is_file():
            raise CommandError(f"-C: no such file: {args.config_file}")
        config.load(args.config_file)
    for item in args.config or ():
        _apply_override(config, item)
    try:
        config.validate()
    except Exception as exc:
        raise CommandError(f"invalid configuration: {exc}") from None

    print(f"reading science {args.science}", flush=True)
    science = _read_exposure(args.science, "science", args.science_psf_sigma)
    print(f"reading template {args.template}", flush=True)
    template = _read_exposure(args.template, "template", args.template_psf_sigma)
    print(f"reading difference image {args.diffim}", flush=True)
    diffim = _read_exposure(args.diffim, "diffim", None)
    if diffim.getPsf() is None and science.getPsf() is not None:
        diffim.setPsf(science.getPsf())        # the A&L diffim has the science PSF
    if not Path(args.kernel).is_file():
        raise CommandError(f"--kernel: no such file: {args.kernel}")
    kernel = readKernelFits(args.kernel)
    print(f"kernel {type(kernel).__name__} {kernel.getWidth()}x{kernel.getHeight()}, "
          f"{'spatially varying' if kernel.isSpatiallyVarying() else 'constant'}", flush=True)

    task = DecorrelateALKernelSpatialTask(config=config)
    mode = "spatial (map-reduce)" if args.spatial else "whole image"
    print(f"decorrelating {diffim.getWidth()}x{diffim.getHeight()} ({mode})", flush=True)
    t1 = time.perf_counter()
    try:
        result = task.run(science, template, diffim, kernel, spatiallyVarying=args.spatial)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CommandError(f"decorrelation failed: {exc}") from None
    elapsed = time.perf_counter() - t1
    corrected = result.correctedExposure
    out = Path(args.output)
    if out.parent and not out.parent.exists():
        raise CommandError(f"-o: directory does not exist: {out.parent}")
    corrected.writeFits(out)
    print(f"wrote {out}", flush=True)

    mask = corrected.maskedImage.mask
    andMask = mask.getPlaneBitMask([p for p in config.ignoreMaskPlanes if p in mask.getMaskPlaneDict()])
    before = clippedStatistics(diffim.image, diffim.mask, andMask=andMask)
    after = clippedStatistics(corrected.image, corrected.mask, andMask=andMask)
    plane = clippedStatistics(corrected.variance, corrected.mask, andMask=andMask)
    rho0 = pixelCorrelation(diffim.image, 1)[1]
    rho1 = pixelCorrelation(corrected.image, 1)[1]
    if args.plot:
        from .plotting import plot_decorrelation

        try:
            plot_decorrelation(diffim, corrected, Path(args.plot), title=f"diffcal decorrelate: {Path(args.diffim).name}")
            print(f"wrote {args.plot}", flush=True)
        except ImportError:
            raise CommandError("--plot needs matplotlib (pip install matplotlib)") from None
    ncells = task.metadata["nCells"] if "nCells" in task.metadata else 1
    print(f"decorrelate: {mode}, {ncells} cell(s), {elapsed:.2f} s; pixel variance {before.variance:.4g} -> "
          f"{after.variance:.4g} (variance plane {plane.mean:.4g}); lag-1 correlation {rho0:.3f} -> {rho1:.3f}; "
          f"total {time.perf_counter() - t0:.2f} s -> {out}")
    if not np.isfinite(after.variance):
        raise CommandError("the corrected image has no valid pixels")
    return 0


def add_command(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``decorrelate`` and ``simulate`` (with ``pair``) to the ``diffcal`` parser."""
    p = subparsers.add_parser(
        "decorrelate", parents=[common], help="decorrelate the noise of an A&L difference image",
        description="Remove the pixel-to-pixel noise correlation that an Alard-Lupton matching kernel "
                    "puts into a difference image (DecorrelateALKernelSpatialTask).",
    )
    p.add_argument("--science", required=True, metavar="S.fits", help="science exposure (unconvolved)")
    p.add_argument("--template", required=True, metavar="T.fits", help="template exposure (warped, unconvolved)")
    p.add_argument("--diffim", required=True, metavar="D.fits", help="A&L difference image")
    p.add_argument("--kernel", required=True, metavar="K.fits", help="matching kernel (diffcal kernel FITS)")
    p.add_argument("--spatial", action="store_true",
                   help="spatially varying decorrelation on a grid of cells (default: one kernel for the image)")
    p.add_argument("--template-psf-sigma", type=_positive_float("--template-psf-sigma"), default=None, metavar="F",
                   help="use a Gaussian template PSF of this sigma (pixels) instead of the file's PSF HDU")
    p.add_argument("--science-psf-sigma", type=_positive_float("--science-psf-sigma"), default=None, metavar="F",
                   help="use a Gaussian science PSF of this sigma (pixels) instead of the file's PSF HDU")
    p.add_argument("-c", "--config", action="append", metavar="field=value",
                   help="set a DecorrelateALKernelSpatialConfig field (repeatable)")
    p.add_argument("-C", "--config-file", metavar="config.py", help="load a config override file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.fits", help="output exposure")
    p.add_argument("--plot", metavar="OUT.png", help="write a diagnostic PNG (needs matplotlib)")
    p.set_defaults(func=_run_decorrelate)
    add_simulate_command(subparsers, common)


def add_simulate_command(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``diffcal simulate pair`` (``simulate survey`` can be added to the same sub-parser)."""
    from .cli import _int_in_range

    p = subparsers.add_parser("simulate", parents=[common], help="write synthetic data with known truth",
                              description="Write synthetic inputs with known truth.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", title="kinds")
    kinds.required = True
    pair = kinds.add_parser("pair", parents=[common], help="science, template, diffim and kernel FITS",
                            description="Write science.fits, template.fits, diffim.fits, kernel.fits and truth.json.")
    pair.add_argument("outdir", metavar="OUTDIR", help="output directory (created if needed)")
    pair.add_argument("--size", type=_int_in_range("size", 64, 16384), default=512, metavar="N",
                      help="width and height in pixels (64..16384, default 512)")
    pair.add_argument("--seed", type=_int_in_range("seed", 0), default=1, metavar="S",
                      help="random seed (default 1)")
    pair.set_defaults(func=_run_simulate_pair)
