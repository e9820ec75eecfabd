"""`JointcalTask`: joint astrometric and photometric calibration of many visits.

Run sequence (spec section 2): load and select sources per visit and detector -> sky preparation (common
tangent point, bounding circle, fit epoch) -> for the astrometric fit: association (measured -> fitted stars),
reference catalog (selection, epoch propagation, errors) and matching, ``prepareFittedStars``, model
construction, the fit sequence (``DistortionsVisit`` [constrained], ``Distortions``, ``Positions``,
``Distortions Positions``, then ``_iterate_fit`` with outlier rejection) and the output WCS per
(visit, detector); then the photometric fit (`diffcal.jointcal.photometry`: a fresh association, photometric
reference fluxes, the photometric model, its fit sequence and one `PhotoCalib` per (visit, detector)).
Progress is logged as ``<step> chi2/ndof : <chi2>/<ndof>=<ratio>`` like the reference.

Deliberate differences from the reference ``lsst.jointcal.JointcalTask``:

* Inputs are tables and `VisitSummary` objects (or the files read by `diffcal.jointcal.readers`), not butler
  datasets; reference catalogs are tables (see `diffcal.jointcal.inputs`); the bounding circle restricts
  them to the observed area.
* Outputs are returned as plain Python: ``outputWcs[(visit, detector)]`` is a FITS TAN-SIP `TanSipWcs`
  fitted to the model (with its accuracy in ``wcsAccuracy``), and the metrics are a ``dict``.
* ``_check_star_lists`` checks the collected reference list like the reference (quirk 11) and additionally
  warns when no reference star matched.
* The star-count check (``minMeasuredStarsPerCcd``/``minRefStarsPerCcd``) runs once per fit, after the
  model is built, with one summary warning (naming the CcdImages) instead of one line per CcdImage.
* Photometry: sources and reference stars with non-finite or non-positive fluxes or flux errors are dropped
  (and counted) before association; ``PhotoCalib`` objects are `diffcal.jointcal.photocalib.PhotoCalib`.
"""

from __future__ import annotations

import cProfile
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..pipe import FieldValidationError, Struct, Task, TaskError, timeMethod
from .config import JointcalConfig
from .inputs import Camera, VisitSummary, columnTable, julianEpochFromMjd, resolveColumn
from .models import AstrometryModel
from .repository import JointcalCmdLineMixin
from .wcs import gnomonicDeproject

__all__ = ["JointcalTask", "MinimizeResult", "Chi2Statistic"]

_MAS_TO_DEG = 1.0 / 3.6e6


class MinimizeResult:
    """Return codes of the fitter's ``minimize``."""

    Converged = 0
    Chi2Increased = 1
    NonFinite = 2
    Failed = 3


class Chi2Statistic:
    """chi2 and number of degrees of freedom; ``str`` is the reference's ``chi2/ndof : c/n=r``."""

    def __init__(self, chi2: float, ndof: int) -> None:
        self.chi2 = float(chi2)
        self.ndof = int(ndof)

    def __str__(self) -> str:
        ratio = self.chi2 / self.ndof if self.ndof != 0 else math.inf
        return f"chi2/ndof : {self.chi2:g}/{self.ndof}={ratio:g}"

    def __repr__(self) -> str:
        return f"Chi2Statistic({self.chi2!r}, {self.ndof!r})"


def _forwardLog(log: Any, records: Sequence[tuple[int, str]]) -> None:
    for level, message in records:
        log.log(level, "%s", message)


class JointcalTask(JointcalCmdLineMixin, Task):
    """Astrometrically calibrate many visits jointly.

    Parameters
    ----------
    config : `JointcalConfig`, optional
    name, parentTask, log :
        See `diffcal.pipe.Task`.
    """

    ConfigClass = JointcalConfig
    _DefaultName = "jointcal"

    def __init__(self, config: JointcalConfig | None = None, name: str | None = None,
                 parentTask: Task | None = None, log: Any = None) -> None:
        super().__init__(config, name, parentTask, log)
        self.makeSubtask("sourceSelector")
        if self.config.doAstrometry:
            self.makeSubtask("astrometryReferenceSelector")
        if self.config.doPhotometry:
            self.makeSubtask("photometryReferenceSelector")
        self.job: dict[str, Any] = {}
        self._lastData: Struct | None = None
        self._tract = 0

    # ------------------------------------------------------------------------------------------------
    # public entry point
    # ------------------------------------------------------------------------------------------------

    @timeMethod
    def run(self, inputSourceTableVisit: Sequence[Any] | Mapping[int, Any],
            inputVisitSummary: Sequence[VisitSummary] | Mapping[int, VisitSummary],
            inputCamera: Camera | None = None, *, astrometryRefCat: Any = None, photometryRefCat: Any = None,
            tract: int = 0) -> Struct:
        """Fit the astrometry and/or the photometry of a set of visits.

        Parameters
        ----------
        inputSourceTableVisit : sequence or mapping of tables
            One source table per visit (see `diffcal.jointcal.inputs`).
        inputVisitSummary : sequence or mapping of `VisitSummary`
            One summary per visit; paired with the tables by visit id.
        inputCamera : `Camera`, optional
            Detector geometry (required by the constrained astrometric model).
        astrometryRefCat, photometryRefCat : table, optional
            Reference catalogs (required for the fits that are enabled).
        tract : `int`
            Identifier used in debug-file names only.

        Returns
        -------
        result : `diffcal.pipe.Struct`
            ``outputWcs``: dict ``(visit, detector) -> TanSipWcs``; ``wcsAccuracy``: dict of the TAN-SIP
            approximation errors (an order-0 mapping gets the input WCS's local CD matrix moved to the fitted
            position, flagged ``constant_mapping``); ``outputPhotoCalib``: dict ``(visit, detector) ->
            PhotoCalib`` (CcdImages with data, sorted); ``job``: metrics dict (``astrometry_matched_fittedStars``,
            ..., ``astrometry_final_chi2``, ``astrometry_final_ndof`` and the same ``photometry_*``);
            ``astrometry``: a Struct with the ``model`` (`AstrometryModel`), ``associations``, ``fitter``,
            ``chi2History`` (list of (label, chi2, ndof)), ``finalChi2`` and ``outliers`` (measurement and
            reference outliers rejected); ``photometry``: the same for the photometric fit (``model`` is a
            `diffcal.jointcal.photometry.PhotometryModel`) plus ``rejectedBadFluxes`` (sources, reference
            stars dropped for non-finite or non-positive fluxes/errors), or None.

        Raises
        ------
        diffcal.pipe.TaskError
            (a RuntimeError) "No data to process" when no source is selected, and other unrecoverable
            input problems.
        ValueError
            Malformed inputs (missing columns, NaN centroids, unknown detectors...).
        lsst.pex.config.FieldValidationError
            A reference catalog without coordinate errors and no ``astrometryReferenceErr``.
        RuntimeError, FloatingPointError
            A fit that fails (see ``_iterate_fit``).
        """
        self.job = {}
        self._tract = tract
        profile = self._profile("load")
        data = self._loadData(inputSourceTableVisit, inputVisitSummary, inputCamera)
        self._lastData = data
        self._prepSky(data)
        self._endProfile(profile)
        result = Struct(outputWcs={}, wcsAccuracy={}, outputPhotoCalib={}, job=self.job, astrometry=None,
                        photometry=None)
        if self.config.doAstrometry:
            if astrometryRefCat is None:
                raise ValueError("doAstrometry is set but no astrometryRefCat was given")
            profile = self._profile("astrometry")
            astrometry = self._doLoadRefcatAndFit(data, astrometryRefCat)
            self._endProfile(profile)
            result.astrometry = astrometry
            result.outputWcs, result.wcsAccuracy = self._makeOutputWcs(astrometry.model)
        if self.config.doPhotometry:
            if photometryRefCat is None:
                raise ValueError("doPhotometry is set but no photometryRefCat was given")
            from .photometry import fitPhotometry

            profile = self._profile("photometry")
            photometry = fitPhotometry(self, data, photometryRefCat)
            self._endProfile(profile)
            result.photometry = photometry
            result.outputPhotoCalib = photometry.photoCalib
        for key, value in self.job.items():
            self.metadata[key] = value
        return result

    # ------------------------------------------------------------------------------------------------
    # loading
    # ------------------------------------------------------------------------------------------------

    def extractDetectorCatalog(self, table: Any, detectorId: int) -> dict[str, np.ndarray]:
        """The rows of one detector of a visit source table, with the reference's standard column names.

        No selection is applied. Columns: ``id`` (``sourceId``, or the ``id`` index of older tables),
        ``centroid_x``/``centroid_y`` (float64, pixels), ``centroid_xErr``/``centroid_yErr`` (float32),
        ``shape_xx``/``shape_yy``/``shape_xy`` (pixel^2, from ``ixx``.. or ``Ixx``..),
        ``flux_instFlux``/``flux_instFluxErr`` (from ``<sourceFluxType>_instFlux``/``Err``), ``detector``.

        Raises
        ------
        ValueError
            A needed column is missing.
        """
        cols = columnTable(table)
        flux = f"{self.config.sourceFluxType}_instFlux"
        spec = [("id", "sourceId"), ("centroid_x", "x"), ("centroid_y", "y"), ("centroid_xErr", "xErr"),
                ("centroid_yErr", "yErr"), ("shape_xx", "ixx"), ("shape_yy", "iyy"), ("shape_xy", "ixy"),
                ("flux_instFlux", flux), ("flux_instFluxErr", flux + "Err"), ("detector", "detector")]
        det = resolveColumn(cols, "detector")
        if det is None:
            raise ValueError("the source table has no 'detector' column")
        rows = np.flatnonzero(np.asarray(cols[det]) == int(detectorId))
        out = {}
        for new, old in spec:
            c = resolveColumn(cols, old)
            if c is None and old == "sourceId":
                c = resolveColumn(cols, "id")
            if c is None:
                raise ValueError(f"the source table has no column {old!r}")
            values = np.asarray(cols[c])[rows]
            if new in ("centroid_xErr", "centroid_yErr"):
                values = values.astype(np.float32)
            out[new] = values
        return out

    def _pairInputs(self, tables: Any, summaries: Any) -> list[tuple[VisitSummary, dict[str, np.ndarray]]]:
        if isinstance(summaries, Mapping):
            summaryList = [summaries[k] for k in summaries]
        else:
            summaryList = list(summaries)
        for s in summaryList:
            if not isinstance(s, VisitSummary):
                raise TypeError(f"inputVisitSummary entries must be VisitSummary, got {type(s).__name__}")
        byVisit = {s.visit: s for s in summaryList}
        if len(byVisit) != len(summaryList):
            raise ValueError("inputVisitSummary has duplicate visits")
        if isinstance(tables, Mapping):
            tableItems = [(int(k), columnTable(v)) for k, v in tables.items()]
        else:
            tableItems = []
            for i, t in enumerate(tables):
                cols = columnTable(t)
                vcol = resolveColumn(cols, "visit")
                if vcol is not None and len(cols[vcol]) > 0:
                    visits = np.unique(np.asarray(cols[vcol]))
                    if visits.size != 1:
                        raise ValueError(f"source table #{i} holds several visits {visits.tolist()}")
                    tableItems.append((int(visits[0]), cols))
                elif i < len(summaryList):
                    tableItems.append((summaryList[i].visit, cols))
                else:
                    raise ValueError(f"source table #{i} has no visit column and no matching visit summary")
        pairs = []
        for visit, cols in tableItems:
            if visit not in byVisit:
                raise ValueError(f"source table of visit {visit} has no visit summary (have {sorted(byVisit)})")
            pairs.append((byVisit[visit], cols))
        missing = sorted(set(byVisit) - {v for v, _ in tableItems})
        if missing:
            self.log.warning("Visit summaries without a source table are ignored: visits %s", missing)
        return pairs

    def _loadData(self, tables: Any, summaries: Any, camera: Camera | None) -> Struct:
        """Select sources and build the per-CcdImage arrays (spec 2.1)."""
        cfg = self.config
        flux = f"{cfg.sourceFluxType}_instFlux"
        fluxErr = f"{cfg.sourceFluxType}_instFluxErr"
        ccd: dict[str, list] = {k: [] for k in ("visit", "detector", "bbox", "wcs", "epoch", "bra", "bdec", "cmean",
                                                "cerr", "focal", "filter")}
        src: dict[str, list] = {k: [] for k in ("ccd", "sourceId", "x", "y", "xErr", "yErr", "ixx", "iyy", "ixy",
                                                "flux", "fluxErr")}
        dropped: list[str] = []
        noCamera: list[int] = []
        for summary, cols in self._pairInputs(tables, summaries):
            where = f"visit {summary.visit}: "
            n = len(next(iter(cols.values()))) if cols else 0
            if n == 0:
                self.log.warning("Source table of visit %d is empty: visit skipped", summary.visit)
                continue
            need = {}
            for name in ("detector", "sourceId", "x", "y", "xErr", "yErr", "ixx", "iyy", "ixy", flux, fluxErr):
                c = resolveColumn(cols, name)
                if c is None and name == "sourceId":
                    c = resolveColumn(cols, "id")
                if c is None:
                    raise ValueError(f"{where}the source table has no column {name!r}"
                                     + (" (check sourceFluxType)" if name in (flux, fluxErr) else ""))
                need[name] = np.asarray(cols[c])
            mask = self.sourceSelector.run(cols, where=where)
            if not mask.any():
                self.log.warning("No source selected in visit %d: visit skipped", summary.visit)
                continue
            det = need["detector"].astype(np.int64)
            known = set(summary.detector.tolist())
            unknown = sorted(set(np.unique(det[mask]).tolist()) - known)
            if unknown:
                raise ValueError(f"{where}selected sources on detectors {unknown} that are not in the visit summary")
            for row, d in enumerate(summary.detector.tolist()):
                sel = np.flatnonzero(mask & (det == d))
                if sel.size < max(cfg.minSelectedSourcesPerDetector, 1):
                    dropped.append(f"(visit {summary.visit}, detector {d}: {sel.size} sources)")
                    continue
                bad = ~(np.isfinite(need["x"][sel].astype(float)) & np.isfinite(need["y"][sel].astype(float)))
                if bad.any():
                    raise ValueError(f"{where}detector {d}: {int(bad.sum())} selected sources have non-finite "
                                     f"x/y centroids (e.g. sourceId {need['sourceId'][sel][bad][0]})")
                k = len(ccd["visit"])
                ccd["visit"].append(summary.visit)
                ccd["detector"].append(d)
                ccd["bbox"].append(summary.bbox[row].astype(float))
                ccd["wcs"].append(summary.wcs[row])
                ccd["epoch"].append(summary.epoch)
                ccd["bra"].append(summary.boresightRa)
                ccd["bdec"].append(summary.boresightDec)
                ccd["cmean"].append(summary.calibrationMean[row])
                ccd["cerr"].append(summary.calibrationErr[row])
                ccd["filter"].append(summary.physicalFilter)
                if camera is not None and d in camera:
                    ccd["focal"].append(camera[d].affine())
                else:
                    ccd["focal"].append(np.full(6, np.nan))
                    if camera is not None:
                        noCamera.append(d)
                src["ccd"].append(np.full(sel.size, k, dtype=np.int64))
                src["sourceId"].append(need["sourceId"][sel].astype(np.int64))
                for name, key in (("x", "x"), ("y", "y"), ("xErr", "xErr"), ("yErr", "yErr"), ("ixx", "ixx"),
                                  ("iyy", "iyy"), ("ixy", "ixy"), (flux, "flux"), (fluxErr, "fluxErr")):
                    src[key].append(need[name][sel].astype(float))
        if dropped:
            self.log.warning("Dropped %d detectors with fewer than %d selected sources: %s", len(dropped),
                             max(cfg.minSelectedSourcesPerDetector, 1), ", ".join(dropped))
        if noCamera:
            self.log.warning("Detectors %s are not in the camera: no focal-plane position", sorted(set(noCamera)))
        if not ccd["visit"]:
            raise TaskError("No data to process: no source was selected in any visit and detector "
                            "(check the source selector configuration and the input tables)")
        arrays = {k: (np.concatenate(v) if k in src else None) for k, v in src.items()}
        return Struct(
            visit=np.array(ccd["visit"], dtype=np.int64), detector=np.array(ccd["detector"], dtype=np.int64),
            bbox=np.array(ccd["bbox"]), wcs=ccd["wcs"], epoch=np.array(ccd["epoch"]),
            boresightRa=np.array(ccd["bra"]), boresightDec=np.array(ccd["bdec"]), calibMean=np.array(ccd["cmean"]),
            calibErr=np.array(ccd["cerr"]), pixToFocal=np.array(ccd["focal"]), physicalFilter=ccd["filter"],
            sources=arrays, camera=camera)

    # ------------------------------------------------------------------------------------------------
    # sky preparation
    # ------------------------------------------------------------------------------------------------

    def _makeAssociations(self, data: Struct) -> Any:
        from .._core import _jointcal

        s = data.sources
        assoc = _jointcal.Associations(
            data.visit, data.detector, data.bbox, [w.native() for w in data.wcs], data.epoch, data.boresightRa,
            data.boresightDec, data.calibMean, data.calibErr, data.pixToFocal, s["ccd"], s["sourceId"], s["x"],
            s["y"], s["xErr"], s["yErr"], s["ixx"], s["iyy"], s["ixy"], s["flux"], s["fluxErr"])
        _forwardLog(self.log, assoc.take_log())
        return assoc

    def _prepSky(self, data: Struct) -> None:
        """Common tangent point, bounding circle, default filter and fit epoch (spec 2.2)."""
        assoc = self._makeAssociations(data)
        data.associations = assoc
        ctp = assoc.common_tangent_point
        data.commonTangentPoint = ctp
        data.epoch = assoc.epoch
        data.fitEpoch = float(np.mean(data.epoch)) if np.ndim(data.epoch) else float(data.epoch)
        # bounding circle: ccd corners -> CTP box -> RA/Dec box -> spherical polygon centroid and radius
        from .wcs import gnomonicProject

        xs, ys = [], []
        for i, w in enumerate(data.wcs):
            x0, y0, x1, y1 = data.bbox[i]
            ra, dec = w.pixelToSky([x0, x1, x1, x0], [y0, y0, y1, y1])
            px, py = gnomonicProject(ctp[0], ctp[1], ra, dec)
            xs.append(px)
            ys.append(py)
        xs, ys = np.concatenate(xs), np.concatenate(ys)
        bx = [np.nanmin(xs), np.nanmax(xs), np.nanmax(xs), np.nanmin(xs)]
        by = [np.nanmin(ys), np.nanmin(ys), np.nanmax(ys), np.nanmax(ys)]
        bra, bdec = gnomonicDeproject(ctp[0], ctp[1], bx, by)
        # RA/Dec box corners (RA relative to the CTP to cope with RA = 0)
        rel = (bra - ctp[0] + 180.0) % 360.0 - 180.0
        ra_lo, ra_hi = ctp[0] + rel.min(), ctp[0] + rel.max()
        dec_lo, dec_hi = bdec.min(), bdec.max()
        cra = np.radians([ra_lo, ra_hi, ra_hi, ra_lo])
        cdec = np.radians([dec_lo, dec_lo, dec_hi, dec_hi])
        vec = np.stack([np.cos(cdec) * np.cos(cra), np.cos(cdec) * np.sin(cra), np.sin(cdec)], axis=1)
        centre = vec.sum(axis=0)
        centre /= np.linalg.norm(centre)
        radius = float(np.max(np.arccos(np.clip(vec @ centre, -1.0, 1.0)))) + 1e-8
        data.boundingCircle = (float(np.degrees(math.atan2(centre[1], centre[0])) % 360.0),
                               float(np.degrees(math.asin(centre[2]))), float(np.degrees(radius)))
        filters = Counter(data.physicalFilter)
        data.defaultFilter = filters.most_common(1)[0][0]
        if len(filters) > 1:
            self.log.warning("Several physical filters in the input: %s; using %s", dict(filters), data.defaultFilter)
        self.log.info("Common tangent point (%.6f, %.6f) deg, fit epoch %.5f, %d CcdImages in %d visits, "
                      "bounding circle radius %.4f deg", ctp[0], ctp[1], assoc.epoch, len(data.visit),
                      len(set(data.visit.tolist())), data.boundingCircle[2])

    # ------------------------------------------------------------------------------------------------
    # reference catalog
    # ------------------------------------------------------------------------------------------------

    def _loadReferenceCatalog(self, refCat: Any, data: Struct, *, photometry: bool = False) -> dict[str, Any]:
        """Select, restrict to the bounding circle, move to the fit epoch, and compute errors."""
        cfg = self.config
        refConfig = cfg.photometryReference if photometry else cfg.astrometryReference
        selector = self.photometryReferenceSelector if photometry else self.astrometryReferenceSelector
        what = "photometry" if photometry else "astrometry"
        cols = columnTable(refCat)
        for name in ("coord_ra", "coord_dec"):
            if name not in cols:
                raise ValueError(f"the {what} reference catalog has no column {name!r}")
        mask = selector.run(cols, where=f"{what} reference catalog: ")
        ra = np.degrees(np.asarray(cols["coord_ra"], float))
        dec = np.degrees(np.asarray(cols["coord_dec"], float))
        # restrict to the bounding circle
        cra, cdec, crad = data.boundingCircle
        c1 = np.radians(cdec)
        d = np.radians(dec)
        cosSep = np.sin(c1) * np.sin(d) + np.cos(c1) * np.cos(d) * np.cos(np.radians(ra - cra))
        with np.errstate(invalid="ignore"):
            mask &= cosSep >= math.cos(math.radians(crad))
        idx = np.flatnonzero(mask)
        ra, dec = ra[idx], dec[idx]
        n = idx.size
        # flux field
        band = data.defaultFilter
        field = refConfig.anyFilterMapsToThis or refConfig.filterMap.get(band) or band.split(".")[0]
        fcol, ecol = f"{field}_flux", f"{field}_fluxErr"
        if fcol in cols:
            flux = np.asarray(cols[fcol], float)[idx]
            fluxErr = np.asarray(cols[ecol], float)[idx] if ecol in cols else np.full(n, np.nan)
        elif photometry:
            raise ValueError(f"the photometry reference catalog has no flux column {fcol!r}")
        else:
            self.log.info("No flux column %r in the astrometry reference catalog; reference fluxes are not used by "
                          "the astrometric fit", fcol)
            flux = np.full(n, np.nan)
            fluxErr = np.full(n, np.nan)
        hasPm = "pm_ra" in cols and "pm_dec" in cols
        if refConfig.requireProperMotion and not hasPm:
            raise RuntimeError(f"the {what} reference catalog has no proper motions (pm_ra/pm_dec) but "
                               f"{what}Reference.requireProperMotion is set")
        raErr = np.asarray(cols["coord_raErr"], float)[idx] if "coord_raErr" in cols else None
        decErr = np.asarray(cols["coord_decErr"], float)[idx] if "coord_decErr" in cols else None
        pm = None
        if hasPm:
            pmRa = np.asarray(cols["pm_ra"], float)[idx]
            pmDec = np.asarray(cols["pm_dec"], float)[idx]
            pmRaErr = np.asarray(cols.get("pm_raErr", np.zeros(len(cols["pm_ra"]))), float)[idx]
            pmDecErr = np.asarray(cols.get("pm_decErr", np.zeros(len(cols["pm_dec"]))), float)[idx]
            if "epoch" not in cols:
                raise ValueError(f"the {what} reference catalog has proper motions but no 'epoch' column "
                                 "(MJD TAI of the positions)")
            refEpoch = julianEpochFromMjd(np.asarray(cols["epoch"], float)[idx])
            dt = data.fitEpoch - refEpoch
            good = np.isfinite(pmRa) & np.isfinite(pmDec)
            from .._core import _jointcal

            ra2, dec2 = _jointcal.apply_proper_motion(ra, dec, np.where(good, pmRa, 0.0), np.where(good, pmDec, 0.0),
                                                      np.asarray(dt, float) * np.ones(n))
            ra, dec = ra2, dec2
            if raErr is not None and decErr is not None:
                raErr = np.hypot(raErr, np.where(good, pmRaErr, 0.0) * dt)
                decErr = np.hypot(decErr, np.where(good, pmDecErr, 0.0) * dt)
            pm = (pmRa, pmDec, pmRaErr, pmDecErr)
        if photometry:
            vx = vy = np.full(n, (100.0 * _MAS_TO_DEG) ** 2)  # dummy errors, as the reference
        elif cfg.astrometryReferenceErr is not None:
            e = cfg.astrometryReferenceErr * _MAS_TO_DEG
            vx = (e / np.cos(np.radians(dec))) ** 2
            vy = np.full(n, e * e)
        elif raErr is not None and decErr is not None:
            vx = np.degrees(raErr) ** 2
            vy = np.degrees(decErr) ** 2
        else:
            raise FieldValidationError(JointcalConfig.astrometryReferenceErr, cfg,
                                       "Reference catalog does not contain coordinate errors, "
                                       "and config.astrometryReferenceErr not supplied.")
        ids = np.asarray(cols["id"], np.int64)[idx] if "id" in cols else idx.astype(np.int64)
        return {"id": ids, "ra": ra, "dec": dec, "vx": vx, "vy": vy, "flux": flux, "flux_err": fluxErr, "pm": pm}

    # ------------------------------------------------------------------------------------------------
    # the astrometric fit
    # ------------------------------------------------------------------------------------------------

    def _doLoadRefcatAndFit(self, data: Struct, refCat: Any) -> Struct:
        """Associate, collect reference stars, prepare and fit (spec 2.3, 2.10)."""
        return self._associateAstrometry(data, refCat, fit=True)

    def _associateAstrometry(self, data: Struct, refCat: Any, *, fit: bool) -> Struct:
        cfg = self.config
        assoc = data.associations
        nMatched = assoc.associate_catalogs(cfg.associationRadius)
        _forwardLog(self.log, assoc.take_log())
        self.job["astrometry_matched_fittedStars"] = int(nMatched)
        ref = self._loadReferenceCatalog(refCat, data)
        pm = ref["pm"]
        nCollected = assoc.collect_ref_stars(
            ref["id"], ref["ra"], ref["dec"], ref["vx"], ref["vy"], ref["flux"], ref["flux_err"],
            *(pm if pm is not None else (None, None, None, None)), match_cut_arcsec=cfg.matchCut)
        _forwardLog(self.log, assoc.take_log())
        self.job["astrometry_collected_refStars"] = int(nCollected)
        assoc.prepare_fitted_stars(cfg.minMeasurements)
        _forwardLog(self.log, assoc.take_log())
        self.job["astrometry_prepared_refStars"] = int(assoc.n_fitted_with_ref)
        self.job["astrometry_prepared_fittedStars"] = int(assoc.n_fitted_stars)
        self.job["astrometry_prepared_ccdImages"] = int(assoc.n_ccd_images_with_data)
        self._checkStarLists(assoc, int(nCollected), "astrometry")
        return self._fitAstrometry(data, assoc) if fit else self._buildAstrometry(data, assoc)

    def _checkStarLists(self, assoc: Any, nRefCollected: int, name: str) -> None:
        if assoc.n_ccd_images_with_data == 0:
            raise TaskError(f"No data to process: no CcdImage has measured stars left for the {name} fit")
        if assoc.n_fitted_stars == 0:
            raise TaskError(f"No fitted stars for the {name} fit (too few stars measured at least "
                            f"{self.config.minMeasurements} times?)")
        if nRefCollected == 0:
            raise TaskError(f"No reference stars are available for the {name} fit (empty reference catalog in the "
                            "observed area?)")
        if assoc.n_fitted_with_ref == 0:
            self.log.warning("No reference star matched a fitted star within matchCut=%g arcsec: the %s fit has "
                             "no absolute reference", self.config.matchCut, name)

    def _solverFor(self, model: Any) -> str:
        choice = self.config.astrometrySolver
        if choice != "auto":
            return choice
        return "schur" if len(model.params) <= self.config.schurMaxModelParameters else "sparse"

    def prepareAstrometry(self, inputSourceTableVisit: Any, inputVisitSummary: Any, inputCamera: Camera | None = None,
                          *, astrometryRefCat: Any) -> Struct:
        """Load, associate and build the astrometric model and fitter, without fitting.

        Same inputs as `run`. Returns the state `run` fits: a Struct with ``associations``, ``model``
        (`AstrometryModel`), ``fitter`` (compiled ``AstrometryFitter``; call ``minimize(whatToFit, ...)`` or
        ``compute_step(whatToFit)``), ``chi2History`` and ``data``. Used by the tests and benchmarks.
        """
        self.job = {}
        self._tract = 0
        data = self._loadData(inputSourceTableVisit, inputVisitSummary, inputCamera)
        self._prepSky(data)
        return self._associateAstrometry(data, astrometryRefCat, fit=False)

    def _buildAstrometry(self, data: Struct, assoc: Any) -> Struct:
        from .._core import _jointcal

        cfg = self.config
        assoc.deproject_fitted_stars()
        if cfg.astrometryModel == "simple":
            native = _jointcal.AstrometryModel.make_simple(assoc, cfg.astrometrySimpleOrder, cfg.useInputWcs)
        else:
            if data.camera is None:
                raise ValueError("astrometryModel='constrained' needs inputCamera (the detector geometry); pass a "
                                 "Camera or use astrometryModel='simple'")
            native = _jointcal.AstrometryModel.make_constrained(assoc, cfg.astrometryChipOrder,
                                                                cfg.astrometryVisitOrder, cfg.astrometryFocalScale)
        _forwardLog(self.log, assoc.take_log())
        model = AstrometryModel(native, list(zip(data.visit.tolist(), data.detector.tolist())), data.bbox)
        solver = self._solverFor(native)
        self.log.info("Astrometric model %s with %d parameters; %s solver", cfg.astrometryModel, len(native.params),
                      solver)
        fitter = _jointcal.AstrometryFitter(assoc, native, cfg.positionErrorPedestal, solver,
                                            cfg.properMotionSignAsReference, cfg.removeAllOutliersPerPass)
        history: list[tuple[str, float, int]] = []
        return Struct(associations=assoc, fitter=fitter, model=model, chi2History=history, data=data, solver=solver)

    def _fitAstrometry(self, data: Struct, assoc: Any) -> Struct:
        cfg = self.config
        state = self._buildAstrometry(data, assoc)
        fitter, model = state.fitter, state.model
        if cfg.writeInitialModel:
            path = Path(cfg.debugOutputPath) / f"initial_astrometry_model-{self._tract}_{data.defaultFilter}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(model.toJson(indent=1))
        self._checkStars(state)
        name = "astrometry"
        chi2 = self._logChi2AndValidate(state, "Initial", writeChi2Name=self._chi2Name(name, "initial"))
        steps = (["DistortionsVisit"] if cfg.astrometryModel == "constrained" else []) + [
            "Distortions", "Positions", "Distortions Positions"]
        self._dumpNormalEquations(fitter, name, "preinit", steps[0], data.defaultFilter)
        for what in steps:
            result = fitter.minimize(what)
            _forwardLog(self.log, fitter.take_log())
            if result == MinimizeResult.Failed:
                raise RuntimeError(f"Chi2 minimization failure in the {what} initialization step: {fitter.last_error}")
            label = "Initialize " + what.replace(" ", "")
            chi2 = self._logChi2AndValidate(state, label, writeChi2Name=self._chi2Name(name, f"init-{what.replace(' ', '')}",
                                                                                       outer=True))
        self._dumpNormalEquations(fitter, name, "postinit", "Distortions Positions", data.defaultFilter)
        chi2 = self._iterate_fit(state, cfg.maxAstrometrySteps, name, "Distortions Positions",
                                 sigmaRelativeTolerance=cfg.astrometryOutlierRelativeTolerance,
                                 doRankUpdate=cfg.astrometryDoRankUpdate)
        self.job["astrometry_final_chi2"] = float(chi2.chi2)
        self.job["astrometry_final_ndof"] = int(chi2.ndof)
        state.finalChi2 = chi2
        state.outliers = (int(fitter.meas_outliers_total), int(fitter.ref_outliers_total))
        return state

    #: The reference does not dump normal matrices with more entries than this (rows x columns).
    MAX_DUMPED_MATRIX_ENTRIES = 2e8

    def _dumpNormalEquations(self, fitter: Any, name: str, stage: str, whatToFit: str, band: str) -> list[Path]:
        """``writeInitMatrix``: write the dense normal matrix H = J^T W J and the right-hand side b of
        H delta = b for ``whatToFit`` at the current parameters, as text (``%.13g``, one row per line), to
        ``<debugOutputPath>/<name>_<stage>-<tract>_<band>-mat.txt`` and ``-grad.txt``. Parameter order:
        model parameters, then the fitted stars (spec 1.4). Matrices with more than 2e8 entries are
        skipped with a warning, as in the reference."""
        if not self.config.writeInitMatrix:
            return []
        data, indices, indptr, rhs = fitter.normal_equations(whatToFit)
        n = rhs.size
        if float(n) * float(n) > self.MAX_DUMPED_MATRIX_ENTRIES:
            self.log.warning("Hessian matrix is too big to dump to file, with rows, columns: %d, %d", n, n)
            return []
        from scipy.sparse import csc_matrix

        upper = csc_matrix((data, indices, indptr), shape=(n, n))
        dense = (upper + upper.T).toarray()
        dense[np.diag_indices(n)] -= upper.diagonal()
        base = Path(self.config.debugOutputPath) / f"{name}_{stage}-{self._tract}_{band}"
        base.parent.mkdir(parents=True, exist_ok=True)
        paths = [base.with_name(base.name + "-mat.txt"), base.with_name(base.name + "-grad.txt")]
        np.savetxt(paths[0], dense, fmt="%.13g")
        np.savetxt(paths[1], rhs, fmt="%.13g")
        self.log.info("Wrote the %d x %d normal matrix and its right-hand side (%s) to %s-mat.txt / -grad.txt",
                      n, n, whatToFit, base)
        return paths

    def _chi2Name(self, name: str, step: str, *, outer: bool = False) -> str | None:
        cfg = self.config
        if outer and not cfg.writeChi2FilesOuterLoop:
            return None
        if not outer and not (cfg.writeChi2FilesInitialFinal or cfg.writeChi2FilesOuterLoop):
            return None
        return os.path.join(cfg.debugOutputPath, f"{name}_{step}_chi2-{self._tract}")

    def _checkStars(self, state: Struct) -> None:
        """Warn about CcdImages with few measured or reference stars."""
        m = state.associations.measured_arrays()
        f = state.associations.fitted_arrays()
        valid = (m["in_fit"] == 1) & (m["valid"] == 1)
        nccd = len(state.model.ccdKeys)
        nMeas = np.bincount(m["ccd"][valid], minlength=nccd)
        withRef = valid.copy()
        withRef[valid] = f["ref"][m["fitted"][valid]] >= 0
        nRef = np.bincount(m["ccd"][withRef], minlength=nccd)
        for i, k in enumerate(state.model.ccdKeys):
            self.log.debug("CcdImage (visit %d, detector %d) has %d measured and %d reference stars", k[0], k[1],
                           nMeas[i], nRef[i])
        few = [state.model.ccdKeys[i] for i in np.flatnonzero(nMeas < self.config.minMeasuredStarsPerCcd)]
        if few:
            self.log.warning("%d CcdImages have fewer than %d measured stars (desired minMeasuredStarsPerCcd): %s",
                             len(few), self.config.minMeasuredStarsPerCcd, few[:20])
        few = [state.model.ccdKeys[i] for i in np.flatnonzero(nRef < self.config.minRefStarsPerCcd)]
        if few:
            self.log.warning("%d CcdImages have fewer than %d reference stars (desired minRefStarsPerCcd): %s",
                             len(few), self.config.minRefStarsPerCcd, few[:20])

    def _logChi2AndValidate(self, state: Struct, label: str, writeChi2Name: str | None = None) -> Chi2Statistic:
        """Log ``<label> chi2/ndof : ...``, check finiteness and the model (spec 2.10)."""
        chi2, ndof = state.fitter.compute_chi2()
        _forwardLog(self.log, state.fitter.take_log())
        stat = Chi2Statistic(chi2, ndof)
        state.chi2History.append((label, stat.chi2, stat.ndof))
        self.log.info("%s %s", label, stat)
        if writeChi2Name is not None:
            self._writeChi2Files(state, writeChi2Name)
        if not np.isfinite(stat.chi2):
            raise FloatingPointError(f"{label} chi2 is not finite: {stat.chi2}")
        if not state.model.native.validate(stat.ndof):
            why = state.model.native.validation_error(stat.ndof) if hasattr(state.model.native,
                                                                            "validation_error") else ""
            raise ValueError(f"Model is not valid after {label}: " + (why or f"ndof={stat.ndof} < 0 (too many "
                             "parameters for the number of measurements)"))
        return stat

    def _writeChi2Files(self, state: Struct, base: str) -> None:
        """Per-term chi2 as tab-separated files ``<base>-meas.csv`` and ``<base>-ref.csv``."""
        meas, ref = state.fitter.term_chi2()
        m = state.associations.measured_arrays()
        Path(base).parent.mkdir(parents=True, exist_ok=True)
        keys = state.model.ccdKeys
        ok = np.flatnonzero(np.isfinite(meas))
        with open(base + "-meas.csv", "w") as fh:
            fh.write("visit\tdetector\tsourceId\tx\ty\tfittedStar\tchi2\n")
            for k in ok:
                v, d = keys[m["ccd"][k]]
                fh.write(f"{v}\t{d}\t{m['source_id'][k]}\t{m['x'][k]!r}\t{m['y'][k]!r}\t{m['fitted'][k]}\t{meas[k]!r}\n")
        okr = np.flatnonzero(np.isfinite(ref))
        f = state.associations.fitted_arrays()
        with open(base + "-ref.csv", "w") as fh:
            fh.write("fittedStar\tra\tdec\tnMeasurements\tchi2\n")
            for i in okr:
                fh.write(f"{i}\t{f['x'][i]!r}\t{f['y'][i]!r}\t{f['n_measurements'][i]}\t{ref[i]!r}\n")

    def _iterate_fit(self, state: Struct, maxSteps: int, name: str, whatToFit: str, *,
                     sigmaRelativeTolerance: float = 0.0, doRankUpdate: bool = True,
                     doLineSearch: bool = False) -> Chi2Statistic:
        """Fit with outlier rejection until converged or ``maxSteps`` (spec 2.10).

        Raises
        ------
        RuntimeError
            ``minimize`` failed, or chi2 increased by more than 10x between steps.
        FloatingPointError
            The fit produced a non-finite chi2.
        """
        fitter = state.fitter
        oldChi2 = Chi2Statistic(math.inf, 1)
        chi2 = oldChi2
        for i in range(maxSteps):
            result = fitter.minimize(whatToFit, self.config.outlierRejectSigma, sigmaRelativeTolerance,
                                     doRankUpdate, doLineSearch)
            _forwardLog(self.log, fitter.take_log())
            chi2 = self._logChi2AndValidate(state, f"Fit iteration {i}",
                                            writeChi2Name=self._chi2Name(name, f"fit-{i}", outer=True))
            if result == MinimizeResult.Converged:
                if doRankUpdate:
                    self.log.debug("fit has converged - no more outliers - redo minimization one more time in case "
                                   "we have lost accuracy in rank update.")
                    result = fitter.minimize(whatToFit, self.config.outlierRejectSigma, sigmaRelativeTolerance)
                    _forwardLog(self.log, fitter.take_log())
                    chi2 = self._logChi2AndValidate(state, "Fit completed",
                                                    writeChi2Name=self._chi2Name(name, "final"))
                elif self._chi2Name(name, "final") is not None:
                    self._writeChi2Files(state, self._chi2Name(name, "final"))
                if chi2.chi2 / chi2.ndof >= 4.0:
                    self.log.error("Potentially bad fit: High chi-squared/ndof.")
                break
            elif result == MinimizeResult.Chi2Increased:
                self.log.warning("Still some outliers remaining but chi2 increased - retry")
                ratio = chi2.chi2 / oldChi2.chi2
                if ratio > 1.5:
                    self.log.warning("Significant chi2 increase by a factor of %.4g / %.4g = %.4g", chi2.chi2,
                                     oldChi2.chi2, ratio)
                if ratio > 10:
                    raise RuntimeError("Large chi2 increase between steps: fit likely cannot converge.")
                oldChi2 = chi2
            elif result == MinimizeResult.NonFinite:
                base = self._chi2Name(name, "nonfinite") or os.path.join(self.config.debugOutputPath,
                                                                        f"{name}_nonfinite_chi2-{self._tract}")
                self._writeChi2Files(state, base)
                raise FloatingPointError(f"Result of fit is non-finite; chi2 contributions written to {base}-*.csv")
            elif result == MinimizeResult.Failed:
                raise RuntimeError(f"Chi2 minimization failure, cannot complete fit: {fitter.last_error}")
            else:
                raise RuntimeError(f"Unexpected return code from minimize(): {result}")
        else:
            self.log.error("%s failed to converge after %d steps", name, maxSteps)
        return chi2

    # ------------------------------------------------------------------------------------------------
    # outputs
    # ------------------------------------------------------------------------------------------------

    def _makeOutputWcs(self, model: AstrometryModel) -> tuple[dict, dict]:
        out, acc = {}, {}
        worstF = worstI = 0.0
        inputWcs = {}
        if self._lastData is not None:
            d = self._lastData
            inputWcs = {(int(v), int(k)): w for v, k, w in zip(d.visit, d.detector, d.wcs)}
        for key in model.keysWithMapping():
            if model.totalOrder(key) == 0:  # only with useInputWcs=False and very few stars
                wcs, a = self._constantMappingWcs(model, key, inputWcs[key])
            else:
                wcs, a = model.makeTanSipWcs(key, inverseTolerance=self.config.outputWcsMaxInverseError)
            out[key] = wcs
            acc[key] = a
            worstF = max(worstF, a["forward_max_mas"])
            worstI = max(worstI, a["inverse_max_pix"])
        if out:
            self.log.info("Output TAN-SIP WCS for %d CcdImages: max forward error %.3g mas, max inverse error %.3g px",
                          len(out), worstF, worstI)
        return out, acc

    @staticmethod
    def _constantMappingWcs(model: AstrometryModel, key: tuple[int, int], inputWcs: Any) -> tuple[Any, dict]:
        """Output WCS of an order-0 (constant) mapping: the input WCS's local CD matrix, moved so that the
        detector centre maps where the model puts it (a constant mapping has no usable pixel scale)."""
        from .wcs import TanSipWcs

        i = model.ccdIndex(key)
        x0, y0, x1, y1 = model.bboxes[i]
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        ra, dec = model.pixelToSky(key, [cx], [cy])
        h = 1.0
        xi, eta = inputWcs.pixelToIwc([cx, cx + h, cx], [cy, cy, cy + h])
        cd = np.array([[xi[1] - xi[0], xi[2] - xi[0]], [eta[1] - eta[0], eta[2] - eta[0]]]) / h
        wcs = TanSipWcs((cx, cy), cd, (float(ra[0]), float(dec[0])))
        return wcs, {"forward_max_mas": 0.0, "inverse_max_pix": 0.0, "sip_order": 0, "inverse_order": 0,
                     "constant_mapping": True}

    # ------------------------------------------------------------------------------------------------
    # profiling
    # ------------------------------------------------------------------------------------------------

    def _profile(self, what: str) -> Any:
        if not self.config.detailedProfile:
            return None
        prof = cProfile.Profile()
        prof.enable()
        prof._diffcalName = what  # type: ignore[attr-defined]
        return prof

    def _endProfile(self, prof: Any) -> None:
        if prof is None:
            return
        prof.disable()
        path = Path(self.config.debugOutputPath) / f"jointcal_{prof._diffcalName}.prof"
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(str(path))
        self.log.info("cProfile of %s written to %s", prof._diffcalName, path)
