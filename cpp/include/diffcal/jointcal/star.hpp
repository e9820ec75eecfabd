// The jointcal data model: CcdImages, measured, fitted and reference stars, stored as flat arrays.
//
// Units: pixels (0-based) and pixel^2 for centroids and their covariances; counts for instrumental fluxes;
// nJy for calibrated fluxes; AB magnitudes; degrees for sky and tangent-plane positions; deg^2 for reference
// position variances (the RA variance is in degrees of RA, not of RA*cos(dec)); rad/yr for proper motions
// (RA component multiplied by cos(dec)); Julian years for epochs; mm for focal-plane positions.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "diffcal/jointcal/sky.hpp"

namespace diffcal::jointcal {

/// One log message produced by the core (forwarded to Python logging by the bindings).
struct LogRecord {
    int level;  ///< Python logging level: 10 DEBUG, 20 INFO, 30 WARNING, 40 ERROR
    std::string message;
};

/// Collects log records; the Python layer drains it after every call.
class LogBuffer {
public:
    void debug(std::string m) { _records.push_back({10, std::move(m)}); }
    void info(std::string m) { _records.push_back({20, std::move(m)}); }
    void warn(std::string m) { _records.push_back({30, std::move(m)}); }
    void error(std::string m) { _records.push_back({40, std::move(m)}); }
    std::vector<LogRecord> take() {
        std::vector<LogRecord> out;
        out.swap(_records);
        return out;
    }

private:
    std::vector<LogRecord> _records;
};

/// One detector of one visit.
struct CcdImage {
    std::int64_t visit = 0;
    std::int64_t detector = 0;
    std::array<double, 4> bbox{0, 0, 0, 0};  ///< minX, minY, maxX, maxY (inclusive integer pixel box)
    TanSipWcs wcs;                            ///< input ("read") WCS
    double epoch = 2000.0;                    ///< Julian year (TAI)
    double boresightRa = 0.0, boresightDec = 0.0;  ///< deg
    double calibMean = 1.0, calibErr = 0.0;  ///< input PhotoCalib, nJy/count
    bool hasFocal = false;                   ///< pixToFocal is known (camera geometry)
    std::array<double, 6> pixToFocal{0, 0, 0, 0, 0, 0};  ///< xf = p0 x + p1 y + p4; yf = p2 x + p3 y + p5 (mm)
    // derived
    std::int64_t measBegin = 0, measEnd = 0;  ///< measurement range [begin, end)
};

/// Measured stars (struct of arrays), grouped by CcdImage.
struct MeasuredStars {
    std::vector<int> ccd;
    std::vector<std::int64_t> sourceId, inputRow;
    std::vector<double> x, y, vx, vy, vxy;
    std::vector<double> instFlux, instFluxErr, flux, fluxErr, mag, magErr, instMag, instMagErr;
    std::vector<double> xFocal, yFocal;
    std::vector<double> ctpX, ctpY;   ///< common-tangent-plane position (deg)
    std::vector<int> fitted;          ///< FittedStar index or -1
    std::vector<std::uint8_t> inFit;  ///< in the fit catalog (after prepareFittedStars)
    std::vector<std::uint8_t> valid;  ///< not rejected as an outlier

    std::size_t size() const { return x.size(); }
    void resize(std::size_t n);
};

/// Fitted ("true") stars shared by their measurements.
struct FittedStars {
    std::vector<double> x, y;  ///< CTP deg before deprojection, (ra, dec) deg after
    std::vector<double> flux, mag;
    std::vector<int> nMeasurements;
    std::vector<int> ref;  ///< RefStar index or -1
    std::vector<std::uint8_t> alive;

    std::size_t size() const { return x.size(); }
    void clear();
    int add(double x0, double y0);
};

/// Reference-catalog stars.
struct RefStars {
    std::vector<std::int64_t> id;
    std::vector<double> ra, dec, vx, vy, vxy;
    std::vector<double> flux, fluxErr, mag, magErr;
    std::vector<double> pmRa, pmDec, pmRaErr, pmDecErr;
    std::vector<std::uint8_t> hasPm;
    std::vector<double> ctpX, ctpY;
    std::vector<int> fitted;  ///< FittedStar index or -1

    std::size_t size() const { return ra.size(); }
};

/// AB magnitude of a flux in nJy.
double nJyToAbMag(double fluxNJy);

}  // namespace diffcal::jointcal
