"""Tests of diffcal.psf: PSF images, centring, sub-pixel shifts, shapes and adaptive moments."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffcal.geom import Box2I, Extent2I, Point2D, Point2I
from diffcal.kernel import FixedKernel
from diffcal.psf import (
    SIGMA_TO_FWHM,
    DoubleGaussianPsf,
    GaussianPsf,
    ImagePsf,
    Psf,
    Quadrupole,
    computeAdaptiveMoments,
    lanczosShift,
)


def gaussian_image(shape, cov, center):
    """Elliptical Gaussian of covariance ``cov`` sampled at pixel centres (unit peak)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(float)
    dx, dy = x - center[0], y - center[1]
    inv = np.linalg.inv(np.asarray(cov, dtype=float))
    return np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy))


def first_moments(image):
    """Centroid (x, y) in array coordinates."""
    h, w = image.shape
    total = image.sum()
    return (image.sum(axis=0) @ np.arange(w)) / total, (image.sum(axis=1) @ np.arange(h)) / total


def parent_centroid(psf, position):
    """Centroid of computeImage(position) in parent coordinates."""
    image = psf.computeImage(position)
    bbox = psf.computeImageBBox(position)
    cx, cy = first_moments(image)
    return bbox.getMinX() + cx, bbox.getMinY() + cy


def all_psfs():
    return [
        GaussianPsf(21, 21, 2.0),
        GaussianPsf(15, 9, 1.3),
        DoubleGaussianPsf(11, 11, 2.0, 3.7),
        DoubleGaussianPsf(25, 25, 1.5, 4.0, b=0.1),
        ImagePsf(gaussian_image((25, 25), [[4.0, 0.0], [0.0, 4.0]], (12, 12))),
        ImagePsf(gaussian_image((17, 23), [[3.0, 0.5], [0.5, 2.0]], (11, 8))),
    ]


PSF_IDS = ["gauss21", "gauss15x9", "dgauss-fixture", "dgauss-b", "image25", "image23x17"]


# ------------------------------------------------------------------------------------------
# Kernel images: size, dtype, normalisation, centring
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("psf", all_psfs(), ids=PSF_IDS)
def test_kernel_image_shape_dtype_unit_sum(psf):
    w, h = psf.getKernelDimensions()
    image = psf.computeKernelImage()
    assert image.dtype == np.float64
    assert image.shape == (h, w)
    assert image.sum() == pytest.approx(1.0, abs=1e-14)
    assert psf.computeImage().shape == (h, w)
    assert psf.computeImage(Point2D(3.3, -7.8)).sum() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("psf", all_psfs()[:4], ids=PSF_IDS[:4])
def test_kernel_image_centred_on_ctr(psf):
    # symmetric (odd) stamps of circular profiles: first moments are exactly the centre pixel
    w, h = psf.getKernelDimensions()
    ctr = psf.getKernelCenter()
    assert ctr == ((w - 1) // 2, (h - 1) // 2)
    cx, cy = first_moments(psf.computeKernelImage())
    assert abs(cx - ctr[0]) < 1e-12
    assert abs(cy - ctr[1]) < 1e-12
    assert np.unravel_index(np.argmax(psf.computeKernelImage()), (h, w)) == (ctr[1], ctr[0])


def test_tiny_sigma_does_not_underflow():
    for psf in (GaussianPsf(11, 11, 0.01), DoubleGaussianPsf(11, 11, 0.01, 0.02, b=0.5)):
        np.testing.assert_array_equal(psf.computeKernelImage()[5], [0] * 5 + [1.0] + [0] * 5)
        image = psf.computeImage((0.5, 0.0))     # residual -0.5: two equal pixels
        assert image.sum() == pytest.approx(1.0)
        assert image[5, 4] == pytest.approx(0.5) and image[5, 5] == pytest.approx(0.5)


def test_non_square_dimensions():
    psf = GaussianPsf(15, 9, 1.3)
    assert psf.getKernelDimensions() == Extent2I(15, 9)
    assert psf.computeKernelImage().shape == (9, 15)
    assert psf.getKernelCenter() == (7, 4)


def test_even_sizes_allowed_centre_convention():
    # even sizes are allowed; the centre pixel is (size - 1) // 2 (afw kernel convention)
    psf = GaussianPsf(32, 20, 3.0)
    image = psf.computeKernelImage()
    assert image.shape == (20, 32)
    assert psf.getKernelCenter() == (15, 9)
    assert np.unravel_index(np.argmax(image), image.shape) == (9, 15)
    # profile is centred at ctr: the pixel values are symmetric about it where both sides exist
    np.testing.assert_array_equal(image[9, 15 - 5:15], image[9, 15 + 5:15:-1])
    bbox = psf.computeBBox()
    assert bbox == Box2I((-15, -9), (16, 10))


def test_gaussian_kernel_image_formula():
    psf = GaussianPsf(13, 11, 1.7)
    y, x = np.mgrid[0:11, 0:13]
    expected = np.exp(-((x - 6.0) ** 2 + (y - 5.0) ** 2) / (2 * 1.7 ** 2))
    np.testing.assert_allclose(psf.computeKernelImage(), expected / expected.sum(), rtol=1e-13, atol=0)


def test_double_gaussian_kernel_image_formula():
    psf = DoubleGaussianPsf(21, 21, 1.5, 4.0, b=0.1)
    y, x = np.mgrid[0:21, 0:21]
    r2 = (x - 10.0) ** 2 + (y - 10.0) ** 2
    expected = np.exp(-r2 / (2 * 1.5 ** 2)) + 0.1 * np.exp(-r2 / (2 * 4.0 ** 2))
    np.testing.assert_allclose(psf.computeKernelImage(), expected / expected.sum(), rtol=1e-13, atol=0)
    assert psf.getSigma1() == 1.5 and psf.getSigma2() == 4.0 and psf.getB() == 0.1


def test_double_gaussian_b0_equals_gaussian():
    np.testing.assert_allclose(DoubleGaussianPsf(11, 11, 2.0, 3.7).computeKernelImage(),
                               GaussianPsf(11, 11, 2.0).computeKernelImage(), rtol=1e-14, atol=0)
    # sigma2 is unused (and may be 0) when b == 0
    DoubleGaussianPsf(11, 11, 2.0, 0.0)


def test_image_psf_normalises_and_copies():
    arr = gaussian_image((15, 15), np.eye(2) * 3.0, (7, 7)) * 250.0
    psf = ImagePsf(arr)
    np.testing.assert_allclose(psf.computeKernelImage(), arr / arr.sum(), rtol=1e-15)
    arr[7, 7] = 1e6                              # caller's array is not aliased
    assert psf.computeKernelImage().max() < 0.2
    out = psf.computeKernelImage()
    out[:] = 0.0                                 # returned images are fresh arrays
    assert psf.computeKernelImage().sum() == pytest.approx(1.0)
    assert ImagePsf(np.ones((3, 4), dtype=np.int32)).computeKernelImage().dtype == np.float64


# ------------------------------------------------------------------------------------------
# Shapes and FWHM
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.3])
def test_gaussian_shape_is_analytic(sigma):
    psf = GaussianPsf(7, 7, sigma)          # truncation does not matter: analytic shape
    shape = psf.computeShape(psf.getAveragePosition())
    assert (shape.getIxx(), shape.getIyy(), shape.getIxy()) == (sigma ** 2, sigma ** 2, 0.0)
    assert psf.computeFwhm() == pytest.approx(sigma * 2 * math.sqrt(2 * math.log(2)), rel=1e-15)


def test_double_gaussian_reference_fixture_fwhm():
    # the ImageMapReduce test fixture: DoubleGaussianPsf(11, 11, 2.0, 3.7), b = 0
    psf = DoubleGaussianPsf(11, 11, 2.0, 3.7)
    shape = psf.computeShape(psf.getAveragePosition())
    r_det = shape.getDeterminantRadius()
    assert r_det == pytest.approx(2.0, abs=0.005)
    fwhm = psf.computeFwhm()
    assert fwhm == pytest.approx(4.71, abs=0.01)
    assert fwhm == pytest.approx(r_det * 2 * math.sqrt(2 * math.log(2)), rel=1e-15)
    # pinned value of our adaptive moments on the truncated 11x11 stamp
    assert r_det == pytest.approx(1.997524, abs=2e-6)
    # the grid sizes quoted by the spec (10 / 5 x FWHM, rounded half-even): 47 and 24
    assert int(np.rint(10 * fwhm)) == 47
    assert int(np.rint(5 * fwhm)) == 24


def test_image_psf_shape_from_adaptive_moments():
    arr = gaussian_image((41, 41), [[6.0, 1.0], [1.0, 3.0]], (20, 20))
    shape = ImagePsf(arr).computeShape()
    np.testing.assert_allclose([shape.ixx, shape.iyy, shape.ixy], [6.0, 3.0, 1.0], rtol=1e-4)


def test_sigma_to_fwhm_constant():
    assert SIGMA_TO_FWHM == pytest.approx(2.3548200450309493, rel=1e-15)


# ------------------------------------------------------------------------------------------
# Adaptive moments
# ------------------------------------------------------------------------------------------

def test_adaptive_moments_circular_gaussian():
    image = gaussian_image((41, 41), np.eye(2) * 2.5 ** 2, (20, 20))
    res = computeAdaptiveMoments(image)
    np.testing.assert_allclose([res.shape.ixx, res.shape.iyy], [6.25, 6.25], rtol=1e-4)
    assert abs(res.shape.ixy) < 1e-4 * 6.25
    assert res.centroid.x == pytest.approx(20.0, abs=1e-6)
    assert res.centroid.y == pytest.approx(20.0, abs=1e-6)
    assert res.shape.getDeterminantRadius() == pytest.approx(2.5, rel=1e-4)


def test_adaptive_moments_elliptical_offcentre_gaussian():
    cov = [[6.0, 1.0], [1.0, 3.0]]
    image = gaussian_image((45, 51), cov, (26.3, 21.6)) * 37.0
    res = computeAdaptiveMoments(image)
    np.testing.assert_allclose([res.shape.ixx, res.shape.iyy, res.shape.ixy], [6.0, 3.0, 1.0], rtol=1e-4)
    assert res.centroid.x == pytest.approx(26.3, abs=1e-5)
    assert res.centroid.y == pytest.approx(21.6, abs=1e-5)


def test_adaptive_moments_start_far_from_answer():
    cov = [[6.0, 1.0], [1.0, 3.0]]
    image = gaussian_image((45, 45), cov, (22, 22))
    for sigma0 in (0.7, 8.0):
        res = computeAdaptiveMoments(image, initialSigma=sigma0, initialCentroid=(20.0, 24.0))
        np.testing.assert_allclose([res.shape.ixx, res.shape.iyy, res.shape.ixy], [6.0, 3.0, 1.0],
                                   rtol=1e-4)


def test_adaptive_moments_fixed_point_is_self_consistent():
    # non-Gaussian profile (Gaussian core + wide wing): at convergence the weighted moments
    # about the centroid equal half the weight's moments (mu = M / 2)
    y, x = np.mgrid[0:41, 0:41] - 20.0
    image = np.exp(-(x ** 2 + y ** 2) / 8.0) + 0.1 * np.exp(-(x ** 2 + y ** 2) / 72.0)
    res = computeAdaptiveMoments(image, tol=1e-10)
    m = res.shape.getMatrix()
    d = np.stack([x - (res.centroid.x - 20.0), y - (res.centroid.y - 20.0)])
    q = np.einsum("iyx,ij,jyx->yx", d, np.linalg.inv(m), d)
    iw = image * np.exp(-0.5 * q)
    mu_xx = (iw * d[0] ** 2).sum() / iw.sum()
    assert mu_xx == pytest.approx(m[0, 0] / 2, rel=1e-8)
    assert m[0, 0] > 4.0                          # wings make it wider than the core


def test_adaptive_moments_degenerate_images():
    delta = np.zeros((11, 11))
    delta[5, 5] = 1.0
    with pytest.raises(RuntimeError, match="degenerate"):
        computeAdaptiveMoments(delta)
    with pytest.raises(RuntimeError, match="non-positive weighted flux"):
        computeAdaptiveMoments(-gaussian_image((21, 21), np.eye(2) * 4, (10, 10)))
    with pytest.raises(RuntimeError, match="non-positive weighted flux"):
        computeAdaptiveMoments(np.zeros((9, 9)))


def test_adaptive_moments_non_convergence():
    box = np.zeros((21, 21))
    box[7:14, 7:14] = 1.0
    with pytest.raises(RuntimeError, match="did not converge"):
        computeAdaptiveMoments(box, maxIter=2)
    assert computeAdaptiveMoments(box).iterations > 2


def test_adaptive_moments_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        computeAdaptiveMoments(np.full((5, 5), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        computeAdaptiveMoments(np.ones(5))
    with pytest.raises(ValueError, match="tol"):
        computeAdaptiveMoments(np.ones((5, 5)), tol=0.0)
    with pytest.raises(ValueError, match="maxIter"):
        computeAdaptiveMoments(np.ones((5, 5)), maxIter=0)


# ------------------------------------------------------------------------------------------
# computeImage at sub-pixel positions, bboxes
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("position", [(0.3, 0.0), (-0.45, 0.2), (10.25, -4.4), (100.49, 57.5), (3.5, -2.5)])
def test_gaussian_subpixel_centroid(position):
    for psf in (GaussianPsf(25, 25, 2.0), DoubleGaussianPsf(31, 31, 1.8, 4.0, b=0.05)):
        cx, cy = parent_centroid(psf, position)
        assert abs(cx - position[0]) < 0.01
        assert abs(cy - position[1]) < 0.01


@pytest.mark.parametrize("position", [(0.3, 0.0), (-0.45, 0.2), (10.25, -4.4), (100.49, 57.5)])
def test_image_psf_lanczos_subpixel_centroid(position):
    psf = ImagePsf(GaussianPsf(25, 25, 2.0).computeKernelImage())
    cx, cy = parent_centroid(psf, position)
    assert abs(cx - position[0]) < 0.02
    assert abs(cy - position[1]) < 0.02
    # and the Lanczos-3 shifted image is close to the analytic shifted Gaussian
    np.testing.assert_allclose(psf.computeImage(position), GaussianPsf(25, 25, 2.0).computeImage(position),
                               atol=2e-4)


@pytest.mark.parametrize("psf", all_psfs(), ids=PSF_IDS)
@pytest.mark.parametrize("position", [(0, 0), (7, -3), Point2I(120, 45), Point2D(-9.0, 4.0)])
def test_integer_position_identity(psf, position):
    np.testing.assert_array_equal(psf.computeImage(position), psf.computeKernelImage())
    ctr = psf.getKernelCenter()
    bbox = psf.computeImageBBox(position)
    assert bbox.getMin() == (int(position[0]) - ctr[0], int(position[1]) - ctr[1])
    assert bbox.getDimensions() == psf.getKernelDimensions()


def test_image_bbox_nearest_pixel():
    psf = GaussianPsf(11, 9, 1.5)
    # nearest pixel of (10.6, 3.4) is (11, 3); ctr = (5, 4)
    assert psf.computeImageBBox((10.6, 3.4)) == Box2I((6, -1), (16, 7))
    # half-integers round up: floor(x + 0.5)
    assert psf.computeImageBBox((2.5, -2.5)).getMin() == (3 - 5, -2 - 4)
    assert psf.computeBBox() == Box2I((-5, -4), (5, 4))


def test_average_position_default_and_custom():
    assert GaussianPsf(11, 11, 2.0).getAveragePosition() == Point2D(0.0, 0.0)
    psf = GaussianPsf(21, 21, 2.0, averagePosition=(3.25, 4.5))
    assert psf.getAveragePosition() == Point2D(3.25, 4.5)
    np.testing.assert_array_equal(psf.computeImage(), psf.computeImage((3.25, 4.5)))
    assert psf.computeImageBBox(None) == psf.computeImageBBox(Point2D(3.25, 4.5))
    cx, cy = parent_centroid(psf, None)
    assert (cx, cy) == pytest.approx((3.25, 4.5), abs=0.01)
    ipsf = ImagePsf(np.ones((3, 3)), averagePosition=Point2I(5, 6))
    assert ipsf.getAveragePosition() == Point2D(5.0, 6.0)


def test_not_spatially_varying_and_local_kernel():
    for psf in all_psfs():
        assert not psf.isSpatiallyVarying()
        k = psf.getLocalKernel()
        assert isinstance(k, FixedKernel)
        np.testing.assert_array_equal(k.computeImage(), psf.computeKernelImage())


@settings(max_examples=40, deadline=None, database=None)
@given(x=st.floats(-500, 500), y=st.floats(-500, 500))
def test_subpixel_images_property(x, y):
    psf = GaussianPsf(21, 21, 2.2)
    image = psf.computeImage((x, y))
    assert image.sum() == pytest.approx(1.0, abs=1e-13)
    cx, cy = parent_centroid(psf, (x, y))
    assert abs(cx - x) < 0.01 and abs(cy - y) < 0.01


# ------------------------------------------------------------------------------------------
# Lanczos shift
# ------------------------------------------------------------------------------------------

def test_lanczos_shift_identity_and_constant():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(12, 15))
    np.testing.assert_array_equal(lanczosShift(image, 0.0, 0.0), image)
    flat = np.ones((20, 20))
    shifted = lanczosShift(flat, 0.37, -0.21)
    np.testing.assert_allclose(shifted[3:-3, 3:-3], 1.0, rtol=1e-14)   # taps sum to 1
    # separable: shifting x then y equals shifting both at once
    np.testing.assert_allclose(lanczosShift(lanczosShift(image, 0.3, 0.0), 0.0, -0.4),
                               lanczosShift(image, 0.3, -0.4), rtol=1e-13, atol=1e-15)


def lanczos3_tap_moment(shift):
    m = np.arange(-3, 4, dtype=float)
    t = m - shift
    taps = np.where(np.abs(t) < 3, np.sinc(t) * np.sinc(t / 3), 0.0)
    return (m * taps).sum() / taps.sum()


@pytest.mark.parametrize("dx,dy", [(0.4, -0.3), (-0.2, 0.1), (0.5, -0.5)])
def test_lanczos_shift_direction_and_centroid_bias(dx, dy):
    image = GaussianPsf(31, 31, 2.5).computeKernelImage()
    cx, cy = first_moments(lanczosShift(image, dx, dy))
    # the profile moves by +offset (to within the Lanczos-3 first-moment bias, <= 0.02 px) ...
    assert cx == pytest.approx(15 + dx, abs=0.02)
    assert cy == pytest.approx(15 + dy, abs=0.02)
    # ... and the centroid shift is the first moment of the normalised taps (up to edge truncation)
    assert cx == pytest.approx(15 + lanczos3_tap_moment(dx), abs=1e-6)
    assert cy == pytest.approx(15 + lanczos3_tap_moment(dy), abs=1e-6)


# ------------------------------------------------------------------------------------------
# Quadrupole
# ------------------------------------------------------------------------------------------

def test_quadrupole():
    q = Quadrupole(6.0, 3.0, 1.0)
    assert q.getDeterminant() == 17.0
    assert q.getDeterminantRadius() == pytest.approx(17.0 ** 0.25, rel=1e-15)
    assert q.getTraceRadius() == pytest.approx(math.sqrt(4.5), rel=1e-15)
    np.testing.assert_array_equal(q.getMatrix(), [[6.0, 1.0], [1.0, 3.0]])
    assert Quadrupole.fromMatrix(q.getMatrix()) == q
    assert pickle.loads(pickle.dumps(q)) == q
    assert hash(Quadrupole(6.0, 3.0, 1.0)) == hash(q)
    assert tuple(q) == (6.0, 3.0, 1.0)
    with pytest.raises(ValueError, match="negative determinant"):
        Quadrupole(1.0, 1.0, 2.0).getDeterminantRadius()
    with pytest.raises(ValueError, match="finite"):
        Quadrupole(np.nan, 1.0, 0.0)
    with pytest.raises(ValueError, match="symmetric"):
        Quadrupole.fromMatrix([[1.0, 0.1], [0.2, 1.0]])


# ------------------------------------------------------------------------------------------
# Equality, pickling, cloning
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("psf", all_psfs(), ids=PSF_IDS)
def test_equality_pickle_clone(psf):
    psf.computeShape()                      # populate caches before copying
    for other in (pickle.loads(pickle.dumps(psf)), psf.clone()):
        assert other == psf
        assert hash(other) == hash(psf)
        assert other is not psf
        np.testing.assert_array_equal(other.computeImage((2.3, -1.2)), psf.computeImage((2.3, -1.2)))
        assert other.computeShape() == psf.computeShape()
    assert isinstance(repr(psf), str)


def test_inequality():
    assert GaussianPsf(11, 11, 2.0) != GaussianPsf(11, 11, 2.1)
    assert GaussianPsf(11, 11, 2.0) != GaussianPsf(11, 13, 2.0)
    assert GaussianPsf(11, 11, 2.0) != GaussianPsf(11, 11, 2.0, averagePosition=(1, 0))
    assert GaussianPsf(11, 11, 2.0) != DoubleGaussianPsf(11, 11, 2.0, 3.7)
    assert ImagePsf(np.ones((3, 3))) != ImagePsf(np.ones((5, 5)))
    assert ImagePsf(np.ones((3, 3))) == ImagePsf(2 * np.ones((3, 3)))   # both normalised


# ------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,height,exc,match", [
    (0, 11, ValueError, "width"),
    (11, -3, ValueError, "height"),
    (2.5, 11, TypeError, "width"),
    (True, 11, TypeError, "width"),
    ("11", 11, TypeError, "width"),
])
def test_bad_dimensions(width, height, exc, match):
    with pytest.raises(exc, match=match):
        GaussianPsf(width, height, 2.0)
    with pytest.raises(exc, match=match):
        DoubleGaussianPsf(width, height, 2.0, 3.0)


def test_integral_float_dimensions_accepted():
    assert GaussianPsf(11.0, np.int64(9), 2.0).getKernelDimensions() == (11, 9)


@pytest.mark.parametrize("sigma", [0.0, -1.0, np.nan, np.inf])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        GaussianPsf(11, 11, sigma)
    with pytest.raises(ValueError, match="sigma1"):
        DoubleGaussianPsf(11, 11, sigma, 3.0)


def test_bad_double_gaussian_parameters():
    with pytest.raises(ValueError, match="b "):
        DoubleGaussianPsf(11, 11, 2.0, 3.0, b=-0.1)
    with pytest.raises(ValueError, match="sigma2"):
        DoubleGaussianPsf(11, 11, 2.0, 0.0, b=0.1)
    with pytest.raises(ValueError, match="sigma2"):
        DoubleGaussianPsf(11, 11, 2.0, -1.0)
    with pytest.raises(TypeError, match="sigma"):
        GaussianPsf(11, 11, "2")


@pytest.mark.parametrize("array,exc,match", [
    (np.full((5, 5), np.nan), ValueError, "non-finite"),
    (np.array([[1.0, np.inf], [1.0, 1.0]]), ValueError, "non-finite"),
    (np.ones(5), ValueError, "2-D"),
    (np.ones((2, 5, 5)), ValueError, "2-D"),
    (np.zeros((0, 3)), ValueError, "empty"),
    (np.zeros((5, 5)), ValueError, "positive finite sum"),
    (-np.ones((5, 5)), ValueError, "positive finite sum"),
    (np.ones((3, 3), dtype=complex), TypeError, "real"),
    (np.ones((3, 3), dtype=bool), TypeError, "real"),
    ([["a", "b"]], TypeError, "real"),
])
def test_bad_image_psf(array, exc, match):
    with pytest.raises(exc, match=match):
        ImagePsf(array)


@pytest.mark.parametrize("position,exc", [
    (("a", 1), TypeError),
    ((1, 2, 3), TypeError),
    (5.0, TypeError),
    ("ab", TypeError),
    ((np.nan, 0.0), ValueError),
    ((0.0, np.inf), ValueError),
])
def test_bad_positions(position, exc):
    psf = GaussianPsf(11, 11, 2.0)
    with pytest.raises(exc, match="position"):
        psf.computeImage(position)
    with pytest.raises(exc, match="position"):
        psf.computeImageBBox(position)
    with pytest.raises(exc, match="averagePosition"):
        GaussianPsf(11, 11, 2.0, averagePosition=position)


def test_position_types_accepted():
    psf = GaussianPsf(11, 11, 2.0)
    expected = psf.computeImage(Point2D(1.25, 2.5))
    for pos in [(1.25, 2.5), [1.25, 2.5], np.array([1.25, 2.5]), (np.float32(1.25), np.float64(2.5))]:
        np.testing.assert_array_equal(psf.computeImage(pos), expected)


def test_base_class_is_abstract():
    with pytest.raises(NotImplementedError):
        Psf().computeKernelImage()
