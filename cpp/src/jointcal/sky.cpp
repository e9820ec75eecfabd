#include "diffcal/jointcal/sky.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

namespace diffcal::jointcal {

namespace {

inline double dot(std::array<double, 3> const& a, std::array<double, 3> const& b) {
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

}  // namespace

std::array<double, 3> unitVector(double raDeg, double decDeg) {
    double const ra = raDeg * kDegToRad, dec = decDeg * kDegToRad;
    double const cd = std::cos(dec);
    return {cd * std::cos(ra), cd * std::sin(ra), std::sin(dec)};
}

void vectorToRaDec(std::array<double, 3> const& v, double& raDeg, double& decDeg) {
    double const rho = std::hypot(v[0], v[1]);
    raDeg = (rho > 0.0) ? std::atan2(v[1], v[0]) * kRadToDeg : 0.0;
    if (raDeg < 0.0) raDeg += 360.0;
    if (raDeg >= 360.0) raDeg -= 360.0;
    decDeg = std::atan2(v[2], rho) * kRadToDeg;
}

Gnomonic::Gnomonic(double ra0Deg, double dec0Deg) : _ra0(ra0Deg), _dec0(dec0Deg) {
    double const ra = ra0Deg * kDegToRad, dec = dec0Deg * kDegToRad;
    double const ca = std::cos(ra), sa = std::sin(ra);
    _sinDec0 = std::sin(dec);
    _cosDec0 = std::cos(dec);
    _n = {_cosDec0 * ca, _cosDec0 * sa, _sinDec0};
    _ex = {-sa, ca, 0.0};
    _ey = {-_sinDec0 * ca, -_sinDec0 * sa, _cosDec0};
}

bool Gnomonic::project(double raDeg, double decDeg, double& xi, double& eta, double* jac) const {
    double const ra = raDeg * kDegToRad, dec = decDeg * kDegToRad;
    double const ca = std::cos(ra), sa = std::sin(ra), cd = std::cos(dec), sd = std::sin(dec);
    std::array<double, 3> const p{cd * ca, cd * sa, sd};
    double const a = dot(p, _ex), b = dot(p, _ey), c = dot(p, _n);
    if (!(c > 0.0)) return false;
    xi = a / c * kRadToDeg;
    eta = b / c * kRadToDeg;
    if (jac) {
        // dp/dra = cd * (-sa, ca, 0); dp/ddec = (-sd ca, -sd sa, cd)   (radians; deg factors cancel)
        std::array<double, 3> const dpr{-cd * sa, cd * ca, 0.0};
        std::array<double, 3> const dpd{-sd * ca, -sd * sa, cd};
        double const dar = dot(dpr, _ex), dad = dot(dpd, _ex);
        double const dbr = dot(dpr, _ey), dbd = dot(dpd, _ey);
        double const dcr = dot(dpr, _n), dcd = dot(dpd, _n);
        double const ic2 = 1.0 / (c * c);
        jac[0] = (dar * c - a * dcr) * ic2;
        jac[1] = (dad * c - a * dcd) * ic2;
        jac[2] = (dbr * c - b * dcr) * ic2;
        jac[3] = (dbd * c - b * dcd) * ic2;
    }
    return true;
}

bool Gnomonic::projectWithCentreDerivative(double raDeg, double decDeg, double& xi, double& eta,
                                           double* jacCentre) const {
    auto const p = unitVector(raDeg, decDeg);
    double const a = dot(p, _ex), b = dot(p, _ey), c = dot(p, _n);
    if (!(c > 0.0)) return false;
    xi = a / c * kRadToDeg;
    eta = b / c * kRadToDeg;
    if (jacCentre) {
        // Derivatives of the frame with respect to the centre (alpha0, delta0):
        //   dn/dalpha = cos(d0) ex,  dn/ddelta = ey
        //   dex/dalpha = -(cos(d0) n - sin(d0) ey),  dex/ddelta = 0
        //   dey/dalpha = -sin(d0) ex,  dey/ddelta = -n
        double const daA = -_cosDec0 * c + _sinDec0 * b, daD = 0.0;
        double const dbA = -_sinDec0 * a, dbD = -c;
        double const dcA = _cosDec0 * a, dcD = b;
        double const ic2 = 1.0 / (c * c);
        jacCentre[0] = (daA * c - a * dcA) * ic2;
        jacCentre[1] = (daD * c - a * dcD) * ic2;
        jacCentre[2] = (dbA * c - b * dcA) * ic2;
        jacCentre[3] = (dbD * c - b * dcD) * ic2;
    }
    return true;
}

void Gnomonic::unitWithDerivatives(double raDeg, double decDeg, double* p, double* dpr, double* dpd) {
    double const ra = raDeg * kDegToRad, dec = decDeg * kDegToRad;
    double const ca = std::cos(ra), sa = std::sin(ra), cd = std::cos(dec), sd = std::sin(dec);
    p[0] = cd * ca;
    p[1] = cd * sa;
    p[2] = sd;
    dpr[0] = -cd * sa;
    dpr[1] = cd * ca;
    dpr[2] = 0.0;
    dpd[0] = -sd * ca;
    dpd[1] = -sd * sa;
    dpd[2] = cd;
}

void Gnomonic::deproject(double xi, double eta, double& raDeg, double& decDeg) const {
    double const x = xi * kDegToRad, y = eta * kDegToRad;
    std::array<double, 3> const v{_n[0] + x * _ex[0] + y * _ey[0], _n[1] + x * _ex[1] + y * _ey[1],
                                  _n[2] + x * _ex[2] + y * _ey[2]};
    vectorToRaDec(v, raDeg, decDeg);
}

void TanSipWcs::validate() const {
    auto finite = [](double v) { return std::isfinite(v); };
    for (double v : crpix)
        if (!finite(v)) throw std::invalid_argument("TanSipWcs: CRPIX is not finite");
    for (double v : cd)
        if (!finite(v)) throw std::invalid_argument("TanSipWcs: CD matrix is not finite");
    for (double v : crval)
        if (!finite(v)) throw std::invalid_argument("TanSipWcs: CRVAL is not finite");
    if (cd[0] * cd[3] - cd[1] * cd[2] == 0.0) throw std::invalid_argument("TanSipWcs: CD matrix is singular");
    if (sipOrder < 0 || sipOrder > 20) throw std::invalid_argument("TanSipWcs: SIP order must be in [0, 20]");
    std::size_t const n = sipOrder > 0 ? std::size_t((sipOrder + 1) * (sipOrder + 1)) : 0;
    if (a.size() != n || b.size() != n) {
        throw std::invalid_argument("TanSipWcs: SIP coefficient arrays must have (order+1)^2 = " + std::to_string(n) +
                                    " entries");
    }
    for (double v : a)
        if (!finite(v)) throw std::invalid_argument("TanSipWcs: SIP A coefficient is not finite");
    for (double v : b)
        if (!finite(v)) throw std::invalid_argument("TanSipWcs: SIP B coefficient is not finite");
}

void TanSipWcs::pixelToIwc(double x, double y, double& xi, double& eta) const {
    double u = x - crpix[0], v = y - crpix[1];
    if (sipOrder > 0) {
        int const n = sipOrder + 1;
        double du = 0.0, dv = 0.0;
        // Horner in v inside, powers of u outside.
        double up = 1.0;
        for (int p = 0; p < n; ++p) {
            double sa = 0.0, sb = 0.0;
            for (int q = n - 1 - p; q >= 0; --q) {
                sa = sa * v + a[std::size_t(p * n + q)];
                sb = sb * v + b[std::size_t(p * n + q)];
            }
            du += up * sa;
            dv += up * sb;
            up *= u;
        }
        u += du;
        v += dv;
    }
    xi = cd[0] * u + cd[1] * v;
    eta = cd[2] * u + cd[3] * v;
}

void TanSipWcs::pixelToSky(double x, double y, double& raDeg, double& decDeg) const {
    double xi, eta;
    pixelToIwc(x, y, xi, eta);
    Gnomonic(crval[0], crval[1]).deproject(xi, eta, raDeg, decDeg);
}

void applyProperMotion(double raDeg, double decDeg, double pmRaCosDec, double pmDec, double dtYears,
                       double& raOut, double& decOut) {
    double const pm = std::hypot(pmRaCosDec, pmDec);
    if (pm == 0.0 || dtYears == 0.0) {
        raOut = raDeg;
        decOut = decDeg;
        return;
    }
    double const ra = raDeg * kDegToRad, dec = decDeg * kDegToRad;
    double const ca = std::cos(ra), sa = std::sin(ra), cd = std::cos(dec), sd = std::sin(dec);
    std::array<double, 3> const p{cd * ca, cd * sa, sd};
    std::array<double, 3> const ex{-sa, ca, 0.0};
    std::array<double, 3> const ey{-sd * ca, -sd * sa, cd};
    double const te = pmRaCosDec / pm, tn = pmDec / pm;
    double const theta = pm * dtYears;
    double const c = std::cos(theta), s = std::sin(theta);
    std::array<double, 3> v;
    for (int i = 0; i < 3; ++i) v[std::size_t(i)] = c * p[std::size_t(i)] + s * (te * ex[std::size_t(i)] + tn * ey[std::size_t(i)]);
    vectorToRaDec(v, raOut, decOut);
}

double julianEpochFromTaiNs(double taiNs) {
    double const mjd = 40587.0 + taiNs / 8.64e13;
    return 2000.0 + (mjd - 51544.5) / 365.25;
}

}  // namespace diffcal::jointcal
