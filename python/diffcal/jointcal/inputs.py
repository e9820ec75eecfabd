"""In-memory inputs of `JointcalTask.run`: camera geometry, per-visit summaries, catalogs as column tables.

What ``JointcalTask.run`` takes
-------------------------------
``inputSourceTableVisit``
    One source table per visit (a sequence, or a mapping visit -> table). A table is anything with named
    columns: an ``astropy.table.Table``, a ``pyarrow.Table``, a numpy structured array, a ``dict`` of
    arrays or a pandas ``DataFrame``. Columns follow the LSST ``sourceTable_visit`` schema (``visit``,
    ``detector``, ``sourceId``, ``x``, ``y``, ``xErr``, ``yErr``, ``ixx``/``iyy``/``ixy``,
    ``<sourceFluxType>_instFlux``/``_instFluxErr``, the selector's flag columns, ``ra``, ``dec``...);
    the older capitalised convention (``Ixx``, ``PixelFlags_edge``, ``decl``, ``ApFlux_12_0_instFlux``...)
    is accepted too (see `resolveColumn`).
``inputVisitSummary``
    One `VisitSummary` per visit (sequence or mapping visit -> summary).
``inputCamera``
    A `Camera` (pixel -> focal-plane geometry); needed by the constrained astrometric model.
``astrometryRefCat`` / ``photometryRefCat``
    Reference catalogs as column tables: ``coord_ra``, ``coord_dec`` (radians), optional
    ``coord_raErr``/``coord_decErr`` (radians; the RA error is taken as an error on the RA *coordinate*, as
    the reference does), ``pm_ra``/``pm_dec`` (rad/yr, RA component times cos(dec)) with ``pm_raErr``/
    ``pm_decErr``, ``epoch`` (MJD TAI of the positions), ``<name>_flux``/``<name>_fluxErr`` (nJy).

Units: pixels are 0-based; angles in degrees unless stated; fluxes in nJy (calibrated) or counts
(instrumental); epochs are Julian years (TAI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .wcs import TanSipWcs

__all__ = [
    "Camera",
    "DetectorGeometry",
    "VisitSummary",
    "columnTable",
    "resolveColumn",
    "julianEpochFromMjd",
    "julianEpochFromTaiNs",
]


def julianEpochFromMjd(mjd: Any) -> Any:
    """Julian epoch (years) of an MJD (same time scale)."""
    return 2000.0 + (np.asarray(mjd, dtype=float) - 51544.5) / 365.25


def julianEpochFromTaiNs(taiNs: Any) -> Any:
    """Julian epoch (years, TAI) of a TAI date in nanoseconds since 1970-01-01T00:00:00 TAI."""
    return julianEpochFromMjd(40587.0 + np.asarray(taiNs, dtype=float) / 8.64e13)


@dataclass
class DetectorGeometry:
    """Geometry of one detector: an affine pixel -> focal-plane transform.

    ``focal = fpPosition + R(yaw) @ ((pixel - refPoint) * pixelSize)`` with ``R(yaw)`` the rotation taking
    +x towards +y. Pitch and roll (tilts) are ignored: for the cameras handled here they are zero, and
    jointcal only needs the transform to initialise the chip maps.

    Attributes
    ----------
    id : `int`
    name : `str`
    bbox : (int, int, int, int)
        minX, minY, maxX, maxY (inclusive) in pixels.
    pixelSize : (float, float)
        mm per pixel.
    fpPosition : (float, float)
        Focal-plane position of the reference point, mm.
    refPoint : (float, float)
        Pixel position of the reference point.
    yaw : `float`
        Radians.
    """

    id: int
    name: str
    bbox: tuple[int, int, int, int]
    pixelSize: tuple[float, float]
    fpPosition: tuple[float, float]
    refPoint: tuple[float, float]
    yaw: float = 0.0

    def affine(self) -> np.ndarray:
        """The 6 coefficients ``(p0..p5)``: ``xf = p0 x + p1 y + p4``, ``yf = p2 x + p3 y + p5`` (mm)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        sx, sy = self.pixelSize
        m = np.array([[c * sx, -s * sy], [s * sx, c * sy]])
        off = np.array(self.fpPosition) - m @ np.array(self.refPoint)
        return np.array([m[0, 0], m[0, 1], m[1, 0], m[1, 1], off[0], off[1]])

    def pixelToFocal(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Focal-plane position (mm) of pixel positions."""
        p = self.affine()
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        return p[0] * x + p[1] * y + p[4], p[2] * x + p[3] * y + p[5]

    def center(self) -> tuple[float, float]:
        """Focal-plane position (mm) of the bbox centre."""
        fx, fy = self.pixelToFocal(0.5 * (self.bbox[0] + self.bbox[2]), 0.5 * (self.bbox[1] + self.bbox[3]))
        return float(fx), float(fy)


@dataclass
class Camera:
    """A set of `DetectorGeometry`, keyed by detector id."""

    name: str
    detectors: dict[int, DetectorGeometry] = field(default_factory=dict)

    def __getitem__(self, detectorId: int) -> DetectorGeometry:
        try:
            return self.detectors[int(detectorId)]
        except KeyError:
            raise KeyError(f"No such detector id: {detectorId} among {sorted(self.detectors)}") from None

    def __contains__(self, detectorId: object) -> bool:
        return isinstance(detectorId, (int, np.integer)) and int(detectorId) in self.detectors

    def __len__(self) -> int:
        return len(self.detectors)

    def __iter__(self) -> Iterable[DetectorGeometry]:
        return iter(self.detectors[k] for k in sorted(self.detectors))

    def toTable(self) -> dict[str, np.ndarray]:
        """Columns of the LSST camera ``Detector`` table (the layout `readers.readCamera` reads)."""
        dets = list(self)
        return {
            "name": np.array([d.name for d in dets]),
            "id": np.array([d.id for d in dets], dtype=np.int32),
            "bbox_min_x": np.array([d.bbox[0] for d in dets], dtype=np.int32),
            "bbox_min_y": np.array([d.bbox[1] for d in dets], dtype=np.int32),
            "bbox_max_x": np.array([d.bbox[2] for d in dets], dtype=np.int32),
            "bbox_max_y": np.array([d.bbox[3] for d in dets], dtype=np.int32),
            "pixelSize_x": np.array([d.pixelSize[0] for d in dets]),
            "pixelSize_y": np.array([d.pixelSize[1] for d in dets]),
            "fpPosition_x": np.array([d.fpPosition[0] for d in dets]),
            "fpPosition_y": np.array([d.fpPosition[1] for d in dets]),
            "refPoint_x": np.array([d.refPoint[0] for d in dets]),
            "refPoint_y": np.array([d.refPoint[1] for d in dets]),
            "yaw": np.array([d.yaw for d in dets]),
            "pitch": np.zeros(len(dets)),
            "roll": np.zeros(len(dets)),
        }

    @classmethod
    def fromTable(cls, table: Any, name: str = "camera") -> "Camera":
        """Build from columns of the LSST camera ``Detector`` table (see `toTable`)."""
        t = columnTable(table)
        need = ["id", "bbox_min_x", "bbox_min_y", "bbox_max_x", "bbox_max_y", "pixelSize_x", "pixelSize_y",
                "fpPosition_x", "fpPosition_y", "refPoint_x", "refPoint_y", "yaw"]
        missing = [c for c in need if c not in t]
        if missing:
            raise ValueError(f"camera detector table lacks columns {missing}")
        cam = cls(name)
        n = len(t["id"])
        names = t.get("name", np.array([str(i) for i in t["id"]]))
        for i in range(n):
            nm = names[i]
            if isinstance(nm, (bytes, np.bytes_)):
                nm = nm.decode()
            elif not isinstance(nm, str):
                nm = "".join(str(c) for c in np.asarray(nm).ravel())
            d = DetectorGeometry(
                id=int(t["id"][i]), name=str(nm).strip(),
                bbox=(int(t["bbox_min_x"][i]), int(t["bbox_min_y"][i]), int(t["bbox_max_x"][i]),
                      int(t["bbox_max_y"][i])),
                pixelSize=(float(t["pixelSize_x"][i]), float(t["pixelSize_y"][i])),
                fpPosition=(float(t["fpPosition_x"][i]), float(t["fpPosition_y"][i])),
                refPoint=(float(t["refPoint_x"][i]), float(t["refPoint_y"][i])),
                yaw=float(t["yaw"][i]),
            )
            cam.detectors[d.id] = d
        return cam


@dataclass
class VisitSummary:
    """Per-visit metadata with one row per detector (the LSST ``visitSummary`` content jointcal uses).

    Attributes
    ----------
    visit : `int`
    physicalFilter, band : `str`
    detector : `numpy.ndarray` of int
        Detector ids, one per row.
    bbox : `numpy.ndarray`, shape (n, 4)
        minX, minY, maxX, maxY (inclusive pixels) per row.
    wcs : `list` of `TanSipWcs`
        Input WCS per row.
    calibrationMean, calibrationErr : `numpy.ndarray`
        Input PhotoCalib per row, nJy per count.
    taiNs : `float`
        Exposure date, TAI nanoseconds since 1970-01-01 (LSST ``VisitInfo.date``).
    boresightRa, boresightDec : `float`
        Degrees.
    airmass, exposureTime, era, boresightRotAngle : `float`
        Bookkeeping (unused by the astrometric fit, as in the reference).
    """

    visit: int
    physicalFilter: str
    band: str
    detector: np.ndarray
    bbox: np.ndarray
    wcs: list[TanSipWcs]
    calibrationMean: np.ndarray
    calibrationErr: np.ndarray
    taiNs: float
    boresightRa: float
    boresightDec: float
    airmass: float = float("nan")
    exposureTime: float = float("nan")
    era: float = float("nan")
    boresightRotAngle: float = 0.0

    def __post_init__(self) -> None:
        self.visit = int(self.visit)
        self.detector = np.asarray(self.detector, dtype=np.int64).ravel()
        n = self.detector.size
        self.bbox = np.asarray(self.bbox, dtype=np.int64).reshape(n, 4)
        self.calibrationMean = np.asarray(self.calibrationMean, dtype=float).reshape(n)
        self.calibrationErr = np.asarray(self.calibrationErr, dtype=float).reshape(n)
        if len(self.wcs) != n:
            raise ValueError(f"visit {self.visit}: {len(self.wcs)} WCS for {n} detectors")
        if len(set(self.detector.tolist())) != n:
            raise ValueError(f"visit {self.visit}: duplicate detector ids in the visit summary")

    @property
    def epoch(self) -> float:
        """Julian epoch (years, TAI) of the exposure."""
        return float(julianEpochFromTaiNs(self.taiNs))

    def row(self, detectorId: int) -> int:
        """Row index of a detector; KeyError naming the available ids if absent."""
        hits = np.flatnonzero(self.detector == int(detectorId))
        if hits.size == 0:
            raise KeyError(f"visit {self.visit}: no detector {detectorId} in the visit summary "
                           f"(have {sorted(self.detector.tolist())})")
        return int(hits[0])


def columnTable(table: Any) -> dict[str, np.ndarray]:
    """Convert a table-like object to a ``dict`` of numpy arrays (no copy where possible).

    Accepts ``dict``/mapping of arrays, ``astropy.table.Table``, ``pyarrow.Table``, numpy structured arrays
    and pandas DataFrames (the index is kept as a column when it is named).
    """
    if isinstance(table, Mapping):
        return {str(k): np.asarray(v) for k, v in table.items()}
    if isinstance(table, np.ndarray) and table.dtype.names:
        return {n: table[n] for n in table.dtype.names}
    mod = type(table).__module__
    if mod.startswith("pyarrow"):
        return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    if mod.startswith("astropy"):
        return {name: np.asarray(table[name]) for name in table.colnames}
    if mod.startswith("pandas"):
        out = {str(c): table[c].to_numpy() for c in table.columns}
        if table.index.name is not None and table.index.name not in out:
            out[str(table.index.name)] = table.index.to_numpy()
        return out
    raise TypeError(f"cannot read columns from a {type(table).__name__}; pass an astropy Table, a pyarrow "
                    "Table, a numpy structured array, a pandas DataFrame or a dict of arrays")


_OLD_NAMES = {"dec": ["decl"], "ra": ["ra"]}


def resolveColumn(columns: Sequence[str] | Mapping[str, Any], name: str) -> str | None:
    """Find ``name`` among the columns, allowing the older capitalised convention.

    ``ixx`` -> ``Ixx``, ``pixelFlags_edge`` -> ``PixelFlags_edge``, ``apFlux_12_0_instFlux`` ->
    ``ApFlux_12_0_instFlux``, ``dec`` -> ``decl``, and the reverse. Returns the column name present, or
    None.
    """
    cols = set(columns)
    if name in cols:
        return name
    candidates = [name[:1].upper() + name[1:], name[:1].lower() + name[1:]] + _OLD_NAMES.get(name, [])
    if name == "decl":
        candidates.append("dec")
    for c in candidates:
        if c in cols:
            return c
    return None
