"""Diagnostic plots of the astrometric and photometric fits (matplotlib, an optional dependency: ``pip install 'diffcal[plots]'``).

* `plotChi2History`: chi2/ndof after every fit step (log scale).
* `plotResidualWhiskers`: per visit, the residual vectors (visit tangent plane minus model, in mas, greatly
  magnified) of the valid measurements at their focal-plane (or tangent-plane) positions, outliers in red.
* `plotPhotometricResiduals`: photometric residual (measurement minus fitted star, mmag) against magnitude.
* `plotPhotometricFields`: per visit, the fitted calibration (zero point, mag, relative to the visit median) of
  every detector over the focal plane (or over pixel positions when there is no camera geometry).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["plotChi2History", "plotResidualWhiskers", "plotPhotometricResiduals", "plotPhotometricFields"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'diffcal[plots]'") from None
    return plt


def plotChi2History(history: Sequence[tuple[str, float, int]], path: Any) -> Path:
    """Plot chi2/ndof per step to ``path`` (PNG) and return the path."""
    plt = _pyplot()
    labels = [h[0] for h in history]
    ratios = [h[1] / h[2] if h[2] else np.nan for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(len(ratios)), ratios, "o-")
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("chi2 / ndof")
    ax.set_title("jointcal astrometry: chi2/ndof per step")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plotResidualWhiskers(state: Any, outdir: Any, *, maxVisits: int = 6, scale: float = 2.0e3) -> list[Path]:
    """Whisker maps of the final residuals, one PNG per visit (at most ``maxVisits``).

    Parameters
    ----------
    state : `diffcal.pipe.Struct`
        ``result.astrometry`` of `JointcalTask.run`.
    outdir : path-like
        Directory of ``residuals-<visit>.png``.
    scale : `float`
        Whisker magnification (tangent-plane degrees per degree of residual).
    """
    from .wcs import gnomonicProject

    plt = _pyplot()
    assoc, model = state.associations, state.model
    m = assoc.measured_arrays()
    f = assoc.fitted_arrays()
    inFit = m["in_fit"] == 1
    keys = model.ccdKeys
    visits = sorted({keys[c][0] for c in np.unique(m["ccd"][inFit])})[:maxVisits]
    out = []
    for visit in visits:
        fig, ax = plt.subplots(figsize=(6, 6))
        ccds = [i for i, k in enumerate(keys) if k[0] == visit and model.native.has_mapping(i)]
        if not ccds:
            plt.close(fig)
            continue
        tp = model.visitTangentPoint(keys[ccds[0]])
        xs, ys = [], []
        for valid, color in ((1, "k"), (0, "r")):
            for c in ccds:
                sel = inFit & (m["ccd"] == c) & (m["valid"] == valid)
                if not sel.any():
                    continue
                xi, eta = model.transform(keys[c], m["x"][sel], m["y"][sel])
                fs = m["fitted"][sel]
                sxi, seta = gnomonicProject(tp[0], tp[1], f["x"][fs], f["y"][fs])
                ax.quiver(xi, eta, (sxi - xi) * scale, (seta - eta) * scale, angles="xy", scale_units="xy",
                          scale=1.0, color=color, width=0.002)
                xs.append(xi)
                ys.append(eta)
        if xs:
            x, y = np.concatenate(xs), np.concatenate(ys)
            pad = 0.05 * max(np.ptp(x), np.ptp(y), 1e-3)
            ax.set_xlim(x.min() - pad, x.max() + pad)
            ax.set_ylim(y.min() - pad, y.max() + pad)
        ax.set_aspect("equal")
        ax.set_xlabel("xi (deg)")
        ax.set_ylabel("eta (deg)")
        ax.set_title(f"visit {visit}: residuals x{scale:g} (red: rejected)")
        fig.tight_layout()
        path = Path(outdir) / f"residuals-{visit}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)
    return out


def plotPhotometricResiduals(photometry: Any, path: Any) -> Path:
    """Residual (calibrated measurement minus fitted star, mmag) of every valid measurement against the fitted
    star's AB magnitude; rejected measurements in red. Returns the path."""
    plt = _pyplot()
    m = photometry.associations.measured_arrays()
    f = photometry.associations.fitted_arrays()
    model = photometry.model
    ok = (m["in_fit"] == 1) & (m["fitted"] >= 0)
    idx = np.flatnonzero(ok)
    res = np.full(idx.size, np.nan)
    for i in np.unique(m["ccd"][idx]):
        sel = idx[m["ccd"][idx] == i]
        cal = model.native.calibration(int(i), m["x"][sel], m["y"][sel])
        calMag = -2.5 * np.log10(m["inst_flux"][sel] * cal / 3631e9)
        res[np.searchsorted(idx, sel)] = (calMag - f["mag"][m["fitted"][sel]]) * 1e3
    starMag = f["mag"][m["fitted"][idx]]
    valid = m["valid"][idx] == 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(starMag[valid], res[valid], ",", color="k", alpha=0.5, label="valid")
    ax.plot(starMag[~valid], res[~valid], ".", color="r", ms=3, label="rejected")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("fitted star magnitude (AB)")
    ax.set_ylabel("measurement - fitted star (mmag)")
    ax.set_title(f"photometry residuals ({model.kind})")
    lim = np.nanpercentile(np.abs(res[valid]), 99.5) * 1.5 if valid.any() else 1.0
    ax.set_ylim(-lim, lim)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plotPhotometricFields(photometry: Any, photoCalibs: Any, outdir: Any, *, nGrid: int = 24) -> list[Path]:
    """One PNG per visit, ``photometry_field-<visit>.png``: the zero point -2.5 log10(calibration) (mmag,
    relative to the visit median) of each detector on an nGrid x nGrid pixel grid, drawn at its focal-plane
    position (mm). Returns the paths."""
    plt = _pyplot()
    model = photometry.model
    byVisit: dict[int, list] = {}
    for (visit, det), pc in sorted(photoCalibs.items()):
        byVisit.setdefault(visit, []).append((det, pc))
    paths = []
    for visit, items in byVisit.items():
        fig, ax = plt.subplots(figsize=(6, 5.5))
        tiles = []
        for det, pc in items:
            i = model.ccdIndex((visit, det))
            x0, y0, x1, y1 = model.bboxes[i]
            gx, gy = np.meshgrid(np.linspace(x0, x1, nGrid), np.linspace(y0, y1, nGrid))
            zp = -2.5e3 * np.log10(pc.getCalibration(gx.ravel(), gy.ravel()).reshape(gx.shape))
            p = model.pixToFocal[i]
            if np.all(np.isfinite(p)):
                fx, fy = p[0] * gx + p[1] * gy + p[4], p[2] * gx + p[3] * gy + p[5]
            else:
                fx, fy = gx, gy
            tiles.append((fx, fy, zp))
        med = np.median(np.concatenate([t[2].ravel() for t in tiles]))
        vmax = max(np.max(np.abs(t[2] - med)) for t in tiles) or 1.0
        for fx, fy, zp in tiles:
            mesh = ax.pcolormesh(fx, fy, zp - med, shading="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        fig.colorbar(mesh, ax=ax, label="zero point - median (mmag)")
        ax.set_aspect("equal")
        ax.set_xlabel("focal plane x (mm)")
        ax.set_ylabel("focal plane y (mm)")
        ax.set_title(f"visit {visit}: fitted calibration ({model.kind})")
        fig.tight_layout()
        path = Path(outdir) / f"photometry_field-{visit}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
