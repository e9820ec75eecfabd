"""Tests of diffcal.kernel: FixedKernel, LinearCombinationKernel and the kernel FITS format."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffcal.errors import FitsFormatError
from diffcal.geom import Box2I, Extent2I, Point2I
from diffcal.kernel import (
    FixedKernel,
    Kernel,
    LinearCombinationKernel,
    nSpatialTerms,
    readKernelFits,
)

BBOX = Box2I((10, 20), (209, 169))          # 200 x 150, parent coordinates


def make_basis(n, h=7, w=9, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w))


def explicit_terms(x, y, order, function, bbox=BBOX):
    """Spatial terms written out by hand, afw order: 1, x, y, x^2, xy, y^2, x^3, x^2y, xy^2, y^3."""
    if function == "polynomial":
        u, v = x, y

        def T(n, t):
            return t ** n
    else:
        x0, x1 = bbox.getMinX() - 0.5, bbox.getMaxX() + 0.5
        y0, y1 = bbox.getMinY() - 0.5, bbox.getMaxY() + 0.5
        u = (2 * x - (x0 + x1)) / (x1 - x0)
        v = (2 * y - (y0 + y1)) / (y1 - y0)

        def T(n, t):
            return [1.0, t, 2 * t * t - 1, 4 * t ** 3 - 3 * t][n]
    terms = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2), (3, 0), (2, 1), (1, 2), (0, 3)]
    return np.array([T(i, u) * T(j, v) for i, j in terms[:nSpatialTerms(order)]])


# ------------------------------------------------------------------------------------------
# Kernel base / FixedKernel
# ------------------------------------------------------------------------------------------

def test_fixed_kernel_geometry():
    k = FixedKernel(np.arange(35, dtype=float).reshape(5, 7))
    assert (k.getWidth(), k.getHeight()) == (7, 5)
    assert k.getDimensions() == Extent2I(7, 5)
    assert k.getCtr() == Point2I(3, 2)
    assert (k.getCtrX(), k.getCtrY()) == (3, 2)
    assert k.computeBBox() == Box2I((-3, -2), (3, 2))
    assert not k.isSpatiallyVarying()
    even = FixedKernel(np.ones((32, 32)))
    assert even.getCtr() == Point2I(15, 15)
    assert even.computeBBox() == Box2I((-15, -15), (16, 16))


def test_fixed_kernel_compute_image_copies_and_normalizes():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    k = FixedKernel(arr)
    image = k.computeImage()
    assert image.dtype == np.float64 and image.shape == (3, 4)
    np.testing.assert_array_equal(image, arr)
    np.testing.assert_array_equal(k.computeImage(100.5, -3), arr)       # position ignored
    image[:] = 0.0
    arr[:] = 0.0
    assert k.getKernelSum() == 78.0
    assert k.getKernelSum(5, 5) == 78.0
    np.testing.assert_allclose(k.computeImage(normalize=True), (np.arange(12) + 1).reshape(3, 4) / 78.0,
                               rtol=1e-15)
    np.testing.assert_array_equal(k.getArray(), (np.arange(12) + 1).reshape(3, 4))


def test_fixed_kernel_normalize_zero_sum():
    k = FixedKernel(np.array([[1.0, -1.0]]))
    assert k.getKernelSum() == 0.0
    with pytest.raises(ValueError, match="sum is 0.0"):
        k.computeImage(normalize=True)


def test_fixed_kernel_compute_images():
    k = FixedKernel(np.arange(6.0).reshape(2, 3) + 1)
    images = k.computeImages([0, 1, 2.5], [3, 4, 5])
    assert images.shape == (3, 2, 3)
    for img in images:
        np.testing.assert_array_equal(img, k.computeImage())
    np.testing.assert_allclose(k.computeImages([1.0], [2.0], normalize=True)[0],
                               k.computeImage(normalize=True))


@pytest.mark.parametrize("array,exc,match", [
    (np.ones(5), ValueError, "2-D"),
    (np.ones((1, 2, 3)), ValueError, "2-D"),
    (np.ones((0, 4)), ValueError, "empty"),
    (np.array([[1.0, np.nan]]), ValueError, "non-finite"),
    (np.array([[np.inf, 1.0]]), ValueError, "non-finite"),
    (np.ones((2, 2), dtype=complex), TypeError, "real"),
    (np.ones((2, 2), dtype=bool), TypeError, "real"),
    ([["x"]], TypeError, "real"),
])
def test_fixed_kernel_bad_input(array, exc, match):
    with pytest.raises(exc, match=match):
        FixedKernel(array)


def test_fixed_kernel_bad_position():
    k = FixedKernel(np.ones((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        k.computeImage(np.nan, 0.0)
    with pytest.raises(TypeError, match="x"):
        k.computeImage("1", 0.0)
    with pytest.raises(ValueError, match="same length"):
        k.computeImages([1, 2], [1])


def test_fixed_kernel_equality_pickle_clone():
    k = FixedKernel(np.arange(6.0).reshape(2, 3))
    for other in (pickle.loads(pickle.dumps(k)), k.clone()):
        assert other == k and hash(other) == hash(k) and other is not k
    assert k != FixedKernel(np.arange(6.0).reshape(3, 2))
    assert k != FixedKernel(np.arange(6.0).reshape(2, 3) + 1)


# ------------------------------------------------------------------------------------------
# LinearCombinationKernel evaluation
# ------------------------------------------------------------------------------------------

POSITIONS = [(10.0, 20.0), (109.5, 94.5), (209.0, 169.0), (57.25, 150.0), (-30.0, 400.0)]


@pytest.mark.parametrize("function", ["polynomial", "chebyshev1"])
@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_lck_matches_explicit_sum(order, function):
    n = 4
    basis = make_basis(n, seed=order)
    coeffs = np.random.default_rng(10 + order).normal(size=(n, nSpatialTerms(order)))
    if function == "polynomial":                 # keep the polynomial terms of comparable size
        scale = np.array([100.0 ** -(i + j) for i in range(order + 1) for j in range(i + 1)])
        coeffs *= scale
    k = LinearCombinationKernel(basis, coeffs, order, BBOX, spatial_function=function)
    assert k.getNSpatialParameters() == nSpatialTerms(order) == (order + 1) * (order + 2) // 2
    assert k.isSpatiallyVarying() == (order > 0)
    for x, y in POSITIONS:
        c = coeffs @ explicit_terms(x, y, order, function)
        expected = sum(c[i] * basis[i] for i in range(n))
        got = k.computeImage(x, y)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
        np.testing.assert_allclose(k.getKernelParameters(x, y), c, rtol=1e-12, atol=1e-14)
        assert k.getKernelSum(x, y) == pytest.approx(expected.sum(), rel=1e-10, abs=1e-12)
        np.testing.assert_allclose(k.computeImage(x, y, normalize=True), expected / expected.sum(),
                                   rtol=1e-9, atol=1e-12)


def test_lck_term_order_pinned_polynomial():
    basis = make_basis(2)
    order = 3
    names = ["1", "x", "y", "x2", "xy", "y2", "x3", "x2y", "xy2", "y3"]
    x, y = 3.0, 5.0
    values = {"1": 1, "x": x, "y": y, "x2": x * x, "xy": x * y, "y2": y * y, "x3": x ** 3,
              "x2y": x * x * y, "xy2": x * y * y, "y3": y ** 3}
    for t, name in enumerate(names):
        coeffs = np.zeros((2, 10))
        coeffs[0, t] = 1.0
        k = LinearCombinationKernel(basis, coeffs, order, BBOX)
        np.testing.assert_allclose(k.computeImage(x, y), values[name] * basis[0], rtol=1e-14, err_msg=name)
    # the headline case: coefficient of x^2 on basis 0 gives K = x^2 B0
    coeffs = np.zeros((2, 10))
    coeffs[0, 3] = 1.0
    k = LinearCombinationKernel(basis, coeffs, order, BBOX)
    np.testing.assert_allclose(k.computeImage(12.0, 7.0), 144.0 * basis[0], rtol=1e-14)


def test_lck_term_order_pinned_chebyshev():
    basis = make_basis(1)
    bbox = Box2I((0, 0), (99, 49))               # float box [-0.5, 99.5] x [-0.5, 49.5]
    coeffs = np.zeros((1, 6))
    coeffs[0, 3] = 1.0                           # T2(x')
    k = LinearCombinationKernel(basis, coeffs, 2, bbox, spatial_function="chebyshev1")
    # x = 99.5 maps to x' = 1 (T2 = 1); x = 49.5 maps to 0 (T2 = -1); x = -0.5 maps to -1
    np.testing.assert_allclose(k.computeImage(99.5, 3.0), basis[0], rtol=1e-14)
    np.testing.assert_allclose(k.computeImage(49.5, 3.0), -basis[0], rtol=1e-14)
    np.testing.assert_allclose(k.computeImage(-0.5, 30.0), basis[0], rtol=1e-14)
    coeffs = np.zeros((1, 6))
    coeffs[0, 4] = 1.0                           # T1(x') T1(y')
    k = LinearCombinationKernel(basis, coeffs, 2, bbox, spatial_function="chebyshev1")
    np.testing.assert_allclose(k.computeImage(74.5, 37.0), 0.5 * 0.5 * basis[0], rtol=1e-14)


def test_lck_compute_images_equals_loop():
    basis = make_basis(3, 11, 11)
    coeffs = np.random.default_rng(1).normal(size=(3, 6)) * [1, 1e-2, 1e-2, 1e-4, 1e-4, 1e-4]
    for function in ("polynomial", "chebyshev1"):
        k = LinearCombinationKernel(basis, coeffs, 2, BBOX, spatial_function=function)
        xs = np.array([10.0, 50.5, 209.0, 300.0])
        ys = np.array([20.0, 160.0, 33.3, -5.0])
        images = k.computeImages(xs, ys)
        assert images.shape == (4, 11, 11)
        for i, (x, y) in enumerate(zip(xs, ys)):
            np.testing.assert_allclose(images[i], k.computeImage(x, y), rtol=1e-13, atol=1e-15)
        norm = k.computeImages(xs, ys, normalize=True)
        np.testing.assert_allclose(norm.sum(axis=(1, 2)), 1.0, rtol=1e-12)
        params = k.computeKernelParameters(xs, ys)
        assert params.shape == (4, 3)
        np.testing.assert_allclose(params[2], k.getKernelParameters(xs[2], ys[2]), rtol=1e-14)
        np.testing.assert_allclose(k.computeSpatialTerms(xs, ys) @ coeffs.T, params, rtol=1e-14)


def test_lck_spatial_variation_required_positions():
    k = LinearCombinationKernel(make_basis(2), np.ones((2, 3)), 1, BBOX)
    assert k.isSpatiallyVarying()
    with pytest.raises(ValueError, match="spatially varying"):
        k.computeImage()
    with pytest.raises(ValueError, match="spatially varying"):
        k.computeImage(5.0)
    with pytest.raises(ValueError, match="spatially varying"):
        k.getKernelSum(None, 3.0)


def test_lck_order_zero_is_constant():
    basis = make_basis(3)
    coeffs = np.array([[0.5], [-1.0], [2.0]])
    for function in ("polynomial", "chebyshev1"):
        k = LinearCombinationKernel(list(basis), coeffs, 0, BBOX, spatial_function=function)
        assert not k.isSpatiallyVarying()
        expected = 0.5 * basis[0] - basis[1] + 2.0 * basis[2]
        np.testing.assert_allclose(k.computeImage(), expected, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(k.computeImage(1e4, -1e4), expected, rtol=1e-14, atol=1e-15)


def test_lck_accessors_return_copies():
    basis = make_basis(2)
    coeffs = np.arange(6.0).reshape(2, 3)
    k = LinearCombinationKernel(basis, coeffs, 1, BBOX, spatial_function="chebyshev1")
    assert k.getBBox() == BBOX
    assert k.getSpatialOrder() == 1
    assert k.getSpatialFunction() == "chebyshev1"
    assert k.getNBasisKernels() == 2
    assert (k.getWidth(), k.getHeight(), k.getCtr()) == (9, 7, Point2I(4, 3))
    b = k.getBasisImages()
    p = k.getSpatialParameters()
    np.testing.assert_array_equal(b, basis)
    np.testing.assert_array_equal(p, coeffs)
    b[:] = 0.0
    p[:] = 0.0
    basis[:] = 0.0                               # inputs were copied too
    coeffs[:] = 0.0
    assert np.abs(k.getBasisImages()).sum() > 0 and k.getSpatialParameters()[1, 2] == 5.0


def test_lck_equality_pickle():
    k = LinearCombinationKernel(make_basis(2), np.arange(6.0).reshape(2, 3), 1, BBOX)
    for other in (pickle.loads(pickle.dumps(k)), k.clone()):
        assert other == k and hash(other) == hash(k)
        np.testing.assert_array_equal(other.computeImage(3.0, 4.0), k.computeImage(3.0, 4.0))
    assert k != LinearCombinationKernel(make_basis(2), np.arange(6.0).reshape(2, 3), 1, BBOX,
                                        spatial_function="chebyshev1")
    assert k != LinearCombinationKernel(make_basis(2), np.arange(6.0).reshape(2, 3), 1, BBOX.grow(1))
    assert k != FixedKernel(np.ones((7, 9)))


# ------------------------------------------------------------------------------------------
# LinearCombinationKernel validation
# ------------------------------------------------------------------------------------------

def test_lck_basis_shape_mismatch():
    with pytest.raises(ValueError, match=r"basis_images\[2\] has shape \(7, 8\).*\(7, 9\)"):
        LinearCombinationKernel([np.ones((7, 9)), np.ones((7, 9)), np.ones((7, 8))], np.ones((3, 1)), 0, BBOX)


def test_lck_coefficient_shape_mismatch():
    with pytest.raises(ValueError, match=r"shape \(3, 5\).*need shape \(3, 6\)"):
        LinearCombinationKernel(make_basis(3), np.ones((3, 5)), 2, BBOX)
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*need shape \(3, 3\)"):
        LinearCombinationKernel(make_basis(3), np.ones((2, 3)), 1, BBOX)
    with pytest.raises(ValueError, match=r"shape \(3,\).*need shape \(3, 1\)"):
        LinearCombinationKernel(make_basis(3), np.ones(3), 0, BBOX)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(basis_images=[]), ValueError, "at least one"),
    (dict(basis_images=np.ones((7, 9))), ValueError, "single basis image in a list"),
    (dict(basis_images=[np.ones(9)]), ValueError, r"basis_images\[0\] must be a 2-D"),
    (dict(basis_images=[np.full((7, 9), np.nan)]), ValueError, "non-finite"),
    (dict(basis_images=5), TypeError, "basis_images"),
    (dict(spatial_coefficients=np.full((1, 1), np.inf)), ValueError, "spatial_coefficients contains"),
    (dict(spatial_coefficients=np.ones((1, 1), dtype=complex)), TypeError, "spatial_coefficients"),
    (dict(spatial_order=-1), ValueError, "spatial_order"),
    (dict(spatial_order=1.0), TypeError, "spatial_order"),
    (dict(spatial_order=True), TypeError, "spatial_order"),
    (dict(bbox=(0, 0, 10, 10)), TypeError, "Box2I"),
    (dict(bbox=Box2I()), ValueError, "empty"),
    (dict(spatial_function="legendre"), ValueError, "spatial_function"),
])
def test_lck_bad_arguments(kwargs, exc, match):
    args = dict(basis_images=[np.ones((7, 9))], spatial_coefficients=np.ones((1, 1)), spatial_order=0,
                bbox=BBOX)
    function = kwargs.pop("spatial_function", "polynomial")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        LinearCombinationKernel(args["basis_images"], args["spatial_coefficients"], args["spatial_order"],
                                args["bbox"], spatial_function=function)


# ------------------------------------------------------------------------------------------
# Hypothesis: linearity in the coefficients
# ------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, database=None)
@given(
    data=st.data(),
    n=st.integers(1, 4),
    order=st.integers(0, 3),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    function=st.sampled_from(["polynomial", "chebyshev1"]),
    a=st.floats(-10, 10),
    x=st.floats(-50, 250),
    y=st.floats(-50, 250),
)
def test_lck_linear_in_coefficients(data, n, order, shape, function, a, x, y):
    nt = nSpatialTerms(order)
    elems = st.floats(-10, 10, allow_nan=False)
    basis = data.draw(hnp.arrays(np.float64, (n, *shape), elements=elems))
    c1 = data.draw(hnp.arrays(np.float64, (n, nt), elements=elems))
    c2 = data.draw(hnp.arrays(np.float64, (n, nt), elements=elems))
    k1 = LinearCombinationKernel(basis, c1, order, BBOX, spatial_function=function)
    k2 = LinearCombinationKernel(basis, c2, order, BBOX, spatial_function=function)
    k12 = LinearCombinationKernel(basis, c1 + a * c2, order, BBOX, spatial_function=function)
    i1, i2, i12 = k1.computeImage(x, y), k2.computeImage(x, y), k12.computeImage(x, y)
    terms = np.abs(k1.computeSpatialTerms([x], [y])[0]).sum()
    scale = terms * 10 * 10 * n * (1 + abs(a)) * 10
    np.testing.assert_allclose(i12, i1 + a * i2, rtol=0, atol=1e-12 * scale + 1e-300)
    # and the vectorised path agrees with the scalar one
    np.testing.assert_allclose(k12.computeImages([x], [y])[0], i12, rtol=0, atol=1e-12 * scale + 1e-300)


# ------------------------------------------------------------------------------------------
# FITS
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 7), (32, 32), (1, 1)])
def test_fixed_kernel_fits_round_trip(tmp_path, shape):
    arr = np.random.default_rng(5).normal(size=shape) * 1e-3
    k = FixedKernel(arr)
    path = tmp_path / "fixed.fits"
    k.writeFits(path)
    for back in (readKernelFits(path), Kernel.readFits(str(path)), FixedKernel.readFits(path)):
        assert isinstance(back, FixedKernel)
        assert back == k
        np.testing.assert_array_equal(back.computeImage(), arr)
    with fits.open(path) as hdul:
        assert len(hdul) == 1
        assert hdul[0].header["KERNTYPE"] == "FIXED"
        assert hdul[0].data.shape == shape
    assert [p.name for p in tmp_path.iterdir()] == ["fixed.fits"]    # no temporary left behind


@pytest.mark.parametrize("n,order,function", [(1, 0, "polynomial"), (4, 1, "chebyshev1"),
                                              (3, 3, "polynomial"), (2, 2, "chebyshev1")])
def test_lck_fits_round_trip(tmp_path, n, order, function):
    rng = np.random.default_rng(n * 10 + order)
    basis = rng.normal(size=(n, 9, 8))
    coeffs = rng.normal(size=(n, nSpatialTerms(order)))
    k = LinearCombinationKernel(basis, coeffs, order, Box2I((-5, 3), (400, 250)), spatial_function=function)
    path = tmp_path / "lck.fits"
    k.writeFits(path)
    back = readKernelFits(path)
    assert isinstance(back, LinearCombinationKernel)
    assert back == k
    np.testing.assert_array_equal(back.getBasisImages(), basis)
    np.testing.assert_array_equal(back.getSpatialParameters(), coeffs)
    assert back.getBBox() == k.getBBox() and back.getSpatialFunction() == function
    np.testing.assert_array_equal(back.computeImage(17.0, 33.0), k.computeImage(17.0, 33.0))
    with fits.open(path) as hdul:
        hdr = hdul[0].header
        assert hdr["KERNTYPE"] == "LINEARCOMBINATION"
        assert (hdr["NAXIS1"], hdr["NAXIS2"], hdr["NAXIS3"]) == (8, 9, n)
        assert (hdr["SPORDER"], hdr["SPFUNC"], hdr["NBASIS"]) == (order, function, n)
        assert (hdr["BBMINX"], hdr["BBMINY"], hdr["BBMAXX"], hdr["BBMAXY"]) == (-5, 3, 400, 250)
        assert hdul[1].header["EXTNAME"] == "SPATIAL"
        assert hdul[1].columns["COEFFS"].format == f"{nSpatialTerms(order)}D"
        assert len(hdul[1].data) == n


def test_write_fits_overwrite(tmp_path):
    path = tmp_path / "k.fits"
    FixedKernel(np.ones((3, 3))).writeFits(path)
    FixedKernel(np.full((3, 3), 2.0)).writeFits(path)              # default: overwrite
    assert readKernelFits(path).getKernelSum() == 18.0
    with pytest.raises(FileExistsError):
        FixedKernel(np.ones((3, 3))).writeFits(path, overwrite=False)


def test_read_wrong_kernel_class(tmp_path):
    path = tmp_path / "lck.fits"
    LinearCombinationKernel(make_basis(1), np.ones((1, 1)), 0, BBOX).writeFits(path)
    with pytest.raises(FitsFormatError, match="not a FixedKernel"):
        FixedKernel.readFits(path)
    assert isinstance(LinearCombinationKernel.readFits(path), LinearCombinationKernel)


def test_read_corrupt_files(tmp_path):
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"this is not a FITS file" * 200)
    with pytest.raises(FitsFormatError, match="garbage.fits"):
        readKernelFits(garbage)

    good = tmp_path / "good.fits"
    LinearCombinationKernel(make_basis(3, 21, 21), np.ones((3, 3)), 1, BBOX).writeFits(good)
    data = good.read_bytes()
    for cut in (4000, len(data) - 3000, len(data) - 100):
        truncated = tmp_path / f"trunc{cut}.fits"
        truncated.write_bytes(data[:cut])
        with pytest.raises(FitsFormatError, match=f"trunc{cut}.fits"):
            readKernelFits(truncated)

    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    with pytest.raises(FitsFormatError, match="empty.fits"):
        readKernelFits(empty)

    with pytest.raises(FileNotFoundError):
        readKernelFits(tmp_path / "missing.fits")


def test_read_foreign_and_inconsistent_files(tmp_path):
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.ones((3, 3))).writeto(plain)
    with pytest.raises(FitsFormatError, match="no KERNTYPE"):
        readKernelFits(plain)

    unknown = tmp_path / "unknown.fits"
    hdu = fits.PrimaryHDU(np.ones((3, 3)))
    hdu.header["KERNTYPE"] = "ANALYTIC"
    hdu.writeto(unknown)
    with pytest.raises(FitsFormatError, match="unknown kernel type KERNTYPE='ANALYTIC'"):
        readKernelFits(unknown)

    good = tmp_path / "good.fits"
    LinearCombinationKernel(make_basis(2), np.ones((2, 3)), 1, BBOX).writeFits(good)
    with fits.open(good) as hdul:
        primary = hdul[0].copy()
        table = hdul[1].copy()

    nospatial = tmp_path / "nospatial.fits"
    fits.HDUList([primary]).writeto(nospatial)
    with pytest.raises(FitsFormatError, match="SPATIAL"):
        readKernelFits(nospatial)

    badorder = tmp_path / "badorder.fits"
    p2 = primary.copy()
    p2.header["SPORDER"] = 2
    fits.HDUList([p2, table]).writeto(badorder)
    with pytest.raises(FitsFormatError, match="NSPTERMS=3 inconsistent with SPORDER=2"):
        readKernelFits(badorder)

    badfunc = tmp_path / "badfunc.fits"
    p3 = primary.copy()
    p3.header["SPFUNC"] = "legendre"
    fits.HDUList([p3, table]).writeto(badfunc)
    with pytest.raises(FitsFormatError, match="SPFUNC='legendre'"):
        readKernelFits(badfunc)

    nanfixed = tmp_path / "nan.fits"
    hdu = fits.PrimaryHDU(np.array([[1.0, np.nan]]))
    hdu.header["KERNTYPE"] = "FIXED"
    hdu.writeto(nanfixed)
    with pytest.raises(FitsFormatError, match="non-finite"):
        readKernelFits(nanfixed)

    assert os.path.exists(good)
