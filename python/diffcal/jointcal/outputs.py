"""Writing the results of `JointcalTask.run` to a directory (the OUTDIR of ``diffcal jointcal``).

Files written:

* ``metrics.json``: the metrics of spec section 4 (``astrometry_matched_fittedStars``, ...,
  ``astrometry_final_chi2``, ``astrometry_final_ndof``) plus ``wcs_accuracy`` (worst forward error of the
  TAN-SIP approximation in mas, worst inverse error in pixels) and ``chi2_history``;
* ``config.py``: the configuration (``JointcalConfig.save`` format, loadable with ``-C``);
* ``metadata.json``: the task metadata (`diffcal.pipe.TaskMetadata.to_json`);
* ``astrometry_model.json``: the fitted model, lossless (`diffcal.jointcal.models.AstrometryModel.toJson`);
* ``wcs/wcs-<visit>-<detector>.fits``: one header-only FITS file per (visit, detector) with the fitted TAN-SIP
  WCS (1-based CRPIX, FITS convention; read with ``astropy.wcs.WCS(header)``);
* ``photoCalib/photoCalib-<visit>-<detector>.fits``: the fitted `PhotoCalib` per (visit, detector)
  (`diffcal.jointcal.photocalib.PhotoCalib.readFits`);
* with ``plots=True`` (needs matplotlib): ``chi2_steps.png`` and ``residuals-<visit>.png`` whisker maps;
  for photometry ``photometry_chi2_steps.png``, ``photometry_residuals.png`` (residual vs magnitude) and
  ``photometry_field-<visit>.png`` (per-visit calibration maps over the focal plane).

Files are written to a temporary name and renamed, so an interrupted run leaves no half-written file under a
final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["writeOutputs"]


def _atomicWrite(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def writeOutputs(result: Any, config: Any, metadata: Any, outdir: Any, *, plots: bool = False) -> dict[str, Any]:
    """Write a `JointcalTask.run` result.

    Parameters
    ----------
    result : `diffcal.pipe.Struct`
        Output of `JointcalTask.run`.
    config : `JointcalConfig`
    metadata : `diffcal.pipe.TaskMetadata`
        ``task.metadata``.
    outdir : path-like
        Created if needed.
    plots : `bool`
        Also write PNG plots (needs matplotlib).

    Returns
    -------
    files : `dict`
        Name -> path of every file written (WCS files under ``"wcs"`` as a list).
    """
    from astropy.io import fits

    out = Path(outdir)
    (out / "wcs").mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    metrics: dict[str, Any] = dict(result.job)
    if result.wcsAccuracy:
        metrics["wcs_accuracy"] = {
            "forward_max_mas": max(a["forward_max_mas"] for a in result.wcsAccuracy.values()),
            "inverse_max_pix": max(a["inverse_max_pix"] for a in result.wcsAccuracy.values()),
        }
    if result.astrometry is not None:
        metrics["chi2_history"] = [[label, chi2, ndof] for label, chi2, ndof in result.astrometry.chi2History]
        metrics["astrometry_outliers"] = list(getattr(result.astrometry, "outliers", (0, 0)))
    photometry = getattr(result, "photometry", None)
    if photometry is not None:
        metrics["photometry_chi2_history"] = [[label, chi2, ndof] for label, chi2, ndof in photometry.chi2History]
        metrics["photometry_outliers"] = list(photometry.outliers)
        metrics["photometry_rejected_bad_fluxes"] = list(photometry.rejectedBadFluxes)
    path = out / "metrics.json"
    _atomicWrite(path, (json.dumps(metrics, indent=2) + "\n").encode())
    files["metrics"] = path
    path = out / "config.py"
    tmp = path.with_name(path.name + ".tmp")
    config.save(str(tmp))
    os.replace(tmp, path)
    files["config"] = path
    path = out / "metadata.json"
    _atomicWrite(path, metadata.to_json(indent=2).encode())
    files["metadata"] = path
    if result.astrometry is not None:
        path = out / "astrometry_model.json"
        _atomicWrite(path, result.astrometry.model.toJson(indent=1).encode())
        files["model"] = path
    wcsFiles = []
    for (visit, detector), wcs in sorted(result.outputWcs.items()):
        header = wcs.toFitsHeader()
        header["VISIT"] = visit
        header["DETECTOR"] = detector
        acc = result.wcsAccuracy.get((visit, detector), {})
        if "forward_max_mas" in acc:
            header["JCFWDMAS"] = (acc["forward_max_mas"], "max |WCS - model| over the detector (mas)")
            header["JCINVPIX"] = (acc["inverse_max_pix"], "max inverse SIP error (pixels)")
        path = out / "wcs" / f"wcs-{visit}-{detector}.fits"
        tmp = path.with_name(path.name + ".tmp")
        fits.PrimaryHDU(header=header).writeto(tmp, overwrite=True, output_verify="silentfix")
        os.replace(tmp, path)
        wcsFiles.append(path)
    files["wcs"] = wcsFiles
    calibFiles = []
    if getattr(result, "outputPhotoCalib", None):
        (out / "photoCalib").mkdir(parents=True, exist_ok=True)
        for (visit, detector), pc in sorted(result.outputPhotoCalib.items()):
            path = out / "photoCalib" / f"photoCalib-{visit}-{detector}.fits"
            pc.writeFits(path)
            calibFiles.append(path)
        files["photoCalib"] = calibFiles
    if plots and result.astrometry is not None:
        from .plots import plotChi2History, plotResidualWhiskers

        files["chi2_plot"] = plotChi2History(result.astrometry.chi2History, out / "chi2_steps.png")
        files["residual_plots"] = plotResidualWhiskers(result.astrometry, out)
    if plots and photometry is not None:
        from .plots import plotChi2History, plotPhotometricFields, plotPhotometricResiduals

        files["photometry_chi2_plot"] = plotChi2History(photometry.chi2History, out / "photometry_chi2_steps.png")
        files["photometry_residual_plot"] = plotPhotometricResiduals(photometry, out / "photometry_residuals.png")
        files["photometry_field_plots"] = plotPhotometricFields(photometry, result.outputPhotoCalib, out)
    return files
