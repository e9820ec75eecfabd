"""The ``diffcal`` command line (diffcal.cli), ``python -m diffcal`` and the ``_core`` stubs."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffcal
from diffcal import _core, cli, demo

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
DEMO_SIZE = 256
METRICS_SECTIONS = ("exposure", "fits_roundtrip", "clipped_statistics", "plot")
METRICS_KEYS = ("diffcal_version", "command", "parameters", *METRICS_SECTIONS,
                "timings_seconds", "checks", "files", "notes", "success")


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """Run ``cli.main(argv)`` in-process; return (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
    return status, out.getvalue(), err.getvalue()


def relative_difference(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0.0 else abs(a - b) / scale


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, str, Path]:
    """One ``diffcal demo --size 256`` run shared by the tests of its outputs."""
    output = tmp_path_factory.mktemp("demo") / "out"  # does not exist yet: the demo creates it
    status, out, err = run_main(["demo", "--size", str(DEMO_SIZE), "--seed", "7", "--output", str(output)])
    return status, out, err, output


# ---------------------------------------------------------------------------------------------
# import cost, --version, info
# ---------------------------------------------------------------------------------------------

def test_import_cli_is_cheap() -> None:
    code = ("import sys, diffcal.cli; "
            "print(sorted(m for m in ('numpy', 'astropy', 'matplotlib', 'scipy', 'lsst', 'diffcal._core') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"diffcal {diffcal.__version__}\n"


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: diffcal" in out and "demo" in out and "info" in out


def test_info_text() -> None:
    status, out, err = run_main(["info"])
    assert status == 0, err
    build = _core.build_info()
    lines = out.splitlines()
    assert lines[0] == f"diffcal {diffcal.__version__}"
    for needle in ("Eigen", build["eigen_version"], build["compiler"], "SIMD", "threads", "numpy",
                   "astropy", "lsst-pex-config", "Python"):
        assert needle in out, needle
    assert lines[-1].startswith("diffcal info: ") and build["eigen_version"] in lines[-1]


def test_info_json() -> None:
    status, out, err = run_main(["info", "--json"])
    assert status == 0, err
    info = json.loads(out)  # stdout is the JSON document alone
    build = _core.build_info()
    assert info["eigen_version"] == build["eigen_version"]
    assert info["diffcal_version"] == diffcal.__version__
    assert info["core_version"] == build["version"]
    assert info["num_threads"] == _core.get_num_threads()
    assert info["hardware_threads"] >= 1
    assert info["cxx_standard"] >= 201703
    for key in ("compiler", "build_type", "flags", "simd", "python_version", "numpy_version",
                "astropy_version", "lsst_pex_config_version", "matplotlib_version"):
        assert key in info, key
    assert info["numpy_version"] and info["astropy_version"] and info["lsst_pex_config_version"]
    assert err.startswith("diffcal info: ") and err.count("\n") == 1  # the summary, on stderr


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------

def test_demo_succeeds_with_progress_and_summary(demo_run) -> None:
    status, out, err, output = demo_run
    assert status == 0, err
    assert err == ""
    lines = out.splitlines()
    total = len(demo.DEMO_STEPS) + 1
    progress = [line for line in lines if re.match(r"\[\d+/\d+\] ", line)]
    assert [p.split("]")[0] + "]" for p in progress] == [f"[{i}/{total}]" for i in range(1, total + 1)]
    assert lines[-1].startswith("diffcal demo: OK in ")
    assert "bit-exact" in lines[-1] and str(output) in lines[-1]
    assert "Traceback" not in out


def test_demo_writes_outputs(demo_run) -> None:
    status, _, _, output = demo_run
    assert status == 0
    assert (output / "exposure.fits").is_file()
    assert (output / "metrics.json").is_file()
    assert (output / "exposure.png").is_file() == HAVE_MATPLOTLIB
    if HAVE_MATPLOTLIB:
        assert (output / "exposure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = [p.name for p in output.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary files left behind


def test_demo_metrics(demo_run) -> None:
    status, _, _, output = demo_run
    assert status == 0
    metrics = json.loads((output / "metrics.json").read_text())
    for key in METRICS_KEYS:
        assert key in metrics, key
    assert metrics["success"] is True
    assert all(metrics["checks"].values()), metrics["checks"]
    assert metrics["parameters"]["size"] == DEMO_SIZE and metrics["parameters"]["seed"] == 7

    exposure = metrics["exposure"]
    assert (exposure["width"], exposure["height"]) == (DEMO_SIZE, DEMO_SIZE)
    assert exposure["xy0"] != [0, 0]
    assert len(exposure["bad_columns"]) == 3 and exposure["nan_pixels"] > 0
    assert abs(exposure["noise_chi_sigma"] - 1.0) < 0.02

    roundtrip = metrics["fits_roundtrip"]
    assert roundtrip["bit_exact"] is True
    assert roundtrip["planes_bit_exact"] == {"image": True, "mask": True, "variance": True}

    stats = metrics["clipped_statistics"]
    cpp, ref = stats["cpp"], stats["numpy"]
    assert relative_difference(cpp["mean"], ref["mean"]) <= 1e-12
    assert stats["mean_relative_difference"] <= 1e-12
    assert cpp["seconds"] > 0 and ref["seconds"] > 0
    assert math.isclose(stats["speedup"], ref["seconds"] / cpp["seconds"], rel_tol=1e-9)
    assert 0 < cpp["n_used"] <= cpp["n_candidates"] < DEMO_SIZE * DEMO_SIZE
    assert abs(cpp["mean"] - exposure["true_sky_variance"]) < 0.01 * exposure["true_sky_variance"]

    assert metrics["plot"]["written"] is HAVE_MATPLOTLIB
    assert metrics["files"]["exposure"] == "exposure.fits"

    mr = metrics["mapreduce"]
    assert mr["identity_exact"] is True and mr["native_equals_python"] is True
    assert mr["cells"] > 1
    assert mr["flagged_output_pixels"] == mr["invalid_input_pixels"] > 0
    assert (output / "mapreduce_grid.png").is_file() == HAVE_MATPLOTLIB
    assert metrics["files"]["metrics"] == "metrics.json"

    jc = metrics["jointcal"]
    assert jc["measurements"] > 10000
    assert abs(jc["astrometry_chi2_per_ndof"] - 1.0) < 0.1
    assert jc["star_rms_mas"] < 1.5 * jc["star_expected_rms_mas"]
    assert jc["mapping_rms_mas"] < 1.5 * jc["mapping_expected_rms_mas"]
    assert jc["outliers_rejected"] >= 0.9 * jc["outliers_injected"] > 0
    assert 0.8 < jc["photometry_chi2_per_ndof"] < 1.05
    assert jc["calibration_rms_mmag"] < 1.5
    assert jc["metrics"]["astrometry_prepared_ccdImages"] == jc["metrics"]["photometry_prepared_ccdImages"] == 24
    assert (output / "jointcal" / "metrics.json").is_file()
    assert len(list((output / "jointcal" / "wcs").glob("wcs-*.fits"))) == 24
    assert len(list((output / "jointcal" / "photoCalib").glob("photoCalib-*.fits"))) == 24
    assert (output / "jointcal" / "photometry_residuals.png").is_file() == HAVE_MATPLOTLIB


def test_demo_exposure_file_matches_metrics(demo_run) -> None:
    """exposure.fits holds what the report says: planes, truth features, and the same statistics."""
    from diffcal.image import Exposure
    from diffcal.psf import ImagePsf
    from diffcal.reference import clipped_statistics_numpy
    from diffcal.statistics import clippedStatistics

    status, _, _, output = demo_run
    assert status == 0
    metrics = json.loads((output / "metrics.json").read_text())
    exposure = Exposure.readFits(output / "exposure.fits")
    assert list(exposure.getXY0()) == metrics["exposure"]["xy0"]
    assert exposure.image.dtype == np.float32 and exposure.variance.dtype == np.float32
    assert exposure.hasWcs() and isinstance(exposure.getPsf(), ImagePsf)
    assert int(np.isnan(exposure.image).sum()) == metrics["exposure"]["nan_pixels"]
    mask = exposure.maskedImage.mask
    x0 = exposure.getXY0()[0]
    for column in metrics["exposure"]["bad_columns"]:
        assert np.all(exposure.mask[:, column - x0] & mask.getPlaneBitMask("BAD"))
    and_mask = mask.getPlaneBitMask(metrics["clipped_statistics"]["and_mask_planes"])
    cpp = clippedStatistics(exposure.variance, exposure.mask, andMask=and_mask)
    ref_mean, _ = clipped_statistics_numpy(exposure.variance, exposure.mask, and_mask)
    assert cpp.mean == metrics["clipped_statistics"]["cpp"]["mean"]
    assert relative_difference(ref_mean, metrics["clipped_statistics"]["numpy"]["mean"]) <= 1e-12


def test_demo_is_reproducible_and_quiet(tmp_path: Path) -> None:
    previous = _core.get_num_threads()
    runs = []
    for name, threads in (("a", "1"), ("b", "2")):
        status, out, err = run_main(["demo", "--size", "64", "--seed", "3", "--threads", threads, "--quiet",
                                     "-o", str(tmp_path / name)])
        assert status == 0, err
        assert len(out.splitlines()) == 1 and out.startswith("diffcal demo: OK")  # the summary only
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
        assert runs[-1]["parameters"]["threads"] == int(threads)
    assert _core.get_num_threads() == previous  # --threads is restored afterwards
    assert runs[0]["clipped_statistics"]["cpp"] == {**runs[1]["clipped_statistics"]["cpp"],
                                                    "seconds": runs[0]["clipped_statistics"]["cpp"]["seconds"]}
    assert (tmp_path / "a" / "exposure.fits").read_bytes() == (tmp_path / "b" / "exposure.fits").read_bytes()


def test_demo_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" raise ImportError
    status, out, err = run_main(["demo", "--size", "64", "--quiet", "-o", str(tmp_path)])
    assert status == 0, err
    assert "matplotlib is not installed" in out
    assert not (tmp_path / "exposure.png").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["plot"]["written"] is False and "plot" not in metrics["files"]
    assert metrics["notes"] and metrics["success"] is True


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    [],
    ["no-such-command"],
    ["--bogus"],
    ["info", "--bogus"],
    ["demo", "--size", "abc"],
    ["demo", "--size", "10"],
    ["demo", "--threads", "0"],
    ["demo", "--seed", "-1"],
    ["demo", "--output"],
])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    status, out, err = run_main(argv)
    assert status == 2
    assert "usage: diffcal" in err and "error:" in err
    assert "Traceback" not in err


def test_uncreatable_output_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    target = blocker / "demo"
    status, out, err = run_main(["demo", "--size", "64", "-o", str(target)])
    assert status != 0
    assert err.startswith("diffcal demo: error: cannot create output directory")
    assert str(target) in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_failing_step_reports_error_and_leaves_no_stale_metrics(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "metrics.json").write_text('{"success": true}\n')  # from an "earlier run"

    def explode(ctx: demo.DemoContext) -> None:
        raise ValueError("synthetic failure")

    steps = [demo.DEMO_STEPS[0], demo.DemoStep("explode", "Failing on purpose", explode)]
    monkeypatch.setattr(demo._framework, "DEMO_STEPS", steps)
    status, out, err = run_main(["demo", "--size", "64", "-o", str(tmp_path)])
    assert status == 1
    assert "diffcal demo: error: ValueError: synthetic failure" in err and "Traceback" not in err
    assert not (tmp_path / "metrics.json").exists()
    with pytest.raises(ValueError, match="synthetic failure"):  # --traceback re-raises
        run_main(["demo", "--size", "64", "--traceback", "-o", str(tmp_path)])


def test_failed_check_gives_status_1(tmp_path: Path) -> None:
    def failing_check(ctx: demo.DemoContext) -> None:
        ctx.report.section("custom")["answer"] = 41
        ctx.report.check("answer_is_42", ctx.report.section("custom")["answer"] == 42)

    options = demo.DemoOptions(output=tmp_path, size=64, seed=0, quiet=True)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = demo.run_demo(options, steps=[demo.DemoStep("custom", "Custom step", failing_check)])
    assert status == 1
    assert out.getvalue().startswith("diffcal demo: FAILED check(s) answer_is_42")
    assert "answer_is_42" in err.getvalue()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["success"] is False and metrics["custom"] == {"answer": 41}
    assert metrics["checks"] == {"answer_is_42": False}


def test_demo_step_registration_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        demo.demo_step("exposure", "again")(lambda ctx: None)


# ---------------------------------------------------------------------------------------------
# python -m diffcal, the installed console script
# ---------------------------------------------------------------------------------------------

def test_python_dash_m() -> None:
    result = subprocess.run([sys.executable, "-m", "diffcal", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"diffcal {diffcal.__version__}\n"


def test_console_script(tmp_path: Path) -> None:
    exe = shutil.which("diffcal")
    if exe is None:
        pytest.skip("the 'diffcal' console script is not on PATH (package not installed with pip?)")
    env = {**os.environ, "PYTHONWARNINGS": "error"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, env=env)

    version = run("--version")
    assert version.returncode == 0 and version.stdout == f"diffcal {diffcal.__version__}\n", version.stderr
    info = run("info", "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["eigen_version"] == _core.build_info()["eigen_version"]
    demo = run("demo", "--size", "64", "--quiet", "--output", str(tmp_path / "out"))
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.startswith("diffcal demo: OK") and demo.stderr == ""
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["fits_roundtrip"]["bit_exact"] is True
    bad = run("demo", "--size", "nope")
    assert bad.returncode == 2 and "usage: diffcal" in bad.stderr


# ---------------------------------------------------------------------------------------------
# type stubs of the compiled core
# ---------------------------------------------------------------------------------------------

def _stub_tree() -> ast.Module:
    package = Path(diffcal.__file__).parent
    assert (package / "py.typed").is_file(), "py.typed marker is not installed"
    stub = package / "_core.pyi"
    assert stub.is_file(), "_core.pyi is not installed next to the extension"
    return ast.parse(stub.read_text())


def _signature_names(func: object) -> list[str]:
    """Parameter names from pybind11's first docstring line ``name(a: T, b: T = x) -> R``."""
    first = (getattr(func, "__doc__", "") or "").splitlines()[0]
    match = re.match(r"^\w+\((.*)\) ->", first)
    assert match, first
    return re.findall(r"(?:^|, )(\w+):", match.group(1))


def test_core_stubs_cover_the_module() -> None:
    """Every public name of diffcal._core is in _core.pyi (and vice versa), with the same parameters."""
    tree = _stub_tree()
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    stub_defs = {node.name: node for node in tree.body
                 if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")}
    exposed = {name for name in dir(_core) if not name.startswith("_")}
    missing, extra = sorted(exposed - set(stub_defs)), sorted(set(stub_defs) - exposed)
    assert not missing and not extra, (
        f"python/diffcal/_core.pyi is out of step with cpp/bindings: add stubs for {missing}, "
        f"remove {extra}")

    def stub_members(node: ast.ClassDef) -> set[str]:
        names = {n.name for n in node.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                names |= stub_members(classes[base.id])
        return names

    for name, node in stub_defs.items():
        obj = getattr(_core, name)
        if isinstance(node, ast.FunctionDef):
            stub_args = [a.arg for a in node.args.posonlyargs + node.args.args]
            assert stub_args == _signature_names(obj), f"parameters of _core.{name} differ from the stub"
        else:
            members = {m for m in dir(obj) if not m.startswith("_")}
            assert stub_members(node) == members, f"members of _core.{name} differ from the stub"
