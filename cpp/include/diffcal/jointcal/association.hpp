// Associations: CcdImages and their catalogs, the common tangent plane, measured<->fitted and
// fitted<->reference matching, and the preparation of the fitted-star list.
//
// Differences from the reference (LSST jointcal Associations):
// * One uniform grid index over the common tangent plane serves all CcdImages (the reference scans the
//   whole fitted-star list once per CcdImage); the nearest fitted star within the radius is the same.
// * Measurements are stored as flat arrays grouped by CcdImage (input order kept within a CcdImage).
#pragma once

#include <cstdint>
#include <vector>

#include "diffcal/jointcal/star.hpp"

namespace diffcal::jointcal {

/// Raw per-source inputs of one load (all arrays of equal length; ccd indexes into the CcdImage list).
struct SourceInput {
    std::vector<int> ccd;
    std::vector<std::int64_t> sourceId;
    std::vector<double> x, y, xErr, yErr, ixx, iyy, ixy, instFlux, instFluxErr;
};

/// Reference-star inputs (positions at the fit epoch).
struct RefInput {
    std::vector<std::int64_t> id;
    std::vector<double> ra, dec, vx, vy, flux, fluxErr;
    std::vector<double> pmRa, pmDec, pmRaErr, pmDecErr;  ///< may be empty (no proper motions)
};

class Associations {
public:
    /// Load CcdImages and sources. Sources with a NaN synthesized x/y covariance, a negative variance or
    /// |vxy|^2 > vx*vy are dropped (one warning per CcdImage). The common tangent point is the normalized
    /// vector mean of the CcdImages' boresights, and every source gets its CTP position through the input WCS.
    Associations(std::vector<CcdImage> ccds, SourceInput const& sources);

    std::vector<CcdImage> const& ccdImages() const { return _ccds; }
    MeasuredStars const& measured() const { return _meas; }
    MeasuredStars& measured() { return _meas; }
    FittedStars const& fitted() const { return _fitted; }
    FittedStars& fitted() { return _fitted; }
    RefStars const& refs() const { return _refs; }
    RefStars& refs() { return _refs; }

    Gnomonic const& commonTangentPlane() const { return _ctp; }
    void setCommonTangentPoint(double raDeg, double decDeg);

    double epoch() const { return _epoch; }
    void setEpoch(double e) { _epoch = e; }

    /// Associate measurements into fitted stars (nearest within radius in the CTP; each fitted star keeps
    /// only its closest measurement per CcdImage; unmatched measurements start new fitted stars).
    /// Resets the fit catalogs and clears reference stars. Returns the number of fitted stars.
    std::size_t associateCatalogs(double radiusArcsec);

    /// Attach reference stars to fitted stars: nearest within matchCut in the CTP, each side keeping only its
    /// closest partner. Returns the number of reference stars collected (all of ref, before matching).
    std::size_t collectRefStars(RefInput const& ref, double matchCutArcsec);

    /// Drop measurements of fitted stars without a reference star and with fewer than minMeasurements
    /// measurements, then fitted stars without measurements; set fitted positions (mean CTP) and fluxes.
    void prepareFittedStars(int minMeasurements);

    /// Convert fitted-star positions from the CTP to (ra, dec) degrees.
    void deprojectFittedStars();
    bool fittedOnSky() const { return _fittedOnSky; }

    std::size_t nFittedStars() const;
    std::size_t nFittedWithRef() const;
    std::size_t nCcdImagesWithData() const;
    std::size_t nMeasurementsInFit() const;

    LogBuffer& log() { return _log; }

private:
    std::vector<CcdImage> _ccds;
    MeasuredStars _meas;
    FittedStars _fitted;
    RefStars _refs;
    Gnomonic _ctp;
    double _epoch = 2000.0;
    bool _fittedOnSky = false;
    LogBuffer _log;

    void computeCtpPositions();
};

}  // namespace diffcal::jointcal
