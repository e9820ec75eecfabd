"""Tests of diffcal.image: Mask, MaskedImage, Exposure (in memory; FITS is in test_fits.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from diffcal.errors import MaskPlaneLimitError, UnknownMaskPlaneError
from diffcal.geom import Box2I, Extent2I, Point2I
from diffcal.image import DEFAULT_MASK_PLANES, Exposure, Mask, MaskedImage


def _mi(shape=(6, 8), dtype=np.float32, xy0=(0, 0), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(dtype)
    variance = rng.uniform(1, 2, size=shape).astype(dtype)
    mask = rng.integers(0, 16, size=shape).astype(np.int32)
    return MaskedImage(image, mask, variance, xy0=xy0)


def _tan_wcs(crpix=(50.0, 60.0)):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = list(crpix)
    wcs.wcs.cd = np.array([[-5e-5, 1e-7], [2e-7, 5e-5]])
    wcs.wcs.set()
    return wcs


# ---------------------------------------------------------------------------------------------
# Mask
# ---------------------------------------------------------------------------------------------

class TestMask:
    def test_default_planes_in_bit_order(self):
        mask = Mask(np.zeros((3, 4), np.int32))
        assert list(mask.getMaskPlaneDict().items()) == [
            ("BAD", 0), ("SAT", 1), ("INTRP", 2), ("CR", 3), ("EDGE", 4), ("DETECTED", 5),
            ("DETECTED_NEGATIVE", 6), ("SUSPECT", 7), ("NO_DATA", 8)]
        assert tuple(mask.getMaskPlaneDict()) == DEFAULT_MASK_PLANES
        assert mask.getMaskPlane("EDGE") == 4
        assert mask.getPlaneBitMask("SAT") == 2
        assert mask.getPlaneBitMask(["BAD", "CR", "NO_DATA"]) == 1 | 8 | 256
        assert mask.getPlaneBitMask(("DETECTED", "DETECTED")) == 32
        assert mask.getPlaneBitMask([]) == 0

    def test_int32_shared_and_numpy_protocol(self):
        arr = np.zeros((3, 4), np.int32)
        mask = Mask(arr, xy0=(2, 5))
        assert mask.array is arr
        assert np.asarray(mask) is arr
        mask.array[1, 2] = 7
        assert arr[1, 2] == 7
        assert mask.getBBox() == Box2I((2, 5), (5, 7))
        assert mask.getDimensions() == Extent2I(4, 3)

    @pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8, np.int64])
    def test_other_integer_dtypes_converted_with_copy(self, dtype):
        arr = np.arange(12, dtype=dtype).reshape(3, 4)
        mask = Mask(arr)
        assert mask.array.dtype == np.int32
        assert not np.shares_memory(mask.array, arr)
        np.testing.assert_array_equal(mask.array, arr)

    def test_uint32_reinterpreted_bitwise(self):
        arr = np.array([[1 << 31, 3]], dtype=np.uint32)
        mask = Mask(arr)
        assert mask.array.dtype == np.int32
        np.testing.assert_array_equal(mask.array.view(np.uint32), arr)

    def test_int64_out_of_range_rejected(self):
        with pytest.raises(ValueError, match="int32"):
            Mask(np.array([[1 << 40]], dtype=np.int64))

    @pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.bool_])
    def test_non_integer_mask_rejected(self, dtype):
        with pytest.raises(TypeError, match="mask"):
            Mask(np.zeros((2, 2), dtype))

    def test_unknown_plane_names_plane_and_lists_known(self):
        mask = Mask(np.zeros((2, 2), np.int32))
        with pytest.raises(UnknownMaskPlaneError) as info:
            mask.getPlaneBitMask(["BAD", "NOT_A_PLANE"])
        text = str(info.value)
        assert "NOT_A_PLANE" in text and "BAD" in text and "NO_DATA" in text
        assert isinstance(info.value, LookupError)
        with pytest.raises(UnknownMaskPlaneError, match="CROSSTALK"):
            mask.getMaskPlane("CROSSTALK")

    def test_add_plane_idempotent_and_lowest_free_bit(self):
        mask = Mask(np.zeros((2, 2), np.int32))
        assert mask.addMaskPlane("INVALID_MAPREDUCE") == 9
        assert mask.addMaskPlane("INVALID_MAPREDUCE") == 9
        assert mask.addMaskPlane("BAD") == 0
        assert mask.getPlaneBitMask("INVALID_MAPREDUCE") == 512
        mask.removeAndClearMaskPlane("SAT")
        assert mask.addMaskPlane("STREAK") == 1

    def test_32_plane_limit(self):
        mask = Mask(np.zeros((2, 2), np.int32))
        bits = [mask.addMaskPlane(f"EXTRA{i}") for i in range(32 - len(DEFAULT_MASK_PLANES))]
        assert bits == list(range(len(DEFAULT_MASK_PLANES), 32))
        assert len(mask.getMaskPlaneDict()) == 32
        with pytest.raises(MaskPlaneLimitError, match="ONE_TOO_MANY"):
            mask.addMaskPlane("ONE_TOO_MANY")
        assert mask.addMaskPlane("EXTRA0") == 9  # existing planes still fine
        # bit 31 is returned as a signed value that works with the int32 array
        top = mask.getPlaneBitMask("EXTRA22")
        assert mask.getMaskPlane("EXTRA22") == 31 and top == -(1 << 31)
        mask.array[0, 0] = top
        assert ((mask.array & top) != 0).sum() == 1

    def test_bad_plane_names(self):
        mask = Mask(np.zeros((2, 2), np.int32))
        with pytest.raises(ValueError):
            mask.addMaskPlane("has space")
        with pytest.raises(TypeError):
            mask.addMaskPlane(3)
        with pytest.raises(TypeError):
            mask.getPlaneBitMask(5)

    def test_view_shares_plane_dict_clone_copies(self):
        mask = Mask(np.zeros((10, 10), np.int32), xy0=(100, 100))
        view = mask[Box2I((102, 103), (105, 108))]
        assert view.getXY0() == Point2I(102, 103)
        assert np.shares_memory(view.array, mask.array)
        view.addMaskPlane("FROM_VIEW")
        assert mask.getMaskPlane("FROM_VIEW") == 9
        clone = mask.clone()
        clone.addMaskPlane("ONLY_CLONE")
        with pytest.raises(UnknownMaskPlaneError):
            mask.getMaskPlane("ONLY_CLONE")
        assert not np.shares_memory(clone.array, mask.array)

    def test_explicit_planes_and_validation(self):
        mask = Mask(np.zeros((2, 2), np.int32), planes={"A": 3, "B": 0})
        assert mask.getMaskPlaneDict() == {"B": 0, "A": 3}
        with pytest.raises(ValueError, match="both use bit 1"):
            Mask(np.zeros((2, 2), np.int32), planes={"A": 1, "B": 1})
        with pytest.raises(ValueError, match="outside"):
            Mask(np.zeros((2, 2), np.int32), planes={"A": 32})

    def test_clear_and_remove_plane(self):
        mask = Mask(np.full((2, 3), 0b111, np.int32))
        mask.clearMaskPlane("SAT")
        assert np.all(mask.array == 0b101)
        mask.removeAndClearMaskPlane("BAD")
        assert np.all(mask.array == 0b100)
        with pytest.raises(UnknownMaskPlaneError):
            mask.getMaskPlane("BAD")

    def test_ior(self):
        a = Mask(np.array([[1, 0]], np.int32))
        b = Mask(np.array([[2, 4]], np.int32))
        b.addMaskPlane("NEW")
        a |= b
        np.testing.assert_array_equal(a.array, [[3, 4]])
        assert a.getMaskPlane("NEW") == 9
        a |= 1 << 31
        assert np.all(a.array < 0)
        with pytest.raises(ValueError, match="bounding boxes"):
            a |= Mask(np.zeros((1, 2), np.int32), xy0=(1, 0))
        c = Mask(np.zeros((1, 2), np.int32), planes={"BAD": 5})
        with pytest.raises(ValueError, match="BAD"):
            a |= c

    def test_from_dimensions(self):
        mask = Mask.fromDimensions((5, 3), xy0=(1, 2))
        assert mask.shape == (3, 5) and mask.dtype == np.int32 and not mask.array.any()
        assert mask.getBBox() == Box2I((1, 2), (5, 4))


# ---------------------------------------------------------------------------------------------
# MaskedImage
# ---------------------------------------------------------------------------------------------

class TestMaskedImage:
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_arrays_shared_not_copied(self, dtype):
        image = np.zeros((4, 5), dtype)
        variance = np.ones((4, 5), dtype)
        mask = np.zeros((4, 5), np.int32)
        mi = MaskedImage(image, mask, variance, xy0=(3, -2))
        assert mi.image is image and mi.variance is variance and mi.mask.array is mask
        assert mi.dtype == dtype
        assert mi.getXY0() == Point2I(3, -2)
        assert mi.getBBox() == Box2I((3, -2), (7, 1))
        assert mi.getDimensions() == Extent2I(5, 4)
        assert (mi.getWidth(), mi.getHeight()) == (5, 4)

    def test_noncontiguous_layouts_shared(self):
        base = np.zeros((10, 12), np.float32)
        fortran = np.asfortranarray(np.zeros((4, 6), np.float64))
        strided = base[::2, 1::2]
        for arr in (fortran, strided, base.T):
            mi = MaskedImage(arr, variance=arr)
            assert np.shares_memory(mi.image, arr) and mi.image is arr

    def test_defaults(self):
        mi = MaskedImage(np.ones((3, 2), np.float64))
        assert mi.mask.array.dtype == np.int32 and not mi.mask.array.any()
        assert tuple(mi.mask.getMaskPlaneDict()) == DEFAULT_MASK_PLANES
        assert mi.variance.dtype == np.float64 and not mi.variance.any()

    def test_mask_conversion_copies(self):
        mask16 = np.ones((3, 2), np.uint16)
        mi = MaskedImage(np.ones((3, 2), np.float32), mask16)
        assert mi.mask.array.dtype == np.int32 and not np.shares_memory(mi.mask.array, mask16)

    def test_mask_object_shared(self):
        mask = Mask(np.zeros((3, 2), np.int32))
        mi = MaskedImage(np.ones((3, 2), np.float32), mask, xy0=(5, 5))
        assert mi.mask.array is mask.array
        mi.mask.addMaskPlane("SHARED")
        assert mask.getMaskPlane("SHARED") == 9
        assert mask.getXY0() == Point2I(0, 0)  # the caller's Mask object is not re-origined

    @pytest.mark.parametrize("plane,kwargs", [
        ("image", dict(image=np.zeros((2, 2), np.int32))),
        ("image", dict(image=np.zeros((2, 2), np.complex128))),
        ("image", dict(image=np.zeros((2, 2), np.float16))),
        ("variance", dict(image=np.zeros((2, 2)), variance=np.zeros((2, 2), np.int64))),
        ("mask", dict(image=np.zeros((2, 2)), mask=np.zeros((2, 2), np.float32))),
        ("mask", dict(image=np.zeros((2, 2)), mask=np.zeros((2, 2), bool))),
        ("mask", dict(image=np.zeros((2, 2)), mask=np.zeros((2, 2), np.complex64))),
    ])
    def test_bad_dtypes(self, plane, kwargs):
        with pytest.raises(TypeError) as info:
            MaskedImage(**kwargs)
        text = str(info.value)
        assert plane in text
        bad = [v for k, v in kwargs.items() if k == plane][0]
        assert str(bad.dtype) in text

    def test_shape_mismatch_names_both_shapes(self):
        with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)|\(3, 5\).*\(3, 4\)"):
            MaskedImage(np.zeros((3, 5)), variance=np.zeros((3, 4)))
        with pytest.raises(ValueError, match="mask"):
            MaskedImage(np.zeros((3, 5)), mask=np.zeros((5, 3), np.int32))

    def test_not_2d(self):
        with pytest.raises(ValueError, match="2-D"):
            MaskedImage(np.zeros(5))
        with pytest.raises(ValueError, match="2-D"):
            MaskedImage(np.zeros((2, 2, 2)))

    def test_big_endian_converted(self):
        arr = np.arange(6, dtype=">f4").reshape(2, 3)
        mi = MaskedImage(arr)
        assert mi.image.dtype == np.float32 and mi.image.dtype.isnative
        np.testing.assert_array_equal(mi.image, arr)

    def test_view_shares_memory_and_writes_through(self):
        mi = _mi(shape=(10, 12), xy0=(100, 200))
        bbox = Box2I((103, 202), (107, 208))
        view = mi[bbox]
        assert view.getBBox() == bbox and view.getXY0() == Point2I(103, 202)
        assert view.image.shape == (7, 5)
        np.testing.assert_array_equal(view.image, mi.image[2:9, 3:8])
        view.image[0, 0] = 42.0
        view.variance[:] = -1.0
        view.mask.array[:] = 1 << 9
        assert mi.image[2, 3] == 42.0
        assert np.all(mi.variance[2:9, 3:8] == -1.0) and np.all(mi.variance[:2] != -1.0)
        assert np.all(mi.mask.array[2:9, 3:8] == 512)
        # nested views are in parent coordinates too
        inner = view[Box2I((104, 203), (104, 203))]
        assert inner.image[0, 0] == mi.image[1 + 2, 1 + 3]

    @pytest.mark.parametrize("bbox", [
        Box2I((99, 200), (105, 205)),
        Box2I((100, 200), (112, 205)),
        Box2I((0, 0), (5, 5)),
    ])
    def test_view_outside_raises_naming_boxes(self, bbox):
        mi = _mi(shape=(10, 12), xy0=(100, 200))
        with pytest.raises(ValueError) as info:
            mi[bbox]
        assert repr(bbox) in str(info.value) and repr(mi.getBBox()) in str(info.value)

    def test_view_bad_index(self):
        mi = _mi()
        with pytest.raises(TypeError):
            mi[0:3, 0:2]
        with pytest.raises(ValueError):
            mi[Box2I()]

    def test_clone_is_deep(self):
        mi = _mi(xy0=(4, 5))
        clone = mi.clone()
        assert clone.getXY0() == mi.getXY0()
        for a, b in ((clone.image, mi.image), (clone.variance, mi.variance),
                     (clone.mask.array, mi.mask.array)):
            assert not np.shares_memory(a, b)
            np.testing.assert_array_equal(a, b)
        clone.image[:] = 0
        clone.mask.addMaskPlane("CLONE_ONLY")
        assert mi.image.any()
        assert "CLONE_ONLY" not in mi.mask.getMaskPlaneDict()
        clone.setXY0((0, 0))
        assert mi.getXY0() == Point2I(4, 5)

    def test_set_xy0(self):
        mi = _mi(shape=(3, 4))
        mi.setXY0((10, 20))
        assert mi.getBBox() == Box2I((10, 20), (13, 22))
        assert mi.mask.getXY0() == Point2I(10, 20)
        with pytest.raises(TypeError):
            mi.setXY0((0.5, 0))

    def test_subtraction_semantics(self):
        a = _mi(seed=1, xy0=(7, 8))
        b = _mi(seed=2, xy0=(7, 8))
        a_image, a_var, a_mask = a.image.copy(), a.variance.copy(), a.mask.array.copy()
        diff = a - b
        np.testing.assert_array_equal(diff.image, a_image - b.image)
        np.testing.assert_array_equal(diff.variance, a_var + b.variance)  # variances ADD
        np.testing.assert_array_equal(diff.mask.array, a_mask | b.mask.array)
        assert diff.getXY0() == Point2I(7, 8)
        # inputs untouched, result owns new memory
        np.testing.assert_array_equal(a.image, a_image)
        assert not np.shares_memory(diff.image, a.image)
        total = a + b
        np.testing.assert_array_equal(total.image, a_image + b.image)
        np.testing.assert_array_equal(total.variance, a_var + b.variance)

    def test_inplace_subtraction(self):
        a = _mi(seed=1)
        b = _mi(seed=2)
        image, var, mask = a.image, a.variance, a.mask.array
        expected = (a.image - b.image, a.variance + b.variance, a.mask.array | b.mask.array)
        a -= b
        assert a.image is image and a.variance is var and a.mask.array is mask
        np.testing.assert_array_equal(a.image, expected[0])
        np.testing.assert_array_equal(a.variance, expected[1])
        np.testing.assert_array_equal(a.mask.array, expected[2])
        a += b
        np.testing.assert_allclose(a.image, image)

    def test_inplace_on_view_writes_parent(self):
        parent = _mi(shape=(8, 8), seed=3)
        before = parent.image.copy()
        other = _mi(shape=(3, 3), seed=4, xy0=(2, 2))
        view = parent[Box2I((2, 2), (4, 4))]
        view -= other
        np.testing.assert_array_equal(parent.image[2:5, 2:5], before[2:5, 2:5] - other.image)
        np.testing.assert_array_equal(parent.image[:2], before[:2])

    def test_subtraction_bbox_mismatch(self):
        with pytest.raises(ValueError, match="bounding boxes"):
            _mi(xy0=(0, 0)) - _mi(xy0=(1, 0))
        a = _mi()
        with pytest.raises(ValueError, match="bounding boxes"):
            a -= _mi(shape=(5, 8))

    def test_subtraction_plane_conflict(self):
        a = _mi()
        b = MaskedImage(np.zeros(a.shape, np.float32), Mask(np.zeros(a.shape, np.int32),
                                                            planes={"BAD": 3}))
        with pytest.raises(ValueError, match="BAD"):
            a - b
        before = a.image.copy()
        with pytest.raises(ValueError, match="BAD"):
            a -= b
        np.testing.assert_array_equal(a.image, before)  # nothing half-done

    def test_scalar_add_changes_image_only(self):
        a = _mi()
        var, mask = a.variance.copy(), a.mask.array.copy()
        b = a + 5.0
        np.testing.assert_allclose(b.image, a.image + 5.0)
        np.testing.assert_array_equal(b.variance, var)
        a -= 1.0
        np.testing.assert_array_equal(a.variance, var)
        np.testing.assert_array_equal(a.mask.array, mask)
        with pytest.raises(TypeError):
            a - "x"

    def test_float32_precision_kept_in_place(self):
        a = _mi(dtype=np.float32)
        b = _mi(dtype=np.float64, seed=5)
        a -= b
        assert a.image.dtype == np.float32

    def test_setters_write_in_place(self):
        mi = _mi()
        image = mi.image
        mi.image = 3.0
        assert mi.image is image and np.all(image == 3.0)
        mi.variance = np.full(mi.shape, 2.0)
        assert np.all(mi.variance == 2.0)
        mi.mask = 1
        assert np.all(mi.mask.array == 1)


# ---------------------------------------------------------------------------------------------
# Exposure
# ---------------------------------------------------------------------------------------------

class _Psf:
    def __init__(self, sigma):
        self.sigma = sigma


class TestExposure:
    def _exposure(self, **kwargs):
        rng = np.random.default_rng(0)
        image = rng.normal(size=(20, 30)).astype(np.float32)
        return Exposure(image, variance=np.ones_like(image), xy0=(10, 40), psf=_Psf(2.0),
                        wcs=_tan_wcs(), photoCalib={"calibrationMean": 3.0},
                        metadata={"VISIT": 12, "FILTER": "r"}, **kwargs)

    def test_contract_accessors(self):
        exp = self._exposure()
        assert isinstance(exp.image, np.ndarray) and exp.image.shape == (20, 30)
        assert isinstance(exp.mask, np.ndarray) and exp.mask.dtype == np.int32
        assert isinstance(exp.variance, np.ndarray)
        assert exp.mask is exp.maskedImage.mask.array
        assert exp.getMaskedImage() is exp.maskedImage
        assert exp.maskedImage.mask.getPlaneBitMask(["BAD", "SAT"]) == 3
        assert exp.maskedImage.mask.addMaskPlane("INVALID_MAPREDUCE") == 9
        assert exp.getBBox() == Box2I((10, 40), (39, 59))
        assert exp.getXY0() == Point2I(10, 40)
        assert exp.getDimensions() == Extent2I(30, 20)
        assert exp.hasPsf() and exp.getPsf().sigma == 2.0
        assert exp.getWcs() is not None and exp.hasWcs()
        assert exp.getPhotoCalib()["calibrationMean"] == 3.0
        meta = exp.getMetadata()
        assert isinstance(meta, fits.Header) and meta["VISIT"] == 12

    def test_defaults(self):
        image = np.zeros((3, 3), np.float64)
        exp = Exposure(image)
        assert exp.image is image
        assert exp.getPsf() is None and not exp.hasPsf()
        assert exp.getWcs() is None and exp.getPhotoCalib() is None
        assert isinstance(exp.getMetadata(), fits.Header) and len(exp.getMetadata()) == 0
        exp.setPsf(_Psf(1.0))
        assert exp.hasPsf()
        exp.setPhotoCalib(5)
        assert exp.getPhotoCalib() == 5

    def test_metadata_header_shared(self):
        header = fits.Header()
        exp = Exposure(np.zeros((2, 2), np.float32), metadata=header)
        exp.getMetadata()["NEW"] = 1
        assert header["NEW"] == 1
        with pytest.raises(TypeError, match="metadata"):
            Exposure(np.zeros((2, 2), np.float32), metadata=[1, 2])

    def test_metadata_from_mapping(self):
        exp = Exposure(np.zeros((2, 2), np.float32),
                       metadata={"VISIT": 3, "LONG_KEYWORD_NAME": 2.5, "filter": "r"})
        meta = exp.getMetadata()
        assert meta["VISIT"] == 3 and meta["LONG_KEYWORD_NAME"] == 2.5 and meta["FILTER"] == "r"

    def test_bad_wcs_type(self):
        with pytest.raises(TypeError, match="wcs"):
            Exposure(np.zeros((2, 2), np.float32), wcs="not a wcs")
        exp = Exposure(np.zeros((2, 2), np.float32))
        with pytest.raises(TypeError):
            exp.setWcs(3)

    def test_dtype_errors_propagate(self):
        with pytest.raises(TypeError, match="image"):
            Exposure(np.zeros((2, 2), np.int16))

    def test_view_shares_everything(self):
        exp = self._exposure()
        bbox = Box2I((15, 45), (24, 49))
        view = exp[bbox]
        assert view.getBBox() == bbox
        assert np.shares_memory(view.image, exp.image)
        assert np.shares_memory(view.mask, exp.mask)
        assert np.shares_memory(view.variance, exp.variance)
        assert view.getPsf() is exp.getPsf()
        assert view.getWcs() is exp.getWcs()
        assert view.getPhotoCalib() is exp.getPhotoCalib()
        assert view.getMetadata() is exp.getMetadata()
        view.image[:] = 100.0
        assert np.all(exp.image[5:10, 5:15] == 100.0)
        assert np.count_nonzero(exp.image == 100.0) == 50
        view.maskedImage.mask.addMaskPlane("VIEW_PLANE")
        assert "VIEW_PLANE" in exp.maskedImage.mask.getMaskPlaneDict()
        with pytest.raises(ValueError):
            exp[Box2I((0, 0), (15, 45))]

    def test_view_wcs_in_parent_coordinates(self):
        exp = self._exposure()
        view = exp[Box2I((20, 50), (29, 55))]
        # the same parent pixel has the same sky position in the parent and the view
        sky_parent = exp.getWcs().all_pix2world([[25.0, 52.0]], 0)
        sky_view = view.getWcs().all_pix2world([[25.0, 52.0]], 0)
        np.testing.assert_array_equal(sky_parent, sky_view)

    def test_clone_is_deep(self):
        exp = self._exposure()
        clone = exp.clone()
        assert not np.shares_memory(clone.image, exp.image)
        assert not np.shares_memory(clone.mask, exp.mask)
        assert not np.shares_memory(clone.variance, exp.variance)
        np.testing.assert_array_equal(clone.image, exp.image)
        assert clone.getXY0() == exp.getXY0()
        assert clone.getPsf() is not exp.getPsf() and clone.getPsf().sigma == 2.0
        assert clone.getWcs() is not exp.getWcs()
        np.testing.assert_array_equal(clone.getWcs().wcs.crpix, exp.getWcs().wcs.crpix)
        assert clone.getMetadata() is not exp.getMetadata()
        clone.getMetadata()["VISIT"] = 99
        assert exp.getMetadata()["VISIT"] == 12
        clone.maskedImage.mask.addMaskPlane("CLONE_ONLY")
        assert "CLONE_ONLY" not in exp.maskedImage.mask.getMaskPlaneDict()
        # the clone of a view has the view's box and owns its memory
        view_clone = exp[Box2I((12, 41), (13, 44))].clone()
        assert view_clone.getBBox() == Box2I((12, 41), (13, 44))
        assert view_clone.image.flags.c_contiguous

    def test_from_masked_image(self):
        mi = _mi(xy0=(1, 2))
        exp = Exposure.fromMaskedImage(mi, psf=_Psf(1.5), metadata=fits.Header())
        assert exp.maskedImage is mi and exp.image is mi.image
        assert exp.getXY0() == Point2I(1, 2)
        assert exp.getPsf().sigma == 1.5
        with pytest.raises(TypeError):
            Exposure.fromMaskedImage(np.zeros((2, 2)))

    def test_set_xy0_shifts_wcs(self):
        exp = self._exposure()
        wcs_before = exp.getWcs()
        sky_before = wcs_before.all_pix2world([[10.0 + 3, 40.0 + 4]], 0)  # array pixel (3, 4)
        exp.setXY0((0, 0))
        assert exp.getXY0() == Point2I(0, 0) and exp.maskedImage.getXY0() == Point2I(0, 0)
        sky_after = exp.getWcs().all_pix2world([[3.0, 4.0]], 0)
        np.testing.assert_allclose(sky_after, sky_before, rtol=0, atol=1e-12)
        assert exp.getWcs() is not wcs_before  # views keep the old object
        np.testing.assert_array_equal(wcs_before.wcs.crpix, [50.0, 60.0])

    def test_setters_write_in_place(self):
        exp = self._exposure()
        mask = exp.mask
        exp.mask = 4
        assert exp.mask is mask and np.all(mask == 4)
        exp.image = 0.0
        assert not exp.image.any()

    def test_deepcopy_and_repr(self):
        exp = self._exposure()
        other = copy.deepcopy(exp)
        assert not np.shares_memory(other.image, exp.image)
        assert "Exposure" in repr(exp) and "(10, 40)" in repr(exp)
