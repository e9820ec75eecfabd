"""diffcal: LSST ImageMapReduce, Alard-Lupton kernel decorrelation and jointcal, without the LSST stack.

Submodules are imported lazily so that ``import diffcal`` stays cheap; the public names
below are resolved on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _dispatch

__version__ = "0.1.0"

# diffcal._core is the x86-64-v3 build of the core on CPUs that have AVX2/FMA (see _dispatch)
_dispatch.install()

_SUBMODULES = ("geom", "image", "psf", "kernel", "pipe", "statistics", "mapreduce", "convolve", "decorrelation", "cli")

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'diffcal' has no attribute {name!r}")
