"""`JointcalConfig`: the configuration of `JointcalTask` (spec section 3).

Every field of the reference ``JointcalConfig`` that applies without the LSST butler is present with the
same name, default and meaning. Differences:

* The reference-catalog *loaders* (``astrometryRefObjLoader``, ``photometryRefObjLoader``) are replaced by
  `ReferenceCatalogConfig` fields ``astrometryReference`` / ``photometryReference`` (flux-column mapping,
  proper-motion requirement): catalogs are passed to `JointcalTask.run` as tables or files.
* ``sourceSelector`` is a registry with the ``science`` selector only.
* New fields (no reference counterpart): ``associationRadius`` (the reference hard-codes 3 arcsec, quirk 1),
  ``astrometrySolver`` and ``schurMaxModelParameters`` (solver choice), ``properMotionSignAsReference``
  (quirk 3), ``removeAllOutliersPerPass`` (faster outlier rejection), ``minSelectedSourcesPerDetector``,
  ``astrometryFocalScale``, ``outputWcsMaxInverseError``.
"""

from __future__ import annotations

import logging

from ..pipe import (
    ChoiceField,
    Config,
    ConfigDictField,
    ConfigField,
    ConfigurableField,
    DictField,
    Field,
    FieldValidationError,
    RangeField,
)
from .selectors import ReferenceSourceSelectorTask, sourceSelectorRegistry

__all__ = ["JointcalConfig", "ReferenceCatalogConfig", "ColortermLibraryConfig"]

_log = logging.getLogger("diffcal.jointcal")


class ColortermConfig(Config):
    """One color term: ``mag = primary + c0 + c1*(primary - secondary) + c2*(primary - secondary)**2``."""

    primary = Field(dtype=str, default="", doc="Primary reference band")
    secondary = Field(dtype=str, default="", doc="Secondary reference band")
    c0 = Field(dtype=float, default=0.0, doc="Constant term")
    c1 = Field(dtype=float, default=0.0, doc="Linear color coefficient")
    c2 = Field(dtype=float, default=0.0, doc="Quadratic color coefficient")


class ColortermDictConfig(Config):
    data = ConfigDictField(keytype=str, itemtype=ColortermConfig, default={},
                           doc="Physical filter -> color term")


class ColortermLibraryConfig(Config):
    """Reference-catalog name (glob) -> physical filter -> color term (LSST ``ColortermLibrary`` layout)."""

    data = ConfigDictField(keytype=str, itemtype=ColortermDictConfig, default={},
                           doc="Reference catalog name -> color terms per filter")


class ReferenceCatalogConfig(Config):
    """How to read a reference catalog given as a table (replaces the reference's loader config)."""

    anyFilterMapsToThis = Field(dtype=str, optional=True, default=None,
                                doc="Flux column family (``<name>_flux``) used whatever the filter")
    filterMap = DictField(keytype=str, itemtype=str, default={},
                          doc="Physical filter or band -> flux column family; default ``<band>``")
    requireProperMotion = Field(dtype=bool, default=False,
                                doc="Fail if the catalog has no proper motions (pm_ra/pm_dec)")


class JointcalConfig(Config):
    """Configuration of `JointcalTask`."""

    doAstrometry = Field(dtype=bool, default=True, doc="Fit astrometry and write the fitted WCS?")
    doPhotometry = Field(dtype=bool, default=True,
                         doc="Fit photometry and return the fitted PhotoCalib per (visit, detector)?")
    sourceFluxType = Field(dtype=str, default="apFlux_12_0",
                           doc="Source flux column family used for fitting; the science selector's S/N "
                               "fields and flux flag are derived from it in setDefaults only (as in the "
                               "reference): set sourceSelector['science'].signalToNoise too when changing it")
    positionErrorPedestal = Field(dtype=float, default=0.02,
                                  doc="Systematic term added in quadrature to centroid errors (pixels)")
    photometryErrorPedestal = Field(dtype=float, default=0.0,
                                    doc="Systematic term added in quadrature to flux errors (fraction of flux "
                                        "or magnitudes)")
    matchCut = Field(dtype=float, default=3.0, doc="Fitted <-> reference star match radius (arcsec)")
    associationRadius = Field(dtype=float, default=3.0,
                              doc="Measured <-> fitted star association radius (arcsec); the reference "
                                  "hard-codes 3.0 independently of matchCut")
    minMeasurements = Field(dtype=int, default=2,
                            doc="Minimum number of measurements of a fitted star without reference star")
    minMeasuredStarsPerCcd = Field(dtype=int, default=100,
                                   doc="Warn about CcdImages with fewer measured stars than this")
    minRefStarsPerCcd = Field(dtype=int, default=30,
                              doc="Warn about CcdImages with fewer reference stars than this")
    minSelectedSourcesPerDetector = Field(dtype=int, default=1,
                                          doc="Detectors with fewer selected sources are dropped (with a "
                                              "warning naming them)")
    allowLineSearch = Field(dtype=bool, default=False,
                            doc="Line search in the constrained photometric fit steps")
    astrometrySimpleOrder = Field(dtype=int, default=3, doc="Polynomial order of the simple astrometric model")
    astrometryChipOrder = Field(dtype=int, default=1, doc="Chip polynomial order of the constrained model")
    astrometryVisitOrder = Field(dtype=int, default=5, doc="Visit polynomial order of the constrained model")
    astrometryFocalScale = Field(dtype=float, default=0.0,
                                 doc="Focal-plane scale (mm) normalising the visit polynomials of the "
                                     "constrained model; <= 0: the largest |focal coordinate| of the camera")
    useInputWcs = Field(dtype=bool, default=True, doc="Initialise the simple model from the input WCS?")
    astrometryModel = ChoiceField(dtype=str, default="constrained", doc="Astrometric model",
                                  allowed={"simple": "one polynomial per CcdImage",
                                           "constrained": "chip polynomial composed with a visit polynomial"})
    photometryModel = ChoiceField(dtype=str, default="constrainedMagnitude", doc="Photometric model",
                                  allowed={"simpleFlux": "one scale factor per CcdImage",
                                           "constrainedFlux": "chip constant times visit Chebyshev (flux)",
                                           "simpleMagnitude": "one zero point per CcdImage",
                                           "constrainedMagnitude": "chip constant plus visit Chebyshev (mag)"})
    applyColorTerms = Field(dtype=bool, default=False, doc="Apply color terms to the photometric refcat")
    colorterms = ConfigField(dtype=ColortermLibraryConfig, doc="Color-term library")
    photometryVisitOrder = Field(dtype=int, default=7, doc="Chebyshev order of the per-visit photometric field")
    photometryDoRankUpdate = Field(dtype=bool, default=True,
                                   doc="Photometry: downdate the factorization in the outlier loop (else rebuild)")
    astrometryDoRankUpdate = Field(dtype=bool, default=True,
                                   doc="Astrometry: downdate the factorization in the outlier loop (else rebuild)")
    outlierRejectSigma = Field(dtype=float, default=5.0,
                               doc="Outlier cut: mean + outlierRejectSigma * std of the per-term chi2")
    astrometryOutlierRelativeTolerance = Field(
        dtype=float, default=0.0,
        doc="Stop the outlier loop when the cut changes by less than this fraction (0: until no outlier)")
    maxPhotometrySteps = Field(dtype=int, default=20, doc="Maximum photometric fit iterations")
    maxAstrometrySteps = Field(dtype=int, default=20, doc="Maximum astrometric fit iterations")
    astrometryReference = ConfigField(dtype=ReferenceCatalogConfig, doc="Astrometric reference catalog")
    photometryReference = ConfigField(dtype=ReferenceCatalogConfig, doc="Photometric reference catalog")
    sourceSelector = sourceSelectorRegistry.makeField(doc="Source selector", default="science")
    astrometryReferenceSelector = ConfigurableField(target=ReferenceSourceSelectorTask,
                                                    doc="Astrometric reference selector")
    photometryReferenceSelector = ConfigurableField(target=ReferenceSourceSelectorTask,
                                                    doc="Photometric reference selector")
    astrometryReferenceErr = Field(dtype=float, optional=True, default=None,
                                   doc="Reference position error (mas) replacing/supplying the catalog's "
                                       "coordinate errors")
    astrometrySolver = ChoiceField(dtype=str, default="auto", doc="Linear solver of the astrometric fit",
                                   allowed={"auto": "schur while the model has <= schurMaxModelParameters "
                                                    "parameters, else sparse",
                                            "schur": "eliminate stars, dense reduced model system",
                                            "sparse": "sparse LDL^T of the full system"})
    photometrySolver = ChoiceField(dtype=str, default="schur", doc="Linear solver of the photometric fit",
                                   allowed={"schur": "eliminate the 1x1 star blocks, dense reduced model system",
                                            "sparse": "sparse LDL^T of the full system"})
    photometryRefCatName = Field(dtype=str, optional=True, default=None,
                                 doc="Name of the photometric reference catalog, used to look up colour terms "
                                     "(applyColorTerms); None: the first library entry with the filter")
    schurMaxModelParameters = RangeField(dtype=int, default=20000, min=0,
                                         doc="Largest model size for which 'auto' picks the Schur solver")
    properMotionSignAsReference = Field(
        dtype=bool, default=False,
        doc="Apply reference proper motions with the reference's sign (fitEpoch - ccdEpoch, quirk 3) instead of "
            "moving stars to the exposure epoch")
    removeAllOutliersPerPass = Field(
        dtype=bool, default=False,
        doc="Reject every term above the cut in each outlier pass (faster; the reference rejects at most one "
            "per parameter group per pass)")
    outputWcsMaxInverseError = Field(dtype=float, default=1e-3,
                                     doc="Tolerance (pixels) of the inverse SIP polynomials of the output WCS")
    writeInitMatrix = Field(dtype=bool, default=False,
                            doc="Write the dense normal matrix and right-hand side before and after the "
                                "initialization steps (<debugOutputPath>/<astrometry|photometry>_<pre|post>init-"
                                "<tract>_<filter>-mat.txt / -grad.txt); skipped above 2e8 entries")
    writeChi2FilesInitialFinal = Field(dtype=bool, default=False,
                                       doc="Write per-term chi2 files for the initial and final fits")
    writeChi2FilesOuterLoop = Field(dtype=bool, default=False,
                                    doc="Write per-term chi2 files for every initialization step and iteration")
    writeInitialModel = Field(dtype=bool, default=False, doc="Write the initial model (JSON)")
    debugOutputPath = Field(dtype=str, default=".", doc="Directory of the debug files")
    detailedProfile = Field(dtype=bool, default=False, doc="Write cProfile files for loading and fitting")

    def setDefaults(self) -> None:
        super().setDefaults()
        sel = self.sourceSelector["science"]
        sel.doRequirePrimary = True
        sel.doUnresolved = True
        sel.unresolved.name = "sizeExtendedness"
        sel.doSignalToNoise = True
        sel.signalToNoise.minimum = 10.0
        sel.signalToNoise.fluxField = f"{self.sourceFluxType}_instFlux"
        sel.signalToNoise.errField = f"{self.sourceFluxType}_instFluxErr"
        sel.doIsolated = True
        sel.isolated.parentName = "parentSourceId"
        sel.isolated.nChildName = "deblend_nChild"
        sel.doFlags = True
        sel.flags.bad = [
            "pixelFlags_edge", "pixelFlags_saturated", "pixelFlags_interpolatedCenter", "pixelFlags_interpolated",
            "pixelFlags_crCenter", "pixelFlags_bad", "hsmPsfMoments_flag", f"{self.sourceFluxType}_flag",
        ]
        sel.doRequireFiniteRaDec = True
        sel.requireFiniteRaDec.raColName = "ra"
        sel.requireFiniteRaDec.decColName = "dec"
        self.astrometryReference.requireProperMotion = True
        self.astrometryReference.anyFilterMapsToThis = "phot_g_mean"

    def validate(self) -> None:
        super().validate()
        if not self.doAstrometry and not self.doPhotometry:
            raise FieldValidationError(JointcalConfig.doAstrometry, self,
                                       "At least one of doAstrometry or doPhotometry must be set")
        if self.doPhotometry and self.applyColorTerms and len(self.colorterms.data) == 0:
            raise FieldValidationError(JointcalConfig.colorterms, self,
                                       "applyColorTerms=True requires the `colorterms` field be set to a "
                                       "ColortermLibrary.")
        if self.doAstrometry and not self.doPhotometry and self.applyColorTerms:
            _log.warning("Only doing astrometry, but Colorterms are not applied for astrometry; "
                         "applyColorTerms=True will be ignored.")
        for name in ("astrometrySimpleOrder", "astrometryVisitOrder", "photometryVisitOrder"):
            if not 0 <= getattr(self, name) <= 12:
                raise FieldValidationError(getattr(JointcalConfig, name), self, f"{name} must be in [0, 12]")
        if not 1 <= self.astrometryChipOrder <= 12:
            raise FieldValidationError(JointcalConfig.astrometryChipOrder, self,
                                       "astrometryChipOrder must be in [1, 12]")
        for name in ("maxAstrometrySteps", "maxPhotometrySteps", "minMeasurements"):
            if getattr(self, name) < 1:
                raise FieldValidationError(getattr(JointcalConfig, name), self, f"{name} must be >= 1")
        for name in ("matchCut", "associationRadius"):
            if not getattr(self, name) > 0:
                raise FieldValidationError(getattr(JointcalConfig, name), self, f"{name} must be > 0 arcsec")
        if self.positionErrorPedestal < 0:
            raise FieldValidationError(JointcalConfig.positionErrorPedestal, self,
                                       "positionErrorPedestal must be >= 0")
        if not self.photometryErrorPedestal >= 0:
            raise FieldValidationError(JointcalConfig.photometryErrorPedestal, self,
                                       "photometryErrorPedestal must be >= 0")
        if self.outlierRejectSigma < 0:
            raise FieldValidationError(JointcalConfig.outlierRejectSigma, self, "outlierRejectSigma must be >= 0")
        if self.astrometryReferenceErr is not None and not self.astrometryReferenceErr > 0:
            raise FieldValidationError(JointcalConfig.astrometryReferenceErr, self,
                                       "astrometryReferenceErr must be > 0 mas (or None)")
