#include "diffcal/jointcal/association.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include "diffcal/parallel.hpp"

namespace diffcal::jointcal {

void MeasuredStars::resize(std::size_t n) {
    ccd.resize(n);
    sourceId.resize(n);
    inputRow.resize(n);
    for (auto* v : {&x, &y, &vx, &vy, &vxy, &instFlux, &instFluxErr, &flux, &fluxErr, &mag, &magErr, &instMag,
                    &instMagErr, &xFocal, &yFocal, &ctpX, &ctpY})
        v->resize(n);
    fitted.assign(n, -1);
    inFit.assign(n, 0);
    valid.assign(n, 0);
}

void FittedStars::clear() {
    x.clear();
    y.clear();
    flux.clear();
    mag.clear();
    nMeasurements.clear();
    ref.clear();
    alive.clear();
}

int FittedStars::add(double x0, double y0) {
    x.push_back(x0);
    y.push_back(y0);
    flux.push_back(0.0);
    mag.push_back(std::numeric_limits<double>::quiet_NaN());
    nMeasurements.push_back(0);
    ref.push_back(-1);
    alive.push_back(1);
    return int(x.size()) - 1;
}

double nJyToAbMag(double fluxNJy) { return -2.5 * std::log10(fluxNJy * 1e-9 / 3631.0); }

namespace {

/// Uniform grid over a plane with per-cell linked lists (insertion order kept per cell).
class GridIndex {
public:
    GridIndex(double xmin, double xmax, double ymin, double ymax, double cell, std::size_t expected) {
        if (!(xmax >= xmin) || !(ymax >= ymin)) xmin = xmax = ymin = ymax = 0.0;
        double const maxCells = 4.0 * double(expected) + 1024.0;
        for (;;) {
            _nx = std::int64_t((xmax - xmin) / cell) + 1;
            _ny = std::int64_t((ymax - ymin) / cell) + 1;
            if (double(_nx) * double(_ny) <= maxCells) break;
            cell *= 1.5;
        }
        _x0 = xmin;
        _y0 = ymin;
        _cell = cell;
        _head.assign(std::size_t(_nx * _ny), -1);
    }

    double cell() const { return _cell; }

    void insert(int id, double x, double y) {
        if (std::size_t(id) >= _next.size()) _next.resize(std::size_t(id) + 1, -1);
        std::int64_t const c = cellOf(x, y);
        // append at the tail to keep insertion order inside a cell
        _next[std::size_t(id)] = -1;
        if (_head[std::size_t(c)] < 0) {
            _head[std::size_t(c)] = id;
        } else {
            int k = _head[std::size_t(c)];
            while (_next[std::size_t(k)] >= 0) k = _next[std::size_t(k)];
            _next[std::size_t(k)] = id;
        }
    }

    /// Nearest inserted point within r (strictly smallest distance; first inserted wins ties).
    int nearest(double x, double y, double r, std::vector<double> const& xs, std::vector<double> const& ys,
                double& bestD2) const {
        std::int64_t const ix = clampX(x), iy = clampY(y);
        int best = -1;
        bestD2 = r * r;
        for (std::int64_t jy = std::max<std::int64_t>(0, iy - 1); jy <= std::min(_ny - 1, iy + 1); ++jy) {
            for (std::int64_t jx = std::max<std::int64_t>(0, ix - 1); jx <= std::min(_nx - 1, ix + 1); ++jx) {
                for (int k = _head[std::size_t(jy * _nx + jx)]; k >= 0; k = _next[std::size_t(k)]) {
                    double const dx = xs[std::size_t(k)] - x, dy = ys[std::size_t(k)] - y;
                    double const d2 = dx * dx + dy * dy;
                    if (d2 < bestD2 || (d2 == bestD2 && (best < 0 || k < best))) {
                        best = k;
                        bestD2 = d2;
                    }
                }
            }
        }
        return best;
    }

private:
    std::int64_t clampX(double x) const {
        double const f = std::floor((x - _x0) / _cell);
        return std::int64_t(std::clamp(f, 0.0, double(_nx - 1)));
    }
    std::int64_t clampY(double y) const {
        double const f = std::floor((y - _y0) / _cell);
        return std::int64_t(std::clamp(f, 0.0, double(_ny - 1)));
    }
    std::int64_t cellOf(double x, double y) const { return clampY(y) * _nx + clampX(x); }

    double _x0 = 0, _y0 = 0, _cell = 1;
    std::int64_t _nx = 1, _ny = 1;
    std::vector<int> _head, _next;
};

std::string ccdName(CcdImage const& c) {
    std::ostringstream s;
    s << "(visit " << c.visit << ", detector " << c.detector << ")";
    return s.str();
}

}  // namespace

Associations::Associations(std::vector<CcdImage> ccds, SourceInput const& src) : _ccds(std::move(ccds)) {
    std::size_t const n = src.x.size();
    for (auto const* v : {&src.y, &src.xErr, &src.yErr, &src.ixx, &src.iyy, &src.ixy, &src.instFlux, &src.instFluxErr}) {
        if (v->size() != n) throw std::invalid_argument("Associations: source arrays have different lengths");
    }
    if (src.ccd.size() != n || src.sourceId.size() != n)
        throw std::invalid_argument("Associations: source arrays have different lengths");
    int const nCcd = int(_ccds.size());
    for (auto const& c : _ccds) c.wcs.validate();
    // counting sort by CcdImage, keeping input order inside each
    std::vector<std::int64_t> count(std::size_t(nCcd) + 1, 0);
    for (std::size_t i = 0; i < n; ++i) {
        int const c = src.ccd[i];
        if (c < 0 || c >= nCcd) throw std::invalid_argument("Associations: source ccd index out of range");
        count[std::size_t(c) + 1]++;
    }
    // validity of each source
    std::vector<std::uint8_t> good(n, 0);
    std::vector<std::int64_t> dropped(std::size_t(nCcd), 0);
    std::vector<double> vxyAll(n);
    for (std::size_t i = 0; i < n; ++i) {
        double const vx = double(src.xErr[i]) * src.xErr[i], vy = double(src.yErr[i]) * src.yErr[i];
        double const vxy = src.ixy[i] * (vx + vy) / (src.ixx[i] + src.iyy[i]);
        vxyAll[i] = vxy;
        bool ok = std::isfinite(src.x[i]) && std::isfinite(src.y[i]) && std::isfinite(vx) && std::isfinite(vy) &&
                  std::isfinite(vxy) && vx >= 0.0 && vy >= 0.0 && vxy * vxy <= vx * vy;
        good[i] = ok ? 1 : 0;
        if (!ok) dropped[std::size_t(src.ccd[i])]++;
    }
    std::vector<std::int64_t> kept(std::size_t(nCcd) + 1, 0);
    for (std::size_t i = 0; i < n; ++i)
        if (good[i]) kept[std::size_t(src.ccd[i]) + 1]++;
    for (int c = 0; c < nCcd; ++c) kept[std::size_t(c) + 1] += kept[std::size_t(c)];
    std::size_t const nGood = std::size_t(kept[std::size_t(nCcd)]);
    _meas.resize(nGood);
    std::vector<std::int64_t> pos(kept.begin(), kept.end() - 1);
    for (std::size_t i = 0; i < n; ++i) {
        if (!good[i]) continue;
        int const c = src.ccd[i];
        std::size_t const k = std::size_t(pos[std::size_t(c)]++);
        CcdImage const& ccd = _ccds[std::size_t(c)];
        _meas.ccd[k] = c;
        _meas.sourceId[k] = src.sourceId[i];
        _meas.inputRow[k] = std::int64_t(i);
        _meas.x[k] = src.x[i];
        _meas.y[k] = src.y[i];
        _meas.vx[k] = double(src.xErr[i]) * src.xErr[i];
        _meas.vy[k] = double(src.yErr[i]) * src.yErr[i];
        _meas.vxy[k] = vxyAll[i];
        double const f = src.instFlux[i], fe = src.instFluxErr[i];
        _meas.instFlux[k] = f;
        _meas.instFluxErr[k] = fe;
        _meas.flux[k] = f * ccd.calibMean;
        _meas.fluxErr[k] = std::hypot(fe * ccd.calibMean, f * ccd.calibErr);
        _meas.mag[k] = nJyToAbMag(_meas.flux[k]);
        _meas.magErr[k] = 2.5 / std::log(10.0) * _meas.fluxErr[k] / _meas.flux[k];
        _meas.instMag[k] = -2.5 * std::log10(f);
        _meas.instMagErr[k] = 2.5 / std::log(10.0) * fe / f;
        if (ccd.hasFocal) {
            auto const& p = ccd.pixToFocal;
            _meas.xFocal[k] = p[0] * src.x[i] + p[1] * src.y[i] + p[4];
            _meas.yFocal[k] = p[2] * src.x[i] + p[3] * src.y[i] + p[5];
        } else {
            _meas.xFocal[k] = _meas.yFocal[k] = std::numeric_limits<double>::quiet_NaN();
        }
    }
    for (int c = 0; c < nCcd; ++c) {
        _ccds[std::size_t(c)].measBegin = kept[std::size_t(c)];
        _ccds[std::size_t(c)].measEnd = kept[std::size_t(c) + 1];
        if (dropped[std::size_t(c)] > 0) {
            _log.warn("Dropped " + std::to_string(dropped[std::size_t(c)]) + " sources of " +
                      ccdName(_ccds[std::size_t(c)]) +
                      " with a non-finite position, a negative variance or an invalid x/y covariance");
        }
    }
    // common tangent point: normalized vector mean of boresights (one entry per CcdImage)
    std::array<double, 3> s{0, 0, 0};
    for (auto const& c : _ccds) {
        auto const u = unitVector(c.boresightRa, c.boresightDec);
        for (int i = 0; i < 3; ++i) s[std::size_t(i)] += u[std::size_t(i)];
    }
    double ra = 0, dec = 0;
    if (!_ccds.empty()) vectorToRaDec(s, ra, dec);
    setCommonTangentPoint(ra, dec);
    double e = 0;
    for (auto const& c : _ccds) e += c.epoch;
    _epoch = _ccds.empty() ? 2000.0 : e / double(_ccds.size());
}

void Associations::setCommonTangentPoint(double raDeg, double decDeg) {
    _ctp = Gnomonic(raDeg, decDeg);
    computeCtpPositions();
}

void Associations::computeCtpPositions() {
    std::vector<std::int64_t> bad(_ccds.size(), 0);
    parallelFor(std::ptrdiff_t(_ccds.size()), [&](std::ptrdiff_t c) {
        CcdImage const& ccd = _ccds[std::size_t(c)];
        Gnomonic const wcsTp(ccd.wcs.crval[0], ccd.wcs.crval[1]);
        for (std::int64_t k = ccd.measBegin; k < ccd.measEnd; ++k) {
            double xi, eta, ra, dec;
            ccd.wcs.pixelToIwc(_meas.x[std::size_t(k)], _meas.y[std::size_t(k)], xi, eta);
            wcsTp.deproject(xi, eta, ra, dec);
            if (!_ctp.project(ra, dec, _meas.ctpX[std::size_t(k)], _meas.ctpY[std::size_t(k)])) {
                _meas.ctpX[std::size_t(k)] = _meas.ctpY[std::size_t(k)] = std::numeric_limits<double>::quiet_NaN();
                bad[std::size_t(c)]++;
            }
        }
    });
    for (std::size_t c = 0; c < _ccds.size(); ++c) {
        if (bad[c] > 0)
            _log.warn(std::to_string(bad[c]) + " sources of " + ccdName(_ccds[c]) +
                      " are more than 90 degrees from the common tangent point and are ignored");
    }
}

std::size_t Associations::associateCatalogs(double radiusArcsec) {
    double const radius = radiusArcsec * kArcsecToDeg;
    std::size_t const n = _meas.size();
    _fitted.clear();
    _fittedOnSky = false;
    for (std::size_t k = 0; k < _refs.size(); ++k) _refs.fitted[k] = -1;
    _refs = RefStars();
    double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
    std::size_t nOk = 0;
    for (std::size_t k = 0; k < n; ++k) {
        _meas.fitted[k] = -1;
        bool const ok = std::isfinite(_meas.ctpX[k]);
        _meas.inFit[k] = ok ? 1 : 0;
        _meas.valid[k] = ok ? 1 : 0;
        if (!ok) continue;
        ++nOk;
        xmin = std::min(xmin, _meas.ctpX[k]);
        xmax = std::max(xmax, _meas.ctpX[k]);
        ymin = std::min(ymin, _meas.ctpY[k]);
        ymax = std::max(ymax, _meas.ctpY[k]);
    }
    double const area = std::max((xmax - xmin) * (ymax - ymin), 0.0);
    double const cell = std::max(radius, nOk > 0 ? std::sqrt(area / double(nOk)) : radius);
    GridIndex grid(xmin, xmax, ymin, ymax, cell, nOk);
    std::vector<int> bestMeas;     // per fitted star: closest measurement of the current CcdImage
    std::vector<double> bestD2;
    std::vector<int> match;        // per measurement of the current CcdImage
    std::vector<double> matchD2;
    std::vector<int> touched;
    std::size_t nMatched = 0;
    for (std::size_t c = 0; c < _ccds.size(); ++c) {
        auto const b = std::size_t(_ccds[c].measBegin), e = std::size_t(_ccds[c].measEnd);
        match.assign(e - b, -1);
        matchD2.assign(e - b, 0.0);
        touched.clear();
        bestMeas.resize(_fitted.size(), -1);
        bestD2.resize(_fitted.size(), 0.0);
        for (std::size_t k = b; k < e; ++k) {
            if (!_meas.inFit[k]) continue;
            double d2;
            int const f = grid.nearest(_meas.ctpX[k], _meas.ctpY[k], radius, _fitted.x, _fitted.y, d2);
            if (f < 0) continue;
            match[k - b] = f;
            matchD2[k - b] = d2;
            if (bestMeas[std::size_t(f)] < 0) {
                touched.push_back(f);
                bestMeas[std::size_t(f)] = int(k);
                bestD2[std::size_t(f)] = d2;
            } else if (d2 < bestD2[std::size_t(f)]) {
                bestMeas[std::size_t(f)] = int(k);
                bestD2[std::size_t(f)] = d2;
            }
        }
        std::size_t const firstNew = _fitted.size();
        for (std::size_t k = b; k < e; ++k) {
            if (!_meas.inFit[k]) continue;
            int const f = match[k - b];
            if (f >= 0 && bestMeas[std::size_t(f)] == int(k)) {
                _meas.fitted[k] = f;
                _fitted.nMeasurements[std::size_t(f)]++;
                ++nMatched;
            } else {
                int const nf = _fitted.add(_meas.ctpX[k], _meas.ctpY[k]);
                _meas.fitted[k] = nf;
                _fitted.nMeasurements[std::size_t(nf)] = 1;
            }
        }
        for (int f : touched) bestMeas[std::size_t(f)] = -1;
        for (std::size_t f = firstNew; f < _fitted.size(); ++f) grid.insert(int(f), _fitted.x[f], _fitted.y[f]);
    }
    _log.info("Matched " + std::to_string(nMatched) + " measured stars to " + std::to_string(_fitted.size()) +
              " fitted stars (" + std::to_string(nOk) + " measured stars in " + std::to_string(_ccds.size()) +
              " CcdImages)");
    return _fitted.size();
}

std::size_t Associations::collectRefStars(RefInput const& in, double matchCutArcsec) {
    std::size_t const n = in.ra.size();
    for (auto const* v : {&in.dec, &in.vx, &in.vy, &in.flux, &in.fluxErr}) {
        if (v->size() != n) throw std::invalid_argument("collectRefStars: reference arrays have different lengths");
    }
    bool const hasPm = !in.pmRa.empty();
    if (hasPm && (in.pmRa.size() != n || in.pmDec.size() != n || in.pmRaErr.size() != n || in.pmDecErr.size() != n))
        throw std::invalid_argument("collectRefStars: proper-motion arrays have the wrong length");
    if (_fittedOnSky) throw std::logic_error("collectRefStars: fitted stars are already deprojected");
    for (std::size_t f = 0; f < _fitted.size(); ++f) _fitted.ref[f] = -1;
    _refs = RefStars();
    _refs.id = in.id.size() == n ? in.id : std::vector<std::int64_t>(n, 0);
    _refs.ra = in.ra;
    _refs.dec = in.dec;
    _refs.vx = in.vx;
    _refs.vy = in.vy;
    _refs.vxy.assign(n, 0.0);
    _refs.flux = in.flux;
    _refs.fluxErr = in.fluxErr;
    _refs.mag.resize(n);
    _refs.magErr.resize(n);
    _refs.pmRa.assign(n, 0.0);
    _refs.pmDec.assign(n, 0.0);
    _refs.pmRaErr.assign(n, 0.0);
    _refs.pmDecErr.assign(n, 0.0);
    _refs.hasPm.assign(n, 0);
    _refs.ctpX.resize(n);
    _refs.ctpY.resize(n);
    _refs.fitted.assign(n, -1);
    for (std::size_t r = 0; r < n; ++r) {
        _refs.mag[r] = nJyToAbMag(in.flux[r]);
        _refs.magErr[r] = 2.5 / std::log(10.0) * in.fluxErr[r] / in.flux[r];
        if (hasPm && std::isfinite(in.pmRa[r]) && std::isfinite(in.pmDec[r])) {
            _refs.pmRa[r] = in.pmRa[r];
            _refs.pmDec[r] = in.pmDec[r];
            _refs.pmRaErr[r] = in.pmRaErr[r];
            _refs.pmDecErr[r] = in.pmDecErr[r];
            _refs.hasPm[r] = 1;
        }
        if (!_ctp.project(in.ra[r], in.dec[r], _refs.ctpX[r], _refs.ctpY[r])) {
            _refs.ctpX[r] = _refs.ctpY[r] = std::numeric_limits<double>::quiet_NaN();
        }
    }
    double const cut = matchCutArcsec * kArcsecToDeg;
    double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
    for (std::size_t f = 0; f < _fitted.size(); ++f) {
        xmin = std::min(xmin, _fitted.x[f]);
        xmax = std::max(xmax, _fitted.x[f]);
        ymin = std::min(ymin, _fitted.y[f]);
        ymax = std::max(ymax, _fitted.y[f]);
    }
    double const area = std::max((xmax - xmin) * (ymax - ymin), 0.0);
    double const cell =
        std::max(cut, _fitted.size() > 0 ? std::sqrt(area / double(_fitted.size())) : cut);
    GridIndex grid(xmin, xmax, ymin, ymax, cell, _fitted.size());
    for (std::size_t f = 0; f < _fitted.size(); ++f) grid.insert(int(f), _fitted.x[f], _fitted.y[f]);
    std::vector<int> bestRef(_fitted.size(), -1);
    std::vector<double> bestD2(_fitted.size(), 0.0);
    for (std::size_t r = 0; r < n; ++r) {
        if (!std::isfinite(_refs.ctpX[r])) continue;
        double d2;
        int const f = grid.nearest(_refs.ctpX[r], _refs.ctpY[r], cut, _fitted.x, _fitted.y, d2);
        if (f < 0) continue;
        if (bestRef[std::size_t(f)] < 0 || d2 < bestD2[std::size_t(f)]) {
            bestRef[std::size_t(f)] = int(r);
            bestD2[std::size_t(f)] = d2;
        }
    }
    std::size_t nAssoc = 0;
    for (std::size_t f = 0; f < _fitted.size(); ++f) {
        int const r = bestRef[f];
        if (r < 0) continue;
        _fitted.ref[f] = r;
        _refs.fitted[std::size_t(r)] = int(f);
        ++nAssoc;
    }
    _log.info("Associated " + std::to_string(nAssoc) + " reference stars among " + std::to_string(n));
    return n;
}

void Associations::prepareFittedStars(int minMeasurements) {
    if (_fittedOnSky) throw std::logic_error("prepareFittedStars: fitted stars are already deprojected");
    std::size_t const nBefore = _fitted.size();
    std::size_t const n = _meas.size();
    for (std::size_t k = 0; k < n; ++k) {
        if (!_meas.inFit[k]) continue;
        int const f = _meas.fitted[k];
        if (f < 0) {
            _meas.inFit[k] = 0;
            continue;
        }
        if (_fitted.ref[std::size_t(f)] < 0 && _fitted.nMeasurements[std::size_t(f)] < minMeasurements) {
            _meas.inFit[k] = 0;
            _meas.valid[k] = 0;
            _meas.fitted[k] = -1;
        }
    }
    // recount, then compact the fitted list
    std::vector<int> count(_fitted.size(), 0);
    std::vector<double> sx(_fitted.size(), 0.0), sy(_fitted.size(), 0.0), sf(_fitted.size(), 0.0);
    for (std::size_t k = 0; k < n; ++k) {
        if (!_meas.inFit[k]) continue;
        auto const f = std::size_t(_meas.fitted[k]);
        count[f]++;
        sx[f] += _meas.ctpX[k];
        sy[f] += _meas.ctpY[k];
        sf[f] += _meas.flux[k];
    }
    std::vector<int> remap(_fitted.size(), -1);
    FittedStars out;
    for (std::size_t f = 0; f < _fitted.size(); ++f) {
        if (count[f] == 0) {
            if (_fitted.ref[f] >= 0) _refs.fitted[std::size_t(_fitted.ref[f])] = -1;
            continue;
        }
        int const nf = out.add(sx[f] / count[f], sy[f] / count[f]);
        remap[f] = nf;
        out.nMeasurements[std::size_t(nf)] = count[f];
        out.flux[std::size_t(nf)] = sf[f] / count[f];
        out.mag[std::size_t(nf)] = nJyToAbMag(out.flux[std::size_t(nf)]);
        out.ref[std::size_t(nf)] = _fitted.ref[f];
        if (_fitted.ref[f] >= 0) _refs.fitted[std::size_t(_fitted.ref[f])] = nf;
    }
    for (std::size_t k = 0; k < n; ++k) {
        if (_meas.fitted[k] >= 0) _meas.fitted[k] = remap[std::size_t(_meas.fitted[k])];
    }
    _fitted = std::move(out);
    _log.info("Fitted stars before measurement # cut: " + std::to_string(nBefore));
    _log.info("Fitted stars after measurement # cut: " + std::to_string(_fitted.size()));
    std::size_t nValid = 0;
    for (std::size_t k = 0; k < n; ++k) nValid += _meas.inFit[k] ? 1 : 0;
    std::size_t const total = n;
    _log.info("Total, valid number of Measured stars: " + std::to_string(total) + ", " + std::to_string(nValid));
}

void Associations::deprojectFittedStars() {
    if (_fittedOnSky) return;
    for (std::size_t f = 0; f < _fitted.size(); ++f) {
        double ra, dec;
        _ctp.deproject(_fitted.x[f], _fitted.y[f], ra, dec);
        _fitted.x[f] = ra;
        _fitted.y[f] = dec;
    }
    _fittedOnSky = true;
}

std::size_t Associations::nFittedStars() const {
    std::size_t n = 0;
    for (auto a : _fitted.alive) n += a ? 1 : 0;
    return n;
}

std::size_t Associations::nFittedWithRef() const {
    std::size_t n = 0;
    for (std::size_t f = 0; f < _fitted.size(); ++f) n += (_fitted.alive[f] && _fitted.ref[f] >= 0) ? 1 : 0;
    return n;
}

std::size_t Associations::nCcdImagesWithData() const {
    std::size_t n = 0;
    for (auto const& c : _ccds) {
        for (std::int64_t k = c.measBegin; k < c.measEnd; ++k) {
            if (_meas.inFit[std::size_t(k)]) {
                ++n;
                break;
            }
        }
    }
    return n;
}

std::size_t Associations::nMeasurementsInFit() const {
    std::size_t n = 0;
    for (auto v : _meas.inFit) n += v ? 1 : 0;
    return n;
}

}  // namespace diffcal::jointcal
