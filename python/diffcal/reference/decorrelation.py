"""Numpy version of the non-spatial A&L kernel decorrelation (spec §2.4-2.8).

Follows the spec formulas literally with full complex ``np.fft.fft2`` transforms on the
reference's FFT grid, exactly as the reference computes them; used as the test oracle for
:mod:`diffcal.decorrelation` and as a benchmark baseline. Arrays are ``[y, x]``.

Only two choices are ours (the spec leaves them open): the NaN/Inf fill value is the mean of the
finite pixels computed in float64, and results are returned in float64 (the caller casts).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "computeCommonShape",
    "padCenterOriginArray",
    "computeDiffimCorrection",
    "computeScoreCorrection",
    "computeCorrectedImage",
    "estimateVariancePlane",
    "calculateVariancePlane",
    "decorrelate_numpy",
    "decorrelate_spatial_numpy",
]

#: Floor applied to |FFT(P)|^2 in the score correction.
_PHAT2_FLOOR = 1000.0 * np.finfo(np.float64).tiny


def computeCommonShape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """Per axis: the two largest sizes N1, N2 give N1 + N2 - 1, rounded up to even (§2.4)."""
    if not shapes:
        raise ValueError("computeCommonShape needs at least one shape")
    ndim = len(shapes[0])
    out = []
    for axis in range(ndim):
        sizes = sorted((int(s[axis]) for s in shapes), reverse=True)
        n = sizes[0] + sizes[1] - 1 if len(sizes) > 1 else sizes[0]
        out.append(n + (n % 2))
    return tuple(out)


def padCenterOriginArray(A: np.ndarray, newShape: Sequence[int], useInverse: bool = False) -> np.ndarray:
    """Origin-centred zero padding (§2.4) and its inverse crop.

    Forward: along each axis of length n, element ``n // 2`` moves to index 0, the following
    elements follow it and the first ``n // 2`` wrap to the end of the target length M.
    Inverse (``useInverse``): crop an M-long axis back to ``newShape`` so that index 0 returns to
    ``n // 2`` (roll by ``+(n // 2)``, keep the first n).
    """
    A = np.asarray(A)
    if not useInverse:
        out = np.zeros(tuple(newShape), dtype=A.dtype)
        out[tuple(slice(0, n) for n in A.shape)] = A
        for axis, n in enumerate(A.shape):
            out = np.roll(out, -(n // 2), axis=axis)
        return out
    out = A
    for axis, n in enumerate(newShape):
        out = np.roll(out, n // 2, axis=axis)
    return out[tuple(slice(0, n) for n in newShape)].copy()


def computeDiffimCorrection(kappa: np.ndarray, svar: float, tvar: float,
                            shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Difference-image correction (§2.5): ``corr = sqrt((v + vt kSum^2) / (v + vt |K|^2))``.

    Returns ``(corrft, cnft, crft)`` on the full complex grid: the real filter, the overall
    kernel spectrum on the unconvolved image (``corr``) and on the convolved one (``K corr``).
    """
    kSum = np.sum(kappa)
    kft = np.fft.fft2(padCenterOriginArray(kappa, shape))
    kft2 = np.real(np.conj(kft) * kft)
    corrft = np.sqrt((svar + tvar * kSum * kSum) / (svar + tvar * kft2))
    return corrft, corrft, kft * corrft


def computeScoreCorrection(kappa: np.ndarray, svar: float, tvar: float, preConvArr: np.ndarray,
                           shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score-image correction (§2.6): ``corr = (v + vt kSum^2) / (v + vt |K|^2 / |Phat|^2)``.

    ``|Phat|^2`` is floored at ``1000 * DBL_MIN``; ``cnft = conj(Phat) corr``, ``crft = K corr``.
    """
    kSum = np.sum(kappa)
    kft = np.fft.fft2(padCenterOriginArray(kappa, shape))
    kft2 = np.real(np.conj(kft) * kft)
    pft = np.fft.fft2(padCenterOriginArray(preConvArr, shape))
    pft2 = np.real(np.conj(pft) * pft)
    pft2 = np.where(pft2 < _PHAT2_FLOOR, _PHAT2_FLOOR, pft2)
    corrft = (svar + tvar * kSum * kSum) / (svar + tvar * kft2 / pft2)
    return corrft, np.conj(pft) * corrft, kft * corrft


def computeCorrectedImage(corrft: np.ndarray, imgArr: np.ndarray) -> np.ndarray:
    """Apply a frequency-space filter to an image (§2.7), NaN/Inf filled by the finite mean and restored."""
    img = np.array(imgArr, dtype=np.float64)
    nanMask = np.isnan(img)
    infMask = np.isinf(img)
    img[infMask] = np.nan
    finite = img[~(nanMask | infMask)]
    fill = finite.mean() if finite.size else np.nan
    img[nanMask | infMask] = fill
    shape = corrft.shape
    imgft = np.fft.fft2(padCenterOriginArray(img, shape))
    out = np.real(np.fft.ifft2(imgft * corrft))
    out = padCenterOriginArray(out, img.shape, useInverse=True)
    out[nanMask] = np.nan
    out[infMask] = np.inf
    return out


def estimateVariancePlane(vplane1: np.ndarray, vplane2: np.ndarray, c1ft: np.ndarray,
                          c2ft: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Estimated variance (§2.8): ``w1 V + w2 Vt`` with ``w = sum|c|^2 / N``; returns ``(plane, w1, w2)``."""
    npix = c1ft.size
    w1 = float(np.sum(np.real(np.conj(c1ft) * c1ft)) / npix)
    w2 = float(np.sum(np.real(np.conj(c2ft) * c2ft)) / npix)
    return np.asarray(vplane1, dtype=np.float64) * w1 + np.asarray(vplane2, dtype=np.float64) * w2, w1, w2


def _propagate(vplane: np.ndarray, varMean: float, cft: np.ndarray) -> np.ndarray:
    D = np.real(np.fft.ifft2(cft))
    S = np.fft.fft2(D * D)
    v = np.array(vplane, dtype=np.float64)
    nanMask = np.isnan(v)
    infMask = np.isinf(v)
    v[nanMask | infMask] = varMean
    vft = np.fft.fft2(padCenterOriginArray(v, cft.shape))
    out = np.real(np.fft.ifft2(vft * S))
    out = padCenterOriginArray(out, v.shape, useInverse=True)
    out[nanMask] = np.nan
    out[infMask] = np.inf
    return out


def calculateVariancePlane(vplane1: np.ndarray, vplane2: np.ndarray, varMean1: float, varMean2: float,
                           c1ft: np.ndarray, c2ft: np.ndarray) -> np.ndarray:
    """Full variance propagation (§2.8): each plane convolved with its squared real-space kernel, summed."""
    return _propagate(vplane1, varMean1, c1ft) + _propagate(vplane2, varMean2, c2ft)


def decorrelate_numpy(image: np.ndarray, V: np.ndarray, Vt: np.ndarray, kappa: np.ndarray, v: float, vt: float, *,
                      preConv: np.ndarray | None = None, psfShape: Sequence[int] | None = None,
                      templateMatched: bool = True, completeVarPlanePropagation: bool = False,
                      fftShape: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Steps 9-14 of §2.3 on plain arrays.

    Parameters
    ----------
    image, V, Vt : numpy.ndarray
        Difference image, variance plane of the unconvolved image, of the convolved image.
    kappa : numpy.ndarray
        Matching kernel image (unnormalised).
    v, vt : float
        Mean variances of the unconvolved / convolved image.
    preConv : numpy.ndarray, optional
        Unit-sum pre-convolution kernel: score correction (§2.6) instead of §2.5.
    psfShape : (int, int), optional
        PSF image shape taking part in the FFT grid.
    templateMatched : bool
        False divides the variance by ``kSum^2``.
    completeVarPlanePropagation : bool
        Full propagation instead of the estimate.
    fftShape : (int, int), optional
        Override the grid (default: ``computeCommonShape``).

    Returns
    -------
    (corrected image, variance, info) with float64 planes and ``info`` holding ``fftShape``,
    ``kSum``, ``w1``, ``w2``.
    """
    shapes = []
    if preConv is not None:
        shapes.append(np.shape(preConv))
    shapes.append(np.shape(kappa))
    if psfShape is not None:
        shapes.append(tuple(psfShape))
    shapes.append(np.shape(image))
    shape = tuple(fftShape) if fftShape is not None else computeCommonShape(*shapes)
    if preConv is not None:
        corrft, cnft, crft = computeScoreCorrection(kappa, v, vt, preConv, shape)
    else:
        corrft, cnft, crft = computeDiffimCorrection(kappa, v, vt, shape)
    corrected = computeCorrectedImage(corrft, image)
    est, w1, w2 = estimateVariancePlane(V, Vt, cnft, crft)
    var = calculateVariancePlane(V, Vt, v, vt, cnft, crft) if completeVarPlanePropagation else est
    kSum = float(np.sum(kappa))
    if not templateMatched:
        var = var / (kSum * kSum)
    return corrected, var, {"fftShape": shape, "kSum": kSum, "w1": w1, "w2": w2}


def decorrelate_spatial_numpy(image: np.ndarray, sciVar: np.ndarray, sciMask: np.ndarray, tmplVar: np.ndarray,
                              tmplMask: np.ndarray, kernelImageAt, inner: np.ndarray, expanded: np.ndarray,
                              xy0: Sequence[int] = (0, 0), andMask: int = 0,
                              psfShape: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The reference's per-cell spatial decorrelation (spec §2.9.2-2.9.3), **without** its aliasing
    bug, followed by the ``average`` stitch (§1.7): for every cell, the kernel image at the
    expanded-box centre (``kernelImageAt(x, y)``, unnormalised), svar/tvar = clipped means of the
    science/template variance planes over the expanded box (``clipped_statistics_numpy``), then
    :func:`decorrelate_numpy` (complex FFTs) on the expanded box; the inner boxes are averaged.

    ``inner``/``expanded``: int64 ``(N, 4)`` arrays of ``(minX, minY, maxX, maxY)`` in parent
    coordinates; ``xy0`` the parent origin of the arrays. Returns float64 (image, variance).
    """
    from .statistics import clipped_statistics_numpy

    x0, y0 = int(xy0[0]), int(xy0[1])
    acc = np.zeros(image.shape)
    accv = np.zeros(image.shape)
    weight = np.zeros(image.shape, dtype=np.int64)
    for (ix0, iy0, ix1, iy1), (ex0, ey0, ex1, ey1) in zip(inner.tolist(), expanded.tolist()):
        es = np.s_[ey0 - y0:ey1 - y0 + 1, ex0 - x0:ex1 - x0 + 1]
        kappa = kernelImageAt(0.5 * (ex0 + ex1 + 1), 0.5 * (ey0 + ey1 + 1))
        svar = clipped_statistics_numpy(sciVar[es], sciMask[es], andMask)[0]
        tvar = clipped_statistics_numpy(tmplVar[es], tmplMask[es], andMask)[0]
        img, var, _ = decorrelate_numpy(image[es], sciVar[es], tmplVar[es], kappa, svar, tvar, psfShape=psfShape)
        sub = np.s_[iy0 - ey0:iy1 - ey0 + 1, ix0 - ex0:ix1 - ex0 + 1]
        out = np.s_[iy0 - y0:iy1 - y0 + 1, ix0 - x0:ix1 - x0 + 1]
        pi, pv = img[sub], var[sub]
        valid = ~np.isnan(pi * pv)
        acc[out] += np.where(valid, pi, 0.0)
        accv[out] += np.where(valid, pv, 0.0)
        weight[out] += valid
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, acc / weight, np.nan), np.where(weight > 0, accv / weight, np.nan)
