"""Reading and writing the LSST MaskedImage / Exposure FITS layout with astropy.

Layout (what :func:`write_fits` writes and :func:`read_fits` expects)
---------------------------------------------------------------------
=====  =========================  ==============================================================
HDU    identification             content
=====  =========================  ==============================================================
0      primary, no data           exposure metadata (the :class:`~astropy.io.fits.Header`)
1      ``EXTTYPE = 'IMAGE'``      image plane, ``float32`` (BITPIX -32) or ``float64`` (-64)
2      ``EXTTYPE = 'MASK'``       mask plane, ``int32`` (BITPIX 32); ``MP_<NAME> = bit`` cards
3      ``EXTTYPE = 'VARIANCE'``   variance plane, ``float32`` or ``float64``
4      ``EXTTYPE = 'PSF'``        optional: ``psf.computeKernelImage(psf.getAveragePosition())``
                                  as ``float64``, average position in ``PSFAVGX``/``PSFAVGY``
=====  =========================  ==============================================================

Each of HDU 1-3 also has ``EXTNAME`` equal to its ``EXTTYPE`` and carries the pixel origin
``xy0 = (x0, y0)`` as the afw alternate linear WCS "A": ``CTYPE1A = CTYPE2A = 'LINEAR'``,
``CRPIX1A = CRPIX2A = 1``, ``CRVAL1A = x0``, ``CRVAL2A = y0``, ``CUNIT1A = CUNIT2A = 'PIXEL'``,
plus the IRAF keys ``LTV1 = -x0``, ``LTV2 = -y0``. A WCS attached to an exposure is written to
these headers with :meth:`astropy.wcs.WCS.to_header` (``relax=True``, so TAN-SIP is kept) after
shifting ``CRPIX`` by ``-xy0``: the file's WCS refers to array pixels (FITS 1-based), while the
in-memory WCS refers to parent pixels (0-based, including ``xy0``, see :mod:`diffcal.image`).

Reading
-------
* HDUs are found by ``EXTTYPE`` or, failing that, ``EXTNAME`` (so tile-compressed ``.fits.fz``
  files, whose HDUs are ``CompImageHDU``, work). IMAGE, MASK and VARIANCE are all required.
* The mask is converted to ``int32`` (e.g. ``int16`` + ``BZERO = 32768`` -> ``uint16`` values
  -> ``int32``). Integer image/variance planes are converted to float (``float32`` for <= 16-bit
  integers, ``float64`` otherwise); float planes keep their precision.
* Mask planes: the ``MP_*`` cards of the MASK header. Default planes (``BAD``...``NO_DATA``) the
  file does not define are added (at their usual bit when free, else at the lowest free bit), so
  code that looks up e.g. ``NO_DATA`` works on files from older writers.
* xy0: ``CRVAL1A/CRVAL2A`` of each plane HDU, else ``-LTV1/-LTV2``, else ``(0, 0)``. When the
  planes disagree, ``xy0Policy`` decides (see :func:`read_fits`).
* Metadata: the primary header minus structural cards (SIMPLE, BITPIX, NAXIS*, EXTEND, ...,
  CHECKSUM/DATASUM and astropy's/cfitsio's standard "FITS ... format is defined" comments).
* WCS: when the IMAGE header has ``CTYPE1``, an :class:`astropy.wcs.WCS` built from it and
  shifted by ``+xy0``. Astropy's informational ``FITSFixedWarning`` is silenced.
* PSF: an HDU with ``EXTTYPE``/``EXTNAME`` ``'PSF'`` becomes a :class:`diffcal.psf.ImagePsf`.
* Anything astropy reports as truncation or corruption (it often only *warns*) and any failure
  to decode the data raises :class:`~diffcal.errors.FitsFormatError` with the path and reason.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
from astropy.io import fits

from .errors import FitsFormatError, InconsistentXy0Warning
from .geom import Point2D, Point2I

__all__ = ["read_fits", "write_fits", "FitsContents"]

PLANE_EXTTYPES = ("IMAGE", "MASK", "VARIANCE")
PSF_EXTTYPE = "PSF"
MASK_PLANE_PREFIX = "MP_"

# Cards describing the HDU structure rather than the exposure: dropped from metadata on read,
# never copied from metadata on write.
_STRUCTURAL_KEYS = frozenset({
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "GROUPS",
    "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM", "END",
})
_STANDARD_COMMENT_PREFIXES = (
    "FITS (Flexible Image Transport System) format is",
    "and Astrophysics', volume 376, page 359",
)
# Substrings of astropy warnings that mean the file is damaged.
_FATAL_WARNING_MARKERS = ("truncated", "corrupt", "not multiple of 2880", "extra bytes")


@dataclasses.dataclass
class FitsContents:
    """Everything :func:`read_fits` extracted from a file (arrays native-endian, 2-D)."""

    path: str
    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    planes: dict[str, int]
    xy0: Point2I
    metadata: fits.Header
    wcs: Any = None
    psf: Any = None

    def masked_image(self):
        """The pixels as a :class:`diffcal.image.MaskedImage`."""
        from .image import Mask, MaskedImage

        mask = Mask._wrap(self.mask, self.xy0, self.planes)
        return MaskedImage._wrap(self.image, mask, self.variance)

    def exposure(self):
        """Everything as a :class:`diffcal.image.Exposure`."""
        from .image import Exposure

        return Exposure.fromMaskedImage(self.masked_image(), psf=self.psf, wcs=self.wcs,
                                        metadata=self.metadata)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------

def _hdu_kind(hdu: Any) -> str:
    header = hdu.header
    for key in ("EXTTYPE", "EXTNAME"):
        value = header.get(key)
        if isinstance(value, str) and value.strip():
            kind = value.strip().upper()
            if kind in PLANE_EXTTYPES or kind == PSF_EXTTYPE:
                return kind
    return ""


def _read_xy0(header: fits.Header, path: str, hdu_name: str) -> Point2I:
    """Pixel origin of one plane HDU: CRVAL1A/2A, else -LTV1/-LTV2, else (0, 0)."""
    if "CRVAL1A" in header or "CRVAL2A" in header:
        raw = (header.get("CRVAL1A", 0), header.get("CRVAL2A", 0))
        crpix = (header.get("CRPIX1A", 1), header.get("CRPIX2A", 1))
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in raw + crpix):
            raise FitsFormatError(f"{path}: {hdu_name} HDU has non-numeric CRVAL1A/2A or CRPIX1A/2A")
        # The afw convention has CRPIX = 1; allow any reference pixel of a unit-scale linear WCS.
        raw = (raw[0] - (crpix[0] - 1), raw[1] - (crpix[1] - 1))
    elif "LTV1" in header or "LTV2" in header:
        raw = (-header.get("LTV1", 0), -header.get("LTV2", 0))
    else:
        return Point2I(0, 0)
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        raise FitsFormatError(f"{path}: {hdu_name} HDU has a non-numeric pixel origin {raw!r}") from None
    if not all(np.isfinite(v) and float(v).is_integer() for v in values):
        raise FitsFormatError(f"{path}: {hdu_name} HDU pixel origin {tuple(values)} is not integral")
    return Point2I(int(values[0]), int(values[1]))


def _read_planes(header: fits.Header, path: str) -> dict[str, int]:
    """Mask planes from MP_<NAME> cards, completed with the default planes."""
    from .image import DEFAULT_MASK_PLANES, MAX_MASK_PLANES

    planes: dict[str, int] = {}
    owner: dict[int, str] = {}
    for key, value in header.items():
        if not key.upper().startswith(MASK_PLANE_PREFIX) or len(key) <= len(MASK_PLANE_PREFIX):
            continue
        name = key[len(MASK_PLANE_PREFIX):]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
                0 <= int(value) < MAX_MASK_PLANES):
            raise FitsFormatError(
                f"{path}: mask plane card {key} = {value!r} is not a bit index 0..{MAX_MASK_PLANES - 1}"
            )
        bit = int(value)
        if bit in owner:
            raise FitsFormatError(f"{path}: mask planes {owner[bit]!r} and {name!r} both claim bit {bit}")
        owner[bit] = name
        planes[name] = bit
    for default_bit, name in enumerate(DEFAULT_MASK_PLANES):
        if name in planes:
            continue
        bit = default_bit if default_bit not in owner else next(
            (b for b in range(MAX_MASK_PLANES) if b not in owner), None)
        if bit is None:
            continue  # the file uses all 32 bits; keep its dictionary as is
        owner[bit] = name
        planes[name] = bit
    return dict(sorted(planes.items(), key=lambda item: item[1]))


def _is_structural(card: Any) -> bool:
    key = card.keyword.upper()
    return key in _STRUCTURAL_KEYS or (key.startswith("NAXIS") and key[5:].isdigit())


def _strip_metadata(header: fits.Header) -> fits.Header:
    """Copy of a primary header without structural and boilerplate cards."""
    out = header.copy()
    for index in reversed(range(len(out))):
        card = out.cards[index]
        if _is_structural(card) or (
                card.keyword.upper() == "COMMENT"
                and str(card.value).strip().startswith(_STANDARD_COMMENT_PREFIXES)):
            del out[index]
    return out


def _float_plane(data: np.ndarray, path: str, name: str) -> np.ndarray:
    if data.dtype.kind == "f":
        dtype = np.dtype(np.float32) if data.dtype.itemsize <= 4 else np.dtype(np.float64)
    elif data.dtype.kind in "iu":
        dtype = np.dtype(np.float32) if data.dtype.itemsize <= 2 else np.dtype(np.float64)
    else:
        raise FitsFormatError(f"{path}: {name} HDU has unsupported pixel type {data.dtype}")
    return np.ascontiguousarray(data, dtype=dtype)


def _mask_plane(data: np.ndarray, path: str) -> np.ndarray:
    if data.dtype.kind not in "iu":
        raise FitsFormatError(f"{path}: MASK HDU has non-integer pixel type {data.dtype}")
    if data.dtype.kind == "u" and data.dtype.itemsize == 4:
        return np.ascontiguousarray(data, dtype=np.uint32).view(np.int32)
    if data.size and data.dtype.itemsize >= 4:
        lo, hi = int(data.min()), int(data.max())
        if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
            raise FitsFormatError(f"{path}: MASK HDU values [{lo}, {hi}] do not fit in int32")
    return np.ascontiguousarray(data, dtype=np.int32)


def _read_wcs(header: fits.Header, xy0: Point2I, path: str) -> Any:
    if "CTYPE1" not in header:
        return None
    from astropy.wcs import FITSFixedWarning, WCS

    from .image import _shift_wcs

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, key=" ", relax=True)
            if wcs.pixel_n_dim != 2:
                raise ValueError(f"the WCS has {wcs.pixel_n_dim} pixel axes, expected 2")
            # File WCS: array pixels, 1-based. In memory: parent pixels (array + xy0), 0-based;
            # astropy handles the 1-based/0-based part through its `origin` argument.
            return _shift_wcs(wcs, xy0.x, xy0.y)
    except Exception as exc:  # astropy raises a variety of wcslib errors
        raise FitsFormatError(f"{path}: cannot parse the WCS of the IMAGE HDU: {exc}") from exc


def _read_psf(hdu: Any, path: str) -> Any:
    data = hdu.data
    if data is None or data.ndim != 2:
        raise FitsFormatError(f"{path}: PSF HDU does not hold a 2-D image")
    header = hdu.header
    position = None
    if "PSFAVGX" in header and "PSFAVGY" in header:
        position = Point2D(float(header["PSFAVGX"]), float(header["PSFAVGY"]))
    from .psf import ImagePsf

    try:
        return ImagePsf(np.ascontiguousarray(data, dtype=np.float64), averagePosition=position)
    except (TypeError, ValueError) as exc:
        raise FitsFormatError(f"{path}: invalid PSF image: {exc}") from exc


def _check_policy(xy0Policy: str) -> str:
    from .image import XY0_POLICIES

    if xy0Policy not in XY0_POLICIES:
        raise ValueError(f"xy0Policy must be one of {XY0_POLICIES}, got {xy0Policy!r}")
    return xy0Policy


def read_fits(path: Any, *, xy0Policy: str = "image", stacklevel: int = 2) -> FitsContents:
    """Read an LSST-layout MaskedImage/Exposure FITS file.

    Parameters
    ----------
    path : str or os.PathLike
        The file (plain or tile-compressed).
    xy0Policy : {"image", "mask", "error"}
        When the IMAGE, MASK and VARIANCE HDUs disagree about the pixel origin: ``"image"``
        takes the IMAGE HDU's origin and warns (:class:`~diffcal.errors.InconsistentXy0Warning`,
        naming every HDU and value); ``"mask"`` takes the MASK HDU's origin silently;
        ``"error"`` raises :class:`~diffcal.errors.FitsFormatError`.
    stacklevel : int
        ``stacklevel`` of the xy0 warning: 2 points at the caller of this function; the
        ``readFits`` methods pass 3 so that it points at *their* caller.

    Returns
    -------
    FitsContents

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    FitsFormatError
        Corrupt or truncated file, missing IMAGE/MASK/VARIANCE HDU, bad shapes or pixel types,
        bad mask-plane cards, unreadable WCS or PSF.
    """
    _check_policy(xy0Policy)
    fspath = os.fspath(path)
    if not os.path.exists(fspath):
        raise FileNotFoundError(2, "No such file", fspath)
    if os.path.isdir(fspath):
        raise IsADirectoryError(21, "Is a directory", fspath)

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(fspath, memmap=False, lazy_load_hdus=False) as hdul:
                raw = _extract(hdul, fspath)
    except (MemoryError, PermissionError):
        raise
    except FitsFormatError:
        _raise_if_fatal(caught, fspath)  # a truncation report explains a missing HDU best
        raise
    except Exception as exc:
        _raise_if_fatal(caught, fspath)
        raise FitsFormatError(f"{fspath}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc
    _raise_if_fatal(caught, fspath)
    for w in caught:  # anything else astropy said is passed on unchanged
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    image, mask, variance, headers, primary, psf_hdu_data = raw
    origins = {name: _read_xy0(headers[name], fspath, name) for name in PLANE_EXTTYPES}
    xy0 = origins["IMAGE"]
    if len(set(origins.values())) > 1:
        described = ", ".join(f"{name} ({o.x}, {o.y})" for name, o in origins.items())
        if xy0Policy == "error":
            raise FitsFormatError(
                f"{fspath}: the HDUs disagree about the pixel origin xy0: {described} "
                "(xy0Policy='error'; use xy0Policy='image' or 'mask' to choose one)"
            )
        if xy0Policy == "mask":
            xy0 = origins["MASK"]
        else:
            warnings.warn(
                f"{fspath}: the HDUs disagree about the pixel origin xy0: {described}; "
                "using the IMAGE origin (xy0Policy='image')",
                InconsistentXy0Warning, stacklevel=stacklevel,
            )
    planes = _read_planes(headers["MASK"], fspath)
    wcs = _read_wcs(headers["IMAGE"], xy0, fspath)
    psf = _read_psf(psf_hdu_data, fspath) if psf_hdu_data is not None else None
    return FitsContents(path=fspath, image=image, mask=mask, variance=variance, planes=planes,
                        xy0=xy0, metadata=primary, wcs=wcs, psf=psf)


class _LoadedHdu:
    """Header and loaded data of one HDU, detached from the open file."""

    def __init__(self, header: fits.Header, data: Optional[np.ndarray]):
        self.header = header
        self.data = data


def _extract(hdul: fits.HDUList, path: str):
    """Load everything needed from an open HDUList (inside the warning-recording context)."""
    if len(hdul) == 0:
        raise FitsFormatError(f"{path}: the file holds no HDU")
    found: dict[str, Any] = {}
    for hdu in hdul[1:]:
        kind = _hdu_kind(hdu)
        if kind and kind not in found:
            found[kind] = hdu
    missing = [name for name in PLANE_EXTTYPES if name not in found]
    if missing:
        raise FitsFormatError(
            f"{path}: no {'/'.join(missing)} HDU (looked for EXTTYPE or EXTNAME "
            f"{', '.join(repr(m) for m in missing)}; the file has {len(hdul)} HDUs)"
        )
    arrays: dict[str, np.ndarray] = {}
    headers: dict[str, fits.Header] = {}
    for name in PLANE_EXTTYPES:
        hdu = found[name]
        if not isinstance(hdu, (fits.ImageHDU, fits.CompImageHDU)):
            raise FitsFormatError(f"{path}: the {name} HDU is a {type(hdu).__name__}, not an image")
        data = hdu.data
        if data is None or data.ndim != 2:
            shape = None if data is None else data.shape
            raise FitsFormatError(f"{path}: the {name} HDU does not hold a 2-D image (shape {shape})")
        arrays[name] = (_mask_plane(data, path) if name == "MASK"
                        else _float_plane(data, path, name))
        headers[name] = hdu.header.copy()
    shapes = {name: arr.shape for name, arr in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise FitsFormatError(f"{path}: plane shapes differ: {shapes}")
    psf = None
    if PSF_EXTTYPE in found:
        hdu = found[PSF_EXTTYPE]
        psf = _LoadedHdu(hdu.header.copy(), None if hdu.data is None else np.array(hdu.data))
    primary = _strip_metadata(hdul[0].header)
    return arrays["IMAGE"], arrays["MASK"], arrays["VARIANCE"], headers, primary, psf


def _raise_if_fatal(caught: list, path: str) -> None:
    for w in caught:
        text = str(w.message)
        if any(marker in text for marker in _FATAL_WARNING_MARKERS):
            raise FitsFormatError(f"{path}: damaged FITS file: {text.strip()}")


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def _set_key(header: fits.Header, key: str, value: Any, comment: str | None = None) -> None:
    """Set ``key``, as a HIERARCH card when it is not a standard 8-character keyword."""
    standard = len(key) <= 8 and all(c.isupper() or c.isdigit() or c in "_-" for c in key)
    header[key if standard else f"HIERARCH {key}"] = (value, comment) if comment else value


def _plane_header(name: str, xy0: Point2I, wcs_cards: fits.Header | None) -> fits.Header:
    header = fits.Header()
    if wcs_cards is not None:
        header.extend(wcs_cards)
    header["INHERIT"] = True
    header["EXTTYPE"] = name
    header["EXTNAME"] = name
    for axis, origin in ((1, xy0.x), (2, xy0.y)):
        header[f"CTYPE{axis}A"] = ("LINEAR", "pixel origin (afw xy0) as a linear WCS")
        header[f"CRPIX{axis}A"] = 1
        header[f"CRVAL{axis}A"] = (origin, "parent coordinate of the first pixel")
        header[f"CUNIT{axis}A"] = "PIXEL"
    header["LTV1"] = -xy0.x
    header["LTV2"] = -xy0.y
    return header


def _metadata_header(metadata: fits.Header | None) -> fits.Header:
    """Copy of the metadata without structural cards (astropy writes its own)."""
    if metadata is None:
        return fits.Header()
    out = metadata.copy()
    for index in reversed(range(len(out))):
        if _is_structural(out.cards[index]):
            del out[index]
    return out


def write_fits(path: Any, maskedImage: Any, *, metadata: fits.Header | None = None,
               wcs: Any = None, psf: Any = None) -> None:
    """Write a masked image (and optional metadata, WCS, PSF) in the LSST layout.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; replaced atomically (written to a hidden temporary file in the same
        directory, then renamed), so no partial file is left behind on failure.
    maskedImage : diffcal.image.MaskedImage
        Pixels and origin.
    metadata : astropy.io.fits.Header, optional
        Cards for the primary header (structural cards are skipped).
    wcs : astropy.wcs.WCS, optional
        WCS in parent pixel coordinates; written to the plane headers shifted by ``-xy0``.
    psf : diffcal.psf.Psf, optional
        Written as HDU4 ``EXTTYPE='PSF'``: its kernel image at its average position (float64),
        with the average position in ``PSFAVGX``/``PSFAVGY`` (parent pixels) and the class
        name in ``PSFCLASS``.

    Raises
    ------
    FitsFormatError
        astropy refuses a card (e.g. malformed metadata); the message names the reason.
    """
    from .image import _shift_wcs

    fspath = os.fspath(path)
    xy0 = Point2I(*maskedImage.getXY0())
    wcs_cards = None
    if wcs is not None:
        shifted = _shift_wcs(wcs, -xy0.x, -xy0.y)
        wcs_cards = shifted.to_header(relax=True)

    mask = maskedImage.mask
    mask_header = _plane_header("MASK", xy0, wcs_cards)
    for name, bit in mask.getMaskPlaneDict().items():
        _set_key(mask_header, f"{MASK_PLANE_PREFIX}{name}", bit)

    hdus: list[Any] = [
        fits.PrimaryHDU(header=_metadata_header(metadata)),
        fits.ImageHDU(np.ascontiguousarray(maskedImage.image),
                      header=_plane_header("IMAGE", xy0, wcs_cards)),
        fits.ImageHDU(np.ascontiguousarray(mask.array, dtype=np.int32), header=mask_header),
        fits.ImageHDU(np.ascontiguousarray(maskedImage.variance),
                      header=_plane_header("VARIANCE", xy0, wcs_cards)),
    ]
    if psf is not None:
        position = psf.getAveragePosition()
        kernel = np.ascontiguousarray(psf.computeKernelImage(position), dtype=np.float64)
        psf_header = fits.Header()
        psf_header["EXTTYPE"] = PSF_EXTTYPE
        psf_header["EXTNAME"] = PSF_EXTTYPE
        psf_header["PSFAVGX"] = (float(position[0]), "PSF average position x (parent pixels)")
        psf_header["PSFAVGY"] = (float(position[1]), "PSF average position y (parent pixels)")
        psf_header["PSFCLASS"] = (type(psf).__name__, "class of the PSF that was written")
        hdus.append(fits.ImageHDU(kernel, header=psf_header))

    target = Path(fspath)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "xb"):  # claim the name (fails early if the directory does not exist)
        pass
    try:
        fits.HDUList(hdus).writeto(tmp, overwrite=True, output_verify="silentfix+exception")
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, fits.VerifyError):
            raise FitsFormatError(f"{fspath}: cannot write FITS file: {exc}") from exc
        raise
