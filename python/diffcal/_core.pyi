"""Type stubs of ``diffcal._core``, the compiled C++ core (pybind11; see ``cpp/bindings/``).

Use the Python API (``diffcal.statistics``, ``diffcal.cli``, ...) rather than calling these
directly: the wrappers validate and convert their inputs, the core does not convert dtypes
(a wrong dtype raises ``TypeError`` naming the argument).

Keep this file in step with ``cpp/bindings/*.cpp``: every name the module exposes is listed here
(``tests/test_cli.py`` checks it).
"""

from collections.abc import Sequence
from typing import TypedDict, final, type_check_only

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
