"""The photometric fit of `JointcalTask` (spec sections 1.3, 2.3, 2.10, 4): association, reference fluxes,
the four photometric models, the fit sequence and the output `PhotoCalib` per (visit, detector).

Sequence (``fitPhotometry``), each association starting from scratch as in the reference:

1. a fresh `Associations` over the selected sources whose instrumental flux and error are finite and
   positive (the others are dropped, counted and logged: their magnitudes are undefined);
2. ``associateCatalogs(associationRadius)``; the photometric reference catalog restricted to the bounding
   circle, with the reference's ``rejectBadFluxes`` (non-finite flux or error, error <= 0; also flux <= 0,
   whose AB magnitude is undefined) and optional colour terms; ``collectRefStars(matchCut)``;
   ``prepareFittedStars(minMeasurements)`` (fitted flux = mean calibrated flux, mag = its AB magnitude);
3. the model (``photometryModel``: simpleFlux, simpleMagnitude, constrainedFlux, constrainedMagnitude) and the
   C++ ``PhotometryFitter`` (``photometrySolver``: "schur" or "sparse");
4. "Initialized", [constrained: ``ModelVisit``], ``Model``, ``Fluxes``, ``Model Fluxes`` (no outlier rejection;
   line search in the ``Model`` steps only for constrained models with ``allowLineSearch``), then
   ``freezeErrorTransform`` and ``_iterate_fit("Model Fluxes")`` with rejection at ``outlierRejectSigma``;
   after each step the model must be positive over every detector (ValueError naming the detector).

Units: instrumental fluxes in counts, calibrated fluxes in nJy, magnitudes AB, focal-plane positions in mm.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Sequence

import numpy as np

from ..pipe import Struct, TaskError
from .photocalib import ChebyshevField, PhotoCalib, abMagToNanojansky

__all__ = ["PhotometryModel", "focalPlaneBox", "fitPhotometry", "preparePhotometry", "applyColorterms"]

_LOGNAME = "photometry"


def _core() -> Any:
    from .._core import _jointcal

    return _jointcal


def _forwardLog(log: Any, records: Sequence[tuple[int, str]]) -> None:
    for level, message in records:
        log.log(level, "%s", message)


def focalPlaneBox(camera: Any) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) in mm of the focal-plane area covered by all detectors of a camera (the
    domain of the per-visit Chebyshev fields)."""
    xs, ys = [], []
    for d in camera:
        x0, y0, x1, y1 = d.bbox
        fx, fy = d.pixelToFocal(np.array([x0, x1, x1, x0], float), np.array([y0, y0, y1, y1], float))
        xs.append(np.atleast_1d(fx))
        ys.append(np.atleast_1d(fy))
    if not xs:
        raise ValueError("focalPlaneBox: the camera has no detectors")
    x, y = np.concatenate(xs), np.concatenate(ys)
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


class PhotometryModel:
    """A photometric model over a list of CcdImages (wraps ``_jointcal.PhotometryModel``).

    Parameters
    ----------
    native : ``diffcal._core._jointcal.PhotometryModel``
    ccdKeys : sequence of (int, int)
        ``(visit, detector)`` per CcdImage, in the model's order.
    bboxes : array-like (n, 4)
        Inclusive pixel bboxes.
    pixToFocal : array-like (n, 6)
        Affine pixel -> focal-plane maps (NaN rows without a camera; simple models only).
    inputCalibErr : array-like (n,)
        Input calibration errors (nJy/count), copied to the output PhotoCalib.
    """

    def __init__(self, native: Any, ccdKeys: Sequence[tuple[int, int]], bboxes: Any, pixToFocal: Any,
                 inputCalibErr: Any) -> None:
        self.native = native
        self.ccdKeys = [(int(v), int(d)) for v, d in ccdKeys]
        self.bboxes = np.asarray(bboxes, dtype=float).reshape(len(self.ccdKeys), 4)
        self.pixToFocal = np.asarray(pixToFocal, dtype=float).reshape(len(self.ccdKeys), 6)
        self.inputCalibErr = np.asarray(inputCalibErr, dtype=float).ravel()
        self._index = {k: i for i, k in enumerate(self.ccdKeys)}

    @property
    def kind(self) -> str:
        return self.native.kind

    @property
    def params(self) -> np.ndarray:
        return self.native.params

    def ccdIndex(self, key: tuple[int, int]) -> int:
        try:
            return self._index[(int(key[0]), int(key[1]))]
        except KeyError:
            raise KeyError(f"No CcdImage (visit {key[0]}, detector {key[1]}) in the photometric model") from None

    def calibration(self, key: tuple[int, int], x: Any, y: Any) -> np.ndarray:
        """Calibration (nJy per count) at pixel positions of one CcdImage, straight from the model."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        y = np.atleast_1d(np.asarray(y, dtype=float))
        return self.native.calibration(self.ccdIndex(key), x, y)

    def _blocks(self) -> dict[str, np.ndarray]:
        return self.native.block_arrays()

    def visitField(self, visit: int) -> np.ndarray:
        """Chebyshev coefficients of the per-visit field (constrained models)."""
        b = self._blocks()
        sel = np.flatnonzero((b["kind"] == 2) & (b["id"] == int(visit)))
        if sel.size == 0:
            raise KeyError(f"No visit field for visit {visit} (model {self.kind})")
        k = int(sel[0])
        return self.params[b["offset"][k]:b["offset"][k] + b["size"][k]].copy()

    def chipConstant(self, detector: int) -> float:
        b = self._blocks()
        sel = np.flatnonzero((b["kind"] == 1) & (b["id"] == int(detector)))
        if sel.size == 0:
            raise KeyError(f"No chip constant for detector {detector} (model {self.kind})")
        return float(self.params[b["offset"][int(sel[0])]])

    def fixedChip(self) -> int | None:
        b = self._blocks()
        sel = np.flatnonzero((b["kind"] == 1) & (b["fixed"] == 1))
        return int(b["id"][sel[0]]) if sel.size else None

    def toPhotoCalib(self, key: tuple[int, int]) -> PhotoCalib:
        """The output calibration of one CcdImage (spec section 4)."""
        i = self.ccdIndex(key)
        bbox = tuple(self.bboxes[i])
        err = float(self.inputCalibErr[i])
        p = self.params
        blockA, blockB = (int(v) for v in self.native.ccd_blocks()[i])
        b = self._blocks()
        a = float(p[b["offset"][blockA]])
        kind = self.kind
        if kind == "simpleFlux":
            return PhotoCalib(a, err, bbox, visit=key[0], detector=key[1])
        if kind == "simpleMagnitude":
            return PhotoCalib(float(abMagToNanojansky(a)), err, bbox, visit=key[0], detector=key[1])
        off, size, order = int(b["offset"][blockB]), int(b["size"][blockB]), int(b["order"][blockB])
        coeffs = np.asarray(p[off:off + size], dtype=float)
        magnitude = kind == "constrainedMagnitude"
        scale = float(abMagToNanojansky(a)) if magnitude else a
        field = ChebyshevField("magnitude" if magnitude else "flux", order, coeffs, scale,
                               tuple(float(v) for v in self.native.focal_box), tuple(float(v) for v in self.pixToFocal[i]))
        meanT = field.meanT(bbox)
        mean = scale * 10.0 ** (-0.4 * meanT) if magnitude else scale * meanT
        return PhotoCalib(mean, err, bbox, field=field, visit=key[0], detector=key[1])


# ------------------------------------------------------------------------------------------------------
# reference fluxes
# ------------------------------------------------------------------------------------------------------

def applyColorterms(refCat: Any, config: Any, physicalFilter: str, refCatName: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Reference fluxes (nJy) in the instrument system through the colour-term library.

    ``mag = primaryMag + c0 + c1 (primary - secondary) + c2 (primary - secondary)^2`` with the library entry for
    ``physicalFilter`` under the first reference-catalog name pattern matching ``refCatName`` (any pattern if
    None); the flux error keeps the primary band's fractional error.

    Raises
    ------
    lsst.pex.config.FieldValidationError
        No colour term for this filter.
    ValueError
        The catalog lacks a needed ``<band>_flux`` column.
    """
    from ..pipe import FieldValidationError
    from .config import JointcalConfig
    from .inputs import columnTable

    lib = config.colorterms.data
    term = None
    for pattern, perFilter in lib.items():
        if refCatName is not None and not fnmatch.fnmatch(refCatName, pattern):
            continue
        if physicalFilter in perFilter.data:
            term = perFilter.data[physicalFilter]
            break
    if term is None:
        raise FieldValidationError(JointcalConfig.colorterms, config,
                                   f"applyColorTerms=True but the colour-term library has no entry for filter "
                                   f"{physicalFilter!r}" + (f" and reference catalog {refCatName!r}" if refCatName else ""))
    cols = columnTable(refCat)
    need = [f"{term.primary}_flux", f"{term.primary}_fluxErr", f"{term.secondary}_flux"]
    missing = [c for c in need if c not in cols]
    if missing:
        raise ValueError(f"colour terms: the photometry reference catalog lacks columns {missing}")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = -2.5 * np.log10(np.asarray(cols[need[0]], float))
        s = -2.5 * np.log10(np.asarray(cols[need[2]], float))
        c = p - s
        mag = p + term.c0 + term.c1 * c + term.c2 * c * c
        flux = 10.0 ** (-0.4 * mag)
        fluxErr = flux * np.asarray(cols[need[1]], float) / np.asarray(cols[need[0]], float)
    return flux, fluxErr


def _referenceStars(task: Any, data: Struct, refCat: Any) -> tuple[dict[str, Any], int]:
    """Photometric reference stars in the bounding circle, bad fluxes rejected. Returns (ref, nRejected)."""
    cfg = task.config
    ref = task._loadReferenceCatalog(refCat, data, photometry=True)
    if cfg.applyColorTerms:
        flux, fluxErr = applyColorterms(refCat, cfg, data.defaultFilter, cfg.photometryRefCatName)
        # _loadReferenceCatalog kept the rows of the bounding circle: redo that selection on the full arrays
        ref["flux"], ref["flux_err"] = _restrictLike(task, data, refCat, flux, fluxErr, ref)
    flux, err = np.asarray(ref["flux"], float), np.asarray(ref["flux_err"], float)
    good = np.isfinite(flux) & np.isfinite(err) & (err > 0) & (flux > 0)
    nBad = int((~good).sum())
    if nBad:
        task.log.warning("Rejected %d of %d photometric reference stars with a non-finite or non-positive flux or "
                         "flux error", nBad, good.size)
    out = {k: (v[good] if isinstance(v, np.ndarray) and v.shape[:1] == good.shape else v) for k, v in ref.items()}
    if ref["pm"] is not None:
        out["pm"] = tuple(np.asarray(a)[good] for a in ref["pm"])
    return out, nBad


def _restrictLike(task: Any, data: Struct, refCat: Any, flux: np.ndarray, fluxErr: np.ndarray,
                  ref: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Pick the colour-corrected fluxes of the rows `_loadReferenceCatalog` kept (matched by id)."""
    from .inputs import columnTable

    cols = columnTable(refCat)
    ids = np.asarray(cols["id"], np.int64) if "id" in cols else np.arange(len(flux), dtype=np.int64)
    pos = {int(i): k for k, i in enumerate(ids)}
    rows = np.array([pos[int(i)] for i in ref["id"]], dtype=np.int64)
    return flux[rows], fluxErr[rows]


# ------------------------------------------------------------------------------------------------------
# association, model, fit
# ------------------------------------------------------------------------------------------------------

def _photometricAssociations(task: Any, data: Struct) -> tuple[Any, int]:
    """Fresh Associations over the sources with finite positive instFlux and instFluxErr."""
    s = data.sources
    f, e = np.asarray(s["flux"], float), np.asarray(s["fluxErr"], float)
    good = np.isfinite(f) & np.isfinite(e) & (f > 0) & (e > 0)
    nBad = int((~good).sum())
    if nBad:
        bad = np.flatnonzero(~good)
        task.log.warning("Photometry: dropped %d of %d selected sources with a non-finite or non-positive "
                         "instrumental flux or flux error (e.g. sourceId %d)", nBad, good.size,
                         int(s["sourceId"][bad[0]]))
    if not good.any():
        raise TaskError("No data to process: no selected source has a finite positive instrumental flux and error")
    sub = Struct(**{k: getattr(data, k) for k in ("visit", "detector", "bbox", "wcs", "boresightRa",
                                                  "boresightDec", "calibMean", "calibErr", "pixToFocal")})
    # _prepSky replaced the per-CcdImage epochs by the fit epoch; photometry does not use epochs
    sub.epoch = np.full(len(data.visit), float(np.mean(data.epoch)))
    sub.sources = {k: (np.asarray(v)[good] if v is not None else None) for k, v in s.items()}
    assoc = task._makeAssociations(sub)
    assoc.set_common_tangent_point(*data.commonTangentPoint)
    assoc.epoch = data.associations.epoch
    _forwardLog(task.log, assoc.take_log())
    return assoc, nBad


def preparePhotometry(task: Any, data: Struct, refCat: Any) -> Struct:
    """Associate, collect reference stars, prepare fitted stars and build the model and fitter (no fit).

    Records the ``photometry_*`` association metrics in ``task.job``.
    """
    cfg = task.config
    assoc, nBadMeas = _photometricAssociations(task, data)
    nMatched = assoc.associate_catalogs(cfg.associationRadius)
    _forwardLog(task.log, assoc.take_log())
    task.job["photometry_matched_fittedStars"] = int(nMatched)
    ref, nBadRef = _referenceStars(task, data, refCat)
    nCollected = assoc.collect_ref_stars(ref["id"], ref["ra"], ref["dec"], ref["vx"], ref["vy"], ref["flux"],
                                         ref["flux_err"], match_cut_arcsec=cfg.matchCut)
    _forwardLog(task.log, assoc.take_log())
    task.job["photometry_collected_refStars"] = int(nCollected)
    assoc.prepare_fitted_stars(cfg.minMeasurements)
    _forwardLog(task.log, assoc.take_log())
    task.job["photometry_prepared_refStars"] = int(assoc.n_fitted_with_ref)
    task.job["photometry_prepared_fittedStars"] = int(assoc.n_fitted_stars)
    task.job["photometry_prepared_ccdImages"] = int(assoc.n_ccd_images_with_data)
    task._checkStarLists(assoc, int(nCollected), "photometry")
    model = _buildModel(task, data, assoc)
    fitter = _core().PhotometryFitter(assoc, model.native, cfg.photometrySolver)
    task.log.info("Photometric model %s with %d parameters; %s solver", cfg.photometryModel, len(model.params),
                  cfg.photometrySolver)
    return Struct(associations=assoc, model=model, fitter=fitter, chi2History=[], data=data,
                  rejectedBadFluxes=(nBadMeas, nBadRef))


def _buildModel(task: Any, data: Struct, assoc: Any) -> PhotometryModel:
    cfg = task.config
    kind = cfg.photometryModel
    magnitude = kind.endswith("Magnitude")
    core = _core()
    if kind.startswith("simple"):
        native = core.PhotometryModel.make_simple(assoc, magnitude, cfg.photometryErrorPedestal)
    else:
        if data.camera is None:
            raise ValueError(f"photometryModel={kind!r} needs inputCamera (the focal-plane geometry of the "
                             "per-visit fields); pass a Camera or use a simple model")
        box = focalPlaneBox(data.camera)
        native = core.PhotometryModel.make_constrained(assoc, magnitude, cfg.photometryVisitOrder, box,
                                                       cfg.photometryErrorPedestal)
    keys = list(zip(data.visit.tolist(), data.detector.tolist()))
    return PhotometryModel(native, keys, data.bbox, data.pixToFocal, data.calibErr)


def fitPhotometry(task: Any, data: Struct, refCat: Any) -> Struct:
    """The whole photometric fit (module docstring); returns the state Struct with ``finalChi2``, ``outliers``
    and ``photoCalib`` (dict (visit, detector) -> `PhotoCalib` for the CcdImages with data)."""
    from .task import MinimizeResult

    cfg = task.config
    state = preparePhotometry(task, data, refCat)
    fitter, model = state.fitter, state.model
    if cfg.writeInitialModel:
        from pathlib import Path

        path = Path(cfg.debugOutputPath) / f"initial_photometry_model-{task._tract}_{data.defaultFilter}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{model.kind}\n" + "\n".join(repr(float(v)) for v in model.params) + "\n")
    task._checkStars(state)
    constrained = model.native.is_constrained
    lineSearch = bool(cfg.allowLineSearch and constrained)
    task._logChi2AndValidate(state, "Initialized", writeChi2Name=task._chi2Name(_LOGNAME, "initial"))
    steps = (["ModelVisit"] if constrained else []) + ["Model", "Fluxes", "Model Fluxes"]
    task._dumpNormalEquations(fitter, _LOGNAME, "preinit", steps[0], data.defaultFilter)
    for what in steps:
        result = fitter.minimize(what, 0.0, 0.0, True, lineSearch and "Model" in what)
        _forwardLog(task.log, fitter.take_log())
        if result == MinimizeResult.Failed:
            raise RuntimeError(f"Chi2 minimization failure in the photometric {what} initialization step: "
                               f"{fitter.last_error}")
        label = "Initialize " + what.replace(" ", "")
        task._logChi2AndValidate(state, label, writeChi2Name=task._chi2Name(
            _LOGNAME, f"init-{what.replace(' ', '')}", outer=True))
    model.native.freeze_error_transform()
    task._dumpNormalEquations(fitter, _LOGNAME, "postinit", "Model Fluxes", data.defaultFilter)
    chi2 = task._iterate_fit(state, cfg.maxPhotometrySteps, _LOGNAME, "Model Fluxes",
                             doRankUpdate=cfg.photometryDoRankUpdate, doLineSearch=lineSearch)
    task.job["photometry_final_chi2"] = float(chi2.chi2)
    task.job["photometry_final_ndof"] = int(chi2.ndof)
    state.finalChi2 = chi2
    state.outliers = (int(fitter.meas_outliers_total), int(fitter.ref_outliers_total))
    state.photoCalib = makePhotoCalibs(state)
    return state


def makePhotoCalibs(state: Struct) -> dict[tuple[int, int], PhotoCalib]:
    """Output PhotoCalib of every CcdImage that kept measurements, sorted by (visit, detector)."""
    m = state.associations.measured_arrays()
    used = np.unique(m["ccd"][(m["in_fit"] == 1) & (m["valid"] == 1)])
    keys = sorted(state.model.ccdKeys[int(i)] for i in used)
    out = {}
    for key in keys:
        pc = state.model.toPhotoCalib(key)
        if not math.isfinite(pc.getCalibrationMean()):
            raise ValueError(f"the fitted photometric calibration of (visit {key[0]}, detector {key[1]}) is not finite")
        out[key] = pc
    return out
