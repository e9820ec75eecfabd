"""`PhotoCalib`: the photometric calibration of one (visit, detector), as produced by the photometric fit.

A calibration converts an instrumental flux (counts, "instFlux") measured at pixel (x, y) into a flux in
nanojansky (nJy) and an AB magnitude. Two forms, as the LSST ``PhotoCalib`` the reference produces:

* **constant**: ``calibration(x, y) = calibrationMean`` (nJy per count) everywhere on the detector;
* **bounded Chebyshev field** (`ChebyshevField`): ``calibration(x, y) = scale * T(u, v)`` ("flux" field) or
  ``scale * 10**(-0.4 * T(u, v))`` ("magnitude" field), where ``(u, v)`` is the focal-plane position of the
  pixel (an affine pixel -> focal-plane map, mm) mapped to [-1, 1]^2 over the focal-plane box the field was
  fitted on, and ``T(u, v) = sum_ij a_ij T_i(u) T_j(v)`` with the coefficients ordered with the y degree j outer
  (0..n) and the x degree i inner (0..n-j). The field is only meant to be evaluated inside the detector bbox.

``calibrationMean`` is the mean calibration over the detector (exact for "flux" fields; for "magnitude"
fields ``scale * 10**(-0.4 * mean(T))``, the reference's approximation), ``calibrationErr`` its uncertainty
(nJy per count; the fit copies the input calibration's error, as the reference does for simple models).

Conversions (reference formulas): ``flux = instFlux * calibration``; ``fluxErr = |flux| *
hypot(instFluxErr / instFlux, calibrationErr / calibrationMean)``; ``mag = -2.5 log10(flux / 3631e9)`` (AB;
flux in nJy); ``magErr = 2.5 / ln(10) * hypot(instFluxErr / instFlux, calibrationErr / calibrationMean)``.

FITS layout (`writeFits` / `readFits`, one binary-table HDU ``EXTNAME = 'PHOTOCALIB'``): header keys
``CALMEAN``, ``CALERR`` (nJy/count), ``BBOXX0``, ``BBOXY0``, ``BBOXX1``, ``BBOXY1`` (inclusive pixel bbox),
``FIELD`` (``'CONSTANT'``, ``'FLUX'`` or ``'MAGNITUDE'``), and for fields ``ORDER``, ``FSCALE`` (the scale),
``FBOXX0``, ``FBOXY0``, ``FBOXX1``, ``FBOXY1`` (focal-plane box, mm), ``PIX2FOC0`` .. ``PIX2FOC5`` (affine
map: ``xf = p0 x + p1 y + p4``, ``yf = p2 x + p3 y + p5``); optional ``VISIT``, ``DETECTOR``. Rows: one per
coefficient with columns ``i`` (x degree), ``j`` (y degree), ``coefficient``. Values round-trip exactly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PhotoCalib", "ChebyshevField", "nanojanskyToAbMag", "abMagToNanojansky"]

_AB_NJY = 3631e9  # the AB zero point in nJy
_MAG_PER_LN = 2.5 / math.log(10.0)


def nanojanskyToAbMag(flux: Any) -> Any:
    """AB magnitude of a flux in nJy (``-2.5 log10(flux / 3631e9)``)."""
    return -2.5 * np.log10(np.asarray(flux, dtype=float) / _AB_NJY)


def abMagToNanojansky(mag: Any) -> Any:
    """Flux in nJy of an AB magnitude."""
    return _AB_NJY * 10.0 ** (-0.4 * np.asarray(mag, dtype=float))


def _chebyshevIndices(order: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) degrees of the coefficients in storage order (j outer, i inner, i + j <= order)."""
    ii, jj = [], []
    for j in range(order + 1):
        for i in range(order + 1 - j):
            ii.append(i)
            jj.append(j)
    return np.array(ii, dtype=np.int64), np.array(jj, dtype=np.int64)


@dataclass(frozen=True)
class ChebyshevField:
    """A 2-D Chebyshev field over the focal plane, evaluated at detector pixels.

    Attributes
    ----------
    kind : `str`
        ``"flux"`` (calibration = scale * T) or ``"magnitude"`` (calibration = scale * 10**(-0.4 T)).
    order : `int`
        Total order n; ``(n+1)(n+2)/2`` coefficients.
    coefficients : `numpy.ndarray`
        In storage order (y degree outer, x degree inner).
    scale : `float`
        nJy per count (the chip constant of the constrained models, converted to nJy for magnitudes).
    focalBox : tuple of 4 floats
        (xmin, ymin, xmax, ymax) in mm, mapped to [-1, 1]^2.
    pixToFocal : tuple of 6 floats
        Affine pixel -> focal-plane map (``xf = p0 x + p1 y + p4``, ``yf = p2 x + p3 y + p5``).
    """

    kind: str
    order: int
    coefficients: np.ndarray
    scale: float
    focalBox: tuple[float, float, float, float]
    pixToFocal: tuple[float, float, float, float, float, float]

    def __post_init__(self) -> None:
        if self.kind not in ("flux", "magnitude"):
            raise ValueError(f"ChebyshevField.kind must be 'flux' or 'magnitude', got {self.kind!r}")
        n = (self.order + 1) * (self.order + 2) // 2
        coeffs = np.asarray(self.coefficients, dtype=float).ravel()
        if self.order < 0 or coeffs.size != n:
            raise ValueError(f"ChebyshevField: order {self.order} needs {n} coefficients, got {coeffs.size}")
        if not (self.focalBox[2] > self.focalBox[0] and self.focalBox[3] > self.focalBox[1]):
            raise ValueError(f"ChebyshevField: empty focal-plane box {self.focalBox}")
        object.__setattr__(self, "coefficients", coeffs)

    def unitCoordinates(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Pixel positions -> Chebyshev coordinates (u, v) in [-1, 1] over the focal-plane box."""
        p = self.pixToFocal
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        xf = p[0] * x + p[1] * y + p[4]
        yf = p[2] * x + p[3] * y + p[5]
        b = self.focalBox
        return (2.0 * xf - (b[0] + b[2])) / (b[2] - b[0]), (2.0 * yf - (b[1] + b[3])) / (b[3] - b[1])

    def evaluateT(self, x: Any, y: Any) -> np.ndarray:
        """T(u, v) at pixel positions (dimensionless for "flux", magnitudes for "magnitude")."""
        from numpy.polynomial import chebyshev

        u, v = self.unitCoordinates(x, y)
        grid = np.zeros((self.order + 1, self.order + 1))
        i, j = _chebyshevIndices(self.order)
        grid[i, j] = self.coefficients
        return chebyshev.chebval2d(u, v, grid)

    def calibration(self, x: Any, y: Any) -> np.ndarray:
        t = self.evaluateT(x, y)
        return self.scale * (t if self.kind == "flux" else 10.0 ** (-0.4 * t))

    def meanT(self, bbox: tuple[float, float, float, float]) -> float:
        """Exact mean of T over the pixel rectangle [x0, x1] x [y0, y1] (Gauss-Legendre quadrature with
        order + 1 nodes per axis, exact for the polynomial T of the affine pixel coordinates)."""
        x0, y0, x1, y1 = bbox
        nodes, weights = np.polynomial.legendre.leggauss(self.order + 1)
        xs = 0.5 * (x0 + x1) + 0.5 * (x1 - x0) * nodes
        ys = 0.5 * (y0 + y1) + 0.5 * (y1 - y0) * nodes
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        w = np.outer(weights, weights) / 4.0
        return float(np.sum(w * self.evaluateT(gx, gy)))


def _putFloat(header: Any, key: str, value: float, comment: str = "") -> None:
    """A float header card (readable, but FITS formats it with 16 significant digits) plus its exact
    value as a hexadecimal string under ``HIERARCH EXACT <key>``, which `_getFloat` prefers."""
    header[key] = (float(value), comment)
    header[f"HIERARCH EXACT {key}"] = float(value).hex()


def _getFloat(header: Any, key: str) -> float:
    exact = f"EXACT {key}"
    return float.fromhex(header[exact]) if exact in header else float(header[key])


class PhotoCalib:
    """Photometric calibration of one detector of one visit (see the module docstring).

    Parameters
    ----------
    calibrationMean : `float`
        Mean calibration over the detector, nJy per count (> 0).
    calibrationErr : `float`
        Its uncertainty, nJy per count (>= 0).
    bbox : tuple of 4 numbers, optional
        Inclusive pixel bbox (minX, minY, maxX, maxY) of the detector.
    field : `ChebyshevField`, optional
        Spatially varying calibration; None for a constant one.

    Raises
    ------
    ValueError
        A non-positive or non-finite calibrationMean, a negative or non-finite calibrationErr.
    """

    def __init__(self, calibrationMean: float, calibrationErr: float = 0.0,
                 bbox: tuple[float, float, float, float] | None = None, *, field: ChebyshevField | None = None,
                 visit: int | None = None, detector: int | None = None) -> None:
        mean = float(calibrationMean)
        err = float(calibrationErr)
        if not (math.isfinite(mean) and mean > 0.0):
            raise ValueError(f"PhotoCalib: calibrationMean must be positive and finite, got {calibrationMean!r}")
        if not (math.isfinite(err) and err >= 0.0):
            raise ValueError(f"PhotoCalib: calibrationErr must be >= 0 and finite, got {calibrationErr!r}")
        if field is not None and bbox is None:
            raise ValueError("PhotoCalib: a spatially varying calibration needs the detector bbox")
        self._mean = mean
        self._err = err
        self._bbox = None if bbox is None else tuple(float(v) for v in bbox)
        self._field = field
        self.visit = visit
        self.detector = detector

    # -- accessors ------------------------------------------------------------------------------------

    def getCalibrationMean(self) -> float:
        """Mean calibration over the detector (nJy per count)."""
        return self._mean

    def getCalibrationErr(self) -> float:
        """Uncertainty of the calibration (nJy per count)."""
        return self._err

    def getBBox(self) -> tuple[float, float, float, float] | None:
        return self._bbox

    @property
    def field(self) -> ChebyshevField | None:
        return self._field

    @property
    def isConstant(self) -> bool:
        return self._field is None

    def __repr__(self) -> str:
        kind = "constant" if self._field is None else f"{self._field.kind} Chebyshev order {self._field.order}"
        return f"PhotoCalib(mean={self._mean!r} nJy/count, err={self._err!r}, {kind})"

    # -- evaluation -----------------------------------------------------------------------------------

    def getCalibration(self, x: Any = None, y: Any = None) -> Any:
        """Calibration (nJy per count) at pixel positions; for a constant calibration x, y may be omitted."""
        if self._field is None:
            if x is None:
                return self._mean
            return np.full(np.shape(np.asarray(x, dtype=float)), self._mean)
        if x is None or y is None:
            raise ValueError("PhotoCalib: a spatially varying calibration needs pixel positions x, y")
        return self._field.calibration(x, y)

    def instFluxToNanojansky(self, instFlux: Any, instFluxErr: Any = None, x: Any = None, y: Any = None) -> Any:
        """Calibrated flux in nJy of instrumental fluxes (counts) at pixel positions.

        Returns the flux, or ``(flux, fluxErr)`` when ``instFluxErr`` is given.
        """
        instFlux = np.asarray(instFlux, dtype=float)
        cal = self.getCalibration(x, y) if (x is not None or self._field is not None) else self._mean
        flux = instFlux * cal
        if instFluxErr is None:
            return flux
        instFluxErr = np.asarray(instFluxErr, dtype=float)
        err = np.abs(flux) * np.hypot(instFluxErr / instFlux, self._err / self._mean)
        return flux, err

    def instFluxToMagnitude(self, instFlux: Any, instFluxErr: Any = None, x: Any = None, y: Any = None) -> Any:
        """AB magnitudes of instrumental fluxes; ``(mag, magErr)`` when ``instFluxErr`` is given."""
        flux = self.instFluxToNanojansky(instFlux, None, x, y)
        mag = nanojanskyToAbMag(flux)
        if instFluxErr is None:
            return mag
        instFlux = np.asarray(instFlux, dtype=float)
        err = _MAG_PER_LN * np.hypot(np.asarray(instFluxErr, dtype=float) / instFlux, self._err / self._mean)
        return mag, err

    def meanOverBBox(self) -> float:
        """Exact mean of the calibration over the bbox for constant and "flux" fields; for "magnitude" fields
        the mean of 10**(-0.4 T) by Gauss-Legendre quadrature on a 32 x 32 grid."""
        if self._field is None:
            return self._mean
        f = self._field
        if f.kind == "flux":
            return f.scale * f.meanT(self._bbox)
        x0, y0, x1, y1 = self._bbox
        nodes, weights = np.polynomial.legendre.leggauss(32)
        gx, gy = np.meshgrid(0.5 * (x0 + x1) + 0.5 * (x1 - x0) * nodes, 0.5 * (y0 + y1) + 0.5 * (y1 - y0) * nodes,
                             indexing="ij")
        return float(np.sum(np.outer(weights, weights) / 4.0 * f.calibration(gx, gy)))

    # -- FITS -----------------------------------------------------------------------------------------

    def toHdu(self) -> Any:
        """A `astropy.io.fits.BinTableHDU` in the layout of the module docstring."""
        from astropy.io import fits

        f = self._field
        if f is None:
            i = j = np.zeros(0, dtype=np.int64)
            c = np.zeros(0)
        else:
            i, j = _chebyshevIndices(f.order)
            c = f.coefficients
        hdu = fits.BinTableHDU.from_columns([
            fits.Column(name="i", format="K", array=i),
            fits.Column(name="j", format="K", array=j),
            fits.Column(name="coefficient", format="D", array=c),
        ], name="PHOTOCALIB")
        h = hdu.header
        _putFloat(h, "CALMEAN", self._mean, "mean calibration (nJy/count)")
        _putFloat(h, "CALERR", self._err, "calibration uncertainty (nJy/count)")
        if self._bbox is not None:
            for key, v in zip(("BBOXX0", "BBOXY0", "BBOXX1", "BBOXY1"), self._bbox):
                _putFloat(h, key, v)
        h["FIELD"] = "CONSTANT" if f is None else f.kind.upper()
        if f is not None:
            h["ORDER"] = f.order
            _putFloat(h, "FSCALE", f.scale, "field scale (nJy/count)")
            for key, v in zip(("FBOXX0", "FBOXY0", "FBOXX1", "FBOXY1"), f.focalBox):
                _putFloat(h, key, v, "focal-plane box (mm)")
            for k, v in enumerate(f.pixToFocal):
                _putFloat(h, f"PIX2FOC{k}", v)
        if self.visit is not None:
            h["VISIT"] = int(self.visit)
        if self.detector is not None:
            h["DETECTOR"] = int(self.detector)
        return hdu

    @classmethod
    def fromHdu(cls, hdu: Any) -> "PhotoCalib":
        """Inverse of `toHdu`.

        Raises
        ------
        ValueError
            Missing keys or an unknown FIELD.
        """
        h = hdu.header
        for key in ("CALMEAN", "CALERR", "FIELD"):
            if key not in h:
                raise ValueError(f"PhotoCalib FITS: missing header key {key}")
        bbox = None
        if "BBOXX0" in h:
            bbox = tuple(_getFloat(h, k) for k in ("BBOXX0", "BBOXY0", "BBOXX1", "BBOXY1"))
        kind = str(h["FIELD"]).strip().upper()
        field = None
        if kind in ("FLUX", "MAGNITUDE"):
            order = int(h["ORDER"])
            i = np.asarray(hdu.data["i"], dtype=np.int64)
            j = np.asarray(hdu.data["j"], dtype=np.int64)
            c = np.asarray(hdu.data["coefficient"], dtype=float)
            ei, ej = _chebyshevIndices(order)
            coeffs = np.zeros(ei.size)
            pos = {(int(a), int(b)): k for k, (a, b) in enumerate(zip(ei, ej))}
            for a, b, v in zip(i, j, c):
                if (int(a), int(b)) not in pos:
                    raise ValueError(f"PhotoCalib FITS: coefficient ({a}, {b}) exceeds order {order}")
                coeffs[pos[(int(a), int(b))]] = v
            field = ChebyshevField(kind.lower(), order, coeffs, _getFloat(h, "FSCALE"),
                                   tuple(_getFloat(h, k) for k in ("FBOXX0", "FBOXY0", "FBOXX1", "FBOXY1")),
                                   tuple(_getFloat(h, f"PIX2FOC{k}") for k in range(6)))
        elif kind != "CONSTANT":
            raise ValueError(f"PhotoCalib FITS: unknown FIELD {kind!r}")
        return cls(_getFloat(h, "CALMEAN"), _getFloat(h, "CALERR"), bbox, field=field,
                   visit=int(h["VISIT"]) if "VISIT" in h else None,
                   detector=int(h["DETECTOR"]) if "DETECTOR" in h else None)

    def writeFits(self, path: Any) -> None:
        """Write to a FITS file (empty primary HDU + the PHOTOCALIB table), atomically."""
        from astropy.io import fits

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        fits.HDUList([fits.PrimaryHDU(), self.toHdu()]).writeto(tmp, overwrite=True)
        os.replace(tmp, path)

    @classmethod
    def readFits(cls, path: Any) -> "PhotoCalib":
        from astropy.io import fits

        with fits.open(path) as hdul:
            if "PHOTOCALIB" not in hdul:
                raise ValueError(f"{path}: no PHOTOCALIB HDU")
            return cls.fromHdu(hdul["PHOTOCALIB"])
