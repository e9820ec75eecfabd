"""Type stubs of ``diffcal._core``, the compiled C++ core (pybind11; see ``cpp/bindings/``).

Use the Python API (``diffcal.statistics``, ``diffcal.cli``, ...) rather than calling these
directly: the wrappers validate and convert their inputs, the core does not convert dtypes
(a wrong dtype raises ``TypeError`` naming the argument).

Keep this file in step with ``cpp/bindings/*.cpp``: every name the module exposes is listed here
(``tests/test_cli.py`` checks it).
"""

from collections.abc import Sequence
from typing import Any, TypedDict, final, type_check_only

import numpy as np
import numpy.typing as npt

_FloatArray = npt.NDArray[np.float32] | npt.NDArray[np.float64]
_MaskArray = npt.NDArray[np.int32]
_BoxArray = npt.NDArray[np.int64]
"""Boxes as an int64 array of shape (N, 4): rows (minX, minY, maxX, maxY), inclusive, parent pixels."""
_Box = Sequence[int]
"""One box (minX, minY, maxX, maxY), inclusive, parent pixels."""

# --- bind_build_info.cpp ---------------------------------------------------------------------

@type_check_only
class _BuildInfo(TypedDict):
    """The dictionary returned by :func:`build_info`."""

    version: str
    """diffcal version compiled into the core."""
    eigen_version: str
    """Eigen version, e.g. ``"3.4.1"``."""
    compiler: str
    """Compiler id and version, e.g. ``"gcc 12.2.0"``."""
    build_type: str
    """CMake build type, e.g. ``"Release"``."""
    flags: str
    """Optimisation / architecture / sanitizer flags."""
    simd: str
    """SIMD instruction sets Eigen vectorises with, e.g. ``"SSE, SSE2"``."""
    cxx_standard: int
    """Value of ``__cplusplus`` (``201703`` for C++17)."""
    hardware_threads: int
    """``std::thread::hardware_concurrency()``."""
    num_threads: int
    """Worker threads the core currently uses (:func:`get_num_threads`)."""

def build_info() -> _BuildInfo:
    """Build facts of the compiled core: versions, compiler, flags, SIMD, thread counts."""

def get_num_threads() -> int:
    """Number of worker threads the core uses.

    Default: ``DIFFCAL_NUM_THREADS`` when set to a positive integer, else the number of hardware
    threads.
    """

def set_num_threads(n: int) -> None:
    """Set the number of worker threads (``n <= 0`` restores the default).

    ``n`` must fit in a C ``int``. Results are bit-identical whatever the thread count.
    """

# --- bind_statistics.cpp ---------------------------------------------------------------------

@final
class ClippedStatistics:
    """Result of :func:`clipped_statistics` (read-only; not constructible from Python)."""

    @property
    def mean(self) -> float:
        """Clipped mean (MEANCLIP)."""
    @property
    def variance(self) -> float:
        """Clipped unbiased variance (VARIANCECLIP)."""
    @property
    def median(self) -> float:
        """Median of all candidates (before clipping)."""
    @property
    def iqr(self) -> float:
        """Interquartile range of all candidates."""
    @property
    def n_candidates(self) -> int:
        """Number of finite, unmasked values."""
    @property
    def n_used(self) -> int:
        """Number of values kept by the last clipping pass."""

def clipped_statistics(
    values: _FloatArray,
    mask: _MaskArray | None = None,
    and_mask: int = 0,
    n_sigma: float = 3.0,
    n_iter: int = 3,
) -> ClippedStatistics:
    """Sigma-clipped mean/variance (MEANCLIP/VARIANCECLIP semantics) of a 1-D or 2-D array.

    ``values`` must be exactly float32 or float64 and ``mask`` (same shape) exactly int32; any
    strides are read in place (no copy). A pixel is a candidate when it is finite and
    ``mask & and_mask == 0``; ``and_mask`` is a signed 32-bit value. Releases the GIL.

    Raises
    ------
    TypeError
        Wrong dtype (the message names ``values`` or ``mask``), or ``and_mask`` outside int32.
    ValueError
        Not 1-D/2-D, or strides that are not a multiple of the item size.
    """

def quantile(
    values: _FloatArray,
    fraction: float,
    mask: _MaskArray | None = None,
    and_mask: int = 0,
) -> float:
    """Linear-interpolated quantile of the finite, unmasked values (exact selection).

    ``fraction`` is in [0, 1]; NaN when there are no candidates. Same array rules as
    :func:`clipped_statistics`. Releases the GIL.
    """

# --- bind_mapreduce.cpp ----------------------------------------------------------------------
# Boxes cross the boundary as int64 (N, 4) arrays of (minX, minY, maxX, maxY), inclusive, parent
# coordinates. Pixel planes are read/written in place (exact dtypes, no conversion); output planes
# must be writable. C++ std::invalid_argument becomes ValueError, std::runtime_error RuntimeError.

@type_check_only
class _GridSizes(TypedDict):
    """Integer pixel sizes used by :func:`generate_grid` (after FWHM scaling and rounding)."""

    cellSizeX: int
    cellSizeY: int
    gridStepX: int
    gridStepY: int
    borderSizeX: int
    borderSizeY: int

@type_check_only
class _StitchStats(TypedDict):
    """Statistics returned by :func:`stitch` and :func:`map_and_stitch`."""

    n_pixels: int
    """Output pixels."""
    n_patches: int
    """Patches stitched."""
    n_flagged: int
    """Pixels that received ``bad_bits``."""
    n_zero_weight: int
    """Pixels with no valid contribution."""
    max_weight: int
    min_weight: int
    sum_weight: int
    mean_weight: float
    """``sum_weight / n_pixels`` (0 when there are no pixels)."""

def generate_grid(
    bbox: _Box,
    cell_size_x: float,
    cell_size_y: float,
    grid_step_x: float,
    grid_step_y: float,
    border_size_x: float,
    border_size_y: float,
    adjust_grid_option: str,
    scale_by_fwhm: bool,
    fwhm: float,
    cell_centroids_x: Sequence[float] | None = None,
    cell_centroids_y: Sequence[float] | None = None,
    force_even_sized: bool = False,
) -> tuple[_BoxArray, _BoxArray, _GridSizes]:
    """ImageMapReduce grid (spec §1.5) covering ``bbox``.

    ``adjust_grid_option`` is ``"spacing"``, ``"size"`` or ``"none"``. Returns ``(inner, expanded,
    sizes)``: two int64 (N, 4) box arrays and the integer pixel sizes used. Releases the GIL.

    Raises
    ------
    ValueError
        Bad parameters (non-finite or non-positive sizes, a size rounding to 0 px, a bad FWHM,
        centroid lists of different lengths, a centroid whose cell misses ``bbox``).
    RuntimeError
        ``force_even_sized`` cannot make a box even-sized inside ``bbox``.
    """

def round_half_even(value: float) -> float:
    """Round to the nearest integer, ties to even (``numpy.rint`` semantics)."""

class CellMapper:
    """Abstract native per-cell mapper (C++); not constructible from Python."""

    @property
    def name(self) -> str:
        """Short description for logs and error messages."""
    @property
    def overwrites_output(self) -> bool:
        """True when the mapper writes every output pixel (the drivers then skip pre-filling)."""

@final
class IdentityCellMapper(CellMapper):
    """Native mapper copying each cell's inner box (image, mask, variance) unchanged."""

    def __init__(self) -> None: ...

@final
class AddConstantCellMapper(CellMapper):
    """Native mapper copying each cell's inner box and adding ``amount`` (cast to the pixel type)."""

    def __init__(self, amount: float) -> None: ...
    @property
    def amount(self) -> float:
        """The constant added to the image plane."""

@final
class Prefault:
    """Maps the pages of new arrays on a background thread (``MADV_POPULATE_WRITE``) without changing
    any byte; keeps the arrays alive until the object is gone. A no-op where unsupported."""

    @staticmethod
    def supported() -> bool:
        """Whether this build can populate pages (Linux ``MADV_POPULATE_WRITE``); else a no-op."""
    def __init__(self, arrays: list[npt.NDArray[Any]]) -> None: ...
    def join(self) -> None:
        """Wait for the background thread (releases the GIL; idempotent)."""
    @property
    def populated_bytes(self) -> int:
        """Bytes populated by the kernel (after ``join``)."""

def stitch(
    images: list[_FloatArray],
    masks: list[_MaskArray],
    variances: list[_FloatArray],
    boxes: _BoxArray,
    out_bbox: _Box,
    input_mask: _MaskArray,
    out_image: _FloatArray,
    out_mask: _MaskArray,
    out_variance: _FloatArray,
    operation: str,
    bad_bits: int,
) -> _StitchStats:
    """Stitch patches into preallocated output planes (spec §1.7), in place.

    ``images``/``masks``/``variances`` are lists (one entry per row of ``boxes``) of planes of
    the output's dtype; ``operation`` is ``"copy"``, ``"sum"`` or ``"average"``. Releases the GIL.
    """

def map_and_stitch(
    mapper: CellMapper,
    image: _FloatArray,
    mask: _MaskArray,
    variance: _FloatArray,
    bbox: _Box,
    inner: _BoxArray,
    expanded: _BoxArray,
    out_image: _FloatArray,
    out_mask: _MaskArray,
    out_variance: _FloatArray,
    operation: str,
    bad_bits: int,
) -> _StitchStats:
    """Run a native mapper on every cell in parallel and stitch the results (streaming), in place.

    Releases the GIL.
    """

def map_cells(
    mapper: CellMapper,
    image: _FloatArray,
    mask: _MaskArray,
    variance: _FloatArray,
    bbox: _Box,
    inner: _BoxArray,
    expanded: _BoxArray,
    out_images: list[_FloatArray],
    out_masks: list[_MaskArray],
    out_variances: list[_FloatArray],
) -> None:
    """Run a native mapper on every cell in parallel into per-cell output planes (one per row of
    ``inner``), in place. Releases the GIL.
    """

# --- bind_decorrelation.cpp ------------------------------------------------------------------
# FFT layer, non-spatial kernel decorrelation and direct (afw-semantics) convolution. Kernels are
# float64; image/variance planes are all float32 or all float64. std::invalid_argument becomes
# ValueError. All heavy calls release the GIL.

@type_check_only
class _DecorrelationInfo(TypedDict):
    """Returned by :func:`decorrelate_image`."""

    fft_shape: tuple[int, int]
    """FFT grid (rows, cols) used."""
    k_sum: float
    """Sum of the matching kernel image."""
    w1: float
    """Weight of the unconvolved image's variance plane (sum |cn|^2 / N)."""
    w2: float
    """Weight of the convolved image's variance plane (sum |cr|^2 / N)."""
    max_corr: float
    """Largest filter value (maximum noise correction factor)."""
    fill_value: float
    """Mean of the finite image pixels, used for NaN/Inf pixels."""
    n_non_finite: int
    """Number of NaN/Inf image pixels."""

@type_check_only
class _CorrectionFilter(TypedDict):
    """Returned by :func:`correction_filter`."""

    corr: npt.NDArray[np.float64]
    """Real filter on the half spectrum, shape (rows, cols // 2 + 1)."""
    k_sum: float
    w1: float
    w2: float
    max_corr: float

def next_fast_size(n: int) -> int:
    """Smallest even 2/3/5/7-smooth integer >= max(n, 2)."""

def cheapest_fast_size(n: int) -> int:
    """The even 2/3/5/7-smooth size >= max(n, 2) with the lowest modelled FFT cost (fftShape='fast')."""

def fft_backend() -> str:
    """Name of the compiled FFT implementation (``"diffcal-stockham"``)."""

def rfft2(a: npt.NDArray[np.float64]) -> npt.NDArray[np.complex128]:
    """2-D real forward FFT (numpy.fft.rfft2 conventions), shape (rows, cols // 2 + 1)."""

def irfft2(spectrum: npt.NDArray[np.complex128], cols: int) -> npt.NDArray[np.float64]:
    """Normalised inverse of :func:`rfft2` (numpy.fft.irfft2 conventions)."""

def compute_common_shape(shapes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Reference FFT grid: per axis the two largest sizes N1 + N2 - 1, rounded up to even."""

def correction_filter(
    kernel: npt.NDArray[np.float64],
    pre_conv_kernel: npt.NDArray[np.float64] | None,
    v: float,
    vt: float,
    shape: tuple[int, int],
) -> _CorrectionFilter:
    """Decorrelation filter (diffim correction, or score correction when ``pre_conv_kernel`` is given)."""

def decorrelate_image(
    image: _FloatArray,
    variance: _FloatArray,
    template_variance: _FloatArray,
    kernel: npt.NDArray[np.float64],
    pre_conv_kernel: npt.NDArray[np.float64] | None,
    v: float,
    vt: float,
    out_image: _FloatArray,
    out_variance: _FloatArray,
    fast: bool = False,
    complete_var: bool = False,
    template_matched: bool = True,
    extra_shapes: Sequence[tuple[int, int]] = (),
    parallel: bool = True,
) -> _DecorrelationInfo:
    """Non-spatial decorrelation of one image into caller-provided outputs (``out_image`` may be
    ``image``). ``parallel=False`` runs serially (for per-cell use inside a parallel loop)."""

class _DecorrelationCellInfo(TypedDict):
    """Returned by :meth:`DecorrelationCellMapper.cell_info` (one row per processed cell, cell order)."""

    index: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    columns: tuple[str, ...]
    fft_shape: npt.NDArray[np.int64]
    skipped: npt.NDArray[np.bool_]

@final
class DecorrelationCellMapper(CellMapper):
    """Native mapper of the spatially varying decorrelation (``diffcal/decorrelation_mapper.hpp``):
    per cell the kernel at the expanded-box centre (basis images ``(n, h, w)`` and spatial
    coefficients ``(n, nTerms)``), local clipped svar/tvar, decorrelation of the expanded box, inner
    box out. Keeps the science/template arrays alive."""

    def __init__(
        self,
        bbox: tuple[int, int, int, int],
        science_image: _FloatArray,
        science_mask: _MaskArray,
        science_variance: _FloatArray,
        template_image: _FloatArray,
        template_mask: _MaskArray,
        template_variance: _FloatArray,
        basis: npt.NDArray[np.float64],
        coeffs: npt.NDArray[np.float64],
        order: int,
        function: str,
        kernel_bbox: tuple[int, int, int, int],
        pre_conv_kernel: npt.NDArray[np.float64] | None,
        fast: bool = False,
        complete_var: bool = False,
        template_matched: bool = True,
        extra_shapes: Sequence[tuple[int, int]] = (),
        science_and_mask: int = 0,
        template_and_mask: int = 0,
    ) -> None: ...
    def cell_info(self) -> _DecorrelationCellInfo:
        """Per-cell statistics (xcen, ycen, svar, tvar, kSum, w1, w2, maxCorr) of the cells processed."""

def evaluate_spatial_kernel(
    basis: npt.NDArray[np.float64],
    coeffs: npt.NDArray[np.float64],
    order: int,
    function: str,
    kernel_bbox: tuple[int, int, int, int],
    x: float,
    y: float,
) -> npt.NDArray[np.float64]:
    """Unnormalised linear-combination kernel image at (x, y), as the native mapper evaluates it."""

def convolve_masked_image(
    in_image: _FloatArray,
    in_variance: _FloatArray,
    in_mask: _MaskArray | None,
    kernel: npt.NDArray[np.float64],
    do_normalize: bool,
    do_copy_edge: bool,
    edge_bit: int,
    no_data_bit: int,
    out_image: _FloatArray,
    out_variance: _FloatArray,
    out_mask: _MaskArray | None,
    parallel: bool = True,
) -> None:
    """Direct convolution with afw semantics (see ``diffcal/convolve.hpp``); outputs must not
    overlap the inputs."""
