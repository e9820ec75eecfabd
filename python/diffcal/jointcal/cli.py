"""``diffcal jointcal`` and ``diffcal simulate survey``: command-line front ends of `diffcal.jointcal`.

Hook into ``diffcal.cli`` (after the decorrelation commands, which create ``simulate``) with::

    @_command
    def _add_jointcal(subparsers, common):
        from .jointcal.cli import add_commands
        add_commands(subparsers, common)   # "jointcal", and "survey" under the existing "simulate"
 Like ``diffcal.cli`` this module imports only
the standard library at import time.

Usage::

    diffcal jointcal INPUT_DIR --refcat REFCAT.fits [--refcat ...] [--camera CAMERA.fits]
                     [-c field=value ...] [-C config.py] -o OUTDIR [--plots] [--visits V ...]
    diffcal simulate survey OUTDIR [--visits N] [--detectors M] [--stars K] [--seed S] [--dither DEG]
"""

from __future__ import annotations

import argparse
import ast
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["add_commands", "add_jointcal", "add_simulate_survey", "addJointcalArguments", "applyConfigArguments",
           "applyOverride", "makeArgumentParser", "run_jointcal", "run_simulate_survey"]


def _usageError(message: str) -> Exception:
    """A ValueError that diffcal.cli reports as a plain one-line message (a DiffcalError)."""
    from ..errors import DiffcalError

    class JointcalUsageError(DiffcalError, ValueError):
        pass

    return JointcalUsageError(message)


def applyOverride(config: Any, text: str) -> None:
    """Apply one ``field=value`` override (dotted names, e.g. ``sourceSelector.science.doUnresolved=False``).

    The value is parsed as a Python literal when possible (``3``, ``2.5``, ``True``, ``None``, ``['a', 'b']``),
    else used as a string; the config field checks its type.

    Raises
    ------
    ValueError
        Malformed override or unknown field.
    """
    if "=" not in text:
        raise _usageError(f"config override {text!r} is not of the form field=value")
    name, value = text.split("=", 1)
    name = name.strip()
    parts = name.split(".")
    obj = config
    for part in parts[:-1]:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            try:
                obj = obj[part]
            except (KeyError, TypeError):
                raise _usageError(f"config override {text!r}: no field {part!r}") from None
    try:
        parsed: Any = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        parsed = value.strip()
    if not hasattr(obj, parts[-1]):
        raise _usageError(f"config override {text!r}: no field {parts[-1]!r}")
    try:
        setattr(obj, parts[-1], parsed)
    except Exception as exc:
        raise _usageError(f"config override {text!r}: {exc}") from None


class _StdoutLogging:
    """Print the jointcal loggers on stdout while a command runs (unless logging is already configured)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.handler: logging.Handler | None = None

    def __enter__(self) -> "_StdoutLogging":
        logger = logging.getLogger("diffcal")
        if not logger.handlers and not logging.getLogger().handlers:
            self.handler = logging.StreamHandler(sys.stdout)
            self.handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
            logger.addHandler(self.handler)
            self.level = logger.level
            logger.setLevel(logging.WARNING if self.quiet else logging.INFO)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handler is not None:
            logger = logging.getLogger("diffcal")
            logger.removeHandler(self.handler)
            logger.setLevel(self.level)


def run_jointcal(args: argparse.Namespace) -> int:
    """Run ``diffcal jointcal`` (see the module docstring). Returns the exit status (0)."""
    from .config import JointcalConfig
    from .outputs import writeOutputs
    from .readers import readCamera, readInputDir, readReferenceCatalog
    from .task import JointcalTask

    config = JointcalConfig()
    applyConfigArguments(config, args)
    config.validate()
    with _StdoutLogging(quiet=args.quiet):
        t0 = time.perf_counter()
        tables, summaries = readInputDir(args.input_dir, visits=args.visits)
        camera = readCamera(args.camera) if args.camera else None
        refcat = readReferenceCatalog(args.refcat) if args.refcat else None
        if refcat is None and (config.doAstrometry or config.doPhotometry):
            raise _usageError("--refcat is required for the astrometric and photometric fits")
        print(f"diffcal jointcal: read {len(summaries)} visits from {args.input_dir} in {time.perf_counter() - t0:.2f} s")
        task = JointcalTask(config=config)
        result = task.run(tables, summaries, camera, astrometryRefCat=refcat, photometryRefCat=refcat)
        files = writeOutputs(result, config, task.metadata, args.output, plots=args.plots)
    job = result.job
    if "astrometry_final_chi2" in job:
        chi2 = job["astrometry_final_chi2"] / max(job["astrometry_final_ndof"], 1)
        summary = (f"{len(result.outputWcs)} WCS for {len(summaries)} visits, astrometry chi2/ndof = {chi2:.4g}, "
                   f"{job['astrometry_prepared_fittedStars']} fitted stars")
    else:
        summary = f"{len(summaries)} visits"
    if "photometry_final_chi2" in job:
        pchi2 = job["photometry_final_chi2"] / max(job["photometry_final_ndof"], 1)
        summary += (f", {len(result.outputPhotoCalib)} PhotoCalib, photometry chi2/ndof = {pchi2:.4g} "
                    f"({result.photometry.model.kind})")
    print(f"diffcal jointcal: OK - {summary}; {len(files)} outputs in {args.output} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def run_simulate_survey(args: argparse.Namespace) -> int:
    """Run ``diffcal simulate survey``. Returns the exit status (0)."""
    from .simulation import simulate

    t0 = time.perf_counter()
    survey = simulate(nVisits=args.visits, nDetectors=args.detectors, nStars=args.stars, seed=args.seed,
                      ditherRadius=args.dither)
    out = survey.write(args.output)
    print(f"diffcal simulate survey: OK - {args.visits} visits x {args.detectors} detectors, "
          f"{survey.nMeasurements} sources, {len(survey.refCat)} reference stars written to {out} "
          f"({time.perf_counter() - t0:.1f} s); run: diffcal jointcal {out} --refcat {out / 'refcat.fits'} "
          f"--camera {out / 'camera.fits'} -o OUTDIR")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def addJointcalArguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``diffcal jointcal`` (INPUT_DIR, --refcat, --camera, -c, -C, -o, ...) to ``p``.

    Shared by the ``jointcal`` sub-command and `JointcalTask.parseAndRun`.
    """
    p.add_argument("input_dir", type=Path, metavar="INPUT_DIR")
    p.add_argument("--refcat", action="append", type=Path, metavar="REFCAT.fits",
                   help="reference catalog shard (repeatable)")
    p.add_argument("--camera", type=Path, metavar="CAMERA.fits", help="camera geometry (constrained model)")
    p.add_argument("-c", "--config", action="append", metavar="field=value", help="config override (repeatable)")
    p.add_argument("-C", "--config-file", action="append", type=Path, metavar="config.py",
                   help="config file (JointcalConfig.save format)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    p.add_argument("--plots", action="store_true", help="also write PNG plots (needs matplotlib)")
    p.add_argument("--visits", type=int, nargs="+", metavar="V", help="only these visits")
    p.add_argument("--quiet", action="store_true", help="only warnings and the summary line")
    return p


def makeArgumentParser(prog: str = "jointcal") -> argparse.ArgumentParser:
    """A standalone parser with the arguments of ``diffcal jointcal`` (used by `JointcalTask.parseAndRun`)."""
    p = argparse.ArgumentParser(
        prog=prog, description="Fit the astrometry and photometry of all visits of INPUT_DIR against a reference "
                               "catalog and record the results, config, metadata and package versions in OUTDIR.")
    return addJointcalArguments(p)


def applyConfigArguments(config: Any, args: argparse.Namespace) -> None:
    """Apply the ``-C config.py`` files, then the ``-c field=value`` overrides, of parsed arguments to ``config``."""
    for path in getattr(args, "config_file", None) or []:
        config.load(str(path))
    for override in getattr(args, "config", None) or []:
        applyOverride(config, override)


def add_jointcal(subparsers: Any, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the ``jointcal`` sub-command."""
    p = subparsers.add_parser(
        "jointcal", parents=[common] if common is not None else [],
        help="joint astrometric calibration of the visits of an input directory",
        description="Fit the astrometry and photometry of all visits of INPUT_DIR (sourceTable-<visit>.parq, "
                    "visitSummary-<visit>.fits, calexp-<visit>-<detector>.fits[.fz]) against a reference catalog "
                    "and write the fitted TAN-SIP WCS, PhotoCalibs, metrics and model to OUTDIR "
                    "(-c doPhotometry=False / doAstrometry=False for one of them).")
    addJointcalArguments(p)
    p.set_defaults(func=run_jointcal)
    return p


def add_simulate_survey(simulateSubparsers: Any, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``survey`` under an existing ``simulate`` command's sub-parsers."""
    p = simulateSubparsers.add_parser(
        "survey", parents=[common] if common is not None else [],
        help="write a simulated multi-visit survey with known truth (jointcal input layout)",
        description="Simulate a dithered survey (sources with S/N-based errors, 1%% outliers, a reference "
                    "catalog with proper motions, TAN-SIP input WCS) and write it in the INPUT_DIR layout of "
                    "'diffcal jointcal', plus refcat.fits and camera.fits.")
    p.add_argument("output", type=Path, metavar="OUTDIR")
    p.add_argument("--visits", type=_positive, default=8)
    p.add_argument("--detectors", type=_positive, default=8)
    p.add_argument("--stars", type=_positive, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dither", type=float, default=0.1, help="dither radius, degrees")
    p.set_defaults(func=run_simulate_survey)
    return p


def add_commands(subparsers: Any, common: argparse.ArgumentParser | None = None) -> None:
    """Add ``jointcal`` and ``simulate survey`` to a ``diffcal`` sub-parser set.

    If a ``simulate`` command already exists (``diffcal simulate pair`` of the decorrelation commands),
    ``survey`` is added to its sub-commands; otherwise ``simulate`` is created. Register this after the
    other ``simulate`` kinds.
    """
    add_jointcal(subparsers, common)
    sim = subparsers.choices.get("simulate")
    if sim is None:
        sim = subparsers.add_parser("simulate", parents=[common] if common is not None else [],
                                    help="write synthetic data with known truth",
                                    description="Write synthetic inputs with known truth.")
        simSub = sim.add_subparsers(dest="kind", metavar="KIND", title="kinds")
        simSub.required = True
    else:
        simSub = next(a for a in sim._actions if isinstance(a, argparse._SubParsersAction))
    add_simulate_survey(simSub, common)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m diffcal.jointcal.cli``), for use before the hook-up in diffcal.cli."""
    parser = argparse.ArgumentParser(prog="diffcal")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_commands(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:  # one line, like diffcal.cli
        print(f"diffcal {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
