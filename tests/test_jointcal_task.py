"""JointcalTask/JointcalConfig: configuration, input errors, the _iterate_fit control flow, sky preparation,
proper motions and degenerate fits (the behaviours of the reference's test_jointcal.py, on simulated data)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from astropy.table import Table

from diffcal.jointcal import JointcalConfig, JointcalTask, simulate
from diffcal.jointcal.inputs import julianEpochFromTaiNs
from diffcal.jointcal.task import Chi2Statistic
from diffcal.pipe import FieldValidationError, Struct, TaskError


@pytest.fixture(scope="module")
def small():
    return simulate(nVisits=4, nDetectors=2, nStars=800, seed=11, ditherRadius=0.02)


def _config(**fields) -> JointcalConfig:
    config = JointcalConfig()
    config.doPhotometry = False
    for k, v in fields.items():
        setattr(config, k, v)
    return config


# ---------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------

def test_config_defaults_follow_the_reference():
    c = JointcalConfig()
    assert (c.doAstrometry, c.doPhotometry, c.sourceFluxType) == (True, True, "apFlux_12_0")
    assert (c.positionErrorPedestal, c.photometryErrorPedestal, c.matchCut, c.minMeasurements) == (0.02, 0.0, 3.0, 2)
    assert (c.minMeasuredStarsPerCcd, c.minRefStarsPerCcd, c.allowLineSearch) == (100, 30, False)
    assert (c.astrometrySimpleOrder, c.astrometryChipOrder, c.astrometryVisitOrder) == (3, 1, 5)
    assert (c.astrometryModel, c.photometryModel, c.photometryVisitOrder) == ("constrained", "constrainedMagnitude", 7)
    assert (c.outlierRejectSigma, c.astrometryOutlierRelativeTolerance) == (5.0, 0.0)
    assert (c.maxAstrometrySteps, c.maxPhotometrySteps, c.astrometryReferenceErr) == (20, 20, None)
    sel = c.sourceSelector["science"]
    assert sel.doRequirePrimary and sel.doUnresolved and sel.unresolved.name == "sizeExtendedness"
    assert sel.doSignalToNoise and sel.signalToNoise.minimum == 10.0
    assert sel.signalToNoise.fluxField == "apFlux_12_0_instFlux"
    assert sel.doIsolated and sel.isolated.parentName == "parentSourceId"
    assert "pixelFlags_edge" in sel.flags.bad and "hsmPsfMoments_flag" in sel.flags.bad
    assert c.astrometryReference.requireProperMotion and c.astrometryReference.anyFilterMapsToThis == "phot_g_mean"
    c.validate()


def test_config_validation_errors():
    c = JointcalConfig()
    c.applyColorTerms = True
    with pytest.raises(FieldValidationError, match="applyColorTerms=True requires"):
        c.validate()
    c = JointcalConfig()
    c.doAstrometry = c.doPhotometry = False
    with pytest.raises(FieldValidationError, match="At least one"):
        c.validate()
    c = JointcalConfig()
    c.astrometryChipOrder = 0
    with pytest.raises(FieldValidationError):
        c.validate()
    c = JointcalConfig()
    with pytest.raises(Exception):
        c.astrometryModel = "fancy"


# ---------------------------------------------------------------------------------------------------------
# inputs and errors
# ---------------------------------------------------------------------------------------------------------

def _args(survey, **over):
    args = survey.runArguments()
    args.pop("photometryRefCat")
    args.update(over)
    return args


def test_no_data_to_process(small):
    config = _config()
    config.sourceSelector["science"].signalToNoise.minimum = 1e10
    with pytest.raises(TaskError, match="No data to process"):
        JointcalTask(config=config).run(**_args(small))


def test_nan_positions_are_rejected(small):
    tables = [t.copy() for t in _args(small)["inputSourceTableVisit"]]
    tables[1]["x"][5] = np.nan
    with pytest.raises(ValueError, match="non-finite x/y"):
        JointcalTask(config=_config()).run(**_args(small, inputSourceTableVisit=tables))


def test_detectors_with_too_few_stars_are_dropped(small, caplog):
    tables = [t.copy() for t in _args(small)["inputSourceTableVisit"]]
    # keep only 3 sources on detector 1 of the first visit
    t = tables[0]
    keep = (np.asarray(t["detector"]) != 1) | (np.cumsum(np.asarray(t["detector"]) == 1) <= 3)
    tables[0] = t[keep]
    config = _config(minSelectedSourcesPerDetector=5, astrometryModel="simple")
    with caplog.at_level(logging.WARNING, logger="diffcal.jointcal"):
        res = JointcalTask(config=config).run(**_args(small, inputSourceTableVisit=tables))
    visit0 = min(small.visitSummaries)
    assert any("Dropped 1 detectors" in r.getMessage() and f"visit {visit0}, detector 1" in r.getMessage()
               for r in caplog.records)
    assert (visit0, 1) not in res.outputWcs and (visit0, 0) in res.outputWcs


def test_unknown_detector_and_missing_columns(small):
    tables = [t.copy() for t in _args(small)["inputSourceTableVisit"]]
    tables[0]["detector"][:] = 77
    with pytest.raises(ValueError, match=r"detectors \[77\] that are not in the visit summary"):
        JointcalTask(config=_config()).run(**_args(small, inputSourceTableVisit=tables))
    tables = [t.copy() for t in _args(small)["inputSourceTableVisit"]]
    tables[0].remove_column("ixy")
    with pytest.raises(ValueError, match="no column 'ixy'"):
        JointcalTask(config=_config()).run(**_args(small, inputSourceTableVisit=tables))
    with pytest.raises(ValueError, match="needs inputCamera"):
        JointcalTask(config=_config()).run(**_args(small, inputCamera=None))


def test_reference_catalog_without_coordinate_errors(small):
    ref = Table(small.refCat, copy=True)
    ref.remove_columns(["coord_raErr", "coord_decErr"])
    with pytest.raises(FieldValidationError, match="does not contain coordinate errors"):
        JointcalTask(config=_config()).run(**_args(small, astrometryRefCat=ref))
    res = JointcalTask(config=_config(astrometryReferenceErr=5.0)).run(**_args(small, astrometryRefCat=ref))
    assert res.job["astrometry_final_ndof"] > 0
    ref.remove_columns(["pm_ra", "pm_dec"])
    with pytest.raises(RuntimeError, match="requireProperMotion"):
        JointcalTask(config=_config(astrometryReferenceErr=5.0)).run(**_args(small, astrometryRefCat=ref))


def test_default_config_fits_astrometry_and_photometry(small):
    res = JointcalTask(config=JointcalConfig()).run(**small.runArguments())
    assert sorted(res.outputPhotoCalib) == sorted(res.outputWcs)
    for kind in ("astrometry", "photometry"):
        for metric in ("matched_fittedStars", "collected_refStars", "prepared_refStars", "prepared_fittedStars",
                       "prepared_ccdImages", "final_chi2", "final_ndof"):
            assert f"{kind}_{metric}" in res.job
    assert res.photometry.model.kind == "constrainedMagnitude"
    assert 0.5 < res.job["photometry_final_chi2"] / res.job["photometry_final_ndof"] < 1.5


def test_inputs_as_mappings_and_metadata(small):
    args = _args(small)
    args["inputSourceTableVisit"] = {v: small.sourceTables[v] for v in small.sourceTables}
    args["inputVisitSummary"] = dict(small.visitSummaries)
    task = JointcalTask(config=_config(astrometryModel="simple"))
    res = task.run(**args)
    assert task.metadata["astrometry_final_ndof"] == res.job["astrometry_final_ndof"]
    assert "runStartCpuTime" in task.metadata.keys() or any("runStart" in k for k in task.metadata.names())


# ---------------------------------------------------------------------------------------------------------
# sky preparation
# ---------------------------------------------------------------------------------------------------------

def test_bounding_circle_and_epoch(small):
    task = JointcalTask(config=_config())
    args = _args(small)
    data = task._loadData(args["inputSourceTableVisit"], args["inputVisitSummary"], args["inputCamera"])
    task._prepSky(data)
    ra0, dec0, radius = data.boundingCircle
    c0 = np.array([math.cos(math.radians(dec0)) * math.cos(math.radians(ra0)),
                   math.cos(math.radians(dec0)) * math.sin(math.radians(ra0)), math.sin(math.radians(dec0))])
    for i, w in enumerate(data.wcs):
        x0, y0, x1, y1 = data.bbox[i]
        ra, dec = w.pixelToSky([x0, x1, x1, x0], [y0, y0, y1, y1])
        v = np.stack([np.cos(np.radians(dec)) * np.cos(np.radians(ra)), np.cos(np.radians(dec)) * np.sin(np.radians(ra)),
                      np.sin(np.radians(dec))], axis=1)
        sep = np.degrees(np.arccos(np.clip(v @ c0, -1, 1)))
        assert np.all(sep <= radius)
    taiNs = [s.taiNs for s in small.visitSummaries.values()]
    assert data.fitEpoch == pytest.approx(np.mean(julianEpochFromTaiNs(taiNs)), abs=1e-9)


def test_bounding_circle_across_ra_zero():
    """A field straddling RA = 0 fits exactly like the same field elsewhere (everything is relative)."""
    kw = dict(nVisits=3, nDetectors=2, nStars=1500, seed=2, dec=-30.0, ditherRadius=0.02)
    s = simulate(ra=0.02, **kw)
    ras = np.concatenate([np.asarray(t["ra"]) for t in s.sourceTables.values()])
    assert ras.min() < 1.0 and ras.max() > 359.0
    task = JointcalTask(config=_config())
    args = _args(s)
    data = task._loadData(args["inputSourceTableVisit"], args["inputVisitSummary"], args["inputCamera"])
    task._prepSky(data)
    assert data.boundingCircle[2] < 0.5
    res = JointcalTask(config=_config(astrometryModel="simple")).run(**args)
    ref = JointcalTask(config=_config(astrometryModel="simple")).run(**_args(simulate(ra=150.0, **kw)))
    assert res.job["astrometry_final_ndof"] == ref.job["astrometry_final_ndof"]
    assert res.job["astrometry_final_chi2"] == pytest.approx(ref.job["astrometry_final_chi2"], rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# _iterate_fit control flow (fake fitter, as the reference's TestJointcalIterateFit)
# ---------------------------------------------------------------------------------------------------------

class FakeFitter:
    def __init__(self, results, chi2s):
        self.results = list(results)
        self.chi2s = list(chi2s)
        self.calls = 0
        self.last_error = "fake failure"

    def minimize(self, *args, **kwargs):
        self.calls += 1
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]

    def compute_chi2(self):
        return self.chi2s.pop(0) if len(self.chi2s) > 1 else self.chi2s[0]

    def take_log(self):
        return []


class FakeNative:
    def __init__(self, valid=True):
        self.valid = valid

    def validate(self, ndof):
        return self.valid


def _state(results, chi2s, valid=True):
    return Struct(fitter=FakeFitter(results, chi2s), model=Struct(native=FakeNative(valid)), chi2History=[],
                  associations=None)


def _iterate(state, maxSteps=20):
    task = JointcalTask(config=_config())
    task._tract = 0
    return task._iterate_fit(state, maxSteps, "testing", "Distortions Positions")


def test_iterate_fit_converged():
    state = _state([0], [(10.0, 10)])
    chi2 = _iterate(state)
    assert state.fitter.calls == 2 and chi2.chi2 == 10.0


def test_iterate_fit_failed():
    state = _state([3], [(10.0, 10)])
    with pytest.raises(RuntimeError, match="Chi2 minimization failure.*fake failure"):
        _iterate(state)
    assert state.fitter.calls == 1


def test_iterate_fit_bad_chi2(caplog):
    state = _state([0], [(600.0, 100)])
    with caplog.at_level(logging.INFO, logger="diffcal.jointcal"):
        _iterate(state)
    messages = [r.getMessage() for r in caplog.records]
    assert "Fit completed chi2/ndof : 600/100=6" in messages
    assert any(r.levelno == logging.ERROR and r.getMessage() == "Potentially bad fit: High chi-squared/ndof."
               for r in caplog.records)


def test_iterate_fit_does_not_converge(caplog):
    state = _state([1], [(10.0, 10)])
    with caplog.at_level(logging.ERROR, logger="diffcal.jointcal"):
        _iterate(state, maxSteps=3)
    assert state.fitter.calls == 3
    assert "testing failed to converge after 3 steps" in [r.getMessage() for r in caplog.records]


def test_iterate_fit_chi2_increase_warnings(caplog):
    state = _state([1, 1, 1, 0], [(200.0, 10), (100.0, 10), (300.0, 10), (300.0, 10)])
    with caplog.at_level(logging.WARNING, logger="diffcal.jointcal"):
        _iterate(state)
    assert "Significant chi2 increase by a factor of 300 / 100 = 3" in [r.getMessage() for r in caplog.records]
    state = _state([1, 1], [(1e11, 10), (1.123456e13, 10)])
    with caplog.at_level(logging.WARNING, logger="diffcal.jointcal"):
        with pytest.raises(RuntimeError, match="Large chi2 increase"):
            _iterate(state)
    assert "Significant chi2 increase by a factor of 1.123e+13 / 1e+11 = 112.3" in [r.getMessage()
                                                                                      for r in caplog.records]


def test_iterate_fit_invalid_model_and_nonfinite():
    with pytest.raises(ValueError, match="Model is not valid"):
        _iterate(_state([0], [(10.0, 10)], valid=False))
    with pytest.raises(FloatingPointError):
        _iterate(_state([0], [(float("nan"), 10)]))


def test_chi2_statistic_format():
    assert str(Chi2Statistic(1611.5712, 2428)) == "chi2/ndof : 1611.57/2428=0.663744"
    assert str(Chi2Statistic(2.50373e16, 532674)) == "chi2/ndof : 2.50373e+16/532674=4.7003e+10"


def test_chi2_files_and_initial_model(small, tmp_path):
    config = _config(writeChi2FilesInitialFinal=True, writeInitialModel=True, debugOutputPath=str(tmp_path))
    JointcalTask(config=config).run(**_args(small))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "astrometry_initial_chi2-0-meas.csv" in names and "astrometry_final_chi2-0-ref.csv" in names
    assert any(n.startswith("initial_astrometry_model-0_") for n in names)
    lines = (tmp_path / "astrometry_final_chi2-0-meas.csv").read_text().splitlines()
    assert lines[0].split("\t")[-1] == "chi2" and len(lines) > 100


# ---------------------------------------------------------------------------------------------------------
# proper motions and degenerate problems
# ---------------------------------------------------------------------------------------------------------

def test_proper_motions_are_applied_to_the_exposure_epoch():
    s = simulate(nVisits=8, nDetectors=2, nStars=1200, seed=21, ditherRadius=0.02, refFraction=1.0,
                 pmSigmaMasYr=40.0, epochSpan=4.0, pmErrMasYr=0.1)
    good = JointcalTask(config=_config()).run(**_args(s))
    ratio = good.job["astrometry_final_chi2"] / good.job["astrometry_final_ndof"]
    assert ratio == pytest.approx(1.0, abs=0.08)
    report = s.evaluate(good)
    assert report["star_norm_rms"] < 1.5
    # the reference's sign (quirk 3) moves stars the wrong way: many more rejections and a worse fit
    bad = JointcalTask(config=_config(properMotionSignAsReference=True)).run(**_args(s))
    assert s.evaluate(bad)["false_rejected"] > 3 * max(report["false_rejected"], 5)


def test_degenerate_fit_names_the_unconstrained_visits():
    a = simulate(nVisits=3, nDetectors=2, nStars=1500, seed=31, ditherRadius=0.02)
    b = simulate(nVisits=2, nDetectors=2, nStars=1500, seed=32, ditherRadius=0.02, ra=170.0)
    args = _args(a)
    # group b: other visit ids, no reference stars -> its visit maps and stars share a free translation
    tables, summaries = list(args["inputSourceTableVisit"]), list(args["inputVisitSummary"])
    for v, t in b.sourceTables.items():
        t = t.copy()
        t["visit"] = v + 5000
        tables.append(t)
        s = b.visitSummaries[v]
        s2 = type(s)(**{**s.__dict__, "visit": v + 5000})
        summaries.append(s2)
    args.update(inputSourceTableVisit=tables, inputVisitSummary=summaries)
    config = _config(maxAstrometrySteps=2, astrometryModel="simple")
    with pytest.raises(RuntimeError) as err:
        JointcalTask(config=config).run(**args)
    message = str(err.value)
    for v in (6000, 6010):
        for d in (0, 1):
            assert f"visit {v} detector {d} (CcdImage mapping)" in message
    assert "visit 1000" not in message


@pytest.mark.parametrize("model", ["constrained", "simple"])
def test_write_init_matrix_dumps_the_normal_equations(tmp_path, model):
    """writeInitMatrix writes H and b of H delta = b before and after the initialization steps; solving
    them gives the step the fitter takes (1e-8), and H is symmetric positive definite."""
    small = simulate(nVisits=3, nDetectors=2, nStars=600, seed=4, ditherRadius=0.02)
    c = JointcalConfig()
    c.astrometryModel = model
    c.photometryModel = "simpleFlux"
    c.writeInitMatrix = True
    c.debugOutputPath = str(tmp_path)
    task = JointcalTask(config=c)
    task.run(**small.runArguments())
    names = sorted(p.name for p in tmp_path.iterdir())
    for kind in ("astrometry", "photometry"):
        for stage in ("preinit", "postinit"):
            assert any(n.startswith(f"{kind}_{stage}-") and n.endswith("-mat.txt") for n in names), names
            assert any(n.startswith(f"{kind}_{stage}-") and n.endswith("-grad.txt") for n in names), names
    # the astrometric pre-init system is the first step's: compare with a fresh fitter's step
    mat = next(tmp_path.glob("astrometry_preinit-*-mat.txt"))
    H = np.loadtxt(mat)
    b = np.loadtxt(str(mat).replace("-mat.txt", "-grad.txt"))
    assert H.shape == (b.size, b.size)
    np.testing.assert_allclose(H, H.T, rtol=0, atol=0)
    assert np.all(np.linalg.eigvalsh(H) > 0)
    args = {k: v for k, v in small.runArguments().items() if k != "photometryRefCat"}
    fresh_config = JointcalConfig()
    fresh_config.astrometryModel = model
    fresh = JointcalTask(config=fresh_config).prepareAstrometry(**args)
    first = "DistortionsVisit" if model == "constrained" else "Distortions"
    step = fresh.fitter.compute_step(first)
    np.testing.assert_allclose(np.linalg.solve(H, b), step, rtol=1e-8, atol=1e-8 * np.abs(step).max())
