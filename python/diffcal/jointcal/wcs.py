"""FITS TAN-SIP world coordinate systems for jointcal: evaluation, fitting and FITS headers.

Conventions
-----------
* Pixel positions are **0-based** (the centre of the first pixel is ``(0, 0)``), as in LSST afw and
  astropy with ``origin=0``. FITS headers use 1-based ``CRPIX``; `TanSipWcs.toFitsHeader` and
  `TanSipWcs.fromFitsHeader` convert.
* ``cd`` is the 2x2 CD matrix in degrees per pixel; ``crval`` is (RA, Dec) in degrees; intermediate world
  coordinates are gnomonic standard coordinates in degrees (x increasing with RA).
* SIP forward polynomials ``a``/``b`` are ``(order + 1, order + 1)`` arrays with ``a[p, q]`` the
  coefficient ``A_p_q`` of ``u**p * v**q`` (``u, v`` = pixel - crpix); the inverse ``ap``/``bp`` map
  intermediate pixel offsets back (``AP_p_q``). Only terms with ``p + q >= 2`` are written for the forward
  polynomials (the linear part is in ``cd``), as the SIP convention expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TanSipWcs", "fitTanSip", "gnomonicProject", "gnomonicDeproject"]


def _core() -> Any:
    from .._core import _jointcal

    return _jointcal


def gnomonicProject(ra0: float, dec0: float, ra: Any, dec: Any) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection about ``(ra0, dec0)``.

    Parameters
    ----------
    ra0, dec0 : `float`
        Tangent point, degrees.
    ra, dec : array-like
        Positions, degrees.

    Returns
    -------
    xi, eta : `numpy.ndarray`
        Standard coordinates in degrees (NaN on the far hemisphere).
    """
    return _core().gnomonic_project(float(ra0), float(dec0), np.asarray(ra, float).ravel(),
                                    np.asarray(dec, float).ravel())


def gnomonicDeproject(ra0: float, dec0: float, xi: Any, eta: Any) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `gnomonicProject`; returns (ra, dec) in degrees, ra in [0, 360)."""
    return _core().gnomonic_deproject(float(ra0), float(dec0), np.asarray(xi, float).ravel(),
                                      np.asarray(eta, float).ravel())


def _sipMatrix(coeffs: Any, order: int) -> np.ndarray:
    m = np.zeros((order + 1, order + 1))
    if coeffs is not None:
        c = np.asarray(coeffs, dtype=float)
        m[: c.shape[0], : c.shape[1]] = c[: order + 1, : order + 1]
    return m


def _evalSip(m: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    order = m.shape[0] - 1
    out = np.zeros_like(u)
    for p in range(order + 1):
        for q in range(order + 1 - p):
            if m[p, q] != 0.0:
                out = out + m[p, q] * u**p * v**q
    return out


@dataclass
class TanSipWcs:
    """A TAN or TAN-SIP WCS (pixel -> sky), 0-based pixels.

    Parameters
    ----------
    crpix : (float, float)
        Reference pixel, 0-based.
    cd : array-like, shape (2, 2)
        CD matrix, degrees per pixel.
    crval : (float, float)
        Reference sky position (RA, Dec), degrees.
    a, b : array-like, shape (n + 1, n + 1), optional
        SIP forward distortion polynomials (``a[p, q]`` multiplies ``u**p v**q``).
    ap, bp : array-like, optional
        SIP inverse polynomials (only used when writing headers and by `skyToPixel`'s first guess).
    """

    crpix: tuple[float, float]
    cd: np.ndarray
    crval: tuple[float, float]
    a: np.ndarray | None = None
    b: np.ndarray | None = None
    ap: np.ndarray | None = None
    bp: np.ndarray | None = None
    _native: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.crpix = (float(self.crpix[0]), float(self.crpix[1]))
        self.crval = (float(self.crval[0]), float(self.crval[1]))
        self.cd = np.array(self.cd, dtype=float).reshape(2, 2)
        if not np.all(np.isfinite(self.cd)) or np.linalg.det(self.cd) == 0.0:
            raise ValueError(f"TanSipWcs: CD matrix must be finite and invertible, got {self.cd.tolist()}")
        if not all(np.isfinite(self.crpix + self.crval)):
            raise ValueError(f"TanSipWcs: CRPIX/CRVAL must be finite, got {self.crpix}, {self.crval}")
        if (self.a is None) != (self.b is None):
            raise ValueError("TanSipWcs: give both SIP polynomials a and b, or neither")
        if self.a is not None:
            order = max(np.asarray(self.a).shape[0], np.asarray(self.b).shape[0]) - 1
            self.a = _sipMatrix(self.a, order)
            self.b = _sipMatrix(self.b, order)
        if self.ap is not None or self.bp is not None:
            order = max(np.asarray(x).shape[0] for x in (self.ap, self.bp) if x is not None) - 1
            self.ap = _sipMatrix(self.ap, order)
            self.bp = _sipMatrix(self.bp, order)

    @property
    def sipOrder(self) -> int:
        """Order of the forward SIP polynomials (0 = plain TAN)."""
        return 0 if self.a is None else self.a.shape[0] - 1

    def native(self) -> Any:
        """The compiled twin (``diffcal._core._jointcal.TanSipWcs``), built once."""
        if self._native is None:
            n = self.sipOrder
            a = self.a.ravel() if n > 0 else np.zeros(0)
            b = self.b.ravel() if n > 0 else np.zeros(0)
            self._native = _core().TanSipWcs(list(self.crpix), list(self.cd.ravel()), list(self.crval), n, a, b)
        return self._native

    def pixelToSky(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Map 0-based pixel positions to (RA, Dec) in degrees.

        Parameters
        ----------
        x, y : array-like
            Pixel positions (any shape; flattened).

        Returns
        -------
        ra, dec : `numpy.ndarray`
            Degrees, RA in [0, 360).
        """
        return self.native().pixel_to_sky(np.asarray(x, float).ravel(), np.asarray(y, float).ravel())

    def pixelToIwc(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Map 0-based pixels to intermediate world coordinates (gnomonic, degrees)."""
        return self.native().pixel_to_iwc(np.asarray(x, float).ravel(), np.asarray(y, float).ravel())

    def skyToPixel(self, ra: Any, dec: Any, *, tol: float = 1e-9, maxIter: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """Invert `pixelToSky` by Newton iterations (accurate to ``tol`` pixels)."""
        xi, eta = gnomonicProject(self.crval[0], self.crval[1], ra, dec)
        cdinv = np.linalg.inv(self.cd)
        u = cdinv[0, 0] * xi + cdinv[0, 1] * eta
        v = cdinv[1, 0] * xi + cdinv[1, 1] * eta
        x = u + self.crpix[0]
        y = v + self.crpix[1]
        h = 0.5
        for _ in range(maxIter):
            fx, fy = self.pixelToIwc(x, y)
            ex, ey = fx - xi, fy - eta
            fxx, fyx = self.pixelToIwc(x + h, y)
            fxy, fyy = self.pixelToIwc(x, y + h)
            j00, j10 = (fxx - fx) / h, (fyx - fy) / h
            j01, j11 = (fxy - fx) / h, (fyy - fy) / h
            det = j00 * j11 - j01 * j10
            dx = (j11 * ex - j01 * ey) / det
            dy = (-j10 * ex + j00 * ey) / det
            x = x - dx
            y = y - dy
            if np.all(np.abs(dx) < tol) and np.all(np.abs(dy) < tol):
                break
        return x, y

    # -- FITS ---------------------------------------------------------------------------------------

    def toFitsHeader(self) -> Any:
        """FITS header cards (``astropy.io.fits.Header``) of this WCS, 1-based ``CRPIX``."""
        from astropy.io import fits

        h = fits.Header()
        sip = self.sipOrder > 0
        h["CTYPE1"] = "RA---TAN-SIP" if sip else "RA---TAN"
        h["CTYPE2"] = "DEC--TAN-SIP" if sip else "DEC--TAN"
        h["CRPIX1"] = self.crpix[0] + 1.0
        h["CRPIX2"] = self.crpix[1] + 1.0
        h["CRVAL1"] = self.crval[0]
        h["CRVAL2"] = self.crval[1]
        h["CUNIT1"] = "deg"
        h["CUNIT2"] = "deg"
        h["CD1_1"] = self.cd[0, 0]
        h["CD1_2"] = self.cd[0, 1]
        h["CD2_1"] = self.cd[1, 0]
        h["CD2_2"] = self.cd[1, 1]
        h["RADESYS"] = "ICRS"
        if sip:
            for name, m in (("A", self.a), ("B", self.b)):
                n = m.shape[0] - 1
                h[f"{name}_ORDER"] = n
                for p in range(n + 1):
                    for q in range(n + 1 - p):
                        if p + q >= 2:
                            h[f"{name}_{p}_{q}"] = float(m[p, q])
            for name, m in (("AP", self.ap), ("BP", self.bp)):
                if m is None:
                    continue
                n = m.shape[0] - 1
                h[f"{name}_ORDER"] = n
                for p in range(n + 1):
                    for q in range(n + 1 - p):
                        h[f"{name}_{p}_{q}"] = float(m[p, q])
        return h

    @classmethod
    def fromFitsHeader(cls, header: Any, *, path: str = "<header>") -> "TanSipWcs":
        """Read a TAN or TAN-SIP WCS from FITS header cards.

        Parameters
        ----------
        header : mapping
            FITS header (``astropy.io.fits.Header`` or dict-like).
        path : `str`
            Name used in error messages.

        Raises
        ------
        diffcal.errors.FitsFormatError
            If the header has no celestial TAN(-SIP) WCS.
        """
        from ..errors import FitsFormatError

        c1 = str(header.get("CTYPE1", "")).strip()
        c2 = str(header.get("CTYPE2", "")).strip()
        if not (c1.startswith("RA---TAN") and c2.startswith("DEC--TAN")):
            raise FitsFormatError(f"{path}: expected a TAN or TAN-SIP WCS (CTYPE1/2 RA---TAN[-SIP]), "
                                  f"got {c1!r}/{c2!r}")
        try:
            crpix = (float(header["CRPIX1"]) - 1.0, float(header["CRPIX2"]) - 1.0)
            crval = (float(header["CRVAL1"]), float(header["CRVAL2"]))
            if "CD1_1" in header:
                cd = [[float(header.get("CD1_1", 0.0)), float(header.get("CD1_2", 0.0))],
                      [float(header.get("CD2_1", 0.0)), float(header.get("CD2_2", 0.0))]]
            else:
                cdelt = (float(header.get("CDELT1", 1.0)), float(header.get("CDELT2", 1.0)))
                pc = [[float(header.get("PC1_1", 1.0)), float(header.get("PC1_2", 0.0))],
                      [float(header.get("PC2_1", 0.0)), float(header.get("PC2_2", 1.0))]]
                cd = [[cdelt[0] * pc[0][0], cdelt[0] * pc[0][1]], [cdelt[1] * pc[1][0], cdelt[1] * pc[1][1]]]
        except KeyError as exc:
            raise FitsFormatError(f"{path}: WCS keyword {exc.args[0]} is missing") from None

        def poly(name: str) -> np.ndarray | None:
            key = f"{name}_ORDER"
            if key not in header:
                return None
            n = int(header[key])
            m = np.zeros((n + 1, n + 1))
            for p in range(n + 1):
                for q in range(n + 1 - p):
                    m[p, q] = float(header.get(f"{name}_{p}_{q}", 0.0))
            return m

        a, b = (poly("A"), poly("B")) if c1.endswith("-SIP") else (None, None)
        ap, bp = (poly("AP"), poly("BP")) if c1.endswith("-SIP") else (None, None)
        return cls(crpix, np.array(cd), crval, a, b, ap, bp)

    def toAstropy(self) -> Any:
        """An ``astropy.wcs.WCS`` built from `toFitsHeader` (use it with ``origin=0``)."""
        import warnings

        from astropy.wcs import WCS, FITSFixedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            return WCS(self.toFitsHeader(), relax=True)


def _polyTerms(order: int, minDegree: int) -> list[tuple[int, int]]:
    return [(p, d - p) for d in range(minDegree, order + 1) for p in range(d, -1, -1)]


def _design(u: np.ndarray, v: np.ndarray, terms: list[tuple[int, int]]) -> np.ndarray:
    """Matrix of monomials u**p v**q (one column per term), from cumulative powers."""
    n = max((max(p, q) for p, q in terms), default=0)
    up = [np.ones_like(u)]
    vp = [np.ones_like(v)]
    for _ in range(n):
        up.append(up[-1] * u)
        vp.append(vp[-1] * v)
    out = np.empty((u.size, len(terms)))
    for i, (p, q) in enumerate(terms):
        np.multiply(up[p], vp[q], out=out[:, i])
    return out


def fitTanSip(x: np.ndarray, y: np.ndarray, xi: np.ndarray, eta: np.ndarray, crpix: tuple[float, float],
              crval: tuple[float, float], order: int, *, inverseOrder: int | None = None,
              inverseTolerance: float = 1e-3, maxInverseOrder: int | None = None) -> tuple[TanSipWcs, dict]:
    """Fit a TAN-SIP WCS to pixel -> tangent-plane pairs.

    The tangent-plane positions ``(xi, eta)`` (degrees, gnomonic about ``crval``) must vanish at ``crpix``
    (so the polynomial has no constant term). The linear part becomes the CD matrix and the orders
    2..``order`` the SIP ``A``/``B`` polynomials; when the input is exactly a polynomial of that order the
    fit is exact to rounding. The inverse ``AP``/``BP`` polynomials are fitted with increasing order
    (from ``inverseOrder`` or ``order``, up to ``maxInverseOrder``, default ``order + 3``) until their maximum
    error over the points is below ``inverseTolerance`` pixels.

    Parameters
    ----------
    x, y : `numpy.ndarray`
        0-based pixel positions.
    xi, eta : `numpy.ndarray`
        Tangent-plane positions, degrees.
    crpix : (float, float)
        0-based reference pixel.
    crval : (float, float)
        Tangent point (RA, Dec), degrees.
    order : `int`
        Forward polynomial order (>= 1).

    Returns
    -------
    wcs : `TanSipWcs`
    stats : `dict`
        ``forward_max_deg`` (max forward residual, degrees) and ``inverse_max_pix`` (max inverse residual,
        pixels), ``inverse_order``.
    """
    x = np.asarray(x, float).ravel()
    y = np.asarray(y, float).ravel()
    xi = np.asarray(xi, float).ravel()
    eta = np.asarray(eta, float).ravel()
    u = x - crpix[0]
    v = y - crpix[1]
    scale = max(float(np.max(np.abs(np.concatenate([u, v])))), 1.0)
    us, vs = u / scale, v / scale
    terms = _polyTerms(order, 1)
    A = _design(us, vs, terms)
    coef, *_ = np.linalg.lstsq(A, np.stack([xi, eta], axis=1), rcond=None)
    # unscale: term (p, q) coefficient / scale**(p+q)
    deg = np.array([p + q for p, q in terms], float)
    coef = coef / scale ** deg[:, None]
    lin = {(p, q): i for i, (p, q) in enumerate(terms)}
    cd = np.array([[coef[lin[(1, 0)], 0], coef[lin[(0, 1)], 0]], [coef[lin[(1, 0)], 1], coef[lin[(0, 1)], 1]]])
    cdinv = np.linalg.inv(cd)
    a = np.zeros((order + 1, order + 1))
    b = np.zeros((order + 1, order + 1))
    for (p, q), i in lin.items():
        if p + q >= 2:
            d = cdinv @ coef[i]
            a[p, q] = d[0]
            b[p, q] = d[1]
    fwd = TanSipWcs(crpix, cd, crval, a if order >= 2 else None, b if order >= 2 else None)
    fx, fy = fwd.pixelToIwc(x, y)
    forwardMax = float(np.max(np.hypot(fx - xi, fy - eta))) if x.size else 0.0
    # inverse: (U, V) = CD^-1 (xi, eta) -> (u, v): u = U + AP(U, V)
    U = cdinv[0, 0] * xi + cdinv[0, 1] * eta
    V = cdinv[1, 0] * xi + cdinv[1, 1] * eta
    sU = max(float(np.max(np.abs(np.concatenate([U, V])))), 1.0)
    Us, Vs = U / sU, V / sU
    first = inverseOrder if inverseOrder is not None else max(order, 1)
    last = maxInverseOrder if maxInverseOrder is not None else order + 3
    best = None
    for n in range(first, last + 1):
        it = _polyTerms(n, 0)
        B = _design(Us, Vs, it)
        target = np.stack([u - U, v - V], axis=1)
        c, *_ = np.linalg.lstsq(B, target, rcond=None)
        ap = np.zeros((n + 1, n + 1))
        bp = np.zeros((n + 1, n + 1))
        for i, (p, q) in enumerate(it):
            ap[p, q] = c[i, 0] / sU ** (p + q)
            bp[p, q] = c[i, 1] / sU ** (p + q)
        resid = B @ c - target
        err = float(np.max(np.hypot(resid[:, 0], resid[:, 1]))) if x.size else 0.0
        if best is None or err < best[0]:
            best = (err, n, ap, bp)
        if err < inverseTolerance:
            break
    assert best is not None
    fwd.ap, fwd.bp = best[2], best[3]
    return fwd, {"forward_max_deg": forwardMax, "inverse_max_pix": best[0], "inverse_order": best[1]}
