"""Tests of diffcal.geom: inclusive Box2I semantics (lsst.geom conventions)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from diffcal.geom import Box2I, Extent2I, Point2D, Point2I


def test_inclusive_corners_and_sizes():
    box = Box2I(minimum=(2, 3), maximum=(5, 9))
    assert (box.getMinX(), box.getMinY(), box.getMaxX(), box.getMaxY()) == (2, 3, 5, 9)
    assert box.getWidth() == 4 and box.getHeight() == 7
    assert box.getDimensions() == Extent2I(4, 7)
    assert box.getArea() == 28
    assert box.shape == (7, 4)
    assert (box.getBeginX(), box.getBeginY()) == (2, 3)
    assert (box.getEndX(), box.getEndY()) == (6, 10)
    assert box.getBegin() == Point2I(2, 3) and box.getEnd() == Point2I(6, 10)
    assert box.getMin() == Point2I(2, 3) and box.getMax() == Point2I(5, 9)
    assert box.getCenter() == Point2D(3.5, 6.0)
    assert not box.isEmpty()


def test_single_pixel_box():
    box = Box2I((4, 4), (4, 4))
    assert box.getWidth() == box.getHeight() == 1
    assert box.contains((4, 4))
    assert not box.contains((5, 4))


def test_dimensions_constructor():
    box = Box2I((-3, 1), dimensions=(5, 2))
    assert box == Box2I((-3, 1), (1, 2))
    assert Box2I((0, 0), dimensions=(0, 5)).isEmpty()
    assert Box2I((0, 0), dimensions=(-2, 5)).isEmpty()


def test_from_begin_end_is_half_open():
    box = Box2I.fromBeginEnd((1, 2), (4, 6))
    assert box == Box2I((1, 2), (3, 5))
    assert box.getEndX() == 4 and box.getEndY() == 6
    assert Box2I.fromBeginEnd((3, 3), (3, 7)).isEmpty()


def test_empty_boxes():
    empty = Box2I()
    assert empty.isEmpty()
    assert empty.getWidth() == 0 and empty.getHeight() == 0 and empty.getArea() == 0
    inverted = Box2I((5, 5), (4, 9))  # not swapped: empty
    assert inverted.isEmpty()
    assert inverted == empty
    assert hash(inverted) == hash(empty)
    assert not empty.contains((0, 0))
    assert Box2I((0, 0), (3, 3)).contains(empty)
    assert empty.grow(3).isEmpty()
    assert empty.shift((1, 1)).isEmpty()
    assert repr(empty) == "Box2I()"


def test_contains_boxes():
    outer = Box2I((0, 0), (9, 9))
    assert outer.contains(Box2I((0, 0), (9, 9)))
    assert outer.contains(Box2I((2, 3), (4, 5)))
    assert not outer.contains(Box2I((2, 3), (10, 5)))
    assert not outer.contains(Box2I((-1, 3), (4, 5)))
    assert not Box2I().contains(Box2I((0, 0), (1, 1)))


def test_contains_integer_points_inclusive():
    box = Box2I((0, 0), (9, 4))
    assert box.contains((0, 0)) and box.contains((9, 4)) and box.contains(Point2I(5, 2))
    assert not box.contains((10, 0)) and not box.contains((0, 5)) and not box.contains((-1, 0))
    assert box.contains((np.int64(9), np.int32(4)))
    assert not box.contains((np.int64(10), np.int64(4)))


def test_contains_float_points_use_pixel_edges():
    box = Box2I((0, 0), (9, 4))
    assert box.contains(Point2D(-0.5, -0.5))
    assert box.contains(Point2D(9.49, 4.49))
    assert not box.contains(Point2D(9.5, 0.0))  # upper edge excluded
    assert not box.contains(Point2D(-0.51, 0.0))
    assert box.contains((3.2, 1.7))
    assert not box.contains((float("nan"), 1.0))


def test_clipped_to():
    a = Box2I((0, 0), (9, 9))
    b = Box2I((5, -3), (14, 4))
    assert a.clippedTo(b) == Box2I((5, 0), (9, 4))
    assert b.clippedTo(a) == a.clippedTo(b)
    assert a.clippedTo(Box2I((20, 20), (30, 30))).isEmpty()
    assert a.clippedTo(Box2I()).isEmpty()
    assert a.overlaps(b) and not a.overlaps(Box2I((10, 0), (12, 3)))


def test_expanded_to():
    a = Box2I((0, 0), (2, 2))
    assert a.expandedTo(Box2I((5, -1), (6, 0))) == Box2I((0, -1), (6, 2))
    assert a.expandedTo((4, 7)) == Box2I((0, 0), (4, 7))
    assert Box2I().expandedTo((3, 4)) == Box2I((3, 4), (3, 4))


def test_grow_returns_new_box():
    box = Box2I((5, 5), (10, 12))
    grown = box.grow(2)
    assert grown == Box2I((3, 3), (12, 14))
    assert box == Box2I((5, 5), (10, 12))  # unchanged
    assert box.grow((1, -2)) == Box2I((4, 7), (11, 10))
    assert box.grow(-3).isEmpty()  # width 6 - 6 = 0
    assert box.grow(np.int64(1)) == Box2I((4, 4), (11, 13))


def test_shift():
    box = Box2I((1, 2), (3, 4))
    assert box.shift((10, -2)) == Box2I((11, 0), (13, 2))
    assert box.shift(Extent2I(0, 0)) == box


def test_make_centered_box():
    box = Box2I.makeCenteredBox((10.0, 20.0), (5, 3))
    assert box == Box2I((8, 19), (12, 21))
    assert box.getCenter() == Point2D(10.0, 20.0)


def test_equality_hash_pickle():
    a = Box2I((1, 2), (3, 4))
    b = Box2I.fromBeginEnd((1, 2), (4, 5))
    assert a == b and hash(a) == hash(b)
    assert a != Box2I((1, 2), (3, 5))
    assert len({a, b, Box2I((0, 0), (0, 0))}) == 2
    assert (a == (1, 2, 3, 4)) is False
    for box in (a, Box2I()):
        again = pickle.loads(pickle.dumps(box))
        assert again == box and again.isEmpty() == box.isEmpty()
    assert tuple(a) == (1, 2, 3, 4)
    assert eval(repr(a), {"Box2I": Box2I}) == a


def test_slices_relative_to_xy0():
    arr = np.arange(20 * 30).reshape(20, 30)  # xy0 = (100, 200): x 100..129, y 200..219
    box = Box2I((105, 203), (109, 210))
    sub = arr[box.slices((100, 200))]
    assert sub.shape == box.shape == (8, 5)
    assert sub[0, 0] == arr[3, 5] and sub[-1, -1] == arr[10, 9]
    np.testing.assert_array_equal(arr[Box2I((0, 0), (29, 19)).slices()], arr)


@pytest.mark.parametrize("kwargs", [
    dict(minimum=(0.5, 0), maximum=(3, 3)),
    dict(minimum=(0, 0), maximum=(3, float("nan"))),
    dict(minimum=("a", "b"), maximum=(3, 3)),
    dict(minimum=(0, 0, 0), maximum=(3, 3)),
    dict(minimum=None, maximum=(3, 3)),
    dict(minimum=(0, 0)),
    dict(minimum=(0, 0), maximum=(3, 3), dimensions=(2, 2)),
    dict(minimum=(True, 0), maximum=(3, 3)),
    dict(minimum=5, maximum=(3, 3)),
])
def test_bad_inputs_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        Box2I(**kwargs)


def test_bad_operation_arguments_raise_type_error():
    box = Box2I((0, 0), (3, 3))
    with pytest.raises(TypeError):
        box.shift((0.5, 0))
    with pytest.raises(TypeError):
        box.grow("x")
    with pytest.raises(TypeError):
        Box2I.fromBeginEnd((0, 0), (1.5, 2))
    with pytest.raises(TypeError):
        box.slices((0, 0, 0))
