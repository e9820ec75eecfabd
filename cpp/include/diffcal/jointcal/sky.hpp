// Sky geometry for jointcal: gnomonic (TAN) tangent planes, TAN-SIP WCS evaluation and proper motions.
//
// Conventions
// -----------
// * Sky positions are (RA, Dec) in degrees unless a name says otherwise.
// * Tangent-plane (TP) coordinates are gnomonic standard coordinates (xi, eta) expressed in **degrees**
//   (radians times 180/pi), xi increasing with RA (east), eta with Dec (north). This is also what a FITS
//   TAN projection with the default LONPOLE calls intermediate world coordinates.
// * Pixel positions are 0-based (the centre of the first pixel is 0,0), as in LSST afw.
#pragma once

#include <array>
#include <vector>

namespace diffcal::jointcal {

constexpr double kPi = 3.14159265358979323846;
constexpr double kDegToRad = kPi / 180.0;
constexpr double kRadToDeg = 180.0 / kPi;
constexpr double kArcsecToDeg = 1.0 / 3600.0;
constexpr double kMasToDeg = 1.0 / 3.6e6;

/// Unit vector of (ra, dec) in degrees.
std::array<double, 3> unitVector(double raDeg, double decDeg);

/// (ra, dec) in degrees of a (not necessarily unit) vector; ra in [0, 360).
void vectorToRaDec(std::array<double, 3> const& v, double& raDeg, double& decDeg);

/// Gnomonic projection about a tangent point.
///
/// project() maps (ra, dec) [deg] to standard coordinates (xi, eta) [deg]; deproject() is its inverse.
/// Points more than 90 degrees from the tangent point have no projection (project() returns false).
class Gnomonic {
public:
    Gnomonic() : Gnomonic(0.0, 0.0) {}
    Gnomonic(double ra0Deg, double dec0Deg);

    double ra0() const { return _ra0; }
    double dec0() const { return _dec0; }

    /// Project (ra, dec) [deg]. If jac is non-null it receives d(xi,eta)/d(ra,dec) (row-major 2x2,
    /// deg/deg). Returns false (outputs untouched) if the point is on the far hemisphere.
    bool project(double raDeg, double decDeg, double& xi, double& eta, double* jac = nullptr) const;

    /// Project a unit vector p with optional derivative vectors dp/dra and dp/ddec (per radian); jac as in
    /// project(). Used with star vectors precomputed once per pass.
    bool projectUnit(double const* p, double const* dpr, double const* dpd, double& xi, double& eta,
                     double* jac) const {
        double const a = p[0] * _ex[0] + p[1] * _ex[1] + p[2] * _ex[2];
        double const b = p[0] * _ey[0] + p[1] * _ey[1] + p[2] * _ey[2];
        double const c = p[0] * _n[0] + p[1] * _n[1] + p[2] * _n[2];
        if (!(c > 0.0)) return false;
        double const ic = 1.0 / c;
        xi = a * ic * kRadToDeg;
        eta = b * ic * kRadToDeg;
        if (jac) {
            double const dar = dpr[0] * _ex[0] + dpr[1] * _ex[1] + dpr[2] * _ex[2];
            double const dad = dpd[0] * _ex[0] + dpd[1] * _ex[1] + dpd[2] * _ex[2];
            double const dbr = dpr[0] * _ey[0] + dpr[1] * _ey[1] + dpr[2] * _ey[2];
            double const dbd = dpd[0] * _ey[0] + dpd[1] * _ey[1] + dpd[2] * _ey[2];
            double const dcr = dpr[0] * _n[0] + dpr[1] * _n[1] + dpr[2] * _n[2];
            double const dcd = dpd[0] * _n[0] + dpd[1] * _n[1] + dpd[2] * _n[2];
            double const ic2 = ic * ic;
            jac[0] = (dar * c - a * dcr) * ic2;
            jac[1] = (dad * c - a * dcd) * ic2;
            jac[2] = (dbr * c - b * dcr) * ic2;
            jac[3] = (dbd * c - b * dcd) * ic2;
        }
        return true;
    }

    /// Unit vector of (ra, dec) [deg] and its derivatives with respect to ra and dec (per radian).
    static void unitWithDerivatives(double raDeg, double decDeg, double* p, double* dpr, double* dpd);

    /// Inverse projection: (xi, eta) [deg] -> (ra, dec) [deg].
    void deproject(double xi, double eta, double& raDeg, double& decDeg) const;

    /// Derivative of the projection of a fixed point p with respect to the tangent point (ra0, dec0):
    /// jac = d(xi,eta)/d(ra0,dec0) (row-major 2x2, deg/deg), evaluated at this projection's centre.
    bool projectWithCentreDerivative(double raDeg, double decDeg, double& xi, double& eta, double* jacCentre) const;

private:
    double _ra0, _dec0;
    std::array<double, 3> _n, _ex, _ey;  // centre, east and north unit vectors
    double _sinDec0, _cosDec0;
};

/// A FITS TAN or TAN-SIP WCS (pixel -> sky only).
///
/// crpix is **0-based** (FITS CRPIX minus one); cd in deg/pixel, row-major [[CD1_1, CD1_2], [CD2_1, CD2_2]];
/// crval in degrees. SIP polynomials: a[p * (sipOrder + 1) + q] is A_p_q, the coefficient of u^p v^q with
/// (u, v) = pixel - crpix; sipOrder 0 means no distortion.
struct TanSipWcs {
    std::array<double, 2> crpix{0.0, 0.0};
    std::array<double, 4> cd{1.0, 0.0, 0.0, 1.0};
    std::array<double, 2> crval{0.0, 0.0};
    int sipOrder = 0;
    std::vector<double> a, b;

    /// Validate sizes and finiteness; throws std::invalid_argument.
    void validate() const;

    /// Pixel -> intermediate world coordinates (gnomonic standard coordinates, deg).
    void pixelToIwc(double x, double y, double& xi, double& eta) const;

    /// Pixel -> (ra, dec) [deg].
    void pixelToSky(double x, double y, double& raDeg, double& decDeg) const;
};

/// Move (ra, dec) [deg] along a great circle by a proper motion over dt years.
///
/// pmRaCosDec and pmDec are in rad/yr (the RA component already multiplied by cos(dec)); the point moves by
/// |pm| * dt radians along the bearing of the motion (dt may be negative).
void applyProperMotion(double raDeg, double decDeg, double pmRaCosDec, double pmDec, double dtYears,
                       double& raOut, double& decOut);

/// Julian epoch (years, e.g. 2006.38) of a TAI date given in nanoseconds since 1970-01-01T00:00:00 TAI.
double julianEpochFromTaiNs(double taiNs);

}  // namespace diffcal::jointcal
