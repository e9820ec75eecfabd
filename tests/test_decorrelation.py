"""Non-spatial A&L kernel decorrelation (spec §2, tests §3.2), the FFT layer and the direct
convolution, against the numpy reference implementation and the reference's numbers."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from diffcal import _core
from diffcal.convolve import convolveMaskedImage
from diffcal.geom import Box2I
from diffcal.decorrelation import DecorrelateALKernelConfig, DecorrelateALKernelTask
from diffcal.image import Exposure, MaskedImage
from diffcal.kernel import FixedKernel
from diffcal.psf import GaussianPsf, ImagePsf
from diffcal.reference import decorrelate_numpy
from diffcal.reference.decorrelation import computeCommonShape, padCenterOriginArray
from diffcal.statistics import clippedStatistics

AND_MASK = 0x17F  # INTRP, EDGE, DETECTED, SAT, CR, BAD, NO_DATA, DETECTED_NEGATIVE (default planes)


# ---------------------------------------------------------------------------------------------
# the reference test recipe (spec §3.2)
# ---------------------------------------------------------------------------------------------

def _gauss2d(x, y, xc, yc, sigma):
    g = np.exp(-((x - xc) ** 2 + (y - yc) ** 2) / (2.0 * sigma * sigma))
    return g / g.sum()


def makeFakeImages(svar=0.04, tvar=0.04, n_sources=50, seed=66, psf1=3.3, psf2=2.2):
    """The reference's ``makeFakeImages`` (legacy numpy stream, via a RandomState object).

    Returns science and template ExposureD (constant variance planes, 25x25 image PSFs) and the
    RandomState, positioned after the image draws (``estimatePixelCorrelation`` continues it).
    """
    rng = np.random.RandomState(seed)
    xim = yim = np.arange(-128, 128)
    x0im, y0im = np.meshgrid(yim, xim)
    im1 = rng.normal(0.0, np.sqrt(svar), (256, 256))
    im2 = rng.normal(0.0, np.sqrt(tvar), (256, 256))
    if n_sources > 0:
        fluxes = rng.uniform(50, 30000, n_sources)
        xpos = rng.uniform(xim.min() + 16, xim.max() - 5, n_sources)
        ypos = rng.uniform(yim.min() + 16, yim.max() - 5, n_sources)
        ivar = np.argmin(np.sqrt(xpos ** 2 + ypos ** 2))
        for i in range(n_sources):
            change = fluxes[i] / 50.0 if i == ivar else 0.0
            im1 += (fluxes[i] + change) * _gauss2d(x0im, y0im, xpos[i], ypos[i], psf1)
            im2 += fluxes[i] * _gauss2d(x0im, y0im, xpos[i], ypos[i], psf2)
    p1 = _gauss2d(x0im, y0im, 0.0, 0.0, psf1)[116:141, 116:141]
    p2 = _gauss2d(x0im, y0im, 0.0, 0.0, psf2)[116:141, 116:141]
    sci = Exposure(im1, variance=np.full_like(im1, svar), psf=ImagePsf(p1))
    tmpl = Exposure(im2, variance=np.full_like(im2, tvar), psf=ImagePsf(p2))
    return sci, tmpl, rng


def matchingKernel(sci, tmpl):
    """32x32 unit-sum Gaussian of sigma sqrt(s1^2 - s2^2), coordinates -16..15 centred at -1."""
    s1 = sci.getPsf().computeShape().getDeterminantRadius()
    s2 = tmpl.getPsf().computeShape().getDeterminantRadius()
    sig = math.sqrt(s1 * s1 - s2 * s2)
    assert sig == pytest.approx(math.sqrt(3.3 ** 2 - 2.2 ** 2), rel=2e-5)
    x = np.arange(-16, 16)
    X, Y = np.meshgrid(x, x)
    k = np.exp(-((X + 1.0) ** 2 + (Y + 1.0) ** 2) / (2.0 * sig * sig))
    return FixedKernel(k / k.sum())


def makeDiffim(sci, tmpl, kernel):
    matched = convolveMaskedImage(tmpl.maskedImage, kernel, doNormalize=False, doCopyEdge=True)
    return Exposure.fromMaskedImage(sci.maskedImage - matched, psf=sci.getPsf())


def clipped(arr, mask):
    return clippedStatistics(arr, mask, andMask=AND_MASK, nSigma=3.0, nIter=3)


def checkDecorrelation(expected_var, corrected):
    """The reference's ``_testDecorrelation`` tolerances."""
    pix = clipped(corrected.image, corrected.mask).variance
    plane = clipped(corrected.variance, corrected.mask).mean
    assert pix == pytest.approx(expected_var, rel=0.05)
    assert plane == pytest.approx(expected_var, rel=0.02)
    assert pix == pytest.approx(plane, rel=0.05)
    return pix, plane


def estimatePixelCorrelation(B, rng, nDist=40, convEdge=17):
    """Spec §3.2: mean products of pixel pairs at distance r = 0..nDist-1 of the RMS-normalised image."""
    inner = B[convEdge:-convEdge, convEdge:-convEdge]
    B = B / np.sqrt(np.mean(inner ** 2))
    lo, hi = convEdge + nDist, B.shape[0] - convEdge - nDist
    out = np.empty(nDist)
    for r in range(nDist):
        x1 = rng.randint(lo, hi, 10000)
        y1 = rng.randint(lo, hi, 10000)
        phi = rng.uniform(0.0, 2.0 * np.pi, 10000)
        x2 = x1 + np.rint(r * np.cos(phi)).astype(int)
        y2 = y1 + np.rint(r * np.sin(phi)).astype(int)
        out[r] = np.mean(B[y1, x1] * B[y2, x2])
    return out


# ---------------------------------------------------------------------------------------------
# reference test cases and numbers
# ---------------------------------------------------------------------------------------------

# (svar, tvar) -> (uncorrected clipped mean variance, uncorrected clipped pixel variance,
#                  corrected clipped pixel variance, w1, w2): the spec's reference values
REFERENCE = {
    (0.04, 0.04): (0.04053, 0.0393, 0.0794, 1.9818, 0.01823),
    (0.08, 0.04): (0.08053, 0.0782, 0.1198, 1.4920, 0.01600),
    (0.04, 0.08): (0.04105, 0.0398, 0.1191, 2.9566, 0.02168),
}


@pytest.mark.parametrize("complete", [False, True], ids=["estimate", "complete"])
@pytest.mark.parametrize("svar,tvar", list(REFERENCE))
def test_diffim_correction_reference_numbers(svar, tvar, complete):
    sci, tmpl, _ = makeFakeImages(svar, tvar)
    kernel = matchingKernel(sci, tmpl)
    diffim = makeDiffim(sci, tmpl, kernel)
    expected = svar + tvar
    mv_ref, pv_ref, cpv_ref, w1_ref, w2_ref = REFERENCE[(svar, tvar)]
    # uncorrected checks of the reference test
    mv = clipped(diffim.variance, diffim.mask).mean
    pv = clipped(diffim.image, diffim.mask).variance
    assert mv < expected and pv < expected
    assert mv == pytest.approx(mv_ref, abs=1e-5)
    assert pv == pytest.approx(pv_ref, abs=1e-4)

    config = DecorrelateALKernelConfig()
    config.completeVarPlanePropagation = complete
    task = DecorrelateALKernelTask(config=config)
    corrected = task.run(sci, tmpl, diffim, kernel).correctedExposure
    pix, plane = checkDecorrelation(expected, corrected)
    assert task.freqSpaceShape == (288, 288)
    assert (task.metadata["fftRows"], task.metadata["fftCols"]) == (288, 288)
    assert task.metadata["kSum"] == pytest.approx(1.0, abs=1e-12)
    assert task.metadata["w1"] == pytest.approx(w1_ref, abs=1e-4)
    assert task.metadata["w2"] == pytest.approx(w2_ref, abs=1e-5)
    assert task.metadata["maxCorrection"] == pytest.approx(math.sqrt(expected / svar), rel=1e-3)
    assert pix == pytest.approx(cpv_ref, abs=1e-4)
    if complete:
        # full propagation: exact inside, lower by up to ~1.5 % at the zero-padded border/corners
        interior = corrected.variance[40:-40, 40:-40]
        assert np.allclose(interior, expected, rtol=1e-9)
        assert corrected.variance.min() < expected and corrected.variance.min() > 0.97 * expected
        assert plane == pytest.approx(expected, rel=1e-6)
    else:
        np.testing.assert_allclose(corrected.variance, expected, rtol=1e-12)
        assert plane == pytest.approx(expected, rel=1e-12)


def test_noise_diffim_correction_whitens():
    """testNoiseDiffimCorrection: noisy template (tvar = 100 svar), no sources."""
    sci, tmpl, rng = makeFakeImages(svar=1.0, tvar=100.0, n_sources=0, seed=22)
    kernel = matchingKernel(sci, tmpl)
    diffim = makeDiffim(sci, tmpl, kernel)
    corrected = DecorrelateALKernelTask().run(sci, tmpl, diffim.clone(), kernel).correctedExposure
    rho_sci = estimatePixelCorrelation(sci.image, rng)
    rho_raw = estimatePixelCorrelation(diffim.image, rng)
    rho_cor = estimatePixelCorrelation(corrected.image, rng)
    for rho in (rho_sci, rho_raw, rho_cor):
        assert rho[0] == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(rho_sci[1:], 0.0, atol=0.1)
    assert np.all(rho_raw[1:4] > 0.2)
    np.testing.assert_allclose(rho_cor[1:], 0.0, atol=0.1)
    # the spec's reference emulation: corrected |rho| <= 0.02, raw lag 1 ~ 0.52
    assert np.max(np.abs(rho_cor[1:])) < 0.03
    assert rho_raw[1] == pytest.approx(0.52, abs=0.05)


# ---------------------------------------------------------------------------------------------
# exact mode == numpy reference (acceptance: 1e-6 relative)
# ---------------------------------------------------------------------------------------------

def _rel_diff(got, ref):
    finite = np.isfinite(ref)
    assert np.array_equal(finite, np.isfinite(got))
    scale = np.max(np.abs(ref[finite]))
    return float(np.max(np.abs(got[finite] - ref[finite])) / scale)


@pytest.fixture(scope="module")
def pair():
    sci, tmpl, _ = makeFakeImages(0.04, 0.08)
    kernel = matchingKernel(sci, tmpl)
    return sci, tmpl, kernel, makeDiffim(sci, tmpl, kernel)


@pytest.mark.parametrize("complete", [False, True], ids=["estimate", "complete"])
@pytest.mark.parametrize("mode", ["diffim", "score", "scoreExplicitP", "convolveScience"])
def test_exact_mode_matches_numpy_reference(pair, mode, complete):
    sci, tmpl, kernel, diffim = pair
    config = DecorrelateALKernelConfig()
    config.completeVarPlanePropagation = complete
    task = DecorrelateALKernelTask(config=config)
    kappa = kernel.computeImage(128.0, 128.0)
    svar, tvar = 0.04, 0.08
    kwargs = dict(svar=svar, tvar=tvar)
    preConv = None
    v, vt, V, Vt, psfShape = svar, tvar, sci.variance, tmpl.variance, (25, 25)
    templateMatched = True
    if mode == "score":
        kwargs["preConvMode"] = True
        preConv = sci.getPsf().computeKernelImage()
    elif mode == "scoreExplicitP":
        P = GaussianPsf(15, 15, 2.0).computeKernelImage() * 3.0  # normalised by the task
        kwargs.update(preConvMode=True, preConvKernel=FixedKernel(P))
        preConv = P / P.sum()
    elif mode == "convolveScience":
        kwargs["templateMatched"] = templateMatched = False
        kappa = kappa * 1.1  # unnormalised: exercises the kSum^2 scaling
        kernel = FixedKernel(kappa)
        v, vt, V, Vt = tvar, svar, tmpl.variance, sci.variance
    out = task.run(sci, tmpl, diffim, kernel, **kwargs).correctedExposure
    ref_img, ref_var, info = decorrelate_numpy(diffim.image, V, Vt, kappa, v, vt, preConv=preConv,
                                               psfShape=psfShape, templateMatched=templateMatched,
                                               completeVarPlanePropagation=complete)
    assert task.freqSpaceShape == info["fftShape"]
    assert task.metadata["w1"] == pytest.approx(info["w1"], rel=1e-12)
    assert task.metadata["w2"] == pytest.approx(info["w2"], rel=1e-12)
    assert _rel_diff(out.image, ref_img) < 1e-6
    assert _rel_diff(out.variance, ref_var) < 1e-6
    # in practice the agreement is at the rounding level (the score filter divides by |Phat|^2,
    # which amplifies rounding at high frequency)
    assert _rel_diff(out.image, ref_img) < (1e-9 if mode.startswith("score") else 1e-12)


# stated tolerance of fftShape="fast" relative to "exact", in units of the corrected noise sigma:
# (border band of ~kernel size, interior); measured 1.3e-5 / 4e-13 and 7e-4 / 3.6e-9
FAST_TOLERANCE = {(0.04, 0.08): (3e-5, 1e-11), (1.0, 100.0): (2e-3, 1e-8)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("svar,tvar", list(FAST_TOLERANCE))
def test_fast_mode_within_stated_tolerance(svar, tvar, dtype):
    sci, tmpl, _ = makeFakeImages(svar, tvar)
    kernel = matchingKernel(sci, tmpl)
    diffim = makeDiffim(sci, tmpl, kernel)
    bbox = Box2I((0, 0), (242, 249))  # 250 x 243: exact grid (282, 274), fast grid (288, 288)

    def cut(e):
        v = e[bbox]
        return Exposure(v.image.astype(dtype), v.maskedImage.mask, v.variance.astype(dtype), psf=e.getPsf())

    sci, tmpl, diffim = cut(sci), cut(tmpl), cut(diffim)
    exact_task = DecorrelateALKernelTask()
    exact = exact_task.run(sci, tmpl, diffim, kernel).correctedExposure
    config = DecorrelateALKernelConfig()
    config.fftShape = "fast"
    task = DecorrelateALKernelTask(config=config)
    fast = task.run(sci, tmpl, diffim, kernel).correctedExposure
    assert exact_task.freqSpaceShape == (282, 274)
    assert task.freqSpaceShape == (288, 288)  # 280 = 2^3 5 7 costs more than 288 = 2^5 3^2
    sigma = math.sqrt(svar + tvar)
    border_tol, interior_tol = FAST_TOLERANCE[(svar, tvar)]
    diff = np.abs(fast.image.astype(np.float64) - exact.image)
    rounding = 4e-7 * np.abs(exact.image).max() if dtype == np.float32 else 0.0
    assert diff.max() < border_tol * sigma + rounding
    assert diff[40:-40, 40:-40].max() < interior_tol * sigma + rounding
    np.testing.assert_allclose(fast.variance, exact.variance, rtol=1e-6)


def test_fast_mode_uses_a_smooth_grid():
    rng = np.random.default_rng(5)
    shape = (203, 301)
    img = rng.normal(size=shape)
    var = np.ones(shape)
    k = GaussianPsf(21, 21, 1.5).computeKernelImage()
    outs = {}
    for fast in (False, True):
        o_img, o_var = np.empty(shape), np.empty(shape)
        info = _core.decorrelate_image(img, var, var, k, None, 1.0, 1.0, o_img, o_var, fast=fast)
        outs[fast] = (info["fft_shape"], o_img)
    assert outs[False][0] == (224, 322)  # 203 + 21 - 1 -> 224; 301 + 21 - 1 = 321 -> 322
    assert outs[True][0] == (224, 324)
    assert np.max(np.abs(outs[True][1] - outs[False][1])) < 1e-6


# ---------------------------------------------------------------------------------------------
# whiteness, identities, NaN/Inf, in-place
# ---------------------------------------------------------------------------------------------

def _lag_correlations(img, lags=((0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0), (2, 2), (0, 3), (3, 0))):
    a = img - img.mean()
    var = np.mean(a * a)
    out = []
    h, w = a.shape
    for dy, dx in lags:
        x0, x1 = max(0, -dx), w - max(0, dx)
        p = a[dy:, x0:x1] * a[:h - dy, x0 + dx:x1 + dx]
        out.append(np.mean(p) / var)
    return np.array(out), var


def _noise_pair(shape, kernel_img, v, vt, templateMatched, seed):
    rng = np.random.default_rng(seed)
    S = rng.normal(0.0, math.sqrt(v if templateMatched else vt), shape)
    T = rng.normal(0.0, math.sqrt(vt if templateMatched else v), shape)
    sci = Exposure(S, variance=np.full(shape, v if templateMatched else vt), psf=GaussianPsf(15, 15, 2.0))
    tmpl = Exposure(T, variance=np.full(shape, vt if templateMatched else v), psf=GaussianPsf(15, 15, 1.5))
    kernel = FixedKernel(kernel_img)
    kSum = kernel_img.sum()
    if templateMatched:
        matched = convolveMaskedImage(tmpl.maskedImage, kernel)
        diff = sci.maskedImage - matched
    else:
        matched = convolveMaskedImage(sci.maskedImage, kernel)
        diff = matched - tmpl.maskedImage
        diff = MaskedImage(diff.image / kSum, diff.mask, diff.variance / kSum ** 2)
    return sci, tmpl, Exposure.fromMaskedImage(diff, psf=sci.getPsf()), kernel


@pytest.mark.parametrize("shape,ksize,kscale,templateMatched", [
    ((300, 420), 21, 1.0, True),    # non-square, odd kernel
    ((420, 300), 22, 1.0, True),    # even kernel
    ((320, 360), 19, 1.7, True),    # unnormalised kernel, kSum = 1.7
    ((300, 380), 21, 1.0, False),   # convolve-science mode (exactly white for kSum = 1)
])
def test_corrected_noise_is_white(shape, ksize, kscale, templateMatched):
    v, vt = 1.0, 60.0  # a noisy template, so that the raw difference is strongly correlated
    kimg = GaussianPsf(ksize, ksize, 2.2).computeKernelImage() * kscale
    sci, tmpl, diffim, kernel = _noise_pair(shape, kimg, v, vt, templateMatched, seed=ksize)
    edge = ksize
    raw_rho, _ = _lag_correlations(diffim.image[edge:-edge, edge:-edge])
    assert raw_rho[0] > 0.2 and raw_rho[1] > 0.2  # the raw difference is strongly correlated
    task = DecorrelateALKernelTask()
    out = task.run(sci, tmpl, diffim, kernel, templateMatched=templateMatched).correctedExposure
    rho, pixvar = _lag_correlations(out.image[edge:-edge, edge:-edge])
    assert np.max(np.abs(rho)) < 0.015, rho
    kSum = kimg.sum()
    expected = (v + vt * kSum ** 2) if templateMatched else (v + vt * kSum ** 2) / kSum ** 2
    assert task.metadata["kSum"] == pytest.approx(kSum, rel=1e-12)
    np.testing.assert_allclose(out.variance, expected, rtol=1e-10)
    assert pixvar == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("v,vt,kscale,shape", [(1.0, 1.0, 1.0, (64, 64)), (0.3, 7.0, 1.3, (50, 86)),
                                               (2.0, 0.5, 0.6, (41, 33)), (1.0, 0.0, 1.0, (40, 40))])
def test_variance_weight_identity(v, vt, kscale, shape):
    """For the diffim correction v*w1 + vt*w2 = v + vt*kSum^2 exactly (Parseval)."""
    k = GaussianPsf(15, 17, 2.0).computeKernelImage() * kscale
    f = _core.correction_filter(k, None, v, vt, shape)
    assert v * f["w1"] + vt * f["w2"] == pytest.approx(v + vt * f["k_sum"] ** 2, rel=1e-12)
    assert f["corr"].shape == (shape[0], shape[1] // 2 + 1)
    assert f["corr"][0, 0] == pytest.approx(1.0, rel=1e-12)  # flux preserving
    if vt == 0.0:
        np.testing.assert_allclose(f["corr"], 1.0, rtol=1e-15)


def test_nan_and_inf_are_restored(pair):
    sci, tmpl, kernel, diffim = pair
    bad = diffim.clone()
    bad.image[10, 20] = np.nan
    bad.image[100, 100] = np.inf
    bad.image[200, 50] = -np.inf
    bad.image[0, 0] = np.nan
    bad.variance[30, 30] = np.nan
    out = DecorrelateALKernelTask().run(sci, tmpl, bad, kernel, svar=0.04, tvar=0.08).correctedExposure
    assert np.isnan(out.image[10, 20]) and np.isnan(out.image[0, 0])
    assert out.image[100, 100] == np.inf and out.image[200, 50] == np.inf  # the sign of -Inf is lost
    nonfinite = ~np.isfinite(bad.image)
    assert np.all(np.isfinite(out.image[~nonfinite]))
    ref_img, _, _ = decorrelate_numpy(bad.image, sci.variance, tmpl.variance, kernel.computeImage(), 0.04, 0.08,
                                      psfShape=(25, 25))
    assert _rel_diff(out.image, ref_img) < 1e-12
    # the variance output comes from the science/template planes, not the diffim's
    assert np.all(np.isfinite(out.variance))


def test_nan_in_variance_planes_propagates(pair):
    sci, tmpl, kernel, diffim = pair
    sci2 = sci.clone()
    sci2.variance[5, 7] = np.nan
    sci2.variance[9, 9] = -np.inf
    for complete in (False, True):
        config = DecorrelateALKernelConfig()
        config.completeVarPlanePropagation = complete
        out = DecorrelateALKernelTask(config=config).run(sci2, tmpl, diffim, kernel, svar=0.04,
                                                         tvar=0.08).correctedExposure
        ref = decorrelate_numpy(diffim.image, sci2.variance, tmpl.variance, kernel.computeImage(), 0.04, 0.08,
                                psfShape=(25, 25), completeVarPlanePropagation=complete)[1]
        assert np.isnan(out.variance[5, 7])
        assert np.isinf(out.variance[9, 9]) and np.isinf(ref[9, 9])
        assert np.sign(out.variance[9, 9]) == np.sign(ref[9, 9])  # -Inf * w1 (estimate), +Inf (complete)
        assert _rel_diff(out.variance, ref) < 1e-12


def test_input_untouched_by_default_and_inplace_writes(pair):
    sci, tmpl, kernel, diffim = pair
    before = [a.copy() for a in (sci.image, sci.variance, tmpl.image, tmpl.variance, diffim.image,
                                 diffim.variance, diffim.mask)]
    task = DecorrelateALKernelTask()
    out = task.run(sci, tmpl, diffim, kernel).correctedExposure
    after = [sci.image, sci.variance, tmpl.image, tmpl.variance, diffim.image, diffim.variance, diffim.mask]
    for a, b in zip(before, after):
        assert np.array_equal(a, b)
    assert out is not diffim
    assert not np.shares_memory(out.image, diffim.image)
    assert np.array_equal(out.mask, diffim.mask) and not np.shares_memory(out.mask, diffim.mask)
    assert out.getXY0() == diffim.getXY0() and out.getPsf() == diffim.getPsf()

    config = DecorrelateALKernelConfig()
    config.inPlace = True
    target = diffim.clone()
    image_array = target.image
    res = DecorrelateALKernelTask(config=config).run(sci, tmpl, target, kernel).correctedExposure
    assert res is target and res.image is image_array
    np.testing.assert_array_equal(res.image, out.image)
    np.testing.assert_array_equal(res.variance, out.variance)


def test_bit_identical_for_any_thread_count(pair):
    sci, tmpl, kernel, diffim = pair
    saved = _core.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            _core.set_num_threads(n)
            config = DecorrelateALKernelConfig()
            config.completeVarPlanePropagation = True
            results.append(DecorrelateALKernelTask(config=config).run(sci, tmpl, diffim, kernel).correctedExposure)
    finally:
        _core.set_num_threads(saved)
    for r in results[1:]:
        assert np.array_equal(r.image, results[0].image)
        assert np.array_equal(r.variance, results[0].variance)


def test_core_is_reentrant_from_python_threads(pair):
    """Per-cell use: serial core calls (parallel=False) from several threads release the GIL and
    give the same bits as a parallel call."""
    from concurrent.futures import ThreadPoolExecutor

    sci, tmpl, kernel, diffim = pair
    k = kernel.computeImage()

    def one(parallel):
        oi, ov = np.empty_like(diffim.image), np.empty_like(diffim.variance)
        _core.decorrelate_image(diffim.image, sci.variance, tmpl.variance, k, None, 0.04, 0.08, oi, ov,
                                complete_var=True, extra_shapes=[(25, 25)], parallel=parallel)
        return oi, ov

    ref = one(True)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, [False] * 6))
    for oi, ov in results:
        assert np.array_equal(oi, ref[0]) and np.array_equal(ov, ref[1])


def test_nonzero_xy0_and_float32(pair):
    sci, tmpl, kernel, diffim = pair

    def shifted(e):
        return Exposure(e.image.astype(np.float32), e.maskedImage.mask.clone(), e.variance.astype(np.float32),
                        xy0=(100, -50), psf=e.getPsf())

    out = DecorrelateALKernelTask().run(shifted(sci), shifted(tmpl), shifted(diffim), kernel).correctedExposure
    assert out.dtype == np.float32 and out.variance.dtype == np.float32
    assert out.getXY0() == (100, -50)
    ref = DecorrelateALKernelTask().run(sci, tmpl, diffim, kernel).correctedExposure
    assert np.max(np.abs(out.image - ref.image)) < 1e-5 * np.abs(ref.image).max()


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------

def test_preconv_kernel_requires_modes(pair):
    sci, tmpl, kernel, diffim = pair
    task = DecorrelateALKernelTask()
    with pytest.raises(ValueError, match="preConvKernel"):
        task.run(sci, tmpl, diffim, kernel, preConvKernel=kernel)
    with pytest.raises(ValueError, match="preConvKernel"):
        task.run(sci, tmpl, diffim, kernel, preConvKernel=kernel, preConvMode=True, templateMatched=False)


def test_mismatched_bboxes(pair):
    sci, tmpl, kernel, diffim = pair
    task = DecorrelateALKernelTask()
    small = Exposure(tmpl.image[:200, :], variance=tmpl.variance[:200, :], psf=tmpl.getPsf())
    with pytest.raises(ValueError, match="templateExposure bounding box"):
        task.run(sci, small, diffim, kernel)
    moved = Exposure(sci.image, variance=sci.variance, xy0=(1, 0), psf=sci.getPsf())
    with pytest.raises(ValueError, match="scienceExposure bounding box"):
        task.run(moved, tmpl, diffim, kernel)


def test_kernel_larger_than_image():
    img = np.zeros((20, 30))
    e = Exposure(img, variance=np.ones_like(img), psf=GaussianPsf(5, 5, 1.0))
    big = FixedKernel(np.ones((21, 5)))
    with pytest.raises(ValueError, match="larger than the image"):
        DecorrelateALKernelTask().run(e, e.clone(), e.clone(), big)
    with pytest.raises(ValueError, match="preConvKernel image shape"):
        DecorrelateALKernelTask().run(e, e.clone(), e.clone(), FixedKernel(np.ones((3, 3))), preConvMode=True,
                                      preConvKernel=FixedKernel(np.ones((5, 31))))
    with pytest.raises(ValueError, match="larger than the image"):
        _core.decorrelate_image(img, img, img, np.ones((3, 31)), None, 1.0, 1.0, img.copy(), img.copy())


@pytest.mark.parametrize("svar,tvar,match", [
    (0.0, 1.0, "science .svar. image must be positive"),
    (-1.0, 1.0, "science .svar. image must be positive"),
    (math.inf, 1.0, "science .svar. image must be positive"),
    (1.0, -0.5, "template .tvar. image must be non-negative"),
    (1.0, math.inf, "template .tvar. image must be non-negative"),
    (1.0, math.nan, "template .tvar. image must be non-negative"),
])
def test_bad_mean_variances(pair, svar, tvar, match):
    sci, tmpl, kernel, diffim = pair
    with pytest.raises(ValueError, match=match):
        DecorrelateALKernelTask().run(sci, tmpl, diffim, kernel, svar=svar, tvar=tvar)


def test_bad_mean_variance_roles_swap_when_science_convolved(pair):
    sci, tmpl, kernel, diffim = pair
    with pytest.raises(ValueError, match="template .tvar. image must be positive"):
        DecorrelateALKernelTask().run(sci, tmpl, diffim, kernel, svar=1.0, tvar=0.0, templateMatched=False)


def test_fully_masked_variance_is_an_error(pair):
    sci, tmpl, kernel, diffim = pair
    masked = sci.clone()
    masked.mask[...] = masked.maskedImage.mask.getPlaneBitMask("BAD")
    with pytest.raises(ValueError, match="science .svar.*nan"):
        DecorrelateALKernelTask().run(masked, tmpl, diffim, kernel)


def test_missing_psfs(pair):
    sci, tmpl, kernel, diffim = pair
    nopsf = lambda e: Exposure(e.image, e.maskedImage.mask, e.variance)  # noqa: E731
    task = DecorrelateALKernelTask()
    with pytest.raises(ValueError, match="science exposure has no PSF"):
        task.run(nopsf(sci), tmpl, diffim, kernel)
    with pytest.raises(ValueError, match="template exposure has no PSF"):
        task.run(sci, nopsf(tmpl), diffim, kernel, templateMatched=False)
    with pytest.raises(ValueError, match="preConvMode without preConvKernel needs the science"):
        task.run(nopsf(sci), tmpl, diffim, kernel, preConvMode=True)
    # the template PSF is not needed in the default mode
    task.run(sci, nopsf(tmpl), diffim, kernel)


def test_wrong_types(pair):
    sci, tmpl, kernel, diffim = pair
    with pytest.raises(TypeError, match="psfMatchingKernel"):
        DecorrelateALKernelTask().run(sci, tmpl, diffim, kernel.computeImage())
    with pytest.raises(TypeError, match="subtractedExposure"):
        DecorrelateALKernelTask().run(sci, tmpl, diffim.maskedImage, kernel)
    with pytest.raises(TypeError, match="dtype"):
        img = np.zeros((8, 8))
        _core.decorrelate_image(img, img.astype(np.float32), img, np.ones((3, 3)), None, 1.0, 1.0, img.copy(),
                                img.copy())


def test_all_nan_early_return_with_warning(pair, caplog):
    sci, tmpl, kernel, diffim = pair
    nan_sci = sci.clone()
    nan_sci.image[...] = np.nan
    nan_sci.variance[...] = np.nan
    with caplog.at_level(logging.WARNING):
        out = DecorrelateALKernelTask().run(nan_sci, tmpl, diffim, kernel).correctedExposure
    assert "entirely NaNs" in caplog.text
    assert out is not diffim
    np.testing.assert_array_equal(out.image, diffim.image)


def test_logging_statistics_at_info(pair, caplog):
    sci, tmpl, kernel, diffim = pair
    quiet = DecorrelateALKernelTask()
    quiet.run(sci, tmpl, diffim, kernel)
    assert "varianceMeanBefore" not in quiet.metadata  # logging-only statistics skipped
    task = DecorrelateALKernelTask()
    with caplog.at_level(logging.INFO):
        task.run(sci, tmpl, diffim, kernel)
    assert "Variance plane mean of uncorrected diffim" in caplog.text
    assert "Variance plane mean of corrected diffim" in caplog.text
    assert task.metadata["varianceMeanBefore"] == pytest.approx(0.04105, abs=1e-5)
    assert task.metadata["varianceMeanAfter"] == pytest.approx(0.12, rel=1e-12)
    assert task.metadata["svar"] == pytest.approx(0.04) and task.metadata["tvar"] == pytest.approx(0.08)


def test_diverging_correction_warns(pair, caplog):
    sci, tmpl, kernel, diffim = pair
    with caplog.at_level(logging.WARNING):
        DecorrelateALKernelTask().run(sci, tmpl, diffim, kernel, svar=1e-10, tvar=0.08)
    assert "Diverging correction" in caplog.text


def test_config_defaults_and_validation():
    config = DecorrelateALKernelConfig()
    assert list(config.ignoreMaskPlanes) == ["INTRP", "EDGE", "DETECTED", "SAT", "CR", "BAD", "NO_DATA",
                                             "DETECTED_NEGATIVE"]
    assert config.completeVarPlanePropagation is False
    assert config.fftShape == "exact"
    assert config.inPlace is False
    with pytest.raises(Exception):
        config.fftShape = "fastest"
    assert DecorrelateALKernelTask._DefaultName == "ip_diffim_decorrelateALKernel"


def test_ignore_mask_planes_are_applied():
    rng = np.random.default_rng(2)
    var = rng.normal(1.0, 0.01, (64, 64))
    var[:, :20] = 50.0
    e = Exposure(np.zeros((64, 64)), variance=var)
    e.mask[:, :20] = e.maskedImage.mask.getPlaneBitMask("CR")
    task = DecorrelateALKernelTask()
    assert task.computeVarianceMean(e) == pytest.approx(1.0, abs=0.01)
    task.config.ignoreMaskPlanes = ["BAD"]
    assert task.computeVarianceMean(e) > 1.5


# ---------------------------------------------------------------------------------------------
# real data: the HOTPANTS comparison images
# ---------------------------------------------------------------------------------------------

@pytest.mark.data
def test_hotpants_real_data(shared_data):
    folder = shared_data / "hotpants"
    sci = Exposure.readFits(folder / "scienceMI.fits", xy0Policy="mask")
    tmpl = Exposure.readFits(folder / "templateMI.fits", xy0Policy="mask")  # image/variance HDUs say (24, 24)
    assert sci.getBBox() == tmpl.getBBox()
    s_sci, s_tmpl = math.sqrt(7.24), 1.0  # second moments of the stars (spec §6)
    sci.setPsf(GaussianPsf(25, 25, s_sci))
    tmpl.setPsf(GaussianPsf(25, 25, s_tmpl))
    kernel = FixedKernel(GaussianPsf(21, 21, math.sqrt(s_sci ** 2 - s_tmpl ** 2)).computeKernelImage())
    matched = convolveMaskedImage(tmpl.maskedImage, kernel)
    diffim = Exposure.fromMaskedImage(sci.maskedImage - matched, psf=sci.getPsf())
    task = DecorrelateALKernelTask()
    out = task.run(sci, tmpl, diffim, kernel).correctedExposure
    assert task.metadata["tvar"] == 0.0  # noiseless template: its variance plane is 0 off the stars
    assert task.metadata["svar"] == pytest.approx(100.0, rel=0.01)
    assert np.array_equal(np.isfinite(out.image), np.isfinite(diffim.image))
    assert np.all(np.isfinite(out.variance))
    # star-free pixels: away from the nine stars and the edge band
    yy, xx = np.mgrid[0:193, 0:193]
    free = np.ones((193, 193), bool)
    for r in (32, 96, 160):
        for c in (32, 96, 160):
            free &= (yy - r) ** 2 + (xx - c) ** 2 > 20 ** 2
    free &= (out.mask & out.maskedImage.mask.getPlaneBitMask("EDGE")) == 0
    pixvar = float(np.var(out.image[free], ddof=1))
    planevar = float(np.mean(out.variance[free]))
    assert pixvar == pytest.approx(planevar, rel=0.10)
    # vt = 0: the filter is the identity, the image is unchanged up to rounding
    assert np.max(np.abs(out.image - diffim.image)) < 1e-3


# ---------------------------------------------------------------------------------------------
# FFT layer, geometry, convolution
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (16, 22), (33, 101), (288, 288), (43, 86), (211, 130),
                                   (64, 1006)])
def test_rfft2_matches_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.normal(size=shape)
    spec = _core.rfft2(a)
    ref = np.fft.rfft2(a)
    assert spec.shape == ref.shape
    assert np.max(np.abs(spec - ref)) <= 1e-12 * max(1.0, np.abs(ref).max())
    back = _core.irfft2(spec, shape[1])
    np.testing.assert_allclose(back, np.fft.irfft2(ref, shape), rtol=0, atol=1e-12)
    np.testing.assert_allclose(back, a, rtol=0, atol=1e-12)


def test_next_fast_size():
    assert [_core.next_fast_size(n) for n in (1, 287, 288, 4127, 4103)] == [2, 288, 288, 4200, 4116]
    assert [_core.cheapest_fast_size(n) for n in (1, 252, 282, 4072, 4128)] == [2, 256, 288, 4096, 4320]
    assert _core.fft_backend() == "diffcal-stockham"


def test_common_shape_and_padding():
    assert _core.compute_common_shape([(256, 256), (32, 32), (25, 25)]) == (288, 288)
    assert _core.compute_common_shape([(33, 32)]) == (34, 32)
    assert computeCommonShape((256, 256), (32, 32), (25, 25)) == (288, 288)
    a = np.arange(15.0).reshape(3, 5)
    p = padCenterOriginArray(a, (6, 8))
    assert p[0, 0] == a[1, 2] and p[0, 2] == a[1, 4] and p[-1, -1] == a[0, 1] and p[-1, -2] == a[0, 0]
    np.testing.assert_array_equal(padCenterOriginArray(p, a.shape, useInverse=True), a)


def _direct_correlate(img, k):
    kh, kw = k.shape
    cy, cx = (kh - 1) // 2, (kw - 1) // 2
    h, w = img.shape
    out = np.zeros((h - kh + 1, w - kw + 1))
    for j in range(kh):
        for i in range(kw):
            out += k[j, i] * img[j:j + h - kh + 1, i:i + w - kw + 1]
    return out, cy, cx


@pytest.mark.parametrize("kshape", [(5, 7), (6, 4), (32, 32)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_convolve_masked_image_semantics(kshape, dtype):
    rng = np.random.default_rng(kshape[0])
    h, w = 60, 70
    img = rng.normal(size=(h, w)).astype(dtype)
    var = rng.uniform(1, 2, (h, w)).astype(dtype)
    mi = MaskedImage(img, variance=var, xy0=(3, 4))
    mi.mask.array[20, 30] = mi.mask.getPlaneBitMask("CR")
    k = rng.uniform(0.1, 1.0, kshape)
    k[0, 0] = 0.0  # zero kernel pixels do not propagate mask bits
    out = convolveMaskedImage(mi, FixedKernel(k))
    assert out.dtype == dtype and out.getXY0() == (3, 4)
    ref, cy, cx = _direct_correlate(img.astype(np.float64), k)
    rvar, _, _ = _direct_correlate(var.astype(np.float64), k * k)
    kh, kw = kshape
    inner = (slice(cy, h - (kh - 1 - cy)), slice(cx, w - (kw - 1 - cx)))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.image[inner], ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(out.variance[inner], rvar, rtol=tol)
    edge = mi.mask.getPlaneBitMask("EDGE")
    is_edge = (out.mask.array & edge) != 0
    expected_edge = np.ones((h, w), bool)
    expected_edge[inner] = False
    np.testing.assert_array_equal(is_edge, expected_edge)
    np.testing.assert_array_equal(out.image[is_edge], img[is_edge])
    np.testing.assert_array_equal(out.variance[is_edge], var[is_edge])
    # CR at (row 20, col 30) spreads to output pixels whose footprint covers it with k != 0
    cr = (out.mask.array & mi.mask.getPlaneBitMask("CR")) != 0
    expected_cr = np.zeros((h, w), bool)
    for j in range(kh):
        for i in range(kw):
            if k[j, i] != 0:
                y, x = 20 - j + cy, 30 - i + cx
                if inner[0].start <= y < inner[0].stop and inner[1].start <= x < inner[1].stop:
                    expected_cr[y, x] = True
    expected_cr[20, 30] |= bool(is_edge[20, 30])
    np.testing.assert_array_equal(cr, expected_cr)
    assert np.all(mi.mask.array[~np.isin(np.arange(h * w).reshape(h, w), [20 * w + 30])] == 0)  # input untouched


def test_convolve_options_and_errors():
    img = np.ones((20, 20))
    mi = MaskedImage(img, variance=np.ones((20, 20)))
    k = np.full((3, 3), 2.0)
    norm = convolveMaskedImage(mi, k, doNormalize=True)
    np.testing.assert_allclose(norm.image[1:-1, 1:-1], 1.0)
    np.testing.assert_allclose(norm.variance[1:-1, 1:-1], 1.0 / 9.0)
    noedge = convolveMaskedImage(mi, k, doCopyEdge=False)
    assert np.isnan(noedge.image[0, 0]) and np.isinf(noedge.variance[0, 0])
    assert noedge.mask.array[0, 0] == mi.mask.getPlaneBitMask("NO_DATA")
    assert noedge.image[5, 5] == pytest.approx(18.0)
    with pytest.raises(ValueError, match="larger than the image"):
        convolveMaskedImage(mi, np.ones((21, 3)))
    with pytest.raises(ValueError, match="sum is 0"):
        convolveMaskedImage(mi, np.array([[1.0, -1.0]]), doNormalize=True)
    with pytest.raises(TypeError):
        convolveMaskedImage(img, k)
