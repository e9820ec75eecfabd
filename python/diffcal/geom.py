"""Integer and floating-point geometry with the LSST ``lsst.geom`` conventions.

Conventions (identical to ``lsst.geom``):

* Pixel coordinates are in *parent* frame: they include the image origin ``xy0``.
  The centre of pixel ``(i, j)`` of an array with origin ``xy0`` is at
  ``(xy0.x + i, xy0.y + j)`` (integer positions are pixel centres).
* :class:`Box2I` is *inclusive*: ``minimum`` and ``maximum`` are both inside the box,
  ``getEndX() == getMaxX() + 1`` and ``getWidth() == getMaxX() - getMinX() + 1``.
  An empty box has width and height 0.
* Arrays are indexed ``[y, x]`` (numpy row-major order), so the array slice of a box
  relative to an origin ``xy0`` is ``[minY - y0 : endY - y0, minX - x0 : endX - x0]``.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Iterator, NamedTuple, Union

__all__ = ["Point2I", "Point2D", "Extent2I", "Box2I", "PointLike"]


class Point2I(NamedTuple):
    """An integer pixel position ``(x, y)`` in parent coordinates."""

    x: int
    y: int

    def getX(self) -> int:
        return self.x

    def getY(self) -> int:
        return self.y


class Point2D(NamedTuple):
    """A floating-point position ``(x, y)`` in parent pixel coordinates."""

    x: float
    y: float

    def getX(self) -> float:
        return self.x

    def getY(self) -> float:
        return self.y


class Extent2I(NamedTuple):
    """An integer size or offset ``(x, y)`` in pixels."""

    x: int
    y: int

    def getX(self) -> int:
        return self.x

    def getY(self) -> int:
        return self.y


PointLike = Union[Point2I, Point2D, Extent2I, tuple, list]


def _as_int_pair(value: Iterable, what: str) -> tuple[int, int]:
    """Convert ``value`` to a pair of Python ints, rejecting non-integral values."""
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a pair (x, y), got {value!r}") from None
    out = []
    for v in (a, b):
        if isinstance(v, (bool, str, bytes)):
            raise TypeError(f"{what} must hold integers, got {value!r}")
        try:
            integral = float(v).is_integer()
        except (TypeError, ValueError):
            integral = False
        if not integral:
            raise TypeError(f"{what} must hold integers, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


class Box2I:
    """An inclusive integer box, ``Box2I(minimum=(x0, y0), maximum=(x1, y1))``.

    Parameters
    ----------
    minimum, maximum
        Inclusive corners in parent pixel coordinates. If ``maximum < minimum`` along
        either axis the box is empty (``invert=False`` semantics of ``lsst.geom``:
        the corners are *not* swapped).
    dimensions
        Alternative to ``maximum``: ``(width, height)``; non-positive gives an empty box.

    Use :meth:`fromBeginEnd` for half-open ``[begin, end)`` construction.
    """

    __slots__ = ("_x0", "_y0", "_x1", "_y1")

    def __init__(self, minimum: PointLike | None = None, maximum: PointLike | None = None,
                 *, dimensions: PointLike | None = None):
        if minimum is None and maximum is None and dimensions is None:
            self._set_empty()
            return
        if minimum is None:
            raise TypeError("Box2I needs 'minimum' together with 'maximum' or 'dimensions'")
        if (maximum is None) == (dimensions is None):
            raise TypeError("Box2I takes exactly one of 'maximum' or 'dimensions'")
        x0, y0 = _as_int_pair(minimum, "minimum")
        if dimensions is not None:
            w, h = _as_int_pair(dimensions, "dimensions")
            x1, y1 = x0 + w - 1, y0 + h - 1
        else:
            x1, y1 = _as_int_pair(maximum, "maximum")
        if x1 < x0 or y1 < y0:
            self._set_empty()
        else:
            self._x0, self._y0, self._x1, self._y1 = x0, y0, x1, y1

    def _set_empty(self) -> None:
        self._x0, self._y0, self._x1, self._y1 = 0, 0, -1, -1

    @classmethod
    def fromBeginEnd(cls, begin: PointLike, end: PointLike) -> "Box2I":
        """Box covering the half-open range ``[begin, end)`` on both axes."""
        bx, by = _as_int_pair(begin, "begin")
        ex, ey = _as_int_pair(end, "end")
        return cls((bx, by), (ex - 1, ey - 1))

    @classmethod
    def makeCenteredBox(cls, center: PointLike, size: PointLike) -> "Box2I":
        """Box of ``size`` (w, h) whose centre is nearest to ``center`` (floats allowed)."""
        cx, cy = float(center[0]), float(center[1])
        w, h = _as_int_pair(size, "size")
        x0 = int(math.floor(cx - (w - 1) / 2.0 + 0.5))
        y0 = int(math.floor(cy - (h - 1) / 2.0 + 0.5))
        return cls((x0, y0), dimensions=(w, h))

    # --- accessors (lsst.geom names) ---
    def isEmpty(self) -> bool:
        return self._x1 < self._x0

    def getMinX(self) -> int:
        return self._x0

    def getMinY(self) -> int:
        return self._y0

    def getMaxX(self) -> int:
        return self._x1

    def getMaxY(self) -> int:
        return self._y1

    def getBeginX(self) -> int:
        return self._x0

    def getBeginY(self) -> int:
        return self._y0

    def getEndX(self) -> int:
        return self._x1 + 1

    def getEndY(self) -> int:
        return self._y1 + 1

    def getMin(self) -> Point2I:
        return Point2I(self._x0, self._y0)

    def getMax(self) -> Point2I:
        return Point2I(self._x1, self._y1)

    def getBegin(self) -> Point2I:
        return Point2I(self._x0, self._y0)

    def getEnd(self) -> Point2I:
        return Point2I(self._x1 + 1, self._y1 + 1)

    def getWidth(self) -> int:
        return 0 if self.isEmpty() else self._x1 - self._x0 + 1

    def getHeight(self) -> int:
        return 0 if self.isEmpty() else self._y1 - self._y0 + 1

    def getDimensions(self) -> Extent2I:
        return Extent2I(self.getWidth(), self.getHeight())

    def getArea(self) -> int:
        return self.getWidth() * self.getHeight()

    def getCenter(self) -> Point2D:
        """Centre of the box in pixel coordinates (pixel centres are integers)."""
        return Point2D(0.5 * (self._x0 + self._x1), 0.5 * (self._y0 + self._y1))

    @property
    def shape(self) -> tuple[int, int]:
        """Numpy shape ``(height, width)`` of an array covering this box."""
        return (self.getHeight(), self.getWidth())

    # --- predicates ---
    def contains(self, other: "Box2I | PointLike") -> bool:
        """True if a point (x, y) or a whole box lies inside this box.

        Float points use the pixel-centre convention: ``x`` is inside when
        ``minX - 0.5 <= x < maxX + 0.5``.
        """
        if isinstance(other, Box2I):
            if other.isEmpty():
                return True
            if self.isEmpty():
                return False
            return (self._x0 <= other._x0 and other._x1 <= self._x1
                    and self._y0 <= other._y0 and other._y1 <= self._y1)
        x, y = other
        if self.isEmpty():
            return False
        if isinstance(x, (int,)) and isinstance(y, int) and not isinstance(other, Point2D):
            return self._x0 <= x <= self._x1 and self._y0 <= y <= self._y1
        return (self._x0 - 0.5 <= x < self._x1 + 0.5) and (self._y0 - 0.5 <= y < self._y1 + 0.5)

    def overlaps(self, other: "Box2I") -> bool:
        return not self.clippedTo(other).isEmpty()

    # --- operations returning new boxes (boxes are immutable) ---
    def clippedTo(self, other: "Box2I") -> "Box2I":
        """Intersection of the two boxes (empty if they do not overlap)."""
        if self.isEmpty() or other.isEmpty():
            return Box2I()
        return Box2I((max(self._x0, other._x0), max(self._y0, other._y0)),
                     (min(self._x1, other._x1), min(self._y1, other._y1)))

    def expandedTo(self, other: "Box2I | PointLike") -> "Box2I":
        """Smallest box containing this box and ``other`` (a box or an integer point)."""
        if isinstance(other, Box2I):
            if other.isEmpty():
                return self
            if self.isEmpty():
                return other
            return Box2I((min(self._x0, other._x0), min(self._y0, other._y0)),
                         (max(self._x1, other._x1), max(self._y1, other._y1)))
        x, y = _as_int_pair(other, "point")
        if self.isEmpty():
            return Box2I((x, y), (x, y))
        return Box2I((min(self._x0, x), min(self._y0, y)), (max(self._x1, x), max(self._y1, y)))

    def grow(self, amount: int | PointLike) -> "Box2I":
        """Box grown by ``amount`` pixels on every side (``(dx, dy)`` per axis; negative shrinks).

        Unlike ``lsst.geom.Box2I.grow`` this returns a new box (boxes are immutable here).
        """
        if self.isEmpty():
            return Box2I()
        if isinstance(amount, numbers.Integral) and not isinstance(amount, bool):
            dx = dy = int(amount)
        else:
            dx, dy = _as_int_pair(amount, "amount")
        return Box2I((self._x0 - dx, self._y0 - dy), (self._x1 + dx, self._y1 + dy))

    def shift(self, offset: PointLike) -> "Box2I":
        """Box moved by ``offset`` (dx, dy); returns a new box."""
        if self.isEmpty():
            return Box2I()
        dx, dy = _as_int_pair(offset, "offset")
        return Box2I((self._x0 + dx, self._y0 + dy), (self._x1 + dx, self._y1 + dy))

    def slices(self, xy0: PointLike = (0, 0)) -> tuple[slice, slice]:
        """Numpy ``(rows, cols)`` slices of this box in an array whose origin is ``xy0``."""
        x0, y0 = _as_int_pair(xy0, "xy0")
        return (slice(self._y0 - y0, self._y1 + 1 - y0), slice(self._x0 - x0, self._x1 + 1 - x0))

    def getCorners(self) -> list[Point2I]:
        return [Point2I(self._x0, self._y0), Point2I(self._x1, self._y0),
                Point2I(self._x1, self._y1), Point2I(self._x0, self._y1)]

    # --- python protocol ---
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Box2I):
            return NotImplemented
        if self.isEmpty() and other.isEmpty():
            return True
        return (self._x0, self._y0, self._x1, self._y1) == (other._x0, other._y0, other._x1, other._y1)

    def __hash__(self) -> int:
        return hash((self._x0, self._y0, self._x1, self._y1))

    def __iter__(self) -> Iterator[int]:
        """Iterate as ``(minX, minY, maxX, maxY)`` (handy for unpacking)."""
        return iter((self._x0, self._y0, self._x1, self._y1))

    def __repr__(self) -> str:
        if self.isEmpty():
            return "Box2I()"
        return f"Box2I(minimum=({self._x0}, {self._y0}), maximum=({self._x1}, {self._y1}))"

    def __reduce__(self):
        if self.isEmpty():
            return (Box2I, ())
        return (Box2I, ((self._x0, self._y0), (self._x1, self._y1)))
