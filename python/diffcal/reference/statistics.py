"""Numpy version of the clipped statistics of ``diffcal.statistics`` (spec §2.2)."""

from __future__ import annotations

import numpy as np

IQR_TO_SIGMA = 0.741301109252802


def clipped_statistics_numpy(values: np.ndarray, mask: np.ndarray | None = None, andMask: int = 0,
                             nSigma: float = 3.0, nIter: int = 3) -> tuple[float, float]:
    """Return ``(MEANCLIP, VARIANCECLIP)`` computed with numpy, following spec §2.2 literally."""
    v = np.asarray(values)
    good = np.isfinite(v)
    if mask is not None and andMask:
        good &= (np.asarray(mask) & andMask) == 0
    cand = v[good].astype(np.float64)
    if cand.size == 0:
        return float("nan"), float("nan")
    q1, med, q3 = np.percentile(cand, [25.0, 50.0, 75.0])
    centre = med
    half_width = nSigma * IQR_TO_SIGMA * (q3 - q1)
    mean = var = float("nan")
    for _ in range(nIter):
        d = cand - centre
        kept = d[np.abs(d) <= half_width]
        n = kept.size
        if n == 0:
            mean = var = float("nan")
        else:
            s1 = kept.sum()
            mean = centre + s1 / n
            var = (np.dot(kept, kept) - s1 * s1 / n) / (n - 1) if n > 1 else float("nan")
        centre = mean
        half_width = nSigma * np.sqrt(var)
    return float(mean), float(var)
