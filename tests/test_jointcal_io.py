"""jointcal file I/O: the real cfht_minimal / HSC parquet files, the simulator's INPUT_DIR writer, the model JSON,
the output files and the command-line front end (diffcal.jointcal.cli)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from diffcal.jointcal import JointcalConfig, JointcalTask, simulate
from diffcal.jointcal import cli as jcli
from diffcal.jointcal.models import AstrometryModel
from diffcal.jointcal.readers import (
    readCalexpWcs,
    readCamera,
    readInputDir,
    readReferenceCatalog,
    readSourceTable,
)

pytest.importorskip("pyarrow")


def _cfhtConfig() -> JointcalConfig:
    """The overrides of the reference's tests/config/config.py plus what astrometry on these files needs."""
    c = JointcalConfig()
    c.doPhotometry = False
    c.astrometryModel = "simple"
    c.sourceSelector["science"].doUnresolved = False
    c.sourceSelector["science"].doRequirePrimary = False
    c.astrometryReferenceErr = 10.0  # the SDSS shard has no coordinate errors
    c.astrometryReference.requireProperMotion = False  # ... and no proper motions
    return c


@pytest.mark.data
def test_cfht_minimal_inputs(shared_data):
    d = shared_data / "cfht_minimal"
    tables, summaries = readInputDir(d)
    assert sorted(summaries) == [849375, 850587]
    s = summaries[849375]
    assert s.detector.tolist() == [12] and s.bbox.tolist() == [[0, 0, 2047, 4611]]
    assert s.calibrationMean[0] == 0.5432242058849329
    assert summaries[850587].calibrationMean[0] == 0.5257755759426929
    assert s.calibrationErr[0] == pytest.approx(1.388e-4, rel=1e-3)
    assert s.taiNs == 1148126893050000000
    assert (s.boresightRa, s.boresightDec) == pytest.approx((214.870376, 52.653610), abs=1e-6)
    assert s.physicalFilter == "r.MP9601" and s.band == "r"
    # WCS from the calexp header: CRPIX 979.11728 (1-based), identical to astropy with origin 0
    wcs = s.wcs[0]
    assert wcs.crpix == pytest.approx((978.11728, 2451.705545))
    assert wcs.crval == pytest.approx((215.043481143527, 52.7686146742152))
    assert wcs.sipOrder == 3
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    with fits.open(d / "calexp-849375-12.fits.fz") as h, warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        aw = WCS(h[1].header)
    x = np.array([0.0, 925.092299, 2047.0])
    y = np.array([0.0, 732.165369, 4611.0])
    ra, dec = wcs.pixelToSky(x, y)
    ara, adec = aw.all_pix2world(x, y, 0)
    np.testing.assert_allclose(ra, ara, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dec, adec, rtol=0, atol=1e-10)
    # source table: 2 rows each, S/N cut at 10 keeps 1 + 2
    t = tables[849375]
    assert len(t["x"]) == 2 and t["sourceId"].tolist() == [131329414033047692, 131329414033047693]
    sel = JointcalTask(config=_cfhtConfig()).sourceSelector.run(t)
    assert sel.tolist() == [True, False]
    # camera: 36 detectors, affine geometry of detector 12
    cam = readCamera(d / "camera-MegaPrime.fits")
    assert len(cam) == 36 and cam.name == "MegaPrime"
    det = cam[12]
    assert det.fpPosition == (-28.6605, 31.52925) and det.refPoint == (1023.5, 2305.5)
    assert det.yaw == pytest.approx(math.pi)
    fx, fy = det.pixelToFocal(1023.5, 2305.5)
    assert (float(fx), float(fy)) == pytest.approx((-28.6605, 31.52925))
    with pytest.raises(KeyError, match="No such detector id: 888"):
        cam[888]
    ref = readReferenceCatalog(d / "refcat-sdss-dr9-fink-v5b-225822.fits")
    assert len(ref) == 2628 and "r_flux" in ref.colnames


@pytest.mark.data
def test_cfht_minimal_astrometry(shared_data, caplog):
    d = shared_data / "cfht_minimal"
    tables, summaries = readInputDir(d)
    cam = readCamera(d / "camera-MegaPrime.fits")
    ref = readReferenceCatalog(d / "refcat-sdss-dr9-fink-v5b-225822.fits")
    res = JointcalTask(config=_cfhtConfig()).run(tables, summaries, cam, astrometryRefCat=ref)
    job = res.job
    assert job["astrometry_matched_fittedStars"] == 2
    assert job["astrometry_prepared_fittedStars"] == 2
    assert job["astrometry_prepared_refStars"] == 2
    assert job["astrometry_prepared_ccdImages"] == 2
    assert job["astrometry_final_ndof"] == 2
    assert np.isfinite(job["astrometry_final_chi2"])
    # the fitted WCS moves the detector centre by much less than an arcsecond
    for key, wcs in res.outputWcs.items():
        ra, dec = wcs.pixelToSky([1023.5], [2305.5])
        ra0, dec0 = summaries[key[0]].wcs[0].pixelToSky([1023.5], [2305.5])
        assert math.hypot((ra[0] - ra0[0]) * math.cos(math.radians(dec0[0])), dec[0] - dec0[0]) * 3600 < 1.0
    # the constrained model is degenerate with one detector per visit: a clear error naming the mappings
    c = _cfhtConfig()
    c.astrometryModel = "constrained"
    with pytest.raises(RuntimeError, match="visit 8(49375|50587) \\(visit mapping\\)"):
        JointcalTask(config=c).run(tables, summaries, cam, astrometryRefCat=ref)


@pytest.mark.data
def test_old_column_convention(shared_data):
    """HSC visit 34690 with capitalised columns (the reference's TestJointcalVisitCatalog)."""
    table = readSourceTable(shared_data / "subselected-sourceTable-0034690.parq")
    assert len(table["x"]) == 168
    config = JointcalConfig()
    config.sourceFluxType = "ApFlux_12_0"
    task = JointcalTask(config=config)
    cat = task.extractDetectorCatalog(table, 56)
    assert len(cat["id"]) == 56
    i = int(np.flatnonzero(cat["id"] == 29798723617816629)[0])
    assert cat["centroid_x"][i] == 1715.734359473175
    assert cat["centroid_y"][i] == 89.06076509964362
    assert cat["centroid_xErr"].dtype == np.float32
    assert np.all(cat["shape_xx"] > 0) and np.isfinite(cat["flux_instFlux"]).sum() > 40
    # the selector resolves PixelFlags_*, Deblend_nChild, decl and ApFlux_12_0_* in the old names
    sel = config.sourceSelector["science"]
    sel.doUnresolved = False
    sel.doRequirePrimary = False
    sel.signalToNoise.fluxField = "ApFlux_12_0_instFlux"
    sel.signalToNoise.errField = "ApFlux_12_0_instFluxErr"
    sel.flags.bad = [f.replace("apFlux_12_0", "ApFlux_12_0") for f in sel.flags.bad]
    mask = JointcalTask(config=config).sourceSelector.run(table)
    assert 0 < mask.sum() < 168


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    survey = simulate(nVisits=4, nDetectors=2, nStars=1200, seed=13, ditherRadius=0.02)
    out = survey.write(tmp_path_factory.mktemp("survey"))
    return survey, out


def test_writer_round_trip(written):
    survey, out = written
    tables, summaries = readInputDir(out)
    assert sorted(summaries) == sorted(survey.visitSummaries)
    for v, s in summaries.items():
        orig = survey.visitSummaries[v]
        np.testing.assert_array_equal(s.detector, orig.detector)
        np.testing.assert_array_equal(s.calibrationMean, orig.calibrationMean)
        assert s.taiNs == pytest.approx(orig.taiNs, abs=1.0)
        x, y = np.array([0.0, 1000.0, 2047.0]), np.array([10.0, 3000.0, 4095.0])
        for a, b in zip(s.wcs, orig.wcs):
            np.testing.assert_allclose(a.pixelToSky(x, y), b.pixelToSky(x, y), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(tables[v]["x"], np.asarray(survey.sourceTables[v]["x"]))
    cam = readCamera(out / "camera.fits")
    assert [d.affine().tolist() for d in cam] == [d.affine().tolist() for d in survey.camera]
    ref = readReferenceCatalog(out / "refcat.fits")
    np.testing.assert_array_equal(ref["coord_ra"], survey.refCat["coord_ra"])
    # the fit from files equals the fit from memory
    config = JointcalConfig()
    config.doPhotometry = False
    a = JointcalTask(config=config).run(**survey.runArguments())
    b = JointcalTask(config=config).run(tables, summaries, cam, astrometryRefCat=ref)
    assert b.job["astrometry_final_ndof"] == a.job["astrometry_final_ndof"]
    assert b.job["astrometry_final_chi2"] == pytest.approx(a.job["astrometry_final_chi2"], rel=1e-8)


def test_model_json_round_trip_is_lossless(written):
    survey, _ = written
    config = JointcalConfig()
    config.doPhotometry = False
    for model in ("constrained", "simple"):
        config.astrometryModel = model
        res = JointcalTask(config=config).run(**survey.runArguments())
        m = res.astrometry.model
        again = AstrometryModel.fromJson(m.toJson())
        np.testing.assert_array_equal(again.params, m.params)
        assert again.toDict() == m.toDict()
        key = m.keysWithMapping()[0]
        x, y = np.linspace(0, 2047, 7), np.linspace(0, 4095, 7)
        np.testing.assert_array_equal(again.pixelToSky(key, x, y), m.pixelToSky(key, x, y))
    with pytest.raises(ValueError, match="not a diffcal"):
        AstrometryModel.fromJson(json.dumps({"format": "other"}))


def test_command_line(written, tmp_path, capsys):
    survey, inp = written
    import argparse

    parser = argparse.ArgumentParser(prog="diffcal")
    sub = parser.add_subparsers(dest="command")
    jcli.add_commands(sub)
    args = parser.parse_args(["jointcal", str(inp), "--refcat", str(inp / "refcat.fits"), "--camera",
                              str(inp / "camera.fits"), "-o", str(tmp_path / "out"), "-c", "doPhotometry=False",
                              "-c", "sourceSelector.science.signalToNoise.minimum=12.0", "--plots", "--quiet"])
    assert args.func(args) == 0
    stdout = capsys.readouterr().out
    assert stdout.strip().splitlines()[-1].startswith("diffcal jointcal: OK")
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["astrometry_final_ndof"] > 0 and metrics["wcs_accuracy"]["forward_max_mas"] < 1.0
    assert (out / "chi2_steps.png").stat().st_size > 0
    wcsFiles = sorted((out / "wcs").iterdir())
    assert len(wcsFiles) == 8
    wcs = readCalexpWcs(wcsFiles[0])  # header-only FITS, same reader as calexps
    assert wcs.sipOrder == 5
    loaded = JointcalConfig()
    loaded.load(str(out / "config.py"))
    assert loaded.sourceSelector["science"].signalToNoise.minimum == 12.0
    assert "astrometry_final_chi2" in (out / "metadata.json").read_text()
    # simulate survey
    args = parser.parse_args(["simulate", "survey", str(tmp_path / "sim"), "--visits", "2", "--detectors", "2",
                              "--stars", "300"])
    assert args.func(args) == 0
    assert (tmp_path / "sim" / "visitSummary-1010.fits").exists()
    # bad override
    with pytest.raises(ValueError, match="no field 'nope'"):
        jcli.applyOverride(JointcalConfig(), "nope=3")
    with pytest.raises(ValueError, match="field=value"):
        jcli.applyOverride(JointcalConfig(), "matchCut")
