"""Spatially varying A&L decorrelation (spec §2.9, tests §3.2): DecorrelateALKernelSpatialTask,
DecorrelateALKernelMapper (Python and native paths) and the map-reduce comparison the reference
skips (DM-21868)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffcal import _core
from diffcal.convolve import convolveMaskedImage
from diffcal.decorrelation import (
    DecorrelateALKernelMapper,
    DecorrelateALKernelMapReduceConfig,
    DecorrelateALKernelSpatialConfig,
    DecorrelateALKernelSpatialTask,
    DecorrelateALKernelTask,
)
from diffcal.geom import Box2I
from diffcal.image import Exposure
from diffcal.kernel import FixedKernel, LinearCombinationKernel
from diffcal.mapreduce import ImageMapReduceTask
from diffcal.psf import GaussianPsf

from test_decorrelation import checkDecorrelation, clipped, makeDiffim, makeFakeImages, matchingKernel

#: The reference's (svar, tvar) cases of testDiffimCorrection_spatialTask.
SPATIAL_CASES = [(0.04, 0.04), (0.04, 0.08), (0.08, 0.04)]

#: Stated tolerance of the spatial (many cells, constant kernel) vs non-spatial comparison, in
#: units of the corrected noise sigma: the correction kernel decays to ~1e-10 of its peak at the
#: 32-px border, so cells see the same filter and the same (zero-padded) image edges.
#: Measured: 4.5e-7 sigma (max |diff| 1.3e-7 for sigma 0.28).
SPATIAL_VS_GLOBAL_ATOL_SIGMA = 1e-5


@pytest.fixture(scope="module")
def pair():
    sci, tmpl, _ = makeFakeImages(0.04, 0.04)
    kernel = matchingKernel(sci, tmpl)
    return sci, tmpl, makeDiffim(sci, tmpl, kernel), kernel


def manyCellsConfig(cell=48, border=32, native=True):
    config = DecorrelateALKernelSpatialConfig()
    mr = config.decorrelateMapReduceConfig
    mr.scaleByFwhm = False
    mr.cellSizeX = mr.cellSizeY = cell
    mr.borderSizeX = mr.borderSizeY = border
    mr.useNativeMapper = native
    return config


# ---------------------------------------------------------------------------------------------
# reference test: testDiffimCorrection_spatialTask
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("svar,tvar", SPATIAL_CASES)
def test_spatial_task_reference(svar, tvar):
    sci, tmpl, _ = makeFakeImages(svar, tvar)
    kernel = matchingKernel(sci, tmpl)
    diffim = makeDiffim(sci, tmpl, kernel)
    expected = svar + tvar
    task = DecorrelateALKernelSpatialTask()
    flat = task.run(sci, tmpl, diffim, kernel, spatiallyVarying=False)
    spatial = task.run(sci, tmpl, diffim, kernel, spatiallyVarying=True)
    assert task.metadata["nCells"] == 1               # default grid: one cell on 256x256 (spec §1.5)
    assert spatial.exposure is spatial.correctedExposure
    pv1, _ = checkDecorrelation(expected, flat.correctedExposure)
    pv2, _ = checkDecorrelation(expected, spatial.correctedExposure)
    assert pv1 == pytest.approx(pv2, rel=0.03)
    # one cell covering the image: identical to the non-spatial result
    np.testing.assert_array_equal(spatial.correctedExposure.image, flat.correctedExposure.image)
    np.testing.assert_array_equal(spatial.correctedExposure.mask, diffim.mask)


def test_spatial_config_defaults():
    config = DecorrelateALKernelSpatialConfig()
    mr = config.decorrelateMapReduceConfig
    assert (mr.cellSizeX, mr.cellSizeY, mr.gridStepX, mr.gridStepY, mr.borderSizeX, mr.borderSizeY) == \
        (41, 41, 40, 40, 8, 8)
    assert mr.reducer.reduceOperation == "average"
    assert mr.scaleByFwhm and mr.adjustGridOption == "spacing"
    assert mr.mapper.target is DecorrelateALKernelMapper
    generic = DecorrelateALKernelMapReduceConfig()
    assert generic.cellSizeX == 10.0 and generic.mapper.target is DecorrelateALKernelMapper
    assert "INTRP" in config.ignoreMaskPlanes
    assert issubclass(DecorrelateALKernelMapper, DecorrelateALKernelTask)


# ---------------------------------------------------------------------------------------------
# the map-reduce comparison the reference skips (DM-21868)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_many_cells_equal_non_spatial(pair, native):
    sci, tmpl, diffim, kernel = pair
    flat = DecorrelateALKernelTask().run(sci, tmpl, diffim, kernel).correctedExposure
    task = DecorrelateALKernelSpatialTask(config=manyCellsConfig(native=native))
    res = task.run(sci, tmpl, diffim, kernel).correctedExposure
    assert task.metadata["nCells"] == 36
    assert task.metadata["native"] is native
    sigma = math.sqrt(0.08)
    diff = np.abs(res.image - flat.image)
    assert diff.max() <= SPATIAL_VS_GLOBAL_ATOL_SIGMA * sigma
    np.testing.assert_allclose(res.variance, flat.variance, rtol=1e-12)
    assert not np.isnan(res.image).any()


def test_reference_skipped_mapreduce_test(pair):
    """testDiffimCorrection_mapReduced: DecorrelateALKernelMapReduceConfig with border 3 (FWHM units),
    average, forceEvenSized, compared with the non-map-reduce result. Cells of 10 x FWHM with a 3 x
    FWHM (23 px) border: the correction kernel is ~1e-7 of its peak there, so the interior agrees
    to 1e-4 sigma."""
    sci, tmpl, diffim, kernel = pair
    config = DecorrelateALKernelMapReduceConfig()
    config.borderSizeX = config.borderSizeY = 3
    config.reducer.reduceOperation = "average"
    task = ImageMapReduceTask(config=config)
    res = task.run(diffim, template=tmpl, science=sci, psfMatchingKernel=kernel, forceEvenSized=True).exposure
    assert len(task.boxes0) > 1
    flat = DecorrelateALKernelTask().run(sci, tmpl, diffim, kernel).correctedExposure
    assert np.abs(res.image - flat.image).max() <= 1e-4 * math.sqrt(0.08)
    np.testing.assert_allclose(res.variance, flat.variance, rtol=1e-12)


def test_native_equals_python_path(pair):
    sci, tmpl, diffim, kernel = pair
    a = DecorrelateALKernelSpatialTask(config=manyCellsConfig(cell=40, border=20, native=True)).run(
        sci, tmpl, diffim, kernel).correctedExposure
    b = DecorrelateALKernelSpatialTask(config=manyCellsConfig(cell=40, border=20, native=False)).run(
        sci, tmpl, diffim, kernel).correctedExposure
    np.testing.assert_array_equal(a.image, b.image)       # bit-identical for a FixedKernel
    np.testing.assert_array_equal(a.variance, b.variance)
    np.testing.assert_array_equal(a.mask, b.mask)


@pytest.mark.parametrize("native", [True, False])
def test_output_mask_is_a_copy_of_the_input_mask(pair, native):
    """The reference puts the diffim's mask over the stitched one: NaN pixels and uncovered cells are
    not flagged, the plane dictionary is the diffim's, and the input is not shared or modified."""
    sci, tmpl, diffim, kernel = pair
    diffim = diffim.clone()
    diffim.image[5:9, 30:34] = np.nan
    diffim.maskedImage.mask.array[40:50, 60:70] |= diffim.maskedImage.mask.getPlaneBitMask("SAT")
    before = diffim.mask.copy()
    out = DecorrelateALKernelSpatialTask(config=manyCellsConfig(cell=40, border=20, native=native)).run(
        sci, tmpl, diffim, kernel).correctedExposure
    np.testing.assert_array_equal(out.mask, before)
    np.testing.assert_array_equal(diffim.mask, before)
    assert not np.shares_memory(out.mask, diffim.mask)
    planes, inputPlanes = out.maskedImage.mask.getMaskPlaneDict(), diffim.maskedImage.mask.getMaskPlaneDict()
    assert {k: planes[k] for k in inputPlanes} == inputPlanes
    if native:  # the Python path's clone also carries the reducer's INVALID_MAPREDUCE plane
        assert planes == inputPlanes
    assert np.isnan(out.image[5:9, 30:34]).all()


def test_thread_count_independence(pair):
    sci, tmpl, diffim, kernel = pair
    before = _core.get_num_threads()
    out = []
    try:
        for n in (1, 2, 3):
            _core.set_num_threads(n)
            task = DecorrelateALKernelSpatialTask(config=manyCellsConfig(cell=40, border=20))
            out.append(task.run(sci, tmpl, diffim, kernel).correctedExposure)
    finally:
        _core.set_num_threads(before)
    for o in out[1:]:
        np.testing.assert_array_equal(o.image, out[0].image)
        np.testing.assert_array_equal(o.variance, out[0].variance)


@pytest.mark.parametrize("spatial", [True, False])
def test_input_not_modified(pair, spatial):
    sci, tmpl, diffim, kernel = pair
    planes = [e.image.copy() for e in (sci, tmpl, diffim)] + [e.variance.copy() for e in (sci, tmpl, diffim)] + \
        [diffim.mask.copy()]
    DecorrelateALKernelSpatialTask(config=manyCellsConfig()).run(sci, tmpl, diffim, kernel, spatiallyVarying=spatial)
    after = [e.image for e in (sci, tmpl, diffim)] + [e.variance for e in (sci, tmpl, diffim)] + [diffim.mask]
    for a, b in zip(planes, after):
        np.testing.assert_array_equal(a, b)


def test_float32_and_xy0(pair):
    sci, tmpl, diffim, kernel = pair

    def f32(e, xy0=(100, -7)):
        return Exposure(e.image.astype(np.float32), e.mask.copy(), e.variance.astype(np.float32), xy0=xy0,
                        psf=e.getPsf())

    s, t, d = f32(sci), f32(tmpl), f32(diffim)
    a = DecorrelateALKernelSpatialTask(config=manyCellsConfig(native=True)).run(s, t, d, kernel).correctedExposure
    b = DecorrelateALKernelSpatialTask(config=manyCellsConfig(native=False)).run(s, t, d, kernel).correctedExposure
    assert a.image.dtype == np.float32 and a.getXY0() == (100, -7)
    np.testing.assert_array_equal(a.image, b.image)
    ref = DecorrelateALKernelSpatialTask(config=manyCellsConfig()).run(sci, tmpl, diffim, kernel).correctedExposure
    np.testing.assert_allclose(a.image, ref.image, atol=1e-5)


def test_nan_cell_and_variance_local():
    """Local variances: a template twice as noisy on the right half changes the right cells' tvar."""
    rng = np.random.default_rng(3)
    n = 192
    tv = np.full((n, n), 0.04)
    tv[:, n // 2:] = 0.16
    sci = Exposure(rng.normal(0, 0.2, (n, n)), variance=np.full((n, n), 0.04), psf=GaussianPsf(15, 15, 1.5))
    tmpl = Exposure(rng.normal(0, 1.0, (n, n)) * np.sqrt(tv), variance=tv, psf=GaussianPsf(15, 15, 1.0))
    kernel = FixedKernel(GaussianPsf(15, 15, 1.2).computeKernelImage())
    diffim = makeDiffim(sci, tmpl, kernel)
    diffim.setPsf(GaussianPsf(15, 15, 1.5))
    task = DecorrelateALKernelSpatialTask(config=manyCellsConfig(cell=48, border=24))
    res = task.run(sci, tmpl, diffim, kernel).correctedExposure
    assert task.metadata["tvarMin"] == pytest.approx(0.04) and task.metadata["tvarMax"] == pytest.approx(0.16)
    assert np.median(res.variance[:, :60]) == pytest.approx(0.08, rel=1e-6)
    assert np.median(res.variance[:, -60:]) == pytest.approx(0.20, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# a spatially varying LinearCombinationKernel
# ---------------------------------------------------------------------------------------------

def _gauss(size, sigma):
    x = np.arange(size) - (size - 1) // 2
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma * sigma))
    return g / g.sum()


def _lag1(img):
    img = img - img.mean()
    v = np.mean(img * img)
    return 0.5 * (np.mean(img[:, 1:] * img[:, :-1]) + np.mean(img[1:, :] * img[:-1, :])) / v


@pytest.fixture(scope="module")
def varying():
    """Noise-only pair (noisy template: vt = 4 v), matching kernel width growing from sigma 0.8
    (left) to 2.0 (right)."""
    n = 384
    rng = np.random.default_rng(11)
    v, vt = 1.0, 4.0
    basis = [_gauss(17, 0.8), _gauss(17, 2.0)]
    bbox = Box2I((0, 0), (n - 1, n - 1))
    # c0 = 1 - x/(n-1), c1 = x/(n-1): terms (1, x, y)
    coeffs = np.array([[1.0, -1.0 / (n - 1), 0.0], [0.0, 1.0 / (n - 1), 0.0]])
    kernel = LinearCombinationKernel(basis, coeffs, 1, bbox)
    S = rng.normal(0, math.sqrt(v), (n, n))
    T = rng.normal(0, math.sqrt(vt), (n, n))
    conv = [convolveMaskedImage(Exposure(T, variance=np.full((n, n), vt)).maskedImage, FixedKernel(b),
                                doNormalize=False, doCopyEdge=True).image for b in basis]
    x = np.arange(n, dtype=float)[None, :]
    matched = (1 - x / (n - 1)) * conv[0] + x / (n - 1) * conv[1]
    psf = GaussianPsf(15, 15, 1.3)
    sci = Exposure(S, variance=np.full((n, n), v), psf=psf)
    tmpl = Exposure(T, variance=np.full((n, n), vt), psf=GaussianPsf(15, 15, 1.0))
    diffim = Exposure(S - matched, variance=np.full((n, n), v + vt), psf=psf)
    return sci, tmpl, diffim, kernel


def test_spatially_varying_kernel_whitens_locally(varying):
    sci, tmpl, diffim, kernel = varying
    config = manyCellsConfig(cell=64, border=24)
    task = DecorrelateALKernelSpatialTask(config=config)
    res = task.run(sci, tmpl, diffim, kernel).correctedExposure
    assert task.metadata["nCells"] > 16 and task.metadata["native"]
    flat = DecorrelateALKernelSpatialTask().run(sci, tmpl, diffim, kernel, spatiallyVarying=False).correctedExposure
    e = 24
    regions = {"left": np.s_[e:-e, e:96], "right": np.s_[e:-e, -96:-e]}
    for name, sl in regions.items():
        raw = _lag1(diffim.image[sl])
        spatial = _lag1(res.image[sl])
        assert raw > 0.05, name                         # measured 0.21 (left), 0.08 (right)
        assert abs(spatial) < 0.02, (name, spatial)     # measured 0.008, 0.00002 (statistical error ~0.007)
        # local pixel variance matches the variance plane (white noise of variance v + vt kSum^2)
        pix = clipped(res.image[sl], None).variance
        plane = float(np.median(res.variance[sl]))
        assert pix == pytest.approx(plane, rel=0.05), name
        assert plane == pytest.approx(5.0, rel=1e-6)
    # the single central kernel over-/under-corrects at the ends: its residual correlation is larger
    worst_flat = max(abs(_lag1(flat.image[sl])) for sl in regions.values())
    worst_spatial = max(abs(_lag1(res.image[sl])) for sl in regions.values())
    assert worst_flat > 2 * worst_spatial               # measured 0.064 vs 0.008


def test_spatially_varying_native_vs_python(varying):
    sci, tmpl, diffim, kernel = varying
    a = DecorrelateALKernelSpatialTask(config=manyCellsConfig(cell=96, border=24, native=True)).run(
        sci, tmpl, diffim, kernel).correctedExposure
    b = DecorrelateALKernelSpatialTask(config=manyCellsConfig(cell=96, border=24, native=False)).run(
        sci, tmpl, diffim, kernel).correctedExposure
    # the C++ kernel evaluation sums in another order than numpy: stated tolerance 1e-10 sigma
    np.testing.assert_allclose(a.image, b.image, rtol=0, atol=1e-10 * math.sqrt(5.0))
    np.testing.assert_allclose(a.variance, b.variance, rtol=1e-12)


@pytest.mark.parametrize("function", ["polynomial", "chebyshev1"])
def test_native_kernel_evaluation_matches_python(function):
    rng = np.random.default_rng(5)
    basis = rng.normal(size=(3, 9, 7))
    coeffs = rng.normal(size=(3, 10))
    bbox = Box2I((-20, 10), (300, 250))
    k = LinearCombinationKernel(basis, coeffs, 3, bbox, spatial_function=function)
    for x, y in [(0.0, 0.0), (17.5, 103.0), (299.0, 11.5), (-20.0, 250.0)]:
        native = _core.evaluate_spatial_kernel(basis, coeffs, 3, function, (-20, 10, 300, 250), x, y)
        np.testing.assert_allclose(native, k.computeImage(x, y), rtol=1e-12, atol=1e-12 * np.abs(basis).max() * 100)


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spatial", [True, False])
def test_mismatched_bboxes(pair, spatial):
    sci, tmpl, diffim, kernel = pair
    cut = sci[Box2I((0, 0), (199, 255))]
    with pytest.raises(ValueError, match="scienceExposure bounding box"):
        DecorrelateALKernelSpatialTask().run(cut, tmpl, diffim, kernel, spatiallyVarying=spatial)
    shifted = tmpl.clone()
    shifted.setXY0((1, 0))
    with pytest.raises(ValueError, match="templateExposure bounding box"):
        DecorrelateALKernelSpatialTask().run(sci, shifted, diffim, kernel, spatiallyVarying=spatial)


def test_missing_psf_for_fwhm_scaling(pair):
    sci, tmpl, diffim, kernel = pair
    nopsf = diffim.clone()
    nopsf.setPsf(None)
    with pytest.raises(ValueError, match="PSF"):
        DecorrelateALKernelSpatialTask().run(sci, tmpl, nopsf, kernel)
    # pixel-sized grid: the diffim PSF is not needed (the science PSF sizes the FFT grid)
    res = DecorrelateALKernelSpatialTask(config=manyCellsConfig()).run(sci, tmpl, nopsf, kernel)
    assert res.correctedExposure.getPsf() is None
    nosci = sci.clone()
    nosci.setPsf(None)
    with pytest.raises(ValueError, match="science exposure has no PSF"):
        DecorrelateALKernelSpatialTask(config=manyCellsConfig()).run(nosci, tmpl, diffim, kernel)


@pytest.mark.parametrize("templateMatched,preConvMode", [(False, True), (True, False), (False, False)])
def test_preconv_kernel_requires_modes(pair, templateMatched, preConvMode):
    sci, tmpl, diffim, kernel = pair
    for spatial in (True, False):
        with pytest.raises(ValueError, match="preConvKernel"):
            DecorrelateALKernelSpatialTask().run(sci, tmpl, diffim, kernel, spatiallyVarying=spatial,
                                                 preConvKernel=kernel, templateMatched=templateMatched,
                                                 preConvMode=preConvMode)


def test_preconv_mode_native_equals_python(pair):
    sci, tmpl, diffim, kernel = pair
    pre = FixedKernel(sci.getPsf().computeKernelImage())
    out = []
    for native in (True, False):
        task = DecorrelateALKernelSpatialTask(config=manyCellsConfig(cell=64, border=32, native=native))
        out.append(task.run(sci, tmpl, diffim, kernel, preConvKernel=pre, preConvMode=True).correctedExposure)
    np.testing.assert_array_equal(out[0].image, out[1].image)
    np.testing.assert_array_equal(out[0].variance, out[1].variance)
    # (no comparison with the whole-image score correction here: its filter 1/(v + vt |K/P|^2) is a
    # sharp low-pass whose real-space kernel rings far beyond a 32-px border)


def test_mapper_needs_a_kernel(pair):
    sci, tmpl, diffim, _ = pair
    mapper = DecorrelateALKernelMapper()
    with pytest.raises(RuntimeError, match="psfMatchingKernel"):
        mapper.run(diffim, diffim, diffim.getBBox(), template=tmpl, science=sci)


def test_wrong_types(pair):
    sci, tmpl, diffim, kernel = pair
    with pytest.raises(TypeError, match="psfMatchingKernel"):
        DecorrelateALKernelSpatialTask().run(sci, tmpl, diffim, kernel.getArray())
    with pytest.raises(TypeError, match="scienceExposure"):
        DecorrelateALKernelSpatialTask().run(sci.image, tmpl, diffim, kernel)


def test_masked_cell_is_an_error_naming_the_cell(pair):
    sci, tmpl, diffim, kernel = pair
    bad = sci.clone()
    bad.variance[:, :] = np.nan
    bad.image[:, :] = 1.0
    with pytest.raises(ValueError, match=r"cell \d+ \(inner box .*svar"):
        DecorrelateALKernelSpatialTask(config=manyCellsConfig()).run(bad, tmpl, diffim, kernel)
