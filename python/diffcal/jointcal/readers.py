"""Readers and writers of jointcal input files (the INPUT_DIR layout of ``diffcal jointcal``).

INPUT_DIR holds, per visit, ``sourceTable-<visit>.parq``, ``visitSummary-<visit>.fits`` and
``calexp-<visit>-<detector>.fits[.fz]`` (the layout of ``shared/data/cfht_minimal``); the simulator
(`writeInputDir`) writes the same layout plus ``refcat.fits`` and ``camera.fits``.

File formats read
-----------------
* ``sourceTable`` parquet: any column set; both the current and the older capitalised column conventions
  (``Ixx``, ``PixelFlags_*``, ``decl``...). Read with pyarrow (the ``parquet`` extra).
* ``visitSummary`` FITS: an LSST ``ExposureCatalog``: HDU 1 has one row per detector (``id`` = detector,
  ``bbox_*``, ``visit``, ``physical_filter``, ``band`` and archive ids ``photoCalib``/``visitInfo``);
  ``ARCHIVE_INDEX`` maps archive ids to rows of the ``PhotoCalib`` (``calibrationMean``/``calibrationErr``,
  nJy/count) and ``VisitInfo`` (``tai`` ns, ``boresightradec_ra``/``_dec`` rad, airmass, ...) HDUs,
  identified by their ``AR_CATN`` keyword. The ``SkyWcs`` HDU (an AST dump) is *not* read: the WCS comes from
  the calexp.
* ``calexp`` FITS (optionally tile-compressed): only the header of the ``IMAGE`` extension is read for its
  TAN(-SIP) WCS, shifted to parent pixels by ``CRVAL1A``/``CRVAL2A`` when present.
* reference catalogs: FITS tables with ``coord_ra``/``coord_dec`` in radians (LSST refcat shards).
* camera: the ``Detector`` table of an LSST camera archive (columns ``id``, ``bbox_*``, ``pixelSize_*``,
  ``fpPosition_*``, ``refPoint_*``, ``yaw``); only the plain columns are used (affine geometry).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import FitsFormatError
from .inputs import Camera, VisitSummary, columnTable
from .wcs import TanSipWcs

__all__ = [
    "readSourceTable",
    "readVisitSummary",
    "readCalexpWcs",
    "readReferenceCatalog",
    "readCamera",
    "readInputDir",
    "writeInputDir",
    "writeVisitSummary",
]

_SOURCE_RE = re.compile(r"^sourceTable-(\d+)\.parq(?:uet)?$")


def _requirePyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("reading or writing parquet source tables needs pyarrow: "
                          "pip install 'diffcal[parquet]'") from None
    return pq


def readSourceTable(path: Any, columns: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read a ``sourceTable`` parquet file into a dict of numpy arrays.

    Parameters
    ----------
    path : path-like
    columns : iterable of str, optional
        Read only these columns (those absent from the file are ignored).
    """
    pq = _requirePyarrow()
    path = Path(path)
    if columns is not None:
        names = set(pq.read_schema(path).names)
        columns = [c for c in columns if c in names]
    table = pq.read_table(path, columns=list(columns) if columns is not None else None)
    return columnTable(table)


def _archiveRows(hdul: Any, path: str) -> dict[int, tuple[Any, int, int]]:
    """Map archive id -> (table data, first row, number of rows) through ARCHIVE_INDEX."""
    try:
        index = hdul["ARCHIVE_INDEX"].data
    except KeyError:
        raise FitsFormatError(f"{path}: no ARCHIVE_INDEX extension (not an LSST ExposureCatalog?)") from None
    byCat: dict[int, Any] = {}
    for hdu in hdul[1:]:
        catn = hdu.header.get("AR_CATN")
        if catn is not None:
            byCat[int(catn)] = hdu.data
    out = {}
    for row in index:
        cat = int(row["cat.archive"])
        if cat in byCat:
            out[int(row["id"])] = (byCat[cat], int(row["row0"]), int(row["nrows"]))
    return out


def _archiveName(hdul: Any, archiveId: int) -> str:
    for row in hdul["ARCHIVE_INDEX"].data:
        if int(row["id"]) == archiveId:
            return str(row["name"]).strip()
    return ""


def readCalexpWcs(path: Any) -> TanSipWcs:
    """The TAN(-SIP) WCS of a calexp (header of its IMAGE extension), in parent pixel coordinates."""
    from astropy.io import fits

    path = str(path)
    with fits.open(path) as hdul:
        header = None
        for hdu in hdul:
            if hdu.header.get("EXTTYPE") == "IMAGE" or hdu.name == "IMAGE":
                header = hdu.header
                break
        if header is None:
            for hdu in hdul:
                if "CTYPE1" in hdu.header:
                    header = hdu.header
                    break
        if header is None:
            raise FitsFormatError(f"{path}: no IMAGE extension with a WCS")
        wcs = TanSipWcs.fromFitsHeader(header, path=path)
        x0 = float(header.get("CRVAL1A", 0.0)) if str(header.get("CTYPE1A", "")).strip() == "LINEAR" else 0.0
        y0 = float(header.get("CRVAL2A", 0.0)) if str(header.get("CTYPE2A", "")).strip() == "LINEAR" else 0.0
    if x0 or y0:
        wcs = TanSipWcs((wcs.crpix[0] + x0, wcs.crpix[1] + y0), wcs.cd, wcs.crval, wcs.a, wcs.b, wcs.ap, wcs.bp)
    return wcs


def _findCalexp(directory: Path, visit: int, detector: int) -> Path | None:
    for suffix in (".fits", ".fits.fz", ".fz"):
        p = directory / f"calexp-{visit}-{detector}{suffix}"
        if p.exists():
            return p
    return None


def readVisitSummary(path: Any, *, calexpDir: Any = None, wcs: dict[int, TanSipWcs] | None = None) -> VisitSummary:
    """Read a ``visitSummary`` FITS file.

    Parameters
    ----------
    path : path-like
    calexpDir : path-like, optional
        Where to find ``calexp-<visit>-<detector>.fits[.fz]`` for the WCS; default the directory of ``path``.
    wcs : dict, optional
        detector -> `TanSipWcs` overriding the calexp lookup.

    Raises
    ------
    diffcal.errors.FitsFormatError
        Malformed file or a detector without a calexp WCS.
    """
    from astropy.io import fits

    path = Path(path)
    directory = Path(calexpDir) if calexpDir is not None else path.parent
    with fits.open(path) as hdul:
        rows = hdul[1].data
        if rows is None or len(rows) == 0:
            raise FitsFormatError(f"{path}: the visit summary has no detector rows")
        names = rows.columns.names
        need = ["id", "bbox_min_x", "bbox_min_y", "bbox_max_x", "bbox_max_y", "visit"]
        missing = [c for c in need if c not in names]
        if missing:
            raise FitsFormatError(f"{path}: visit summary lacks columns {missing}")
        archive = _archiveRows(hdul, str(path))
        det = np.asarray(rows["id"], dtype=np.int64)
        visit = int(rows["visit"][0])
        bbox = np.stack([rows["bbox_min_x"], rows["bbox_min_y"], rows["bbox_max_x"], rows["bbox_max_y"]], axis=1)
        pf = str(rows["physical_filter"][0]).strip() if "physical_filter" in names else ""
        band = str(rows["band"][0]).strip() if "band" in names else pf
        cmean = np.full(det.size, np.nan)
        cerr = np.zeros(det.size)
        visitInfo = None
        for i in range(det.size):
            pid = int(rows["photoCalib"][i]) if "photoCalib" in names else 0
            if pid in archive:
                data, r0, _ = archive[pid]
                cmean[i] = float(data["calibrationMean"][r0])
                cerr[i] = float(data["calibrationErr"][r0])
            vid = int(rows["visitInfo"][i]) if "visitInfo" in names else 0
            if visitInfo is None and vid in archive:
                data, r0, _ = archive[vid]
                visitInfo = {n: data[n][r0] for n in data.columns.names}
        if visitInfo is None:
            raise FitsFormatError(f"{path}: no VisitInfo in the archive (needed for the date and boresight)")
        if np.any(~np.isfinite(cmean)):
            raise FitsFormatError(f"{path}: no PhotoCalib for detectors {det[~np.isfinite(cmean)].tolist()}")
    wcsList = []
    for d in det.tolist():
        if wcs is not None and d in wcs:
            wcsList.append(wcs[d])
            continue
        cal = _findCalexp(directory, visit, d)
        if cal is None:
            raise FitsFormatError(f"{path}: no calexp-{visit}-{d}.fits[.fz] in {directory} for the WCS of detector {d} "
                                  "(the AST SkyWcs of visit summaries is not supported)")
        wcsList.append(readCalexpWcs(cal))
    return VisitSummary(
        visit=visit, physicalFilter=pf, band=band, detector=det, bbox=bbox, wcs=wcsList, calibrationMean=cmean,
        calibrationErr=cerr, taiNs=float(visitInfo["tai"]),
        boresightRa=float(np.degrees(visitInfo["boresightradec_ra"])),
        boresightDec=float(np.degrees(visitInfo["boresightradec_dec"])),
        airmass=float(visitInfo.get("boresightairmass", np.nan)),
        exposureTime=float(visitInfo.get("exposuretime", np.nan)), era=float(visitInfo.get("era", np.nan)),
        boresightRotAngle=float(visitInfo.get("boresightrotangle", 0.0)))


def readReferenceCatalog(paths: Any) -> Any:
    """Read and concatenate reference-catalog FITS shards into an ``astropy.table.Table``."""
    from astropy.table import Table, vstack

    if isinstance(paths, (str, Path)):
        paths = [paths]
    tables = []
    for p in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unit strings of LSST refcats
            t = Table.read(str(p), hdu=1)
        for c in ("coord_ra", "coord_dec"):
            if c not in t.colnames:
                raise FitsFormatError(f"{p}: reference catalog lacks column {c!r}")
        tables.append(t)
    if not tables:
        raise ValueError("no reference catalog file given")
    return tables[0] if len(tables) == 1 else vstack(tables, metadata_conflicts="silent")


def readCamera(path: Any) -> Camera:
    """Read the detector geometry table of an LSST camera archive (or a file written by `writeInputDir`)."""
    from astropy.io import fits

    path = Path(path)
    with fits.open(path) as hdul:
        for hdu in hdul[1:]:
            if hdu.name.upper() == "DETECTOR" and hdu.data is not None and "fpPosition_x" in hdu.columns.names:
                data = hdu.data
                cols = {n: np.asarray(data[n]) for n in hdu.columns.names
                        if n in ("id", "bbox_min_x", "bbox_min_y", "bbox_max_x", "bbox_max_y", "pixelSize_x",
                                 "pixelSize_y", "fpPosition_x", "fpPosition_y", "refPoint_x", "refPoint_y", "yaw")}
                cols["name"] = np.array([str(n).strip() if isinstance(n, str) else
                                         "".join(np.asarray(n).astype(str).ravel()) for n in data["name"]])
                camName = path.stem
                for h in hdul[1:]:
                    if h.name.upper() == "CAMERA" and "name" in (h.columns.names if h.columns else []):
                        n = h.data["name"][0]
                        camName = str(n).strip() if isinstance(n, str) else "".join(np.asarray(n).astype(str).ravel())
                return Camera.fromTable(cols, name=camName)
    raise FitsFormatError(f"{path}: no Detector table with fpPosition columns (not a camera file?)")


def readInputDir(path: Any, *, visits: Iterable[int] | None = None) -> tuple[dict[int, Any], dict[int, VisitSummary]]:
    """Read every visit of an INPUT_DIR.

    Returns
    -------
    sourceTables : `dict` [`int`, `dict`]
        visit -> column table.
    visitSummaries : `dict` [`int`, `VisitSummary`]
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"input directory {path} does not exist")
    found = {}
    for p in sorted(path.iterdir()):
        m = _SOURCE_RE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    if visits is not None:
        wanted = {int(v) for v in visits}
        missing = sorted(wanted - set(found))
        if missing:
            raise FileNotFoundError(f"no sourceTable-<visit>.parq for visits {missing} in {path}")
        found = {v: p for v, p in found.items() if v in wanted}
    if not found:
        raise FileNotFoundError(f"no sourceTable-<visit>.parq file in {path}")
    tables, summaries = {}, {}
    for v, p in sorted(found.items()):
        vs = path / f"visitSummary-{v}.fits"
        if not vs.exists():
            raise FileNotFoundError(f"{vs} is missing (needed with {p.name})")
        tables[v] = readSourceTable(p)
        summaries[v] = readVisitSummary(vs, calexpDir=path)
    return tables, summaries


# ---------------------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------------------

def writeVisitSummary(summary: VisitSummary, path: Any) -> None:
    """Write a `VisitSummary` as an LSST-like ``ExposureCatalog`` FITS file readable by `readVisitSummary`.

    The WCS is not stored here (write the calexp headers with `writeCalexpWcs`).
    """
    from astropy.io import fits

    n = summary.detector.size
    rows = fits.BinTableHDU.from_columns([
        fits.Column("photoCalib", "J", array=np.arange(1, n + 1, dtype=np.int32)),
        fits.Column("visitInfo", "J", array=np.full(n, n + 1, dtype=np.int32)),
        fits.Column("id", "K", array=summary.detector.astype(np.int64)),
        fits.Column("bbox_min_x", "J", array=summary.bbox[:, 0].astype(np.int32)),
        fits.Column("bbox_min_y", "J", array=summary.bbox[:, 1].astype(np.int32)),
        fits.Column("bbox_max_x", "J", array=summary.bbox[:, 2].astype(np.int32)),
        fits.Column("bbox_max_y", "J", array=summary.bbox[:, 3].astype(np.int32)),
        fits.Column("visit", "K", array=np.full(n, summary.visit, dtype=np.int64)),
        fits.Column("physical_filter", "32A", array=np.array([summary.physicalFilter] * n)),
        fits.Column("band", "32A", array=np.array([summary.band] * n)),
    ])
    index = fits.BinTableHDU.from_columns([
        fits.Column("id", "J", array=np.arange(1, n + 2, dtype=np.int32)),
        fits.Column("cat.archive", "J", array=np.array([1] * n + [2], dtype=np.int32)),
        fits.Column("cat.persistable", "J", array=np.array([0] * n + [0], dtype=np.int32)),
        fits.Column("row0", "J", array=np.array(list(range(n)) + [0], dtype=np.int32)),
        fits.Column("nrows", "J", array=np.ones(n + 1, dtype=np.int32)),
        fits.Column("name", "64A", array=np.array(["PhotoCalib"] * n + ["VisitInfo"])),
        fits.Column("module", "64A", array=np.array([""] * (n + 1))),
    ], name="ARCHIVE_INDEX")
    photo = fits.BinTableHDU.from_columns([
        fits.Column("calibrationMean", "D", array=summary.calibrationMean),
        fits.Column("calibrationErr", "D", array=summary.calibrationErr),
    ], name="PhotoCalib")
    photo.header["AR_CATN"] = 1
    photo.header["AR_NAME"] = "PhotoCalib"
    info = fits.BinTableHDU.from_columns([
        fits.Column("exposuretime", "D", array=[summary.exposureTime]),
        fits.Column("tai", "K", array=[int(round(summary.taiNs))]),
        fits.Column("era", "D", array=[summary.era]),
        fits.Column("boresightradec_ra", "D", array=[np.radians(summary.boresightRa)]),
        fits.Column("boresightradec_dec", "D", array=[np.radians(summary.boresightDec)]),
        fits.Column("boresightairmass", "D", array=[summary.airmass]),
        fits.Column("boresightrotangle", "D", array=[summary.boresightRotAngle]),
    ], name="VisitInfo")
    info.header["AR_CATN"] = 2
    info.header["AR_NAME"] = "VisitInfo"
    fits.HDUList([fits.PrimaryHDU(), rows, index, photo, info]).writeto(path, overwrite=True)


def writeCalexpWcs(wcs: TanSipWcs, path: Any) -> None:
    """Write a header-only calexp: an IMAGE extension without pixels carrying the FITS TAN-SIP WCS."""
    from astropy.io import fits

    header = wcs.toFitsHeader()
    header["EXTTYPE"] = "IMAGE"
    image = fits.ImageHDU(data=None, header=header, name="IMAGE")
    fits.HDUList([fits.PrimaryHDU(), image]).writeto(path, overwrite=True)


def writeCamera(camera: Camera, path: Any) -> None:
    """Write the detector table of a `Camera` (readable by `readCamera`)."""
    from astropy.io import fits

    cols = camera.toTable()
    hdu = fits.BinTableHDU.from_columns([
        fits.Column(name, "32A" if name == "name" else ("J" if arr.dtype.kind == "i" else "D"), array=arr)
        for name, arr in cols.items()], name="Detector")
    cam = fits.BinTableHDU.from_columns([fits.Column("name", "32A", array=np.array([camera.name]))], name="Camera")
    fits.HDUList([fits.PrimaryHDU(), cam, hdu]).writeto(path, overwrite=True)


def writeInputDir(survey: Any, outdir: Any) -> Path:
    """Write a `SimulatedSurvey` in the INPUT_DIR layout plus ``refcat.fits`` and ``camera.fits``.

    Returns the output directory. Existing files of the same names are overwritten.
    """
    pq = _requirePyarrow()
    import pyarrow as pa

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    for v, table in survey.sourceTables.items():
        cols = columnTable(table)
        pq.write_table(pa.table({k: np.asarray(a) for k, a in cols.items()}), out / f"sourceTable-{v}.parq")
        summary = survey.visitSummaries[v]
        writeVisitSummary(summary, out / f"visitSummary-{v}.fits")
        for d, wcs in zip(summary.detector.tolist(), summary.wcs):
            writeCalexpWcs(wcs, out / f"calexp-{v}-{d}.fits")
    survey.refCat.write(out / "refcat.fits", overwrite=True)
    writeCamera(survey.camera, out / "camera.fits")
    return out
