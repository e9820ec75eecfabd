"""Repository entry points of `JointcalTask`: ``parseAndRun``, ``runDataRef`` and ``runQuantum``.

`JointcalCmdLineMixin` (a base class of `JointcalTask`) adds to the generic members of
`diffcal.pipe.cmdline.CmdLineTaskMixin` (``writeConfig``, ``writeMetadata``, ``writePackageVersions``,
``writeSchemas``) the jointcal-specific parts; storage goes through the protocol of
`diffcal.pipe.repository` (``get``/``put``/``datasetExists``).

Dataset types
-------------
Inputs (what ``JointcalTask.run`` takes):

==========================  ===========================  ===================================================
dataset type                data ID                      object
==========================  ===========================  ===================================================
``sourceTable_visit``       ``visit``                    source table of one visit (any table `run` accepts)
``visitSummary``            ``visit``                    `VisitSummary`
``camera``                  none                         `Camera` (optional; needed by constrained models)
``astrometry_ref_cat``      none                         reference catalog table for astrometry; falls back
                                                         to ``ref_cat``
``photometry_ref_cat``      none                         same for photometry; falls back to ``ref_cat``
==========================  ===========================  ===================================================

Outputs of ``runDataRef``: ``jointcal_wcs`` per (``visit``, ``detector``) (a `TanSipWcs`),
``jointcal_photoCalib`` per (``visit``, ``detector``) when the photometric fit produced one, and
``jointcal_metrics`` (the ``job`` dict of metrics, no data ID). ``runQuantum`` writes, per visit, the mapping
detector -> WCS (resp. PhotoCalib) to the ``outputWcs`` (resp. ``outputPhotoCalib``) reference of that
visit, the analogue of the reference's per-visit ``jointcalSkyWcsCatalog``/``jointcalPhotoCalibCatalog``.

``parseAndRun`` reads an INPUT_DIR of ``diffcal jointcal`` through `InputDirRepository` (a read-only
repository) and writes into ``-o OUTDIR`` as a `diffcal.pipe.repository.LocalRepository` whose parent is the
input: ``jointcal_config.py``, ``packages.packages.json``, ``jointcal_metadata.metadata.json``,
``jointcal_metrics.json``, ``jointcal_wcs/detector=D,visit=V.wcs.fits``. (``--plots`` is accepted for
compatibility with ``diffcal jointcal`` and ignored.)

FITS formats registered here for a `LocalRepository`: ``.wcs.fits`` (a `TanSipWcs` as a header-only primary
HDU, 1-based CRPIX), ``.wcsmap.fits`` (a dict detector -> `TanSipWcs`: one header-only image HDU per detector,
``DETECTOR`` keyword), ``.visitSummary.fits`` (the visit-summary table of `readers.writeVisitSummary` plus
one ``WCS`` image HDU per detector) and ``.camera.fits`` (`readers.writeCamera`).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..pipe import Struct
from ..pipe.cmdline import CmdLineTaskMixin
from ..pipe.repository import DataRef, DatasetNotFoundError, Formatter, LocalRepository, registerFormatter
from .inputs import Camera, VisitSummary
from .wcs import TanSipWcs

__all__ = ["InputDirRepository", "JointcalCmdLineMixin"]

_METRICS = "jointcal_metrics"


# -- FITS formats of the jointcal types --------------------------------------------------------------------------

def _writeWcs(wcs: TanSipWcs, path: Path) -> None:
    from astropy.io import fits

    fits.PrimaryHDU(header=wcs.toFitsHeader()).writeto(path, output_verify="silentfix")


def _readWcs(path: Path) -> TanSipWcs:
    from astropy.io import fits

    with fits.open(path) as hdul:
        return TanSipWcs.fromFitsHeader(hdul[0].header, path=str(path))


def _isWcsMap(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, int) and isinstance(v, TanSipWcs) for k, v in obj.items())


def _writeWcsMap(wcsMap: dict[int, TanSipWcs], path: Path) -> None:
    from astropy.io import fits

    hdus: list[Any] = [fits.PrimaryHDU()]
    for detector in sorted(wcsMap):
        header = wcsMap[detector].toFitsHeader()
        header["DETECTOR"] = detector
        hdus.append(fits.ImageHDU(header=header, name="WCS"))
    fits.HDUList(hdus).writeto(path, output_verify="silentfix")


def _readWcsMap(path: Path) -> dict[int, TanSipWcs]:
    from astropy.io import fits

    with fits.open(path) as hdul:
        return {int(h.header["DETECTOR"]): TanSipWcs.fromFitsHeader(h.header, path=str(path)) for h in hdul[1:]}


def _writeVisitSummary(summary: VisitSummary, path: Path) -> None:
    from astropy.io import fits

    from .readers import writeVisitSummary

    writeVisitSummary(summary, path)
    with fits.open(path, mode="append") as hdul:
        for detector, wcs in zip(summary.detector.tolist(), summary.wcs):
            header = wcs.toFitsHeader()
            header["DETECTOR"] = detector
            hdul.append(fits.ImageHDU(header=header, name="WCS"))
        hdul.flush(output_verify="silentfix")


def _readVisitSummary(path: Path) -> VisitSummary:
    from astropy.io import fits

    from .readers import readVisitSummary

    with fits.open(path) as hdul:
        wcs = {int(h.header["DETECTOR"]): TanSipWcs.fromFitsHeader(h.header, path=str(path))
               for h in hdul if h.name == "WCS"}
    return readVisitSummary(path, wcs=wcs)


def _writeCamera(camera: Camera, path: Path) -> None:
    from .readers import writeCamera

    writeCamera(camera, path)


def _readCamera(path: Path) -> Camera:
    from .readers import readCamera

    return readCamera(path)


def _isPhotoCalib(obj: Any) -> bool:
    from .photocalib import PhotoCalib

    return isinstance(obj, PhotoCalib)


def _writePhotoCalib(photoCalib: Any, path: Path) -> None:
    photoCalib.writeFits(path)


def _readPhotoCalib(path: Path) -> Any:
    from .photocalib import PhotoCalib

    return PhotoCalib.readFits(path)


for _formatter in (
    Formatter(".wcs.fits", lambda o: isinstance(o, TanSipWcs), _writeWcs, _readWcs),
    Formatter(".photoCalib.fits", _isPhotoCalib, _writePhotoCalib, _readPhotoCalib),
    Formatter(".wcsmap.fits", _isWcsMap, _writeWcsMap, _readWcsMap),
    Formatter(".visitSummary.fits", lambda o: isinstance(o, VisitSummary), _writeVisitSummary, _readVisitSummary),
    Formatter(".camera.fits", lambda o: isinstance(o, Camera), _writeCamera, _readCamera),
):
    registerFormatter(_formatter)


# -- the INPUT_DIR of ``diffcal jointcal`` as a read-only repository ----------------------------------------------

class InputDirRepository:
    """The INPUT_DIR layout of ``diffcal jointcal`` seen through the repository protocol (read-only).

    Parameters
    ----------
    root : path-like
        Holds ``sourceTable-<visit>.parq``, ``visitSummary-<visit>.fits`` and ``calexp-<visit>-<detector>.fits``.
    refcat : path-like or sequence of them, optional
        Reference catalog shards, served as ``ref_cat`` (concatenated).
    camera : path-like, optional
        Camera file, served as ``camera``.

    ``sourceTable_visit`` and ``visitSummary`` take a ``visit`` data ID; ``camera`` and ``ref_cat`` none.
    ``put`` raises `PermissionError`.
    """

    _SOURCE_RE = re.compile(r"^sourceTable-(\d+)\.parq(?:uet)?$")

    def __init__(self, root: Any, refcat: Any = None, camera: Any = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"input directory {self.root} does not exist")
        if refcat is None:
            self.refcat: list[Path] = []
        elif isinstance(refcat, (str, Path)):
            self.refcat = [Path(refcat)]
        else:
            self.refcat = [Path(p) for p in refcat]
        self.camera = None if camera is None else Path(camera)

    def __repr__(self) -> str:
        return f"InputDirRepository({str(self.root)!r})"

    def visits(self) -> list[int]:
        """Visits with a source table, sorted."""
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := self._SOURCE_RE.match(p.name)))

    def _sourcePath(self, visit: int) -> Path | None:
        for ext in (".parq", ".parquet"):
            path = self.root / f"sourceTable-{visit}{ext}"
            if path.is_file():
                return path
        return None

    def datasetExists(self, datasetType: str, dataId: Mapping[str, Any] | None = None, **dataIdExtra: Any) -> bool:
        dataId = {**(dataId or {}), **dataIdExtra}
        if datasetType == "sourceTable_visit" and "visit" in dataId:
            return self._sourcePath(int(dataId["visit"])) is not None
        if datasetType == "visitSummary" and "visit" in dataId:
            return (self.root / f"visitSummary-{int(dataId['visit'])}.fits").is_file()
        if datasetType == "camera" and not dataId:
            return self.camera is not None
        if datasetType == "ref_cat" and not dataId:
            return bool(self.refcat)
        return False

    def get(self, datasetType: str, dataId: Mapping[str, Any] | None = None, **dataIdExtra: Any) -> Any:
        from .readers import readCamera, readReferenceCatalog, readSourceTable, readVisitSummary

        dataId = {**(dataId or {}), **dataIdExtra}
        if not self.datasetExists(datasetType, dataId):
            raise DatasetNotFoundError(f"no dataset {datasetType!r} with data ID {dataId} in {self.root}")
        if datasetType == "sourceTable_visit":
            return readSourceTable(self._sourcePath(int(dataId["visit"])))
        if datasetType == "visitSummary":
            return readVisitSummary(self.root / f"visitSummary-{int(dataId['visit'])}.fits", calexpDir=self.root)
        if datasetType == "camera":
            return readCamera(self.camera)
        return readReferenceCatalog(self.refcat)

    def put(self, obj: Any, datasetType: str, dataId: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        raise PermissionError(f"{self!r} is read-only (cannot put {datasetType!r})")


# -- the mixin ---------------------------------------------------------------------------------------------------

def _getOptional(butler: Any, *datasetTypes: str) -> Any:
    """The first of ``datasetTypes`` that exists in ``butler`` (no data ID), else None."""
    for name in datasetTypes:
        if butler.datasetExists(name):
            return butler.get(name)
    return None


def _concatRefCats(refCats: Any) -> Any:
    """One reference table from a table or a list of shards (None and empty lists -> None)."""
    if refCats is None or not isinstance(refCats, (list, tuple)):
        return refCats
    shards = [r for r in refCats if r is not None]
    if not shards:
        return None
    if len(shards) == 1:
        return shards[0]
    from astropy.table import vstack

    return vstack(shards, metadata_conflicts="silent")


class JointcalCmdLineMixin(CmdLineTaskMixin):
    """``parseAndRun``, ``runDataRef`` and ``runQuantum`` for `JointcalTask` (see the module docstring)."""

    # -- parseAndRun hooks ---------------------------------------------------------------------------------

    @classmethod
    def _makeArgumentParser(cls) -> argparse.ArgumentParser:
        from .cli import makeArgumentParser

        return makeArgumentParser()

    @classmethod
    def _applyOverrides(cls, config: Any, parsedCmd: argparse.Namespace) -> None:
        from .cli import applyConfigArguments

        applyConfigArguments(config, parsedCmd)

    @classmethod
    def _makeRepositories(cls, parsedCmd: argparse.Namespace) -> LocalRepository:
        inputs = InputDirRepository(parsedCmd.input_dir, refcat=parsedCmd.refcat, camera=parsedCmd.camera)
        return LocalRepository(parsedCmd.output, parents=[inputs])

    @classmethod
    def _getTargetList(cls, parsedCmd: argparse.Namespace, butler: Any) -> list[tuple[Any, dict[str, Any]]]:
        """One target: the data references of all visits of INPUT_DIR (or of ``--visits``)."""
        inputs = butler.parents[0]
        available = inputs.visits()
        if parsedCmd.visits:
            missing = sorted(set(parsedCmd.visits) - set(available))
            if missing:
                raise FileNotFoundError(f"no sourceTable-<visit>.parq for visits {missing} in {inputs.root}")
            available = sorted(set(parsedCmd.visits))
        if not available:
            raise FileNotFoundError(f"no sourceTable-<visit>.parq file in {inputs.root}")
        return [([butler.dataRef(visit=v) for v in available], {})]

    @staticmethod
    def _metadataRef(target: Any) -> Any:
        """The metadata of a run over many visits is one dataset without data ID (``jointcal_metadata``)."""
        if isinstance(target, (list, tuple)) and target:
            return DataRef(target[0].getButler(), {})
        return target

    # -- runDataRef ------------------------------------------------------------------------------------------

    def runDataRef(self, dataRefs: Sequence[Any]) -> Struct:
        """Fit the visits of ``dataRefs`` and write the outputs through them.

        Parameters
        ----------
        dataRefs : sequence of data references
            One per visit (``dataRef.dataId["visit"]``), each with ``get("sourceTable_visit")`` and
            ``get("visitSummary")``; ``dataRefs[0].getButler()`` provides the optional ``camera`` and the
            reference catalogs (``astrometry_ref_cat`` / ``photometry_ref_cat``, else ``ref_cat``).

        Returns
        -------
        result : `diffcal.pipe.Struct`
            The result of `JointcalTask.run`. Written: ``jointcal_wcs`` and ``jointcal_photoCalib`` per
            (visit, detector) through the data reference of the visit, and ``jointcal_metrics``.

        Raises
        ------
        ValueError
            No data reference, or two for the same visit.
        """
        if not dataRefs:
            raise ValueError("runDataRef needs at least one data reference")
        byVisit: dict[int, Any] = {}
        for ref in dataRefs:
            visit = int(ref.dataId["visit"])
            if visit in byVisit:
                raise ValueError(f"two data references for visit {visit}")
            byVisit[visit] = ref
        butler = dataRefs[0].getButler()
        tables = {v: ref.get("sourceTable_visit") for v, ref in byVisit.items()}
        summaries = {v: ref.get("visitSummary") for v, ref in byVisit.items()}
        camera = _getOptional(butler, "camera")
        astrometryRefCat = _getOptional(butler, "astrometry_ref_cat", "ref_cat") if self.config.doAstrometry else None
        photometryRefCat = _getOptional(butler, "photometry_ref_cat", "ref_cat") if self.config.doPhotometry else None
        result = self.run(tables, summaries, camera, astrometryRefCat=astrometryRefCat,  # type: ignore[attr-defined]
                          photometryRefCat=photometryRefCat)
        for (visit, detector), wcs in sorted(result.outputWcs.items()):
            byVisit[visit].put(wcs, "jointcal_wcs", detector=detector)
        for (visit, detector), photoCalib in sorted(getattr(result, "outputPhotoCalib", {}).items()):
            byVisit[visit].put(photoCalib, "jointcal_photoCalib", detector=detector)
        butler.put(dict(result.job), _METRICS)
        return result

    # -- runQuantum ----------------------------------------------------------------------------------------------

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> Struct:
        """Read the inputs of one quantum, run, and write the outputs (the Gen3 entry point).

        Parameters
        ----------
        butlerQC : quantum context
            ``get(refs)`` / ``put(obj, ref)`` (e.g. `diffcal.pipe.repository.LocalQuantumContext`);
            ``butlerQC.quantum.dataId.get("tract", 0)`` names the tract (debug-file names only).
        inputRefs : `Struct` or mapping
            ``inputSourceTableVisit`` and ``inputVisitSummary`` (lists of dataset references, one per visit),
            ``inputCamera`` (a reference or None), ``astrometryRefCat`` and ``photometryRefCat`` (a reference, a
            list of shard references, or None/absent).
        outputRefs : `Struct` or mapping
            ``outputWcs`` and ``outputPhotoCalib``: lists of references whose ``dataId["visit"]`` names the
            visit whose detector -> WCS (PhotoCalib) mapping is written there; ``outputMetrics`` (optional): a
            reference for the ``job`` metrics dict. Visits without an output reference are not written.

        Returns
        -------
        result : `diffcal.pipe.Struct`
            The result of `JointcalTask.run`.
        """
        refs = inputRefs.getDict() if isinstance(inputRefs, Struct) else dict(inputRefs)
        outs = outputRefs.getDict() if isinstance(outputRefs, Struct) else dict(outputRefs)
        inputs = butlerQC.get(refs)
        quantum = getattr(butlerQC, "quantum", None)
        tract = int(getattr(quantum, "dataId", {}).get("tract", 0)) if quantum is not None else 0
        astrometryRefCat = _concatRefCats(inputs.get("astrometryRefCat")) if self.config.doAstrometry else None
        photometryRefCat = _concatRefCats(inputs.get("photometryRefCat")) if self.config.doPhotometry else None
        result = self.run(inputs["inputSourceTableVisit"], inputs["inputVisitSummary"],  # type: ignore[attr-defined]
                          inputs.get("inputCamera"), astrometryRefCat=astrometryRefCat,
                          photometryRefCat=photometryRefCat, tract=tract)
        self._putPerVisit(butlerQC, result.outputWcs, outs.get("outputWcs"))
        self._putPerVisit(butlerQC, getattr(result, "outputPhotoCalib", {}), outs.get("outputPhotoCalib"))
        if outs.get("outputMetrics") is not None:
            butlerQC.put(dict(result.job), outs["outputMetrics"])
        return result

    @staticmethod
    def _putPerVisit(butlerQC: Any, perDetector: Mapping[tuple[int, int], Any], refs: Any) -> None:
        """Write ``{detector: value}`` of each visit to the output reference of that visit."""
        if not perDetector or not refs:
            return
        byVisit: dict[int, dict[int, Any]] = {}
        for (visit, detector), value in sorted(perDetector.items()):
            byVisit.setdefault(int(visit), {})[int(detector)] = value
        for ref in refs:
            visit = int(ref.dataId["visit"])
            if visit in byVisit:
                butlerQC.put(byVisit[visit], ref)

