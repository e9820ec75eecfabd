"""Plots of diffcal objects (matplotlib, optional dependency; imported lazily).

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global state), so they work
headless and in threads.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

    from matplotlib.figure import Figure

    from .geom import Box2I
    from .image import Exposure

__all__ = ["plot_cell_grid", "plot_exposure", "plot_decorrelation"]


def _block_or(mask: "np.ndarray", block: int) -> "np.ndarray":
    """OR of the mask bits over ``block x block`` pixel blocks (keeps thin features visible)."""
    import numpy as np

    if block <= 1:
        return mask
    h, w = mask.shape
    padded = np.zeros((-(-h // block) * block, -(-w // block) * block), dtype=mask.dtype)
    padded[:h, :w] = mask
    blocks = padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block)
    return np.bitwise_or.reduce(np.bitwise_or.reduce(blocks, axis=3), axis=1)


#: Mask planes drawn in the plot, with their colours (later ones are drawn on top).
_PLOT_PLANES = (("DETECTED", "#3b7dd8"), ("SAT", "#f2c12e"), ("BAD", "#d62728"))
_NAN_COLOUR = "#ff00ff"


def plot_exposure(exposure: "Exposure", path: Path, *, title: str = "") -> None:
    """Write a PNG: the image with an asinh stretch and the mask planes, side by side.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change). Raises
    ImportError when matplotlib is not installed.

    Parameters
    ----------
    exposure : diffcal.image.Exposure
        Exposure to draw (parent coordinates on the axes).
    path : pathlib.Path
        Output PNG, replaced atomically.
    title : str
        Figure title.
    """
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    image = exposure.image
    mask = exposure.maskedImage.mask
    x0, y0 = exposure.getXY0()
    h, w = image.shape
    extent = (x0 - 0.5, x0 + w - 0.5, y0 - 0.5, y0 + h - 0.5)

    stretched, vmin, vmax, stretch_label = _asinh_stretch(exposure)

    # OR-pool the mask so that no block is lost when the ~540-pixel-wide panel is drawn
    block = max(1, math.ceil(max(h, w) / 500))
    pooled = _block_or(mask.array, block)
    nan_pooled = _block_or(np.isnan(image).astype(np.int32), block) != 0
    rgb = np.empty(pooled.shape + (3,), dtype=np.float32)
    rgb[...] = 0.12
    legend = []
    planes = mask.getMaskPlaneDict()
    for name, colour in _PLOT_PLANES:
        if name not in planes:
            continue
        hit = (pooled & mask.getPlaneBitMask(name)) != 0
        rgb[hit] = to_rgb(colour)
        legend.append(Patch(color=colour, label=f"{name} ({int(np.count_nonzero(mask.array & mask.getPlaneBitMask(name)))} px)"))
    rgb[nan_pooled] = to_rgb(_NAN_COLOUR)
    legend.append(Patch(color=_NAN_COLOUR, label=f"NaN ({int(np.count_nonzero(np.isnan(image)))} px)"))

    fig = Figure(figsize=(13.0, 6.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_img, ax_mask = fig.subplots(1, 2, sharex=True, sharey=True)
    cmap = matplotlib.colormaps["gray"].with_extremes(bad=_NAN_COLOUR)
    im = ax_img.imshow(stretched, origin="lower", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="antialiased")
    fig.colorbar(im, ax=ax_img, shrink=0.8, label=stretch_label)
    ax_img.set_title("image (asinh stretch)")
    ax_mask.imshow(rgb, origin="lower", extent=extent, interpolation="nearest")
    ax_mask.set_title("mask planes" + (f" (OR over {block}x{block} blocks)" if block > 1 else ""))
    ax_mask.legend(handles=legend, loc="upper right", fontsize="small", framealpha=0.85)
    for ax in (ax_img, ax_mask):
        ax.set_xlabel("x (parent pixels)")
    ax_img.set_ylabel("y (parent pixels)")
    if title:
        fig.suptitle(title)
    _save_png(fig, path)


def plot_decorrelation(before: "Exposure", after: "Exposure", path: Path, *, title: str = "",
                       maxLag: int = 8) -> None:
    """Write a PNG diagnosing a decorrelation: noise correlation coefficient versus lag (mean of
    the x and y shifts, :func:`diffcal.decorrelation_cli.pixelCorrelation`) and the azimuthally
    averaged power spectrum (:func:`diffcal.decorrelation_cli.radialPowerSpectrum`, flat for white
    noise) of the difference image before and after, with the mean variance plane after as the
    white-noise level. matplotlib's Agg canvas, no pyplot; raises ImportError without matplotlib.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .decorrelation_cli import pixelCorrelation, radialPowerSpectrum

    fig = Figure(figsize=(12.0, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_c, ax_p = fig.subplots(1, 2)
    lags = np.arange(maxLag + 1)
    for exp, label, colour in ((before, "before", "#d62728"), (after, "after", "#1f77b4")):
        ax_c.plot(lags, pixelCorrelation(exp.image, maxLag), "o-", color=colour, label=label)
        f, pw = radialPowerSpectrum(exp.image)
        ax_p.plot(f, pw, "-", color=colour, label=label)
    level = float(np.nanmedian(after.variance))
    ax_p.axhline(level, color="gray", ls="--", label=f"variance plane after ({level:.3g})")
    ax_c.axhline(0.0, color="gray", lw=0.8)
    ax_c.set_xlabel("lag (pixels)")
    ax_c.set_ylabel("noise correlation coefficient")
    ax_c.set_title("pixel correlation")
    ax_p.set_xlabel("spatial frequency (cycles / pixel)")
    ax_p.set_ylabel("power |FFT|^2 / N")
    ax_p.set_yscale("log")
    ax_p.set_title("azimuthally averaged power spectrum")
    for ax in (ax_c, ax_p):
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    _save_png(fig, path)


def _save_png(fig: "Figure", path: Path) -> None:
    """Save a figure as PNG, replacing ``path`` atomically (no half-written file on error)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _asinh_stretch(exposure: "Exposure") -> tuple["np.ndarray", float, float, str]:
    """asinh stretch of the image: linear within ~2 sigma of the sky, logarithmic for stars.

    Returns the stretched image, display limits and a colour-bar label. Sky level and sigma are
    the clipped mean and variance of the unmasked (BAD, SAT) pixels.
    """
    import numpy as np

    from .statistics import clippedStatistics

    image = exposure.image
    mask = exposure.maskedImage.mask
    stats = clippedStatistics(image, mask.array, andMask=mask.getPlaneBitMask(["BAD", "SAT"]))
    sigma = math.sqrt(stats.variance) if stats.variance > 0 else 1.0
    soft = 2.0 * sigma
    with np.errstate(invalid="ignore"):
        stretched = np.arcsinh((image - stats.mean) / soft)
    finite = stretched[np.isfinite(stretched)]
    vmin = math.asinh(-2.0 * sigma / soft)
    vmax = float(np.percentile(finite, 99.9)) if finite.size else 1.0
    vmax = max(vmax, math.asinh(50.0 * sigma / soft))
    return stretched, vmin, vmax, f"asinh((image - {stats.mean:.3g}) / {soft:.3g})"


def plot_cell_grid(exposure: "Exposure", inner: "list[Box2I]", expanded: "list[Box2I]", path: Path, *,
                   title: str = "", highlight: int | None = None) -> None:
    """Write a PNG of an ImageMapReduce grid drawn over the image.

    Every cell's inner box (``boxes0``) is outlined; one cell (``highlight``, default the one
    nearest the image centre) also shows its expanded box (``boxes1``, dashed), so the overlap is visible. Axes are in
    parent pixel coordinates (boxes are inclusive: an outline runs along the pixel edges).
    Raises ImportError when matplotlib is not installed.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    stretched, vmin, vmax, label = _asinh_stretch(exposure)
    x0, y0 = exposure.getXY0()
    h, w = exposure.image.shape
    extent = (x0 - 0.5, x0 + w - 0.5, y0 - 0.5, y0 + h - 0.5)
    fig = Figure(figsize=(8.0, 7.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(stretched, origin="lower", extent=extent, cmap=matplotlib.colormaps["gray"], vmin=vmin,
                   vmax=vmax, interpolation="antialiased")
    fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    for box in inner:
        ax.add_patch(Rectangle((box.getMinX() - 0.5, box.getMinY() - 0.5), box.getWidth(), box.getHeight(),
                               fill=False, edgecolor="#33a0ff", linewidth=0.6, alpha=0.8))
    if inner:
        if highlight is None:  # the cell nearest the image centre
            cx, cy = x0 + 0.5 * (w - 1), y0 + 0.5 * (h - 1)
            i = min(range(len(inner)), key=lambda j: (inner[j].getCenter().x - cx) ** 2 + (inner[j].getCenter().y - cy) ** 2)
        else:
            i = highlight
        for box, style, colour, name in ((inner[i], "-", "#ffb000", "inner box"),
                                         (expanded[i], "--", "#ff4040", "expanded box")):
            ax.add_patch(Rectangle((box.getMinX() - 0.5, box.getMinY() - 0.5), box.getWidth(), box.getHeight(),
                                   fill=False, edgecolor=colour, linestyle=style, linewidth=1.8, label=f"cell {i}: {name}"))
        ax.legend(loc="upper right", fontsize="small", framealpha=0.85)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel("x (parent pixels)")
    ax.set_ylabel("y (parent pixels)")
    ax.set_title(title or f"ImageMapReduce grid: {len(inner)} cells")
    _save_png(fig, path)
