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

