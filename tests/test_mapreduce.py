"""ImageMapReduce: the reference test suite (spec §3.1) ported, plus the diffcal additions.

Tolerances follow the reference's ``assertFloatsAlmostEqual``: an element passes when
``|a - b| <= rtol * max(|a|, |b|)`` or ``|a - b| <= atol``, both defaulting to double epsilon.
"""

from __future__ import annotations

import copy
import itertools
import pickle

import numpy as np
import pytest
from astropy.wcs import WCS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffcal import _core
from diffcal.geom import Box2I
from diffcal.image import Exposure
from diffcal.pipe import Field, FieldValidationError, Struct
from diffcal.psf import SIGMA_TO_FWHM, DoubleGaussianPsf, GaussianPsf, GridPsf, PsfCoverageError
from diffcal.mapreduce import (
    IdentityImageMapper,
    ImageMapper,
    ImageMapperConfig,
    ImageMapReduceConfig,
    ImageMapReduceTask,
    ImageReducer,
    ImageReducerConfig,
)
from diffcal.reference import generate_grid_numpy, image_reduce_numpy

EPS = np.finfo(np.float64).eps


def assert_floats_almost_equal(a, b, rtol=EPS, atol=EPS):
    """The reference's assertFloatsAlmostEqual (None disables a term)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a - b)
    ok = np.zeros(diff.shape, dtype=bool)
    if rtol is not None:
        ok |= diff <= rtol * np.maximum(np.abs(a), np.abs(b))
    if atol is not None:
        ok |= diff <= atol
    assert ok.all(), f"{np.count_nonzero(~ok)} elements differ; max |a - b| = {diff[~ok].max()}"


# ---------------------------------------------------------------------------------------------
# fixture and helper mappers (spec §3.1)
# ---------------------------------------------------------------------------------------------

def make_sin_wcs() -> WCS:
    """The reference fixture's SIN WCS (its 0-based CRPIX shifted to FITS' 1-based convention)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [215.604025685476, 53.1595451514076]
    w.wcs.crpix = [1109.99981456774 + 1.0, 560.018167811613 + 1.0]
    w.wcs.cd = [[5.108e-5, 1.856e-7], [-8.274e-7, -5.103e-5]]
    w.wcs.set()
    return w


def make_exposure(value: float = 0.0, size: int = 128, dtype=np.float32, xy0=(0, 0)) -> Exposure:
    """128x128 ExposureF, DoubleGaussianPsf(11, 11, 2.0, 3.7), all planes 0 (image = value), SIN WCS."""
    img = np.full((size, size), value, dtype=dtype)
    return Exposure(img, np.zeros((size, size), np.int32), np.zeros((size, size), dtype), xy0=xy0,
                    psf=DoubleGaussianPsf(11, 11, 2.0, 3.7), wcs=make_sin_wcs())


class AddAmountImageMapperConfig(ImageMapperConfig):
    addAmount = Field(dtype=float, doc="Amount to add to the image", default=10.0)


class AddAmountImageMapper(ImageMapper):
    """Clone the sub-exposure, add addAmount to its image, optionally set local pixel [0, 0] to NaN."""

    ConfigClass = AddAmountImageMapperConfig
    _DefaultName = "test_addAmountImageMapper"

    def run(self, subExposure, expandedSubExposure, fullBBox, addNans=False, **kwargs):
        out = subExposure.clone()
        mi = out.maskedImage
        mi += self.config.addAmount          # scalar add: image plane only
        if addNans:
            out.image[0, 0] = np.nan
        return Struct(subExposure=out)


class GetMeanImageMapper(ImageMapper):
    """Return the mean of the sub-image (a float) under the name subExposure."""

    ConfigClass = ImageMapperConfig
    _DefaultName = "test_getMeanImageMapper"

    def run(self, subExposure, expandedSubExposure, fullBBox, **kwargs):
        return Struct(subExposure=float(np.mean(subExposure.image, dtype=np.float64)))


class AddConstantNativeMapperConfig(AddAmountImageMapperConfig):
    pass


class AddConstantNativeMapper(AddAmountImageMapper):
    """AddAmountImageMapper with a native twin (diffcal._core.AddConstantCellMapper)."""

    ConfigClass = AddConstantNativeMapperConfig

    def nativeMapper(self, exposure, **kwargs):
        return _core.AddConstantCellMapper(self.config.addAmount)


def make_task(mapper=AddAmountImageMapper, reduceOperation="average", **fields) -> ImageMapReduceTask:
    config = ImageMapReduceConfig()
    config.mapper.retarget(mapper)
    config.reducer.reduceOperation = reduceOperation
    for name, value in fields.items():
        if name == "addAmount":
            config.mapper.addAmount = value
        else:
            setattr(config, name, value)
    return ImageMapReduceTask(config=config)


@pytest.fixture
def restore_threads():
    yield
    _core.set_num_threads(0)


def _moments(img: np.ndarray) -> tuple[float, float, float]:
    """Unnormalised second moments sum f (x - xbar)^2, sum f (y - ybar)^2, sum f (x - xbar)(y - ybar)."""
    y, x = np.indices(img.shape, dtype=np.float64)
    s = img.sum()
    xbar, ybar = (img * x).sum() / s, (img * y).sum() / s
    return ((img * (x - xbar) ** 2).sum(), (img * (y - ybar) ** 2).sum(), (img * (x - xbar) * (y - ybar)).sum())


def check_coadd_psf(psf, original) -> None:
    """The reference's _testCoaddPsf: PSF images and second moments on a 10x10 grid, atol 1e-4."""
    assert isinstance(psf, GridPsf)
    points = np.rint(np.linspace(6, 122, 10))
    for x in points:
        for y in points:
            im1 = original.computeImage((x, y))
            im2 = psf.computeImage((x, y))
            if im1.shape != im2.shape:          # pad the smaller one by 1 px on each side
                if im1.shape[0] < im2.shape[0]:
                    im1 = np.pad(im1, 1)
                else:
                    im2 = np.pad(im2, 1)
            assert_floats_almost_equal(im1, im2, rtol=None, atol=1e-4)
            assert_floats_almost_equal(_moments(im1), _moments(im2), rtol=None, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# the reference tests (spec §3.1)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduceOp", ["copy", "sum"])
@pytest.mark.parametrize("withNaNs", [False, True])
def test_copy_sum_no_overlaps(reduceOp, withNaNs):
    exposure = make_exposure()
    task = make_task(reduceOperation=reduceOp, addAmount=5.0)
    assert len(task.run(exposure).exposure.image) == 128
    new = task.run(exposure, addNans=withNaNs).exposure
    assert len(task.boxes0) == 9
    arr = new.image
    isnan = np.isnan(arr)
    if not withNaNs:
        assert np.count_nonzero(isnan) == 0
    if reduceOp == "copy":
        assert_floats_almost_equal(arr[~isnan] - 5.0, exposure.image[~isnan])
        assert new.getPsf() == exposure.getPsf()
    else:
        check_coadd_psf(new.getPsf(), exposure.getPsf())
        # (not in the reference) the sums agree with the literal numpy reducer
        results = task._runMapper(exposure, addNans=withNaNs)
        ref, _ = image_reduce_numpy(results, exposure, "sum")
        np.testing.assert_array_equal(new.image, ref.image)
        np.testing.assert_array_equal(new.mask, ref.mask)


@pytest.mark.parametrize("withNaNs", [False, True])
def test_average_with_overlaps(withNaNs):
    exposure = make_exposure()
    task = make_task(reduceOperation="average", addAmount=5.0, gridStepX=8.0, gridStepY=8.0)
    new = task.run(exposure, addNans=withNaNs).exposure
    arr = new.image
    isnan = np.isnan(arr)
    if not withNaNs:
        assert np.count_nonzero(isnan) == 0
    assert_floats_almost_equal(arr[~isnan] - 5.0, exposure.image[~isnan])
    check_coadd_psf(new.getPsf(), exposure.getPsf())


@pytest.mark.parametrize("withNaNs", [False, True])
def test_average_versus_copy(withNaNs):
    exposure = make_exposure()
    exposure.image[...] = np.random.default_rng(1).normal(size=exposure.shape)
    task1 = make_task(addAmount=5.0)                  # reduceOperation default: average
    new1 = task1.run(exposure, addNans=withNaNs).exposure
    arr1 = new1.image
    isnan = np.isnan(arr1)
    if not withNaNs:
        assert np.count_nonzero(isnan) == 0
    task2 = make_task(addAmount=5.0, gridStepX=8.0, gridStepY=8.0)   # gridStep unused in 'spacing' mode
    arr2 = task2.run(exposure, addNans=withNaNs).exposure.image
    assert_floats_almost_equal(arr1[~isnan], arr2[~isnan], rtol=1e-7, atol=None)   # the reference's bound
    # double accumulation makes repeated runs bit-identical (the reference needed rtol 1e-7)
    np.testing.assert_array_equal(arr1, arr2)
    # what the name promises: averaging identical overlapping values equals copying them, exactly
    copied = make_task(addAmount=5.0, reduceOperation="copy").run(exposure, addNans=withNaNs).exposure
    np.testing.assert_array_equal(copied.image, arr1)
    np.testing.assert_array_equal(copied.mask, new1.mask)


def test_mean():
    exposure = make_exposure(1.234)
    task = make_task(GetMeanImageMapper, reduceOperation="none")
    means = task.run(exposure).result
    assert len(means) == len(task.boxes0) == 9
    for m in means:
        assert_floats_almost_equal(m.subExposure, exposure.image[0, 0])


def _centroid_config(task_kwargs=None):
    centroids = list(np.linspace(0, 128, 50))
    return dict(cellCentroidsX=centroids, cellCentroidsY=centroids, **(task_kwargs or {}))


def test_cell_centroids():
    exposure = make_exposure(1.234)
    task = make_task(GetMeanImageMapper, reduceOperation="none", **_centroid_config())
    means = task.run(exposure).result
    assert len(means) == 50
    for m in means:
        assert_floats_almost_equal(m.subExposure, exposure.image[0, 0])
    assert task.boxes0[10].getDimensions() == (10, 10)      # unscaled 10x10 cells


def test_cell_centroids_wrong_length():
    exposure = make_exposure(1.234)
    task = make_task(GetMeanImageMapper, reduceOperation="none", **_centroid_config())
    task._generateGrid(exposure)
    del task.boxes0[-1]
    with pytest.raises(ValueError, match="49 inner boxes"):
        task._runMapper(exposure, boxes0=task.boxes0, boxes1=task.boxes1)
    # diffcal fix: the grid is not cached, so run() regenerates a consistent one
    assert len(task.run(exposure).result) == 50
    # centroid lists of different lengths are a config error
    config = ImageMapReduceConfig()
    config.cellCentroidsX = [1.0, 2.0]
    config.cellCentroidsY = [1.0]
    with pytest.raises(FieldValidationError, match="same length"):
        config.validate()
    task.config.cellCentroidsY = [1.0]
    with pytest.raises(ValueError, match="same length"):
        task.run(exposure)


def test_masks():
    exposure = make_exposure()
    task = make_task(reduceOperation="average", addAmount=5.0, **_centroid_config())
    new = task.run(exposure).exposure
    arr = new.image
    isnan = np.isnan(arr)
    assert np.count_nonzero(isnan) > 1000
    assert_floats_almost_equal(arr[~isnan] - 5.0, exposure.image[~isnan])
    mask = new.maskedImage.mask
    assert "INVALID_MAPREDUCE" in mask.getMaskPlaneDict()
    assert mask.getMaskPlane("INVALID_MAPREDUCE") > 0
    flagged = (new.mask & mask.getPlaneBitMask("INVALID_MAPREDUCE")) != 0
    assert np.count_nonzero(flagged) > 1000
    assert np.count_nonzero(flagged) == np.count_nonzero(isnan)
    # the input's mask planes are untouched
    assert "INVALID_MAPREDUCE" not in exposure.maskedImage.mask.getMaskPlaneDict()


def test_not_none_reduce_with_non_exposure_mapper():
    exposure = make_exposure(1.234)
    task = make_task(GetMeanImageMapper, reduceOperation="average")
    with pytest.raises(TypeError, match="reduceOperation='none'"):
        task.run(exposure)
    # the reducer alone says the same
    reducer = ImageReducer(config=ImageReducerConfig())
    with pytest.raises(TypeError, match="reduceOperation='none'"):
        reducer.run([Struct(subExposure=1.0)], exposure)


@pytest.mark.parametrize("reduceOp", ["copy", "average"])
@pytest.mark.parametrize("adjust", ["spacing", "size", "none"])
def test_grid_validity(reduceOp, adjust):
    """216 configurations (here 36 per parameter pair) x 2 runs: complete coverage, exact values."""
    exposure = make_exposure()
    expected = exposure.image
    for gstepx, dx, gstepy, dy in itertools.product((11, 7), (0, 1, 2), (11, 7), (0, 1, 2)):
        gsizex, gsizey = gstepx + dx, gstepy + dy
        counts = []
        for scale in (True, False):
            factor = 1 if scale else 3
            task = make_task(reduceOperation=reduceOp, addAmount=1.0, adjustGridOption=adjust, scaleByFwhm=scale,
                             gridStepX=float(gstepx * factor), gridStepY=float(gstepy * factor),
                             cellSizeX=float(gsizex * factor), cellSizeY=float(gsizey * factor))
            new = task.run(exposure).exposure.image
            where = (reduceOp, adjust, scale, gstepx, gsizex, gstepy, gsizey)
            assert np.count_nonzero(np.isnan(new)) == 0, where
            assert_floats_almost_equal(new - 1.0, expected)
            counts.append(len(task.boxes0))
        assert counts[0] < counts[1], (where, counts)


# ---------------------------------------------------------------------------------------------
# worked examples of spec §1.5
# ---------------------------------------------------------------------------------------------

def _ranges(boxes, axis):
    return sorted({(b.getMinX(), b.getMaxX()) if axis == "x" else (b.getMinY(), b.getMaxY()) for b in boxes})


def test_worked_example_fixture_grid():
    exposure = make_exposure()
    assert exposure.getPsf().computeFwhm() == pytest.approx(4.7038, abs=1e-4)
    task = make_task()
    inner, expanded = task._generateGrid(exposure)
    assert len(inner) == 9
    for axis in "xy":
        assert _ranges(task.boxes0, axis) == [(0, 46), (41, 87), (82, 127)]
        assert _ranges(task.boxes1, axis) == [(0, 70), (17, 111), (58, 127)]
    # x outer, y inner
    assert [b.getMinX() for b in task.boxes0[:3]] == [0, 0, 0]
    assert [b.getMinY() for b in task.boxes0[:3]] == [0, 41, 82]
    # offsets are relative to the bbox origin
    shifted = make_exposure(xy0=(1000, -7))
    task._generateGrid(shifted)
    assert task.boxes0[4] == Box2I((1041, 34), (1087, 80))


def test_worked_example_single_cell():
    exposure = Exposure(np.zeros((256, 256), np.float32), psf=GaussianPsf(25, 25, 3.3))
    task = make_task(cellSizeX=41.0, cellSizeY=41.0, gridStepX=40.0, gridStepY=40.0, borderSizeX=8.0,
                     borderSizeY=8.0)
    task._generateGrid(exposure, forceEvenSized=True)
    assert task.boxes0 == [exposure.getBBox()]
    assert task.boxes1 == [exposure.getBBox()]
    _, _, sizes = _core.generate_grid((0, 0, 255, 255), 41, 41, 40, 40, 8, 8, "spacing", True,
                                      3.3 * SIGMA_TO_FWHM)
    assert (sizes["cellSizeX"], sizes["borderSizeX"]) == (319, 62)


def test_worked_example_ccd():
    """Spec: ~4072x4000, FWHM ~3.5 px, spatial defaults -> cell 144, border 28, 29 x 28 = 812 cells.

    41 * 3.5 = 143.5 exactly, which rounds half to even to 144 (a FWHM one ulp below 3.5 would give
    143 and the same number of cells). A Gaussian PSF of sigma 3.5 / 2.3548... gives back exactly 3.5.
    """
    inner, expanded, sizes = _core.generate_grid((0, 0, 4071, 3999), 41, 41, 40, 40, 8, 8, "spacing", True, 3.5)
    assert (sizes["cellSizeX"], sizes["borderSizeX"]) == (144, 28)
    assert len(inner) == 29 * 28 == 812
    widths = expanded[:, 2] - expanded[:, 0] + 1
    assert widths.max() == 200
    exposure = Exposure(np.zeros((4000, 4072), np.float32), psf=GaussianPsf(21, 21, 3.5 / SIGMA_TO_FWHM))
    fwhm = exposure.getPsf().computeFwhm()
    assert fwhm == 3.5
    task = make_task(cellSizeX=41.0, cellSizeY=41.0, gridStepX=40.0, gridStepY=40.0, borderSizeX=8.0,
                     borderSizeY=8.0)
    inner2, _ = task._generateGrid(exposure)
    assert len(inner2) == 812
    assert inner2[0, 2] - inner2[0, 0] + 1 == 144


# ---------------------------------------------------------------------------------------------
# grid: C++ against the literal numpy version; coverage
# ---------------------------------------------------------------------------------------------

def _core_grid(bbox: Box2I, **kw):
    inner, expanded, _ = _core.generate_grid(
        (bbox.getMinX(), bbox.getMinY(), bbox.getMaxX(), bbox.getMaxY()), kw["cellSizeX"], kw["cellSizeY"],
        kw["gridStepX"], kw["gridStepY"], kw["borderSizeX"], kw["borderSizeY"], kw["adjustGridOption"],
        kw["scaleByFwhm"], kw["fwhm"], kw.get("cellCentroidsX"), kw.get("cellCentroidsY"), kw["forceEvenSized"])
    return inner, expanded


def _as_rows(boxes):
    return np.array([tuple(b) for b in boxes], dtype=np.int64).reshape(len(boxes), 4)


@settings(max_examples=300, deadline=None)
@given(
    w=st.integers(1, 300), h=st.integers(1, 300), x0=st.integers(-50, 50), y0=st.integers(-50, 50),
    cell=st.tuples(st.floats(0.5, 40), st.floats(0.5, 40)), step=st.tuples(st.floats(0.5, 40), st.floats(0.5, 40)),
    border=st.tuples(st.floats(0.01, 15), st.floats(0.01, 15)),
    adjust=st.sampled_from(["spacing", "size", "none"]), scale=st.booleans(), fwhm=st.floats(0.8, 6.0),
    even=st.booleans(),
)
def test_grid_matches_numpy_reference(w, h, x0, y0, cell, step, border, adjust, scale, fwhm, even):
    bbox = Box2I((x0, y0), dimensions=(w, h))
    kw = dict(cellSizeX=cell[0], cellSizeY=cell[1], gridStepX=step[0], gridStepY=step[1], borderSizeX=border[0],
              borderSizeY=border[1], adjustGridOption=adjust, scaleByFwhm=scale, fwhm=fwhm, forceEvenSized=even)
    px = [np.rint(v * fwhm if scale else v) for v in (cell[0], cell[1])]
    steps = [np.rint(v * fwhm if scale else v) for v in (step[0], step[1])]
    if min(px) < 1 or (adjust != "spacing" and min(steps) < 1):
        with pytest.raises(ValueError, match="rounds to 0 pixels"):
            _core_grid(bbox, **kw)
        return
    try:
        ref0, ref1 = generate_grid_numpy(bbox, **kw)
    except RuntimeError:
        with pytest.raises(RuntimeError, match="forceEvenSized"):
            _core_grid(bbox, **kw)
        return
    inner, expanded = _core_grid(bbox, **kw)
    np.testing.assert_array_equal(inner, _as_rows(ref0))
    np.testing.assert_array_equal(expanded, _as_rows(ref1))
    if adjust == "spacing" and min(w, h) > 1 and min(px) > 1:   # spacing covers the image (1x1 cells are dropped)
        cover = np.zeros((h, w), dtype=bool)
        for a, b, c, d in inner.tolist():
            cover[b - y0:d - y0 + 1, a - x0:c - x0 + 1] = True
        assert cover.all()


@settings(max_examples=60, deadline=None)
@given(cx=st.lists(st.floats(-4, 70), min_size=1, max_size=12), size=st.floats(1, 20), border=st.floats(0.1, 9))
def test_explicit_centroids_match_numpy_reference(cx, size, border):
    bbox = Box2I((3, -2), dimensions=(64, 60))
    cy = [c * 0.9 for c in cx]
    kw = dict(cellSizeX=size, cellSizeY=size + 1, gridStepX=1.0, gridStepY=1.0, borderSizeX=border,
              borderSizeY=border, adjustGridOption="spacing", scaleByFwhm=True, fwhm=float("nan"),
              cellCentroidsX=cx, cellCentroidsY=cy, forceEvenSized=False)
    cw, ch = int(size), int(size + 1)
    misses = [not Box2I((3 + int(np.floor(x)) - cw // 2, -2 + int(np.floor(y)) - ch // 2),
                        dimensions=(cw, ch)).overlaps(bbox) for x, y in zip(cx, cy)]
    if any(misses):          # diffcal: an error instead of silently dropping the cell
        with pytest.raises(ValueError, match=f"cell centroid {misses.index(True)} .* does not overlap"):
            _core_grid(bbox, **kw)
        return
    inner, expanded = _core_grid(bbox, **kw)
    ref0, ref1 = generate_grid_numpy(bbox, **kw)
    np.testing.assert_array_equal(inner, _as_rows(ref0))
    np.testing.assert_array_equal(expanded, _as_rows(ref1))


# ---------------------------------------------------------------------------------------------
# reducer and native path: properties
# ---------------------------------------------------------------------------------------------

def random_exposure(rng, w, h, dtype=np.float32, nan_frac=0.02, xy0=(0, 0), psf=True):
    img = rng.normal(0.0, 10.0, (h, w)).astype(dtype)
    var = rng.uniform(0.5, 2.0, (h, w)).astype(dtype)
    mask = (rng.random((h, w)) < 0.1).astype(np.int32) << 3
    img[rng.random((h, w)) < nan_frac] = np.nan
    var[rng.random((h, w)) < nan_frac / 2] = np.nan
    return Exposure(img, mask, var, xy0=xy0, psf=GaussianPsf(9, 9, 1.5) if psf else None)


def _equal_exposures(a: Exposure, b: Exposure) -> None:
    for plane in ("image", "mask", "variance"):
        x, y = getattr(a, plane), getattr(b, plane)
        assert x.dtype == y.dtype
        assert x.tobytes() == y.tobytes(), plane     # bit-for-bit, NaNs included
    assert a.getBBox() == b.getBBox()
    assert a.maskedImage.mask.getMaskPlaneDict() == b.maskedImage.mask.getMaskPlaneDict()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    w=st.integers(2, 90), h=st.integers(2, 90), x0=st.integers(-20, 20), y0=st.integers(-20, 20),
    cell=st.floats(2.0, 30.0), border=st.floats(0.5, 10.0), adjust=st.sampled_from(["spacing", "size"]),
    op=st.sampled_from(["copy", "sum", "average"]), dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_identity_native_equals_python_and_reproduces_input(restore_threads, w, h, x0, y0, cell, border, adjust, op,
                                                           dtype, seed):
    rng = np.random.default_rng(seed)
    exposure = random_exposure(rng, w, h, dtype=dtype, xy0=(x0, y0))
    before = exposure.clone()
    fields = dict(scaleByFwhm=False, cellSizeX=cell, cellSizeY=cell + 1.0, gridStepX=cell, gridStepY=cell,
                  borderSizeX=border, borderSizeY=border, adjustGridOption=adjust)
    native = make_task(IdentityImageMapper, reduceOperation=op, **fields)
    python = make_task(IdentityImageMapper, reduceOperation=op, useNativeMapper=False, **fields)
    _core.set_num_threads(1)
    out1 = native.run(exposure).exposure
    outs = [python.run(exposure).exposure]
    for threads in (2, 5):
        _core.set_num_threads(threads)
        outs.append(native.run(exposure).exposure)
    for o in outs:
        _equal_exposures(out1, o)
    _equal_exposures(exposure, before)               # the input is never modified
    # the literal numpy reducer (accumulating in the pixel type): same masks and NaNs, values to rounding
    ref, _ = image_reduce_numpy(python._runMapper(exposure), exposure, op)
    np.testing.assert_array_equal(out1.mask, ref.mask)
    for plane in ("image", "variance"):
        a, b = getattr(out1, plane), getattr(ref, plane)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        assert_floats_almost_equal(a[~np.isnan(a)], b[~np.isnan(b)], rtol=4 * np.finfo(dtype).eps, atol=None)
    invalid = np.isnan(exposure.image * exposure.variance)
    bad = out1.maskedImage.mask.getPlaneBitMask(["INVALID_MAPREDUCE", "BAD", "NO_DATA"])
    flagged = (out1.mask & bad) == bad
    if op in ("copy", "average"):                    # identity + full coverage reproduces the input
        good = ~invalid
        if op == "copy" or dtype == np.float32:
            # copy moves values; a double sum of k equal float32 values is exact, and so is / k
            np.testing.assert_array_equal(out1.image[good], exposure.image[good])
            np.testing.assert_array_equal(out1.variance[good], exposure.variance[good])
        else:                                        # float64: (v + v + v) / 3 may be 1 ulp off
            assert_floats_almost_equal(out1.image[good], exposure.image[good], rtol=2 * EPS, atol=None)
            assert_floats_almost_equal(out1.variance[good], exposure.variance[good], rtol=2 * EPS, atol=None)
        np.testing.assert_array_equal(out1.mask[good], exposure.mask[good])
        assert np.isnan(out1.image[invalid]).all()
        np.testing.assert_array_equal(flagged, invalid)
        assert native.reducer.metadata["nFlagged"] == np.count_nonzero(invalid)
        assert np.count_nonzero(np.isnan(out1.image)) == np.count_nonzero(flagged)


@settings(max_examples=60, deadline=None)
@given(w=st.integers(5, 80), h=st.integers(5, 80), amount=st.floats(-100, 100),
       op=st.sampled_from(["none", "copy", "sum", "average", "coaddPsf"]), seed=st.integers(0, 2**31 - 1))
def test_add_constant_native_equals_python(w, h, amount, op, seed):
    rng = np.random.default_rng(seed)
    exposure = random_exposure(rng, w, h)
    fields = dict(scaleByFwhm=False, cellSizeX=9.0, cellSizeY=7.0, borderSizeX=3.0, borderSizeY=3.0, addAmount=amount)
    native = make_task(AddConstantNativeMapper, reduceOperation=op, **fields).run(exposure)
    python = make_task(AddConstantNativeMapper, reduceOperation=op, useNativeMapper=False, **fields).run(exposure)
    if op == "none":
        assert len(native.result) == len(python.result)
        for a, b in zip(native.result, python.result):
            _equal_exposures(a.subExposure, b.subExposure)
    elif op == "coaddPsf":
        assert native.result == python.result
    else:
        _equal_exposures(native.exposure, python.exposure)
        assert native.exposure.getPsf() == python.exposure.getPsf()


def test_average_double_accumulation_matches_numpy_closely(restore_threads):
    """Random patches with overlaps: agreement with the float32-accumulating reference reducer."""
    rng = np.random.default_rng(5)
    exposure = random_exposure(rng, 120, 100, nan_frac=0.0)
    exposure.image[...] = rng.normal(1000.0, 100.0, exposure.shape).astype(np.float32)
    results = []
    for _ in range(60):
        x0, y0 = rng.integers(0, 100), rng.integers(0, 80)
        box = Box2I((int(x0), int(y0)), dimensions=(int(rng.integers(2, 20)), int(rng.integers(2, 20))))
        box = box.clippedTo(exposure.getBBox())
        sub = exposure[box].clone()
        sub.image[...] = rng.normal(1000.0, 100.0, sub.shape).astype(np.float32)
        results.append(Struct(subExposure=sub))
    reducer = ImageReducer(config=ImageReducerConfig())
    ours = reducer.run(results, exposure).exposure
    for threads in (1, 3):           # bit-identical whatever the thread count
        _core.set_num_threads(threads)
        _equal_exposures(reducer.run(results, exposure).exposure, ours)
    ref, stats = image_reduce_numpy(results, exposure, "average")
    np.testing.assert_array_equal(np.isnan(ours.image), np.isnan(ref.image))
    np.testing.assert_array_equal(ours.mask, ref.mask)
    good = ~np.isnan(ours.image)
    assert_floats_almost_equal(ours.image[good], ref.image[good], rtol=2e-7, atol=None)
    # ours is the correctly rounded mean of the contributions
    md = reducer.metadata
    assert md["maxOverlap"] == stats["maxOverlap"]
    assert md["minOverlap"] == stats["minOverlap"]
    assert md["nZeroWeight"] == stats["nZeroWeight"]
    assert md["meanOverlap"] == pytest.approx(stats["meanOverlap"], rel=1e-12)


def test_sum_leaves_uncovered_pixels_zero_and_unflagged():
    exposure = make_exposure(2.0)
    task = make_task(reduceOperation="sum", addAmount=1.0, cellCentroidsX=[20.0], cellCentroidsY=[30.0])
    new = task.run(exposure).exposure
    inner = task.boxes0[0]
    covered = np.zeros(exposure.shape, dtype=bool)
    covered[inner.slices()] = True
    assert (new.image[covered] == 3.0).all()
    assert (new.image[~covered] == 0.0).all()
    assert (new.mask == 0).all()
    copy_task = make_task(reduceOperation="copy", addAmount=1.0, cellCentroidsX=[20.0], cellCentroidsY=[30.0])
    copied = copy_task.run(exposure).exposure
    assert np.isnan(copied.image[~covered]).all()
    bad = copied.maskedImage.mask.getPlaneBitMask(["INVALID_MAPREDUCE", "BAD", "NO_DATA"])
    assert ((copied.mask[~covered] & bad) == bad).all()


def test_float64_exposure_and_strided_input():
    rng = np.random.default_rng(3)
    big = random_exposure(rng, 200, 150, dtype=np.float64, xy0=(10, 20))
    view = big[Box2I((40, 50), dimensions=(101, 77))]          # a strided view with xy0 != 0
    assert not view.image.flags.c_contiguous
    task = make_task(IdentityImageMapper, scaleByFwhm=False, cellSizeX=15.0, cellSizeY=15.0)
    out = task.run(view).exposure
    assert out.dtype == np.float64 and out.getBBox() == view.getBBox()
    good = ~np.isnan(view.image * view.variance)
    np.testing.assert_array_equal(out.image[good], view.image[good])


# ---------------------------------------------------------------------------------------------
# outputs, PSFs, metadata
# ---------------------------------------------------------------------------------------------

def test_output_operations_and_psfs():
    exposure = make_exposure(1.0)
    none = make_task(reduceOperation="none").run(exposure)
    assert isinstance(none.result, list) and len(none.result) == 9
    coadd = make_task(reduceOperation="coaddPsf").run(exposure)
    assert isinstance(coadd.result, GridPsf)
    check_coadd_psf(coadd.result, exposure.getPsf())
    copied = make_task(reduceOperation="copy").run(exposure).exposure
    assert copied.getPsf() == exposure.getPsf() and copied.getPsf() is not exposure.getPsf()
    avg = make_task(reduceOperation="average").run(exposure).exposure
    psf = avg.getPsf()
    assert psf.getComponentCount() == 9
    assert psf.getAveragePosition() == (0.0, 0.0)            # the component PSF's average position
    assert len(psf.findComponents((44, 44))) == 4             # 2x2 inner boxes overlap there
    assert psf.computeShape((44, 44)) == exposure.getPsf().computeShape()
    with pytest.raises(PsfCoverageError, match="no component covers"):
        psf.computeImage((300.0, 3.0))
    # the rest of the exposure is carried over as copies
    assert avg.getWcs() is not exposure.getWcs()
    assert avg.getWcs().wcs.compare(exposure.getWcs().wcs)


def test_grid_psf_mixed_components():
    small, big = GaussianPsf(11, 11, 1.5), DoubleGaussianPsf(15, 13, 2.5, 4.0, 0.1)
    boxes = [Box2I((0, 0), (20, 20)), Box2I((15, 0), (40, 20))]
    psf = GridPsf([small, big], boxes, weights=[1.0, 3.0])
    assert psf.getKernelDimensions() == (15, 13)
    img = psf.computeKernelImage((18, 5))
    expected = np.pad(small.computeKernelImage(), ((1, 1), (2, 2))) * 0.25 + big.computeKernelImage() * 0.75
    np.testing.assert_allclose(img, expected, rtol=0, atol=1e-15)
    assert img.sum() == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(psf.computeImage((3.3, 4.6)), np.pad(small.computeImage((3.3, 4.6)), ((1, 1), (2, 2))),
                               atol=1e-15)
    bbox = psf.computeImageBBox((3.3, 4.6))
    assert bbox.getDimensions() == (15, 13) and bbox.getCenter() == (3.0, 5.0)
    assert pickle.loads(pickle.dumps(psf)) == psf
    assert copy.deepcopy(psf) == psf
    with pytest.raises(ValueError, match="one bbox"):
        GridPsf([small], boxes)
    with pytest.raises(TypeError):
        GridPsf([small, "psf"], boxes)
    with pytest.raises(ValueError):
        GridPsf([], [])
    # average position: the components' (0, 0) is covered here; shifted away, the bbox centres are used
    assert psf.getAveragePosition() == (0.0, 0.0)
    far = GridPsf([small, big], [b.shift((1000, 1000)) for b in boxes])
    assert far.getBBox().contains(Box2I((1000, 1000), (1040, 1020)))
    assert far.findComponents(far.getAveragePosition()).size > 0


def test_metadata_and_logging(caplog):
    exposure = make_exposure(1.0)
    task = make_task(IdentityImageMapper)
    with caplog.at_level("INFO"):
        task.run(exposure)
    md = task.reducer.metadata
    assert md["nCells"] == 9 and md["maxOverlap"] == 4 and md["minOverlap"] == 1
    assert md["nZeroWeight"] == 0 and md["percentZeroWeight"] == 0.0
    assert 1.0 < md["meanOverlap"] < 1.3
    assert "overlap max 4" in caplog.text
    full = task.getFullMetadata()
    assert "runStartCpuTime" in full["ip_diffim_imageMapReduce"]
    assert full["ip_diffim_imageMapReduce"]["nCells"] == 9


def test_return_sub_images_and_do_clone():
    exposure = make_exposure(1.0)

    class WriteIntoInput(ImageMapper):
        ConfigClass = ImageMapperConfig
        _DefaultName = "writeIntoInput"

        def run(self, subExposure, expandedSubExposure, fullBBox, **kwargs):
            subExposure.image[...] += 1.0            # only allowed on copies
            return Struct(subExposure=subExposure)

    task = make_task(WriteIntoInput, reduceOperation="average", returnSubImages=True)
    with pytest.raises(ValueError, match="read-only"):
        task.run(exposure)
    assert (exposure.image == 1.0).all()
    out = task.run(exposure, doClone=True).exposure
    assert (out.image == 2.0).all() and (exposure.image == 1.0).all()
    task.config.reducer.reduceOperation = "none"
    results = task.run(exposure, doClone=True).result
    for res, b0, b1 in zip(results, task.boxes0, task.boxes1):
        assert res.inputSubExposure.getBBox() == b0
        assert res.inputExpandedSubExposure.getBBox() == b1
    native = make_task(IdentityImageMapper, reduceOperation="none", returnSubImages=True).run(exposure).result
    assert native[4].inputExpandedSubExposure.getBBox() == task.boxes1[4]


def test_grid_is_not_cached_between_runs():
    task = make_task(IdentityImageMapper)
    small, large = make_exposure(1.0, size=64), make_exposure(2.0, size=128)
    assert task.run(small).exposure.getBBox() == small.getBBox()
    n_small = len(task.boxes0)
    out = task.run(large).exposure
    assert out.getBBox() == large.getBBox() and (out.image == 2.0).all()
    assert len(task.boxes0) == 9 != n_small


def test_no_psf_needed_without_scaling():
    exposure = make_exposure(1.0)
    exposure.setPsf(None)
    with pytest.raises(ValueError, match="has no PSF"):
        make_task(IdentityImageMapper).run(exposure)
    out = make_task(IdentityImageMapper, scaleByFwhm=False).run(exposure).exposure
    assert out.getPsf() is None and (out.image == 1.0).all()
    # explicit centroids need no PSF either
    out = make_task(IdentityImageMapper, cellCentroidsX=[50.0], cellCentroidsY=[50.0]).run(exposure).exposure
    assert np.count_nonzero(~np.isnan(out.image)) == 100


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["cellSizeX", "cellSizeY", "gridStepX", "gridStepY", "borderSizeX", "borderSizeY"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_non_positive_sizes_fail_validation(field, value):
    config = ImageMapReduceConfig()
    with pytest.raises(FieldValidationError, match=field):     # checked on assignment ...
        setattr(config, field, value)
    config = ImageMapReduceConfig()
    config.mapper.retarget(IdentityImageMapper)
    config._storage[field] = value                              # ... and (bypassing that) by validate()
    with pytest.raises(FieldValidationError, match=field):
        config.validate()
    with pytest.raises(FieldValidationError, match=field):
        ImageMapReduceTask(config=config)


def test_bad_grid_inputs():
    exposure = make_exposure()
    with pytest.raises(ValueError, match="does not overlap"):
        make_task(IdentityImageMapper, cellCentroidsX=[50.0, 500.0], cellCentroidsY=[50.0, 50.0]).run(exposure)
    with pytest.raises(FieldValidationError):
        make_task(IdentityImageMapper, cellCentroidsX=[50.0, float("nan")], cellCentroidsY=[50.0, 50.0])
    with pytest.raises(ValueError, match="rounds to 0 pixels"):
        make_task(IdentityImageMapper, cellSizeX=0.05).run(exposure)
    odd = Exposure(np.zeros((40, 41), np.float32), psf=GaussianPsf(11, 11, 2.0))
    with pytest.raises(RuntimeError, match="forceEvenSized"):
        make_task(IdentityImageMapper, cellSizeX=20.0, cellSizeY=20.0).run(odd, forceEvenSized=True)
    with pytest.raises(TypeError, match="Exposure"):
        make_task(IdentityImageMapper).run(exposure.image)
    with pytest.raises(FieldValidationError):
        make_task(IdentityImageMapper, adjustGridOption="spaced")


def test_abstract_mapper_is_rejected():
    with pytest.raises(TypeError, match="abstract"):
        ImageMapReduceTask(config=ImageMapReduceConfig())


def test_bad_mapper_results():
    exposure = make_exposure()

    class Outside(ImageMapper):
        ConfigClass = ImageMapperConfig
        _DefaultName = "outside"

        def run(self, subExposure, expandedSubExposure, fullBBox, **kwargs):
            e = subExposure.clone()
            e.setXY0((e.getXY0()[0] + 100, e.getXY0()[1]))
            return Struct(subExposure=e)

    class NotAStruct(ImageMapper):
        ConfigClass = ImageMapperConfig
        _DefaultName = "notAStruct"

        def run(self, subExposure, expandedSubExposure, fullBBox, **kwargs):
            return subExposure

    class BadNative(IdentityImageMapper):
        def nativeMapper(self, exposure, **kwargs):
            return "not a CellMapper"

    with pytest.raises(ValueError, match=r"cell 0 \(inner box Box2I\(minimum=\(0, 0\), maximum=\(46, 46\)\)"):
        make_task(Outside).run(exposure)
    with pytest.raises(TypeError, match="reduceOperation='none'"):
        make_task(NotAStruct, reduceOperation="copy").run(exposure)
    with pytest.raises(TypeError, match="returnSubImages"):
        make_task(NotAStruct, reduceOperation="none", returnSubImages=True).run(exposure)
    assert len(make_task(NotAStruct, reduceOperation="none").run(exposure).result) == 9
    with pytest.raises(TypeError, match="CellMapper"):
        make_task(BadNative).run(exposure)
    # the reducer on its own checks boxes too
    outside = exposure[Box2I((0, 0), (9, 9))].clone()
    outside.setXY0((125, 0))
    with pytest.raises(ValueError, match="mapper result 1"):
        ImageReducer(config=ImageReducerConfig()).run(
            [Struct(subExposure=exposure[Box2I((0, 0), (9, 9))]), Struct(subExposure=outside)], exposure)
    # a result whose WCS differs from the exposure's
    shifted = exposure[Box2I((0, 0), (9, 9))].clone()
    w = shifted.getWcs()
    w.wcs.crval = [w.wcs.crval[0] + 1.0, w.wcs.crval[1]]
    with pytest.raises(ValueError, match="WCS"):
        ImageReducer(config=ImageReducerConfig()).run([Struct(subExposure=shifted)], exposure)
    # native buffers must match the inner boxes
    inner, expanded, _ = _core.generate_grid((0, 0, 127, 127), 10, 10, 10, 10, 5, 5, "spacing", False, 0.0)
    outs = [np.empty((3, 3), np.float32) for _ in range(len(inner))]
    masks = [np.empty((3, 3), np.int32) for _ in range(len(inner))]
    with pytest.raises(ValueError, match="cell 0"):
        _core.map_cells(_core.IdentityCellMapper(), exposure.image, exposure.mask, exposure.variance,
                        (0, 0, 127, 127), inner, expanded, outs, masks, outs)
    with pytest.raises(TypeError, match="dtype"):
        _core.map_and_stitch(_core.IdentityCellMapper(), exposure.image.astype(np.float16), exposure.mask,
                             exposure.variance, (0, 0, 127, 127), inner, expanded, exposure.image, exposure.mask,
                             exposure.variance, "average", 0)


def test_mask_planes_of_results_are_merged_or_rejected():
    exposure = make_exposure(1.0)

    class AddPlane(ImageMapper):
        ConfigClass = ImageMapperConfig
        _DefaultName = "addPlane"

        def run(self, subExposure, expandedSubExposure, fullBBox, **kwargs):
            out = subExposure.clone()
            bit = out.maskedImage.mask.addMaskPlane("MAPPER_SEEN")
            out.mask[...] |= 1 << bit
            return Struct(subExposure=out)

    new = make_task(AddPlane).run(exposure).exposure
    planes = new.maskedImage.mask.getMaskPlaneDict()
    assert planes["MAPPER_SEEN"] == 9 and planes["INVALID_MAPREDUCE"] == 10
    assert (new.mask == 1 << 9).all()
    assert "MAPPER_SEEN" not in exposure.maskedImage.mask.getMaskPlaneDict()

    class ConflictingPlanes(ImageMapper):
        ConfigClass = ImageMapperConfig
        _DefaultName = "conflictingPlanes"

        def run(self, subExposure, expandedSubExposure, fullBBox, **kwargs):
            from diffcal.image import Mask
            mask = Mask(subExposure.mask.copy(), planes={"BAD": 3, "SAT": 0})
            return Struct(subExposure=Exposure(subExposure.image.copy(), mask, subExposure.variance.copy(),
                                               xy0=subExposure.getXY0(), psf=subExposure.getPsf()))

    with pytest.raises(ValueError, match="mapper result 0: its mask planes conflict"):
        make_task(ConflictingPlanes).run(exposure)


def test_results_of_another_dtype_are_converted():
    exposure = make_exposure(1.5)
    results = [Struct(subExposure=Exposure(np.full((10, 10), 2.25, np.float64), xy0=(3, 4),
                                           psf=exposure.getPsf()))]
    out = ImageReducer(config=ImageReducerConfig()).run(results, exposure).exposure
    assert out.dtype == np.float32
    assert (out.image[4:14, 3:13] == 2.25).all()
    assert np.isnan(out.image[0, 0])


def test_background_prefault_maps_pages_without_changing_them():
    """The reducer's output planes are populated by a background thread (MADV_POPULATE_WRITE): the
    contents must never change, whatever the thread is doing when they are written or read."""
    a = np.empty(3 << 20, dtype=np.float32)  # 12 MiB: fresh, unmapped pages
    b = np.arange(1 << 20, dtype=np.int32)  # already written
    pf = _core.Prefault([a, b])
    a[::997] = 1.5  # concurrent writes are safe: populating does not write
    pf.join()
    pf.join()  # idempotent
    assert (a[::997] == 1.5).all()
    np.testing.assert_array_equal(b, np.arange(1 << 20, dtype=np.int32))
    if _core.Prefault.supported():
        assert 0 < pf.populated_bytes <= a.nbytes + b.nbytes
    else:
        assert pf.populated_bytes == 0
    with pytest.raises(TypeError, match="numpy arrays"):
        _core.Prefault([a, [1, 2, 3]])
    ro = np.zeros(10)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _core.Prefault([ro])
