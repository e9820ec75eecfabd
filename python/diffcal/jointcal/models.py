"""Astrometric models as Python objects: evaluation, lossless JSON serialization, output TAN-SIP WCS.

`AstrometryModel` wraps the compiled model (``diffcal._core._jointcal.AstrometryModel``) and knows the
``(visit, detector)`` key and pixel bbox of every CcdImage. The model maps pixels to the per-visit tangent
plane (gnomonic about the visit's tangent point, degrees); `AstrometryModel.pixelToSky` de-projects.

JSON layout (``format = "diffcal.jointcal.AstrometryModel"``, ``version = 1``): ``kind`` ("simple" or
"constrained"), ``focalScale`` (mm), ``visits`` (id, tangent point ra/dec in degrees), ``blocks`` (one
polynomial each: kind "ccd"/"chip"/"visit", id, order, fitOrder (coefficients of total degree <= fitOrder are
fitted), offset, size, fixed), ``ccds`` (visit, detector,
bbox, blockA, blockB, visitIndex, pixel normalisation x0, y0, sx, sy) and ``params`` (all coefficients, x-output
then y-output per block, monomials by total degree then power of y). Floats are written with Python's
shortest round-tripping repr, so `fromJson(toJson())` reproduces the model bit for bit.

Output WCS (`makeTanSipWcs`): CRVAL is the visit tangent point and CRPIX the pixel where the model maps to
it (found by Newton iterations, possibly off the detector), so the TAN part is exact and the polynomial part is
exactly representable by SIP of the model's total order (simple: the CcdImage order; constrained: chip order
times visit order). The forward error is therefore at the rounding level; the inverse (AP/BP) polynomials are
fitted on a 30x30 grid with increasing order until their error is below the tolerance.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from .wcs import TanSipWcs, fitTanSip, gnomonicDeproject

__all__ = ["AstrometryModel"]

_KINDS = {0: "simple", 1: "constrained"}
_BLOCK_KINDS = {0: "ccd", 1: "chip", 2: "visit"}


def _core() -> Any:
    from .._core import _jointcal

    return _jointcal


class AstrometryModel:
    """A fitted (or initial) astrometric model over a list of CcdImages.

    Parameters
    ----------
    native : ``diffcal._core._jointcal.AstrometryModel``
        The compiled model.
    ccdKeys : sequence of (int, int)
        ``(visit, detector)`` of every CcdImage, in the model's CcdImage order.
    bboxes : array-like, shape (n, 4)
        Pixel bbox (minX, minY, maxX, maxY) of every CcdImage.
    """

    def __init__(self, native: Any, ccdKeys: Sequence[tuple[int, int]], bboxes: Any) -> None:
        self.native = native
        self.ccdKeys = [(int(v), int(d)) for v, d in ccdKeys]
        self.bboxes = np.asarray(bboxes, dtype=float).reshape(len(self.ccdKeys), 4)
        if native.n_ccd != len(self.ccdKeys):
            raise ValueError(f"model has {native.n_ccd} CcdImages, got {len(self.ccdKeys)} keys")
        self._index = {k: i for i, k in enumerate(self.ccdKeys)}

    @property
    def kind(self) -> str:
        """``"simple"`` or ``"constrained"``."""
        return _KINDS[self.native.kind]

    @property
    def params(self) -> np.ndarray:
        """All model coefficients (a copy)."""
        return self.native.params

    def ccdIndex(self, key: tuple[int, int]) -> int:
        """CcdImage index of ``(visit, detector)``; KeyError if unknown."""
        try:
            return self._index[(int(key[0]), int(key[1]))]
        except KeyError:
            raise KeyError(f"no CcdImage (visit {key[0]}, detector {key[1]}) in the model") from None

    def hasMapping(self, key: tuple[int, int]) -> bool:
        """Whether the CcdImage has a fitted mapping (CcdImages without measurements have none)."""
        return bool(self.native.has_mapping(self.ccdIndex(key)))

    def keysWithMapping(self) -> list[tuple[int, int]]:
        """``(visit, detector)`` of every CcdImage with a mapping."""
        return [k for i, k in enumerate(self.ccdKeys) if self.native.has_mapping(i)]

    def visitTangentPoint(self, key: tuple[int, int]) -> tuple[float, float]:
        """(ra, dec) degrees of the tangent point of the CcdImage's visit."""
        i = self.ccdIndex(key)
        maps = self.native.mapping_arrays()
        ids, ra, dec = self.native.visit_arrays()
        v = int(maps["visit"][i])
        return float(ra[v]), float(dec[v])

    def transform(self, key: tuple[int, int], x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Pixel -> visit tangent plane (degrees)."""
        return self.native.transform(self.ccdIndex(key), np.asarray(x, float).ravel(), np.asarray(y, float).ravel())

    def pixelToSky(self, key: tuple[int, int], x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Pixel -> (ra, dec) degrees through the model."""
        return self.native.pixel_to_sky(self.ccdIndex(key), np.asarray(x, float).ravel(),
                                        np.asarray(y, float).ravel())

    def totalOrder(self, key: tuple[int, int]) -> int:
        """Polynomial order of the pixel -> tangent-plane mapping of a CcdImage."""
        i = self.ccdIndex(key)
        maps = self.native.mapping_arrays()
        blocks = self.native.block_arrays()
        a, b = int(maps["block_a"][i]), int(maps["block_b"][i])
        if a < 0:
            raise ValueError(f"CcdImage {key} has no mapping")
        if b < 0:
            return int(blocks["order"][a])
        return int(blocks["order"][a]) * int(blocks["order"][b])

    # -- output WCS ---------------------------------------------------------------------------------------

    def makeTanSipWcs(self, key: tuple[int, int], *, nGrid: int = 30, inverseTolerance: float = 1e-3
                      ) -> tuple[TanSipWcs, dict[str, float]]:
        """Approximate the mapping of one CcdImage by a FITS TAN-SIP WCS.

        Parameters
        ----------
        key : (int, int)
            ``(visit, detector)``.
        nGrid : `int`
            Grid points per axis over the detector bbox used for the fit and the accuracy report.
        inverseTolerance : `float`
            Target maximum error of the inverse polynomials, pixels.

        Returns
        -------
        wcs : `TanSipWcs`
        accuracy : `dict`
            ``forward_max_mas`` (max |WCS - model| on the sky over the grid, milliarcseconds),
            ``inverse_max_pix`` (max round-trip error of the inverse polynomials, pixels), ``sip_order``,
            ``inverse_order``.
        """
        i = self.ccdIndex(key)
        if not self.native.has_mapping(i):
            raise ValueError(f"CcdImage (visit {key[0]}, detector {key[1]}) has no fitted mapping")
        x0, y0, x1, y1 = self.bboxes[i]
        gx, gy = np.meshgrid(np.linspace(x0, x1, nGrid), np.linspace(y0, y1, nGrid))
        gx, gy = gx.ravel(), gy.ravel()
        xi, eta = self.transform(key, gx, gy)
        crval = self.visitTangentPoint(key)
        # CRPIX: pixel mapping to the tangent point (Newton on the model, numerical Jacobian)
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        h = 1.0
        for _ in range(50):
            f0 = np.array(self.transform(key, [cx, cx + h, cx], [cy, cy, cy + h]))
            jac = np.array([[f0[0, 1] - f0[0, 0], f0[0, 2] - f0[0, 0]], [f0[1, 1] - f0[1, 0], f0[1, 2] - f0[1, 0]]]) / h
            step = np.linalg.solve(jac, f0[:, 0])
            cx, cy = cx - step[0], cy - step[1]
            if np.hypot(*step) < 1e-10:
                break
        order = max(self.totalOrder(key), 1)
        wcs, stats = fitTanSip(gx, gy, xi, eta, (cx, cy), crval, order, inverseTolerance=inverseTolerance)
        ra_m, dec_m = gnomonicDeproject(crval[0], crval[1], xi, eta)
        ra_w, dec_w = wcs.pixelToSky(gx, gy)
        dra = (ra_w - ra_m + 180.0) % 360.0 - 180.0
        sep = np.hypot(dra * np.cos(np.radians(dec_m)), dec_w - dec_m) * 3.6e6
        return wcs, {"forward_max_mas": float(np.max(sep)), "inverse_max_pix": stats["inverse_max_pix"],
                     "sip_order": order, "inverse_order": stats["inverse_order"]}

    # -- serialization ------------------------------------------------------------------------------------

    def toDict(self) -> dict[str, Any]:
        """Plain-Python description (see the module docstring); `fromDict` inverts it exactly."""
        blocks = self.native.block_arrays()
        maps = self.native.mapping_arrays()
        ids, vra, vdec = self.native.visit_arrays()
        return {
            "format": "diffcal.jointcal.AstrometryModel",
            "version": 1,
            "kind": self.kind,
            "focalScale": float(self.native.focal_scale),
            "visits": [{"id": int(i), "ra": float(r), "dec": float(d)} for i, r, d in zip(ids, vra, vdec)],
            "blocks": [
                {"kind": _BLOCK_KINDS[int(k)], "id": int(i), "order": int(o), "fitOrder": int(fo), "offset": int(off),
                 "size": int(s), "fixed": bool(f)}
                for k, i, o, fo, off, s, f in zip(blocks["kind"], blocks["id"], blocks["order"], blocks["fit_order"],
                                                  blocks["offset"], blocks["size"], blocks["fixed"])
            ],
            "ccds": [
                {"visit": k[0], "detector": k[1], "bbox": [float(v) for v in self.bboxes[i]],
                 "blockA": int(maps["block_a"][i]), "blockB": int(maps["block_b"][i]),
                 "visitIndex": int(maps["visit"][i]), "x0": float(maps["x0"][i]), "y0": float(maps["y0"][i]),
                 "sx": float(maps["sx"][i]), "sy": float(maps["sy"][i])}
                for i, k in enumerate(self.ccdKeys)
            ],
            "params": [float(p) for p in self.native.params],
        }

    def toJson(self, indent: int | None = None) -> str:
        """JSON text of `toDict` (lossless)."""
        return json.dumps(self.toDict(), indent=indent)

    @classmethod
    def fromDict(cls, d: dict[str, Any]) -> "AstrometryModel":
        """Rebuild a model written by `toDict`."""
        if d.get("format") != "diffcal.jointcal.AstrometryModel":
            raise ValueError("not a diffcal.jointcal.AstrometryModel description")
        if d.get("version") != 1:
            raise ValueError(f"unsupported AstrometryModel version {d.get('version')!r}")
        kinds = {v: k for k, v in _KINDS.items()}
        bkinds = {v: k for k, v in _BLOCK_KINDS.items()}
        b = d["blocks"]
        c = d["ccds"]
        v = d["visits"]
        native = _core().AstrometryModel(
            kinds[d["kind"]],
            np.array([bkinds[x["kind"]] for x in b], dtype=np.int64), np.array([x["id"] for x in b], dtype=np.int64),
            np.array([x["order"] for x in b], dtype=np.int64), np.array([x["offset"] for x in b], dtype=np.int64),
            np.array([x["size"] for x in b], dtype=np.int64), np.array([int(x["fixed"]) for x in b], dtype=np.int64),
            np.array([x.get("fitOrder", x["order"]) for x in b], dtype=np.int64),
            np.array([x["blockA"] for x in c], dtype=np.int64), np.array([x["blockB"] for x in c], dtype=np.int64),
            np.array([x["visitIndex"] for x in c], dtype=np.int64), np.array([x["x0"] for x in c]),
            np.array([x["y0"] for x in c]), np.array([x["sx"] for x in c]), np.array([x["sy"] for x in c]),
            np.array([x["id"] for x in v], dtype=np.int64), np.array([x["ra"] for x in v]),
            np.array([x["dec"] for x in v]), float(d["focalScale"]), np.array(d["params"], dtype=float))
        return cls(native, [(x["visit"], x["detector"]) for x in c], [x["bbox"] for x in c])

    @classmethod
    def fromJson(cls, text: str) -> "AstrometryModel":
        """Rebuild a model from `toJson` output."""
        return cls.fromDict(json.loads(text))

    def __repr__(self) -> str:
        return (f"AstrometryModel(kind={self.kind!r}, ccds={len(self.ccdKeys)}, "
                f"params={len(self.native.params)})")
