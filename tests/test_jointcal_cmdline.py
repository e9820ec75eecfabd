"""Command-line members of JointcalTask (Gen2 CmdLineTask semantics) on a local directory repository:
writeConfig / writeMetadata / writePackageVersions / writeSchemas, parseAndRun, runDataRef and runQuantum."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table

from diffcal.jointcal import JointcalConfig, JointcalTask, simulate
from diffcal.jointcal.inputs import Camera, VisitSummary
from diffcal.jointcal.repository import InputDirRepository
from diffcal.jointcal.wcs import TanSipWcs
from diffcal.pipe import Config, Field, Struct, Task, TaskError, TaskMetadata
from diffcal.pipe.cmdline import CmdLineTaskMixin
from diffcal.pipe.repository import DatasetNotFoundError, DatasetRef, LocalQuantumContext, LocalRepository


@pytest.fixture(scope="module")
def survey():
    return simulate(nVisits=4, nDetectors=2, nStars=800, seed=11, ditherRadius=0.02)


def _config(**fields) -> JointcalConfig:
    config = JointcalConfig()
    config.doPhotometry = False
    for k, v in fields.items():
        setattr(config, k, v)
    return config


def _populate(repo: LocalRepository, survey) -> list[int]:
    """Store the survey inputs in ``repo`` with the jointcal dataset types; returns the visits."""
    visits = sorted(survey.sourceTables)
    for v in visits:
        repo.put(survey.sourceTables[v], "sourceTable_visit", visit=v)
        repo.put(survey.visitSummaries[v], "visitSummary", visit=v)
    repo.put(survey.camera, "camera")
    repo.put(survey.refCat, "ref_cat")
    return visits


def _wcsClose(a: TanSipWcs, b: TanSipWcs, tolDeg: float = 1e-12) -> bool:
    x = np.array([0.0, 1000.0, 2047.0])
    y = np.array([0.0, 3000.0, 4095.0])
    ra1, dec1 = a.pixelToSky(x, y)
    ra2, dec2 = b.pixelToSky(x, y)
    return bool(np.max(np.abs(ra1 - ra2)) < tolDeg and np.max(np.abs(dec1 - dec2)) < tolDeg)


# ---------------------------------------------------------------------------------------------------------
# the local repository
# ---------------------------------------------------------------------------------------------------------

def test_local_repository_round_trips(tmp_path, survey):
    repo = LocalRepository(tmp_path / "repo")
    assert not repo.datasetExists("camera")
    with pytest.raises(DatasetNotFoundError, match="no dataset 'camera'"):
        repo.get("camera")
    # formats chosen by type, one file each, under the documented names
    config = _config(astrometryVisitOrder=3)
    assert repo.put(config, "jointcal_config").name == "jointcal_config.py"
    md = TaskMetadata()
    md["jointcal.chi2"] = 12.5
    md.add("jointcal.steps", 3)
    assert repo.put(md, "jointcal_metadata").name == "jointcal_metadata.metadata.json"
    assert repo.put({"a": [1, 2]}, "numbers").name == "numbers.json"
    cols = {"x": np.arange(5.0), "id": np.arange(5, dtype=np.int64)}
    assert repo.put(cols, "columns", visit=7).relative_to(repo.root).as_posix() == "columns/visit=7.npz"
    v = sorted(survey.visitSummaries)[0]
    summary = survey.visitSummaries[v]
    assert repo.put(summary, "visitSummary", visit=v).name == f"visit={v}.visitSummary.fits"
    assert repo.put(survey.camera, "camera").name == "camera.camera.fits"
    assert repo.put(summary.wcs[0], "jointcal_wcs", {"visit": v}, detector=1).name == f"detector=1,visit={v}.wcs.fits"

    back = repo.get("jointcal_config")
    assert type(back) is JointcalConfig and back.astrometryVisitOrder == 3 and back.doPhotometry is False
    assert back.compare(config, shortcut=False)
    assert repo.get("jointcal_metadata") == md and repo.get("jointcal_metadata").getArray("jointcal.steps") == [3]
    assert repo.get("numbers") == {"a": [1, 2]}
    got = repo.get("columns", visit=7)
    assert got.keys() == cols.keys() and np.array_equal(got["id"], cols["id"]) and got["id"].dtype == np.int64
    s2 = repo.get("visitSummary", {"visit": v})
    assert isinstance(s2, VisitSummary) and s2.visit == v
    assert np.array_equal(s2.detector, summary.detector) and np.array_equal(s2.bbox, summary.bbox)
    assert np.array_equal(s2.calibrationMean, summary.calibrationMean)
    assert s2.boresightRa == summary.boresightRa and abs(s2.taiNs - summary.taiNs) <= 0.5
    assert all(_wcsClose(a, b) for a, b in zip(s2.wcs, summary.wcs))
    cam = repo.get("camera")
    assert isinstance(cam, Camera) and len(cam) == len(survey.camera)
    assert np.allclose(cam[0].affine(), survey.camera[0].affine(), rtol=0, atol=1e-12)
    assert _wcsClose(repo.get("jointcal_wcs", visit=v, detector=1), summary.wcs[0])
    # a table (the refcat) goes through FITS losslessly
    repo.put(survey.refCat, "ref_cat")
    ref = repo.get("ref_cat")
    assert ref.colnames == survey.refCat.colnames
    assert np.array_equal(ref["coord_ra"], survey.refCat["coord_ra"])
    # bad data IDs and dataset names are refused, nothing written
    with pytest.raises(ValueError, match="cannot be used in a file name"):
        repo.put(cols, "columns", visit="../x")
    with pytest.raises(ValueError, match="invalid dataset type"):
        repo.put(cols, "a/b")
    # a DataRef is the repository bound to a data ID
    ref7 = repo.dataRef(visit=7)
    assert ref7.datasetExists("columns") and not ref7.datasetExists("columns", detector=1)
    assert np.array_equal(ref7.get("columns")["x"], cols["x"])


def test_put_backup_and_parents(tmp_path):
    parent = LocalRepository(tmp_path / "in")
    parent.put({"v": 1}, "thing")
    repo = LocalRepository(tmp_path / "out", parents=[parent])
    assert repo.datasetExists("thing") and repo.get("thing") == {"v": 1}
    assert repo.path("thing") is None  # it lives in the parent
    repo.put({"v": 2}, "thing")
    repo.put({"v": 3}, "thing", doBackup=True)
    repo.put({"v": 4}, "thing", doBackup=True)
    repo.put({"v": 5}, "thing")  # no backup: replaces
    assert repo.get("thing") == {"v": 5} and parent.get("thing") == {"v": 1}
    backups = repo.backups("thing")
    assert [p.name for p in backups] == ["thing.json~1", "thing.json~2"]
    assert [json.loads(p.read_text()) for p in backups] == [{"v": 2}, {"v": 3}]
    # a put that fails leaves the old dataset and no temporary file
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        repo.put(Unpicklable(), "thing")
    assert repo.get("thing") == {"v": 5}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["thing.json", "thing.json~1", "thing.json~2"]


# ---------------------------------------------------------------------------------------------------------
# write* members
# ---------------------------------------------------------------------------------------------------------

def test_write_config_mismatch_clobber_and_backup(tmp_path, caplog):
    repo = LocalRepository(tmp_path)
    JointcalTask(config=_config()).writeConfig(repo)
    assert (tmp_path / "jointcal_config.py").is_file()
    JointcalTask(config=_config()).writeConfig(repo)  # same config: accepted, nothing new
    assert repo.backups("jointcal_config") == []
    other = JointcalTask(config=_config(astrometryVisitOrder=4))
    with pytest.raises(TaskError, match="Config does not match the existing task config 'jointcal_config'"):
        other.writeConfig(repo)
    assert any("astrometryVisitOrder" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert repo.get("jointcal_config").astrometryVisitOrder == 5
    other.writeConfig(repo, clobber=True)
    assert repo.get("jointcal_config").astrometryVisitOrder == 4
    [backup] = repo.backups("jointcal_config")
    assert backup.name == "jointcal_config.py~1" and "astrometryVisitOrder=5" in backup.read_text()
    JointcalTask(config=_config(astrometryVisitOrder=3)).writeConfig(repo, clobber=True, doBackup=False)
    assert repo.get("jointcal_config").astrometryVisitOrder == 3 and len(repo.backups("jointcal_config")) == 1
    # an unreadable record names the fix
    (tmp_path / "jointcal_config.py").write_text("# diffcal-config-class: diffcal.jointcal.config.JointcalConfig\n"
                                                 "config.noSuchField = 1\n")
    with pytest.raises(AttributeError, match="consider using --clobber-config"):
        JointcalTask(config=_config()).writeConfig(repo)


def test_write_package_versions(tmp_path):
    repo = LocalRepository(tmp_path)
    task = JointcalTask(config=_config())
    task.writePackageVersions(repo)
    stored = repo.get("packages")
    assert stored["numpy"] == np.__version__ and "diffcal" in stored and "python" in stored
    task.writePackageVersions(repo)  # same versions: fine
    # a different recorded version is an error unless clobber
    text = json.loads((tmp_path / "packages.packages.json").read_text())
    text["numpy"] = "0.0.1"
    del text["python"]
    (tmp_path / "packages.packages.json").write_text(json.dumps(text))
    with pytest.raises(TaskError, match=r"Version mismatch \(numpy: 0\.0\.1 vs " + np.__version__.replace(".", r"\.")):
        task.writePackageVersions(repo)
    task.writePackageVersions(repo, clobber=True)
    assert repo.get("packages")["numpy"] == np.__version__
    assert json.loads(repo.backups("packages")[0].read_text())["numpy"] == "0.0.1"
    # missing packages are added to a matching record (with a backup)
    text = json.loads((tmp_path / "packages.packages.json").read_text())
    del text["python"]
    (tmp_path / "packages.packages.json").write_text(json.dumps(text))
    task.writePackageVersions(repo, dataset="packages")
    assert "python" in repo.get("packages") and len(repo.backups("packages")) == 2


class _SchemaConfig(Config):
    scale = Field(dtype=float, default=1.0, doc="unused")


class _SchemaTask(CmdLineTaskMixin, Task):
    ConfigClass = _SchemaConfig
    _DefaultName = "schemaTask"
    columns = (("id", np.int64), ("flux", np.float64))

    def getSchemaCatalogs(self):
        return {"src": Table(names=[c for c, _ in self.columns], dtype=[d for _, d in self.columns])}


def test_write_schemas_and_metadata(tmp_path, caplog):
    repo = LocalRepository(tmp_path)
    task = _SchemaTask()
    task.writeSchemas(repo)
    stored = repo.get("src_schema")
    assert stored.colnames == ["id", "flux"] and len(stored) == 0 and stored["id"].dtype == np.int64
    task.writeSchemas(repo)  # identical
    changed = _SchemaTask()
    changed.columns = (("id", np.int64), ("flux", np.float32))
    with pytest.raises(TaskError, match="New schema does not match the schema 'src_schema'"):
        changed.writeSchemas(repo)
    changed.writeSchemas(repo, clobber=True)
    assert repo.get("src_schema")["flux"].dtype == np.float32 and len(repo.backups("src_schema")) == 1
    assert JointcalTask(config=_config()).getAllSchemaCatalogs() == {}
    # metadata: the full metadata of the task tree, through a data reference
    task.metadata["answer"] = 42
    task.writeMetadata(repo.dataRef(visit=3))
    md = repo.get("schemaTask_metadata", visit=3)
    assert isinstance(md, TaskMetadata) and md["schemaTask.answer"] == 42
    # a failing put is only a warning (as in the reference)
    class BadRef:
        dataId = {"visit": 1}

        def put(self, *args, **kwargs):
            raise OSError("disk full")

    task.writeMetadata(BadRef())
    assert any("Could not persist metadata" in r.getMessage() and "disk full" in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------
# runDataRef, runQuantum, parseAndRun
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inputRepo(tmp_path_factory, survey):
    repo = LocalRepository(tmp_path_factory.mktemp("inputs"))
    visits = _populate(repo, survey)
    # what run() sees when it reads the same stored inputs
    tables = {v: repo.get("sourceTable_visit", visit=v) for v in visits}
    summaries = {v: repo.get("visitSummary", visit=v) for v in visits}
    reference = JointcalTask(config=_config()).run(tables, summaries, repo.get("camera"),
                                                   astrometryRefCat=repo.get("ref_cat"))
    return Struct(repo=repo, visits=visits, reference=reference)


def test_run_data_ref_matches_run(tmp_path, inputRepo):
    out = LocalRepository(tmp_path / "out", parents=[inputRepo.repo])
    task = JointcalTask(config=_config())
    result = task.runDataRef([out.dataRef(visit=v) for v in inputRepo.visits])
    ref = inputRepo.reference
    assert result.job["astrometry_final_chi2"] == ref.job["astrometry_final_chi2"]
    assert result.job["astrometry_final_ndof"] == ref.job["astrometry_final_ndof"]
    assert np.array_equal(result.astrometry.model.params, ref.astrometry.model.params)
    assert sorted(result.outputWcs) == sorted(ref.outputWcs) and len(result.outputWcs) == 8
    for (v, d), wcs in ref.outputWcs.items():
        assert _wcsClose(out.get("jointcal_wcs", visit=v, detector=d), wcs)
    assert out.get("jointcal_metrics") == json.loads(json.dumps(ref.job))
    assert not out.datasetExists("jointcal_photoCalib", visit=inputRepo.visits[0], detector=0)
    with pytest.raises(ValueError, match="two data references for visit"):
        task.runDataRef([out.dataRef(visit=inputRepo.visits[0])] * 2)
    with pytest.raises(ValueError, match="at least one"):
        task.runDataRef([])


def test_run_quantum_matches_run(tmp_path, inputRepo):
    out = LocalRepository(tmp_path / "out", parents=[inputRepo.repo])
    visits = inputRepo.visits
    inputRefs = Struct(
        inputSourceTableVisit=[DatasetRef("sourceTable_visit", {"visit": v}) for v in visits],
        inputVisitSummary=[DatasetRef("visitSummary", {"visit": v}) for v in visits],
        inputCamera=DatasetRef("camera"),
        astrometryRefCat=[DatasetRef("ref_cat")],
        photometryRefCat=None)
    outputRefs = Struct(outputWcs=[DatasetRef("jointcalSkyWcsCatalog", {"visit": v, "tract": 7}) for v in visits[:3]],
                        outputPhotoCalib=[], outputMetrics=DatasetRef("jointcal_metrics", {"tract": 7}))
    task = JointcalTask(config=_config())
    result = task.runQuantum(LocalQuantumContext(out, {"tract": 7}), inputRefs, outputRefs)
    ref = inputRepo.reference
    assert result.job["astrometry_final_chi2"] == ref.job["astrometry_final_chi2"]
    assert np.array_equal(result.astrometry.model.params, ref.astrometry.model.params)
    for v in visits[:3]:
        stored = out.get("jointcalSkyWcsCatalog", visit=v, tract=7)
        assert sorted(stored) == [0, 1]
        assert all(_wcsClose(stored[d], ref.outputWcs[(v, d)]) for d in stored)
    assert not out.datasetExists("jointcalSkyWcsCatalog", visit=visits[3], tract=7)
    assert out.get("jointcal_metrics", tract=7)["astrometry_final_ndof"] == ref.job["astrometry_final_ndof"]


def test_parse_and_run(tmp_path, survey, capsys):
    indir = survey.write(tmp_path / "in")
    outdir = tmp_path / "out"
    base = [str(indir), "--refcat", str(indir / "refcat.fits"), "--camera", str(indir / "camera.fits"),
            "-o", str(outdir), "-c", "doPhotometry=False"]
    res = JointcalTask.parseAndRun(base, doReturnResults=True)
    assert res.taskRunner is None and res.parsedCmd.config.doPhotometry is False
    [item] = res.resultList
    assert item.exitStatus == 0 and [r.dataId["visit"] for r in item.dataRef] == sorted(survey.sourceTables)
    # same numbers as run() on the inputs read from INPUT_DIR
    inputs = InputDirRepository(indir, refcat=indir / "refcat.fits", camera=indir / "camera.fits")
    visits = inputs.visits()
    expected = JointcalTask(config=_config()).run(
        {v: inputs.get("sourceTable_visit", visit=v) for v in visits},
        {v: inputs.get("visitSummary", visit=v) for v in visits}, inputs.get("camera"),
        astrometryRefCat=inputs.get("ref_cat"))
    assert item.result.job["astrometry_final_chi2"] == expected.job["astrometry_final_chi2"]
    out = LocalRepository(outdir)
    assert out.get("jointcal_config").compare(_config(), shortcut=False)
    md = out.get("jointcal_metadata")
    assert md["jointcal.astrometry_final_chi2"] == expected.job["astrometry_final_chi2"]
    assert out.get("packages")["numpy"] == np.__version__
    assert sorted(p.name for p in (outdir / "jointcal_wcs").iterdir()) == sorted(
        f"detector={d},visit={v}.wcs.fits" for v, d in expected.outputWcs)
    # a second run with another config fails on the stored config, unless clobbered (with a backup)
    with pytest.raises(TaskError, match="Config does not match"):
        JointcalTask.parseAndRun(base + ["-c", "astrometryVisitOrder=4"])
    res = JointcalTask.parseAndRun(base + ["-c", "astrometryVisitOrder=4", "--clobber-config", "--visits",
                                           str(visits[0]), str(visits[1])])
    assert res.resultList[0].exitStatus == 0 and not hasattr(res.resultList[0], "result")
    assert out.get("jointcal_config").astrometryVisitOrder == 4 and len(out.backups("jointcal_config")) == 1
    # a failing fit is logged with exit status 1, or raised with --doraise
    bad = base + ["-c", "astrometryVisitOrder=4", "-c", "astrometryRefObjLoader_missing=1"]
    with pytest.raises(Exception, match="no field"):
        JointcalTask.parseAndRun(bad)
    failing = [str(indir), "-o", str(outdir), "-c", "doPhotometry=False", "-c", "astrometryVisitOrder=4"]
    res = JointcalTask.parseAndRun(failing)  # no --refcat: run() raises
    assert res.resultList[0].exitStatus == 1
    with pytest.raises(ValueError, match="no astrometryRefCat"):
        JointcalTask.parseAndRun(failing + ["--doraise"])
    with pytest.raises(SystemExit):
        JointcalTask.parseAndRun([str(indir)])  # -o is required


def test_run_data_ref_with_photometry_writes_photocalibs(tmp_path, inputRepo):
    """The photometric fit's PhotoCalibs are stored per (visit, detector) as FITS and read back equal."""
    out = LocalRepository(tmp_path / "out", parents=[inputRepo.repo])
    config = _config(doPhotometry=True, photometryModel="simpleFlux")
    result = JointcalTask(config=config).runDataRef([out.dataRef(visit=v) for v in inputRepo.visits])
    assert len(result.outputPhotoCalib) == 8
    x, y = np.array([10.0, 1000.0]), np.array([20.0, 3000.0])
    for (v, d), pc in result.outputPhotoCalib.items():
        stored = out.get("jointcal_photoCalib", visit=v, detector=d)
        assert type(stored) is type(pc)
        np.testing.assert_array_equal(stored.getCalibration(x, y), pc.getCalibration(x, y))
        assert stored.getCalibrationErr() == pc.getCalibrationErr()
    files = [f for f in (tmp_path / "out").rglob("*") if f.is_file() and "photoCalib" in str(f)]
    assert len(files) == 8 and all(f.name.endswith(".photoCalib.fits") for f in files), files
    assert result.job["photometry_final_ndof"] > 0
