"""jointcal: joint astrometric (and, later, photometric) calibration of many visits.

Public API: `JointcalTask`, `JointcalConfig`, `simulate` (plus the input data classes `VisitSummary`,
`Camera`, `DetectorGeometry`, `TanSipWcs` and the file readers in `diffcal.jointcal.readers`).
Submodules are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "JointcalTask",
    "JointcalConfig",
    "simulate",
    "SimulatedSurvey",
    "VisitSummary",
    "Camera",
    "DetectorGeometry",
    "TanSipWcs",
]

_WHERE = {
    "JointcalTask": "task",
    "JointcalConfig": "config",
    "simulate": "simulation",
    "SimulatedSurvey": "simulation",
    "VisitSummary": "inputs",
    "Camera": "inputs",
    "DetectorGeometry": "inputs",
    "TanSipWcs": "wcs",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'diffcal.jointcal' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{where}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
