"""Demo steps of the foundation: a synthetic exposure with known truth, a FITS round trip, the
clipped statistics of the C++ core against the numpy reference, and a plot of the exposure."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from ..cli import CommandError
from ..plotting import plot_exposure
from ._framework import DemoContext, _median_time, _relative_difference, demo_step

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

    from ..image import Exposure


#: Origin of the synthetic exposure (non-zero on purpose: exercises parent coordinates).
DEMO_XY0 = (1000, 2000)
#: Mask planes excluded from the demo statistics.
DEMO_STATS_AND_MASK = ("BAD", "SAT", "NO_DATA")

_SKY = 800.0          # sky level (counts), subtracted from the image but in the variance
_READ_NOISE = 5.0     # counts
_PSF_SIGMA = 2.0      # pixels
_PSF_STAMP = 25       # pixels (about +-6 sigma)
_SATURATION = 60000.0  # counts above sky
_FLUX_RANGE = (500.0, 5.0e6)  # counts, log-uniform
_STARS_PER_MPIX = 400


def make_demo_exposure(size: int, rng: "np.random.Generator") -> tuple["Exposure", dict[str, Any]]:
    """Synthetic exposure with known truth.

    Gaussian stars (a :class:`~diffcal.psf.GaussianPsf`, sigma 2 px, log-uniform fluxes with
    some saturating) on a sky-subtracted background with Gaussian noise of variance
    ``sky + model + read_noise**2`` (gain 1); a variance plane estimated from the noisy raw
    pixels, ``max(raw, 0) + read_noise**2``; three hot columns masked ``BAD``; saturated pixels masked
    ``SAT`` (and clipped); pixels 5 sigma above the sky masked ``DETECTED``; a few NaN pixels in
    the image and variance planes (not masked); a TAN WCS (0.2"/px, rotated 30 deg) in parent
    coordinates; ``xy0 = DEMO_XY0``.

    Parameters
    ----------
    size : int
        Width and height in pixels (>= 64).
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    exposure : diffcal.image.Exposure
        float32 image and variance planes.
    truth : dict
        ``x``, ``y`` (parent pixels), ``flux`` (counts) arrays of the stars, the noiseless
        ``model`` image, the true noise ``variance`` (float64 arrays), and scalars (``sky``, ``read_noise``, ``psf_sigma``, ``bad_columns``,
        ``nan_pixels``, ...).
    """
    import numpy as np
    from astropy.wcs import WCS

    from ..geom import Box2I
    from ..image import Exposure, Mask
    from ..psf import GaussianPsf

    x0, y0 = DEMO_XY0
    centre = (x0 + (size - 1) / 2.0, y0 + (size - 1) / 2.0)
    psf = GaussianPsf(_PSF_STAMP, _PSF_STAMP, _PSF_SIGMA, averagePosition=centre)
    bbox = Box2I((x0, y0), dimensions=(size, size))

    n_stars = max(10, int(round(_STARS_PER_MPIX * size * size / 2**20)))
    xs = rng.uniform(x0 - 0.5, x0 + size - 0.5, n_stars)
    ys = rng.uniform(y0 - 0.5, y0 + size - 0.5, n_stars)
    fluxes = np.exp(rng.uniform(math.log(_FLUX_RANGE[0]), math.log(_FLUX_RANGE[1]), n_stars))

    model = np.zeros((size, size), dtype=np.float64)
    for x, y, flux in zip(xs, ys, fluxes):  # O(stars) stamps of 25x25; generation only
        stamp_box = psf.computeImageBBox((x, y))
        inside = stamp_box.clippedTo(bbox)
        if inside.isEmpty():
            continue
        stamp = psf.computeImage((x, y))
        model[inside.slices((x0, y0))] += flux * stamp[inside.slices(stamp_box.getMin())]

    # Raw counts (gain 1) with Poisson-like Gaussian noise plus read noise; the variance plane is
    # estimated from the noisy raw pixels, as instrument signature removal does; then the sky is
    # subtracted from the image.
    true_variance = _SKY + model + _READ_NOISE**2
    raw = _SKY + model + rng.standard_normal((size, size)) * np.sqrt(true_variance)
    variance = np.maximum(raw, 0.0) + _READ_NOISE**2
    image = raw - _SKY

    mask = Mask.fromDimensions((size, size), xy0=(x0, y0))
    bad_bit = mask.getPlaneBitMask("BAD")
    sat_bit = mask.getPlaneBitMask("SAT")
    det_bit = mask.getPlaneBitMask("DETECTED")
    m = mask.array
    m[model > 5.0 * math.sqrt(_SKY + _READ_NOISE**2)] |= det_bit
    saturated = image > _SATURATION
    m[saturated] |= sat_bit
    image[saturated] = _SATURATION

    bad_columns = np.sort(rng.choice(np.arange(8, size - 8), size=3, replace=False))
    for col in bad_columns:
        m[:, col] |= bad_bit
        image[:, col] = 5000.0 + rng.standard_normal(size) * 50.0  # a hot column
        variance[:, col] = 1.0e4

    n_nan = max(8, size * size // 20000)
    flat = rng.choice(size * size, size=n_nan, replace=False)
    nan_rows, nan_cols = np.unravel_index(flat, (size, size))
    image[nan_rows, nan_cols] = np.nan
    variance[nan_rows, nan_cols] = np.nan

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [centre[0] + 1.0, centre[1] + 1.0]  # parent pixel coordinates, FITS 1-based
    scale, angle = 0.2 / 3600.0, math.radians(30.0)
    wcs.wcs.cd = scale * np.array([[-math.cos(angle), math.sin(angle)],
                                   [math.sin(angle), math.cos(angle)]])
    wcs.wcs.set()

    exposure = Exposure(
        image.astype(np.float32), mask, variance.astype(np.float32),
        xy0=(x0, y0), psf=psf, wcs=wcs,
        metadata={"ORIGIN": "diffcal demo", "SKYLEVEL": _SKY, "RDNOISE": _READ_NOISE},
    )
    truth: dict[str, Any] = {
        "x": xs, "y": ys, "flux": fluxes, "model": model, "variance": true_variance,
        "n_stars": n_stars, "sky": _SKY, "read_noise": _READ_NOISE, "psf_sigma": _PSF_SIGMA,
        "psf_fwhm": psf.computeFwhm(), "saturation": _SATURATION,
        "bad_columns": [int(x0 + c) for c in bad_columns], "nan_pixels": n_nan,
        "saturated_pixels": int(saturated.sum()),
    }
    return exposure, truth


@demo_step("exposure", "Generating a {size}x{size} synthetic exposure (seed {seed})")
def _step_exposure(ctx: DemoContext) -> None:
    import numpy as np

    exposure, truth = make_demo_exposure(ctx.options.size, ctx.rng)
    exposure.getMetadata()["DEMOSEED"] = ctx.options.seed
    ctx.data["exposure"] = exposure
    ctx.data["truth"] = truth
    mask = exposure.maskedImage.mask
    and_mask = mask.getPlaneBitMask(list(DEMO_STATS_AND_MASK))
    # Recovered noise: residuals from the true model in units of the true noise, over the
    # finite, unmasked pixels (expect mean 0 and standard deviation 1).
    good = np.isfinite(exposure.image) & ((exposure.mask & and_mask) == 0)
    chi = (exposure.image[good] - truth["model"][good]) / np.sqrt(truth["variance"][good])
    chi_mean, chi_sigma = float(chi.mean()), float(chi.std())
    x0, y0 = exposure.getXY0()
    section = ctx.report.section("exposure")
    section.update({
        "width": exposure.getWidth(), "height": exposure.getHeight(), "xy0": [x0, y0],
        "dtype": str(exposure.dtype), "n_stars": truth["n_stars"],
        "flux_min": float(truth["flux"].min()), "flux_max": float(truth["flux"].max()),
        "psf_sigma": truth["psf_sigma"], "psf_fwhm": truth["psf_fwhm"],
        "sky": truth["sky"], "read_noise": truth["read_noise"],
        "true_sky_variance": truth["sky"] + truth["read_noise"] ** 2,
        "saturation": truth["saturation"], "saturated_pixels": truth["saturated_pixels"],
        "bad_columns": truth["bad_columns"], "nan_pixels": truth["nan_pixels"],
        "masked_pixels": int(np.count_nonzero(exposure.mask & and_mask)),
        "detected_pixels": int(np.count_nonzero(exposure.mask & mask.getPlaneBitMask("DETECTED"))),
        "noise_chi_pixels": int(chi.size), "noise_chi_mean": chi_mean, "noise_chi_sigma": chi_sigma,
        "wcs_crval_deg": [float(v) for v in exposure.getWcs().wcs.crval],
        "wcs_pixel_scale_arcsec": 0.2,
    })
    ctx.report.line(f"{truth['n_stars']} stars (flux {section['flux_min']:.3g}..{section['flux_max']:.3g}), "
                    f"GaussianPsf sigma {truth['psf_sigma']:g} px (FWHM {truth['psf_fwhm']:.3f} px), "
                    f"xy0=({x0}, {y0})")
    ctx.report.line(f"sky {truth['sky']:g} + read noise {truth['read_noise']:g}: "
                    f"variance {section['true_sky_variance']:g}; bad columns x={truth['bad_columns']}, "
                    f"{truth['nan_pixels']} NaN pixels, {truth['saturated_pixels']} saturated pixels")
    ctx.report.line(f"noise check: (image - model)/sqrt(true variance) over {chi.size} good pixels has mean "
                    f"{chi_mean:+.4f}, standard deviation {chi_sigma:.4f} (expected 0, 1)")
    ctx.report.check("noise_matches_truth", abs(chi_mean) < 0.02 and abs(chi_sigma - 1.0) < 0.02)


def _bit_exact(a: "np.ndarray", b: "np.ndarray") -> bool:
    """True if both arrays have the same shape, dtype and bytes (NaN payloads included)."""
    import numpy as np

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@demo_step("fits_roundtrip", "Writing exposure.fits and reading it back")
def _step_fits_roundtrip(ctx: DemoContext) -> None:
    import numpy as np

    from ..image import Exposure

    exposure: Exposure = ctx.data["exposure"]
    path = ctx.output / "exposure.fits"
    try:
        t0 = time.perf_counter()
        exposure.writeFits(path)
        t_write = time.perf_counter() - t0
    except OSError as exc:
        raise CommandError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    ctx.report.add_file("exposure", path, ctx.output)
    t0 = time.perf_counter()
    back = Exposure.readFits(path)
    t_read = time.perf_counter() - t0
    ctx.data["exposure_read"] = back

    planes = {
        "image": _bit_exact(exposure.image, back.image),
        "mask": _bit_exact(exposure.mask, back.mask),
        "variance": _bit_exact(exposure.variance, back.variance),
    }
    xy0_ok = tuple(back.getXY0()) == tuple(exposure.getXY0())
    planes_ok = (back.maskedImage.mask.getMaskPlaneDict()
                 == exposure.maskedImage.mask.getMaskPlaneDict())
    # WCS: sky positions of the four corners and the centre (parent coordinates), both objects.
    bbox = exposure.getBBox()
    px = np.array([bbox.getMinX(), bbox.getMaxX(), bbox.getMaxX(), bbox.getMinX(),
                   (bbox.getMinX() + bbox.getMaxX()) / 2], dtype=float)
    py = np.array([bbox.getMinY(), bbox.getMinY(), bbox.getMaxY(), bbox.getMaxY(),
                   (bbox.getMinY() + bbox.getMaxY()) / 2], dtype=float)
    sky_a = exposure.getWcs().pixel_to_world(px, py)
    wcs_b = back.getWcs()
    wcs_sep_mas = (float(sky_a.separation(wcs_b.pixel_to_world(px, py)).max().to_value("mas"))
                   if wcs_b is not None else math.inf)
    psf_b = back.getPsf()
    psf_diff = (float(np.max(np.abs(psf_b.computeKernelImage() - exposure.getPsf().computeKernelImage())))
                if psf_b is not None else math.inf)
    bit_exact = all(planes.values())
    size_mb = path.stat().st_size / 2**20

    section = ctx.report.section("fits_roundtrip")
    section.update({
        "bit_exact": bit_exact, "planes_bit_exact": planes, "xy0_preserved": xy0_ok,
        "mask_planes_preserved": planes_ok, "wcs_max_separation_mas": wcs_sep_mas,
        "psf_kernel_max_abs_diff": psf_diff, "psf_class_read": type(psf_b).__name__,
        "file_bytes": path.stat().st_size, "write_seconds": t_write, "read_seconds": t_read,
    })
    verdict = "bit-exact" if bit_exact else "MISMATCH in " + ", ".join(k for k, v in planes.items() if not v)
    ctx.report.line(f"{path.name}: {size_mb:.1f} MiB, written in {t_write:.3f} s, read in {t_read:.3f} s")
    ctx.report.line(f"image/mask/variance planes {verdict}; xy0 {'kept' if xy0_ok else 'CHANGED'}, "
                    f"mask planes {'kept' if planes_ok else 'CHANGED'}")
    ctx.report.line(f"WCS max separation {wcs_sep_mas:.2g} mas; PSF read back as "
                    f"{type(psf_b).__name__}, max |diff| {psf_diff:.2g}")
    ctx.report.check("fits_roundtrip_bit_exact", bit_exact)
    ctx.report.check("fits_roundtrip_metadata", xy0_ok and planes_ok and wcs_sep_mas < 1.0 and psf_diff < 1e-12)
    ctx.report.highlight("FITS round trip " + ("bit-exact" if bit_exact else "NOT bit-exact"))


@demo_step("clipped_statistics", "Clipped statistics of the variance plane: C++ core vs numpy")
def _step_clipped_statistics(ctx: DemoContext) -> None:
    from .. import _core
    from ..image import Exposure
    from ..reference import clipped_statistics_numpy
    from ..statistics import clippedStatistics

    exposure: Exposure = ctx.data["exposure"]
    and_mask = exposure.maskedImage.mask.getPlaneBitMask(list(DEMO_STATS_AND_MASK))
    values, mask = exposure.variance, exposure.mask
    runs = 3
    t_cpp, cpp = _median_time(lambda: clippedStatistics(values, mask, andMask=and_mask), runs)
    t_np, (np_mean, np_var) = _median_time(lambda: clipped_statistics_numpy(values, mask, and_mask), runs)
    rel_mean = _relative_difference(cpp.mean, np_mean)
    rel_var = _relative_difference(cpp.variance, np_var)
    speedup = t_np / t_cpp if t_cpp > 0 else math.inf
    threads = _core.get_num_threads()
    truth = ctx.data.get("truth", {})

    section = ctx.report.section("clipped_statistics")
    section.update({
        "plane": "variance", "dtype": str(values.dtype), "and_mask_planes": list(DEMO_STATS_AND_MASK),
        "n_sigma": 3.0, "n_iter": 3, "runs": runs, "threads": threads,
        "cpp": {"mean": cpp.mean, "variance": cpp.variance, "median": cpp.median, "iqr": cpp.iqr,
                "n_candidates": cpp.nCandidates, "n_used": cpp.nUsed, "seconds": t_cpp},
        "numpy": {"mean": np_mean, "variance": np_var, "seconds": t_np},
        "mean_relative_difference": rel_mean, "variance_relative_difference": rel_var,
        "speedup": speedup,
    })
    ctx.report.line(f"{values.shape[1]}x{values.shape[0]} {values.dtype}, mask {'|'.join(DEMO_STATS_AND_MASK)}, "
                    f"3 sigma x 3 iterations, median of {runs} runs, {threads} thread(s)")
    ctx.report.line(f"C++   mean {cpp.mean:.12g}  variance {cpp.variance:.12g}  {1e3 * t_cpp:8.2f} ms "
                    f"({cpp.nUsed} of {cpp.nCandidates} pixels kept)")
    ctx.report.line(f"numpy mean {np_mean:.12g}  variance {np_var:.12g}  {1e3 * t_np:8.2f} ms")
    if "sky" in truth:
        ctx.report.line(f"true sky variance {truth['sky'] + truth['read_noise'] ** 2:g} (stars add a little)")
    ctx.report.line(f"relative difference: mean {rel_mean:.2g}, variance {rel_var:.2g}; "
                    f"speed-up x{speedup:.1f}")
    ctx.report.check("clipped_mean_agrees", rel_mean <= 1e-12)
    ctx.report.check("clipped_variance_agrees", rel_var <= 1e-10)
    ctx.report.highlight(f"clipped statistics C++ x{speedup:.1f} vs numpy ({threads} thread(s))")


@demo_step("plot", "Plotting exposure.png")
def _step_plot(ctx: DemoContext) -> None:
    section = ctx.report.section("plot")
    try:
        import matplotlib  # noqa: F401  (optional dependency)
    except ImportError:
        section.update({"written": False, "reason": "matplotlib is not installed"})
        ctx.report.note("matplotlib is not installed: skipping exposure.png "
                        "(install it with: pip install 'diffcal[plots]')")
        return
    path = ctx.output / "exposure.png"
    exposure = ctx.data["exposure"]
    t0 = time.perf_counter()
    try:
        plot_exposure(exposure, path, title=f"diffcal demo: {exposure.getWidth()}x{exposure.getHeight()} "
                                            f"synthetic exposure, seed {ctx.options.seed}")
    except OSError as exc:
        raise CommandError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    seconds = time.perf_counter() - t0
    ctx.report.add_file("plot", path, ctx.output)
    section.update({"written": True, "seconds": seconds, "file_bytes": path.stat().st_size})
    ctx.report.line(f"{path.name}: image (asinh stretch) and mask planes, {seconds:.2f} s")
