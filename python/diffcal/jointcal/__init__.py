"""jointcal: joint astrometric and photometric calibration of many visits.

Public API (the design's contract): `JointcalTask`, `JointcalConfig`, `simulate`; plus the input data classes
`VisitSummary`, `Camera`, `DetectorGeometry` and `TanSipWcs`. Submodules (imported lazily):

``config``      `JointcalConfig` (every applicable field of the reference), reference-catalog config
``selectors``   science source selector and reference selector
``inputs``      in-memory inputs of `JointcalTask.run`: `VisitSummary`, `Camera`, column tables
``readers``     INPUT_DIR readers (parquet source tables, visitSummary FITS, calexp WCS headers, refcat shards,
                camera) and the simulator's writer
``task``        `JointcalTask` (load, associate, fit sequence, outlier rejection loop, outputs)
``models``      `AstrometryModel`: evaluation, lossless JSON, TAN-SIP output WCS
``photometry``  the photometric fit: `PhotometryModel` (four models), association, fit sequence
``photocalib``  `PhotoCalib` per (visit, detector): constant or Chebyshev field, nJy/AB conversions, FITS
``wcs``         `TanSipWcs` (FITS TAN-SIP headers, 0-based pixels), `fitTanSip`, gnomonic projections
``simulation``  `simulate` (surveys with known truth) and `SimulatedSurvey.evaluate` (truth comparison)
``outputs``     writing a result directory (metrics.json, config, metadata, model, WCS files, plots)
``plots``       chi2/ndof per step, residual whisker maps (matplotlib)
``cli``         ``diffcal jointcal`` and ``diffcal simulate survey``

The numerical core (association, models, Jacobians, normal equations, Schur and sparse solvers) is C++ in
``diffcal._core._jointcal`` (``cpp/include/diffcal/jointcal``, photometry in ``photometry.hpp``).
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
