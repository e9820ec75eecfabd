"""jointcal benchmark: the whole constrained astrometric fit with each linear solver, then the photometric fit.

Default survey (about 1e6 fitted measurements): 100 visits x 40 detectors (2048 x 4096 pixels, 0.2"/px),
330 000 stars over a 2.3-degree disc (pointings dithered over 1.5 degrees, each star seen ~7 times),
1 % injected outliers, simulated by `diffcal.jointcal.simulate` (not timed).

For each solver (``schur``, ``sparse``) the benchmark times, on the same survey and configuration (the defaults:
constrained model, chip order 1, visit order 5, 5-sigma outlier rejection with the reference's
one-outlier-per-parameter-group rule and rank-update path):

* ``prepare``: source selection, association, reference matching, model construction;
* ``fit``: the whole fit sequence (initialisation steps and ``_iterate_fit`` with outlier rejection);
* ``wcs``: TAN-SIP approximation of the 4000 fitted mappings (solver independent);

and the peak resident memory added during the run (Linux ``VmHWM``). Each solver runs once per invocation (the
sparse fit takes about half an hour). Results are printed and written as JSON (``--out``).

Results (2026-12-08, Intel Xeon (Sapphire Rapids) VM with 2 cores, 2 core threads, machine otherwise idle;
871 926 fitted measurements, 108 960 fitted stars, 4440 model parameters, 12 069 rejected terms; both
solvers reach the same chi2, to 1.2e-13, and the same outliers):

==============================  ================  ===============  ==========
outlier rule                    Schur fit         sparse fit       speed-up
==============================  ================  ===============  ==========
reference (one per group/pass)  46.6 s, +0.8 GiB  1684 s, +8.8 GiB  36x
same, portable build            64.4 s, +0.8 GiB  2111 s (11-22)   33x
==============================  ================  ===============  ==========

The first row ran the x86-64-v3 build that diffcal loads on this CPU (``DIFFCAL_ISA=baseline`` forces the
portable one, second row); the sparse portable figure is from 2026-11-22 (loaded machine).
With the reference rule the outlier loop needs 330 passes (at most
one rejection per chip and per visit per pass); each pass costs a chi2 evaluation over all measurements, a PCG
solve of the downdated reduced system (about 4 iterations, each one pair of triangular solves with the
4440 x 4440 factor) and a back-substitution. Where the time went on 2026-11-22 (portable build, 56 s on that day's machine; debug log of ``minimize``): 16 s triangular
solves (reads of the 158 MB factor; Eigen's AVX2/FMA kernels of the x86-64-v3 build take much less), 12 s chi2, 4 s back-substitution, 2 s low-rank
corrections, 5 s downdates (of which 4.6 s are the 5 refactorizations that fold them in), 8 s for the two
full builds of the reduced matrix (initialisation and the final pass) and their factorizations. prepare
(association etc.) takes 0.7 s and the TAN-SIP output 5 s.

Outlier-loop work (2026-11, in order; chi2 and outliers unchanged, parameters equal to rounding):
``diffcal::parallelFor`` on persistent worker threads and PCG corrections stored as runs of consecutive rows
(86 s -> 77 s); the downdates folded into the factorization when their PCG products have cost one
factorization, counted in work, not time (-10 s: fewer PCG iterations, 6 -> 4); chi2 terms with the explicit
2 x 2 inverse covariance and evaluated 8 measurements at a time per CcdImage (the point loops vectorise;
-6 s); the back-substitution's first-order mapping changes batched the same way into a per-measurement
array, then summed per star (-7 s); the fold of the downdates parallel over column ranges (-3 s).
``removeAllOutliersPerPass=True`` took about 19 s before this work.

Photometry (``--photometry-models``, default ``constrainedMagnitude``; ``none`` to skip): for each model and
each photometric solver (``photometrySolver`` schur / sparse) the association and the whole photometric fit
sequence (initialisation steps, ``freezeErrorTransform``, ``_iterate_fit`` with outlier rejection), timed the
same way (``photometry`` entries of the JSON record).

Usage::

    python bench/bench_jointcal.py [--visits 100] [--detectors 40] [--stars 330000] [--dither 1.5]
                                   [--solvers schur sparse] [--threads N] [--all-outliers-per-pass]
                                   [--photometry-models constrainedMagnitude simpleFlux ...]
                                   [--out bench/results/jointcal.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import _status_kib, machine  # noqa: E402


def _resetPeak() -> int:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS")
    except OSError:
        return -1


def _peakMiB(before: int) -> float:
    if before < 0:
        return float("nan")
    return max(0.0, (_status_kib("VmHWM") - before) / 1024.0)


def runSolver(survey, solver: str, allPerPass: bool) -> dict:
    from diffcal.jointcal import JointcalConfig, JointcalTask

    config = JointcalConfig()
    config.doPhotometry = False
    config.astrometrySolver = solver
    config.removeAllOutliersPerPass = allPerPass
    config.minMeasuredStarsPerCcd = 0  # no per-CcdImage warnings in the benchmark output
    config.minRefStarsPerCcd = 0
    task = JointcalTask(config=config)
    args = survey.runArguments()
    before = _resetPeak()
    t0 = time.perf_counter()
    data = task._loadData(args["inputSourceTableVisit"], args["inputVisitSummary"], args["inputCamera"])
    task._prepSky(data)
    t1 = time.perf_counter()
    fitTimes = {}
    original = task._buildAstrometry

    def timedBuild(d, a):
        fitTimes["prepared"] = time.perf_counter()
        return original(d, a)

    task._buildAstrometry = timedBuild  # type: ignore[method-assign]
    state = task._associateAstrometry(data, args["astrometryRefCat"], fit=True)
    t2 = time.perf_counter()
    wcs, accuracy = task._makeOutputWcs(state.model)
    t3 = time.perf_counter()
    peak = _peakMiB(before)
    job = task.job
    return {
        "solver": solver,
        "prepare_s": (fitTimes["prepared"] - t0),
        "fit_s": t2 - fitTimes["prepared"],
        "wcs_s": t3 - t2,
        "total_s": t3 - t0,
        "load_s": t1 - t0,
        "peak_extra_mib": peak,
        "chi2": job["astrometry_final_chi2"],
        "ndof": job["astrometry_final_ndof"],
        "chi2_per_ndof": job["astrometry_final_chi2"] / job["astrometry_final_ndof"],
        "outliers": list(state.outliers),
        "measurements_in_fit": int(state.associations.n_measurements_in_fit),
        "fitted_stars": int(state.associations.n_fitted_stars),
        "model_parameters": int(len(state.model.params)),
        "wcs_forward_max_mas": max(a["forward_max_mas"] for a in accuracy.values()),
        "steps": [[label, chi2, ndof] for label, chi2, ndof in state.chi2History],
    }


def runPhotometry(survey, solver: str, model: str) -> dict:
    """The photometric association and fit sequence (no astrometry) with one model and solver."""
    from diffcal.jointcal import JointcalConfig, JointcalTask
    from diffcal.jointcal.photometry import fitPhotometry

    config = JointcalConfig()
    config.doAstrometry = False
    config.photometryModel = model
    config.photometrySolver = solver
    config.minMeasuredStarsPerCcd = 0
    config.minRefStarsPerCcd = 0
    task = JointcalTask(config=config)
    args = survey.runArguments()
    before = _resetPeak()
    data = task._loadData(args["inputSourceTableVisit"], args["inputVisitSummary"], args["inputCamera"])
    task._prepSky(data)
    t0 = time.perf_counter()
    state = fitPhotometry(task, data, args["photometryRefCat"])
    t1 = time.perf_counter()
    job = task.job
    return {
        "model": model, "solver": solver, "fit_s": t1 - t0, "peak_extra_mib": _peakMiB(before),
        "chi2": job["photometry_final_chi2"], "ndof": job["photometry_final_ndof"],
        "chi2_per_ndof": job["photometry_final_chi2"] / job["photometry_final_ndof"],
        "outliers": list(state.outliers), "fitted_stars": int(state.associations.n_fitted_stars),
        "model_parameters": int(len(state.model.params)),
        "steps": [[label, chi2, ndof] for label, chi2, ndof in state.chi2History],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=100)
    parser.add_argument("--detectors", type=int, default=40)
    parser.add_argument("--stars", type=int, default=330000)
    parser.add_argument("--dither", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solvers", nargs="+", default=["schur", "sparse"], choices=["schur", "sparse"])
    parser.add_argument("--threads", type=int, default=0, help="core threads (0: default = all cores)")
    parser.add_argument("--all-outliers-per-pass", action="store_true",
                        help="use removeAllOutliersPerPass (faster, not the reference's rule)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "jointcal.json")
    parser.add_argument("--photometry-models", nargs="+", default=["constrainedMagnitude"],
                        choices=["none", "simpleFlux", "simpleMagnitude", "constrainedFlux", "constrainedMagnitude"])
    parser.add_argument("--skip-astrometry", action="store_true", help="only the photometric fits")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(relativeCreated)9.0f %(name)s %(levelname)s: %(message)s")
    logging.getLogger("diffcal.jointcal.sourceSelector").setLevel(logging.ERROR)

    from diffcal import _core
    from diffcal.jointcal import simulate

    if args.threads > 0:
        _core.set_num_threads(args.threads)
    t0 = time.perf_counter()
    survey = simulate(nVisits=args.visits, nDetectors=args.detectors, nStars=args.stars, seed=args.seed,
                      ditherRadius=args.dither)
    print(f"simulated {args.visits} visits x {args.detectors} detectors, {survey.nMeasurements} sources "
          f"in {time.perf_counter() - t0:.1f} s")
    print(f"machine: {machine()}; core threads: {_core.get_num_threads()}")
    results = []
    for solver in [] if args.skip_astrometry else args.solvers:
        r = runSolver(survey, solver, args.all_outliers_per_pass)
        results.append(r)
        print(f"  {solver:>6}: fit {r['fit_s']:8.1f} s   prepare {r['prepare_s']:6.1f} s   wcs {r['wcs_s']:6.1f} s   "
              f"peak +{r['peak_extra_mib']:7.0f} MiB   chi2/ndof {r['chi2_per_ndof']:.5f}   "
              f"outliers {r['outliers'][0]}+{r['outliers'][1]}   "
              f"({r['measurements_in_fit']} measurements, {r['fitted_stars']} stars, "
              f"{r['model_parameters']} model parameters)", flush=True)
    byName = {r["solver"]: r for r in results}
    record = {"title": "jointcal constrained astrometric fit", "machine": machine(),
              "threads": _core.get_num_threads(), "survey": {"visits": args.visits, "detectors": args.detectors,
                                                           "stars": args.stars, "dither_deg": args.dither,
                                                           "sources": survey.nMeasurements},
              "remove_all_outliers_per_pass": args.all_outliers_per_pass, "results": results}
    if "schur" in byName and "sparse" in byName:
        speedup = byName["sparse"]["fit_s"] / byName["schur"]["fit_s"]
        record["speedup_fit_sparse_over_schur"] = speedup
        record["chi2_relative_difference"] = abs(byName["sparse"]["chi2"] - byName["schur"]["chi2"]) / byName["schur"]["chi2"]
        print(f"  Schur speed-up over sparse (fit): {speedup:.1f}x; chi2 relative difference "
              f"{record['chi2_relative_difference']:.2e}")
    photometry = []
    for model in [m for m in args.photometry_models if m != "none"]:
        for solver in args.solvers:
            r = runPhotometry(survey, solver, model)
            photometry.append(r)
            print(f"  photometry {model} / {solver:>6}: fit {r['fit_s']:8.2f} s   peak +{r['peak_extra_mib']:7.0f} MiB   "
                  f"chi2/ndof {r['chi2_per_ndof']:.5f}   outliers {r['outliers'][0]}+{r['outliers'][1]}   "
                  f"({r['fitted_stars']} stars, {r['model_parameters']} model parameters)", flush=True)
    record["photometry"] = photometry
    pByName = {(r["model"], r["solver"]): r for r in photometry}
    for model in [m for m in args.photometry_models if m != "none"]:
        if (model, "schur") in pByName and (model, "sparse") in pByName:
            a, b = pByName[(model, "schur")], pByName[(model, "sparse")]
            print(f"  photometry {model}: Schur speed-up over sparse {b['fit_s'] / a['fit_s']:.1f}x; chi2 relative "
                  f"difference {abs(a['chi2'] - b['chi2']) / a['chi2']:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
