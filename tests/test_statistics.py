"""Clipped statistics (C++ core) against the numpy implementation of spec §2.2."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffcal import _core
from diffcal.reference import clipped_statistics_numpy
from diffcal.statistics import (
    IQR_TO_SIGMA,
    clippedMean,
    clippedStatistics,
    clippedVariance,
    quantile,
)

RTOL = 1e-12


def assert_close(got: float, expected: float, scale: float = 0.0) -> None:
    """|got - expected| <= RTOL * max(|got|, |expected|) + RTOL * scale (NaN equals NaN)."""
    if np.isnan(expected):
        assert np.isnan(got), (got, expected)
        return
    assert abs(got - expected) <= RTOL * max(abs(got), abs(expected)) + RTOL * scale, (got, expected)


def make_image(rng, shape, dtype, nan_frac=0.01, mask_frac=0.05, outlier_frac=0.005, mean=100.0, sigma=5.0):
    img = rng.normal(mean, sigma, shape).astype(dtype)
    mask = np.zeros(shape, np.int32)
    mask[rng.random(shape) < mask_frac] = 1 << 3
    mask[rng.random(shape) < mask_frac] |= 1 << 9  # a plane outside the and-mask
    img[rng.random(shape) < nan_frac] = np.nan
    img[rng.random(shape) < outlier_frac] = mean + 1e3 * sigma
    return img, mask


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_numpy_reference_with_nan_and_mask(dtype):
    rng = np.random.default_rng(12)
    img, mask = make_image(rng, (513, 389), dtype)
    and_mask = 0x17F | (1 << 3)
    got = clippedStatistics(img, mask, andMask=and_mask)
    mean, var = clipped_statistics_numpy(img, mask, and_mask)
    assert_close(got.mean, mean)
    assert_close(got.variance, var)
    cand = img[np.isfinite(img) & ((mask & and_mask) == 0)].astype(np.float64)
    assert got.nCandidates == cand.size
    q1, med, q3 = np.percentile(cand, [25, 50, 75])
    assert got.median == med
    assert_close(got.iqr, q3 - q1)
    # the outliers are gone and the clipped sigma is close to the true one
    assert abs(got.mean - 100.0) < 0.1
    assert abs(np.sqrt(got.variance) - 5.0) < 0.1


def test_unmasked_plane_bits_do_not_exclude_pixels():
    img = np.arange(100, dtype=np.float64).reshape(10, 10)
    mask = np.full(img.shape, 1 << 9, np.int32)
    assert clippedStatistics(img, mask, andMask=1 << 3).nCandidates == 100
    assert clippedStatistics(img, mask, andMask=1 << 9).nCandidates == 0


def test_constant_image_keeps_every_pixel():
    img = np.full((37, 41), 3.25, np.float32)
    s = clippedStatistics(img)
    assert s.mean == 3.25 and s.variance == 0.0
    assert s.nUsed == img.size
    assert clipped_statistics_numpy(img) == (3.25, 0.0)


@pytest.mark.parametrize("values", [[], [np.nan], [7.0], [1.0, 2.0], [1.0, 2.0, 40.0], [5.0, np.inf, -np.inf, 6.0]])
def test_tiny_inputs_match_reference(values):
    arr = np.array(values, dtype=np.float64)
    s = clippedStatistics(arr)
    mean, var = clipped_statistics_numpy(arr)
    assert_close(s.mean, mean)
    assert_close(s.variance, var)
    assert s.nCandidates == int(np.isfinite(arr).sum())


def test_empty_and_all_masked_give_nan():
    s = clippedStatistics(np.full((4, 4), np.nan, np.float32))
    assert np.isnan(s.mean) and np.isnan(s.variance) and s.nCandidates == 0
    img = np.ones((4, 4), np.float32)
    s = clippedStatistics(img, np.ones((4, 4), np.int32), andMask=1)
    assert np.isnan(s.mean) and s.nCandidates == 0


def test_clipping_removes_outliers_with_known_answer():
    # 1000 values -1/+1 alternating plus 10 huge outliers: the clipped mean is exactly 0.
    vals = np.concatenate([np.tile([-1.0, 1.0], 500), np.full(10, 1e6)])
    s = clippedStatistics(vals)
    assert s.mean == 0.0
    assert s.nUsed == 1000
    assert s.variance == pytest.approx(1000 / 999, rel=1e-15)
    assert IQR_TO_SIGMA == pytest.approx(1 / (2 * 0.6744897501960817), rel=1e-14)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 80),
    width=st.integers(1, 80),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
    nan_frac=st.floats(0.0, 0.5),
    mask_frac=st.floats(0.0, 0.5),
    outlier_frac=st.floats(0.0, 0.2),
    n_sigma=st.floats(1.0, 5.0),
    n_iter=st.integers(1, 5),
    loc=st.floats(-1e4, 1e4),
)
def test_property_matches_reference(height, width, dtype, seed, nan_frac, mask_frac, outlier_frac, n_sigma,
                                    n_iter, loc):
    rng = np.random.default_rng(seed)
    img, mask = make_image(rng, (height, width), dtype, nan_frac, mask_frac, outlier_frac, mean=loc, sigma=3.0)
    s = clippedStatistics(img, mask, andMask=1 << 3, nSigma=n_sigma, nIter=n_iter)
    mean, var = clipped_statistics_numpy(img, mask, 1 << 3, n_sigma, n_iter)
    scale = abs(loc) + 3.0
    assert_close(s.mean, mean, scale)
    # The variance of a pass is a difference of sums of squared deviations from the pass centre;
    # when a wide window kept the outliers (loc + 3000) in the previous pass, that centre is far
    # from the values kept now and both implementations lose digits to cancellation: the bound is
    # relative to the largest squared deviation, not to the variance.
    cand = img[np.isfinite(img) & ((mask & (1 << 3)) == 0)].astype(np.float64)
    spread = float(np.max(np.abs(cand - loc))) + 3.0 if cand.size else 3.0
    assert_close(s.variance, var, max(scale, spread) ** 2)
    # invariants: the kept count never exceeds the candidates, and the input is untouched
    assert 0 <= s.nUsed <= s.nCandidates <= img.size


MEDIUM_CASES = {
    "normal": lambda rng, n: rng.normal(25.0, 0.5, n),
    "ties": lambda rng, n: rng.integers(0, 7, n).astype(float),       # brackets cannot split a tie
    "ramp": lambda rng, n: np.linspace(-3.0, 9.0, n),                 # strongly ordered pixels
    "bimodal": lambda rng, n: np.where(rng.random(n) < 0.3, rng.normal(0, 1, n), rng.normal(50, 2, n)),
    "heavy_tail": lambda rng, n: rng.standard_cauchy(n),
    "constant": lambda rng, n: np.full(n, 4.25),
}


@pytest.mark.parametrize("case", sorted(MEDIUM_CASES))
@pytest.mark.parametrize("shape", [(91, 91), (228, 228), (300, 437)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_medium_images_exact_quartiles(case, shape, dtype):
    """Images of 8k-131k pixels (decorrelation cells) select quartiles from sampled brackets, with a
    fallback when the sample misleads: medians and IQRs must still be exact."""
    rng = np.random.default_rng(len(case) * 1000 + shape[0])
    img = MEDIUM_CASES[case](rng, shape[0] * shape[1]).reshape(shape).astype(dtype)
    mask = np.zeros(shape, np.int32)
    mask[rng.random(shape) < 0.05] = 1
    img[rng.random(shape) < 0.01] = np.nan
    got = clippedStatistics(img, mask, andMask=1)
    cand = img[np.isfinite(img) & (mask == 0)].astype(np.float64)
    q1, med, q3 = np.percentile(cand, [25, 50, 75])
    assert got.nCandidates == cand.size
    assert got.median == med
    assert_close(got.iqr, q3 - q1, abs(q1) + abs(q3))
    mean, var = clipped_statistics_numpy(img, mask, 1)
    scale = float(np.max(np.abs(cand)))
    assert_close(got.mean, mean, scale)
    assert_close(got.variance, var, scale * scale)


@settings(max_examples=12, deadline=None)
@given(height=st.integers(91, 260), width=st.integers(91, 260), seed=st.integers(0, 2**32 - 1),
       outlier_frac=st.floats(0.0, 0.3), loc=st.floats(-1e4, 1e4))
def test_property_medium_images_match_reference(height, width, seed, outlier_frac, loc):
    rng = np.random.default_rng(seed)
    img, mask = make_image(rng, (height, width), np.float32, 0.02, 0.05, outlier_frac, mean=loc, sigma=3.0)
    s = clippedStatistics(img, mask, andMask=1 << 3)
    mean, var = clipped_statistics_numpy(img, mask, 1 << 3)
    scale = abs(loc) + 3.0
    assert_close(s.mean, mean, scale)
    assert_close(s.variance, var, scale * scale)
    cand = img[np.isfinite(img) & ((mask & (1 << 3)) == 0)].astype(np.float64)
    assert s.median == np.percentile(cand, 50)


def test_results_bit_identical_for_any_thread_count():
    rng = np.random.default_rng(5)
    img, mask = make_image(rng, (1500, 1100), np.float32)
    before = _core.get_num_threads()
    try:
        _core.set_num_threads(1)
        a = clippedStatistics(img, mask, andMask=8)
        _core.set_num_threads(3)
        b = clippedStatistics(img, mask, andMask=8)
    finally:
        _core.set_num_threads(before)
    assert a == b


def test_inputs_are_not_modified_and_views_are_read_in_place():
    rng = np.random.default_rng(2)
    big, mask = make_image(rng, (200, 300), np.float64)
    keep_img, keep_mask = big.copy(), mask.copy()
    view = big[10:150:3, 5:290:2]
    mview = mask[10:150:3, 5:290:2]
    s = clippedStatistics(view, mview, andMask=8)
    mean, var = clipped_statistics_numpy(np.ascontiguousarray(view), np.ascontiguousarray(mview), 8)
    assert_close(s.mean, mean)
    assert_close(s.variance, var)
    np.testing.assert_array_equal(big, keep_img)
    np.testing.assert_array_equal(mask, keep_mask)
    # Fortran order too
    f = np.asfortranarray(keep_img)
    assert clippedStatistics(f).mean == clippedStatistics(keep_img).mean


def test_integer_values_and_uint16_masks_are_converted():
    vals = np.arange(20, dtype=np.int16).reshape(4, 5)
    m16 = np.zeros((4, 5), np.uint16)
    m16[0, 0] = 1
    s = clippedStatistics(vals, m16, andMask=1)
    assert s.nCandidates == 19
    assert s.mean == pytest.approx(np.arange(1, 20).mean(), rel=1e-15)


def test_mask_object_is_accepted():
    image = pytest.importorskip("diffcal.image")
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    mi = image.MaskedImage(img)
    mi.mask.array[0, :] = mi.mask.getPlaneBitMask("BAD")
    s = clippedStatistics(img, mi.mask, andMask=mi.mask.getPlaneBitMask("BAD"))
    assert s.nCandidates == 8


def test_helpers_and_quantile():
    rng = np.random.default_rng(9)
    img = rng.normal(size=(300, 200))
    assert clippedMean(img) == clippedStatistics(img).mean
    assert clippedVariance(img) == clippedStatistics(img).variance
    fr = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]
    np.testing.assert_allclose(quantile(img, fr), np.percentile(img, np.array(fr) * 100), rtol=1e-15, atol=0)
    assert quantile(img, 0.5) == np.median(img)
    assert np.isnan(quantile(np.full(3, np.nan), 0.5))


def test_quantile_of_clustered_doubles_uses_refinement():
    # 2.5 million doubles within 1e-6 of each other force several radix rounds.
    rng = np.random.default_rng(4)
    vals = 1.0 + 1e-6 * rng.random(2_500_000)
    np.testing.assert_array_equal(quantile(vals, [0.25, 0.5, 0.75]), np.percentile(vals, [25, 50, 75]))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(values=np.zeros((3, 3), np.complex64)), TypeError, "float32/float64"),
        (dict(values=np.zeros((2, 2, 2))), ValueError, "1-D or 2-D"),
        (dict(values=np.zeros((3, 3)), mask=np.zeros((3, 4), np.int32)), ValueError, r"mask shape \(3, 4\)"),
        (dict(values=np.zeros((3, 3)), mask=np.zeros((3, 3))), TypeError, "integer"),
        (dict(values=np.zeros((3, 3)), nSigma=0.0), ValueError, "nSigma"),
        (dict(values=np.zeros((3, 3)), nSigma=np.nan), ValueError, "nSigma"),
        (dict(values=np.zeros((3, 3)), nIter=0), ValueError, "nIter"),
        (dict(values=np.zeros((3, 3)), andMask=2**40), ValueError, "andMask"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        clippedStatistics(**kwargs)


def test_core_rejects_wrong_dtype_without_conversion():
    with pytest.raises(TypeError, match="mask: expected dtype int32"):
        _core.clipped_statistics(np.zeros(4), np.zeros(4, np.int64), 0, 3.0, 3)
    with pytest.raises(ValueError, match="fraction"):
        _core.quantile(np.zeros(4), 1.5)


def test_gil_is_released_for_concurrent_calls():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(800, 800)).astype(np.float32)
    expected = clippedStatistics(img)
    results = []
    threads = [threading.Thread(target=lambda: results.append(clippedStatistics(img))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4
