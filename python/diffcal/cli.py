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

*Demo steps* live in :mod:`diffcal.demo` (see its ``_framework`` module).

This module only imports the standard library at import time (``import diffcal.cli`` must stay
cheap); numpy, astropy, matplotlib and the compiled core are imported inside the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .errors import DiffcalError

__all__ = [
    "COMMANDS",
    "CommandError",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "collect_info",
    "main",
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
        ``compiler``, ``build_type``, ``flags``, ``simd``, ``isa`` (the instruction-set build loaded:
        baseline, x86-64-v3 or native), ``cxx_standard``, ``hardware_threads``,
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
        "isa": str(core.get("isa", "baseline")),
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
        f"{info['compiler']} {info['build_type']}, {info['isa']} build, SIMD {info['simd'] or 'none'}, "
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
        ("instruction set", f"{info['isa']} build (DIFFCAL_ISA=baseline forces the portable one)"),
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
# diffcal demo (the steps live in diffcal.demo)
# ---------------------------------------------------------------------------------------------

def _run_demo_command(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

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


@_command
def _add_decorrelate(subparsers: Any, common: argparse.ArgumentParser) -> None:
    from .decorrelation_cli import add_command  # `decorrelate` and `simulate pair`; numpy loaded lazily

    add_command(subparsers, common)


@_command
def _add_jointcal(subparsers: Any, common: argparse.ArgumentParser) -> None:
    from .jointcal.cli import add_commands  # `jointcal` and `simulate survey` (after `simulate pair`)

    add_commands(subparsers, common)
