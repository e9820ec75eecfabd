"""Point-spread functions (PSFs), second-moment shapes and adaptive moments.

Conventions
-----------
* Images are numpy arrays indexed ``[y, x]`` (row, column), dtype float64.
* A PSF stamp of ``width x height`` pixels has its *centre pixel* at
  ``ctr = ((width - 1) // 2, (height - 1) // 2)`` (array column, row): the LSST afw kernel-centre
  convention. For odd sizes this is the geometric centre; for even sizes it is the lower of the two
  middle pixels (e.g. pixel 15 of a 32-pixel stamp). Even sizes are allowed.
* :meth:`Psf.computeKernelImage` returns the profile centred exactly on ``ctr`` ("kernel image": its
  pixel ``ctr`` corresponds to offset (0, 0)).
* :meth:`Psf.computeImage` returns the profile centred on a position in *parent* pixel coordinates
  (integer values are pixel centres, see :mod:`diffcal.geom`): the stamp is placed so that the pixel
  nearest the position, ``(floor(x + 0.5), floor(y + 0.5))``, sits at ``ctr``, and the profile inside the
  stamp is shifted by the sub-pixel residual ``x - floor(x + 0.5)`` in ``[-0.5, 0.5)``.
  :meth:`Psf.computeImageBBox` gives the parent-coordinate box of that stamp.
* Every image returned is a fresh float64 array normalised to unit sum.
* Shapes are :class:`Quadrupole` second moments ``(ixx, iyy, ixy)`` in pixels squared.

The FWHM used by the map-reduce grid (see ``spec/mapreduce-decorrelation.md`` section 1.5) is
``determinant radius * 2 sqrt(2 ln 2)`` of ``psf.computeShape(psf.getAveragePosition())``; it is
exposed as :meth:`Psf.computeFwhm`.

Subclassing
-----------
A concrete PSF implements :meth:`Psf.getKernelDimensions` and :meth:`Psf._doComputeKernelImage`
(and may override :meth:`Psf._doComputeImage` for an exact sub-pixel evaluation,
:meth:`Psf._doComputeShape` for an analytic shape, :meth:`Psf.isSpatiallyVarying` and
:meth:`Psf._params` for equality, hashing and ``repr``).
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
import operator
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np
import numpy.typing as npt

from .errors import DiffcalError
from .geom import Box2I, Extent2I, Point2D

if TYPE_CHECKING:
    from .kernel import FixedKernel

__all__ = [
    "SIGMA_TO_FWHM",
    "Quadrupole",
    "AdaptiveMoments",
    "computeAdaptiveMoments",
    "lanczosShift",
    "Psf",
    "GaussianPsf",
    "DoubleGaussianPsf",
    "ImagePsf",
    "GridPsf",
    "PsfCoverageError",
]

#: Conversion factor from a Gaussian sigma (or determinant radius) to a FWHM: ``2 sqrt(2 ln 2)``.
SIGMA_TO_FWHM: float = 2.0 * math.sqrt(2.0 * math.log(2.0))


# ---------------------------------------------------------------------------------------------
# Small validation helpers
# ---------------------------------------------------------------------------------------------

def _as_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as a positive Python int; TypeError for non-integers, ValueError if <= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer number of pixels, got {value!r}")
    value = int(value)
    if value <= 0:
        raise ValueError(f"{name} must be a positive number of pixels, got {value}")
    return value


def _as_finite_float(value: Any, name: str) -> float:
    """Return ``value`` as a finite Python float (TypeError if not a real number)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out!r}")
    return out


def _as_point2d(position: Any, name: str = "position") -> Point2D:
    """Convert a Point2D, Point2I, (x, y) tuple/list or length-2 array to a finite Point2D."""
    try:
        if isinstance(position, (str, bytes)):
            raise TypeError
        x, y = position
        xf = _as_finite_float(x.item() if isinstance(x, np.generic) else x, f"{name}.x")
        yf = _as_finite_float(y.item() if isinstance(y, np.generic) else y, f"{name}.y")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and "finite" in str(exc):
            raise
        raise TypeError(f"{name} must be a point (x, y) of real numbers, got {position!r}") from None
    return Point2D(xf, yf)


def _as_image_array(array: Any, name: str) -> np.ndarray:
    """Copy ``array`` into a C-contiguous float64 2-D array, validating dtype, shape and finiteness."""
    arr = np.asarray(array)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer)
                                   or np.issubdtype(arr.dtype, np.floating)) \
            or arr.dtype == np.bool_:
        raise TypeError(f"{name} must hold real numbers (integer or floating dtype), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got {arr.ndim} dimension(s) with shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    out = np.array(arr, dtype=np.float64, order="C", copy=True)
    if not np.all(np.isfinite(out)):
        nbad = int(np.count_nonzero(~np.isfinite(out)))
        raise ValueError(f"{name} contains {nbad} non-finite value(s) (NaN or Inf)")
    return out


def _nearest_pixel(value: float) -> tuple[int, float]:
    """Split a coordinate into the nearest pixel index and the residual in ``[-0.5, 0.5)``."""
    index = math.floor(value + 0.5)
    return int(index), value - index


# ---------------------------------------------------------------------------------------------
# Quadrupole
# ---------------------------------------------------------------------------------------------

class Quadrupole:
    """Second moments of a 2-D profile, in pixels squared.

    Parameters
    ----------
    ixx, iyy, ixy
        ``<x^2>``, ``<y^2>`` and ``<x y>`` (pixels^2). Must be finite; the constructor does not
        require positive definiteness (differences of shapes are representable), but
        :meth:`getDeterminantRadius` and :meth:`getTraceRadius` do.

    Notes
    -----
    A circular Gaussian of standard deviation ``sigma`` has ``ixx = iyy = sigma**2``, ``ixy = 0``,
    and determinant radius ``sigma``. Instances are immutable, hashable and picklable.
    """

    __slots__ = ("_ixx", "_iyy", "_ixy")

    def __init__(self, ixx: float, iyy: float, ixy: float = 0.0) -> None:
        self._ixx = _as_finite_float(ixx, "ixx")
        self._iyy = _as_finite_float(iyy, "iyy")
        self._ixy = _as_finite_float(ixy, "ixy")

    @classmethod
    def fromMatrix(cls, matrix: npt.ArrayLike) -> "Quadrupole":
        """Build from a symmetric 2x2 matrix ``[[ixx, ixy], [ixy, iyy]]`` (pixels^2)."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (2, 2):
            raise ValueError(f"matrix must have shape (2, 2), got {m.shape}")
        if not math.isclose(m[0, 1], m[1, 0], rel_tol=1e-12, abs_tol=1e-300):
            raise ValueError(f"matrix must be symmetric, got off-diagonal {m[0, 1]!r} != {m[1, 0]!r}")
        return cls(m[0, 0], m[1, 1], 0.5 * (m[0, 1] + m[1, 0]))

    @property
    def ixx(self) -> float:
        """``<x^2>`` in pixels^2."""
        return self._ixx

    @property
    def iyy(self) -> float:
        """``<y^2>`` in pixels^2."""
        return self._iyy

    @property
    def ixy(self) -> float:
        """``<x y>`` in pixels^2."""
        return self._ixy

    def getIxx(self) -> float:
        """``<x^2>`` in pixels^2."""
        return self._ixx

    def getIyy(self) -> float:
        """``<y^2>`` in pixels^2."""
        return self._iyy

    def getIxy(self) -> float:
        """``<x y>`` in pixels^2."""
        return self._ixy

    def getMatrix(self) -> np.ndarray:
        """The symmetric 2x2 moment matrix ``[[ixx, ixy], [ixy, iyy]]`` (pixels^2, float64)."""
        return np.array([[self._ixx, self._ixy], [self._ixy, self._iyy]], dtype=np.float64)

    def getDeterminant(self) -> float:
        """``ixx * iyy - ixy**2`` (pixels^4)."""
        return self._ixx * self._iyy - self._ixy * self._ixy

    def getDeterminantRadius(self) -> float:
        """Determinant radius ``(ixx * iyy - ixy**2) ** (1/4)`` in pixels.

        Raises
        ------
        ValueError
            If the determinant is negative (not a valid shape).
        """
        det = self.getDeterminant()
        if det < 0.0:
            raise ValueError(f"determinant radius undefined for a negative determinant {det!r} ({self!r})")
        return det ** 0.25

    def getTraceRadius(self) -> float:
        """Trace radius ``sqrt((ixx + iyy) / 2)`` in pixels.

        Raises
        ------
        ValueError
            If the trace is negative.
        """
        tr = self._ixx + self._iyy
        if tr < 0.0:
            raise ValueError(f"trace radius undefined for a negative trace {tr!r} ({self!r})")
        return math.sqrt(0.5 * tr)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Quadrupole):
            return NotImplemented
        return (self._ixx, self._iyy, self._ixy) == (other._ixx, other._iyy, other._ixy)

    def __hash__(self) -> int:
        return hash(("Quadrupole", self._ixx, self._iyy, self._ixy))

    def __iter__(self):
        """Iterate as ``(ixx, iyy, ixy)``."""
        return iter((self._ixx, self._iyy, self._ixy))

    def __repr__(self) -> str:
        return f"Quadrupole(ixx={self._ixx!r}, iyy={self._iyy!r}, ixy={self._ixy!r})"

    def __reduce__(self):
        return (Quadrupole, (self._ixx, self._iyy, self._ixy))


# ---------------------------------------------------------------------------------------------
# Adaptive moments
# ---------------------------------------------------------------------------------------------

class AdaptiveMoments(NamedTuple):
    """Result of :func:`computeAdaptiveMoments`.

    Attributes
    ----------
    shape
        Adaptive second moments (pixels^2).
    centroid
        Adaptive centroid ``(x, y)`` in *array* coordinates (column, row; pixel centres are integers).
    iterations
        Number of iterations used.
    """

    shape: Quadrupole
    centroid: Point2D
    iterations: int


def computeAdaptiveMoments(image: npt.ArrayLike, *, tol: float = 1e-6, maxIter: int = 100,
                           initialSigma: float | None = None,
                           initialCentroid: Any = None) -> AdaptiveMoments:
    """Adaptive (elliptical-Gaussian-weighted) second moments of a small image.

    The weight is ``W(d) = exp(-1/2 d^T M^-1 d)`` with ``d`` the offset of a pixel centre from the
    current centre ``c`` and ``M`` the current shape estimate. Each iteration computes the weighted
    flux ``S = sum I W``, the weighted mean offset ``m = sum I W d / S`` and the weighted covariance
    about that mean ``mu = sum I W (d - m)(d - m)^T / S``. For a Gaussian profile of covariance ``C``
    the weighted profile is a Gaussian of covariance ``mu = (C^-1 + M^-1)^-1``, so the update

    ``M_new = (mu^-1 - M^-1)^-1``,  ``c_new = c + M_new mu^-1 m``

    recovers ``C`` and the true centre exactly (in the continuous limit) in one step. When
    ``mu^-1 - M^-1`` is not positive definite (non-Gaussian profiles far from convergence) the
    classical SDSS update ``M_new = 2 mu``, ``c_new = c + 2 m`` is used instead. Both updates have the
    same fixed point, ``mu = M / 2`` with ``m = 0``, so the converged result is the SdssShape-style
    self-consistent adaptive moment: for a Gaussian it equals the covariance ``C``.

    Parameters
    ----------
    image
        2-D array of finite values indexed ``[y, x]``; it should be dominated by a single positive
        source (a PSF stamp).
    tol
        Relative convergence tolerance: iteration stops when every element of ``M`` changes by less
        than ``tol * trace(M) / 2`` and the centre moves by less than ``tol * sqrt(trace(M) / 2)``.
    maxIter
        Maximum number of iterations.
    initialSigma
        Starting isotropic weight width in pixels; default: from the unweighted second moments,
        clipped to ``[0.5, min(width, height) / 2]`` pixels (1.5 if those are not usable).
    initialCentroid
        Starting centre ``(x, y)`` in array coordinates; default: the unweighted centroid if it lies
        inside the image, else the stamp centre ``((w - 1) / 2, (h - 1) / 2)``.

    Returns
    -------
    AdaptiveMoments
        The shape (pixels^2), the centroid (array coordinates) and the iteration count.

    Raises
    ------
    ValueError
        If ``image`` is not a non-empty finite 2-D real array, or the options are invalid.
    RuntimeError
        If the image is degenerate (non-positive weighted flux, zero-width profile such as a single
        pixel, centre leaving the image, weight diverging) or the iteration does not converge within
        ``maxIter`` iterations.

    Notes
    -----
    Moments are sums over pixel centres (no pixel integration). Well-sampled profiles are measured
    essentially exactly (a Gaussian of sigma >= 2 px to ~1e-12); sampling biases the result for
    sigma ~ 1 px (-0.4 % in ``ixx`` at sigma = 1) and badly undersampled profiles (sigma <~ 0.75 px,
    where the self-consistent weight collapses onto one pixel) raise ``RuntimeError``.
    """
    img = _as_image_array(image, "image")
    tol = _as_finite_float(tol, "tol")
    if tol <= 0.0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    if isinstance(maxIter, bool) or not isinstance(maxIter, numbers.Integral) or maxIter < 1:
        raise ValueError(f"maxIter must be a positive integer, got {maxIter!r}")
    h, w = img.shape
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)

    # --- starting point: unweighted moments where usable ---
    total = float(img.sum())
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    sigma2 = 1.5 ** 2
    if total > 0.0:
        colsum = img.sum(axis=0)
        rowsum = img.sum(axis=1)
        ux = float(colsum @ xs) / total
        uy = float(rowsum @ ys) / total
        if -0.5 <= ux <= w - 0.5 and -0.5 <= uy <= h - 0.5:
            cx, cy = ux, uy
        vxx = float(colsum @ (xs - ux) ** 2) / total
        vyy = float(rowsum @ (ys - uy) ** 2) / total
        if math.isfinite(vxx) and math.isfinite(vyy) and vxx + vyy > 0.0:
            sigma2 = min(max(0.5 * (vxx + vyy), 0.25), (0.5 * min(w, h)) ** 2)
    if initialSigma is not None:
        s = _as_finite_float(initialSigma, "initialSigma")
        if s <= 0.0:
            raise ValueError(f"initialSigma must be positive, got {s!r}")
        sigma2 = s * s
    if initialCentroid is not None:
        cx, cy = _as_point2d(initialCentroid, "initialCentroid")

    m_xx, m_yy, m_xy = sigma2, sigma2, 0.0
    max_det_radius = 10.0 * max(w, h)
    for iteration in range(1, int(maxIter) + 1):
        det_m = m_xx * m_yy - m_xy * m_xy
        inv_xx, inv_yy, inv_xy = m_yy / det_m, m_xx / det_m, -m_xy / det_m
        dx = xs - cx                       # (w,)
        dy = ys - cy                       # (h,)
        q = (inv_xx * dx[np.newaxis, :] ** 2 + 2.0 * inv_xy * dy[:, np.newaxis] * dx[np.newaxis, :]
             + inv_yy * dy[:, np.newaxis] ** 2)
        iw = img * np.exp(-0.5 * q)
        s = float(iw.sum())
        if not (s > 0.0 and math.isfinite(s)):
            raise RuntimeError(f"adaptive moments failed: non-positive weighted flux {s!r} at iteration "
                               f"{iteration} (image is not dominated by a positive source)")
        wx = iw.sum(axis=0)                # (w,) weighted column sums
        wy = iw.sum(axis=1)                # (h,) weighted row sums
        mx = float(wx @ dx) / s
        my = float(wy @ dy) / s
        ddx = dx - mx
        ddy = dy - my
        mu_xx = float(wx @ (ddx * ddx)) / s
        mu_yy = float(wy @ (ddy * ddy)) / s
        mu_xy = float(ddy @ iw @ ddx) / s
        det_mu = mu_xx * mu_yy - mu_xy * mu_xy
        if not (mu_xx > 0.0 and mu_yy > 0.0 and det_mu > 0.0):
            raise RuntimeError(f"adaptive moments failed: degenerate weighted moments (ixx={mu_xx!r}, "
                               f"iyy={mu_yy!r}, ixy={mu_xy!r}) at iteration {iteration}; the profile "
                               "is unresolved or not positive")
        # Exact Gaussian update: M_new^-1 = mu^-1 - M^-1.
        a_xx = mu_yy / det_mu - inv_xx
        a_yy = mu_xx / det_mu - inv_yy
        a_xy = -mu_xy / det_mu - inv_xy
        det_a = a_xx * a_yy - a_xy * a_xy
        if a_xx > 0.0 and a_yy > 0.0 and det_a > 0.0:
            n_xx, n_yy, n_xy = a_yy / det_a, a_xx / det_a, -a_xy / det_a
            # gain G = M_new mu^-1 applied to the weighted mean offset
            g_x = (n_xx * (mu_yy * mx - mu_xy * my) + n_xy * (-mu_xy * mx + mu_xx * my)) / det_mu
            g_y = (n_xy * (mu_yy * mx - mu_xy * my) + n_yy * (-mu_xy * mx + mu_xx * my)) / det_mu
        else:
            n_xx, n_yy, n_xy = 2.0 * mu_xx, 2.0 * mu_yy, 2.0 * mu_xy
            g_x, g_y = 2.0 * mx, 2.0 * my
        new_cx, new_cy = cx + g_x, cy + g_y
        det_n = n_xx * n_yy - n_xy * n_xy
        if not (math.isfinite(det_n) and det_n > 0.0) or det_n ** 0.25 > max_det_radius:
            raise RuntimeError(f"adaptive moments failed: weight diverged (ixx={n_xx!r}, iyy={n_yy!r}, "
                               f"ixy={n_xy!r}) at iteration {iteration}; the image is too flat or too "
                               "noisy for a single-source moment measurement")
        if not (-0.5 <= new_cx <= w - 0.5 and -0.5 <= new_cy <= h - 0.5):
            raise RuntimeError(f"adaptive moments failed: centroid ({new_cx:.3f}, {new_cy:.3f}) left the "
                               f"{w}x{h} image at iteration {iteration}")
        half_trace = 0.5 * (n_xx + n_yy)
        converged = (max(abs(n_xx - m_xx), abs(n_yy - m_yy), abs(n_xy - m_xy)) <= tol * half_trace
                     and math.hypot(new_cx - cx, new_cy - cy) <= tol * math.sqrt(half_trace))
        m_xx, m_yy, m_xy = n_xx, n_yy, n_xy
        cx, cy = new_cx, new_cy
        if converged:
            return AdaptiveMoments(Quadrupole(m_xx, m_yy, m_xy), Point2D(cx, cy), iteration)
    raise RuntimeError(f"adaptive moments did not converge to tol={tol:g} within maxIter={maxIter} "
                       f"iterations (last estimate ixx={m_xx:.6g}, iyy={m_yy:.6g}, ixy={m_xy:.6g}, "
                       f"centre ({cx:.4f}, {cy:.4f}))")


# ---------------------------------------------------------------------------------------------
# Lanczos sub-pixel shift
# ---------------------------------------------------------------------------------------------

def _lanczos_taps(shift: float, order: int) -> np.ndarray:
    """Weights ``w[m + order] = L(m - shift)`` for ``m = -order..order``, normalised to unit sum."""
    m = np.arange(-order, order + 1, dtype=np.float64)
    t = m - shift
    taps = np.where(np.abs(t) < order, np.sinc(t) * np.sinc(t / order), 0.0)
    return taps / taps.sum()


def _shift_axis(array: np.ndarray, shift: float, order: int, axis: int) -> np.ndarray:
    """Shift ``array`` by ``shift`` pixels along ``axis`` with a Lanczos kernel, zero outside."""
    taps = _lanczos_taps(shift, order)
    n = array.shape[axis]
    pad = [(0, 0), (0, 0)]
    pad[axis] = (order, order)
    padded = np.pad(array, pad)
    out = np.zeros_like(array)
    for k, weight in enumerate(taps):          # 2*order+1 whole-array terms (no per-pixel loop)
        start = 2 * order - k                  # = order - m with m = k - order
        sl = [slice(None), slice(None)]
        sl[axis] = slice(start, start + n)
        out += weight * padded[tuple(sl)]
    return out


def lanczosShift(image: npt.ArrayLike, dx: float, dy: float, *, order: int = 3) -> np.ndarray:
    """Shift an image by a sub-pixel offset with a separable Lanczos interpolant.

    The output is ``out(x, y) = f(x - dx, y - dy)`` where ``f`` interpolates the input samples with
    the separable kernel ``L(t) = sinc(t) sinc(t / order)`` for ``|t| < order`` (0 outside), the tap
    weights of each axis normalised to unit sum (so a constant is preserved). Pixels outside the
    input are taken as 0. A profile centred at ``(x0, y0)`` ends up centred at ``(x0 + dx, y0 + dy)``.
    An axis with a zero offset is copied exactly (no interpolation).

    Parameters
    ----------
    image
        2-D finite real array indexed ``[y, x]``.
    dx, dy
        Offsets in pixels along x (columns) and y (rows); ``|dx|, |dy| <= 1`` recommended
        (interpolation quality degrades for larger shifts, use an integer shift plus a residual).
    order
        Lanczos order ``a`` (3 for Lanczos-3, the LSST warping default).

    Returns
    -------
    numpy.ndarray
        The shifted float64 image, same shape (not renormalised).
    """
    img = _as_image_array(image, "image")
    dx = _as_finite_float(dx, "dx")
    dy = _as_finite_float(dy, "dy")
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 1:
        raise ValueError(f"order must be a positive integer, got {order!r}")
    if dx != 0.0:
        img = _shift_axis(img, dx, int(order), axis=1)
    if dy != 0.0:
        img = _shift_axis(img, dy, int(order), axis=0)
    return img


# ---------------------------------------------------------------------------------------------
# Psf base class
# ---------------------------------------------------------------------------------------------

class Psf:
    """Base class of point-spread functions.

    Parameters
    ----------
    averagePosition
        The "average position" of the PSF, parent pixel coordinates ``(x, y)``; default ``(0, 0)``.
        It is what ``position=None`` means in every method.

    Notes
    -----
    Position arguments accept a :class:`~diffcal.geom.Point2D`, :class:`~diffcal.geom.Point2I`, an
    ``(x, y)`` tuple/list or a length-2 array, in parent pixel coordinates; ``None`` means
    :meth:`getAveragePosition`. Returned images are fresh float64 arrays ``[y, x]`` of shape
    ``(height, width)`` with unit sum. See the module docstring for the centring conventions.
    """

    def __init__(self, *, averagePosition: Any = None) -> None:
        self._averagePosition = (Point2D(0.0, 0.0) if averagePosition is None
                                 else _as_point2d(averagePosition, "averagePosition"))
        self._kernelCache: np.ndarray | None = None
        self._shapeCache: Quadrupole | None = None

    # --- to be provided by subclasses ---
    def getKernelDimensions(self) -> Extent2I:
        """Stamp size ``(width, height)`` in pixels of the images this PSF returns."""
        raise NotImplementedError(f"{type(self).__name__} must implement getKernelDimensions")

    def _doComputeKernelImage(self, position: Point2D) -> np.ndarray:
        """Kernel image (centred on ``ctr``, unit sum) at ``position``; may return a cached array."""
        raise NotImplementedError(f"{type(self).__name__} must implement _doComputeKernelImage")

    def _doComputeImage(self, position: Point2D, dx: float, dy: float) -> np.ndarray:
        """Image shifted by the residual ``(dx, dy)``; default: Lanczos-3 shift of the kernel image."""
        shifted = lanczosShift(self._doComputeKernelImage(position), dx, dy, order=3)
        total = shifted.sum()
        if not (total > 0.0 and math.isfinite(total)):
            raise RuntimeError(f"{type(self).__name__}: shifted PSF image has non-positive sum {total!r}")
        return shifted / total

    def _doComputeShape(self, position: Point2D) -> Quadrupole:
        """Shape at ``position``; default: adaptive moments of the kernel image."""
        return computeAdaptiveMoments(self._doComputeKernelImage(position)).shape

    def _params(self) -> tuple:
        """Parameters defining the PSF (for equality, hashing and repr); subclasses extend."""
        return (("averagePosition", self._averagePosition),)

    # --- public API ---
    def isSpatiallyVarying(self) -> bool:
        """Whether the PSF depends on position (False for the constant PSFs of this module)."""
        return False

    def getAveragePosition(self) -> Point2D:
        """The average position in parent pixel coordinates (default ``(0, 0)``)."""
        return self._averagePosition

    def _resolve(self, position: Any) -> Point2D:
        return self._averagePosition if position is None else _as_point2d(position)

    def getKernelCenter(self) -> tuple[int, int]:
        """Centre pixel ``ctr = ((width - 1) // 2, (height - 1) // 2)`` (column, row) of the stamp."""
        w, h = self.getKernelDimensions()
        return ((w - 1) // 2, (h - 1) // 2)

    def computeKernelImage(self, position: Any = None) -> np.ndarray:
        """PSF image centred on the stamp's centre pixel ``ctr``.

        Parameters
        ----------
        position
            Where to evaluate the PSF (parent pixel coordinates); ``None``: the average position.
            Ignored by constant PSFs except for validation.

        Returns
        -------
        numpy.ndarray
            float64 array of shape ``(height, width)``, unit sum, the profile centred exactly on pixel
            ``ctr`` (offset 0 from it).
        """
        return np.array(self._doComputeKernelImage(self._resolve(position)), dtype=np.float64, copy=True)

    def computeImage(self, position: Any = None) -> np.ndarray:
        """PSF image centred on ``position`` (parent pixel coordinates).

        The stamp covers :meth:`computeImageBBox` ``(position)``: the pixel nearest the position sits
        at ``ctr``, and the profile is shifted inside the stamp by the sub-pixel residual
        ``(x - floor(x + 0.5), y - floor(y + 0.5))`` so that its centre is at ``position``.
        For integer positions the result equals :meth:`computeKernelImage` exactly.

        Parameters
        ----------
        position
            Parent pixel coordinates ``(x, y)``; ``None``: the average position.

        Returns
        -------
        numpy.ndarray
            float64 array of shape ``(height, width)``, unit sum.
        """
        pos = self._resolve(position)
        _, dx = _nearest_pixel(pos.x)
        _, dy = _nearest_pixel(pos.y)
        if dx == 0.0 and dy == 0.0:
            return self.computeKernelImage(pos)
        return np.array(self._doComputeImage(pos, dx, dy), dtype=np.float64, copy=True)

    def computeImageBBox(self, position: Any = None) -> Box2I:
        """Parent-coordinate box of the stamp returned by :meth:`computeImage` ``(position)``.

        Its minimum is ``(floor(x + 0.5) - ctrX, floor(y + 0.5) - ctrY)`` and its size the kernel
        dimensions.
        """
        pos = self._resolve(position)
        ix, _ = _nearest_pixel(pos.x)
        iy, _ = _nearest_pixel(pos.y)
        ctr_x, ctr_y = self.getKernelCenter()
        return Box2I((ix - ctr_x, iy - ctr_y), dimensions=self.getKernelDimensions())

    def computeBBox(self, position: Any = None) -> Box2I:
        """Box of the kernel image relative to its centre: minimum ``(-ctrX, -ctrY)``, size ``(w, h)``.

        ``position`` is accepted for API compatibility (and validated) but constant PSFs ignore it.
        """
        if position is not None:
            _as_point2d(position)
        ctr_x, ctr_y = self.getKernelCenter()
        return Box2I((-ctr_x, -ctr_y), dimensions=self.getKernelDimensions())

    def computeShape(self, position: Any = None) -> Quadrupole:
        """Second moments (pixels^2) of the PSF at ``position`` (``None``: the average position).

        Analytic for :class:`GaussianPsf`; adaptive moments (:func:`computeAdaptiveMoments`) of the
        kernel image for image-based PSFs, as in the reference.
        """
        pos = self._resolve(position)
        if self.isSpatiallyVarying():
            return self._doComputeShape(pos)
        if self._shapeCache is None:
            self._shapeCache = self._doComputeShape(pos)
        return self._shapeCache

    def computeFwhm(self, position: Any = None) -> float:
        """FWHM in pixels: determinant radius of :meth:`computeShape` times ``2 sqrt(2 ln 2)``.

        This is the formula the reference map-reduce grid uses (exact for a Gaussian).
        """
        return self.computeShape(position).getDeterminantRadius() * SIGMA_TO_FWHM

    def getLocalKernel(self, position: Any = None) -> "FixedKernel":
        """The kernel image at ``position`` as a :class:`diffcal.kernel.FixedKernel` (unit sum)."""
        from .kernel import FixedKernel
        return FixedKernel(self.computeKernelImage(position))

    def clone(self) -> "Psf":
        """A deep, independent copy."""
        return copy.deepcopy(self)

    # --- python protocol ---
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Psf):
            return NotImplemented
        if type(self) is not type(other):
            return False
        return _params_equal(self._params(), other._params())

    def __hash__(self) -> int:
        return hash((type(self).__name__, _hashable(self._params())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_short_repr(v)}" for k, v in self._params())
        return f"{type(self).__name__}({args})"


def _params_equal(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return False
    for (ka, va), (kb, vb) in zip(a, b):
        if ka != kb:
            return False
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            if not (isinstance(va, np.ndarray) and isinstance(vb, np.ndarray) and np.array_equal(va, vb)):
                return False
        elif va != vb:
            return False
    return True


def _hashable(params: tuple) -> tuple:
    return tuple((k, (v.shape, v.tobytes()) if isinstance(v, np.ndarray) else v) for k, v in params)


def _short_repr(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"<array shape={value.shape}>"
    if isinstance(value, Point2D):
        return f"({value.x!r}, {value.y!r})"
    return repr(value)


def _gaussian_offsets(width: int, height: int, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """Squared offsets ``(x - ctrX - dx)^2`` (row vector) and ``(y - ctrY - dy)^2`` (column vector)."""
    ctr_x, ctr_y = (width - 1) // 2, (height - 1) // 2
    x2 = (np.arange(width, dtype=np.float64) - ctr_x - dx) ** 2
    y2 = (np.arange(height, dtype=np.float64) - ctr_y - dy) ** 2
    return x2[np.newaxis, :], y2[:, np.newaxis]


# ---------------------------------------------------------------------------------------------
# Concrete PSFs
# ---------------------------------------------------------------------------------------------

class GaussianPsf(Psf):
    """A circular Gaussian PSF evaluated at pixel centres on a ``width x height`` stamp.

    ``f(x, y) ∝ exp(-((x - x0)^2 + (y - y0)^2) / (2 sigma^2))`` sampled at the pixel centres and
    normalised to unit sum over the stamp (no pixel integration). Sub-pixel images
    (:meth:`computeImage`) evaluate the Gaussian analytically at the shifted centre.

    Parameters
    ----------
    width, height
        Stamp size in pixels (positive integers; even sizes allowed, the centre pixel is then
        ``(size - 1) // 2``; note afw's GaussianPsf centres even stamps on ``size // 2`` instead).
    sigma
        Gaussian standard deviation in pixels (> 0).
    averagePosition
        Keyword-only; see :class:`Psf`.

    Notes
    -----
    :meth:`computeShape` is analytic: ``Quadrupole(sigma^2, sigma^2, 0)`` regardless of stamp
    truncation, as in afw.
    """

    def __init__(self, width: int, height: int, sigma: float, *, averagePosition: Any = None) -> None:
        super().__init__(averagePosition=averagePosition)
        self._width = _as_positive_int(width, "width")
        self._height = _as_positive_int(height, "height")
        self._sigma = _as_finite_float(sigma, "sigma")
        if self._sigma <= 0.0:
            raise ValueError(f"sigma must be positive, got {self._sigma!r}")

    def getSigma(self) -> float:
        """Gaussian sigma in pixels."""
        return self._sigma

    def getKernelDimensions(self) -> Extent2I:
        return Extent2I(self._width, self._height)

    def getDimensions(self) -> Extent2I:
        """Alias of :meth:`getKernelDimensions` (afw name)."""
        return self.getKernelDimensions()

    def _profile(self, dx: float, dy: float) -> np.ndarray:
        x2, y2 = _gaussian_offsets(self._width, self._height, dx, dy)
        s2 = 2.0 * self._sigma ** 2
        # scaled so that the largest pixel is exp(0) = 1: no underflow even for tiny sigma
        img = np.exp(-(y2 - y2.min()) / s2) * np.exp(-(x2 - x2.min()) / s2)
        return img / img.sum()

    def _doComputeKernelImage(self, position: Point2D) -> np.ndarray:
        if self._kernelCache is None:
            self._kernelCache = self._profile(0.0, 0.0)
        return self._kernelCache

    def _doComputeImage(self, position: Point2D, dx: float, dy: float) -> np.ndarray:
        return self._profile(dx, dy)

    def _doComputeShape(self, position: Point2D) -> Quadrupole:
        s2 = self._sigma ** 2
        return Quadrupole(s2, s2, 0.0)

    def _params(self) -> tuple:
        return (("width", self._width), ("height", self._height), ("sigma", self._sigma)) + super()._params()


class DoubleGaussianPsf(Psf):
    """Two concentric circular Gaussians, evaluated at pixel centres on a ``width x height`` stamp.

    ``f(r) ∝ exp(-r^2 / (2 sigma1^2)) + b exp(-r^2 / (2 sigma2^2))`` (``b`` is the ratio of the peak
    amplitudes), normalised to unit sum over the stamp. Sub-pixel images are evaluated analytically.

    Parameters
    ----------
    width, height
        Stamp size in pixels (positive integers; even sizes allowed, centre pixel ``(size - 1) // 2``).
    sigma1
        Sigma of the core Gaussian, pixels (> 0).
    sigma2
        Sigma of the second Gaussian, pixels (> 0; may be 0 only when ``b == 0``, it is then unused).
    b
        Relative peak amplitude of the second Gaussian (>= 0; negative values are rejected because
        they can make the profile negative).
    averagePosition
        Keyword-only; see :class:`Psf`.

    Notes
    -----
    :meth:`computeShape` is the adaptive moment of the kernel image (as the reference does for
    kernel-based PSFs), not the analytic moment: for ``DoubleGaussianPsf(11, 11, 2.0, 3.7)``
    (the reference test fixture, a single Gaussian truncated to 11x11) the determinant radius is
    1.99752 px and the FWHM 4.7038 px (the reference quotes ~4.71).
    """

    def __init__(self, width: int, height: int, sigma1: float, sigma2: float, b: float = 0.0, *,
                 averagePosition: Any = None) -> None:
        super().__init__(averagePosition=averagePosition)
        self._width = _as_positive_int(width, "width")
        self._height = _as_positive_int(height, "height")
        self._sigma1 = _as_finite_float(sigma1, "sigma1")
        self._sigma2 = _as_finite_float(sigma2, "sigma2")
        self._b = _as_finite_float(b, "b")
        if self._sigma1 <= 0.0:
            raise ValueError(f"sigma1 must be positive, got {self._sigma1!r}")
        if self._b < 0.0:
            raise ValueError(f"b (relative amplitude of the second Gaussian) must be >= 0, got {self._b!r}")
        if self._sigma2 < 0.0 or (self._sigma2 == 0.0 and self._b != 0.0):
            raise ValueError(f"sigma2 must be positive (or 0 with b == 0), got {self._sigma2!r} "
                             f"with b={self._b!r}")

    def getSigma1(self) -> float:
        """Sigma of the core Gaussian, pixels."""
        return self._sigma1

    def getSigma2(self) -> float:
        """Sigma of the second Gaussian, pixels."""
        return self._sigma2

    def getB(self) -> float:
        """Relative peak amplitude of the second Gaussian."""
        return self._b

    def getKernelDimensions(self) -> Extent2I:
        return Extent2I(self._width, self._height)

    def getDimensions(self) -> Extent2I:
        """Alias of :meth:`getKernelDimensions` (afw name)."""
        return self.getKernelDimensions()

    def _profile(self, dx: float, dy: float) -> np.ndarray:
        x2, y2 = _gaussian_offsets(self._width, self._height, dx, dy)
        r2 = x2 + y2                                   # (h, w) by broadcasting
        s1 = 2.0 * self._sigma1 ** 2
        log1 = -r2 / s1
        if self._b == 0.0:
            img = np.exp(log1 - log1.max())
        else:
            # log-sum-exp scaling: the largest term is exp(0) = 1, so nothing underflows to all-zero
            log2 = math.log(self._b) - r2 / (2.0 * self._sigma2 ** 2)
            top = max(log1.max(), log2.max())
            img = np.exp(log1 - top) + np.exp(log2 - top)
        return img / img.sum()

    def _doComputeKernelImage(self, position: Point2D) -> np.ndarray:
        if self._kernelCache is None:
            self._kernelCache = self._profile(0.0, 0.0)
        return self._kernelCache

    def _doComputeImage(self, position: Point2D, dx: float, dy: float) -> np.ndarray:
        return self._profile(dx, dy)

    def _params(self) -> tuple:
        return (("width", self._width), ("height", self._height), ("sigma1", self._sigma1),
                ("sigma2", self._sigma2), ("b", self._b)) + super()._params()


class ImagePsf(Psf):
    """A constant PSF given by an image (the "fixed kernel" PSF of the reference).

    Parameters
    ----------
    array
        2-D real array ``[y, x]``; copied to float64 and normalised to unit sum. Its centre pixel
        ``((w - 1) // 2, (h - 1) // 2)`` is taken as the PSF centre (the profile is not recentred).
    averagePosition
        See :class:`Psf`.

    Raises
    ------
    TypeError
        If ``array`` is not a real numeric array.
    ValueError
        If ``array`` is not 2-D, is empty, holds non-finite values, or its sum is not positive.

    Notes
    -----
    * :meth:`computeKernelImage` returns the stored (normalised) image.
    * :meth:`computeImage` at a non-integer position shifts the stored image by the sub-pixel
      residual with a separable Lanczos-3 interpolant (:func:`lanczosShift`: taps normalised to unit
      sum, zero outside the stamp) and renormalises the result to unit sum (afw likewise shifts
      kernel-image PSFs with a Lanczos warping kernel; CoaddPsf components use ``lanczos3``). At
      integer positions the stored image is returned exactly. Lanczos-3 is not an exact shift at
      low frequencies: the centroid of the result moves by the first moment of the taps, which
      differs from the requested residual by up to 0.02 px (largest near a residual of 0.2 px,
      zero at 0 and 0.5); pixel values of a well-sampled profile (sigma 2 px) match an analytic
      shift to ~2e-4 of the unit-sum image.
    * :meth:`computeShape` is the adaptive moment of the stored image.
    """

    def __init__(self, array: npt.ArrayLike, averagePosition: Any = None) -> None:
        super().__init__(averagePosition=averagePosition)
        img = _as_image_array(array, "ImagePsf array")
        total = float(img.sum())
        if not (total > 0.0 and math.isfinite(total)):
            raise ValueError(f"ImagePsf array must have a positive finite sum, got {total!r}")
        img /= total
        img.setflags(write=False)
        self._image = img

    def getKernelDimensions(self) -> Extent2I:
        h, w = self._image.shape
        return Extent2I(w, h)

    def getDimensions(self) -> Extent2I:
        """Alias of :meth:`getKernelDimensions` (afw name)."""
        return self.getKernelDimensions()

    def _doComputeKernelImage(self, position: Point2D) -> np.ndarray:
        return self._image

    def _params(self) -> tuple:
        return (("array", self._image),) + super()._params()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._image = np.array(self._image, dtype=np.float64)
        self._image.setflags(write=False)


# ---------------------------------------------------------------------------------------------
# Stitched PSF of a cell grid
# ---------------------------------------------------------------------------------------------

class PsfCoverageError(DiffcalError, ValueError):
    """A :class:`GridPsf` was evaluated at a position that none of its components covers."""


def _allSame(objects: Sequence[Any]) -> bool:
    """Whether every element of the (non-empty) sequence is the same object as the first (a C-level
    loop: the per-cell checks of a 10^4-cell grid whose cells share one PSF, WCS or plane dict)."""
    return all(map(operator.is_, objects, itertools.repeat(objects[0])))


def _as_bounds_array(bboxes: Any, n: int) -> np.ndarray:
    """``(n, 4)`` int64 array ``(minX, minY, maxX, maxY)`` from Box2I objects or an array."""
    if isinstance(bboxes, np.ndarray):
        arr = bboxes
        if arr.dtype.kind not in "iu":
            raise TypeError(f"GridPsf bboxes array must be integer, got dtype {arr.dtype}")
        arr = np.array(arr, dtype=np.int64, copy=True)
    else:
        rows = []
        for i, box in enumerate(bboxes):
            if not isinstance(box, Box2I):
                raise TypeError(f"GridPsf bbox {i} must be a diffcal.geom.Box2I, got {type(box).__name__}")
            rows.append((box.getMinX(), box.getMinY(), box.getMaxX(), box.getMaxY()) if not box.isEmpty()
                        else (0, 0, -1, -1))
        arr = np.array(rows, dtype=np.int64).reshape(len(rows), 4)
    if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] != n:
        raise ValueError(f"GridPsf needs one bbox (minX, minY, maxX, maxY) per component: {n} PSFs, "
                         f"bboxes of shape {arr.shape}")
    empty = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if empty.any():
        raise ValueError(f"GridPsf component {int(np.argmax(empty))} has an empty bbox")
    arr.setflags(write=False)
    return arr


class GridPsf(Psf):
    """The PSF of a stitched grid of cells: at each point, the mean of the cells' PSFs covering it.

    This is diffcal's replacement for the ``CoaddPsf`` the reference map-reduce attaches to a
    ``sum``/``average`` result (spec ``mapreduce-decorrelation.md`` §1.7). All components live in the
    pixel frame of the stitched exposure, so no WCS and no warping are involved.

    Parameters
    ----------
    psfs : sequence of Psf
        One PSF per component (cell); the same object may appear many times (it is then evaluated
        once per query).
    bboxes : sequence of Box2I, or int array of shape (N, 4)
        The region (parent pixel coordinates, inclusive) where each component is valid; as an array
        the rows are ``(minX, minY, maxX, maxY)``. Must be non-empty.
    weights : sequence of float, optional
        Positive finite component weights; default 1 for every component (the reference's choice).
    averagePosition : (x, y), optional
        Override of the computed average position (see Notes).

    Notes
    -----
    * **Coverage.** A component covers a position ``(x, y)`` when ``minX - 0.5 <= x < maxX + 0.5``
      and likewise in y (the pixel-centre convention of :meth:`Box2I.contains` for float points,
      which is how ``CoaddPsf`` selects components). A position no component covers raises
      :class:`PsfCoverageError`.
    * **Images.** :meth:`computeKernelImage` and :meth:`computeImage` return
      ``sum_i w_i img_i / sum_i w_i`` over the covering components, each ``img_i`` being that
      component's image at the position normalised to unit sum. The stamp has the largest width and
      height of all components (the union of their centred stamps, so the centre convention of
      :class:`Psf` holds); smaller component stamps are embedded centred.
    * **Shape.** :meth:`computeShape` is the adaptive moment of :meth:`computeKernelImage` at the
      position (nothing is cached: :meth:`isSpatiallyVarying` is True).
    * **Average position.** The weighted mean of the components' average positions when some
      component covers it (what ``CoaddPsf`` computes); otherwise the weighted mean of the component
      bbox centres when covered; otherwise the centre of the bbox of the highest-weight component
      (the first on ties). ``CoaddPsf`` instead drops lowest-weight components until the mean is
      covered; the result is the same whenever the components' own average position lies inside the
      grid.
    """

    def __init__(self, psfs: Any, bboxes: Any, weights: Any = None, *, averagePosition: Any = None) -> None:
        psfs = tuple(psfs)
        if not psfs:
            raise ValueError("GridPsf needs at least one component")
        if _allSame(psfs):   # usually one object for every cell
            unique = {id(psfs[0]): psfs[0]}
        else:
            unique = dict(zip(map(id, psfs), psfs))
        for p in unique.values():
            if not isinstance(p, Psf):
                i = next(k for k, q in enumerate(psfs) if q is p)
                raise TypeError(f"GridPsf component {i} must be a diffcal.psf.Psf, got {type(p).__name__}")
        n = len(psfs)
        bounds = _as_bounds_array(bboxes, n)
        if weights is None:
            w = np.ones(n, dtype=np.float64)
        else:
            w = np.array(weights, dtype=np.float64, copy=True).reshape(-1)
            if w.shape != (n,):
                raise ValueError(f"GridPsf needs one weight per component: {n} PSFs, {w.size} weights")
            if not (np.all(np.isfinite(w)) and np.all(w > 0)):
                raise ValueError("GridPsf weights must be positive and finite")
        w.setflags(write=False)
        self._psfs = psfs
        self._bounds = bounds
        self._weights = w
        self._lo = bounds[:, :2].astype(np.float64) - 0.5   # (xlo, ylo)
        self._hi = bounds[:, 2:].astype(np.float64) + 0.5   # (xhi, yhi)
        self._width = max(p.getKernelDimensions()[0] for p in unique.values())
        self._height = max(p.getKernelDimensions()[1] for p in unique.values())
        if averagePosition is None:
            averagePosition = self._defaultAveragePosition(unique)
        super().__init__(averagePosition=averagePosition)

    # --- components ---
    def getComponentCount(self) -> int:
        """Number of components (cells)."""
        return len(self._psfs)

    def getComponent(self, index: int) -> tuple[Psf, Box2I, float]:
        """``(psf, bbox, weight)`` of component ``index``."""
        x0, y0, x1, y1 = (int(v) for v in self._bounds[index])
        return self._psfs[index], Box2I((x0, y0), (x1, y1)), float(self._weights[index])

    def getBBox(self) -> Box2I:
        """Smallest box containing every component's bbox."""
        return Box2I((int(self._bounds[:, 0].min()), int(self._bounds[:, 1].min())),
                     (int(self._bounds[:, 2].max()), int(self._bounds[:, 3].max())))

    def findComponents(self, position: Any) -> np.ndarray:
        """Indices (ascending) of the components covering ``position`` (parent pixel coordinates)."""
        pos = _as_point2d(position)
        return self._covering(pos.x, pos.y)

    def _covering(self, x: float, y: float) -> np.ndarray:
        lo, hi = self._lo, self._hi
        inside = (lo[:, 0] <= x) & (x < hi[:, 0]) & (lo[:, 1] <= y) & (y < hi[:, 1])
        return np.flatnonzero(inside)

    def _defaultAveragePosition(self, unique: dict) -> Point2D:
        w = self._weights
        total = float(w.sum())
        avg = {k: p.getAveragePosition() for k, p in unique.items()}
        ax = np.array([avg[id(p)].x for p in self._psfs]) if len(unique) > 1 else \
            np.full(len(self._psfs), next(iter(avg.values())).x)
        ay = np.array([avg[id(p)].y for p in self._psfs]) if len(unique) > 1 else \
            np.full(len(self._psfs), next(iter(avg.values())).y)
        # (w * v).sum() rather than np.dot: no BLAS call (and no BLAS thread start-up) per GridPsf
        candidates = [
            (float((w * ax).sum()) / total, float((w * ay).sum()) / total),
            (float((w * (0.5 * (self._bounds[:, 0] + self._bounds[:, 2]))).sum()) / total,
             float((w * (0.5 * (self._bounds[:, 1] + self._bounds[:, 3]))).sum()) / total),
        ]
        for x, y in candidates:
            if self._covering(x, y).size:
                return Point2D(x, y)
        best = int(np.argmax(w))
        b = self._bounds[best]
        return Point2D(0.5 * float(b[0] + b[2]), 0.5 * float(b[1] + b[3]))

    # --- Psf interface ---
    def isSpatiallyVarying(self) -> bool:
        return True

    def getKernelDimensions(self) -> Extent2I:
        return Extent2I(self._width, self._height)

    def _combine(self, position: Point2D, render) -> np.ndarray:
        idx = self._covering(position.x, position.y)
        if idx.size == 0:
            box = self.getBBox()
            raise PsfCoverageError(
                f"GridPsf: no component covers position ({position.x}, {position.y}); the "
                f"{len(self._psfs)} components span {box!r} (with gaps where no cell was kept)")
        groups: dict[int, list] = {}
        for i in idx:                    # group repeated PSF objects, keeping first-seen order
            p = self._psfs[i]
            g = groups.get(id(p))
            if g is None:
                groups[id(p)] = [p, float(self._weights[i])]
            else:
                g[1] += float(self._weights[i])
        out = np.zeros((self._height, self._width), dtype=np.float64)
        ctr_x, ctr_y = self.getKernelCenter()
        total = 0.0
        for p, weight in groups.values():
            img = np.asarray(render(p), dtype=np.float64)
            s = float(img.sum())
            if not (s > 0.0 and math.isfinite(s)):
                raise RuntimeError(f"GridPsf component {p!r} gave an image with non-positive sum {s!r} "
                                   f"at ({position.x}, {position.y})")
            h, w = img.shape
            cx, cy = (w - 1) // 2, (h - 1) // 2
            oy, ox = ctr_y - cy, ctr_x - cx
            out[oy:oy + h, ox:ox + w] += (weight / s) * img
            total += weight
        out /= total
        return out

    def _doComputeKernelImage(self, position: Point2D) -> np.ndarray:
        return self._combine(position, lambda p: p.computeKernelImage(position))

    def _doComputeImage(self, position: Point2D, dx: float, dy: float) -> np.ndarray:
        return self._combine(position, lambda p: p.computeImage(position))

    def _params(self) -> tuple:
        return (("psfs", self._psfs), ("bboxes", self._bounds), ("weights", self._weights)) + super()._params()

    def __repr__(self) -> str:
        kinds = sorted({type(p).__name__ for p in self._psfs})
        return (f"GridPsf({len(self._psfs)} components of {', '.join(kinds)}, bbox={self.getBBox()!r}, "
                f"averagePosition=({self._averagePosition.x!r}, {self._averagePosition.y!r}))")
