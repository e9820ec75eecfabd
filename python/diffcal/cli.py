"""The ``diffcal`` command line.

Usage::

    diffcal --version
    diffcal info [--json]
    diffcal demo [--output DIR] [--size N] [--seed S] [--threads N] [--quiet]

(also ``python -m diffcal ...``). Every command prints its progress on standard output and ends
with a one-line summary; errors are reported as one ``diffcal <command>: error: ...`` line on
standard error, without a traceback (``--traceback`` re-raises them for debugging).

Exit status
-----------
0
    Success.
1
    The command failed (bad input data, an output that cannot be written, a failed demo check).
2
    Bad command-line arguments (reported by :mod:`argparse`).
130
    Interrupted (Ctrl-C).

Extending
---------
*Commands* are registered in :data:`COMMANDS`: a function ``add(subparsers, common)`` that adds a
sub-parser (with ``parents=[common]``) and sets its ``func`` default to a function
``run(args) -> int``.

*Demo steps* are :class:`DemoStep` objects in :data:`DEMO_STEPS`, run in order by
``diffcal demo``. A step is a function ``run(ctx: DemoContext) -> None`` that reads the objects
earlier steps left in ``ctx.data``, records its numbers in ``ctx.report.section(step.key)`` (they
all end up in ``metrics.json``), prints result lines with ``ctx.report.line``, registers checks
with ``ctx.report.check`` and files with ``ctx.report.add_file``. Register one with the
:func:`demo_step` decorator or by inserting into the list. ``metrics.json`` is always written
last, after every step.

This module only imports the standard library at import time (``import diffcal.cli`` must stay
cheap); numpy, astropy, matplotlib and the compiled core are imported inside the commands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from . import __version__
from .errors import DiffcalError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

    from .image import Exposure

__all__ = [
    "COMMANDS",
    "DEMO_STEPS",
    "CommandError",
    "DemoContext",
    "DemoOptions",
    "DemoReport",
    "DemoStep",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "collect_info",
    "demo_step",
    "main",
    "run_demo",
]

PROG = "diffcal"

#: Exit status of a successful command.
EXIT_OK = 0
#: Exit status of a command that failed (bad data, unwritable output, failed check).
EXIT_FAILURE = 1
#: Exit status of bad command-line arguments (the argparse convention).
EXIT_USAGE = 2
#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


class CommandError(DiffcalError, RuntimeError):
    """An expected command failure: its message is printed alone, without a traceback."""


# ---------------------------------------------------------------------------------------------
# argument types
# ---------------------------------------------------------------------------------------------

def _int_in_range(name: str, lo: int, hi: int | None = None) -> Callable[[str], int]:
    """argparse ``type=`` converter accepting integers in ``[lo, hi]``."""

    def convert(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"{name} must be {bounds}, got {value}")
        return value

    convert.__name__ = name  # argparse names the type in some messages
    return convert


# ---------------------------------------------------------------------------------------------
# parser and entry point
# ---------------------------------------------------------------------------------------------

#: Registered commands: functions ``add(subparsers, common)`` that add one sub-parser each.
COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = []


def _command(add: Callable[[Any, argparse.ArgumentParser], None]) -> Callable[[Any, argparse.ArgumentParser], None]:
    COMMANDS.append(add)
    return add


def build_parser() -> argparse.ArgumentParser:
    """The ``diffcal`` argument parser with every registered command.

    Returns
    -------
    argparse.ArgumentParser
        Parsing sets ``command`` (the sub-command name) and ``func`` (a callable
        ``func(args) -> int`` running it).
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "diffcal: LSST ImageMapReduce, Alard-Lupton kernel decorrelation and jointcal "
            "with a fast C++/Eigen core, without the LSST stack."
        ),
        epilog="Run 'diffcal COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--traceback", action="store_true",
        help="on error, show the full Python traceback instead of a one-line message",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subparsers.required = True
    for add in COMMANDS:
        add(subparsers, common)
    return parser


def _exit_status(code: Any) -> int:
    """Exit status for the argument of a ``SystemExit`` raised while parsing."""
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return EXIT_FAILURE


def _describe(exc: BaseException) -> str:
    """One-line description of an exception for the user."""
    if isinstance(exc, (CommandError, DiffcalError)):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc) or "(no message)"
    return f"{type(exc).__name__}: {text} (run again with --traceback for details)"


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (e.g. captured by pytest)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffcal`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 success, 1 failure, 2 bad arguments, 130 interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version and usage errors (argparse exits with 2)
        return _exit_status(exc.code)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output went away (e.g. ``diffcal demo | head``): stop quietly.
        _silence_stdout()
        return EXIT_FAILURE
    except Exception as exc:
        if getattr(args, "traceback", False):
            raise
        print(f"{PROG} {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE


# ---------------------------------------------------------------------------------------------
# diffcal info
# ---------------------------------------------------------------------------------------------

def _dist_version(name: str) -> str | None:
    """Installed version of distribution ``name`` (without importing it), or None."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect_info() -> dict[str, Any]:
    """Build facts of this diffcal installation.

    Returns
    -------
    dict
        Flat mapping: ``diffcal_version``, ``core_version``, ``core_path``, ``eigen_version``,
        ``compiler``, ``build_type``, ``flags``, ``simd``, ``cxx_standard``, ``hardware_threads``,
        ``num_threads``, ``python_version``, ``python_implementation``, ``platform`` and the
        versions of the dependencies (``numpy_version``, ``scipy_version``, ``astropy_version``,
        ``lsst_pex_config_version``, ``lsst_utils_version``, ``matplotlib_version``; None when not
        installed).

    Raises
    ------
    CommandError
        If the compiled core ``diffcal._core`` cannot be imported.
    """
    import platform

    try:
        from . import _core
    except ImportError as exc:
        raise CommandError(
            f"the compiled core diffcal._core cannot be imported ({exc}); reinstall with 'pip install .'"
        ) from exc
    core = _core.build_info()
    info: dict[str, Any] = {
        "diffcal_version": __version__,
        "core_version": str(core["version"]),
        "core_path": getattr(_core, "__file__", None),
        "eigen_version": str(core["eigen_version"]),
        "compiler": str(core["compiler"]),
        "build_type": str(core["build_type"]),
        "flags": " ".join(str(core["flags"]).split()),
        "simd": str(core["simd"]),
        "cxx_standard": int(core["cxx_standard"]),
        "hardware_threads": int(core["hardware_threads"]),
        "num_threads": int(core["num_threads"]),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    for dist in ("numpy", "scipy", "astropy", "lsst-pex-config", "lsst-utils", "matplotlib"):
        info[f"{dist.replace('-', '_')}_version"] = _dist_version(dist)
    return info


_CXX_NAMES = {201703: "C++17", 202002: "C++20", 202302: "C++23"}


def _info_summary(info: dict[str, Any]) -> str:
    return (
        f"{PROG} info: diffcal {info['diffcal_version']}, Eigen {info['eigen_version']}, "
        f"{info['compiler']} {info['build_type']}, SIMD {info['simd'] or 'none'}, "
        f"{info['num_threads']} of {info['hardware_threads']} hardware threads"
    )


def _run_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        # stdout holds the JSON document alone; the summary line goes to stderr.
        print(json.dumps(info, indent=2))
        print(_info_summary(info), file=sys.stderr)
        return EXIT_OK
    std = info["cxx_standard"]
    rows = [
        ("core", f"diffcal._core {info['core_version']} ({info['core_path']})"),
        ("Eigen", info["eigen_version"]),
        ("compiler", info["compiler"]),
        ("build type", info["build_type"]),
        ("flags", info["flags"] or "(none)"),
        ("SIMD", info["simd"] or "(none)"),
        ("C++ standard", f"{std} ({_CXX_NAMES.get(std, 'C++')})"),
        ("threads", f"{info['num_threads']} used, {info['hardware_threads']} hardware"),
        ("Python", f"{info['python_version']} ({info['python_implementation']}) on {info['platform']}"),
    ]
    for dist in ("numpy", "scipy", "astropy", "lsst-pex-config", "lsst-utils", "matplotlib"):
        version = info[f"{dist.replace('-', '_')}_version"]
        optional = " (optional)" if dist == "matplotlib" else ""
        rows.append((dist, (version or "not installed") + optional))
    width = max(len(name) for name, _ in rows)
    print(f"{PROG} {info['diffcal_version']}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if info["core_version"] != info["diffcal_version"]:
        print(f"  warning: the compiled core is version {info['core_version']} but the Python package "
              f"is {info['diffcal_version']}; rebuild with 'pip install .'")
    print(_info_summary(info))
    return EXIT_OK


@_command
def _add_info(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "info", parents=[common], help="print build information (versions, compiler, SIMD, threads)",
        description="Print how this diffcal was built: versions of diffcal, Eigen and the "
                    "dependencies, compiler, flags, SIMD instruction sets and thread counts.",
    )
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (the summary line goes to stderr)")
    p.set_defaults(func=_run_info)


# ---------------------------------------------------------------------------------------------
# diffcal demo: framework
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DemoOptions:
    """Options of a demo run (from the command line).

    Attributes
    ----------
    output : pathlib.Path
        Output directory (created if needed).
    size : int
        Width and height of the synthetic exposure in pixels.
    seed : int
        Seed of the random generator (the run is reproducible for a given seed).
    threads : int or None
        Worker threads of the C++ core; None keeps the current setting (default: all cores).
    quiet : bool
        Print only the final summary line.
    """

    output: Path
    size: int
    seed: int
    threads: int | None = None
    quiet: bool = False


class DemoReport:
    """What a demo run prints and records.

    Parameters
    ----------
    quiet : bool
        When True, :meth:`line` and :meth:`progress` print nothing.

    Attributes
    ----------
    metrics : dict
        ``{section: {name: value}}``; written to ``metrics.json`` (plus run-level keys).
    checks : dict[str, bool]
        Named pass/fail checks; the run fails (exit status 1) if any is False.
    files : dict[str, str]
        Output files written, ``{key: file name relative to the output directory}``.
    notes : list[str]
        Remarks such as skipped optional outputs.
    highlights : list[str]
        Short phrases joined into the final summary line.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.metrics: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, bool] = {}
        self.files: dict[str, str] = {}
        self.notes: list[str] = []
        self.highlights: list[str] = []

    def section(self, key: str) -> dict[str, Any]:
        """The metrics dictionary of section ``key`` (created empty on first use)."""
        return self.metrics.setdefault(key, {})

    def progress(self, index: int, total: int, title: str) -> None:
        """Print the ``[index/total] title`` progress line."""
        if not self.quiet:
            print(f"[{index}/{total}] {title}", flush=True)

    def line(self, text: str) -> None:
        """Print an indented result line of the current step."""
        if not self.quiet:
            print(f"      {text}", flush=True)

    def check(self, name: str, ok: bool) -> bool:
        """Record the check ``name``; returns ``ok``."""
        self.checks[name] = bool(ok)
        return bool(ok)

    def note(self, text: str) -> None:
        """Record and print a remark (printed even when quiet: it explains a missing output)."""
        self.notes.append(text)
        print(f"      note: {text}", flush=True)

    def add_file(self, key: str, path: Path, root: Path) -> None:
        """Record an output file (stored relative to ``root`` when inside it)."""
        try:
            self.files[key] = str(path.relative_to(root))
        except ValueError:
            self.files[key] = str(path)

    def highlight(self, text: str) -> None:
        """Add a phrase to the final summary line."""
        self.highlights.append(text)

    @property
    def failed_checks(self) -> list[str]:
        """Names of the checks that failed."""
        return [name for name, ok in self.checks.items() if not ok]


@dataclass
class DemoContext:
    """State shared by the steps of a demo run.

    Attributes
    ----------
    options : DemoOptions
        The command-line options.
    report : DemoReport
        Where steps record numbers, checks, files and printed lines.
    rng : numpy.random.Generator
        Random generator seeded with ``options.seed``; steps draw from it in order.
    data : dict
        Objects handed from one step to the next (``"exposure"``, ``"truth"``, ...).
    """

    options: DemoOptions
    report: DemoReport
    rng: "np.random.Generator"
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> Path:
        """The output directory."""
        return self.options.output


@dataclass(frozen=True)
class DemoStep:
    """One step of ``diffcal demo``.

    Attributes
    ----------
    key : str
        Name of the step's section in ``metrics.json`` and of its timing.
    title : str
        Progress-line text (may use ``{size}`` and the other :class:`DemoOptions` fields).
    run : callable
        ``run(ctx: DemoContext) -> None``.
    """

    key: str
    title: str
    run: Callable[[DemoContext], None]


#: The steps of ``diffcal demo``, in order (``metrics.json`` is written after the last one).
DEMO_STEPS: list[DemoStep] = []


def demo_step(key: str, title: str) -> Callable[[Callable[[DemoContext], None]], Callable[[DemoContext], None]]:
    """Decorator appending a function to :data:`DEMO_STEPS` as step ``key``.

    Parameters
    ----------
    key : str
        Section name in ``metrics.json`` (unique).
    title : str
        Progress-line text; ``str.format`` fields of :class:`DemoOptions` are substituted.
    """

    def register(func: Callable[[DemoContext], None]) -> Callable[[DemoContext], None]:
        if any(step.key == key for step in DEMO_STEPS):
            raise ValueError(f"a demo step named {key!r} is already registered")
        DEMO_STEPS.append(DemoStep(key, title, func))
        return func

    return register


def _median_time(func: Callable[[], Any], runs: int = 3) -> tuple[float, Any]:
    """Median wall time (seconds) of ``runs`` calls and the result of the last call."""
    times = []
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], result


def _relative_difference(a: float, b: float) -> float:
    """``|a - b| / max(|a|, |b|)`` (0 when both are 0; inf when exactly one is NaN)."""
    if math.isnan(a) or math.isnan(b):
        return 0.0 if (math.isnan(a) and math.isnan(b)) else math.inf
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0.0 else abs(a - b) / scale


def _json_ready(value: Any) -> Any:
    """``value`` with numpy scalars, paths and tuples converted and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _prepare_output(output: Path) -> Path:
    """Create the output directory (and parents); CommandError when impossible."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError) or (output.exists() and not output.is_dir()):
            reason = "a file with that name exists"
        raise CommandError(f"cannot create output directory {str(output)!r}: {reason}") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise CommandError(f"output directory {str(output)!r} is not writable")
    # A metrics.json from an earlier run must not pass for the result of this one if we fail.
    try:
        (output / "metrics.json").unlink(missing_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot replace {str(output / 'metrics.json')!r}: {exc.strerror or exc}") from None
    return output


def run_demo(options: DemoOptions, steps: Sequence[DemoStep] | None = None) -> int:
    """Run the demo steps and write ``metrics.json``.

    Parameters
    ----------
    options : DemoOptions
        Output directory, size, seed, threads, verbosity.
    steps : sequence of DemoStep, optional
        Steps to run (default :data:`DEMO_STEPS`).

    Returns
    -------
    int
        0 when every check passed, 1 otherwise (``metrics.json`` is written in both cases).

    Raises
    ------
    CommandError
        The output directory cannot be created or written.
    """
    import numpy as np

    from . import _core

    steps = list(DEMO_STEPS if steps is None else steps)
    start = time.perf_counter()
    output = _prepare_output(options.output)
    report = DemoReport(quiet=options.quiet)
    previous_threads = _core.get_num_threads()
    if options.threads is not None:
        _core.set_num_threads(options.threads)
    try:
        ctx = DemoContext(options=options, report=report, rng=np.random.default_rng(options.seed))
        total = len(steps) + 1
        timings: dict[str, float] = {}
        fields = {"size": options.size, "seed": options.seed, "output": str(output)}
        for index, step in enumerate(steps, start=1):
            report.progress(index, total, step.title.format(**fields))
            t0 = time.perf_counter()
            step.run(ctx)
            timings[step.key] = time.perf_counter() - t0
        report.progress(total, total, "Writing metrics.json")
        metrics_path = output / "metrics.json"
        report.add_file("metrics", metrics_path, output)
        elapsed = time.perf_counter() - start
        timings["total"] = elapsed
        failed = report.failed_checks
        document: dict[str, Any] = {
            "diffcal_version": __version__,
            "command": "demo",
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "parameters": {
                "size": options.size,
                "seed": options.seed,
                "threads": _core.get_num_threads(),
                "output": str(output),
            },
            **report.metrics,
            "timings_seconds": timings,
            "checks": report.checks,
            "files": report.files,
            "notes": report.notes,
            "success": not failed,
        }
        text = json.dumps(_json_ready(document), indent=2, allow_nan=False) + "\n"
        try:
            _write_atomically(metrics_path, text.encode())
        except OSError as exc:
            raise CommandError(f"cannot write {str(metrics_path)!r}: {exc.strerror or exc}") from None
        report.line(f"{len(report.metrics)} sections, {len(report.checks)} checks -> {metrics_path}")
    finally:
        if options.threads is not None:
            _core.set_num_threads(previous_threads)
    parts = [f"{elapsed:.1f} s"] + report.highlights + [f"outputs in {output}"]
    if failed:
        print(f"{PROG} demo: FAILED check(s) {', '.join(failed)}; " + "; ".join(parts), flush=True)
        print(f"{PROG} demo: error: check(s) failed: {', '.join(failed)} (details in {metrics_path})",
              file=sys.stderr)
        return EXIT_FAILURE
    print(f"{PROG} demo: OK in " + "; ".join(parts), flush=True)
    return EXIT_OK


def _run_demo_command(args: argparse.Namespace) -> int:
    options = DemoOptions(output=Path(args.output), size=args.size, seed=args.seed,
                          threads=args.threads, quiet=args.quiet)
    return run_demo(options)


@_command
def _add_demo(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "demo", parents=[common], help="run the end-to-end demo on synthetic data",
        description="Generate a synthetic exposure with known truth, round-trip it through FITS, "
                    "time the C++ core against the numpy reference, and write exposure.fits, "
                    "metrics.json and exposure.png (with matplotlib) to the output directory.",
    )
    p.add_argument("--output", "-o", default="diffcal-demo", metavar="DIR",
                   help="output directory, created if needed (default: ./diffcal-demo)")
    p.add_argument("--size", type=_int_in_range("size", 64, 16384), default=2048, metavar="N",
                   help="width and height of the synthetic exposure in pixels (64..16384, default 2048)")
    p.add_argument("--seed", type=_int_in_range("seed", 0), default=42, metavar="S",
                   help="random seed (non-negative integer, default 42)")
    p.add_argument("--threads", type=_int_in_range("threads", 1, 1024), default=None, metavar="N",
                   help="worker threads of the C++ core (default: all cores, or DIFFCAL_NUM_THREADS)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the final summary line")
    p.set_defaults(func=_run_demo_command)


# ---------------------------------------------------------------------------------------------
# diffcal demo: the steps
# ---------------------------------------------------------------------------------------------

#: Origin of the synthetic exposure (non-zero on purpose: exercises parent coordinates).
DEMO_XY0 = (1000, 2000)
#: Mask planes excluded from the demo statistics.
DEMO_STATS_AND_MASK = ("BAD", "SAT", "NO_DATA")

_SKY = 800.0          # sky level (counts), subtracted from the image but in the variance
_READ_NOISE = 5.0     # counts
_PSF_SIGMA = 2.0      # pixels
_PSF_STAMP = 25       # pixels (about +-6 sigma)
_SATURATION = 60000.0  # counts above sky
_FLUX_RANGE = (500.0, 5.0e6)  # counts, log-uniform
_STARS_PER_MPIX = 400


def make_demo_exposure(size: int, rng: "np.random.Generator") -> tuple["Exposure", dict[str, Any]]:
    """Synthetic exposure with known truth.

    Gaussian stars (a :class:`~diffcal.psf.GaussianPsf`, sigma 2 px, log-uniform fluxes with
    some saturating) on a sky-subtracted background with Gaussian noise of variance
    ``sky + model + read_noise**2`` (gain 1); a variance plane estimated from the noisy raw
    pixels, ``max(raw, 0) + read_noise**2``; three hot columns masked ``BAD``; saturated pixels masked
    ``SAT`` (and clipped); pixels 5 sigma above the sky masked ``DETECTED``; a few NaN pixels in
    the image and variance planes (not masked); a TAN WCS (0.2"/px, rotated 30 deg) in parent
    coordinates; ``xy0 = DEMO_XY0``.

    Parameters
    ----------
    size : int
        Width and height in pixels (>= 64).
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    exposure : diffcal.image.Exposure
        float32 image and variance planes.
    truth : dict
        ``x``, ``y`` (parent pixels), ``flux`` (counts) arrays of the stars, the noiseless
        ``model`` image, the true noise ``variance`` (float64 arrays), and scalars (``sky``, ``read_noise``, ``psf_sigma``, ``bad_columns``,
        ``nan_pixels``, ...).
    """
    import numpy as np
    from astropy.wcs import WCS

    from .geom import Box2I
    from .image import Exposure, Mask
    from .psf import GaussianPsf

    x0, y0 = DEMO_XY0
    centre = (x0 + (size - 1) / 2.0, y0 + (size - 1) / 2.0)
    psf = GaussianPsf(_PSF_STAMP, _PSF_STAMP, _PSF_SIGMA, averagePosition=centre)
    bbox = Box2I((x0, y0), dimensions=(size, size))

    n_stars = max(10, int(round(_STARS_PER_MPIX * size * size / 2**20)))
    xs = rng.uniform(x0 - 0.5, x0 + size - 0.5, n_stars)
    ys = rng.uniform(y0 - 0.5, y0 + size - 0.5, n_stars)
    fluxes = np.exp(rng.uniform(math.log(_FLUX_RANGE[0]), math.log(_FLUX_RANGE[1]), n_stars))

    model = np.zeros((size, size), dtype=np.float64)
    for x, y, flux in zip(xs, ys, fluxes):  # O(stars) stamps of 25x25; generation only
        stamp_box = psf.computeImageBBox((x, y))
        inside = stamp_box.clippedTo(bbox)
        if inside.isEmpty():
            continue
        stamp = psf.computeImage((x, y))
        model[inside.slices((x0, y0))] += flux * stamp[inside.slices(stamp_box.getMin())]

    # Raw counts (gain 1) with Poisson-like Gaussian noise plus read noise; the variance plane is
    # estimated from the noisy raw pixels, as instrument signature removal does; then the sky is
    # subtracted from the image.
    true_variance = _SKY + model + _READ_NOISE**2
    raw = _SKY + model + rng.standard_normal((size, size)) * np.sqrt(true_variance)
    variance = np.maximum(raw, 0.0) + _READ_NOISE**2
    image = raw - _SKY

    mask = Mask.fromDimensions((size, size), xy0=(x0, y0))
    bad_bit = mask.getPlaneBitMask("BAD")
    sat_bit = mask.getPlaneBitMask("SAT")
    det_bit = mask.getPlaneBitMask("DETECTED")
    m = mask.array
    m[model > 5.0 * math.sqrt(_SKY + _READ_NOISE**2)] |= det_bit
    saturated = image > _SATURATION
    m[saturated] |= sat_bit
    image[saturated] = _SATURATION

    bad_columns = np.sort(rng.choice(np.arange(8, size - 8), size=3, replace=False))
    for col in bad_columns:
        m[:, col] |= bad_bit
        image[:, col] = 5000.0 + rng.standard_normal(size) * 50.0  # a hot column
        variance[:, col] = 1.0e4

    n_nan = max(8, size * size // 20000)
    flat = rng.choice(size * size, size=n_nan, replace=False)
    nan_rows, nan_cols = np.unravel_index(flat, (size, size))
    image[nan_rows, nan_cols] = np.nan
    variance[nan_rows, nan_cols] = np.nan

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [centre[0] + 1.0, centre[1] + 1.0]  # parent pixel coordinates, FITS 1-based
    scale, angle = 0.2 / 3600.0, math.radians(30.0)
    wcs.wcs.cd = scale * np.array([[-math.cos(angle), math.sin(angle)],
                                   [math.sin(angle), math.cos(angle)]])
    wcs.wcs.set()

    exposure = Exposure(
        image.astype(np.float32), mask, variance.astype(np.float32),
        xy0=(x0, y0), psf=psf, wcs=wcs,
        metadata={"ORIGIN": "diffcal demo", "SKYLEVEL": _SKY, "RDNOISE": _READ_NOISE},
    )
    truth: dict[str, Any] = {
        "x": xs, "y": ys, "flux": fluxes, "model": model, "variance": true_variance,
        "n_stars": n_stars, "sky": _SKY, "read_noise": _READ_NOISE, "psf_sigma": _PSF_SIGMA,
        "psf_fwhm": psf.computeFwhm(), "saturation": _SATURATION,
        "bad_columns": [int(x0 + c) for c in bad_columns], "nan_pixels": n_nan,
        "saturated_pixels": int(saturated.sum()),
    }
    return exposure, truth


@demo_step("exposure", "Generating a {size}x{size} synthetic exposure (seed {seed})")
def _step_exposure(ctx: DemoContext) -> None:
    import numpy as np

    exposure, truth = make_demo_exposure(ctx.options.size, ctx.rng)
    exposure.getMetadata()["DEMOSEED"] = ctx.options.seed
    ctx.data["exposure"] = exposure
    ctx.data["truth"] = truth
    mask = exposure.maskedImage.mask
    and_mask = mask.getPlaneBitMask(list(DEMO_STATS_AND_MASK))
    # Recovered noise: residuals from the true model in units of the true noise, over the
    # finite, unmasked pixels (expect mean 0 and standard deviation 1).
    good = np.isfinite(exposure.image) & ((exposure.mask & and_mask) == 0)
    chi = (exposure.image[good] - truth["model"][good]) / np.sqrt(truth["variance"][good])
    chi_mean, chi_sigma = float(chi.mean()), float(chi.std())
    x0, y0 = exposure.getXY0()
    section = ctx.report.section("exposure")
    section.update({
        "width": exposure.getWidth(), "height": exposure.getHeight(), "xy0": [x0, y0],
        "dtype": str(exposure.dtype), "n_stars": truth["n_stars"],
        "flux_min": float(truth["flux"].min()), "flux_max": float(truth["flux"].max()),
        "psf_sigma": truth["psf_sigma"], "psf_fwhm": truth["psf_fwhm"],
        "sky": truth["sky"], "read_noise": truth["read_noise"],
        "true_sky_variance": truth["sky"] + truth["read_noise"] ** 2,
        "saturation": truth["saturation"], "saturated_pixels": truth["saturated_pixels"],
        "bad_columns": truth["bad_columns"], "nan_pixels": truth["nan_pixels"],
        "masked_pixels": int(np.count_nonzero(exposure.mask & and_mask)),
        "detected_pixels": int(np.count_nonzero(exposure.mask & mask.getPlaneBitMask("DETECTED"))),
        "noise_chi_pixels": int(chi.size), "noise_chi_mean": chi_mean, "noise_chi_sigma": chi_sigma,
        "wcs_crval_deg": [float(v) for v in exposure.getWcs().wcs.crval],
        "wcs_pixel_scale_arcsec": 0.2,
    })
    ctx.report.line(f"{truth['n_stars']} stars (flux {section['flux_min']:.3g}..{section['flux_max']:.3g}), "
                    f"GaussianPsf sigma {truth['psf_sigma']:g} px (FWHM {truth['psf_fwhm']:.3f} px), "
                    f"xy0=({x0}, {y0})")
    ctx.report.line(f"sky {truth['sky']:g} + read noise {truth['read_noise']:g}: "
                    f"variance {section['true_sky_variance']:g}; bad columns x={truth['bad_columns']}, "
                    f"{truth['nan_pixels']} NaN pixels, {truth['saturated_pixels']} saturated pixels")
    ctx.report.line(f"noise check: (image - model)/sqrt(true variance) over {chi.size} good pixels has mean "
                    f"{chi_mean:+.4f}, standard deviation {chi_sigma:.4f} (expected 0, 1)")
    ctx.report.check("noise_matches_truth", abs(chi_mean) < 0.02 and abs(chi_sigma - 1.0) < 0.02)


def _bit_exact(a: "np.ndarray", b: "np.ndarray") -> bool:
    """True if both arrays have the same shape, dtype and bytes (NaN payloads included)."""
    import numpy as np

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@demo_step("fits_roundtrip", "Writing exposure.fits and reading it back")
def _step_fits_roundtrip(ctx: DemoContext) -> None:
    import numpy as np

    from .image import Exposure

    exposure: Exposure = ctx.data["exposure"]
    path = ctx.output / "exposure.fits"
    try:
        t0 = time.perf_counter()
        exposure.writeFits(path)
        t_write = time.perf_counter() - t0
    except OSError as exc:
        raise CommandError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    ctx.report.add_file("exposure", path, ctx.output)
    t0 = time.perf_counter()
    back = Exposure.readFits(path)
    t_read = time.perf_counter() - t0
    ctx.data["exposure_read"] = back

    planes = {
        "image": _bit_exact(exposure.image, back.image),
        "mask": _bit_exact(exposure.mask, back.mask),
        "variance": _bit_exact(exposure.variance, back.variance),
    }
    xy0_ok = tuple(back.getXY0()) == tuple(exposure.getXY0())
    planes_ok = (back.maskedImage.mask.getMaskPlaneDict()
                 == exposure.maskedImage.mask.getMaskPlaneDict())
    # WCS: sky positions of the four corners and the centre (parent coordinates), both objects.
    bbox = exposure.getBBox()
    px = np.array([bbox.getMinX(), bbox.getMaxX(), bbox.getMaxX(), bbox.getMinX(),
                   (bbox.getMinX() + bbox.getMaxX()) / 2], dtype=float)
    py = np.array([bbox.getMinY(), bbox.getMinY(), bbox.getMaxY(), bbox.getMaxY(),
                   (bbox.getMinY() + bbox.getMaxY()) / 2], dtype=float)
    sky_a = exposure.getWcs().pixel_to_world(px, py)
    wcs_b = back.getWcs()
    wcs_sep_mas = (float(sky_a.separation(wcs_b.pixel_to_world(px, py)).max().to_value("mas"))
                   if wcs_b is not None else math.inf)
    psf_b = back.getPsf()
    psf_diff = (float(np.max(np.abs(psf_b.computeKernelImage() - exposure.getPsf().computeKernelImage())))
                if psf_b is not None else math.inf)
    bit_exact = all(planes.values())
    size_mb = path.stat().st_size / 2**20

    section = ctx.report.section("fits_roundtrip")
    section.update({
        "bit_exact": bit_exact, "planes_bit_exact": planes, "xy0_preserved": xy0_ok,
        "mask_planes_preserved": planes_ok, "wcs_max_separation_mas": wcs_sep_mas,
        "psf_kernel_max_abs_diff": psf_diff, "psf_class_read": type(psf_b).__name__,
        "file_bytes": path.stat().st_size, "write_seconds": t_write, "read_seconds": t_read,
    })
    verdict = "bit-exact" if bit_exact else "MISMATCH in " + ", ".join(k for k, v in planes.items() if not v)
    ctx.report.line(f"{path.name}: {size_mb:.1f} MiB, written in {t_write:.3f} s, read in {t_read:.3f} s")
    ctx.report.line(f"image/mask/variance planes {verdict}; xy0 {'kept' if xy0_ok else 'CHANGED'}, "
                    f"mask planes {'kept' if planes_ok else 'CHANGED'}")
    ctx.report.line(f"WCS max separation {wcs_sep_mas:.2g} mas; PSF read back as "
                    f"{type(psf_b).__name__}, max |diff| {psf_diff:.2g}")
    ctx.report.check("fits_roundtrip_bit_exact", bit_exact)
    ctx.report.check("fits_roundtrip_metadata", xy0_ok and planes_ok and wcs_sep_mas < 1.0 and psf_diff < 1e-12)
    ctx.report.highlight("FITS round trip " + ("bit-exact" if bit_exact else "NOT bit-exact"))


@demo_step("clipped_statistics", "Clipped statistics of the variance plane: C++ core vs numpy")
def _step_clipped_statistics(ctx: DemoContext) -> None:
    from . import _core
    from .image import Exposure
    from .reference import clipped_statistics_numpy
    from .statistics import clippedStatistics

    exposure: Exposure = ctx.data["exposure"]
    and_mask = exposure.maskedImage.mask.getPlaneBitMask(list(DEMO_STATS_AND_MASK))
    values, mask = exposure.variance, exposure.mask
    runs = 3
    t_cpp, cpp = _median_time(lambda: clippedStatistics(values, mask, andMask=and_mask), runs)
    t_np, (np_mean, np_var) = _median_time(lambda: clipped_statistics_numpy(values, mask, and_mask), runs)
    rel_mean = _relative_difference(cpp.mean, np_mean)
    rel_var = _relative_difference(cpp.variance, np_var)
    speedup = t_np / t_cpp if t_cpp > 0 else math.inf
    threads = _core.get_num_threads()
    truth = ctx.data.get("truth", {})

    section = ctx.report.section("clipped_statistics")
    section.update({
        "plane": "variance", "dtype": str(values.dtype), "and_mask_planes": list(DEMO_STATS_AND_MASK),
        "n_sigma": 3.0, "n_iter": 3, "runs": runs, "threads": threads,
        "cpp": {"mean": cpp.mean, "variance": cpp.variance, "median": cpp.median, "iqr": cpp.iqr,
                "n_candidates": cpp.nCandidates, "n_used": cpp.nUsed, "seconds": t_cpp},
        "numpy": {"mean": np_mean, "variance": np_var, "seconds": t_np},
        "mean_relative_difference": rel_mean, "variance_relative_difference": rel_var,
        "speedup": speedup,
    })
    ctx.report.line(f"{values.shape[1]}x{values.shape[0]} {values.dtype}, mask {'|'.join(DEMO_STATS_AND_MASK)}, "
                    f"3 sigma x 3 iterations, median of {runs} runs, {threads} thread(s)")
    ctx.report.line(f"C++   mean {cpp.mean:.12g}  variance {cpp.variance:.12g}  {1e3 * t_cpp:8.2f} ms "
                    f"({cpp.nUsed} of {cpp.nCandidates} pixels kept)")
    ctx.report.line(f"numpy mean {np_mean:.12g}  variance {np_var:.12g}  {1e3 * t_np:8.2f} ms")
    if "sky" in truth:
        ctx.report.line(f"true sky variance {truth['sky'] + truth['read_noise'] ** 2:g} (stars add a little)")
    ctx.report.line(f"relative difference: mean {rel_mean:.2g}, variance {rel_var:.2g}; "
                    f"speed-up x{speedup:.1f}")
    ctx.report.check("clipped_mean_agrees", rel_mean <= 1e-12)
    ctx.report.check("clipped_variance_agrees", rel_var <= 1e-10)
    ctx.report.highlight(f"clipped statistics C++ x{speedup:.1f} vs numpy ({threads} thread(s))")


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

    from .statistics import clippedStatistics

    image = exposure.image
    mask = exposure.maskedImage.mask
    x0, y0 = exposure.getXY0()
    h, w = image.shape
    extent = (x0 - 0.5, x0 + w - 0.5, y0 - 0.5, y0 + h - 0.5)

    # asinh stretch: linear within ~2 sigma of the sky, logarithmic for the stars
    stats = clippedStatistics(image, mask.array, andMask=mask.getPlaneBitMask(["BAD", "SAT"]))
    sigma = math.sqrt(stats.variance) if stats.variance > 0 else 1.0
    soft = 2.0 * sigma
    with np.errstate(invalid="ignore"):
        stretched = np.arcsinh((image - stats.mean) / soft)
    finite = stretched[np.isfinite(stretched)]
    vmin = math.asinh(-2.0 * sigma / soft)
    vmax = float(np.percentile(finite, 99.9)) if finite.size else 1.0
    vmax = max(vmax, math.asinh(50.0 * sigma / soft))

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
    fig.colorbar(im, ax=ax_img, shrink=0.8, label=f"asinh((image - {stats.mean:.3g}) / {soft:.3g})")
    ax_img.set_title("image (asinh stretch)")
    ax_mask.imshow(rgb, origin="lower", extent=extent, interpolation="nearest")
    ax_mask.set_title("mask planes" + (f" (OR over {block}x{block} blocks)" if block > 1 else ""))
    ax_mask.legend(handles=legend, loc="upper right", fontsize="small", framealpha=0.85)
    for ax in (ax_img, ax_mask):
        ax.set_xlabel("x (parent pixels)")
    ax_img.set_ylabel("y (parent pixels)")
    if title:
        fig.suptitle(title)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@demo_step("plot", "Plotting exposure.png")
def _step_plot(ctx: DemoContext) -> None:
    section = ctx.report.section("plot")
    try:
        import matplotlib  # noqa: F401  (optional dependency)
    except ImportError:
        section.update({"written": False, "reason": "matplotlib is not installed"})
        ctx.report.note("matplotlib is not installed: skipping exposure.png "
                        "(install it with: pip install 'diffcal[plots]')")
        return
    path = ctx.output / "exposure.png"
    exposure = ctx.data["exposure"]
    t0 = time.perf_counter()
    try:
        plot_exposure(exposure, path, title=f"diffcal demo: {exposure.getWidth()}x{exposure.getHeight()} "
                                            f"synthetic exposure, seed {ctx.options.seed}")
    except OSError as exc:
        raise CommandError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    seconds = time.perf_counter() - t0
    ctx.report.add_file("plot", path, ctx.output)
    section.update({"written": True, "seconds": seconds, "file_bytes": path.stat().st_size})
    ctx.report.line(f"{path.name}: image (asinh stretch) and mask planes, {seconds:.2f} s")
