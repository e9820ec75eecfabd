"""Tests of the LSST-layout FITS reader/writer (diffcal._fits via MaskedImage/Exposure)."""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffcal.errors import FitsFormatError, InconsistentXy0Warning
from diffcal.geom import Box2I, Point2D, Point2I
from diffcal.image import DEFAULT_MASK_PLANES, Exposure, Mask, MaskedImage


def _bits(array: np.ndarray) -> np.ndarray:
    """Raw bit patterns (so NaN payloads and signed zeros are compared exactly)."""
    return array.view(np.uint32 if array.dtype.itemsize == 4 else np.uint64)


def _assert_bit_exact(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(_bits(np.ascontiguousarray(a)), _bits(np.ascontiguousarray(b)))


def _sip_wcs() -> WCS:
    header = fits.Header()
    header["CTYPE1"] = "RA---TAN-SIP"
    header["CTYPE2"] = "DEC--TAN-SIP"
    header["CRVAL1"] = 215.043481143527
    header["CRVAL2"] = 52.7686146742152
    header["CRPIX1"] = 979.11728  # FITS 1-based, as if xy0 were (0, 0)
    header["CRPIX2"] = 2452.705545
    header["CD1_1"] = 5.18797335538624e-05
    header["CD1_2"] = -2.80318574349912e-07
    header["CD2_1"] = -3.76686734226012e-07
    header["CD2_2"] = -5.19093751270176e-05
    header["A_ORDER"] = 2
    header["A_2_0"] = 8.6e-07
    header["A_1_1"] = 3.6e-07
    header["A_0_2"] = -3.2e-07
    header["B_ORDER"] = 2
    header["B_2_0"] = -2.2e-06
    header["B_1_1"] = -2.6e-07
    header["B_0_2"] = 6.7e-07
    return WCS(header)


def _exposure(shape=(40, 30), xy0=(-7, 1234), dtype=np.float32, seed=1, **kwargs) -> Exposure:
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 10.0, size=shape).astype(dtype)
    image[3, 4] = np.nan
    variance = rng.uniform(50, 150, size=shape).astype(dtype)
    mask = rng.integers(0, 1 << 10, size=shape).astype(np.int32)
    return Exposure(image, mask, variance, xy0=xy0, **kwargs)


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------

_EXTRA_PLANES = ("INVALID_MAPREDUCE", "CROSSTALK", "STREAK", "Lower_case", "UNMASKEDNAN")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 17),
    width=st.integers(1, 17),
    x0=st.integers(-100_000, 100_000),
    y0=st.integers(-100_000, 100_000),
    image_dtype=st.sampled_from([np.float32, np.float64]),
    variance_dtype=st.sampled_from([np.float32, np.float64]),
    extra=st.lists(st.sampled_from(_EXTRA_PLANES), unique=True, max_size=len(_EXTRA_PLANES)),
    seed=st.integers(0, 2**32 - 1),
)
def test_masked_image_round_trip_bit_exact(height, width, x0, y0, image_dtype, variance_dtype,
                                           extra, seed):
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1e3, size=(height, width)).astype(image_dtype)
    variance = rng.uniform(0, 1e4, size=(height, width)).astype(variance_dtype)
    special = rng.integers(0, 5, size=(height, width))
    image[special == 1] = np.nan
    image[special == 2] = np.inf
    image[special == 3] = -0.0
    variance[special == 4] = np.nan
    mask = Mask(rng.integers(np.iinfo(np.int32).min, np.iinfo(np.int32).max, size=(height, width),
                             dtype=np.int32, endpoint=True))
    for name in extra:
        mask.addMaskPlane(name)
    mi = MaskedImage(image, mask, variance, xy0=(x0, y0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mi.fits"
        mi.writeFits(path)
        back = MaskedImage.readFits(path)
        assert os.listdir(tmp) == ["mi.fits"]  # no temporary file left behind
    _assert_bit_exact(back.image, mi.image)
    _assert_bit_exact(back.variance, mi.variance)
    _assert_bit_exact(back.mask.array, mi.mask.array)
    assert back.getXY0() == Point2I(x0, y0)
    assert back.mask.getMaskPlaneDict() == mi.mask.getMaskPlaneDict()


def test_written_layout(tmp_path):
    exp = _exposure(metadata={"VISIT": 849375, "OBSERVER": "diffcal"})
    exp.maskedImage.mask.addMaskPlane("INVALID_MAPREDUCE")
    path = tmp_path / "exp.fits"
    exp.writeFits(path)
    with fits.open(path) as hdul:
        assert len(hdul) == 4
        assert hdul[0].data is None
        assert hdul[0].header["VISIT"] == 849375
        for index, name in enumerate(("IMAGE", "MASK", "VARIANCE"), start=1):
            header = hdul[index].header
            assert header["EXTTYPE"] == name and header["EXTNAME"] == name
            assert header["CTYPE1A"] == "LINEAR" and header["CTYPE2A"] == "LINEAR"
            assert header["CRPIX1A"] == 1 and header["CRPIX2A"] == 1
            assert (header["CRVAL1A"], header["CRVAL2A"]) == (-7, 1234)
            assert (header["LTV1"], header["LTV2"]) == (7, -1234)
        assert hdul[1].header["BITPIX"] == -32
        assert hdul[2].header["BITPIX"] == 32 and hdul[2].data.dtype.kind == "i"
        assert hdul[2].header["MP_BAD"] == 0 and hdul[2].header["MP_NO_DATA"] == 8
        assert hdul[2].header["MP_INVALID_MAPREDUCE"] == 9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exposure_round_trip_metadata(tmp_path, dtype):
    metadata = fits.Header()
    metadata["VISIT"] = (849375, "visit id")
    metadata["EXPTIME"] = 300.0
    metadata["FILTER"] = "r.MP9601"
    metadata["HIERARCH LONG_KEYWORD_NAME"] = 1.25
    metadata["FLAG"] = True
    metadata.add_history("made by the test")
    exp = _exposure(dtype=dtype, metadata=metadata)
    path = tmp_path / "exp.fits"
    exp.writeFits(path)
    back = Exposure.readFits(path)
    for a, b in ((back.image, exp.image), (back.variance, exp.variance), (back.mask, exp.mask)):
        _assert_bit_exact(a, b)
    assert back.getBBox() == exp.getBBox()
    meta = back.getMetadata()
    for key in ("VISIT", "EXPTIME", "FILTER", "LONG_KEYWORD_NAME", "FLAG"):
        assert meta[key] == metadata[key]
        assert type(meta[key]) is type(metadata[key])
    assert meta.comments["VISIT"] == "visit id"
    assert "made by the test" in str(meta["HISTORY"])
    assert "SIMPLE" not in meta and "NAXIS" not in meta
    assert back.getWcs() is None and back.getPsf() is None


def test_overwrite_and_missing_directory(tmp_path):
    path = tmp_path / "exp.fits"
    _exposure(seed=1).writeFits(path)
    second = _exposure(seed=2)
    second.writeFits(path)
    _assert_bit_exact(Exposure.readFits(path).image, second.image)
    with pytest.raises(FileNotFoundError):
        second.writeFits(tmp_path / "no" / "such" / "dir.fits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.fits"]


def test_sip_wcs_round_trip_with_xy0(tmp_path):
    wcs = _sip_wcs()
    exp = _exposure(shape=(60, 50), xy0=(900, 2400), wcs=wcs)
    path = tmp_path / "wcs.fits"
    exp.writeFits(path)
    # The file's WCS refers to array pixels: CRPIX shifted by -xy0.
    with fits.open(path) as hdul:
        assert hdul[1].header["CTYPE1"] == "RA---TAN-SIP"
        assert "A_2_0" in hdul[1].header
        assert math.isclose(hdul[1].header["CRPIX1"], 979.11728 - 900, abs_tol=1e-9)
        assert math.isclose(hdul[1].header["CRPIX2"], 2452.705545 - 2400, abs_tol=1e-9)
    back = Exposure.readFits(path)
    assert back.getWcs().has_celestial and back.getWcs().sip is not None
    bbox = exp.getBBox()
    xs = np.array([bbox.getMinX(), bbox.getMaxX(), 925.3, 910.0, bbox.getMaxX() - 0.5])
    ys = np.array([bbox.getMinY(), bbox.getMaxY(), 2430.7, 2455.0, bbox.getMinY() + 0.25])
    ra0, dec0 = wcs.all_pix2world(xs, ys, 0)
    ra1, dec1 = back.getWcs().all_pix2world(xs, ys, 0)
    np.testing.assert_allclose(ra1, ra0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dec1, dec0, rtol=0, atol=1e-10)
    # the file's WCS on array pixels agrees with the in-memory WCS on parent pixels
    with fits.open(path) as hdul:
        file_wcs = WCS(hdul[1].header)
    ra2, dec2 = file_wcs.all_pix2world(xs - 900, ys - 2400, 0)
    np.testing.assert_allclose(ra2, ra0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dec2, dec0, rtol=0, atol=1e-10)
    # and a view of the read exposure uses the same (parent-coordinate) WCS
    view = back[Box2I((910, 2410), (920, 2420))]
    assert view.getWcs() is back.getWcs()


def test_view_write_keeps_sky_positions(tmp_path):
    exp = _exposure(shape=(60, 50), xy0=(0, 0), wcs=_sip_wcs())
    view = exp[Box2I((10, 20), (29, 49))]
    path = tmp_path / "view.fits"
    view.writeFits(path)
    back = Exposure.readFits(path)
    assert back.getXY0() == Point2I(10, 20)
    _assert_bit_exact(back.image, view.image)
    sky0 = exp.getWcs().all_pix2world([[15.0, 30.0]], 0)
    sky1 = back.getWcs().all_pix2world([[15.0, 30.0]], 0)
    np.testing.assert_allclose(sky1, sky0, rtol=0, atol=1e-10)


def test_xy0_from_ltv_only(tmp_path):
    path = tmp_path / "ltv.fits"
    hdus = [fits.PrimaryHDU()]
    for name, data in (("IMAGE", np.ones((3, 4), ">f4")), ("MASK", np.zeros((3, 4), ">i2")),
                       ("VARIANCE", np.ones((3, 4), ">f4"))):
        header = fits.Header()
        header["EXTNAME"] = name
        header["LTV1"] = -5
        header["LTV2"] = 6
        hdus.append(fits.ImageHDU(data, header=header))
    fits.HDUList(hdus).writeto(path)
    mi = MaskedImage.readFits(path)
    assert mi.getXY0() == Point2I(5, -6)
    assert mi.image.dtype == np.float32 and mi.image.dtype.isnative
    assert mi.mask.array.dtype == np.int32
    assert tuple(mi.mask.getMaskPlaneDict()) == DEFAULT_MASK_PLANES  # no MP_ cards: defaults


def test_psf_hdu_round_trip(tmp_path):
    from diffcal.psf import GaussianPsf, ImagePsf

    psf = GaussianPsf(21, 21, 2.5, averagePosition=(123.5, 456.25))
    exp = _exposure(psf=psf)
    path = tmp_path / "psf.fits"
    exp.writeFits(path)
    with fits.open(path) as hdul:
        assert len(hdul) == 5
        assert hdul[4].header["EXTTYPE"] == "PSF" and hdul[4].header["BITPIX"] == -64
    back = Exposure.readFits(path)
    assert isinstance(back.getPsf(), ImagePsf)
    assert back.getPsf().getAveragePosition() == Point2D(123.5, 456.25)
    expected = psf.computeKernelImage(psf.getAveragePosition())
    got = back.getPsf().computeKernelImage()
    assert got.shape == expected.shape == (21, 21)
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-17)
    assert math.isclose(got.sum(), 1.0, rel_tol=1e-12)
    # an ImagePsf written again round-trips to the same image
    back.writeFits(tmp_path / "psf2.fits")
    again = Exposure.readFits(tmp_path / "psf2.fits").getPsf()
    np.testing.assert_allclose(again.computeKernelImage(), got, rtol=1e-15, atol=0)


# ---------------------------------------------------------------------------------------------
# real files
# ---------------------------------------------------------------------------------------------

def test_hotpants_science(shared_data):
    path = shared_data / "hotpants" / "scienceMI.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consistent file: no warning at all
        exp = Exposure.readFits(path)
    assert exp.image.shape == (193, 193)
    assert exp.image.dtype == np.float32 and exp.variance.dtype == np.float32
    assert exp.mask.dtype == np.int32
    assert exp.getXY0() == Point2I(9, 9)
    assert exp.getBBox() == Box2I((9, 9), (201, 201))
    planes = exp.maskedImage.mask.getMaskPlaneDict()
    for bit, name in enumerate(("BAD", "SAT", "INTRP", "CR", "EDGE", "DETECTED",
                                "DETECTED_NEGATIVE")):
        assert planes[name] == bit
    # defaults missing from the file are completed at their usual bits
    assert planes["SUSPECT"] == 7 and planes["NO_DATA"] == 8
    assert not exp.mask.any()
    assert 99.0 < float(np.median(exp.variance)) < 101.0
    assert float(exp.variance.min()) == pytest.approx(100.0)
    assert 300.0 < float(exp.variance.max()) < 330.0
    assert np.all(exp.image == np.round(exp.image))  # integer-valued pixels
    # background noise ~ sqrt(100): use a star-free corner
    corner = exp.image[:20, :20]
    assert 5.0 < float(corner.std()) < 15.0
    assert exp.getWcs() is None and exp.getPsf() is None
    assert len(exp.getMetadata()) == 0


def test_hotpants_template_xy0_policies(shared_data):
    path = shared_data / "hotpants" / "templateMI.fits"
    with pytest.warns(InconsistentXy0Warning) as record:
        exp = Exposure.readFits(path)
    text = str(record[0].message)
    assert "IMAGE (24, 24)" in text and "MASK (9, 9)" in text and "VARIANCE (24, 24)" in text
    assert str(path) in text
    assert exp.getXY0() == Point2I(24, 24)
    assert exp.maskedImage.mask.getXY0() == Point2I(24, 24)  # never mixed

    with pytest.raises(FitsFormatError, match="xy0"):
        Exposure.readFits(path, xy0Policy="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_mask = MaskedImage.readFits(path, xy0Policy="mask")
    assert by_mask.getXY0() == Point2I(9, 9)
    with pytest.raises(ValueError, match="xy0Policy"):
        MaskedImage.readFits(path, xy0Policy="average")

    # content: noiseless stars, variance plane identical to the image plane
    np.testing.assert_array_equal(by_mask.variance, by_mask.image)
    assert float(by_mask.image.max()) == pytest.approx(10000 / (2 * np.pi), rel=1e-3)
    assert float(np.median(by_mask.image)) == 0.0


@pytest.fixture(scope="module")
def cfht_calexp(shared_data):
    return Exposure.readFits(shared_data / "cfht_minimal" / "calexp-849375-12.fits.fz")


def test_cfht_calexp_pixels_and_planes(cfht_calexp):
    exp = cfht_calexp
    assert exp.image.shape == (4612, 2048)
    assert exp.mask.shape == exp.variance.shape == (4612, 2048)
    assert exp.image.dtype == np.float32 and exp.mask.dtype == np.int32
    assert exp.getXY0() == Point2I(0, 0)
    planes = exp.maskedImage.mask.getMaskPlaneDict()
    assert planes["NO_DATA"] == 8 and planes["SUSPECT"] == 7 and planes["UNMASKEDNAN"] == 9
    assert exp.getMetadata()["EXTNAME"] == "ccd12"  # primary header is the metadata
    assert "SIMPLE" not in exp.getMetadata()


def test_cfht_calexp_wcs_matches_source_table(cfht_calexp, shared_data):
    wcs = cfht_calexp.getWcs()
    assert wcs is not None and wcs.has_celestial and wcs.sip is not None
    ra, dec = wcs.all_pix2world(1023.5, 2305.5, 0)
    assert 214.9 < float(ra) < 215.2 and 52.6 < float(dec) < 52.9
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(shared_data / "cfht_minimal" / "sourceTable-849375.parq",
                          columns=["x", "y", "ra", "dec"])
    assert table.num_rows >= 1
    x = np.asarray(table.column("x"), dtype=float)
    y = np.asarray(table.column("y"), dtype=float)
    ra_src = np.asarray(table.column("ra"), dtype=float)
    dec_src = np.asarray(table.column("dec"), dtype=float)
    ra_pix, dec_pix = wcs.all_pix2world(x, y, 0)
    dra = (ra_pix - ra_src) * np.cos(np.radians(dec_src))
    sep_arcsec = np.hypot(dra, dec_pix - dec_src) * 3600.0
    assert np.all(sep_arcsec < 1.0), sep_arcsec


def test_cfht_subimage_round_trip(cfht_calexp, tmp_path):
    bbox = Box2I((900, 700), (999, 799))
    view = cfht_calexp[bbox]
    path = tmp_path / "cut.fits"
    view.writeFits(path)
    back = Exposure.readFits(path)
    assert back.getBBox() == bbox
    _assert_bit_exact(back.image, view.image)
    assert back.maskedImage.mask.getMaskPlaneDict() == view.maskedImage.mask.getMaskPlaneDict()
    assert back.getMetadata()["EXTNAME"] == "ccd12"
    xs, ys = np.array([900.0, 925.09, 999.0]), np.array([700.0, 732.17, 799.0])
    np.testing.assert_allclose(back.getWcs().all_pix2world(xs, ys, 0),
                               cfht_calexp.getWcs().all_pix2world(xs, ys, 0), rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# bad files
# ---------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Exposure.readFits(tmp_path / "nope.fits")
    with pytest.raises(FileNotFoundError):
        MaskedImage.readFits(str(tmp_path / "nope.fits"))


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, None])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "corrupt.fits"
    path.write_bytes(np.random.default_rng(3).bytes(20000) if content is None else content)
    with pytest.raises(FitsFormatError) as info:
        Exposure.readFits(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.9, 0.999])
def test_truncated_file(tmp_path, fraction):
    good = tmp_path / "good.fits"
    _exposure(shape=(50, 60)).writeFits(good)
    data = good.read_bytes()
    path = tmp_path / "cut.fits"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(FitsFormatError) as info:
        Exposure.readFits(path)
    assert str(path) in str(info.value)


def test_truncated_at_hdu_boundary(tmp_path):
    good = tmp_path / "good.fits"
    _exposure(shape=(50, 60)).writeFits(good)
    with fits.open(good) as hdul:
        info = hdul.fileinfo(2)  # cut right before the MASK HDU
    path = tmp_path / "cut.fits"
    path.write_bytes(good.read_bytes()[:info["hdrLoc"]])
    with pytest.raises(FitsFormatError, match="MASK"):
        Exposure.readFits(path)


def test_truncated_real_compressed_file(shared_data, tmp_path):
    data = (shared_data / "cfht_minimal" / "calexp-849375-12.fits.fz").read_bytes()
    path = tmp_path / "cut.fits.fz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FitsFormatError, match="truncated"):
        Exposure.readFits(path)


def test_file_without_image_hdu(tmp_path):
    path = tmp_path / "plain.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4), np.float32))]).writeto(path)
    with pytest.raises(FitsFormatError, match="IMAGE"):
        Exposure.readFits(path)


def test_plane_shape_mismatch_and_bad_mask_type(tmp_path):
    def write(path, mask):
        hdus = [fits.PrimaryHDU()]
        for name, data in (("IMAGE", np.ones((3, 4), np.float32)), ("MASK", mask),
                           ("VARIANCE", np.ones((3, 4), np.float32))):
            hdus.append(fits.ImageHDU(data, header=fits.Header([("EXTTYPE", name)])))
        fits.HDUList(hdus).writeto(path)

    write(tmp_path / "shape.fits", np.zeros((4, 4), np.int32))
    with pytest.raises(FitsFormatError, match="shape"):
        MaskedImage.readFits(tmp_path / "shape.fits")
    write(tmp_path / "float.fits", np.zeros((3, 4), np.float32))
    with pytest.raises(FitsFormatError, match="MASK"):
        MaskedImage.readFits(tmp_path / "float.fits")


def test_bad_mask_plane_cards(tmp_path):
    mi = MaskedImage(np.zeros((2, 2), np.float32))
    path = tmp_path / "mp.fits"
    mi.writeFits(path)
    with fits.open(path, mode="update") as hdul:
        hdul[2].header["MP_SAT"] = 0  # same bit as MP_BAD
    with pytest.raises(FitsFormatError, match="bit 0"):
        MaskedImage.readFits(path)
    with fits.open(path, mode="update") as hdul:
        hdul[2].header["MP_SAT"] = 40
    with pytest.raises(FitsFormatError, match="MP_SAT"):
        MaskedImage.readFits(path)
