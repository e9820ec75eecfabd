"""Simulated multi-visit surveys with known truth, in the input format of `JointcalTask.run`.

`simulate` builds a camera of ``nDetectors`` detectors on a focal plane, ``nVisits`` dithered pointings
spread over ``epochSpan`` years, ``nStars`` stars with magnitudes and proper motions, and for every visit
and detector the source catalog a single-frame pipeline would have produced:

* **True mapping** (per visit, detector): pixels -> focal plane (the *true* detector geometry, which differs
  from the nominal camera given to the fit by a few microns and 1e-4 rad) -> a radial cubic optical
  distortion plus a small per-visit quadratic term -> plate scale and a per-visit rotation and offset ->
  gnomonic de-projection about the pointing. Order <= 3 in focal-plane coordinates, so both jointcal models
  can represent it.
* **Input WCS**: a TAN-SIP (order 3) fit of the true mapping, deliberately perturbed by a shift
  (``wcsErrorArcsec`` rms) and a rotation, like a single-frame astrometric solution.
* **Centroids**: S/N-based errors ``sqrt(2) * sigma_psf / SNR`` (reported as ``xErr``/``yErr``, correlated
  through the PSF moments exactly as jointcal synthesizes ``vxy``), plus an unreported error of
  ``positionNoisePedestal`` pixels per axis, so that jointcal's default ``positionErrorPedestal`` (0.02 px)
  makes the errors right (chi2/ndof ~ 1).
* **Outliers**: a fraction ``outlierFraction`` of the measurements is displaced by ``outlierRangeArcsec``
  (uniform in radius, random direction); they are flagged in the ``truth_outlier`` column.
* **Reference catalog**: a random fraction ``refFraction`` of the stars, positions at ``refEpoch`` with
  ``refErrMas`` noise and errors (``coord_raErr`` is the error on the RA coordinate, radians), proper
  motions with ``pmErrMasYr`` noise, fluxes in ``<band>_flux`` and ``phot_g_mean_flux`` (nJy).

Everything is deterministic given ``seed``. Extra columns ``truth_star`` (index into the truth arrays) and
``truth_outlier`` are carried in the source tables; jointcal ignores them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .inputs import Camera, DetectorGeometry, VisitSummary
from .wcs import TanSipWcs, fitTanSip, gnomonicDeproject, gnomonicProject

__all__ = ["simulate", "SimulatedSurvey", "SurveyTruth"]

_MAS = 1.0 / 3.6e6  # degrees
_RAD_PER_MAS = math.pi / 180.0 / 3.6e6


def _core() -> Any:
    from .._core import _jointcal

    return _jointcal


def _epochToTaiNs(epoch: float) -> float:
    mjd = 51544.5 + (epoch - 2000.0) * 365.25
    return (mjd - 40587.0) * 8.64e13


@dataclass
class _VisitTruth:
    visit: int
    ra: float
    dec: float
    rotation: float  # rad
    offset: tuple[float, float]  # deg, in the pointing tangent plane
    quad: np.ndarray  # (2, 3) quadratic focal-plane distortion coefficients [x2, xy, y2] per output, mm^-1
    epoch: float
    zeroPoint: float  # instrumental AB zero point (mag of 1 count)
    seeingPx: float
    e2: float
    photoField: np.ndarray | None = None  # (5,) mag: coefficients of u, v, u^2, uv, v^2 (u, v = focal mm / scale)


@dataclass
class SurveyTruth:
    """The truth of a simulated survey.

    Attributes
    ----------
    starRa, starDec : `numpy.ndarray`
        Star positions at ``refEpoch``, degrees.
    pmRa, pmDec : `numpy.ndarray`
        Proper motions, mas/yr (RA component times cos(dec)).
    mag : `numpy.ndarray`
        AB magnitudes.
    refEpoch, fitEpoch : `float`
        Julian years; ``fitEpoch`` is the mean of the visit epochs (jointcal's fit epoch).
    camera : `Camera`
        The *true* detector geometry (the nominal one is ``SimulatedSurvey.camera``).
    """

    starRa: np.ndarray
    starDec: np.ndarray
    pmRa: np.ndarray
    pmDec: np.ndarray
    mag: np.ndarray
    refEpoch: float
    fitEpoch: float
    camera: Camera
    plateScale: float  # deg/mm
    radialK: float  # mm^-2
    visits: dict[int, _VisitTruth] = field(default_factory=dict)
    chipZeroPoint: dict[int, float] = field(default_factory=dict)  # mag, added to the visit zero point
    photoFieldScale: float = 1.0  # mm: focal-plane radius normalizing the photometric field

    def photometricField(self, visit: int, fx: Any, fy: Any) -> np.ndarray:
        """Per-visit zero-point field (mag, added to the zero point) at focal-plane positions (mm)."""
        fx = np.asarray(fx, float)
        c = self.visits[visit].photoField
        if c is None:
            return np.zeros_like(fx)
        u = fx / self.photoFieldScale
        v = np.asarray(fy, float) / self.photoFieldScale
        return c[0] * u + c[1] * v + c[2] * u * u + c[3] * u * v + c[4] * v * v

    def zeroPoint(self, visit: int, detector: int, x: Any, y: Any) -> np.ndarray:
        """True AB zero point (magnitude of one count) at pixel positions of one detector of one visit."""
        fx, fy = self.camera[detector].pixelToFocal(np.asarray(x, float), np.asarray(y, float))
        return self.visits[visit].zeroPoint + self.chipZeroPoint.get(detector, 0.0) + self.photometricField(visit, fx, fy)

    def calibration(self, visit: int, detector: int, x: Any, y: Any) -> np.ndarray:
        """True calibration (nJy per count) at pixel positions; the reference fluxes are 10**(-0.4 (m - 31.4))."""
        return 10.0 ** (0.4 * (31.4 - self.zeroPoint(visit, detector, x, y)))

    def starPositions(self, epoch: float) -> tuple[np.ndarray, np.ndarray]:
        """Star positions (degrees) at a Julian epoch."""
        n = self.starRa.size
        dt = np.full(n, epoch - self.refEpoch)
        return _core().apply_proper_motion(self.starRa, self.starDec, self.pmRa * _RAD_PER_MAS,
                                           self.pmDec * _RAD_PER_MAS, dt)

    def _distort(self, v: _VisitTruth, fx: np.ndarray, fy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r2 = fx * fx + fy * fy
        gx = fx * (1.0 + self.radialK * r2) + v.quad[0, 0] * fx * fx + v.quad[0, 1] * fx * fy + v.quad[0, 2] * fy * fy
        gy = fy * (1.0 + self.radialK * r2) + v.quad[1, 0] * fx * fx + v.quad[1, 1] * fx * fy + v.quad[1, 2] * fy * fy
        return gx, gy

    def focalToTangent(self, visit: int, fx: Any, fy: Any) -> tuple[np.ndarray, np.ndarray]:
        """True focal plane (mm) -> tangent plane about the pointing (degrees)."""
        v = self.visits[visit]
        gx, gy = self._distort(v, np.asarray(fx, float), np.asarray(fy, float))
        c, s = math.cos(v.rotation), math.sin(v.rotation)
        xi = self.plateScale * (c * gx - s * gy) + v.offset[0]
        eta = self.plateScale * (s * gx + c * gy) + v.offset[1]
        return xi, eta

    def tangentToFocal(self, visit: int, xi: Any, eta: Any) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of `focalToTangent` (fixed-point iterations on the distortion)."""
        v = self.visits[visit]
        c, s = math.cos(v.rotation), math.sin(v.rotation)
        a = (np.asarray(xi, float) - v.offset[0]) / self.plateScale
        b = (np.asarray(eta, float) - v.offset[1]) / self.plateScale
        gx = c * a + s * b
        gy = -s * a + c * b
        fx, fy = gx.copy(), gy.copy()
        for _ in range(30):
            dx, dy = self._distort(v, fx, fy)
            fx = fx - (dx - gx)
            fy = fy - (dy - gy)
        return fx, fy

    def pixelToSky(self, visit: int, detector: int, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """True pixel -> sky (degrees) mapping of one detector of one visit."""
        fx, fy = self.camera[detector].pixelToFocal(x, y)
        xi, eta = self.focalToTangent(visit, fx, fy)
        v = self.visits[visit]
        return gnomonicDeproject(v.ra, v.dec, xi, eta)

    def skyToPixel(self, visit: int, detector: int, ra: Any, dec: Any) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of `pixelToSky`."""
        v = self.visits[visit]
        xi, eta = gnomonicProject(v.ra, v.dec, ra, dec)
        fx, fy = self.tangentToFocal(visit, xi, eta)
        p = self.camera[detector].affine()
        m = np.array([[p[0], p[1]], [p[2], p[3]]])
        inv = np.linalg.inv(m)
        dx, dy = fx - p[4], fy - p[5]
        return inv[0, 0] * dx + inv[0, 1] * dy, inv[1, 0] * dx + inv[1, 1] * dy


@dataclass
class SimulatedSurvey:
    """A simulated survey: the inputs of `JointcalTask.run` plus the truth.

    Attributes
    ----------
    sourceTables : `dict` [`int`, `astropy.table.Table`]
        One ``sourceTable_visit``-like table per visit.
    visitSummaries : `dict` [`int`, `VisitSummary`]
    refCat : `astropy.table.Table`
        Reference catalog (astrometry and photometry).
    camera : `Camera`
        The nominal camera geometry given to the fit.
    truth : `SurveyTruth`
    parameters : `dict`
        The arguments of `simulate`.
    """

    sourceTables: dict[int, Any]
    visitSummaries: dict[int, VisitSummary]
    refCat: Any
    camera: Camera
    truth: SurveyTruth
    parameters: dict[str, Any]

    def runArguments(self) -> dict[str, Any]:
        """Keyword arguments for ``JointcalTask.run(**survey.runArguments())``."""
        return {
            "inputSourceTableVisit": [self.sourceTables[v] for v in sorted(self.sourceTables)],
            "inputVisitSummary": [self.visitSummaries[v] for v in sorted(self.visitSummaries)],
            "inputCamera": self.camera,
            "astrometryRefCat": self.refCat,
            "photometryRefCat": self.refCat,
        }

    @property
    def nMeasurements(self) -> int:
        """Total number of sources in the tables."""
        return int(sum(len(t) for t in self.sourceTables.values()))

    def write(self, outdir: Any) -> Path:
        """Write the survey in the INPUT_DIR layout (see `diffcal.jointcal.readers.writeInputDir`)."""
        from .readers import writeInputDir

        return writeInputDir(self, outdir)

    def evaluate(self, result: Any, *, positionErrorPedestal: float = 0.02) -> dict[str, Any]:
        """Compare a `JointcalTask.run` result with the truth.

        Expected scatters ("pred") are computed from the simulated errors only:

        * measurement error per axis: ``sigma_i**2 = (vx + vy) / 2 + pedestal**2`` (pixels, times the nominal
          pixel scale);
        * mapping error of a CcdImage: ``sigma_map = sqrt(p / W)`` with ``W = sum_i (1 - 1/n_s(i)) / sigma_i**2``
          over its measurements (the fraction ``1/n_s`` of a measurement's information goes to its star's own
          position) and ``p`` the free parameters per coordinate attributable to the CcdImage (simple:
          (n+1)(n+2)/2; constrained: visit monomials / detectors per visit + chip monomials / visits per chip).
          The measured value is the ``W``-weighted rms of |model - truth| per axis over the measurement
          positions, for which ``p / W`` is the least-squares expectation;
        * fitted-star error per axis: ``1 / sum_i 1 / (sigma_i**2 + sigma_map(i)**2)`` plus the reference term
          (catalog errors), compared at the fit epoch, over the fitted stars that keep no injected outlier.

        Parameters
        ----------
        result : `diffcal.pipe.Struct`
            The output of `JointcalTask.run` (astrometry enabled).
        positionErrorPedestal : `float`
            The pedestal the fit used (pixels).

        Returns
        -------
        report : `dict`
            ``outliers_injected`` / ``outliers_rejected`` (injected outliers among the fitted measurements and
            how many were rejected), ``false_rejected``, ``n_measurements``, ``stars_with_kept_outliers``,
            ``star_rms_mas``,
            ``star_pred_rms_mas``, ``star_norm_rms`` (rms of error / predicted), ``map_rms_mas``,
            ``map_pred_mas``, ``map_ratio`` (measured / predicted).
        """
        st = result.astrometry
        assoc = st.associations
        model = st.model
        m = assoc.measured_arrays()
        f = assoc.fitted_arrays()
        ids, truthStar, truthOut = [], [], []
        for t in self.sourceTables.values():
            ids.append(np.asarray(t["sourceId"]))
            truthStar.append(np.asarray(t["truth_star"]))
            truthOut.append(np.asarray(t["truth_outlier"]))
        ids = np.concatenate(ids)
        order = np.argsort(ids)
        pos = order[np.searchsorted(ids[order], m["source_id"])]
        ti = np.concatenate(truthStar)[pos]
        outl = np.concatenate(truthOut)[pos]
        inFit = m["in_fit"] == 1
        good = inFit & (m["valid"] == 1)
        rejected = inFit & (m["valid"] == 0)
        pixelScale = float(self.parameters["pixelScale"])
        sig2 = (m["vx"] + m["vy"]) / 2.0 + positionErrorPedestal**2  # px^2
        nstar = np.bincount(m["fitted"][good], minlength=len(f["x"]))
        eff = np.zeros(len(sig2))
        eff[good] = 1.0 - 1.0 / np.maximum(nstar[m["fitted"][good]], 1)
        nccd = len(model.ccdKeys)
        nDetPerVisit = Counter(k[0] for k in model.keysWithMapping())
        nVisitPerDet = Counter(k[1] for k in model.keysWithMapping())
        blocks = model.native.block_arrays()
        maps = model.native.mapping_arrays()
        mapErr, mapPred = np.full(nccd, np.nan), np.full(nccd, np.nan)
        for key in model.keysWithMapping():
            ci = model.ccdIndex(key)
            sel = good & (m["ccd"] == ci)
            if not sel.any():
                continue
            wi = eff[sel] / sig2[sel]
            W = float(np.sum(wi)) / (pixelScale * 1000.0) ** 2  # 1/mas^2
            a, b = int(maps["block_a"][ci]), int(maps["block_b"][ci])
            if b < 0:
                p = int(blocks["size"][a]) / 2.0
            else:
                p = int(blocks["size"][b]) / 2.0 / nDetPerVisit[key[0]] + int(blocks["size"][a]) / 2.0 / nVisitPerDet[key[1]]
            mapPred[ci] = math.sqrt(p / W) if W > 0 else np.nan
            ra, dec = model.pixelToSky(key, m["x"][sel], m["y"][sel])
            tr, td = self.truth.pixelToSky(key[0], key[1], m["x"][sel], m["y"][sel])
            e2 = (((ra - tr + 180.0) % 360.0 - 180.0) * np.cos(np.radians(td))) ** 2 + (dec - td) ** 2
            e2 = e2 * 3.6e6**2 / 2.0
            mapErr[ci] = math.sqrt(float(np.sum(wi * e2) / np.sum(wi)))
        # stars
        tra, tdec = self.truth.starPositions(assoc.epoch)
        w = np.zeros(len(f["x"]))
        var = sig2[good] * (pixelScale * 1000.0) ** 2 + np.nan_to_num(mapPred[m["ccd"][good]]) ** 2
        np.add.at(w, m["fitted"][good], 1.0 / var)
        refIdx = f["ref"]
        cat = self.refCat
        refErr = float(np.median(np.degrees(np.asarray(cat["coord_decErr"])))) * 3.6e6 if len(cat) else np.inf
        w[refIdx >= 0] += 1.0 / refErr**2
        first = np.full(len(f["x"]), -1)
        gk = np.flatnonzero(good)
        first[m["fitted"][gk[::-1]]] = ti[gk[::-1]]
        # stars still carrying an injected outlier are corrupted by it (counted by the outlier statistics)
        corrupted = np.zeros(len(f["x"]), dtype=bool)
        corrupted[m["fitted"][good & outl]] = True
        alive = np.flatnonzero((f["alive"] == 1) & (first >= 0) & ~corrupted)
        tt = first[alive]
        dra = ((f["x"][alive] - tra[tt] + 180.0) % 360.0 - 180.0) * np.cos(np.radians(tdec[tt])) * 3.6e6
        ddec = (f["y"][alive] - tdec[tt]) * 3.6e6
        pred = 1.0 / np.sqrt(w[alive])
        okm = np.isfinite(mapErr)
        return {
            "outliers_injected": int((outl & inFit).sum()),
            "outliers_rejected": int((outl & rejected).sum()),
            "false_rejected": int((~outl & rejected).sum()),
            "n_measurements": int(inFit.sum()),
            "stars_with_kept_outliers": int(corrupted.sum()),
            "star_rms_mas": float(np.sqrt(np.mean((dra**2 + ddec**2) / 2.0))),
            "star_pred_rms_mas": float(np.sqrt(np.mean(pred**2))),
            "star_norm_rms": float(np.sqrt(np.mean((dra**2 + ddec**2) / 2.0 / pred**2))),
            "map_rms_mas": float(np.sqrt(np.mean(mapErr[okm] ** 2))),
            "map_pred_mas": float(np.sqrt(np.mean(mapPred[okm] ** 2))),
            "map_ratio": float(np.sqrt(np.mean(mapErr[okm] ** 2)) / np.sqrt(np.mean(mapPred[okm] ** 2))),
        }


def _makeCamera(nDetectors: int, shape: tuple[int, int], pixelSize: float, gapMm: float) -> Camera:
    w, h = shape
    wmm, hmm = w * pixelSize + gapMm, h * pixelSize + gapMm
    nx = max(1, math.ceil(math.sqrt(nDetectors * hmm / wmm)))
    ny = max(1, math.ceil(nDetectors / nx))
    slots = []
    for j in range(ny):
        for i in range(nx):
            cx = (i - (nx - 1) / 2.0) * wmm
            cy = (j - (ny - 1) / 2.0) * hmm
            slots.append((cx * cx / (wmm * wmm) + cy * cy / (hmm * hmm), j, i, cx, cy))
    slots.sort()
    chosen = sorted(slots[:nDetectors], key=lambda s: (s[1], s[2]))
    cam = Camera("SimCam")
    for d, (_, j, i, cx, cy) in enumerate(chosen):
        cam.detectors[d] = DetectorGeometry(
            id=d, name=f"S{j:02d}{i:02d}", bbox=(0, 0, w - 1, h - 1), pixelSize=(pixelSize, pixelSize),
            fpPosition=(cx, cy), refPoint=((w - 1) / 2.0, (h - 1) / 2.0), yaw=0.0)
    return cam


def simulate(nVisits: int = 8, nDetectors: int = 8, nStars: int = 2000, seed: int = 0, *,
             ra: float = 150.0, dec: float = 2.0, ditherRadius: float = 0.1,
             detectorShape: tuple[int, int] = (2048, 4096), pixelSize: float = 0.015, pixelScale: float = 0.2,
             gapMm: float = 1.0, distortionArcsec: float = 4.0, visitDistortionArcsec: float = 0.3,
             visitRotationArcsec: float = 20.0, visitOffsetArcsec: float = 1.0,
             chipOffsetMicrons: float = 5.0, chipYaw: float = 1e-4,
             epochStart: float = 2020.0, epochSpan: float = 0.2, refEpoch: float = 2016.0,
             magRange: tuple[float, float] = (16.0, 23.0), zeroPoint: float = 30.0, zeroPointScatter: float = 0.03,
             seeingArcsec: float = 0.8, skyNoise: float = 30.0, positionNoisePedestal: float = 0.02,
             psfEllipticity: float = 0.05, refFraction: float = 0.4, refErrMas: float = 5.0,
             pmSigmaMasYr: float = 2.0, pmErrMasYr: float = 0.2, outlierFraction: float = 0.01,
             outlierRangeArcsec: tuple[float, float] = (0.3, 1.0), wcsErrorArcsec: float = 0.2,
             wcsRotationArcsec: float = 0.2, minSeparationArcsec: float = 6.0, band: str = "r",
             physicalFilter: str = "r.sim",
             sourceFluxType: str = "apFlux_12_0", photometricFieldMmag: float = 0.0,
             refFluxErrFraction: float = 0.01) -> SimulatedSurvey:
    """Simulate a survey with known truth (see the module docstring for the model).

    Parameters
    ----------
    nVisits, nDetectors, nStars : `int`
        Survey size. Stars are spread uniformly over the area covered by the dithered pointings; only those
        landing on a detector are measured.
    seed : `int`
        Random seed; the output is a deterministic function of all arguments.
    ra, dec : `float`
        Field centre, degrees.
    ditherRadius : `float`
        Pointings are uniform in a disc of this radius (degrees) about the field centre.
    detectorShape : (int, int)
        Detector width, height in pixels.
    pixelSize, pixelScale : `float`
        mm per pixel and arcsec per pixel (nominal plate scale).
    distortionArcsec : `float`
        Radial cubic distortion displacement at the focal-plane edge, arcsec.
    visitDistortionArcsec, visitRotationArcsec, visitOffsetArcsec : `float`
        Per-visit random quadratic distortion (at the edge), rotation and pointing offset, arcsec rms.
    chipOffsetMicrons, chipYaw : `float`
        rms differences between the true and the nominal detector positions (microns) and yaws (rad).
    epochStart, epochSpan, refEpoch : `float`
        Visit epochs are uniform in [epochStart, epochStart + epochSpan]; reference positions are at refEpoch.
    magRange, zeroPoint, zeroPointScatter : `float`
        Star magnitudes (AB) are drawn with a density rising as 10**(0.3 m) over magRange; the instrumental
        zero point is zeroPoint (mag of 1 count) with per-visit/per-detector scatter (mag rms).
    seeingArcsec, skyNoise : `float`
        PSF FWHM and background noise per pixel (counts).
    positionNoisePedestal : `float`
        Unreported centroid noise (pixels per axis) added to every measurement.
    psfEllipticity : `float`
        rms of the per-visit PSF e2 (sets ixy and the centroid-error correlation).
    refFraction, refErrMas, pmSigmaMasYr, pmErrMasYr : `float`
        Reference-catalog fraction, position noise (mas), true proper-motion dispersion (mas/yr per
        component) and proper-motion noise (mas/yr).
    outlierFraction, outlierRangeArcsec :
        Fraction of outlier measurements and the range of their displacement (arcsec).
    wcsErrorArcsec, wcsRotationArcsec : `float`
        rms shift of the input WCS and rms rotation error (as a displacement at the detector edge), arcsec.
    minSeparationArcsec : `float`
        Stars closer than this to an earlier-drawn star are removed (blends would be merged by the
        association and excluded by the isolation cut of real pipelines), so ``nStars`` is an upper bound.
    band, physicalFilter, sourceFluxType : `str`
        Filter labels and the flux column family written.
    photometricFieldMmag : `float`
        rms (mmag) of the coefficients of a smooth per-visit zero-point field, quadratic in the focal-plane
        position normalized by the focal-plane radius (``SurveyTruth.photometricField``); drawn from a separate
        random stream, so 0 (the default) leaves every other output unchanged.
    refFluxErrFraction : `float`
        Relative error of the reference fluxes (noise and reported ``<band>_fluxErr``).

    Returns
    -------
    survey : `SimulatedSurvey`
    """
    from astropy.table import Table

    if nVisits < 1 or nDetectors < 1 or nStars < 1:
        raise ValueError("simulate: nVisits, nDetectors and nStars must be >= 1")
    params = {k: v for k, v in locals().items() if k not in ("Table",)}
    rng = np.random.default_rng(seed)
    w, h = detectorShape
    nominal = _makeCamera(nDetectors, detectorShape, pixelSize, gapMm)
    true_cam = Camera("SimCam-true")
    for d in nominal:
        true_cam.detectors[d.id] = DetectorGeometry(
            id=d.id, name=d.name, bbox=d.bbox, pixelSize=d.pixelSize,
            fpPosition=(d.fpPosition[0] + rng.normal(0, chipOffsetMicrons * 1e-3),
                        d.fpPosition[1] + rng.normal(0, chipOffsetMicrons * 1e-3)),
            refPoint=d.refPoint, yaw=d.yaw + rng.normal(0, chipYaw))
    # focal-plane radius and plate scale
    corners = []
    for d in nominal:
        fx, fy = d.pixelToFocal([d.bbox[0], d.bbox[2], d.bbox[0], d.bbox[2]], [d.bbox[1], d.bbox[1], d.bbox[3], d.bbox[3]])
        corners.append(np.hypot(fx, fy))
    rmax = float(np.max(np.concatenate(corners)))
    plate = pixelScale / 3600.0 / pixelSize  # deg / mm
    radialK = (distortionArcsec / 3600.0 / plate) / rmax**3 if rmax > 0 else 0.0
    fovRadius = rmax * plate
    # visits
    epochs = np.sort(epochStart + epochSpan * rng.random(nVisits))
    fitEpoch = float(np.mean(np.repeat(epochs, nDetectors)))
    truth = SurveyTruth(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), refEpoch, fitEpoch,
                        true_cam, plate, radialK)
    visitIds = [1000 + 10 * i for i in range(nVisits)]
    for i, vid in enumerate(visitIds):
        r = ditherRadius * math.sqrt(rng.random())
        phi = 2 * math.pi * rng.random()
        pra, pdec = gnomonicDeproject(ra, dec, [r * math.cos(phi)], [r * math.sin(phi)])
        quad = rng.normal(0, 1, (2, 3)) * (visitDistortionArcsec / 3600.0 / plate) / max(rmax, 1.0) ** 2
        truth.visits[vid] = _VisitTruth(
            visit=vid, ra=float(pra[0]), dec=float(pdec[0]),
            rotation=rng.normal(0, visitRotationArcsec / 3600.0 / max(fovRadius, 1e-6)),
            offset=(rng.normal(0, visitOffsetArcsec / 3600.0), rng.normal(0, visitOffsetArcsec / 3600.0)),
            quad=quad, epoch=float(epochs[i]), zeroPoint=zeroPoint + rng.normal(0, zeroPointScatter),
            seeingPx=seeingArcsec / pixelScale / 2.3548 * (1.0 + 0.1 * rng.normal()),
            e2=rng.normal(0, psfEllipticity))
    # stars, uniform over the covered disc (in the tangent plane of the field centre)
    R = ditherRadius + fovRadius * 1.05
    rr = R * np.sqrt(rng.random(nStars))
    ph = 2 * np.pi * rng.random(nStars)
    sra, sdec = gnomonicDeproject(ra, dec, rr * np.cos(ph), rr * np.sin(ph))
    if minSeparationArcsec > 0:
        from scipy.spatial import cKDTree

        tx, ty = rr * np.cos(ph), rr * np.sin(ph)
        pairs = cKDTree(np.stack([tx, ty], axis=1)).query_pairs(minSeparationArcsec / 3600.0, output_type="ndarray")
        keep = np.ones(nStars, dtype=bool)
        if len(pairs):
            keep[np.maximum(pairs[:, 0], pairs[:, 1])] = False
        sra, sdec = sra[keep], sdec[keep]
        nStars = int(keep.sum())
    lo, hi = magRange
    u = rng.random(nStars)
    a = 0.3 * math.log(10.0)
    mag = np.log(np.exp(a * lo) + u * (np.exp(a * hi) - np.exp(a * lo))) / a
    truth.starRa, truth.starDec = sra, sdec
    truth.pmRa = rng.normal(0, pmSigmaMasYr, nStars)
    truth.pmDec = rng.normal(0, pmSigmaMasYr, nStars)
    truth.mag = mag
    # detector zero-point offsets
    chipZp = {d.id: rng.normal(0, zeroPointScatter) for d in nominal}
    truth.chipZeroPoint = dict(chipZp)
    truth.photoFieldScale = rmax
    if photometricFieldMmag > 0:
        frng = np.random.default_rng([seed, 1])
        for vid in visitIds:
            truth.visits[vid].photoField = frng.normal(0, photometricFieldMmag * 1e-3, 5)
    calibNominal = 10.0 ** ((31.4 - zeroPoint) / 2.5)  # nJy per count for the nominal zero point
    fluxCol = f"{sourceFluxType}_instFlux"
    tables: dict[int, Any] = {}
    summaries: dict[int, VisitSummary] = {}
    sid = 0
    for vid in visitIds:
        v = truth.visits[vid]
        pra, pdec = truth.starPositions(v.epoch)
        xi, eta = gnomonicProject(v.ra, v.dec, pra, pdec)
        near = np.flatnonzero(np.hypot(xi, eta) < fovRadius * 1.1)
        fx, fy = truth.tangentToFocal(vid, xi[near], eta[near])
        cols: dict[str, list[np.ndarray]] = {}
        wcsList, dets, bboxes = [], [], []
        for d in nominal:
            td = true_cam[d.id]
            p = td.affine()
            inv = np.linalg.inv(np.array([[p[0], p[1]], [p[2], p[3]]]))
            dx, dy = fx - p[4], fy - p[5]
            px = inv[0, 0] * dx + inv[0, 1] * dy
            py = inv[1, 0] * dx + inv[1, 1] * dy
            inside = (px >= d.bbox[0]) & (px <= d.bbox[2]) & (py >= d.bbox[1]) & (py <= d.bbox[3])
            idx = near[inside]
            px, py = px[inside], py[inside]
            n = idx.size
            # input WCS: perturbed TAN-SIP fit of the true mapping
            gx, gy = np.meshgrid(np.linspace(d.bbox[0], d.bbox[2], 16), np.linspace(d.bbox[1], d.bbox[3], 16))
            gx, gy = gx.ravel(), gy.ravel()
            cpx, cpy = 0.5 * (d.bbox[0] + d.bbox[2]), 0.5 * (d.bbox[1] + d.bbox[3])
            cra, cdec = truth.pixelToSky(vid, d.id, [cpx], [cpy])
            gra, gdec = truth.pixelToSky(vid, d.id, gx, gy)
            txi, teta = gnomonicProject(cra[0], cdec[0], gra, gdec)
            halfSize = 0.5 * math.hypot(w, h) * pixelScale
            eps = rng.normal(0, wcsRotationArcsec / max(halfSize, 1e-9))
            ce, se = math.cos(eps), math.sin(eps)
            pxi, peta = ce * txi - se * teta, se * txi + ce * teta
            shift = rng.normal(0, wcsErrorArcsec / 3600.0, 2)
            crval = gnomonicDeproject(cra[0], cdec[0], [shift[0]], [shift[1]])
            wcs, _ = fitTanSip(gx, gy, pxi, peta, (cpx, cpy), (float(crval[0][0]), float(crval[1][0])), 3)
            wcsList.append(wcs)
            dets.append(d.id)
            bboxes.append(d.bbox)
            # photometry
            zp = v.zeroPoint + chipZp[d.id]
            if v.photoField is not None:
                zp = zp + truth.photometricField(vid, fx[inside], fy[inside])
            counts = 10.0 ** (-0.4 * (mag[idx] - zp))
            s = v.seeingPx
            ferr = np.sqrt(counts + 4.0 * math.pi * s * s * skyNoise**2)
            fmeas = counts + ferr * rng.normal(size=n)
            snr = np.maximum(counts / ferr, 1e-3)
            sig = math.sqrt(2.0) * s / snr
            e2 = float(np.clip(v.e2, -0.5, 0.5))
            # correlated centroid noise: cov = sig^2 [[1, e2], [e2, 1]] + pedestal^2 I
            z1, z2 = rng.normal(size=n), rng.normal(size=n)
            a1 = math.sqrt((1 + e2) / 2.0)
            a2 = math.sqrt((1 - e2) / 2.0)
            nx_ = sig * (a1 * z1 + a2 * z2) + positionNoisePedestal * rng.normal(size=n)
            ny_ = sig * (a1 * z1 - a2 * z2) + positionNoisePedestal * rng.normal(size=n)
            mx, my = px + nx_, py + ny_
            outl = rng.random(n) < outlierFraction
            if outl.any():
                k = int(outl.sum())
                rad = rng.uniform(outlierRangeArcsec[0], outlierRangeArcsec[1], k) / pixelScale
                ang = rng.uniform(0, 2 * math.pi, k)
                mx[outl] += rad * np.cos(ang)
                my[outl] += rad * np.sin(ang)
            mra, mdec = wcs.pixelToSky(mx, my)
            ids = (np.int64(vid) << 32) + np.int64(d.id) * (1 << 20) + np.arange(n, dtype=np.int64)
            sid += n
            vals = {
                "sourceId": ids,
                "visit": np.full(n, vid, dtype=np.int64),
                "detector": np.full(n, d.id, dtype=np.int64),
                "x": mx, "y": my,
                "xErr": sig.astype(np.float32), "yErr": sig.astype(np.float32),
                "ixx": np.full(n, s * s), "iyy": np.full(n, s * s), "ixy": np.full(n, e2 * s * s),
                fluxCol: fmeas, f"{fluxCol}Err": ferr, f"{sourceFluxType}_flag": np.zeros(n, bool),
                "ra": mra, "dec": mdec,
                "parentSourceId": np.zeros(n, dtype=np.int64), "deblend_nChild": np.zeros(n, dtype=np.int32),
                "sizeExtendedness": np.zeros(n), "detect_isPrimary": np.ones(n, bool),
                "pixelFlags_edge": np.zeros(n, bool), "pixelFlags_saturated": np.zeros(n, bool),
                "pixelFlags_interpolatedCenter": np.zeros(n, bool), "pixelFlags_interpolated": np.zeros(n, bool),
                "pixelFlags_crCenter": np.zeros(n, bool), "pixelFlags_bad": np.zeros(n, bool),
                "hsmPsfMoments_flag": np.zeros(n, bool),
                "truth_star": idx.astype(np.int64), "truth_outlier": outl,
            }
            for key, val in vals.items():
                cols.setdefault(key, []).append(val)
        tables[vid] = Table({k: np.concatenate(vs) for k, vs in cols.items()})
        calib = np.array([calibNominal * (1.0 + 0.01 * rng.normal()) for _ in dets])
        summaries[vid] = VisitSummary(
            visit=vid, physicalFilter=physicalFilter, band=band, detector=np.array(dets),
            bbox=np.array(bboxes), wcs=wcsList, calibrationMean=calib, calibrationErr=1e-3 * calib,
            taiNs=_epochToTaiNs(v.epoch), boresightRa=v.ra, boresightDec=v.dec, airmass=1.2,
            exposureTime=30.0, era=0.0, boresightRotAngle=0.0)
    # reference catalog
    isRef = rng.random(nStars) < refFraction
    ridx = np.flatnonzero(isRef)
    nr = ridx.size
    cosd = np.cos(np.radians(sdec[ridx]))
    rra = sra[ridx] + rng.normal(0, refErrMas, nr) * _MAS / cosd
    rdec = sdec[ridx] + rng.normal(0, refErrMas, nr) * _MAS
    refFlux = 10.0 ** (-0.4 * (mag[ridx] - 31.4))
    refFluxErr = refFluxErrFraction * refFlux
    refMeasFlux = refFlux + refFluxErr * rng.normal(size=nr)
    refCat = Table({
        "id": ridx.astype(np.int64),
        "coord_ra": np.radians(rra), "coord_dec": np.radians(rdec),
        "coord_raErr": np.full(nr, refErrMas * _RAD_PER_MAS) / cosd,
        "coord_decErr": np.full(nr, refErrMas * _RAD_PER_MAS),
        "pm_ra": (truth.pmRa[ridx] + rng.normal(0, pmErrMasYr, nr)) * _RAD_PER_MAS,
        "pm_dec": (truth.pmDec[ridx] + rng.normal(0, pmErrMasYr, nr)) * _RAD_PER_MAS,
        "pm_raErr": np.full(nr, pmErrMasYr * _RAD_PER_MAS),
        "pm_decErr": np.full(nr, pmErrMasYr * _RAD_PER_MAS),
        "epoch": np.full(nr, 51544.5 + (refEpoch - 2000.0) * 365.25),
        f"{band}_flux": refMeasFlux, f"{band}_fluxErr": refFluxErr,
        "phot_g_mean_flux": refMeasFlux, "phot_g_mean_fluxErr": refFluxErr,
    })
    return SimulatedSurvey(tables, summaries, refCat, nominal, truth, params)
