"""Masked images and exposures with the LSST ``afw.image`` conventions, on plain numpy arrays.

Three classes:

:class:`Mask`
    An ``int32`` array whose bits are *named planes* (``BAD``, ``SAT``, ``EDGE``, ...).
:class:`MaskedImage`
    An image plane, a :class:`Mask` and a variance plane sharing one bounding box.
:class:`Exposure`
    A :class:`MaskedImage` plus a PSF, a WCS, a photometric calibration and a FITS header
    of metadata.

Conventions
-----------
* **Arrays are indexed** ``[y, x]`` (row, column), as numpy does. Shape ``(height, width)``.
* **Parent coordinates.** Every image has an origin ``xy0 = (x0, y0)``: array element
  ``[j, i]`` is the pixel whose centre is at parent position ``(x0 + i, y0 + j)``. Bounding
  boxes (:class:`diffcal.geom.Box2I`, inclusive) are always given in parent coordinates, so a
  view ``mi[bbox]`` covers the same sky pixels whatever the origin of ``mi``.
* **Units.** Image pixels are in the exposure's flux units (counts for a calexp) and the
  variance plane is in those units squared. Positions are in pixels.
* **Sharing.** Arrays handed to a constructor are *shared*, not copied, whenever their dtype
  is allowed (any memory layout, C- or Fortran-ordered or strided views); views made with
  ``[bbox]`` share memory with their parent and write through. :meth:`clone` makes deep copies.
  Nothing here mutates its inputs unless the method says so (``-=``, ``+=``, setters,
  :meth:`Mask.addMaskPlane` on the shared plane dictionary, ...).
* **WCS.** An :class:`Exposure`'s WCS (an :class:`astropy.wcs.WCS`) maps **parent** pixel
  coordinates (0-based pixel centres, *including* ``xy0``) to the sky, exactly like afw's
  ``SkyWcs``. Call it with ``origin=0`` (``wcs.pixel_to_world(x, y)`` or
  ``wcs.all_pix2world(x, y, 0)``) on parent positions. Because the mapping is in parent
  coordinates, a view ``exposure[bbox]`` reuses the very same WCS object. In a FITS file the
  WCS refers to *array* pixels (1-based, FITS standard), so ``writeFits`` shifts ``CRPIX`` by
  ``-xy0`` and ``readFits`` shifts it back; :meth:`Exposure.setXY0` shifts it too so that every
  pixel keeps its sky position.

FITS files use the LSST MaskedImage/Exposure layout; see :mod:`diffcal._fits`.
"""

from __future__ import annotations

import copy
import numbers
import os
import re
from typing import Any, Iterable, Mapping, Union

import numpy as np
from astropy.io import fits

from .errors import MaskPlaneLimitError, UnknownMaskPlaneError
from .geom import Box2I, Extent2I, Point2I, _as_int_pair

__all__ = [
    "DEFAULT_MASK_PLANES",
    "MAX_MASK_PLANES",
    "Mask",
    "MaskedImage",
    "Exposure",
    "XY0_POLICIES",
]

#: Default mask planes of a new :class:`Mask`, in bit order (``BAD`` is bit 0).
DEFAULT_MASK_PLANES: tuple[str, ...] = (
    "BAD",
    "SAT",
    "INTRP",
    "CR",
    "EDGE",
    "DETECTED",
    "DETECTED_NEGATIVE",
    "SUSPECT",
    "NO_DATA",
)

#: Number of bits of a mask pixel (``int32``), hence the maximum number of planes.
MAX_MASK_PLANES: int = 32

#: Accepted values of the ``xy0Policy`` argument of the ``readFits`` methods.
XY0_POLICIES: tuple[str, ...] = ("image", "mask", "error")

_IMAGE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_MASK_DTYPE = np.dtype(np.int32)
_INT32_MIN = int(np.iinfo(np.int32).min)
_INT32_MAX = int(np.iinfo(np.int32).max)
# A plane name becomes the FITS keyword MP_<NAME> (a HIERARCH card when long): printable
# ASCII without blanks or '='.
_PLANE_NAME_RE = re.compile(r"^[!-<>-~]+$")

PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _check_plane_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"mask plane names must be str, got {name!r} ({type(name).__name__})")
    if not _PLANE_NAME_RE.match(name):
        raise ValueError(
            f"invalid mask plane name {name!r}: use printable ASCII without blanks or '=' "
            "(e.g. 'INVALID_MAPREDUCE')"
        )
    return name


def _signed32(bits: int) -> int:
    """Return a 32-bit pattern as the signed value an ``int32`` array holds (bit 31 < 0)."""
    bits &= 0xFFFFFFFF
    return bits - (1 << 32) if bits & 0x80000000 else bits


def _default_planes() -> dict[str, int]:
    return {name: bit for bit, name in enumerate(DEFAULT_MASK_PLANES)}


def _validate_planes(planes: Mapping[str, int], what: str = "planes") -> dict[str, int]:
    """Validated copy of a ``{name: bit}`` mapping (bits 0..31, no bit used twice)."""
    if not isinstance(planes, Mapping):
        raise TypeError(f"{what} must be a mapping {{name: bit}}, got {type(planes).__name__}")
    out: dict[str, int] = {}
    owner: dict[int, str] = {}
    for name, bit in planes.items():
        _check_plane_name(name)
        if isinstance(bit, bool) or not isinstance(bit, numbers.Integral):
            raise TypeError(f"{what}: bit of mask plane {name!r} must be an integer, got {bit!r}")
        bit = int(bit)
        if not 0 <= bit < MAX_MASK_PLANES:
            raise ValueError(
                f"{what}: bit {bit} of mask plane {name!r} is outside 0..{MAX_MASK_PLANES - 1}"
            )
        if bit in owner:
            raise ValueError(f"{what}: mask planes {owner[bit]!r} and {name!r} both use bit {bit}")
        owner[bit] = name
        out[name] = bit
    return dict(sorted(out.items(), key=lambda item: item[1]))


def _as_plane_array(array: Any, plane: str) -> np.ndarray:
    """Image or variance plane: a 2-D float32/float64 array, shared when possible."""
    arr = array if isinstance(array, np.ndarray) else np.asarray(array)
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
        raise TypeError(
            f"{plane} plane has dtype {arr.dtype}; expected float32 or float64"
        )
    if not arr.dtype.isnative:
        # e.g. big-endian '>f4' straight out of a FITS file: convert (this copies).
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.ndim != 2:
        raise ValueError(f"{plane} plane must be 2-D (height, width), got shape {arr.shape}")
    return arr


def _as_mask_array(array: Any) -> np.ndarray:
    """Mask plane: int32 shared; other integer dtypes converted (copy) when values fit."""
    arr = array if isinstance(array, np.ndarray) else np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"mask plane must be 2-D (height, width), got shape {arr.shape}")
    if arr.dtype == _MASK_DTYPE:
        return arr
    if arr.dtype.kind not in "iu":
        raise TypeError(f"mask plane has dtype {arr.dtype}; expected int32 (or another integer type)")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 4:
        # uint32 bit patterns: reinterpret, bit 31 becomes the sign bit of the int32.
        return arr.astype(np.dtype(np.uint32)).view(np.int32)
    if arr.size and arr.dtype.itemsize >= 4:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < _INT32_MIN or hi > _INT32_MAX:
            raise ValueError(
                f"mask plane of dtype {arr.dtype} has values in [{lo}, {hi}], "
                "which do not fit in int32"
            )
    return arr.astype(np.int32)


def _check_bbox(bbox: Any, parent: Box2I, what: str) -> Box2I:
    if not isinstance(bbox, Box2I):
        raise TypeError(
            f"{what} can only be indexed with a diffcal.geom.Box2I (parent coordinates), "
            f"got {type(bbox).__name__}"
        )
    if bbox.isEmpty():
        raise ValueError(f"cannot make a view of {what} {parent!r} with an empty box")
    if not parent.contains(bbox):
        raise ValueError(f"box {bbox!r} is not fully inside the {what} bounding box {parent!r}")
    return bbox


def _merge_planes(target: dict[str, int], other: Mapping[str, int]) -> dict[str, int]:
    """Planes of ``target`` extended with those of ``other``; raises if they conflict."""
    merged = dict(target)
    by_bit = {bit: name for name, bit in target.items()}
    for name, bit in other.items():
        if name in merged:
            if merged[name] != bit:
                raise ValueError(
                    f"mask plane {name!r} is bit {merged[name]} in one mask and bit {bit} in the other"
                )
        elif bit in by_bit:
            raise ValueError(
                f"bit {bit} is mask plane {by_bit[bit]!r} in one mask and {name!r} in the other"
            )
        else:
            merged[name] = bit
            by_bit[bit] = name
    return dict(sorted(merged.items(), key=lambda item: item[1]))


# ---------------------------------------------------------------------------------------------
# Mask
# ---------------------------------------------------------------------------------------------

class Mask:
    """An ``int32`` pixel mask whose bits are named planes.

    Parameters
    ----------
    array : numpy.ndarray
        2-D integer array ``[y, x]``. ``int32`` arrays are shared (never copied), whatever their
        memory layout; other integer dtypes are converted to ``int32`` with a copy provided every
        value fits (``uint32`` is reinterpreted bit for bit). Float, complex and boolean arrays
        raise :class:`TypeError`.
    xy0 : (int, int), optional
        Parent coordinates of ``array[0, 0]``.
    planes : Mapping[str, int], optional
        ``{name: bit}`` plane dictionary (copied). Default: :data:`DEFAULT_MASK_PLANES`, i.e.
        ``BAD=0, SAT=1, INTRP=2, CR=3, EDGE=4, DETECTED=5, DETECTED_NEGATIVE=6, SUSPECT=7,
        NO_DATA=8``.

    Notes
    -----
    A *mask family* is a mask together with all views made from it (``mask[bbox]``, the masks of
    ``maskedImage[bbox]`` and ``exposure[bbox]``): they share one plane dictionary, so a plane
    added through a view exists in the parent too. :meth:`clone` starts a new family with a copy
    of the dictionary. Bit values returned by :meth:`getPlaneBitMask` are signed 32-bit integers
    so that they combine directly with the ``int32`` array (``mask.array & bits``).
    """

    __slots__ = ("_array", "_xy0", "_planes", "__weakref__")

    def __init__(self, array: Any, *, xy0: Iterable[int] = (0, 0),
                 planes: Mapping[str, int] | None = None):
        self._array = _as_mask_array(array)
        self._xy0 = Point2I(*_as_int_pair(xy0, "xy0"))
        self._planes = _default_planes() if planes is None else _validate_planes(planes)

    @classmethod
    def _wrap(cls, array: np.ndarray, xy0: Point2I, planes: dict[str, int]) -> "Mask":
        """Internal: wrap an already validated int32 array, *sharing* ``planes``."""
        self = cls.__new__(cls)
        self._array = array
        self._xy0 = xy0
        self._planes = planes
        return self

    @classmethod
    def fromDimensions(cls, dimensions: Iterable[int], *, xy0: Iterable[int] = (0, 0),
                       planes: Mapping[str, int] | None = None) -> "Mask":
        """A zero mask of ``dimensions = (width, height)`` pixels.

        Parameters
        ----------
        dimensions : (int, int)
            Width and height in pixels (non-negative).
        xy0 : (int, int), optional
            Parent coordinates of the first pixel.
        planes : Mapping[str, int], optional
            Plane dictionary (copied); default planes when omitted.
        """
        width, height = _as_int_pair(dimensions, "dimensions")
        if width < 0 or height < 0:
            raise ValueError(f"mask dimensions must be non-negative, got {(width, height)}")
        return cls(np.zeros((height, width), dtype=np.int32), xy0=xy0, planes=planes)

    # --- pixels and geometry ---
    @property
    def array(self) -> np.ndarray:
        """The ``int32`` pixel array ``[y, x]`` (shared, not a copy).

        Assigning to it writes values into the existing array (shape must broadcast).
        """
        return self._array

    @array.setter
    def array(self, value: Any) -> None:
        self._array[...] = np.asarray(value.array if isinstance(value, Mask) else value)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy:
            return np.array(self._array, dtype=dtype, copy=True)
        if dtype is None or np.dtype(dtype) == self._array.dtype:
            return self._array
        return self._array.astype(dtype)

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(height, width)``."""
        return self._array.shape  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        """Always ``int32``."""
        return self._array.dtype

    def getXY0(self) -> Point2I:
        """Parent coordinates of the first pixel ``array[0, 0]``."""
        return self._xy0

    def setXY0(self, xy0: Iterable[int]) -> None:
        """Set the parent coordinates of the first pixel (pixels are not moved)."""
        self._xy0 = Point2I(*_as_int_pair(xy0, "xy0"))

    def getBBox(self) -> Box2I:
        """Bounding box in parent coordinates (inclusive)."""
        h, w = self._array.shape
        return Box2I(self._xy0, dimensions=(w, h))

    def getWidth(self) -> int:
        """Width in pixels (number of columns)."""
        return self._array.shape[1]

    def getHeight(self) -> int:
        """Height in pixels (number of rows)."""
        return self._array.shape[0]

    def getDimensions(self) -> Extent2I:
        """``(width, height)`` in pixels."""
        return Extent2I(self._array.shape[1], self._array.shape[0])

    def __getitem__(self, bbox: Box2I) -> "Mask":
        """View of the pixels in ``bbox`` (parent coordinates); shares memory and planes."""
        bbox = _check_bbox(bbox, self.getBBox(), "mask")
        return Mask._wrap(self._array[bbox.slices(self._xy0)], bbox.getMin(), self._planes)

    def clone(self) -> "Mask":
        """Deep copy: pixels and plane dictionary copied (a new mask family)."""
        return Mask._wrap(self._array.copy(), self._xy0, dict(self._planes))

    def __ior__(self, other: "Mask | int") -> "Mask":
        """OR another mask of the same bounding box (or an integer bit pattern) into this one.

        The other mask's planes are added to this family's dictionary; a plane that has a
        different bit in the two masks raises :class:`ValueError`.
        """
        if isinstance(other, Mask):
            if other.getBBox() != self.getBBox():
                raise ValueError(
                    f"cannot OR masks with different bounding boxes: {self.getBBox()!r} "
                    f"and {other.getBBox()!r}"
                )
            merged = _merge_planes(self._planes, other._planes)
            self._planes.update(merged)
            np.bitwise_or(self._array, other._array, out=self._array)
            return self
        if isinstance(other, numbers.Integral) and not isinstance(other, bool):
            np.bitwise_or(self._array, np.int32(_signed32(int(other))), out=self._array)
            return self
        return NotImplemented

    # --- planes ---
    def addMaskPlane(self, name: str) -> int:
        """Define a mask plane (for the whole mask family) and return its bit index.

        Idempotent: an existing plane keeps its bit. A new plane takes the lowest free bit.

        Raises
        ------
        MaskPlaneLimitError
            All 32 bits are already in use.
        """
        _check_plane_name(name)
        if name in self._planes:
            return self._planes[name]
        used = set(self._planes.values())
        for bit in range(MAX_MASK_PLANES):
            if bit not in used:
                self._planes[name] = bit
                return bit
        raise MaskPlaneLimitError(
            f"cannot add mask plane {name!r}: all {MAX_MASK_PLANES} bits are in use "
            f"({', '.join(self._planes)})"
        )

    def getMaskPlane(self, name: str) -> int:
        """Bit index (0..31) of plane ``name``.

        Raises
        ------
        UnknownMaskPlaneError
            The plane is not defined; the message lists the known planes.
        """
        try:
            return self._planes[name]
        except (KeyError, TypeError):
            known = ", ".join(self._planes) or "(none)"
            raise UnknownMaskPlaneError(
                f"unknown mask plane {name!r}; known planes: {known}"
            ) from None

    def getPlaneBitMask(self, names: str | Iterable[str]) -> int:
        """Bit pattern of one plane (``str``) or the OR of several (iterable of ``str``).

        Returns a signed 32-bit value (bit 31 gives a negative number) usable directly with the
        ``int32`` array, e.g. ``(mask.array & mask.getPlaneBitMask(["BAD", "SAT"])) != 0``.
        """
        if isinstance(names, str):
            names = (names,)
        elif not isinstance(names, Iterable):
            raise TypeError(f"plane names must be a str or an iterable of str, got {names!r}")
        bits = 0
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"mask plane names must be str, got {name!r}")
            bits |= 1 << self.getMaskPlane(name)
        return _signed32(bits)

    def getMaskPlaneDict(self) -> dict[str, int]:
        """A copy of the ``{name: bit}`` plane dictionary, ordered by bit."""
        return dict(sorted(self._planes.items(), key=lambda item: item[1]))

    def clearMaskPlane(self, name: str) -> None:
        """Clear the bit of plane ``name`` in every pixel of this mask (the plane stays defined)."""
        bit = self.getMaskPlane(name)
        np.bitwise_and(self._array, np.int32(_signed32(~(1 << bit))), out=self._array)

    def removeAndClearMaskPlane(self, name: str) -> None:
        """Clear plane ``name`` in this mask's pixels and remove it from the family dictionary.

        Pixels of *other* members of the family (e.g. the parent outside a view) keep the bit;
        the bit becomes free for :meth:`addMaskPlane`.
        """
        self.clearMaskPlane(name)
        del self._planes[name]

    def __repr__(self) -> str:
        return (f"Mask(shape={self.shape}, xy0=({self._xy0.x}, {self._xy0.y}), "
                f"planes={self.getMaskPlaneDict()})")


# ---------------------------------------------------------------------------------------------
# MaskedImage
# ---------------------------------------------------------------------------------------------

class MaskedImage:
    """Image, mask and variance planes over one bounding box.

    Parameters
    ----------
    image : numpy.ndarray
        2-D ``float32`` or ``float64`` array ``[y, x]`` (flux units). Shared, not copied (any
        memory layout); an array in non-native byte order is converted (copied).
    mask : numpy.ndarray or Mask, optional
        ``int32`` array (shared) or another integer dtype (converted with a copy if the values
        fit), or a :class:`Mask`, whose pixels and plane dictionary are shared (its own origin is
        ignored: ``xy0`` applies). Default: zeros with the default planes.
    variance : numpy.ndarray, optional
        2-D ``float32``/``float64`` array (flux units squared), shared. Default: zeros of the
        image dtype.
    xy0 : (int, int), optional
        Parent coordinates of pixel ``[0, 0]``.

    Raises
    ------
    TypeError
        A plane has a disallowed dtype (integer or complex image/variance; float, complex or
        bool mask); the message names the plane and dtype.
    ValueError
        A plane is not 2-D, or the shapes differ (message names both shapes).
    """

    __slots__ = ("_image", "_mask", "_variance")

    def __init__(self, image: Any, mask: Any = None, variance: Any = None, *,
                 xy0: Iterable[int] = (0, 0)):
        img = _as_plane_array(image, "image")
        origin = Point2I(*_as_int_pair(xy0, "xy0"))
        if mask is None:
            msk = Mask._wrap(np.zeros(img.shape, dtype=np.int32), origin, _default_planes())
        elif isinstance(mask, Mask):
            msk = Mask._wrap(mask.array, origin, mask._planes)
        else:
            msk = Mask._wrap(_as_mask_array(mask), origin, _default_planes())
        if variance is None:
            var = np.zeros(img.shape, dtype=img.dtype)
        else:
            var = _as_plane_array(variance, "variance")
        for plane, arr in (("mask", msk.array), ("variance", var)):
            if arr.shape != img.shape:
                raise ValueError(
                    f"{plane} plane shape {arr.shape} differs from image plane shape {img.shape}"
                )
        self._image = img
        self._mask = msk
        self._variance = var

    @classmethod
    def _wrap(cls, image: np.ndarray, mask: Mask, variance: np.ndarray) -> "MaskedImage":
        self = cls.__new__(cls)
        self._image, self._mask, self._variance = image, mask, variance
        return self

    # --- planes ---
    @property
    def image(self) -> np.ndarray:
        """The image plane ``[y, x]`` (shared). Assigning writes values into it."""
        return self._image

    @image.setter
    def image(self, value: Any) -> None:
        self._image[...] = value

    @property
    def mask(self) -> Mask:
        """The :class:`Mask` (``mask.array`` is the ``int32`` array). Assigning writes values."""
        return self._mask

    @mask.setter
    def mask(self, value: Any) -> None:
        self._mask.array = value

    @property
    def variance(self) -> np.ndarray:
        """The variance plane ``[y, x]`` (flux units squared, shared). Assigning writes values."""
        return self._variance

    @variance.setter
    def variance(self, value: Any) -> None:
        self._variance[...] = value

    def getImage(self) -> np.ndarray:
        """The image plane (same as :attr:`image`)."""
        return self._image

    def getMask(self) -> Mask:
        """The :class:`Mask` (same as :attr:`mask`)."""
        return self._mask

    def getVariance(self) -> np.ndarray:
        """The variance plane (same as :attr:`variance`)."""
        return self._variance

    @property
    def dtype(self) -> np.dtype:
        """dtype of the image plane (``float32`` or ``float64``)."""
        return self._image.dtype

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(height, width)``."""
        return self._image.shape  # type: ignore[return-value]

    # --- geometry ---
    def getXY0(self) -> Point2I:
        """Parent coordinates of pixel ``[0, 0]``."""
        return self._mask.getXY0()

    def setXY0(self, xy0: Iterable[int]) -> None:
        """Set the parent coordinates of pixel ``[0, 0]`` (pixels are not moved).

        The mask object is shared, so its origin changes too.
        """
        self._mask.setXY0(xy0)

    def getBBox(self) -> Box2I:
        """Bounding box in parent coordinates (inclusive)."""
        return self._mask.getBBox()

    def getDimensions(self) -> Extent2I:
        """``(width, height)`` in pixels."""
        return self._mask.getDimensions()

    def getWidth(self) -> int:
        """Width in pixels."""
        return self._image.shape[1]

    def getHeight(self) -> int:
        """Height in pixels."""
        return self._image.shape[0]

    def __getitem__(self, bbox: Box2I) -> "MaskedImage":
        """View of ``bbox`` (parent coordinates): all three planes share memory with ``self``.

        Raises
        ------
        ValueError
            ``bbox`` is empty or not fully inside :meth:`getBBox` (both boxes are named).
        TypeError
            ``bbox`` is not a :class:`~diffcal.geom.Box2I`.
        """
        bbox = _check_bbox(bbox, self.getBBox(), "masked image")
        sl = bbox.slices(self.getXY0())
        return MaskedImage._wrap(self._image[sl], self._mask[bbox], self._variance[sl])

    def clone(self) -> "MaskedImage":
        """Deep copy: new arrays (C order, same dtypes) and a copy of the plane dictionary."""
        return MaskedImage._wrap(self._image.copy(), self._mask.clone(), self._variance.copy())

    # --- arithmetic ---
    def _check_same_bbox(self, other: "MaskedImage", op: str) -> None:
        if other.getBBox() != self.getBBox():
            raise ValueError(
                f"cannot {op} masked images with different bounding boxes: "
                f"{self.getBBox()!r} and {other.getBBox()!r}"
            )

    @staticmethod
    def _is_scalar(value: Any) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)

    def _binary(self, other: Any, sign: int) -> "MaskedImage":
        if isinstance(other, MaskedImage):
            self._check_same_bbox(other, "subtract" if sign < 0 else "add")
            planes = _merge_planes(self._mask._planes, other._mask._planes)
            image = self._image - other._image if sign < 0 else self._image + other._image
            mask = Mask._wrap(self._mask.array | other._mask.array, self.getXY0(), planes)
            return MaskedImage._wrap(image, mask, self._variance + other._variance)
        if self._is_scalar(other):
            out = self.clone()
            out._image += sign * other
            return out
        return NotImplemented

    def _inplace(self, other: Any, sign: int) -> "MaskedImage":
        if isinstance(other, MaskedImage):
            self._check_same_bbox(other, "subtract" if sign < 0 else "add")
            self._mask |= other._mask  # checks plane conformance before touching pixels
            if sign < 0:
                np.subtract(self._image, other._image, out=self._image, casting="same_kind")
            else:
                np.add(self._image, other._image, out=self._image, casting="same_kind")
            np.add(self._variance, other._variance, out=self._variance, casting="same_kind")
            return self
        if self._is_scalar(other):
            self._image += sign * other
            return self
        return NotImplemented

    def __sub__(self, other: "MaskedImage | float") -> "MaskedImage":
        """``a - b``: images subtract, variances **add**, masks are OR-ed (new arrays).

        ``b`` may be a masked image with the same bounding box (planes of both masks must be
        compatible: same bit for the same name), or a real scalar, which only changes the image.
        The result has the origin of ``a`` and numpy's result dtype.
        """
        return self._binary(other, -1)

    def __add__(self, other: "MaskedImage | float") -> "MaskedImage":
        """``a + b``: images add, variances add, masks are OR-ed; scalars change the image only."""
        return self._binary(other, +1)

    def __radd__(self, other: float) -> "MaskedImage":
        return self._binary(other, +1)

    def __isub__(self, other: "MaskedImage | float") -> "MaskedImage":
        """In place ``a -= b`` (same semantics as :meth:`__sub__`, dtype of ``a`` kept)."""
        return self._inplace(other, -1)

    def __iadd__(self, other: "MaskedImage | float") -> "MaskedImage":
        """In place ``a += b`` (same semantics as :meth:`__add__`, dtype of ``a`` kept)."""
        return self._inplace(other, +1)

    # --- I/O ---
    @classmethod
    def readFits(cls, path: PathLike, *, xy0Policy: str = "image") -> "MaskedImage":
        """Read the IMAGE, MASK and VARIANCE HDUs of an LSST-layout FITS file.

        Parameters
        ----------
        path : str or os.PathLike
            File name (plain or tile-compressed, e.g. ``.fits.fz``).
        xy0Policy : {"image", "mask", "error"}
            What to do when the HDUs disagree about the pixel origin: ``"image"`` uses the IMAGE
            HDU's origin and emits :class:`~diffcal.errors.InconsistentXy0Warning` naming the HDUs
            and values; ``"mask"`` uses the MASK HDU's origin (no warning: the caller chose);
            ``"error"`` raises :class:`~diffcal.errors.FitsFormatError`.

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        FitsFormatError
            The file is corrupt, truncated or lacks an IMAGE, MASK or VARIANCE HDU.
        """
        from . import _fits

        contents = _fits.read_fits(path, xy0Policy=xy0Policy, stacklevel=3)
        return contents.masked_image()

    def writeFits(self, path: PathLike) -> None:
        """Write the LSST MaskedImage layout (empty primary, IMAGE, MASK, VARIANCE).

        The file is written to a temporary name and renamed, so a failed write never leaves a
        partial file at ``path``; an existing file is replaced. See :mod:`diffcal._fits`.
        """
        from . import _fits

        _fits.write_fits(path, self)

    def __repr__(self) -> str:
        x0, y0 = self.getXY0()
        return f"MaskedImage(shape={self.shape}, dtype={self.dtype}, xy0=({x0}, {y0}))"


# ---------------------------------------------------------------------------------------------
# Exposure
# ---------------------------------------------------------------------------------------------

def _check_wcs(wcs: Any) -> Any:
    if wcs is None:
        return None
    from astropy.wcs import WCS

    if not isinstance(wcs, WCS):
        raise TypeError(f"wcs must be an astropy.wcs.WCS or None, got {type(wcs).__name__}")
    if wcs.pixel_n_dim != 2:
        raise ValueError(f"wcs must have 2 pixel axes, got {wcs.pixel_n_dim}")
    return wcs


def _check_metadata(metadata: Any) -> fits.Header:
    if metadata is None:
        return fits.Header()
    if isinstance(metadata, fits.Header):
        return metadata
    if isinstance(metadata, Mapping):
        header = fits.Header()
        for key, value in metadata.items():
            if not isinstance(key, str):
                raise TypeError(f"metadata keys must be str, got {key!r}")
            # <= 8 characters: an ordinary (upper-cased) keyword; longer: a HIERARCH card.
            standard = len(key) <= 8 and all(c.isalnum() or c in "_-" for c in key)
            header[key if standard or key.upper().startswith("HIERARCH ") else f"HIERARCH {key}"] = value
        return header
    raise TypeError(
        f"metadata must be an astropy.io.fits.Header, a mapping or None, got {type(metadata).__name__}"
    )


def _shift_wcs(wcs: Any, dx: float, dy: float) -> Any:
    """A copy of ``wcs`` whose pixel frame is shifted: new(x + dx, y + dy) == old(x, y).

    ``CRPIX`` (and the SIP reference pixel) move by ``(dx, dy)``; the input is not modified.
    """
    out = copy.deepcopy(wcs)
    if dx == 0 and dy == 0:
        return out
    if any(getattr(out, name, None) is not None for name in ("cpdis1", "cpdis2", "det2im1", "det2im2")):
        raise ValueError(
            "cannot shift a WCS with lookup-table distortions (cpdis/det2im); "
            "only FITS header WCS (including SIP) is supported"
        )
    crpix = np.array(out.wcs.crpix, dtype=float)
    crpix[0] += dx
    crpix[1] += dy
    out.wcs.crpix = crpix
    if out.sip is not None:
        from astropy.wcs import Sip

        sip = out.sip
        out.sip = Sip(sip.a, sip.b, sip.ap, sip.bp, crpix)
    out.wcs.set()
    return out


class Exposure:
    """A :class:`MaskedImage` with a PSF, a WCS, a photometric calibration and metadata.

    Parameters
    ----------
    image, mask, variance, xy0
        As for :class:`MaskedImage` (arrays are shared, not copied, when the dtype allows).
    psf : diffcal.psf.Psf, optional
        Point-spread function (positions in parent pixel coordinates).
    wcs : astropy.wcs.WCS, optional
        Maps **parent** pixel coordinates (0-based pixel centres including ``xy0``;
        call with ``origin=0``) to the sky, like afw's ``SkyWcs``.
    photoCalib : object, optional
        Photometric calibration (stored and carried along; not written to FITS).
    metadata : astropy.io.fits.Header or Mapping, optional
        Header cards (shared when a Header is given; an empty Header by default). Written to the
        primary HDU of FITS files.

    Notes
    -----
    ``exposure.image``, ``exposure.mask`` and ``exposure.variance`` are the numpy arrays
    (``exposure.mask`` is the ``int32`` array); the :class:`Mask` object with its planes is
    ``exposure.maskedImage.mask``. ``exposure[bbox]`` is a view (pixels, PSF, WCS, photoCalib and
    metadata shared); :meth:`clone` is a deep copy.
    """

    __slots__ = ("_mi", "_psf", "_wcs", "_photoCalib", "_metadata")

    def __init__(self, image: Any, mask: Any = None, variance: Any = None, *,
                 xy0: Iterable[int] = (0, 0), psf: Any = None, wcs: Any = None,
                 photoCalib: Any = None, metadata: Any = None):
        self._mi = MaskedImage(image, mask, variance, xy0=xy0)
        self._psf = psf
        self._wcs = _check_wcs(wcs)
        self._photoCalib = photoCalib
        self._metadata = _check_metadata(metadata)

    @classmethod
    def fromMaskedImage(cls, maskedImage: MaskedImage, *, psf: Any = None, wcs: Any = None,
                        photoCalib: Any = None, metadata: Any = None) -> "Exposure":
        """Exposure around an existing :class:`MaskedImage` (the object itself is shared).

        Parameters are as for :class:`Exposure`.
        """
        if not isinstance(maskedImage, MaskedImage):
            raise TypeError(f"maskedImage must be a MaskedImage, got {type(maskedImage).__name__}")
        self = cls.__new__(cls)
        self._mi = maskedImage
        self._psf = psf
        self._wcs = _check_wcs(wcs)
        self._photoCalib = photoCalib
        self._metadata = _check_metadata(metadata)
        return self

    # --- pixel planes ---
    @property
    def maskedImage(self) -> MaskedImage:
        """The underlying :class:`MaskedImage` (shared)."""
        return self._mi

    def getMaskedImage(self) -> MaskedImage:
        """The underlying :class:`MaskedImage` (shared)."""
        return self._mi

    @property
    def image(self) -> np.ndarray:
        """Image plane array ``[y, x]`` (shared). Assigning writes values into it."""
        return self._mi.image

    @image.setter
    def image(self, value: Any) -> None:
        self._mi.image = value

    @property
    def mask(self) -> np.ndarray:
        """Mask plane ``int32`` array ``[y, x]`` (shared); planes: ``maskedImage.mask``."""
        return self._mi.mask.array

    @mask.setter
    def mask(self, value: Any) -> None:
        self._mi.mask = value

    @property
    def variance(self) -> np.ndarray:
        """Variance plane array ``[y, x]`` (flux units squared, shared)."""
        return self._mi.variance

    @variance.setter
    def variance(self, value: Any) -> None:
        self._mi.variance = value

    @property
    def dtype(self) -> np.dtype:
        """dtype of the image plane."""
        return self._mi.dtype

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(height, width)``."""
        return self._mi.shape

    # --- geometry ---
    def getBBox(self) -> Box2I:
        """Bounding box in parent coordinates (inclusive)."""
        return self._mi.getBBox()

    def getXY0(self) -> Point2I:
        """Parent coordinates of pixel ``[0, 0]``."""
        return self._mi.getXY0()

    def setXY0(self, xy0: Iterable[int]) -> None:
        """Move the origin to ``xy0``, shifting the WCS so every pixel keeps its sky position.

        The WCS is replaced by a shifted copy (views sharing the old WCS are unaffected);
        the PSF is left untouched. The :class:`MaskedImage` is shared, so its origin changes too.
        """
        new = Point2I(*_as_int_pair(xy0, "xy0"))
        old = self.getXY0()
        if self._wcs is not None and new != old:
            self._wcs = _shift_wcs(self._wcs, new.x - old.x, new.y - old.y)
        self._mi.setXY0(new)

    def getDimensions(self) -> Extent2I:
        """``(width, height)`` in pixels."""
        return self._mi.getDimensions()

    def getWidth(self) -> int:
        """Width in pixels."""
        return self._mi.getWidth()

    def getHeight(self) -> int:
        """Height in pixels."""
        return self._mi.getHeight()

    # --- attached objects ---
    def getPsf(self) -> Any:
        """The PSF, or ``None``."""
        return self._psf

    def setPsf(self, psf: Any) -> None:
        """Attach a PSF (``None`` removes it); stored by reference."""
        self._psf = psf

    def hasPsf(self) -> bool:
        """True if a PSF is attached."""
        return self._psf is not None

    def getWcs(self) -> Any:
        """The WCS (``astropy.wcs.WCS``, parent pixel coordinates, ``origin=0``) or ``None``."""
        return self._wcs

    def setWcs(self, wcs: Any) -> None:
        """Attach a WCS mapping parent pixel coordinates to the sky (``None`` removes it)."""
        self._wcs = _check_wcs(wcs)

    def hasWcs(self) -> bool:
        """True if a WCS is attached."""
        return self._wcs is not None

    def getPhotoCalib(self) -> Any:
        """The photometric calibration object, or ``None``."""
        return self._photoCalib

    def setPhotoCalib(self, photoCalib: Any) -> None:
        """Attach a photometric calibration (stored by reference)."""
        self._photoCalib = photoCalib

    def getMetadata(self) -> fits.Header:
        """The metadata header (shared; modify it in place)."""
        return self._metadata

    def setMetadata(self, metadata: Any) -> None:
        """Replace the metadata (a Header is stored by reference, a mapping is converted)."""
        self._metadata = _check_metadata(metadata)

    # --- views and copies ---
    def __getitem__(self, bbox: Box2I) -> "Exposure":
        """View of ``bbox`` (parent coordinates).

        Pixels share memory with ``self``; PSF, WCS, photoCalib and metadata are the same
        objects. The WCS needs no change because it works in parent coordinates.

        Raises
        ------
        ValueError
            ``bbox`` is empty or not fully inside :meth:`getBBox`.
        """
        out = Exposure.__new__(Exposure)
        out._mi = self._mi[bbox]
        out._psf = self._psf
        out._wcs = self._wcs
        out._photoCalib = self._photoCalib
        out._metadata = self._metadata
        return out

    def clone(self) -> "Exposure":
        """Deep copy: arrays, mask planes and metadata copied; PSF, WCS and photoCalib deep-copied."""
        out = Exposure.__new__(Exposure)
        out._mi = self._mi.clone()
        out._psf = copy.deepcopy(self._psf)
        out._wcs = copy.deepcopy(self._wcs)
        out._photoCalib = copy.deepcopy(self._photoCalib)
        out._metadata = self._metadata.copy()
        return out

    # --- I/O ---
    @classmethod
    def readFits(cls, path: PathLike, *, xy0Policy: str = "image") -> "Exposure":
        """Read an exposure in the LSST FITS layout.

        Pixels from the IMAGE/MASK/VARIANCE HDUs (found by ``EXTTYPE`` or ``EXTNAME``, plain or
        tile-compressed); mask planes from the ``MP_*`` keys; xy0 from ``CRVAL1A/2A`` (or
        ``LTV1/2``); metadata from the primary header; a celestial WCS from the IMAGE header
        (shifted to parent coordinates); a PSF from a ``EXTTYPE='PSF'`` HDU, as an
        :class:`diffcal.psf.ImagePsf`. ``xy0Policy`` is as for :meth:`MaskedImage.readFits`.

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        FitsFormatError
            The file is corrupt, truncated or not in the expected layout.
        """
        from . import _fits

        contents = _fits.read_fits(path, xy0Policy=xy0Policy, stacklevel=3)
        return contents.exposure()

    def writeFits(self, path: PathLike) -> None:
        """Write the exposure in the LSST layout (see :mod:`diffcal._fits`).

        HDU0 holds the metadata; HDU1-3 IMAGE/MASK/VARIANCE (the WCS, shifted to array
        pixels, in their headers); HDU4 ``PSF`` when a PSF is attached. Written atomically.
        """
        from . import _fits

        _fits.write_fits(path, self._mi, metadata=self._metadata, wcs=self._wcs, psf=self._psf)

    def __repr__(self) -> str:
        x0, y0 = self.getXY0()
        return (f"Exposure(shape={self.shape}, dtype={self.dtype}, xy0=({x0}, {y0}), "
                f"psf={type(self._psf).__name__ if self._psf is not None else None}, "
                f"wcs={'yes' if self._wcs is not None else None})")
