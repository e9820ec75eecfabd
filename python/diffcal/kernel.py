"""Convolution kernels: fixed kernels and the spatially varying Alard-Lupton linear-combination kernel.

Conventions
-----------
* A kernel of ``width x height`` pixels is a float64 array indexed ``[y, x]`` of shape
  ``(height, width)``. Its centre pixel is ``ctr = ((width - 1) // 2, (height - 1) // 2)``
  (:meth:`Kernel.getCtr`, the LSST afw convention): array pixel ``(i, j)`` holds the kernel value at
  offset ``(i - ctrX, j - ctrY)``. :meth:`Kernel.computeBBox` is that offset box. Even sizes are allowed.
* Spatially varying kernels are evaluated at positions ``(x, y)`` in *parent* pixel coordinates of the
  image being convolved (integer values are pixel centres; see :mod:`diffcal.geom`).
* Every returned image is a fresh array (callers may modify it).

File format
-----------
See :func:`readKernelFits`, :meth:`FixedKernel.writeFits` and :class:`LinearCombinationKernel`.
"""

from __future__ import annotations

import math
import numbers
import os
import uuid
import warnings
from typing import Any, Sequence, Union

import numpy as np
import numpy.typing as npt

from .errors import FitsFormatError
from .geom import Box2I, Extent2I, Point2I

__all__ = [
    "Kernel",
    "FixedKernel",
    "LinearCombinationKernel",
    "SPATIAL_FUNCTIONS",
    "nSpatialTerms",
    "readKernelFits",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Names accepted by ``LinearCombinationKernel(..., spatial_function=...)``.
SPATIAL_FUNCTIONS: tuple[str, ...] = ("polynomial", "chebyshev1")

#: FITS format version written in the ``KERNVER`` header key.
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def nSpatialTerms(order: int) -> int:
    """Number of terms ``(order + 1)(order + 2) / 2`` of a 2-D spatial function of total degree ``order``."""
    order = _as_order(order)
    return (order + 1) * (order + 2) // 2


def _as_order(order: Any) -> int:
    if isinstance(order, bool) or not isinstance(order, numbers.Integral):
        raise TypeError(f"spatial_order must be a non-negative integer, got {order!r}")
    if order < 0:
        raise ValueError(f"spatial_order must be >= 0, got {order}")
    return int(order)


def _check_real_dtype(arr: np.ndarray, name: str) -> None:
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer)
                                     or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold real numbers (integer or floating dtype), got dtype {arr.dtype}")


def _as_kernel_array(array: Any, name: str) -> np.ndarray:
    """Copy to a read-only C-contiguous float64 2-D array; validate dtype, shape, size, finiteness."""
    arr = np.asarray(array)
    _check_real_dtype(arr, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got {arr.ndim} dimension(s) with shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    out = np.array(arr, dtype=np.float64, order="C", copy=True)
    if not np.all(np.isfinite(out)):
        nbad = int(np.count_nonzero(~np.isfinite(out)))
        raise ValueError(f"{name} contains {nbad} non-finite value(s) (NaN or Inf)")
    out.setflags(write=False)
    return out


def _as_coord(value: Any, name: str) -> float:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (parent pixel coordinate), got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out!r}")
    return out


def _as_coord_array(values: Any, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values))
    _check_real_dtype(arr, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of coordinates, got shape {arr.shape}")
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains non-finite coordinate(s)")
    return out


def _normalized(image: np.ndarray, where: str) -> np.ndarray:
    total = float(image.sum())
    if total == 0.0 or not math.isfinite(total):
        raise ValueError(f"cannot normalize kernel image {where}: its sum is {total!r}")
    return image / total


# ---------------------------------------------------------------------------------------------
# Kernel base class
# ---------------------------------------------------------------------------------------------

class Kernel:
    """Base class of convolution kernels.

    Subclasses set the dimensions through ``Kernel.__init__(width, height)`` and implement
    :meth:`_doComputeImage`; spatially varying ones override :meth:`isSpatiallyVarying` (and may
    override :meth:`computeImages` with a vectorised version).
    """

    def __init__(self, width: int, height: int) -> None:
        self._width = int(width)
        self._height = int(height)

    # --- geometry ---
    def getWidth(self) -> int:
        """Kernel width in pixels (number of columns)."""
        return self._width

    def getHeight(self) -> int:
        """Kernel height in pixels (number of rows)."""
        return self._height

    def getDimensions(self) -> Extent2I:
        """``(width, height)`` in pixels."""
        return Extent2I(self._width, self._height)

    def getCtr(self) -> Point2I:
        """Centre pixel ``((width - 1) // 2, (height - 1) // 2)`` (column, row), afw convention."""
        return Point2I((self._width - 1) // 2, (self._height - 1) // 2)

    def getCtrX(self) -> int:
        """Column of the centre pixel, ``(width - 1) // 2``."""
        return (self._width - 1) // 2

    def getCtrY(self) -> int:
        """Row of the centre pixel, ``(height - 1) // 2``."""
        return (self._height - 1) // 2

    def computeBBox(self) -> Box2I:
        """Box of kernel offsets: minimum ``(-ctrX, -ctrY)``, size ``(width, height)``."""
        ctr = self.getCtr()
        return Box2I((-ctr.x, -ctr.y), dimensions=(self._width, self._height))

    def isSpatiallyVarying(self) -> bool:
        """Whether the kernel depends on position (False for the base and :class:`FixedKernel`)."""
        return False

    # --- evaluation ---
    def _doComputeImage(self, x: float, y: float) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement _doComputeImage")

    def _resolve_xy(self, x: Any, y: Any) -> tuple[float, float]:
        if self.isSpatiallyVarying():
            if x is None or y is None:
                raise ValueError(f"{type(self).__name__} is spatially varying: computeImage needs both x "
                                 f"and y (parent pixel coordinates), got x={x!r}, y={y!r}")
        xf = 0.0 if x is None else _as_coord(x, "x")
        yf = 0.0 if y is None else _as_coord(y, "y")
        return xf, yf

    def computeImage(self, x: float | None = None, y: float | None = None,
                     normalize: bool = False) -> np.ndarray:
        """The kernel image at parent pixel position ``(x, y)``.

        Parameters
        ----------
        x, y
            Position in parent pixel coordinates. Required for a spatially varying kernel; ignored
            (but validated) otherwise.
        normalize
            If True, divide the image by its sum.

        Returns
        -------
        numpy.ndarray
            A new float64 array of shape ``(height, width)``.

        Raises
        ------
        ValueError
            If x or y is missing for a spatially varying kernel, is not finite, or ``normalize`` is
            True and the kernel sum is zero or not finite.
        """
        xf, yf = self._resolve_xy(x, y)
        image = np.array(self._doComputeImage(xf, yf), dtype=np.float64, copy=True)
        if normalize:
            image = _normalized(image, f"at ({xf!r}, {yf!r})")
        return image

    def computeImages(self, xs: npt.ArrayLike, ys: npt.ArrayLike, normalize: bool = False) -> np.ndarray:
        """Kernel images at many parent positions ``(xs[k], ys[k])``.

        Parameters
        ----------
        xs, ys
            1-D sequences of equal length ``m`` (scalars are treated as length 1).
        normalize
            If True, divide each image by its own sum.

        Returns
        -------
        numpy.ndarray
            float64 array of shape ``(m, height, width)``; ``[k]`` equals
            ``computeImage(xs[k], ys[k], normalize)``.
        """
        xa = _as_coord_array(xs, "xs")
        ya = _as_coord_array(ys, "ys")
        if xa.shape != ya.shape:
            raise ValueError(f"xs and ys must have the same length, got {xa.size} and {ya.size}")
        images = self._doComputeImages(xa, ya)
        if normalize:
            sums = images.sum(axis=(1, 2))
            bad = np.flatnonzero((sums == 0.0) | ~np.isfinite(sums))
            if bad.size:
                k = int(bad[0])
                raise ValueError(f"cannot normalize kernel image at ({xa[k]!r}, {ya[k]!r}) (index {k}): "
                                 f"its sum is {sums[k]!r}")
            images = images / sums[:, np.newaxis, np.newaxis]
        return images

    def _doComputeImages(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Default: a constant kernel repeated ``len(xs)`` times."""
        image = np.asarray(self._doComputeImage(0.0, 0.0), dtype=np.float64)
        return np.repeat(image[np.newaxis, :, :], xs.size, axis=0)

    def getKernelSum(self, x: float | None = None, y: float | None = None) -> float:
        """Sum of the (unnormalised) kernel image at ``(x, y)`` (see :meth:`computeImage`)."""
        return float(self.computeImage(x, y).sum())

    def clone(self) -> "Kernel":
        """An independent copy."""
        import copy
        return copy.deepcopy(self)

    # --- FITS ---
    def _toHdus(self) -> list:
        raise NotImplementedError(f"{type(self).__name__} cannot be written to FITS")

    def writeFits(self, path: PathLike, overwrite: bool = True) -> None:
        """Write the kernel to a FITS file (layout documented on the concrete class).

        The file is written to a temporary name in the same directory and renamed into place, so an
        interrupted write never leaves a partial file under ``path``.

        Parameters
        ----------
        path
            Output file name.
        overwrite
            Replace an existing file (default True, as afw's ``writeFits``); if False and the file
            exists, ``FileExistsError`` is raised.
        """
        path = os.fspath(path)
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"kernel FITS file {path!r} already exists (overwrite=False)")
        from astropy.io import fits
        hdul = fits.HDUList(self._toHdus())
        directory, base = os.path.split(os.path.abspath(path))
        tmp = os.path.join(directory, f".{base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        try:
            hdul.writeto(tmp, overwrite=True)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def readFits(cls, path: PathLike) -> "Kernel":
        """Read a kernel written by :meth:`writeFits` (see :func:`readKernelFits`).

        Called on a subclass, the file must hold that kind of kernel.

        Raises
        ------
        diffcal.errors.FitsFormatError
            If the file is corrupt, not a diffcal kernel, or holds another kind of kernel.
        """
        kernel = readKernelFits(path)
        if not isinstance(kernel, cls):
            raise FitsFormatError(f"{os.fspath(path)!r}: holds a {type(kernel).__name__}, "
                                  f"not a {cls.__name__}")
        return kernel


# ---------------------------------------------------------------------------------------------
# FixedKernel
# ---------------------------------------------------------------------------------------------

class FixedKernel(Kernel):
    """A kernel given by a fixed image (not spatially varying).

    Parameters
    ----------
    array
        2-D real array ``[y, x]``, non-empty, finite; copied to float64 (not normalised). Its centre
        pixel is ``((w - 1) // 2, (h - 1) // 2)``.

    Raises
    ------
    TypeError
        If ``array`` does not hold real numbers.
    ValueError
        If ``array`` is not 2-D, is empty or holds NaN/Inf.

    Notes
    -----
    FITS layout (:meth:`writeFits`): a single primary image HDU holding the ``(height, width)`` float64
    image, header ``KERNTYPE = 'FIXED'``, ``KERNVER = 1`` (format version) and, for information,
    ``KCTRX``/``KCTRY`` (the centre pixel).
    """

    def __init__(self, array: npt.ArrayLike) -> None:
        image = _as_kernel_array(array, "FixedKernel array")
        super().__init__(image.shape[1], image.shape[0])
        self._image = image

    def getArray(self) -> np.ndarray:
        """A copy of the kernel image."""
        return self._image.copy()

    def _doComputeImage(self, x: float, y: float) -> np.ndarray:
        return self._image

    def getKernelSum(self, x: float | None = None, y: float | None = None) -> float:
        """Sum of the kernel image (x, y ignored)."""
        self._resolve_xy(x, y)
        return float(self._image.sum())

    def _toHdus(self) -> list:
        from astropy.io import fits
        hdu = fits.PrimaryHDU(data=np.asarray(self._image, dtype=np.float64))
        hdu.header["KERNTYPE"] = ("FIXED", "diffcal kernel type")
        hdu.header["KERNVER"] = (_FORMAT_VERSION, "diffcal kernel FITS format version")
        hdu.header["KCTRX"] = (self.getCtrX(), "kernel centre column, (width-1)//2")
        hdu.header["KCTRY"] = (self.getCtrY(), "kernel centre row, (height-1)//2")
        return [hdu]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Kernel):
            return NotImplemented
        return type(other) is FixedKernel and np.array_equal(self._image, other._image)

    def __hash__(self) -> int:
        return hash(("FixedKernel", self._image.shape, self._image.tobytes()))

    def __repr__(self) -> str:
        return f"FixedKernel(<array {self._height}x{self._width}, sum={float(self._image.sum())!r}>)"

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._image = np.array(self._image, dtype=np.float64)
        self._image.setflags(write=False)


# ---------------------------------------------------------------------------------------------
# LinearCombinationKernel
# ---------------------------------------------------------------------------------------------

def _term_exponents(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Exponents (i, j) of x and y for each term, afw PolynomialFunction2D order.

    Degree by degree: 1; x, y; x^2, xy, y^2; x^3, x^2 y, x y^2, y^3; ...
    """
    ix: list[int] = []
    iy: list[int] = []
    for d in range(order + 1):
        for k in range(d + 1):
            ix.append(d - k)
            iy.append(k)
    return np.array(ix, dtype=np.intp), np.array(iy, dtype=np.intp)


def _chebyshev_table(t: np.ndarray, order: int) -> np.ndarray:
    """``T_n(t)`` for n = 0..order, shape ``(len(t), order + 1)`` (Chebyshev polynomials, 1st kind)."""
    out = np.empty((t.size, order + 1), dtype=np.float64)
    out[:, 0] = 1.0
    if order >= 1:
        out[:, 1] = t
    for n in range(2, order + 1):                 # loop over polynomial degree, not pixels
        out[:, n] = 2.0 * t * out[:, n - 1] - out[:, n - 2]
    return out


class LinearCombinationKernel(Kernel):
    """The Alard-Lupton spatially varying kernel ``K(x, y) = sum_i c_i(x, y) B_i``.

    Parameters
    ----------
    basis_images
        ``n >= 1`` basis kernel images ``B_i``: a sequence of 2-D arrays of equal shape ``(h, w)`` or
        one ``(n, h, w)`` array. Copied to float64; must be finite.
    spatial_coefficients
        Array of shape ``(n, nTerms)`` with ``nTerms = (order + 1)(order + 2) / 2``: row ``i`` holds the
        coefficients of the spatial function ``c_i``.
    spatial_order
        Total degree of the spatial functions (>= 0). Order 0 gives a kernel that is not spatially
        varying.
    bbox
        :class:`~diffcal.geom.Box2I`, the domain of validity in parent pixel coordinates (normally the
        bbox of the image the kernel was fitted on). It is stored (:meth:`getBBox`) and, for
        ``chebyshev1``, defines the coordinate mapping. Evaluation outside it is allowed and simply
        extrapolates the spatial functions.
    spatial_function
        Keyword-only. ``"polynomial"`` (default): ``c_i(x, y) = sum_t C[i, t] x^a_t y^b_t`` with ``(x, y)``
        in parent pixel coordinates, as afw's PolynomialFunction2D. ``"chebyshev1"``: the terms are
        ``T_a(x') T_b(y')`` (Chebyshev polynomials of the first kind) with
        ``x' = (2 x - (x_min + x_max)) / (x_max - x_min)``, ``x_min = bbox.minX - 0.5``,
        ``x_max = bbox.maxX + 0.5`` (the float box of the pixel edges; same for y), as afw's
        Chebyshev1Function2D.

    Notes
    -----
    Term order (both spatial functions), degree by degree as afw's PolynomialFunction2D:
    ``1, x, y, x^2, x y, y^2, x^3, x^2 y, x y^2, y^3, ...`` (for degree ``d``: ``x^d, x^(d-1) y, ..., y^d``).

    The kernel coefficients at a position are ``c(x, y) = C @ terms(x, y)``
    (:meth:`computeKernelParameters`), and the image is ``sum_i c_i B_i``; no normalisation unless
    requested.

    FITS layout (:meth:`writeFits`, format version 1):

    * primary HDU: float64 image cube of shape ``(n, h, w)`` (``NAXIS1 = w``, ``NAXIS2 = h``,
      ``NAXIS3 = n``), the basis images in order; header ``KERNTYPE = 'LINEARCOMBINATION'``,
      ``KERNVER = 1``, ``NBASIS = n``, ``SPORDER`` (spatial order), ``SPFUNC`` (``'polynomial'`` or
      ``'chebyshev1'``), ``NSPTERMS`` (nTerms), ``BBMINX``, ``BBMINY``, ``BBMAXX``, ``BBMAXY`` (inclusive
      bbox corners, parent pixels);
    * HDU 1: binary table ``EXTNAME = 'SPATIAL'`` with ``n`` rows (one per basis image, same order) and a
      float64 vector column ``COEFFS`` of length nTerms (format ``'<nTerms>D'``) holding
      ``spatial_coefficients[i]``.
    """

    def __init__(self, basis_images: Sequence[npt.ArrayLike] | npt.ArrayLike,
                 spatial_coefficients: npt.ArrayLike, spatial_order: int, bbox: Box2I, *,
                 spatial_function: str = "polynomial") -> None:
        basis = self._validate_basis(basis_images)
        n, h, w = basis.shape
        order = _as_order(spatial_order)
        n_terms = nSpatialTerms(order)
        coeffs = np.asarray(spatial_coefficients)
        _check_real_dtype(coeffs, "spatial_coefficients")
        if coeffs.shape != (n, n_terms):
            raise ValueError(f"spatial_coefficients has shape {coeffs.shape}, but {n} basis image(s) with "
                             f"spatial_order {order} need shape ({n}, {n_terms}) "
                             f"(one row per basis image, (order+1)(order+2)/2 = {n_terms} terms per row)")
        coeffs = np.array(coeffs, dtype=np.float64, order="C", copy=True)
        if not np.all(np.isfinite(coeffs)):
            raise ValueError("spatial_coefficients contains non-finite value(s) (NaN or Inf)")
        coeffs.setflags(write=False)
        if not isinstance(bbox, Box2I):
            raise TypeError(f"bbox must be a diffcal.geom.Box2I, got {type(bbox).__name__}")
        if bbox.isEmpty():
            raise ValueError("bbox (the kernel's domain of validity) must not be empty")
        if not isinstance(spatial_function, str) or spatial_function not in SPATIAL_FUNCTIONS:
            raise ValueError(f"spatial_function must be one of {SPATIAL_FUNCTIONS}, got {spatial_function!r}")
        super().__init__(w, h)
        self._basis = basis
        self._coeffs = coeffs
        self._order = order
        self._bbox = bbox
        self._function = spatial_function
        self._ix, self._iy = _term_exponents(order)

    @staticmethod
    def _validate_basis(basis_images: Any) -> np.ndarray:
        if isinstance(basis_images, np.ndarray):
            _check_real_dtype(basis_images, "basis_images")
            if basis_images.ndim != 3:
                hint = " (wrap a single basis image in a list)" if basis_images.ndim == 2 else ""
                raise ValueError("basis_images must be a sequence of 2-D arrays or an (n, h, w) array, got "
                                 f"an array of shape {basis_images.shape}{hint}")
            images = list(basis_images)
        else:
            try:
                images = list(basis_images)
            except TypeError:
                raise TypeError("basis_images must be a sequence of 2-D arrays or an (n, h, w) array, got "
                                f"{type(basis_images).__name__}") from None
        if len(images) == 0:
            raise ValueError("basis_images must contain at least one basis image")
        arrays = [_as_kernel_array(im, f"basis_images[{i}]") for i, im in enumerate(images)]
        shape0 = arrays[0].shape
        for i, arr in enumerate(arrays):
            if arr.shape != shape0:
                raise ValueError(f"basis_images[{i}] has shape {arr.shape}, but basis_images[0] has shape "
                                 f"{shape0}; all basis images must have the same shape")
        cube = np.ascontiguousarray(np.stack(arrays, axis=0))
        cube.setflags(write=False)
        return cube

    # --- accessors ---
    def isSpatiallyVarying(self) -> bool:
        """True when the spatial order is > 0."""
        return self._order > 0

    def getBBox(self) -> Box2I:
        """Domain of validity (parent pixel coordinates); evaluation outside it extrapolates."""
        return self._bbox

    def getSpatialOrder(self) -> int:
        """Total degree of the spatial functions."""
        return self._order

    def getSpatialFunction(self) -> str:
        """``'polynomial'`` or ``'chebyshev1'``."""
        return self._function

    def getNBasisKernels(self) -> int:
        """Number of basis images ``n``."""
        return self._basis.shape[0]

    def getNSpatialParameters(self) -> int:
        """Number of terms per spatial function, ``(order + 1)(order + 2) / 2``."""
        return self._coeffs.shape[1]

    def getSpatialParameters(self) -> np.ndarray:
        """Copy of the ``(n, nTerms)`` spatial coefficient array."""
        return self._coeffs.copy()

    def getBasisImages(self) -> np.ndarray:
        """Copy of the basis images as an ``(n, h, w)`` float64 array (iterable like a list)."""
        return self._basis.copy()

    # --- evaluation ---
    def computeSpatialTerms(self, xs: npt.ArrayLike, ys: npt.ArrayLike) -> np.ndarray:
        """Values of the spatial basis terms at parent positions, shape ``(m, nTerms)``.

        Column ``t`` is term ``t`` in the documented order (``1, x, y, x^2, x y, y^2, ...`` or the
        Chebyshev equivalent).
        """
        xa = _as_coord_array(xs, "xs")
        ya = _as_coord_array(ys, "ys")
        if xa.shape != ya.shape:
            raise ValueError(f"xs and ys must have the same length, got {xa.size} and {ya.size}")
        return self._terms(xa, ya)

    def _terms(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        if self._function == "polynomial":
            px = xs[:, np.newaxis] ** np.arange(self._order + 1)
            py = ys[:, np.newaxis] ** np.arange(self._order + 1)
        else:
            b = self._bbox
            x_min, x_max = b.getMinX() - 0.5, b.getMaxX() + 0.5
            y_min, y_max = b.getMinY() - 0.5, b.getMaxY() + 0.5
            px = _chebyshev_table((2.0 * xs - (x_min + x_max)) / (x_max - x_min), self._order)
            py = _chebyshev_table((2.0 * ys - (y_min + y_max)) / (y_max - y_min), self._order)
        return px[:, self._ix] * py[:, self._iy]

    def computeKernelParameters(self, xs: npt.ArrayLike, ys: npt.ArrayLike) -> np.ndarray:
        """Kernel coefficients ``c_i`` at parent positions, shape ``(m, n)``."""
        return self.computeSpatialTerms(xs, ys) @ self._coeffs.T

    def getKernelParameters(self, x: float | None = None, y: float | None = None) -> np.ndarray:
        """Kernel coefficients ``c_i(x, y)``, shape ``(n,)`` (x, y required if spatially varying)."""
        xf, yf = self._resolve_xy(x, y)
        return self._terms(np.array([xf]), np.array([yf]))[0] @ self._coeffs.T

    def _doComputeImage(self, x: float, y: float) -> np.ndarray:
        params = self._terms(np.array([x]), np.array([y]))[0] @ self._coeffs.T
        return np.tensordot(params, self._basis, axes=(0, 0))

    def _doComputeImages(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        params = self._terms(xs, ys) @ self._coeffs.T                  # (m, n)
        return np.tensordot(params, self._basis, axes=(1, 0))          # (m, h, w)

    # --- FITS ---
    def _toHdus(self) -> list:
        from astropy.io import fits
        primary = fits.PrimaryHDU(data=np.asarray(self._basis, dtype=np.float64))
        hdr = primary.header
        hdr["KERNTYPE"] = ("LINEARCOMBINATION", "diffcal kernel type")
        hdr["KERNVER"] = (_FORMAT_VERSION, "diffcal kernel FITS format version")
        hdr["NBASIS"] = (self.getNBasisKernels(), "number of basis images (NAXIS3)")
        hdr["SPORDER"] = (self._order, "spatial order (total degree)")
        hdr["SPFUNC"] = (self._function, "spatial function: polynomial or chebyshev1")
        hdr["NSPTERMS"] = (self.getNSpatialParameters(), "spatial terms per basis image")
        b = self._bbox
        hdr["BBMINX"] = (b.getMinX(), "validity bbox min x (parent pixels, inclusive)")
        hdr["BBMINY"] = (b.getMinY(), "validity bbox min y (parent pixels, inclusive)")
        hdr["BBMAXX"] = (b.getMaxX(), "validity bbox max x (parent pixels, inclusive)")
        hdr["BBMAXY"] = (b.getMaxY(), "validity bbox max y (parent pixels, inclusive)")
        n_terms = self.getNSpatialParameters()
        column = fits.Column(name="COEFFS", format=f"{n_terms}D", array=np.asarray(self._coeffs))
        table = fits.BinTableHDU.from_columns([column], name="SPATIAL")
        return [primary, table]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Kernel):
            return NotImplemented
        return (type(other) is LinearCombinationKernel
                and self._order == other._order and self._function == other._function
                and self._bbox == other._bbox
                and np.array_equal(self._basis, other._basis)
                and np.array_equal(self._coeffs, other._coeffs))

    def __hash__(self) -> int:
        return hash(("LinearCombinationKernel", self._order, self._function, self._bbox,
                     self._basis.shape, self._basis.tobytes(), self._coeffs.tobytes()))

    def __repr__(self) -> str:
        return (f"LinearCombinationKernel(<{self.getNBasisKernels()} basis images {self._height}x"
                f"{self._width}>, spatial_order={self._order}, bbox={self._bbox!r}, "
                f"spatial_function={self._function!r})")

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for name in ("_basis", "_coeffs"):
            arr = np.array(getattr(self, name), dtype=np.float64)
            arr.setflags(write=False)
            setattr(self, name, arr)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _header_int(header: Any, key: str, path: str) -> int:
    if key not in header:
        raise FitsFormatError(f"{path!r}: missing header key {key}")
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FitsFormatError(f"{path!r}: header key {key} must be an integer, got {value!r}")
    return int(value)


def readKernelFits(path: PathLike) -> Kernel:
    """Read a kernel FITS file written by :meth:`Kernel.writeFits`.

    Dispatches on the primary header's ``KERNTYPE``: ``'FIXED'`` gives a :class:`FixedKernel`,
    ``'LINEARCOMBINATION'`` a :class:`LinearCombinationKernel` (layouts in their docstrings).
    Values round-trip exactly.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    diffcal.errors.FitsFormatError
        If the file is not valid FITS, is truncated, lacks ``KERNTYPE``, has an unknown kernel type,
        or its content is inconsistent (the message names the path and the problem).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"kernel FITS file {path!r} does not exist")
    from astropy.io import fits
    try:
        with warnings.catch_warnings():
            # astropy reports truncated/corrupt files partly through warnings: make them errors
            warnings.simplefilter("error")
            with open(path, "rb") as fh, fits.open(fh, memmap=False) as hdul:
                primary = hdul[0]
                header = primary.header
                data = None if primary.data is None else np.array(primary.data, dtype=np.float64)
                spatial = None
                if "SPATIAL" in hdul:
                    tab = hdul["SPATIAL"]
                    if not isinstance(tab, fits.BinTableHDU):
                        raise FitsFormatError(f"{path!r}: HDU 'SPATIAL' is not a binary table")
                    if tab.data is None or "COEFFS" not in tab.columns.names:
                        raise FitsFormatError(f"{path!r}: HDU 'SPATIAL' has no COEFFS column")
                    spatial = np.array(tab.data["COEFFS"], dtype=np.float64)
                header = header.copy()
    except FitsFormatError:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, warnings-as-errors, ...
        raise FitsFormatError(f"{path!r}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc

    kind = header.get("KERNTYPE")
    if kind is None:
        raise FitsFormatError(f"{path!r}: not a diffcal kernel file (no KERNTYPE key in the primary header)")
    version = header.get("KERNVER", _FORMAT_VERSION)
    if version != _FORMAT_VERSION:
        raise FitsFormatError(f"{path!r}: unsupported kernel FITS format version KERNVER={version!r}")
    if data is None:
        raise FitsFormatError(f"{path!r}: primary HDU holds no kernel image data")
    try:
        if kind == "FIXED":
            if data.ndim != 2:
                raise FitsFormatError(f"{path!r}: FIXED kernel image must be 2-D, got shape {data.shape}")
            return FixedKernel(data)
        if kind == "LINEARCOMBINATION":
            if data.ndim != 3:
                raise FitsFormatError(f"{path!r}: LINEARCOMBINATION basis cube must be 3-D (n, h, w), "
                                      f"got shape {data.shape}")
            n = _header_int(header, "NBASIS", path)
            order = _header_int(header, "SPORDER", path)
            n_terms = _header_int(header, "NSPTERMS", path)
            if n != data.shape[0]:
                raise FitsFormatError(f"{path!r}: NBASIS={n} but the basis cube holds {data.shape[0]} images")
            if order < 0 or n_terms != nSpatialTerms(order):
                raise FitsFormatError(f"{path!r}: NSPTERMS={n_terms} inconsistent with SPORDER={order}")
            func = header.get("SPFUNC")
            if func not in SPATIAL_FUNCTIONS:
                raise FitsFormatError(f"{path!r}: unknown spatial function SPFUNC={func!r}")
            bbox = Box2I((_header_int(header, "BBMINX", path), _header_int(header, "BBMINY", path)),
                         (_header_int(header, "BBMAXX", path), _header_int(header, "BBMAXY", path)))
            if spatial is None:
                raise FitsFormatError(f"{path!r}: missing the 'SPATIAL' coefficient table HDU")
            spatial = spatial.reshape(spatial.shape[0], -1) if spatial.ndim >= 1 else spatial
            if spatial.shape != (n, n_terms):
                raise FitsFormatError(f"{path!r}: SPATIAL table COEFFS has shape {spatial.shape}, "
                                      f"expected ({n}, {n_terms})")
            return LinearCombinationKernel(data, spatial, order, bbox, spatial_function=func)
    except FitsFormatError:
        raise
    except (TypeError, ValueError) as exc:
        raise FitsFormatError(f"{path!r}: invalid kernel content ({exc})") from exc
    raise FitsFormatError(f"{path!r}: unknown kernel type KERNTYPE={kind!r} "
                          "(expected 'FIXED' or 'LINEARCOMBINATION')")
