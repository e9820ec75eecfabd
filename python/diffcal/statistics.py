"""Sigma-clipped image statistics (the reference's MEANCLIP / VARIANCECLIP), computed in C++.

The algorithm (spec ``mapreduce-decorrelation.md`` §2.2, afw ``Statistics`` semantics):

1. Candidates are the *finite* values whose mask bits do not intersect ``andMask``.
2. Median and quartiles of the candidates, linearly interpolated at index ``f*(n-1)``
   (numpy's default percentile method); ``IQR = Q3 - Q1``.
3. Pass 0 keeps values with ``|v - median| <= nSigma * 0.741301109252802 * IQR``; each later
   pass keeps ``|v - mean| <= nSigma * sqrt(variance)`` using the previous pass's results
   (inclusive bounds, so a constant image keeps every pixel).
4. Each pass computes the mean and the unbiased (``n - 1``) variance of the kept values in
   double precision. The result is that of pass ``nIter - 1``.

Edge cases: no candidates, or a pass that keeps nothing, gives NaN mean and variance; a pass
that keeps a single value gives a NaN variance (so the next pass keeps nothing).

The C++ implementation (``cpp/src/statistics.cpp``) is exact whatever the data and releases the
GIL. Images above 131,072 pixels: one parallel scan planned from a sample (value brackets around
the quartiles, the moments of a band every clip window contains), exact selections inside the
brackets, exact fallbacks when the sample misleads. Images of 4,096 to 131,072 pixels (e.g. the
cells of the spatial decorrelation): a bucket sort of the candidates' order-preserving integer
keys, the quartiles selected inside the buckets holding their ranks, each clipping pass from the
moments of the buckets inside its window plus the values of the two buckets that straddle its
ends (about 3.6 ns per pixel, single-threaded). Smaller images: a compact copy and direct
selections. Results are bit-identical for any thread count.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from . import _core

__all__ = [
    "ClippedStatistics",
    "clippedStatistics",
    "clippedMean",
    "clippedVariance",
    "quantile",
    "IQR_TO_SIGMA",
]

#: Factor converting an interquartile range to a Gaussian standard deviation.
IQR_TO_SIGMA = 0.741301109252802


@dataclasses.dataclass(frozen=True)
class ClippedStatistics:
    """Result of :func:`clippedStatistics`.

    Attributes
    ----------
    mean : float
        Clipped mean (MEANCLIP), in the units of the input values.
    variance : float
        Clipped unbiased variance (VARIANCECLIP), in units squared.
    median : float
        Median of all candidates (before clipping).
    iqr : float
        Interquartile range of all candidates.
    nCandidates : int
        Number of finite, unmasked values.
    nUsed : int
        Number of values kept by the last clipping pass.
    """

    mean: float
    variance: float
    median: float
    iqr: float
    nCandidates: int
    nUsed: int


def _as_values(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype not in (np.float32, np.float64):
        if arr.dtype.kind in "iub":
            arr = arr.astype(np.float64)
        else:
            raise TypeError(f"values must be a real float32/float64 (or integer) array, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"values must be 1-D or 2-D, got {arr.ndim} dimensions (shape {arr.shape})")
    return arr


def _as_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(getattr(mask, "array", mask))
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} differs from values shape {shape}")
    if m.dtype != np.int32:
        if m.dtype.kind not in "iu":
            raise TypeError(f"mask must be an integer array, got dtype {m.dtype}")
        if m.size and (m.min() < np.iinfo(np.int32).min or m.max() > np.iinfo(np.uint32).max):
            raise ValueError("mask values do not fit in 32 bits")
        m = m.astype(np.int64).astype(np.uint32).view(np.int32)
    return m


def _and_mask_value(andMask: int) -> int:
    value = int(andMask)
    if not -(2**31) <= value < 2**32:
        raise ValueError(f"andMask {andMask!r} does not fit in 32 bits")
    return value - 2**32 if value >= 2**31 else value


def clippedStatistics(
    values: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    andMask: int = 0,
    nSigma: float = 3.0,
    nIter: int = 3,
) -> ClippedStatistics:
    """Sigma-clipped mean and variance with the reference's MEANCLIP semantics.

    Parameters
    ----------
    values : numpy.ndarray
        1-D or 2-D float32/float64 array (integer arrays are converted to float64). Not copied:
        strided views are read in place. NaN and +-Inf are never candidates.
    mask : numpy.ndarray or diffcal.image.Mask, optional
        Integer bit mask of the same shape (int32 is used without a copy).
    andMask : int
        Bits that exclude a pixel (e.g. ``mask.getPlaneBitMask(["BAD", "SAT"])``).
    nSigma : float
        Clip half-width in standard deviations (> 0). Reference: 3.
    nIter : int
        Number of clipping passes (>= 1). Reference: 3.

    Returns
    -------
    ClippedStatistics

    Raises
    ------
    TypeError
        Complex, boolean-free non-numeric arrays or a non-integer mask.
    ValueError
        Shape mismatch, non-positive ``nSigma`` or ``nIter < 1``.
    """
    arr = _as_values(values)
    m = _as_mask(mask, arr.shape)
    if not np.isfinite(nSigma) or nSigma <= 0:
        raise ValueError(f"nSigma must be positive and finite, got {nSigma!r}")
    if int(nIter) != nIter or nIter < 1:
        raise ValueError(f"nIter must be an integer >= 1, got {nIter!r}")
    r = _core.clipped_statistics(arr, m, _and_mask_value(andMask), float(nSigma), int(nIter))
    return ClippedStatistics(r.mean, r.variance, r.median, r.iqr, r.n_candidates, r.n_used)


def clippedMean(values: np.ndarray, mask: np.ndarray | None = None, **kwargs) -> float:
    """Clipped mean (MEANCLIP); keyword arguments as :func:`clippedStatistics`."""
    return clippedStatistics(values, mask, **kwargs).mean


def clippedVariance(values: np.ndarray, mask: np.ndarray | None = None, **kwargs) -> float:
    """Clipped variance (VARIANCECLIP); keyword arguments as :func:`clippedStatistics`."""
    return clippedStatistics(values, mask, **kwargs).variance


def quantile(values: np.ndarray, fraction: float | Iterable[float], mask: np.ndarray | None = None,
             *, andMask: int = 0) -> float | np.ndarray:
    """Exact quantile(s) of the finite, unmasked values (numpy's "linear" method).

    ``fraction`` is in [0, 1]; a sequence returns an array. NaN when there are no candidates.
    """
    arr = _as_values(values)
    m = _as_mask(mask, arr.shape)
    am = _and_mask_value(andMask)
    if np.ndim(fraction) == 0:
        return _core.quantile(arr, float(fraction), m, am)
    return np.array([_core.quantile(arr, float(f), m, am) for f in np.asarray(fraction, dtype=float)])
