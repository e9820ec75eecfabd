"""Diagnostic plots of an astrometric fit (matplotlib, an optional dependency: ``pip install 'diffcal[plots]'``).

* `plotChi2History`: chi2/ndof after every fit step (log scale).
* `plotResidualWhiskers`: per visit, the residual vectors (visit tangent plane minus model, in mas, greatly
  magnified) of the valid measurements at their focal-plane (or tangent-plane) positions, outliers in red.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["plotChi2History", "plotResidualWhiskers"]


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
