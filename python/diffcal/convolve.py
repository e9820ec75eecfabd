"""Direct convolution of masked images by a fixed kernel, with LSST afw semantics (C++ core).

What is implemented (``afw.math.convolve`` with ``ConvolutionControl(doNormalize, doCopyEdge)``
as the decorrelation tests use it for the matched template):

* Orientation: for a kernel of ``w x h`` pixels with centre ``ctr = ((w - 1) // 2, (h - 1) // 2)``,
  ``out[y, x] = sum_{j, i} K[j, i] * in[y + j - ctrY, x + i - ctrX]`` -- the kernel image is applied
  without flipping, as afw does (identical to a convolution for kernels symmetric about their
  centre pixel).
* Variance: ``sum K[j, i]**2 * var[...]`` over the same footprint (independent pixels).
* Mask: OR of the input mask bits over the footprint pixels where the kernel is non-zero.
* Edge band: ``ctrX`` columns on the left, ``w - ctrX - 1`` on the right, ``ctrY`` rows at the
  bottom (low y / low row index) and ``h - ctrY - 1`` at the top, i.e. every output pixel whose
  kernel footprint leaves the image. ``doCopyEdge=True``: image, variance and mask copied from
  the input, with the ``EDGE`` bit OR-ed into the mask. ``doCopyEdge=False``: afw's standard edge
  pixel -- image NaN, variance +Inf, mask = ``NO_DATA``.
* ``doNormalize``: the kernel is divided by its sum first.
* Sums are accumulated in float64; float32 planes stay float32. Rows are processed in parallel
  with results independent of the thread count; the GIL is released.

Not implemented: spatially varying kernels (evaluate one with ``kernel.computeImage(x, y)`` and
wrap it in a :class:`~diffcal.kernel.FixedKernel`), afw's interpolated convolution and
``maxInterpolationDistance``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from .image import Exposure, MaskedImage, _signed32
from .kernel import Kernel

__all__ = ["convolveMaskedImage"]


def _kernel_array(kernel: Any) -> np.ndarray:
    if isinstance(kernel, Kernel):
        if kernel.isSpatiallyVarying():
            raise ValueError(
                "convolveMaskedImage supports fixed kernels only; evaluate the spatially varying kernel with "
                "kernel.computeImage(x, y) and wrap it in diffcal.kernel.FixedKernel"
            )
        arr = kernel.computeImage()
    else:
        arr = np.asarray(kernel)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"kernel must be a diffcal Kernel or a real 2-D array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"kernel image must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("kernel image contains non-finite values")
    return arr


def convolveMaskedImage(maskedImage: MaskedImage | Exposure, kernel: Kernel | np.ndarray, *,
                        doNormalize: bool = False, doCopyEdge: bool = True) -> MaskedImage:
    """Convolve a masked image by a fixed kernel (afw semantics, see the module docstring).

    Parameters
    ----------
    maskedImage : MaskedImage or Exposure
        Input planes (float32 or float64; image and variance must have the same dtype). Not
        modified.
    kernel : diffcal.kernel.Kernel or numpy.ndarray
        Fixed kernel (or its ``[y, x]`` image); its centre pixel is ``((w - 1) // 2, (h - 1) // 2)``.
    doNormalize : bool
        Divide the kernel by its sum before convolving.
    doCopyEdge : bool
        Copy edge pixels from the input (mask bit ``EDGE`` added) instead of setting afw's
        standard edge pixel (NaN, +Inf variance, ``NO_DATA``).

    Returns
    -------
    MaskedImage
        New planes with the input's origin, dtype and mask planes (``EDGE`` / ``NO_DATA`` added to
        the new mask's dictionary if missing).

    Raises
    ------
    TypeError
        Wrong argument types or mismatched image/variance dtypes.
    ValueError
        Kernel larger than the image, empty or non-finite kernel, zero sum with ``doNormalize``,
        or a spatially varying kernel.
    """
    mi = maskedImage.maskedImage if isinstance(maskedImage, Exposure) else maskedImage
    if not isinstance(mi, MaskedImage):
        raise TypeError(f"maskedImage must be a MaskedImage or Exposure, got {type(maskedImage).__name__}")
    k = _kernel_array(kernel)
    image, variance = mi.image, mi.variance
    if variance.dtype != image.dtype:
        raise TypeError(f"image ({image.dtype}) and variance ({variance.dtype}) planes must have the same dtype")
    kh, kw = k.shape
    if kh > image.shape[0] or kw > image.shape[1]:
        raise ValueError(f"kernel shape {k.shape} is larger than the image shape {image.shape}")
    mask = mi.mask.clone()
    edge_bit = 1 << mask.addMaskPlane("EDGE")
    no_data_bit = 1 << mask.addMaskPlane("NO_DATA")
    out_image = np.empty_like(image, order="C")
    out_var = np.empty_like(variance, order="C")
    # the clone is a fresh array, so the core can write the output mask straight into it
    _core.convolve_masked_image(image, variance, mi.mask.array, k, bool(doNormalize), bool(doCopyEdge),
                                _signed32(edge_bit), _signed32(no_data_bit), out_image, out_var, mask.array)
    return MaskedImage(out_image, mask, out_var, xy0=mi.getXY0())
