"""``diffcal decorrelate`` and ``diffcal simulate pair`` run in-process on small simulated pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffcal import cli
from diffcal.image import Exposure


@pytest.fixture(scope="module")
def pairdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair")
    assert cli.main(["simulate", "pair", str(out), "--size", "192", "--seed", "3"]) == 0
    return out


def _args(d, out, *extra):
    return ["decorrelate", "--science", str(d / "science.fits"), "--template", str(d / "template.fits"),
            "--diffim", str(d / "diffim.fits"), "--kernel", str(d / "kernel.fits"), "-o", str(out), *extra]


def test_simulate_pair_writes_truth(pairdir):
    for name in ("science", "template", "diffim", "kernel"):
        assert (pairdir / f"{name}.fits").is_file()
    truth = json.loads((pairdir / "truth.json").read_text())
    assert truth["size"] == 192 and truth["expectedCorrectedVariance"] == pytest.approx(5.0)
    assert Exposure.readFits(pairdir / "science.fits").getPsf() is not None


@pytest.mark.parametrize("spatial", [False, True])
def test_decorrelate_end_to_end(pairdir, tmp_path, capsys, spatial):
    out = tmp_path / "out.fits"
    extra = ["--spatial", "-c", "decorrelateMapReduceConfig.cellSizeX=12",
             "-c", "decorrelateMapReduceConfig.cellSizeY=12"] if spatial else []
    assert cli.main(_args(pairdir, out, *extra)) == 0
    text = capsys.readouterr().out
    assert "reading science" in text and text.strip().splitlines()[-1].startswith("decorrelate:")
    res = Exposure.readFits(out)
    inner = res.variance[20:-20, 20:-20]
    assert np.median(inner) == pytest.approx(5.0, rel=1e-5)


def test_decorrelate_spatial_equals_flat_and_plot(pairdir, tmp_path):
    pytest.importorskip("matplotlib")
    a, b, png = tmp_path / "a.fits", tmp_path / "b.fits", tmp_path / "diag.png"
    assert cli.main(_args(pairdir, a)) == 0
    assert cli.main(_args(pairdir, b, "--spatial", "--plot", str(png), "-c",
                          "decorrelateMapReduceConfig.cellSizeX=12", "-c", "decorrelateMapReduceConfig.cellSizeY=12")) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ia, ib = Exposure.readFits(a).image, Exposure.readFits(b).image
    assert np.abs(ia - ib).max() < 1e-3


def test_psf_sigmas_and_config_file(pairdir, tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text("config.decorrelateConfig.fftShape = 'fast'\n")
    out = tmp_path / "o.fits"
    assert cli.main(_args(pairdir, out, "--science-psf-sigma", "2.0", "--template-psf-sigma", "1.4", "-C",
                          str(cfg))) == 0


@pytest.mark.parametrize("extra", [["--science-psf-sigma", "-1"], ["--science-psf-sigma", "x"], ["--bogus"]])
def test_bad_arguments_exit_2(pairdir, tmp_path, extra, capsys):
    assert cli.main(_args(pairdir, tmp_path / "o.fits", *extra)) == 2


def test_missing_required_argument_exit_2(capsys):
    assert cli.main(["decorrelate", "--science", "s.fits"]) == 2


def test_missing_file_exit_1(pairdir, tmp_path, capsys):
    args = _args(pairdir, tmp_path / "o.fits")
    args[args.index("--diffim") + 1] = str(tmp_path / "nope.fits")
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "diffcal decorrelate: error:" in err and "nope.fits" in err


def test_bad_config_field_exit_1(pairdir, tmp_path, capsys):
    assert cli.main(_args(pairdir, tmp_path / "o.fits", "-c", "noSuchField=3")) == 1
    assert "noSuchField" in capsys.readouterr().err


def test_mismatched_inputs_exit_1(pairdir, tmp_path, capsys):
    small = tmp_path / "small"
    assert cli.main(["simulate", "pair", str(small), "--size", "128"]) == 0
    args = _args(pairdir, tmp_path / "o.fits")
    args[args.index("--template") + 1] = str(small / "template.fits")
    assert cli.main(args) == 1
    assert "bounding box" in capsys.readouterr().err


def test_import_cli_stays_cheap():
    import subprocess
    import sys
    code = "import sys, diffcal.cli; assert 'numpy' not in sys.modules, 'numpy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
