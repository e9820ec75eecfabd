"""Framework of ``diffcal demo``: options, the report, the step registry and the runner.

A *demo step* is a function ``run(ctx: DemoContext) -> None`` registered with :func:`demo_step`
(or inserted into :data:`DEMO_STEPS`). Steps run in registration order; each reads the objects
earlier steps left in ``ctx.data``, records its numbers in ``ctx.report.section(step.key)`` (they
all end up in ``metrics.json``), prints result lines with ``ctx.report.line``, registers checks
with ``ctx.report.check`` and files with ``ctx.report.add_file``. ``metrics.json`` is always
written last, after every step. Feature modules (``diffcal.demo.foundation``, ...) register their
steps when :mod:`diffcal.demo` is imported.

Only the standard library is imported here; steps import numpy and the core themselves.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

from .. import __version__
from ..cli import EXIT_FAILURE, EXIT_OK, PROG, CommandError


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

    from .. import _core

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
