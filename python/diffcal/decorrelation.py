"""Alard-Lupton kernel decorrelation of difference images (ip_diffim ``imageDecorrelation``).

An A&L difference image ``D = S - kappa * T`` (science minus the template convolved with the
matching kernel ``kappa``) has correlated noise: its noise power spectrum is
``v + vt |K(f)|^2`` (``v``, ``vt`` the mean variances of the unconvolved and convolved images,
``K`` the kernel spectrum). :class:`DecorrelateALKernelTask` multiplies the spectrum of ``D`` by

    ``corr(f) = sqrt((v + vt kSum^2) / (v + vt |K(f)|^2))``

which makes the noise white with variance ``v + vt kSum^2`` (DMTN-021), or, in ``preConvMode``,
by the score-image filter of DMTN-179. The numerics run in C++ (``diffcal._core``): real-to-complex
FFTs on the reference's zero-padded grid, double precision throughout. Spec:
``spec/mapreduce-decorrelation.md`` §2.1-2.8; §2.9, the spatially varying path
(:class:`DecorrelateALKernelSpatialTask`, :class:`DecorrelateALKernelMapper`), is at the end of this
file, with its own list of differences from the reference (no aliasing of the input, §2.9.4).

Conventions: arrays ``[y, x]``; kernel images have their centre pixel at
``((w - 1) // 2, (h - 1) // 2)``; positions (``xcen``, ``ycen``) are parent pixel coordinates;
variances are in image units squared.

Deliberate differences from the reference
-----------------------------------------
1. **Output not written into the input by default.** The reference overwrites the image and
   variance planes of ``subtractedExposure`` and returns that object (since 2022-05, which broke
   its own map-reduce path through aliased views). Here ``run`` returns a new exposure (mask,
   PSF, WCS, photoCalib and metadata copied from the diffim) unless ``config.inPlace = True``,
   which reproduces the in-place write (saves one image + variance plane of memory).
2. **Errors instead of silent NaNs.** Mismatched bounding boxes of science, template and
   difference image, a matching (or pre-convolution) kernel larger than the image, a missing PSF
   that the FFT sizing or ``preConvMode`` needs, and a mean variance ``v`` that is not positive
   and finite or ``vt`` that is negative or not finite raise :class:`ValueError` naming the input.
   The reference computes on and returns NaN images in the last case (except for its all-NaN
   early return, which is kept). ``vt = 0`` (a noiseless template) is accepted: the filter is then
   the identity.
3. **Mask planes resolved per exposure at run time.** ``ignoreMaskPlanes`` is looked up in each
   exposure's own mask-plane dictionary when ``run`` is called (planes a mask does not define are
   skipped), instead of the global dictionary at task construction; config edits after
   construction therefore take effect.
4. **Precision.** Everything is computed in float64 and cast once to the exposure's pixel type:
   the NaN/Inf fill value (mean of the finite pixels), the estimated variance ``w1 V + w2 Vt``
   (the reference multiplies float32 planes in float32) and the ``/kSum^2`` scaling. Differences
   are at the float32 rounding level (~1e-7 relative).
5. **FFT grid option.** ``config.fftShape = "fast"`` rounds each axis of the reference grid up to
   the even 2/3/5/7-smooth size with the lowest modelled transform cost (at most 1/16 above the next
   smooth size; e.g. 252 -> 256, since factors 7 and 5 cost more per point than a slightly larger
   power of two: ``_core.cheapest_fast_size``). Only the circular wrap-around of the correction kernel changes, so
   the outputs differ from the exact grid only within about a kernel width of the border. Stated
   tolerance, in units of the corrected noise sigma (measured on the reference test images cut to
   250 x 243): border <= 3e-5 for ``vt <= 2 v`` (measured 1.3e-5; 1e-6 for ``vt = v``) and <= 2e-3
   for a very noisy template ``vt = 100 v`` (measured 7e-4, the correction kernel is then broad);
   interior <= 1e-11 (<= 1e-8 for ``vt = 100 v``). The variance plane of the estimate differs by
   the change of ``w1``, ``w2`` (< 1e-6 relative). Default ``"exact"``.
6. **Real-to-complex transforms and grid placement.** The filter is real and even, so the image
   is transformed with real FFTs, and placed at the grid origin instead of being rolled by half
   its size (the roll commutes with the circular convolution and is undone by the crop: the same
   result up to rounding, ~1e-15 relative).
7. **Complete variance propagation** sums the two propagated planes in frequency space (one
   inverse FFT instead of two); NaN/Inf are restored exactly as the reference does per plane.
8. **PSF for sizing.** The PSF image is only used for its shape (the PSF correction is disabled
   in the reference, DM-47461). If evaluating it at ``(xcen, ycen)`` fails, the PSF's average
   position is used instead of the reference's 10^4-point ``computeAveragePsf`` fallback.
9. **Statistics.** ``svar``, ``tvar``, ``w1``, ``w2``, ``kSum``, the maximum correction and the
   FFT grid are recorded in the task metadata (the reference only logs them). The clipped
   variance means of the difference image before and after the correction, which the reference
   computes only to log them, are computed only when the task's logger is enabled for INFO (and
   then logged and recorded as ``varianceMeanBefore`` / ``varianceMeanAfter``): two full-image
   statistics passes saved in batch use. Warnings (all-NaN input, ``vt/v > 1e8``) go to the task
   log as in the reference.
10. **Mixed pixel types.** If the science or template variance plane has a different dtype than
    the difference image, it is converted (copied) to the difference image's dtype first.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np

from . import _core
from .geom import Box2I
from .image import Exposure, Mask, MaskedImage
from .kernel import Kernel
from .mapreduce import ImageMapper, ImageMapReduceConfig, ImageMapReduceTask
from .pipe import ChoiceField, Config, ConfigField, ConfigurableField, Field, ListField, Struct, Task, timeMethod
from .statistics import clippedStatistics

__all__ = [
    "DecorrelateALKernelConfig",
    "DecorrelateALKernelTask",
    "DecorrelateALKernelMapper",
    "DecorrelateALKernelMapReduceConfig",
    "DecorrelateALKernelSpatialConfig",
    "DecorrelateALKernelSpatialTask",
    "DEFAULT_IGNORE_MASK_PLANES",
]

#: Mask planes excluded from the clipped variance means by default (reference order).
DEFAULT_IGNORE_MASK_PLANES: tuple[str, ...] = (
    "INTRP", "EDGE", "DETECTED", "SAT", "CR", "BAD", "NO_DATA", "DETECTED_NEGATIVE",
)

#: Above this ratio vt / v the correction diverges (the reference warns).
_VARIANCE_RATIO_WARNING = 1e8



def _checkDecorrelationInputs(scienceExposure: Any, templateExposure: Any, subtractedExposure: Any,
                              psfMatchingKernel: Any, preConvKernel: Any, templateMatched: bool,
                              preConvMode: bool) -> Box2I:
    """Validate the arguments shared by the decorrelation tasks; return the diffim bbox.

    Raises ValueError for ``preConvKernel`` without ``templateMatched and preConvMode`` (as the
    reference) and for mismatched bounding boxes, TypeError for arguments of the wrong type.
    """
    if preConvKernel is not None and not (templateMatched and preConvMode):
        raise ValueError("preConvKernel is only allowed with templateMatched=True and preConvMode=True")
    for name, exp in (("scienceExposure", scienceExposure), ("templateExposure", templateExposure),
                      ("subtractedExposure", subtractedExposure)):
        if not isinstance(exp, Exposure):
            raise TypeError(f"{name} must be a diffcal.image.Exposure, got {type(exp).__name__}")
    bbox = subtractedExposure.getBBox()
    for name, exp in (("scienceExposure", scienceExposure), ("templateExposure", templateExposure)):
        if exp.getBBox() != bbox:
            raise ValueError(f"{name} bounding box {exp.getBBox()!r} differs from the subtractedExposure "
                             f"bounding box {bbox!r} (pass the template cut to the science bbox)")
    if not isinstance(psfMatchingKernel, Kernel):
        raise TypeError("psfMatchingKernel must be a diffcal.kernel.Kernel, got "
                        f"{type(psfMatchingKernel).__name__}")
    return bbox

class DecorrelateALKernelConfig(Config):
    """Configuration of :class:`DecorrelateALKernelTask`."""

    ignoreMaskPlanes = ListField(
        dtype=str,
        default=DEFAULT_IGNORE_MASK_PLANES,
        doc="Mask planes whose pixels are excluded from the 3-sigma clipped variance means "
            "(planes a mask does not define are skipped).",
    )
    completeVarPlanePropagation = Field(
        dtype=bool,
        default=False,
        doc="Propagate the input variance planes through the full overall kernels (convolution with "
            "the squared real-space kernels) instead of the cheap estimate w1*V + w2*Vt.",
    )
    fftShape = ChoiceField(
        dtype=str,
        default="exact",
        allowed={
            "exact": "the reference grid: per axis N1 + N2 - 1 rounded up to even (reproduces its numbers)",
            "fast": "the exact grid rounded up per axis to the cheapest even 2/3/5/7-smooth size (faster FFTs; "
                    "differs from 'exact' only near the border: <= 3e-5 of the noise sigma for vt <= 2v, "
                    "<= 2e-3 for vt = 100v; <= 1e-11 inside)",
        },
        doc="FFT grid used for the frequency-space correction (diffcal addition).",
    )
    inPlace = Field(
        dtype=bool,
        default=False,
        doc="Write the corrected image and variance into subtractedExposure and return it, like the "
            "reference (saves memory); default: return a new exposure and leave the input untouched "
            "(diffcal addition).",
    )


def _kernel_image(kernel: Any, x: float, y: float, normalize: bool, what: str) -> np.ndarray:
    """Kernel image (float64, C order) of a diffcal Kernel at (x, y), or of a 2-D array."""
    if isinstance(kernel, Kernel):
        arr = kernel.computeImage(x, y, normalize=normalize)
    elif isinstance(kernel, np.ndarray):
        arr = np.array(kernel, dtype=np.float64)
        if normalize:
            total = float(arr.sum())
            if total == 0.0 or not math.isfinite(total):
                raise ValueError(f"cannot normalise {what}: its sum is {total!r}")
            arr = arr / total
    else:
        raise TypeError(f"{what} must be a diffcal.kernel.Kernel (or a 2-D numpy array), got {type(kernel).__name__}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{what} image must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} image contains non-finite values")
    return arr


def _psf_shape(exposure: Exposure, x: float, y: float, role: str) -> tuple[int, int]:
    """Shape (rows, cols) of the exposure's PSF image at (x, y); ValueError without a PSF."""
    psf = exposure.getPsf()
    if psf is None:
        raise ValueError(
            f"the {role} exposure has no PSF; DecorrelateALKernelTask needs it to size the FFT grid "
            f"(attach one with exposure.setPsf)"
        )
    try:
        image = psf.computeKernelImage((x, y))
    except Exception:  # e.g. a stitched PSF with no component at the centre
        image = psf.computeKernelImage(psf.getAveragePosition())
    return tuple(int(n) for n in np.shape(image))  # type: ignore[return-value]


class DecorrelateALKernelTask(Task):
    """Decorrelate the noise of an Alard-Lupton difference image (non-spatial).

    See the module docstring for the algorithm and the deliberate differences from the reference.
    """

    ConfigClass = DecorrelateALKernelConfig
    _DefaultName = "ip_diffim_decorrelateALKernel"

    # --- statistics ---
    def _andMask(self, mask: Mask) -> int:
        planes = mask.getMaskPlaneDict()
        names = [name for name in self.config.ignoreMaskPlanes if name in planes]
        return mask.getPlaneBitMask(names) if names else 0

    def computeVarianceMean(self, exposure: Exposure) -> float:
        """3-sigma, 3-iteration clipped mean (MEANCLIP) of the variance plane, ignoring
        ``config.ignoreMaskPlanes`` (spec §2.2). NaN when no pixel qualifies."""
        mask = exposure.maskedImage.mask
        return clippedStatistics(exposure.variance, mask.array, andMask=self._andMask(mask),
                                 nSigma=3.0, nIter=3).mean

    # --- main entry point ---
    @timeMethod
    def run(self, scienceExposure: Exposure, templateExposure: Exposure, subtractedExposure: Exposure,
            psfMatchingKernel: Kernel, preConvKernel: Kernel | None = None, xcen: float | None = None,
            ycen: float | None = None, svar: float | None = None, tvar: float | None = None,
            templateMatched: bool = True, preConvMode: bool = False, **kwargs: Any) -> Struct:
        """Decorrelate ``subtractedExposure`` (spec §2.3).

        Parameters
        ----------
        scienceExposure : Exposure
            The original (unconvolved unless ``templateMatched`` is False) science exposure.
        templateExposure : Exposure
            The original template, warped to the science frame (same bounding box).
        subtractedExposure : Exposure
            The A&L difference image (same bounding box). Modified only if ``config.inPlace``.
        psfMatchingKernel : diffcal.kernel.Kernel
            The matching kernel; evaluated **unnormalised** at ``(xcen, ycen)``.
        preConvKernel : diffcal.kernel.Kernel, optional
            Pre-convolution kernel for ``preConvMode`` (normalised to unit sum here); default the
            science PSF's kernel at its average position. Only allowed with
            ``templateMatched=True, preConvMode=True``.
        xcen, ycen : float, optional
            Where to evaluate the kernel and PSF (parent pixels); default the centre
            ``(begin + end) / 2`` of the difference image's bounding box.
        svar, tvar : float, optional
            Mean variances of science / template (image units squared); default their clipped
            variance-plane means.
        templateMatched : bool
            True if the template was convolved (``D = S - kappa*T``); False if the science was
            (``D = (kappa*S - T)/kSum``): roles of science and template swap and the variance is
            divided by ``kSum**2``.
        preConvMode : bool
            Apply the score-image correction (the difference image was pre-convolved).
        **kwargs
            Accepted and ignored (the map-reduce framework passes extra arguments).

        Returns
        -------
        Struct
            ``correctedExposure``: the decorrelated exposure (a new one unless ``config.inPlace``).

        Raises
        ------
        ValueError
            ``preConvKernel`` without ``templateMatched and preConvMode``; mismatched bounding
            boxes; kernel larger than the image; missing PSF; bad mean variances.
        TypeError
            Arguments of the wrong type.
        """
        bbox = _checkDecorrelationInputs(scienceExposure, templateExposure, subtractedExposure,
                                         psfMatchingKernel, preConvKernel, templateMatched, preConvMode)

        # 2. matching kernel image, unnormalised, at the image centre by default
        if xcen is None:
            xcen = 0.5 * (bbox.getBeginX() + bbox.getEndX())
        if ycen is None:
            ycen = 0.5 * (bbox.getBeginY() + bbox.getEndY())
        kappa = _kernel_image(psfMatchingKernel, xcen, ycen, False, "psfMatchingKernel")
        height, width = subtractedExposure.shape
        if kappa.shape[0] > height or kappa.shape[1] > width:
            raise ValueError(f"psfMatchingKernel image shape {kappa.shape} is larger than the image shape "
                             f"{(height, width)}")

        # 3. pre-convolution kernel (unit sum)
        preConv = None
        if preConvMode:
            if preConvKernel is None:
                psf = scienceExposure.getPsf()
                if psf is None:
                    raise ValueError("preConvMode without preConvKernel needs the science exposure's PSF, "
                                     "but scienceExposure has none")
                position = psf.getAveragePosition()
                preConvKernel = psf.getLocalKernel(position)
                preConv = _kernel_image(preConvKernel, position.x, position.y, True, "preConvKernel")
            else:
                preConv = _kernel_image(preConvKernel, xcen, ycen, True, "preConvKernel")
            if preConv.shape[0] > height or preConv.shape[1] > width:
                raise ValueError(f"preConvKernel image shape {preConv.shape} is larger than the image shape "
                                 f"{(height, width)}")

        # 4. mean variances
        if svar is None:
            svar = self.computeVarianceMean(scienceExposure)
        if tvar is None:
            tvar = self.computeVarianceMean(templateExposure)
        svar, tvar = float(svar), float(tvar)
        self.log.info("Science variance mean: %f, template variance mean: %f", svar, tvar)
        self.metadata["svar"] = svar
        self.metadata["tvar"] = tvar

        # 5. all-NaN early return
        if math.isnan(svar) or math.isnan(tvar):
            if np.all(np.isnan(scienceExposure.image)) or np.all(np.isnan(templateExposure.image)):
                self.log.warning("Template or science image is entirely NaNs: skipping decorrelation.")
                return Struct(correctedExposure=subtractedExposure.clone())

        # 6. roles
        if templateMatched:
            v, vt = svar, tvar
            V, Vt = scienceExposure.variance, templateExposure.variance
            vName, vtName = "science (svar)", "template (tvar)"
            psfShape = _psf_shape(scienceExposure, xcen, ycen, "science")
        else:
            v, vt = tvar, svar
            V, Vt = templateExposure.variance, scienceExposure.variance
            vName, vtName = "template (tvar)", "science (svar)"
            psfShape = _psf_shape(templateExposure, xcen, ycen, "template")
        if not (math.isfinite(v) and v > 0.0):
            raise ValueError(f"the mean variance of the {vName} image must be positive and finite, got {v!r} "
                             f"(all variance pixels masked or NaN?)")
        if not (math.isfinite(vt) and vt >= 0.0):
            raise ValueError(f"the mean variance of the {vtName} image must be non-negative and finite, got {vt!r}")

        # 7. diverging correction
        if vt / v > _VARIANCE_RATIO_WARNING:
            self.log.warning("Diverging correction: matched image variance is much larger than the unconvolved "
                             "one: vt/v = %.3e", vt / v)

        # 8. uncorrected diffim variance: logging only in the reference, so computed only when
        # the task logs at INFO (then also recorded in the metadata)
        logStatistics = self.log.isEnabledFor(logging.INFO)
        if logStatistics:
            before = self.computeVarianceMean(subtractedExposure)
            self.log.info("Variance plane mean of uncorrected diffim: %f", before)
            self.metadata["varianceMeanBefore"] = before

        # 9-14. the correction (C++)
        dtype = subtractedExposure.image.dtype
        V = V if V.dtype == dtype else V.astype(dtype)
        Vt = Vt if Vt.dtype == dtype else Vt.astype(dtype)
        if self.config.inPlace:
            result = subtractedExposure
            outImage, outVariance = subtractedExposure.image, subtractedExposure.variance
            if outVariance.dtype != dtype:
                raise TypeError(f"inPlace: the diffim variance dtype {outVariance.dtype} differs from its image "
                                f"dtype {dtype}")
        else:
            outImage = np.empty(subtractedExposure.shape, dtype=dtype)
            outVariance = np.empty(subtractedExposure.shape, dtype=dtype)
            mi = subtractedExposure.maskedImage
            result = Exposure.fromMaskedImage(
                MaskedImage(outImage, mi.mask.clone(), outVariance, xy0=subtractedExposure.getXY0()),
                psf=copy.deepcopy(subtractedExposure.getPsf()), wcs=copy.deepcopy(subtractedExposure.getWcs()),
                photoCalib=copy.deepcopy(subtractedExposure.getPhotoCalib()),
                metadata=subtractedExposure.getMetadata().copy(),
            )
        info = _core.decorrelate_image(
            subtractedExposure.image, V, Vt, kappa, preConv, v, vt, outImage, outVariance,
            fast=self.config.fftShape == "fast",
            complete_var=bool(self.config.completeVarPlanePropagation),
            template_matched=bool(templateMatched),
            extra_shapes=[psfShape],
        )
        self.freqSpaceShape = tuple(info["fft_shape"])
        self.log.debug("Decorrelation FFT grid %s, kSum %f, w1 %f, w2 %f", self.freqSpaceShape, info["k_sum"],
                       info["w1"], info["w2"])
        for key, value in (("kSum", info["k_sum"]), ("w1", info["w1"]), ("w2", info["w2"]),
                           ("maxCorrection", info["max_corr"]), ("fftRows", int(self.freqSpaceShape[0])),
                           ("fftCols", int(self.freqSpaceShape[1]))):
            self.metadata[key] = value

        # 16. corrected variance mean (logging only, see step 8)
        if logStatistics:
            after = self.computeVarianceMean(result)
            self.log.info("Variance plane mean of corrected diffim: %f", after)
            self.metadata["varianceMeanAfter"] = after
        return Struct(correctedExposure=result)


# =============================================================================================
# Spatially varying decorrelation (DecorrelateALKernelMapper, DecorrelateALKernelMapReduceConfig,
# DecorrelateALKernelSpatialConfig, DecorrelateALKernelSpatialTask; spec §2.9) goes below this
# line. The per-cell C++ routine is diffcal::decorrelation::decorrelateImage (call it with
# DecorrelationOptions::parallel = false from inside a parallel loop over cells); from Python,
# _core.decorrelate_image(..., parallel=False).
# =============================================================================================

#: Reference grid of the spatial task, in units of the PSF FWHM (spec §2.1).
SPATIAL_GRID_DEFAULTS = {"cellSize": 41.0, "gridStep": 40.0, "borderSize": 8.0}


def _resolveKernel(alTaskResult: Any, psfMatchingKernel: Any) -> Any:
    if alTaskResult is not None and getattr(alTaskResult, "psfMatchingKernel", None) is not None:
        return alTaskResult.psfMatchingKernel
    if psfMatchingKernel is None:
        raise RuntimeError("DecorrelateALKernelMapper needs a psfMatchingKernel (or an alTaskResult carrying one)")
    return psfMatchingKernel


class DecorrelateALKernelMapper(DecorrelateALKernelTask, ImageMapper):
    """Per-cell decorrelation for :class:`~diffcal.mapreduce.ImageMapReduceTask` (spec §2.9.2).

    Each cell is decorrelated with its own kernel (the matching kernel evaluated, unnormalised,
    at the centre of the cell's *expanded* box) and its own mean variances (clipped means of the
    science/template variance planes over the expanded box); the inner box of the result is
    returned for stitching.

    Two implementations that agree bit for bit for a :class:`~diffcal.kernel.FixedKernel` (and to
    ~1e-12 relative for a :class:`~diffcal.kernel.LinearCombinationKernel`, whose evaluation sums
    in a different order):

    * :meth:`run`, the reference's Python path: one :class:`DecorrelateALKernelTask` run per cell
      on read-only views; it never writes into the input (the reference wrote into the shared
      view, spec §2.9.4);
    * :meth:`nativeMapper`: ``diffcal._core.DecorrelationCellMapper``, all cells in C++ threads
      with the GIL released (kernel evaluation from the basis images and spatial coefficients,
      statistics, filter and variance per cell). Used when the kernel is a FixedKernel or a
      LinearCombinationKernel, the pre-convolution kernel (if any) is not spatially varying and
      ``config.inPlace`` is False; otherwise :meth:`nativeMapper` returns None and :meth:`run` is
      used. The PSF image shape used to size the FFT grid is taken once (at the image centre)
      instead of per cell; the PSF classes of diffcal have a position-independent stamp size.
    """

    ConfigClass = DecorrelateALKernelConfig
    _DefaultName = "ip_diffim_decorrelateALKernelMapper"

    def run(self, subExposure: Exposure, expandedSubExposure: Exposure, fullBBox: Any, template: Exposure,
            science: Exposure, alTaskResult: Any = None, psfMatchingKernel: Kernel | None = None,
            preConvKernel: Kernel | None = None, **kwargs: Any) -> Struct:
        """Decorrelate one cell (spec §2.9.2).

        Parameters
        ----------
        subExposure, expandedSubExposure : Exposure
            The cell's inner and expanded boxes of the difference image (read-only views).
        fullBBox : Box2I
            Bounding box of the whole difference image.
        template, science : Exposure
            The full template and science exposures (same bbox as the difference image).
        alTaskResult : Struct, optional
            A result carrying ``psfMatchingKernel`` (takes precedence over ``psfMatchingKernel``).
        psfMatchingKernel : Kernel, optional
            The (possibly spatially varying) matching kernel.
        preConvKernel : Kernel, optional
            See :meth:`DecorrelateALKernelTask.run`.
        **kwargs
            ``templateMatched``, ``preConvMode`` are passed on; others ignored.

        Returns
        -------
        Struct
            ``subExposure``: the corrected inner box (a view of a new exposure).
        """
        kernel = _resolveKernel(alTaskResult, psfMatchingKernel)
        bbox = expandedSubExposure.getBBox()
        sciView, tmplView = science[bbox], template[bbox]
        kwargs = {k: v for k, v in kwargs.items() if k in ("templateMatched", "preConvMode")}
        level = self.log.getEffectiveLevel() if hasattr(self.log, "getEffectiveLevel") else None
        self.log.setLevel(logging.WARNING)           # per-cell chatter off, as the reference does
        try:
            res = DecorrelateALKernelTask.run(self, sciView, tmplView, expandedSubExposure, kernel,
                                              preConvKernel=preConvKernel, **kwargs)
        finally:
            if level is not None:
                self.log.setLevel(level)
        return Struct(subExposure=res.correctedExposure[subExposure.getBBox()])

    def nativeMapper(self, exposure: Exposure, science: Exposure | None = None, template: Exposure | None = None,
                     alTaskResult: Any = None, psfMatchingKernel: Kernel | None = None,
                     preConvKernel: Kernel | None = None, templateMatched: bool = True, preConvMode: bool = False,
                     **kwargs: Any) -> "_core.CellMapper | None":
        """``diffcal._core.DecorrelationCellMapper`` for ``exposure`` (the difference image), or None
        when the inputs need the Python path (see the class docstring). Also kept as
        ``self.lastNativeMapper`` (its ``cell_info()`` has per-cell svar, tvar, kSum, w1, w2).

        Raises
        ------
        ValueError
            ``preConvKernel`` without ``templateMatched and preConvMode``; mismatched bboxes; a missing
            PSF needed for the FFT sizing or ``preConvMode``.
        TypeError, RuntimeError
            Wrong input types; no kernel.
        """
        from .kernel import FixedKernel, LinearCombinationKernel

        self.lastNativeMapper = None
        if preConvKernel is not None and not (templateMatched and preConvMode):
            raise ValueError("preConvKernel is only allowed with templateMatched=True and preConvMode=True")
        kernel = _resolveKernel(alTaskResult, psfMatchingKernel)
        if self.config.inPlace:
            return None
        if isinstance(kernel, FixedKernel):
            basis = kernel.getArray()[np.newaxis, :, :]
            coeffs = np.ones((1, 1))
            order, function, kbox = 0, "polynomial", (0, 0, 0, 0)
        elif isinstance(kernel, LinearCombinationKernel):
            basis = kernel._basis                      # read-only float64 cube, no copy
            coeffs = kernel._coeffs
            order, function = kernel.getSpatialOrder(), kernel.getSpatialFunction()
            b = kernel.getBBox()
            kbox = (b.getMinX(), b.getMinY(), b.getMaxX(), b.getMaxY())
        else:
            return None
        if preConvKernel is not None and isinstance(preConvKernel, Kernel) and preConvKernel.isSpatiallyVarying():
            return None
        for name, exp in (("science", science), ("template", template)):
            if not isinstance(exp, Exposure):
                raise TypeError(f"{name} must be a diffcal.image.Exposure, got {type(exp).__name__}")
        bbox = exposure.getBBox()
        for name, exp in (("science", science), ("template", template)):
            if exp.getBBox() != bbox:
                raise ValueError(f"{name} bounding box {exp.getBBox()!r} differs from the difference image bounding "
                                 f"box {bbox!r}")
        xcen = 0.5 * (bbox.getBeginX() + bbox.getEndX())
        ycen = 0.5 * (bbox.getBeginY() + bbox.getEndY())
        psfShape = _psf_shape(science if templateMatched else template, xcen, ycen,
                              "science" if templateMatched else "template")
        preConv = None
        if preConvMode:
            if preConvKernel is None:
                psf = science.getPsf()
                if psf is None:
                    raise ValueError("preConvMode without preConvKernel needs the science exposure's PSF, "
                                     "but scienceExposure has none")
                position = psf.getAveragePosition()
                preConv = _kernel_image(psf.getLocalKernel(position), position.x, position.y, True, "preConvKernel")
            else:
                preConv = _kernel_image(preConvKernel, xcen, ycen, True, "preConvKernel")
        dtype = exposure.image.dtype

        def planes(exp: Exposure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            img, var = exp.image, exp.variance
            img = img if img.dtype == dtype else img.astype(dtype)
            var = var if var.dtype == dtype else var.astype(dtype)
            return img, exp.mask, var

        si, sm, sv = planes(science)
        ti, tm, tv = planes(template)
        native = _core.DecorrelationCellMapper(
            (bbox.getMinX(), bbox.getMinY(), bbox.getMaxX(), bbox.getMaxY()), si, sm, sv, ti, tm, tv,
            basis, coeffs, order, function, kbox, preConv,
            fast=self.config.fftShape == "fast",
            complete_var=bool(self.config.completeVarPlanePropagation),
            template_matched=bool(templateMatched), extra_shapes=[psfShape],
            science_and_mask=_signed32(self._andMask(science.maskedImage.mask)),
            template_and_mask=_signed32(self._andMask(template.maskedImage.mask)),
        )
        self.lastNativeMapper = native
        return native


def _signed32(value: int) -> int:
    value = int(value) & 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


class DecorrelateALKernelMapReduceConfig(ImageMapReduceConfig):
    """:class:`~diffcal.mapreduce.ImageMapReduceConfig` whose mapper is :class:`DecorrelateALKernelMapper`
    (generic grid defaults; the spatial task overrides them)."""

    mapper = ConfigurableField(
        doc="Per-cell decorrelation task.",
        target=DecorrelateALKernelMapper,
    )


class DecorrelateALKernelSpatialConfig(Config):
    """Configuration of :class:`DecorrelateALKernelSpatialTask` (spec §2.1)."""

    decorrelateConfig = ConfigField(
        dtype=DecorrelateALKernelConfig,
        doc="DecorrelateALKernelTask config, used when spatiallyVarying is False.",
    )
    decorrelateMapReduceConfig = ConfigField(
        dtype=DecorrelateALKernelMapReduceConfig,
        doc="Map-reduce config (grid in PSF FWHM units, average stitching), used when spatiallyVarying is True.",
    )
    ignoreMaskPlanes = ListField(
        dtype=str,
        default=DEFAULT_IGNORE_MASK_PLANES,
        doc="Mask planes excluded from the task's own (logging) variance statistics.",
    )

    def setDefaults(self) -> None:
        super().setDefaults()
        mr = self.decorrelateMapReduceConfig
        mr.gridStepX = mr.gridStepY = SPATIAL_GRID_DEFAULTS["gridStep"]
        mr.cellSizeX = mr.cellSizeY = SPATIAL_GRID_DEFAULTS["cellSize"]
        mr.borderSizeX = mr.borderSizeY = SPATIAL_GRID_DEFAULTS["borderSize"]
        mr.reducer.reduceOperation = "average"


class DecorrelateALKernelSpatialTask(Task):
    """Decorrelate a difference image with a spatially varying kernel (spec §2.9.1).

    ``spatiallyVarying=True`` splits the difference image into the grid of
    ``config.decorrelateMapReduceConfig`` (default: inner cells 41 x FWHM, border 8 x FWHM,
    ``spacing`` adjustment, even-sized boxes), decorrelates every cell with
    :class:`DecorrelateALKernelMapper` (natively, all cells in parallel C++ threads, when possible)
    and averages the overlapping inner boxes. ``spatiallyVarying=False`` runs one
    :class:`DecorrelateALKernelTask` with ``config.decorrelateConfig``.

    Deliberate differences from the reference
    -----------------------------------------
    1. **No aliasing (spec §2.9.4).** Every cell reads the *unmodified* difference image and writes
       a separate output; the stitched ``average`` is the real average of the overlapping cells.
       The reference decorrelated cells in place through views of its input, so overlapping cells
       were corrected twice, ``average`` reproduced the last writer, and the caller's difference
       image was overwritten. Here the input is never modified (in either mode).
    2. **Errors up front.** Mismatched bounding boxes, wrong types and ``preConvKernel`` without
       ``templateMatched and preConvMode`` raise before any work (ValueError/TypeError); a
       difference image without PSF raises ValueError when the FWHM-scaled grid needs it; a cell
       whose local mean variance is invalid raises ValueError naming the cell (the reference
       produced NaN cells).
    3. **Logging-only statistics** (full-image svar, tvar and diffim variance means, which the
       reference computes and never uses) are computed only when the logger is enabled for INFO,
       and then recorded in the metadata. Per-cell statistics of a native run are recorded as
       ``nCells``, ``svarMin/Max``, ``tvarMin/Max``, ``kSumMin/Max``, ``maxCorrection``.
    4. The result always has both ``exposure`` and ``correctedExposure`` (the same object), also
       for ``spatiallyVarying=False`` (the reference returns only ``correctedExposure`` there).
    5. The stitched PSF is a :class:`~diffcal.psf.GridPsf` of the difference image's PSF (the
       reference: a CoaddPsf of it); the mask is the input difference image's mask, as in the
       reference, which overwrites the reducer's flags.
    """

    ConfigClass = DecorrelateALKernelSpatialConfig
    _DefaultName = "ip_diffim_decorrelateALKernelSpatial"

    def computeVarianceMean(self, exposure: Exposure) -> float:
        """Clipped mean of the variance plane ignoring ``config.ignoreMaskPlanes`` (spec §2.2)."""
        mask = exposure.maskedImage.mask
        planes = mask.getMaskPlaneDict()
        names = [n for n in self.config.ignoreMaskPlanes if n in planes]
        andMask = mask.getPlaneBitMask(names) if names else 0
        return clippedStatistics(exposure.variance, mask.array, andMask=andMask, nSigma=3.0, nIter=3).mean

    @timeMethod
    def run(self, scienceExposure: Exposure, templateExposure: Exposure, subtractedExposure: Exposure,
            psfMatchingKernel: Kernel, spatiallyVarying: bool = True, preConvKernel: Kernel | None = None,
            templateMatched: bool = True, preConvMode: bool = False) -> Struct:
        """Decorrelate ``subtractedExposure`` (spec §2.9.1).

        Parameters
        ----------
        scienceExposure, templateExposure : Exposure
            Original science and (warped) template, same bbox as the difference image.
        subtractedExposure : Exposure
            The A&L difference image; never modified. Needs a PSF when ``spatiallyVarying`` and
            the grid is scaled by the FWHM (the default).
        psfMatchingKernel : Kernel
            The matching kernel (FixedKernel or a spatially varying LinearCombinationKernel).
        spatiallyVarying : bool
            Map-reduce over the grid (True) or one kernel for the whole image (False).
        preConvKernel, templateMatched, preConvMode
            See :meth:`DecorrelateALKernelTask.run`.

        Returns
        -------
        Struct
            ``correctedExposure`` and ``exposure``: the decorrelated exposure (a new one).

        Raises
        ------
        ValueError, TypeError, RuntimeError
            See the class docstring.
        """
        _checkDecorrelationInputs(scienceExposure, templateExposure, subtractedExposure,
                                  psfMatchingKernel, preConvKernel, templateMatched, preConvMode)

        logStatistics = self.log.isEnabledFor(logging.INFO)
        if logStatistics:
            svar = self.computeVarianceMean(scienceExposure)
            tvar = self.computeVarianceMean(templateExposure)
            before = self.computeVarianceMean(subtractedExposure)
            self.log.info("Science variance mean: %f, template variance mean: %f", svar, tvar)
            self.log.info("Variance plane mean of uncorrected diffim: %f", before)
            for key, value in (("svar", svar), ("tvar", tvar), ("varianceMeanBefore", before)):
                self.metadata[key] = value

        if spatiallyVarying:
            mrTask = ImageMapReduceTask(config=self.config.decorrelateMapReduceConfig)
            results = mrTask.run(subtractedExposure, science=scienceExposure, template=templateExposure,
                                 psfMatchingKernel=psfMatchingKernel, preConvKernel=preConvKernel,
                                 forceEvenSized=True, templateMatched=templateMatched, preConvMode=preConvMode,
                                 keepInputMask=True)
            corrected = results.exposure
            # the reference overwrites the stitched mask with the input diffim mask; the native
            # path writes that mask directly (the cells pass the diffim mask through)
            if not getattr(results, "maskFromInput", False):
                corrected.maskedImage.mask = subtractedExposure.maskedImage.mask.clone()
            native = getattr(mrTask.mapper, "lastNativeMapper", None)
            self.metadata["nCells"] = int(mrTask.metadata["nCells"])
            self.metadata["native"] = native is not None
            if native is not None:
                info = native.cell_info()
                vals = info["values"]
                if len(vals):
                    cols = {c: vals[:, i] for i, c in enumerate(info["columns"])}
                    for key, col in (("svar", "svar"), ("tvar", "tvar"), ("kSum", "kSum")):
                        self.metadata[key + "Min"] = float(np.min(cols[col]))
                        self.metadata[key + "Max"] = float(np.max(cols[col]))
                    self.metadata["maxCorrection"] = float(np.max(cols["maxCorr"]))
                    self.metadata["nSkippedCells"] = int(np.count_nonzero(info["skipped"]))
                    if np.any(info["skipped"]):
                        self.log.warning("%d cell(s) left uncorrected: template or science entirely NaN there",
                                         int(np.count_nonzero(info["skipped"])))
        else:
            task = DecorrelateALKernelTask(config=self.config.decorrelateConfig)
            corrected = task.run(scienceExposure, templateExposure, subtractedExposure, psfMatchingKernel,
                                 preConvKernel=preConvKernel, templateMatched=templateMatched,
                                 preConvMode=preConvMode).correctedExposure
        if logStatistics:
            after = self.computeVarianceMean(corrected)
            self.log.info("Variance plane mean of corrected diffim: %f", after)
            self.metadata["varianceMeanAfter"] = after
        return Struct(exposure=corrected, correctedExposure=corrected)
