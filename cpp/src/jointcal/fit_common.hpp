// Internal to the jointcal fitters (astrometric fitter.cpp, photometric photometry_fitter.cpp): the
// pieces of FitterBase::minimize that do not depend on what is fitted.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "diffcal/jointcal/association.hpp"

namespace diffcal::jointcal::detail {

/// Outliers found in one pass: measurement indices, and fitted stars whose reference term is one.
struct OutlierSet {
    std::vector<std::int64_t> meas;  ///< measurement indices
    std::vector<int> refStars;       ///< fitted stars whose reference term is an outlier
    bool empty() const { return meas.empty() && refStars.empty(); }
};

/// Invalidate the outlier measurements (their stars lose one measurement) and detach the outlier
/// reference stars from their fitted stars.
inline void markOutliers(Associations& assoc, OutlierSet const& o) {
    auto& meas = assoc.measured();
    auto& fs = assoc.fitted();
    auto& refs = assoc.refs();
    for (std::int64_t k : o.meas) {
        meas.valid[std::size_t(k)] = 0;
        fs.nMeasurements[std::size_t(meas.fitted[std::size_t(k)])]--;
    }
    for (int f : o.refStars) {
        int const r = fs.ref[std::size_t(f)];
        if (r >= 0) refs.fitted[std::size_t(r)] = -1;
        fs.ref[std::size_t(f)] = -1;
    }
}

/// Kill the fitted stars left without measurements (detaching their reference stars); returns how many.
inline std::size_t removeDeadStars(Associations& assoc) {
    auto& fs = assoc.fitted();
    auto& refs = assoc.refs();
    std::size_t n = 0;
    for (std::size_t f = 0; f < fs.size(); ++f) {
        if (!fs.alive[f] || fs.nMeasurements[f] > 0) continue;
        fs.alive[f] = 0;
        if (fs.ref[f] >= 0) refs.fitted[std::size_t(fs.ref[f])] = -1;
        fs.ref[f] = -1;
        ++n;
    }
    return n;
}

/// Brent's minimisation of g over [lo, hi]: parabolic steps with golden-section safeguards, to a
/// relative tolerance relTol (the line search of spec 2.8 uses [-1, 2] and 2^-26).
template <typename Fn>
double brentMinimize(Fn g, double lo, double hi, double relTol) {
    double const gold = 0.3819660112501051;  // (3 - sqrt(5)) / 2
    double a = lo, b = hi, x = a + gold * (b - a), w = x, v = x;
    double fx = g(x), fw = fx, fv = fx, d = 0.0, e = 0.0;
    for (int it = 0; it < 100; ++it) {
        double const xm = 0.5 * (a + b), tol1 = relTol * std::abs(x) + 1e-10, tol2 = 2 * tol1;
        if (std::abs(x - xm) <= tol2 - 0.5 * (b - a)) break;
        bool golden = true;
        if (std::abs(e) > tol1) {
            double r = (x - w) * (fx - fv), q = (x - v) * (fx - fw), p = (x - v) * q - (x - w) * r;
            q = 2 * (q - r);
            if (q > 0) p = -p;
            q = std::abs(q);
            double const etemp = e;
            e = d;
            if (!(std::abs(p) >= std::abs(0.5 * q * etemp) || p <= q * (a - x) || p >= q * (b - x))) {
                d = p / q;
                double const u = x + d;
                if (u - a < tol2 || b - u < tol2) d = xm >= x ? tol1 : -tol1;
                golden = false;
            }
        }
        if (golden) {
            e = (x >= xm) ? a - x : b - x;
            d = gold * e;
        }
        double const u = std::abs(d) >= tol1 ? x + d : x + (d > 0 ? tol1 : -tol1);
        double const fu = g(u);
        if (fu <= fx) {
            (u >= x ? a : b) = x;
            v = w;
            fv = fw;
            w = x;
            fw = fx;
            x = u;
            fx = fu;
        } else {
            (u < x ? a : b) = u;
            if (fu <= fw || w == x) {
                v = w;
                fv = fw;
                w = u;
                fw = fu;
            } else if (fu <= fv || v == x || v == w) {
                v = u;
                fv = fu;
            }
        }
    }
    return x;
}

}  // namespace diffcal::jointcal::detail
