"""jointcal astrometry on simulated surveys: truth recovery, outlier rejection, solvers, logging.

The survey (20 visits x 4 detectors, ~7500 fitted measurements, 1 % injected outliers) is small enough to
fit in about a second. Expected scatters come from `SimulatedSurvey.evaluate` (measurement errors plus the
least-squares mapping error p / sum(w); see its docstring); the fit must meet them within 1.5x.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from diffcal import _core
from diffcal.jointcal import JointcalConfig, JointcalTask, simulate

SURVEY = dict(nVisits=20, nDetectors=4, nStars=3000, ditherRadius=0.03, seed=0)


@pytest.fixture(scope="module")
def survey():
    return simulate(**SURVEY)


def _config(model: str, **fields) -> JointcalConfig:
    config = JointcalConfig()
    config.doPhotometry = False
    config.astrometryModel = model
    for k, v in fields.items():
        setattr(config, k, v)
    return config


@pytest.fixture(scope="module")
def constrainedResult(survey):
    return JointcalTask(config=_config("constrained")).run(**survey.runArguments())


@pytest.fixture(scope="module")
def simpleResult(survey):
    return JointcalTask(config=_config("simple")).run(**survey.runArguments())


def test_simulate_is_deterministic():
    a = simulate(nVisits=3, nDetectors=2, nStars=300, seed=5)
    b = simulate(nVisits=3, nDetectors=2, nStars=300, seed=5)
    c = simulate(nVisits=3, nDetectors=2, nStars=300, seed=6)
    for v in a.sourceTables:
        for col in ("x", "y", "xErr", "apFlux_12_0_instFlux", "ra"):
            np.testing.assert_array_equal(a.sourceTables[v][col], b.sourceTables[v][col])
    np.testing.assert_array_equal(a.refCat["coord_ra"], b.refCat["coord_ra"])
    assert not np.array_equal(np.asarray(a.refCat["coord_ra"])[:10], np.asarray(c.refCat["coord_ra"])[:10])
    # documented in-memory input of JointcalTask.run
    args = a.runArguments()
    assert set(args) == {"inputSourceTableVisit", "inputVisitSummary", "inputCamera", "astrometryRefCat",
                         "photometryRefCat"}
    assert len(args["inputSourceTableVisit"]) == 3 and len(a.camera) == 2
    assert a.truth.fitEpoch == pytest.approx(np.mean([s.epoch for s in a.visitSummaries.values()]))


@pytest.mark.parametrize("model", ["constrained", "simple"])
def test_fit_recovers_truth(model, survey, constrainedResult, simpleResult):
    result = constrainedResult if model == "constrained" else simpleResult
    job = result.job
    assert job["astrometry_final_chi2"] / job["astrometry_final_ndof"] == pytest.approx(1.0, abs=0.05)
    report = survey.evaluate(result)
    # fitted stars: normalized error rms within 1.5x of the expectation from the simulated errors
    assert report["star_norm_rms"] < 1.5, report
    assert report["star_rms_mas"] < 1.5 * report["star_pred_rms_mas"], report
    # mappings (pixel -> sky against the true mapping at the measurement positions)
    assert report["map_ratio"] < 1.5, report
    # outliers: >= 95 % of the injected ones rejected, < 0.5 % false rejections
    assert report["outliers_injected"] > 40
    assert report["outliers_rejected"] >= 0.95 * report["outliers_injected"], report
    assert report["false_rejected"] < 0.005 * report["n_measurements"], report
    # metrics of spec section 4
    for key in ("matched_fittedStars", "collected_refStars", "prepared_refStars", "prepared_fittedStars",
                "prepared_ccdImages", "final_chi2", "final_ndof"):
        assert f"astrometry_{key}" in job
    assert job["astrometry_prepared_ccdImages"] == 80
    assert isinstance(job["astrometry_final_ndof"], int)


def test_output_wcs_accuracy(survey, constrainedResult):
    result = constrainedResult
    assert len(result.outputWcs) == 80
    worst = max(a["forward_max_mas"] for a in result.wcsAccuracy.values())
    assert worst < 1.0
    assert max(a["inverse_max_pix"] for a in result.wcsAccuracy.values()) < 1e-3
    key = (1000, 1)
    wcs = result.outputWcs[key]
    x = np.array([0.0, 1000.0, 2047.0])
    y = np.array([0.0, 2000.0, 4095.0])
    ra, dec = wcs.pixelToSky(x, y)
    mra, mdec = result.astrometry.model.pixelToSky(key, x, y)
    assert np.max(np.hypot((ra - mra) * np.cos(np.radians(dec)), dec - mdec)) * 3.6e6 < 1.0
    # astropy reads the FITS header to the same positions
    aw = wcs.toAstropy()
    ara, adec = aw.all_pix2world(x, y, 0)
    np.testing.assert_allclose(ara, ra, atol=1e-9)
    np.testing.assert_allclose(adec, dec, atol=1e-9)


def test_log_lines_follow_reference_format(survey, caplog):
    small = simulate(nVisits=4, nDetectors=2, nStars=800, seed=3, ditherRadius=0.02)
    with caplog.at_level(logging.INFO, logger="diffcal.jointcal"):
        JointcalTask(config=_config("constrained")).run(**small.runArguments())
    pattern = re.compile(r"^(\w[\w ]*?) chi2/ndof : ([-+.\deE]+)/(-?\d+)=([-+.\deEinf]+)$")
    kinds = [m.group(1) for m in (pattern.match(r.getMessage()) for r in caplog.records) if m]
    assert kinds[:5] == ["Initial", "Initialize DistortionsVisit", "Initialize Distortions",
                         "Initialize Positions", "Initialize DistortionsPositions"]
    assert "Fit iteration 0" in kinds and kinds[-1] == "Fit completed"
    assert any(r.getMessage().startswith("Number of outliers (Measured + Reference = Total): ")
               for r in caplog.records)


@pytest.mark.parametrize("model", ["constrained", "simple"])
def test_schur_and_sparse_give_the_same_step(model, survey):
    small = simulate(nVisits=6, nDetectors=4, nStars=1500, seed=2, ditherRadius=0.03)
    task = JointcalTask(config=_config(model))
    state = task.prepareAstrometry(**{k: v for k, v in small.runArguments().items() if k != "photometryRefCat"})
    fitter = state.fitter
    whats = (["DistortionsVisit"] if model == "constrained" else []) + ["Distortions", "Positions"]
    for what in whats + ["Distortions Positions"]:
        fitter.solver = "schur"
        a = fitter.compute_step(what)
        fitter.solver = "sparse"
        b = fitter.compute_step(what)
        assert a.shape == b.shape and a.size > 0
        assert np.max(np.abs(a - b)) <= 1e-8 * np.max(np.abs(b)), what
        # take the step so that later steps are evaluated at a different point
        fitter.minimize(what)
    # after the model and stars moved, the Distortions+Positions step still agrees
    fitter.solver = "schur"
    a = fitter.compute_step("Distortions Positions")
    fitter.solver = "sparse"
    b = fitter.compute_step("Distortions Positions")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-8 * np.max(np.abs(b)))


def test_rank_update_and_rebuild_paths_agree(survey):
    """The outlier loop with downdates and with full rebuilds reach the same solution closely."""
    small = simulate(nVisits=8, nDetectors=4, nStars=1500, seed=4, ditherRadius=0.03)
    out = {}
    for rank in (True, False):
        res = JointcalTask(config=_config("constrained", astrometryDoRankUpdate=rank)).run(**small.runArguments())
        out[rank] = res.job
    assert out[True]["astrometry_final_chi2"] / out[True]["astrometry_final_ndof"] == pytest.approx(
        out[False]["astrometry_final_chi2"] / out[False]["astrometry_final_ndof"], rel=0.02)


def test_results_do_not_depend_on_thread_count():
    small = simulate(nVisits=5, nDetectors=4, nStars=1200, seed=8, ditherRadius=0.03)
    previous = _core.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            _core.set_num_threads(n)
            res = JointcalTask(config=_config("constrained")).run(**small.runArguments())
            results.append((res.job["astrometry_final_chi2"], res.astrometry.model.params))
    finally:
        _core.set_num_threads(previous)
    for chi2, params in results[1:]:
        assert chi2 == results[0][0]
        np.testing.assert_array_equal(params, results[0][1])


def test_line_search_reaches_the_same_minimum():
    """doLineSearch (Brent on the step scale, used by the reference for constrained photometry) on astrometry."""
    small = simulate(nVisits=4, nDetectors=2, nStars=800, seed=12, ditherRadius=0.02, outlierFraction=0.0)
    chi2 = {}
    for search in (False, True):
        state = JointcalTask(config=_config("constrained")).prepareAstrometry(
            **{k: v for k, v in small.runArguments().items() if k != "photometryRefCat"})
        f = state.fitter
        for what in ("DistortionsVisit", "Distortions", "Positions"):
            f.minimize(what)
        for _ in range(3):
            assert f.minimize("Distortions Positions", 0.0, 0.0, True, search) == 0
        chi2[search] = f.compute_chi2()
    assert chi2[True][1] == chi2[False][1]
    assert chi2[True][0] == pytest.approx(chi2[False][0], rel=1e-6)


def test_remove_all_outliers_per_pass(survey):
    """The faster rejection variant (no one-per-parameter-group limit) keeps the quality of the fit."""
    result = JointcalTask(config=_config("constrained", removeAllOutliersPerPass=True)).run(**survey.runArguments())
    report = survey.evaluate(result)
    assert result.job["astrometry_final_chi2"] / result.job["astrometry_final_ndof"] == pytest.approx(1.0, abs=0.05)
    assert report["outliers_rejected"] >= 0.95 * report["outliers_injected"]
    assert report["false_rejected"] < 0.005 * report["n_measurements"]
    assert report["map_ratio"] < 1.5
