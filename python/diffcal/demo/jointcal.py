"""Demo step of jointcal (issues #5 and #6): simulate a small survey with known truth, run
`JointcalTask` (constrained astrometry and constrained-magnitude photometry), compare the fit with
the truth and write the output directory of ``diffcal jointcal`` (WCS and PhotoCalib files, metrics,
plots) under ``jointcal/``."""

from __future__ import annotations

import math
import time

from ._framework import DemoContext, demo_step

#: Survey of the demo: small enough for a few seconds on 2 cores, large enough that the truth
#: comparison is meaningful (about 15k measurements, a few thousand reference stars).
N_VISITS = 6
N_DETECTORS = 4
N_STARS = 12000


@demo_step("jointcal", "Joint astrometric + photometric calibration of a simulated survey (jointcal)")
def _step_jointcal(ctx: DemoContext) -> None:
    import numpy as np

    from ..jointcal import JointcalConfig, JointcalTask, simulate
    from ..jointcal.outputs import writeOutputs

    t0 = time.perf_counter()
    survey = simulate(nVisits=N_VISITS, nDetectors=N_DETECTORS, nStars=N_STARS, seed=ctx.options.seed,
                      ditherRadius=0.05, magRange=(16.0, 21.0), photometricFieldMmag=10.0)
    t_sim = time.perf_counter() - t0
    config = JointcalConfig()
    config.astrometryModel = "constrained"
    config.photometryModel = "constrainedMagnitude"
    config.photometryVisitOrder = 2  # the simulated per-visit field is quadratic
    task = JointcalTask(config=config)
    t0 = time.perf_counter()
    result = task.run(**survey.runArguments())
    t_fit = time.perf_counter() - t0
    job = result.job

    # astrometry against the truth
    truth = survey.evaluate(result)
    # photometry: fitted minus true calibration (mmag) on a grid over each detector (inner 90 %: the
    # fitted field is an extrapolation at the very corners)
    errors = []
    for (visit, detector), pc in result.outputPhotoCalib.items():
        x0, y0, x1, y1 = survey.camera[detector].bbox
        mx, my = 0.05 * (x1 - x0), 0.05 * (y1 - y0)
        gx, gy = np.meshgrid(np.linspace(x0 + mx, x1 - mx, 16), np.linspace(y0 + my, y1 - my, 16))
        x, y = gx.ravel(), gy.ravel()
        errors.append(-2.5e3 * np.log10(pc.getCalibration(x, y) / survey.truth.calibration(visit, detector, x, y)))
    zp = np.concatenate(errors) if errors else np.array([np.nan])
    zp = zp - np.mean(zp)  # the absolute zero point is set by the reference fluxes (1 % errors here)
    a_ratio = job["astrometry_final_chi2"] / job["astrometry_final_ndof"]
    p_ratio = job["photometry_final_chi2"] / job["photometry_final_ndof"]

    section = ctx.report.section("jointcal")
    section.update({
        "visits": N_VISITS, "detectors": N_DETECTORS, "measurements": truth["n_measurements"],
        "seconds_simulate": t_sim, "seconds_fit": t_fit,
        "astrometry_chi2_per_ndof": a_ratio, "photometry_chi2_per_ndof": p_ratio,
        "star_rms_mas": truth["star_rms_mas"], "star_expected_rms_mas": truth["star_pred_rms_mas"],
        "mapping_rms_mas": truth["map_rms_mas"], "mapping_expected_rms_mas": truth["map_pred_mas"],
        "outliers_injected": truth["outliers_injected"], "outliers_rejected": truth["outliers_rejected"],
        "false_rejections": truth["false_rejected"],
        "calibration_rms_mmag": float(np.sqrt(np.mean(zp**2))), "calibration_max_mmag": float(np.max(np.abs(zp))),
        "metrics": {k: (float(v) if isinstance(v, float) else v) for k, v in job.items()},
    })
    ctx.report.line(f"{N_VISITS} visits x {N_DETECTORS} detectors, {truth['n_measurements']} measurements; "
                    f"fit {t_fit:.1f} s (simulation {t_sim:.1f} s)")
    ctx.report.line(f"astrometry chi2/ndof {a_ratio:.3f}: fitted stars {truth['star_rms_mas']:.2f} mas rms "
                    f"(expected {truth['star_pred_rms_mas']:.2f}), mappings {truth['map_rms_mas']:.2f} mas rms "
                    f"(expected {truth['map_pred_mas']:.2f})")
    ctx.report.line(f"outliers: {truth['outliers_rejected']} of {truth['outliers_injected']} injected rejected, "
                    f"{truth['false_rejected']} false rejections")
    ctx.report.line(f"photometry chi2/ndof {p_ratio:.3f}: calibration vs truth {section['calibration_rms_mmag']:.2f} "
                    f"mmag rms, {section['calibration_max_mmag']:.2f} mmag worst (relative)")
    ctx.report.check("jointcal_astrometry_chi2", abs(a_ratio - 1.0) < 0.1)
    ctx.report.check("jointcal_stars_recovered", truth["star_rms_mas"] < 1.5 * truth["star_pred_rms_mas"])
    ctx.report.check("jointcal_outliers", truth["outliers_rejected"] >= 0.9 * truth["outliers_injected"])
    ctx.report.check("jointcal_photometry", math.isfinite(p_ratio) and section["calibration_rms_mmag"] < 1.5
                     and section["calibration_max_mmag"] < 5.0)
    ctx.report.highlight(f"jointcal astrometry {truth['star_rms_mas']:.1f} mas, photometry "
                         f"{section['calibration_rms_mmag']:.1f} mmag")

    try:
        import matplotlib  # noqa: F401  (optional dependency)
        plots = True
    except ImportError:
        ctx.report.note("matplotlib is not installed: jointcal plots skipped")
        plots = False
    files = writeOutputs(result, config, task.metadata, ctx.output / "jointcal", plots=plots)
    ctx.report.add_file("jointcal_metrics", files["metrics"], ctx.output)
    if plots:
        ctx.report.add_file("jointcal_chi2_plot", files["chi2_plot"], ctx.output)
        ctx.report.add_file("jointcal_photometry_residuals", files["photometry_residual_plot"], ctx.output)
