"""Source and reference-star selectors (re-implementations of the LSST ``science`` and reference selectors).

Each selector is a small `Task` whose ``run(columns, *, where="")`` returns a boolean mask over a column
table (a ``dict`` of numpy arrays, see `diffcal.jointcal.inputs.columnTable`). Column names are resolved with
`diffcal.jointcal.inputs.resolveColumn`, so both the current and the older capitalised ``sourceTable``
conventions work.

Deliberate differences from the reference (``lsst.meas.algorithms`` selectors):

* Only the cuts jointcal uses are implemented (flux limit, flags, unresolved, signal-to-noise, isolated,
  finite RA/Dec, primary; for references also magnitude limit and magnitude error).
* A flag column listed in ``flags.bad`` that is absent from the table is skipped with one warning per call
  (the reference fails with a KeyError); every other enabled cut needs its columns and raises
  `ValueError` naming the missing column and the config field that enables the cut.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..pipe import Config, ConfigField, Field, ListField, Task, makeRegistry
from .inputs import resolveColumn

__all__ = [
    "ScienceSourceSelectorConfig",
    "ScienceSourceSelectorTask",
    "ReferenceSourceSelectorConfig",
    "ReferenceSourceSelectorTask",
    "sourceSelectorRegistry",
]


class FluxLimitConfig(Config):
    fluxField = Field(dtype=str, default="slot_CalibFlux_instFlux", doc="Flux column")
    minimum = Field(dtype=float, optional=True, default=None, doc="Minimum flux (column units)")
    maximum = Field(dtype=float, optional=True, default=None, doc="Maximum flux (column units)")


class FlagsConfig(Config):
    good = ListField(dtype=str, default=[], doc="Columns that must be True")
    bad = ListField(dtype=str, default=[], doc="Columns that must be False")


class UnresolvedConfig(Config):
    name = Field(dtype=str, default="base_ClassificationExtendedness_value", doc="Extendedness column")
    minimum = Field(dtype=float, optional=True, default=None, doc="Minimum extendedness")
    maximum = Field(dtype=float, optional=True, default=0.5, doc="Maximum extendedness")


class SignalToNoiseConfig(Config):
    fluxField = Field(dtype=str, default="base_PsfFlux_instFlux", doc="Flux column")
    errField = Field(dtype=str, default="base_PsfFlux_instFluxErr", doc="Flux error column")
    minimum = Field(dtype=float, optional=True, default=None, doc="Minimum S/N")
    maximum = Field(dtype=float, optional=True, default=None, doc="Maximum S/N")


class IsolatedConfig(Config):
    parentName = Field(dtype=str, default="parent", doc="Parent id column (0 = not deblended)")
    nChildName = Field(dtype=str, default="deblend_nChild", doc="Number-of-children column")


class RequireFiniteRaDecConfig(Config):
    raColName = Field(dtype=str, default="coord_ra", doc="RA column")
    decColName = Field(dtype=str, default="coord_dec", doc="Dec column")


class RequirePrimaryConfig(Config):
    primaryColName = Field(dtype=str, default="detect_isPrimary", doc="Primary-detection column")


class MagLimitConfig(Config):
    fluxField = Field(dtype=str, default="flux", doc="Flux column (nJy) converted to an AB magnitude")
    minimum = Field(dtype=float, optional=True, default=None, doc="Minimum magnitude")
    maximum = Field(dtype=float, optional=True, default=None, doc="Maximum magnitude")


class MagErrorConfig(Config):
    magErrField = Field(dtype=str, default="mag_err", doc="Magnitude-error column")
    minimum = Field(dtype=float, optional=True, default=None, doc="Minimum magnitude error")
    maximum = Field(dtype=float, optional=True, default=None, doc="Maximum magnitude error")


def _column(cols: dict[str, np.ndarray], name: str, field: str, where: str) -> np.ndarray:
    c = resolveColumn(cols, name)
    if c is None:
        raise ValueError(f"{where}column {name!r} needed by {field} is not in the table "
                         f"(disable {field} or fix the column name)")
    return np.asarray(cols[c])


def _range(mask: np.ndarray, values: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        if lo is not None:
            mask &= values > lo
        if hi is not None:
            mask &= values < hi
    return mask


class ScienceSourceSelectorConfig(Config):
    doFluxLimit = Field(dtype=bool, default=False, doc="Apply the flux limit?")
    doFlags = Field(dtype=bool, default=False, doc="Apply the flag cuts?")
    doUnresolved = Field(dtype=bool, default=False, doc="Keep only unresolved sources?")
    doSignalToNoise = Field(dtype=bool, default=False, doc="Apply the S/N cut?")
    doIsolated = Field(dtype=bool, default=False, doc="Keep only isolated (not deblended) sources?")
    doRequireFiniteRaDec = Field(dtype=bool, default=False, doc="Require finite RA/Dec?")
    doRequirePrimary = Field(dtype=bool, default=False, doc="Keep only primary detections?")
    fluxLimit = ConfigField(dtype=FluxLimitConfig, doc="Flux limit")
    flags = ConfigField(dtype=FlagsConfig, doc="Flags")
    unresolved = ConfigField(dtype=UnresolvedConfig, doc="Unresolved cut")
    signalToNoise = ConfigField(dtype=SignalToNoiseConfig, doc="S/N cut")
    isolated = ConfigField(dtype=IsolatedConfig, doc="Isolation cut")
    requireFiniteRaDec = ConfigField(dtype=RequireFiniteRaDecConfig, doc="Finite RA/Dec")
    requirePrimary = ConfigField(dtype=RequirePrimaryConfig, doc="Primary detections")


class ScienceSourceSelectorTask(Task):
    """Select science sources (the reference's ``science`` source selector)."""

    ConfigClass = ScienceSourceSelectorConfig
    _DefaultName = "sourceSelector"

    def run(self, cols: dict[str, np.ndarray], *, where: str = "") -> np.ndarray:
        """Boolean mask of the selected rows.

        Parameters
        ----------
        cols : `dict` [`str`, `numpy.ndarray`]
            Column table.
        where : `str`
            Prefix for error messages (e.g. ``"visit 12: "``).
        """
        c = self.config
        n = len(next(iter(cols.values()))) if cols else 0
        mask = np.ones(n, dtype=bool)
        if c.doFluxLimit:
            mask = _range(mask, _column(cols, c.fluxLimit.fluxField, "doFluxLimit", where).astype(float),
                          c.fluxLimit.minimum, c.fluxLimit.maximum)
        if c.doFlags:
            missing = []
            for name in c.flags.bad:
                col = resolveColumn(cols, name)
                if col is None:
                    missing.append(name)
                    continue
                mask &= ~np.asarray(cols[col], dtype=bool)
            for name in c.flags.good:
                mask &= _column(cols, name, "doFlags (flags.good)", where).astype(bool)
            if missing:
                self.log.warning("%sflag columns %s are not in the table: those flag cuts are skipped", where, missing)
        if c.doUnresolved:
            mask = _range(mask, _column(cols, c.unresolved.name, "doUnresolved", where).astype(float),
                          c.unresolved.minimum, c.unresolved.maximum)
        if c.doSignalToNoise:
            f = _column(cols, c.signalToNoise.fluxField, "doSignalToNoise", where).astype(float)
            e = _column(cols, c.signalToNoise.errField, "doSignalToNoise", where).astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                mask = _range(mask, f / e, c.signalToNoise.minimum, c.signalToNoise.maximum)
        if c.doIsolated:
            parent = _column(cols, c.isolated.parentName, "doIsolated", where)
            nchild = _column(cols, c.isolated.nChildName, "doIsolated", where)
            mask &= (parent == 0) & (nchild == 0)
        if c.doRequireFiniteRaDec:
            ra = _column(cols, c.requireFiniteRaDec.raColName, "doRequireFiniteRaDec", where).astype(float)
            dec = _column(cols, c.requireFiniteRaDec.decColName, "doRequireFiniteRaDec", where).astype(float)
            mask &= np.isfinite(ra) & np.isfinite(dec)
        if c.doRequirePrimary:
            mask &= _column(cols, c.requirePrimary.primaryColName, "doRequirePrimary", where).astype(bool)
        return mask


sourceSelectorRegistry = makeRegistry(doc="Source selectors usable by jointcal")
sourceSelectorRegistry.register("science", ScienceSourceSelectorTask)


class ReferenceSourceSelectorConfig(Config):
    doMagLimit = Field(dtype=bool, default=False, doc="Apply a magnitude limit?")
    doFlags = Field(dtype=bool, default=False, doc="Apply flag cuts?")
    doUnresolved = Field(dtype=bool, default=False, doc="Keep only unresolved objects?")
    doSignalToNoise = Field(dtype=bool, default=False, doc="Apply a S/N cut?")
    doMagError = Field(dtype=bool, default=False, doc="Apply a magnitude-error cut?")
    doRequireFiniteRaDec = Field(dtype=bool, default=True, doc="Require finite coordinates?")
    magLimit = ConfigField(dtype=MagLimitConfig, doc="Magnitude limit")
    flags = ConfigField(dtype=FlagsConfig, doc="Flags")
    unresolved = ConfigField(dtype=UnresolvedConfig, doc="Unresolved cut")
    signalToNoise = ConfigField(dtype=SignalToNoiseConfig, doc="S/N cut")
    magError = ConfigField(dtype=MagErrorConfig, doc="Magnitude-error cut")
    requireFiniteRaDec = ConfigField(dtype=RequireFiniteRaDecConfig, doc="Finite coordinates")


class ReferenceSourceSelectorTask(Task):
    """Select reference objects (the reference's ``ReferenceSourceSelectorTask``)."""

    ConfigClass = ReferenceSourceSelectorConfig
    _DefaultName = "referenceSelector"

    def run(self, cols: dict[str, np.ndarray], *, where: str = "") -> np.ndarray:
        """Boolean mask of the selected reference objects (see `ScienceSourceSelectorTask.run`)."""
        c = self.config
        n = len(next(iter(cols.values()))) if cols else 0
        mask = np.ones(n, dtype=bool)
        if c.doMagLimit:
            flux = _column(cols, c.magLimit.fluxField, "doMagLimit", where).astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                mag = -2.5 * np.log10(flux * 1e-9 / 3631.0)
            mask = _range(mask, mag, c.magLimit.minimum, c.magLimit.maximum)
        if c.doFlags:
            for name in c.flags.bad:
                mask &= ~_column(cols, name, "doFlags (flags.bad)", where).astype(bool)
            for name in c.flags.good:
                mask &= _column(cols, name, "doFlags (flags.good)", where).astype(bool)
        if c.doUnresolved:
            mask = _range(mask, _column(cols, c.unresolved.name, "doUnresolved", where).astype(float),
                          c.unresolved.minimum, c.unresolved.maximum)
        if c.doSignalToNoise:
            f = _column(cols, c.signalToNoise.fluxField, "doSignalToNoise", where).astype(float)
            e = _column(cols, c.signalToNoise.errField, "doSignalToNoise", where).astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                mask = _range(mask, f / e, c.signalToNoise.minimum, c.signalToNoise.maximum)
        if c.doMagError:
            mask = _range(mask, _column(cols, c.magError.magErrField, "doMagError", where).astype(float),
                          c.magError.minimum, c.magError.maximum)
        if c.doRequireFiniteRaDec:
            ra = _column(cols, c.requireFiniteRaDec.raColName, "doRequireFiniteRaDec", where).astype(float)
            dec = _column(cols, c.requireFiniteRaDec.decColName, "doRequireFiniteRaDec", where).astype(float)
            mask &= np.isfinite(ra) & np.isfinite(dec)
        return mask


def selectorConfigDump(config: Any) -> dict[str, Any]:  # pragma: no cover - debugging helper
    """Plain-dict view of a selector config."""
    return config.toDict()
