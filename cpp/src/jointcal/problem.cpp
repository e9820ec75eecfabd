#include "problem.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "diffcal/parallel.hpp"

namespace diffcal::jointcal {

WhatToFit WhatToFit::parse(std::string const& s) {
    auto has = [&](char const* w) { return s.find(w) != std::string::npos; };
    WhatToFit w;
    bool const d = has("Distortions"), dv = has("DistortionsVisit"), dc = has("DistortionsChip");
    w.visit = d && (dv || !dc);
    w.chip = d && (dc || !dv);
    w.positions = has("Positions");
    w.pm = has("PM");
    if (!w.model() && !w.positions)
        throw std::invalid_argument("whatToFit '" + s + "' selects nothing: use Distortions[Visit|Chip] and/or Positions");
    return w;
}

namespace detail {

Problem::Problem(Associations& a, AstrometryModel& m, FitterOptions const& o) : assoc(a), model(m), opts(o) {
    if (!assoc.fittedOnSky())
        throw std::invalid_argument("AstrometryFitter: fitted stars must be deprojected to the sky first");
    if (model.nCcd() != assoc.ccdImages().size())
        throw std::invalid_argument("AstrometryFitter: the model and the associations have different CcdImages");
    if (!(opts.positionErrorPedestal >= 0.0)) throw std::invalid_argument("positionErrorPedestal must be >= 0");
    auto const& meas = assoc.measured();
    auto const& fs = assoc.fitted();
    // in-fit measurements on CcdImages without a mapping cannot be fitted
    std::size_t dropped = 0;
    for (std::size_t k = 0; k < meas.size(); ++k) {
        if (meas.inFit[k] && !model.hasMapping(std::size_t(meas.ccd[k]))) ++dropped;
    }
    if (dropped) throw std::invalid_argument("AstrometryFitter: " + std::to_string(dropped) +
                                             " measurements belong to CcdImages without an astrometric mapping");
    starMeasStart.assign(fs.size() + 1, 0);
    for (std::size_t k = 0; k < meas.size(); ++k)
        if (meas.inFit[k] && meas.fitted[k] >= 0) starMeasStart[std::size_t(meas.fitted[k]) + 1]++;
    for (std::size_t f = 0; f < fs.size(); ++f) starMeasStart[f + 1] += starMeasStart[f];
    starMeas.resize(std::size_t(starMeasStart[fs.size()]));
    std::vector<std::int64_t> pos(starMeasStart.begin(), starMeasStart.end() - 1);
    for (std::size_t k = 0; k < meas.size(); ++k)
        if (meas.inFit[k] && meas.fitted[k] >= 0) starMeas[std::size_t(pos[std::size_t(meas.fitted[k])]++)] = std::int64_t(k);
    layout.ccd.assign(model.nCcd(), CcdFit());
    layout.blockFit.assign(model.blocks().size(), -1);
    layout.starFit.assign(fs.size(), -1);
    constantMapping.assign(model.nCcd(), 0);
    for (std::size_t c = 0; c < model.nCcd(); ++c) {
        CcdMapping const& map = model.mappings()[c];
        if (map.blockA >= 0 && map.blockB < 0 && model.blocks()[std::size_t(map.blockA)].order == 0)
            constantMapping[c] = 1;
    }
}

void Problem::assignIndices(WhatToFit const& what) {
    layout.what = what;
    auto const& blocks = model.blocks();
    layout.blockFit.assign(blocks.size(), -1);
    int off = 0;
    for (std::size_t b = 0; b < blocks.size(); ++b) {
        MappingBlock const& blk = blocks[b];
        bool active = false;
        if (!blk.fixed) {
            if (blk.kind == MappingBlock::Ccd) active = what.model();
            else if (blk.kind == MappingBlock::Chip) active = what.chip;
            else active = what.visit;
        }
        if (active) {
            layout.blockFit[b] = off;
            off += blk.fitSize();
        }
    }
    layout.nModel = off;
    auto const& fs = assoc.fitted();
    layout.starFit.assign(fs.size(), -1);
    layout.fitStars.clear();
    if (what.positions) {
        for (std::size_t f = 0; f < fs.size(); ++f) {
            if (!fs.alive[f]) continue;
            layout.starFit[f] = int(layout.fitStars.size());
            layout.fitStars.push_back(int(f));
        }
    }
    layout.nTotal = std::int64_t(layout.nModel) + 2 * std::int64_t(layout.fitStars.size());
    layout.ccd.assign(model.nCcd(), CcdFit());
    for (std::size_t c = 0; c < model.nCcd(); ++c) {
        CcdMapping const& map = model.mappings()[c];
        CcdFit& cf = layout.ccd[c];
        int const parts[2] = {map.blockA, map.blockB};
        for (int p = 0; p < 2; ++p) {
            int const b = parts[p];
            if (b < 0 || layout.blockFit[std::size_t(b)] < 0) continue;
            cf.block[cf.n] = b;
            cf.part[cf.n] = p;
            cf.nP += blocks[std::size_t(b)].fitSize();
            cf.n++;
        }
        if (cf.n == 2 && layout.blockFit[std::size_t(cf.block[0])] > layout.blockFit[std::size_t(cf.block[1])]) {
            std::swap(cf.block[0], cf.block[1]);
            std::swap(cf.part[0], cf.part[1]);
        }
    }
    lastNTotal = layout.nTotal;
    std::ostringstream s;
    s << "assignIndices: now fitting";
    if (what.visit && what.chip) s << " Distortions";
    else if (what.visit) s << " DistortionsVisit";
    else if (what.chip) s << " DistortionsChip";
    if (what.positions) s << " Positions";
    log.info(s.str());
    log.debug("assignIndices: " + std::to_string(layout.nModel) + " model parameters, " +
              std::to_string(2 * layout.fitStars.size()) + " star parameters, " + std::to_string(layout.nTotal) +
              " in total");
}

State Problem::snapshot() const {
    State s;
    s.model = model.params();
    s.ra = assoc.fitted().x;
    s.dec = assoc.fitted().y;
    return s;
}

void Problem::restore(State const& s) {
    model.params() = s.model;
    assoc.fitted().x = s.ra;
    assoc.fitted().y = s.dec;
}

void Problem::starVectors(double const* ra, double const* dec, std::vector<StarVec>& out) const {
    auto const& fs = assoc.fitted();
    std::size_t const n = fs.size();
    out.resize(n);
    std::ptrdiff_t const chunk = 4096;
    std::ptrdiff_t const nTasks = std::ptrdiff_t((n + chunk - 1) / chunk);
    parallelFor(nTasks, [&](std::ptrdiff_t t) {
        std::size_t const b = std::size_t(t * chunk), e = std::min(n, b + std::size_t(chunk));
        auto const& refs = assoc.refs();
        for (std::size_t f = b; f < e; ++f) {
            if (!fs.alive[f]) continue;
            StarVec& sv = out[f];
            Gnomonic::unitWithDerivatives(ra[f], dec[f], sv.p, sv.dpr, sv.dpd);
            sv.pmNorm = 0.0;
            int const r = fs.ref[f];
            if (r >= 0 && refs.hasPm[std::size_t(r)]) {
                // east and north unit vectors are dpr / cos(dec) and dpd
                double const cd = std::cos(dec[f] * kDegToRad);
                double const pe = refs.pmRa[std::size_t(r)], pn = refs.pmDec[std::size_t(r)];
                for (int i = 0; i < 3; ++i) sv.pm[i] = pe * (cd > 0 ? sv.dpr[i] / cd : 0.0) + pn * sv.dpd[i];
                sv.pmNorm = std::hypot(pe, pn);
            }
        }
    });
}

View Problem::current(std::vector<StarVec>& storage) const {
    View v;
    v.model = model.params().data();
    v.ra = assoc.fitted().x.data();
    v.dec = assoc.fitted().y.data();
    starVectors(v.ra, v.dec, storage);
    v.sv = storage.data();
    return v;
}

View Problem::viewOf(State const& s, std::vector<StarVec>& storage) const {
    View v;
    v.model = s.model.data();
    v.ra = s.ra.data();
    v.dec = s.dec.data();
    starVectors(v.ra, v.dec, storage);
    v.sv = storage.data();
    return v;
}

namespace {

/// chi2 of residual r with covariance (c00, c01, c11): r^T C^-1 r with the explicit 2x2 inverse (as the
/// reference; one division, not the dependent chain of square roots and divisions of a whitening). NaN when
/// C is not positive definite or the result is not finite.
inline double chi2Term(double r0, double r1, double c00, double c01, double c11) {
    double const det = c00 * c11 - c01 * c01;
    double const chi2 = (c11 * r0 * r0 - 2.0 * c01 * r0 * r1 + c00 * r1 * r1) / det;
    bool const ok = c00 > 0.0 && det > 0.0 && std::isfinite(det) && std::isfinite(chi2);
    return ok ? chi2 : std::numeric_limits<double>::quiet_NaN();
}

/// Cholesky of a 2x2 covariance (c00, c01, c11) -> (l00, l10, l11); false if not positive definite.
inline bool chol2(double c00, double c01, double c11, double& l00, double& l10, double& l11) {
    if (!(c00 > 0.0) || !std::isfinite(c00)) return false;
    l00 = std::sqrt(c00);
    l10 = c01 / l00;
    double const d = c11 - l10 * l10;
    if (!(d > 0.0) || !std::isfinite(d)) return false;
    l11 = std::sqrt(d);
    return true;
}

}  // namespace

bool Problem::projectStar(std::size_t k, View const& v, double& px, double& py, double* jp) const {
    auto const& m = assoc.measured();
    auto const c = std::size_t(m.ccd[k]);
    auto const f = std::size_t(m.fitted[k]);
    CcdMapping const& map = model.mappings()[c];
    Gnomonic const& tp = model.visitTangentPlanes()[std::size_t(map.visitIndex)];
    StarVec const& s = v.sv[f];
    if (s.pmNorm > 0.0) {
        // great-circle move by theta = |pm| dt along pm (as applyProperMotion), with the short series of
        // cos and sin (theta < 1e-4 rad: exact to rounding); derivatives taken at the unmoved position
        double dt = assoc.ccdImages()[c].epoch - assoc.epoch();
        if (opts.referencePmSign) dt = -dt;
        double const th = s.pmNorm * dt, th2 = th * th;
        double const cth = 1.0 - th2 / 2.0 + th2 * th2 / 24.0;
        double const sOverPm = dt * (1.0 - th2 / 6.0 + th2 * th2 / 120.0);
        double const pp[3] = {cth * s.p[0] + sOverPm * s.pm[0], cth * s.p[1] + sOverPm * s.pm[1],
                              cth * s.p[2] + sOverPm * s.pm[2]};
        return tp.projectUnit(pp, s.dpr, s.dpd, px, py, jp);
    }
    return tp.projectUnit(s.p, s.dpr, s.dpd, px, py, jp);
}

bool Problem::evalMeas(std::size_t k, View const& v, bool jac, MeasEval& out, double* work, double* lin) const {
    auto const& m = assoc.measured();
    auto const c = std::size_t(m.ccd[k]);
    double px, py, jp[4];
    bool const ok = projectStar(k, v, px, py, jac ? jp : nullptr);
    if (!ok) return false;
    double mo[2], jpix[4];
    double dA[kMaxBlockParams * 2], dB[kMaxBlockParams * 2];
    CcdFit const& cf = layout.ccd[c];
    bool const needModelJac = jac && cf.n > 0;
    if (!jac) lin = nullptr;
    if (needModelJac) {
        model.transformWithDerivatives(c, v.model, m.x[k], m.y[k], mo, jpix, dA, dB, work, lin);
    } else {
        model.transform(c, v.model, m.x[k], m.y[k], mo, jpix);
    }
    double const r0 = px - mo[0], r1 = py - mo[1];
    if (constantMapping[c]) {
        // an order-0 mapping has no pixel dependence: propagate the errors with the input WCS's CD matrix
        auto const& cd = assoc.ccdImages()[c].wcs.cd;
        for (int i = 0; i < 4; ++i) jpix[i] = cd[std::size_t(i)];
    }
    double const p2 = opts.positionErrorPedestal * opts.positionErrorPedestal;
    double const v00 = m.vx[k] + p2, v11 = m.vy[k] + p2, v01 = m.vxy[k];
    double const t00 = jpix[0] * v00 + jpix[1] * v01, t01 = jpix[0] * v01 + jpix[1] * v11;
    double const t10 = jpix[2] * v00 + jpix[3] * v01, t11 = jpix[2] * v01 + jpix[3] * v11;
    double const c00 = t00 * jpix[0] + t01 * jpix[1];
    double const c01 = t00 * jpix[2] + t01 * jpix[3];
    double const c11 = t10 * jpix[2] + t11 * jpix[3];
    if (!jac) {
        out.e[0] = out.e[1] = std::numeric_limits<double>::quiet_NaN();
        out.chi2 = chi2Term(r0, r1, c00, c01, c11);
        return !std::isnan(out.chi2);
    }
    double l00 = 0.0, l10 = 0.0, l11 = 0.0;
    if (!chol2(c00, c01, c11, l00, l10, l11)) return false;
    double const i00 = 1.0 / l00, i11 = 1.0 / l11;
    double const e0 = r0 * i00;
    double const e1 = (r1 - l10 * e0) * i11;
    out.e[0] = e0;
    out.e[1] = e1;
    out.chi2 = e0 * e0 + e1 * e1;
    if (!std::isfinite(out.chi2)) return false;
    if (!jac) return true;
    int nP = 0;
    if (needModelJac) {
        auto const& blocks = model.blocks();
        for (int i = 0; i < cf.n; ++i) {
            double const* src = cf.part[i] == 0 ? dA : dB;
            MappingBlock const& blk = blocks[std::size_t(cf.block[i])];
            int const size = blk.fitSize();
            double* dst = out.Am + 2 * nP;
            for (int q = 0; q < size; ++q) {
                // residual derivative = -model derivative
                int const pq = blk.paramIndex(q);
                double const w0 = -src[2 * pq] * i00;
                double const w1 = (-src[2 * pq + 1] - l10 * w0) * i11;
                dst[2 * q] = w0;
                dst[2 * q + 1] = w1;
            }
            nP += size;
        }
    }
    out.nP = nP;
    // star derivatives: d r / d(ra, dec) = jp (row-major) -> whitened columns
    {
        double const a0 = jp[0] * i00;
        out.As[0] = a0;
        out.As[1] = (jp[2] - l10 * a0) * i11;
        double const b0 = jp[1] * i00;
        out.As[2] = b0;
        out.As[3] = (jp[3] - l10 * b0) * i11;
    }
    if (lin) {
        lin[8] = l00;
        lin[9] = l10;
        lin[10] = l11;
        for (int i = 0; i < 4; ++i) lin[11 + i] = out.As[i];
    }
    return true;
}

bool Problem::evalRef(std::size_t f, View const& v, bool jac, RefEval& out) const {
    auto const& fs = assoc.fitted();
    auto const& refs = assoc.refs();
    int const r = fs.ref[f];
    if (r < 0) return false;
    Gnomonic const g(v.ra[f], v.dec[f]);
    double xi, eta, jr[4], jc[4];
    if (!g.project(refs.ra[std::size_t(r)], refs.dec[std::size_t(r)], xi, eta, jr)) return false;
    double const vx = refs.vx[std::size_t(r)], vy = refs.vy[std::size_t(r)], vxy = refs.vxy[std::size_t(r)];
    double const t00 = jr[0] * vx + jr[1] * vxy, t01 = jr[0] * vxy + jr[1] * vy;
    double const t10 = jr[2] * vx + jr[3] * vxy, t11 = jr[2] * vxy + jr[3] * vy;
    double const c00 = t00 * jr[0] + t01 * jr[1];
    double const c01 = t00 * jr[2] + t01 * jr[3];
    double const c11 = t10 * jr[2] + t11 * jr[3];
    double l00 = 0.0, l10 = 0.0, l11 = 0.0;
    if (!chol2(c00, c01, c11, l00, l10, l11)) return false;
    double const i00 = 1.0 / l00, i11 = 1.0 / l11;
    double const e0 = -xi * i00;
    double const e1 = (-eta - l10 * e0) * i11;
    out.e[0] = e0;
    out.e[1] = e1;
    out.chi2 = e0 * e0 + e1 * e1;
    if (!std::isfinite(out.chi2)) return false;
    if (jac) {
        double x2, y2;
        g.projectWithCentreDerivative(refs.ra[std::size_t(r)], refs.dec[std::size_t(r)], x2, y2, jc);
        // d r / dF = -jc (row-major) -> whitened columns
        double const a0 = -jc[0] * i00;
        out.As[0] = a0;
        out.As[1] = (-jc[2] - l10 * a0) * i11;
        double const b0 = -jc[1] * i00;
        out.As[2] = b0;
        out.As[3] = (-jc[3] - l10 * b0) * i11;
    }
    return true;
}

void Problem::accumulateStar(int f, View const& v, bool withModel, bool withRhs, std::int64_t const* excl,
                             std::size_t nExcl, bool excludeRef, bool allInFit, StarAccum& acc, double* work) const {
    auto const& m = assoc.measured();
    auto const& blocks = model.blocks();
    acc.H[0] = acc.H[1] = acc.H[2] = 0.0;
    acc.b[0] = acc.b[1] = 0.0;
    acc.blocks.clear();
    acc.blockFit.clear();
    acc.gOff.clear();
    acc.nRows = 0;
    auto const b0 = std::size_t(starMeasStart[std::size_t(f)]), b1 = std::size_t(starMeasStart[std::size_t(f) + 1]);
    auto excluded = [&](std::int64_t k) { return nExcl > 0 && std::binary_search(excl, excl + nExcl, k); };
    if (withModel) {
        for (std::size_t i = b0; i < b1; ++i) {
            auto const k = std::size_t(starMeas[i]);
            if (!allInFit && (!m.valid[k] || excluded(std::int64_t(k)))) continue;
            CcdFit const& cf = layout.ccd[std::size_t(m.ccd[k])];
            for (int j = 0; j < cf.n; ++j) acc.blocks.push_back(cf.block[j]);
        }
        std::sort(acc.blocks.begin(), acc.blocks.end(),
                  [&](int a, int b) { return layout.blockFit[std::size_t(a)] < layout.blockFit[std::size_t(b)]; });
        acc.blocks.erase(std::unique(acc.blocks.begin(), acc.blocks.end()), acc.blocks.end());
        int off = 0;
        for (int b : acc.blocks) {
            acc.blockFit.push_back(layout.blockFit[std::size_t(b)]);
            acc.gOff.push_back(off);
            int const size = blocks[std::size_t(b)].fitSize();
            off += 2 * size;
            acc.nRows += size;
        }
        acc.G.assign(std::size_t(off), 0.0);
    }
    MeasEval ev;
    for (std::size_t i = b0; i < b1; ++i) {
        auto const k = std::size_t(starMeas[i]);
        if (!m.valid[k] || excluded(std::int64_t(k))) continue;
        if (!evalMeas(k, v, true, ev, work, linOut ? linOut + std::ptrdiff_t(kLinSize) * std::ptrdiff_t(k) : nullptr))
            continue;
        double const* As = ev.As;
        acc.H[0] += As[0] * As[0] + As[1] * As[1];
        acc.H[1] += As[2] * As[0] + As[3] * As[1];
        acc.H[2] += As[2] * As[2] + As[3] * As[3];
        if (withRhs) {
            acc.b[0] -= As[0] * ev.e[0] + As[1] * ev.e[1];
            acc.b[1] -= As[2] * ev.e[0] + As[3] * ev.e[1];
        }
        if (withModel) {
            CcdFit const& cf = layout.ccd[std::size_t(m.ccd[k])];
            int col = 0;
            for (int j = 0; j < cf.n; ++j) {
                int const b = cf.block[j];
                int const bf = layout.blockFit[std::size_t(b)];
                auto const it = std::lower_bound(acc.blockFit.begin(), acc.blockFit.end(), bf);
                std::size_t const pos = std::size_t(it - acc.blockFit.begin());
                int const size = blocks[std::size_t(b)].fitSize();
                double* g0 = acc.G.data() + acc.gOff[pos];
                double* g1 = g0 + size;
                double const* am = ev.Am + 2 * col;
                for (int q = 0; q < size; ++q) {
                    double const a0 = am[2 * q], a1 = am[2 * q + 1];
                    g0[q] += a0 * As[0] + a1 * As[1];
                    g1[q] += a0 * As[2] + a1 * As[3];
                }
                col += size;
            }
        }
    }
    if (!excludeRef && assoc.fitted().ref[std::size_t(f)] >= 0) {
        RefEval rv;
        if (evalRef(std::size_t(f), v, true, rv)) {
            double const* As = rv.As;
            acc.H[0] += As[0] * As[0] + As[1] * As[1];
            acc.H[1] += As[2] * As[0] + As[3] * As[1];
            acc.H[2] += As[2] * As[2] + As[3] * As[3];
            if (withRhs) {
                acc.b[0] -= As[0] * rv.e[0] + As[1] * rv.e[1];
                acc.b[1] -= As[2] * rv.e[0] + As[3] * rv.e[1];
            }
        }
    }
}

Chi2Result Problem::chi2(View const& v, std::vector<double>* measChi2, std::vector<double>* refChi2) {
    auto const& m = assoc.measured();
    auto const& fs = assoc.fitted();
    auto const& ccds = assoc.ccdImages();
    double const nan = std::numeric_limits<double>::quiet_NaN();
    if (measChi2) measChi2->assign(m.size(), nan);
    if (refChi2) refChi2->assign(fs.size(), nan);
    std::vector<double> sums(ccds.size(), 0.0);
    std::vector<std::int64_t> counts(ccds.size(), 0), failed(ccds.size(), 0);
    parallelFor(std::ptrdiff_t(ccds.size()), [&](std::ptrdiff_t ci) {
        auto const c = std::size_t(ci);
        if (!model.hasMapping(c)) return;
        // kPolyBatch measurements at a time: star projections one by one, then the mapping and the chi2 terms
        // in loops over the batch (vectorised); the same arithmetic, and order of the sum, as evalMeas
        constexpr int B = kPolyBatch;
        double s = 0.0;
        std::int64_t n = 0, bad = 0;
        std::int64_t const end = ccds[c].measEnd;
        double const p2 = opts.positionErrorPedestal * opts.positionErrorPedestal;
        bool const constant = constantMapping[c] != 0;
        auto const& cd = assoc.ccdImages()[c].wcs.cd;
        std::int64_t kk = ccds[c].measBegin;
        while (kk < end) {
            std::size_t idx[B];
            double xs[B], ys[B], pxs[B], pys[B];
            int nb = 0;
            for (; kk < end && nb < B; ++kk) {
                auto const k = std::size_t(kk);
                // the star vectors are read in random order: ask for one a few measurements ahead
                if (kk + 8 < end) __builtin_prefetch(&v.sv[std::size_t(m.fitted[k + 8])]);
                if (!m.inFit[k] || !m.valid[k]) continue;
                if (!projectStar(k, v, pxs[nb], pys[nb], nullptr)) {
                    ++bad;
                    continue;
                }
                idx[nb] = k;
                xs[nb] = m.x[k];
                ys[nb] = m.y[k];
                ++nb;
            }
            if (nb == 0) continue;
            for (int j = nb; j < B; ++j) {  // padding lanes (results unused)
                xs[j] = xs[0];
                ys[j] = ys[0];
            }
            double mo0[B], mo1[B], jpix[4][B];
            model.transformBatch(c, v.model, xs, ys, mo0, mo1, jpix);
            if (constant)
                for (int i = 0; i < 4; ++i)
                    for (int j = 0; j < B; ++j) jpix[i][j] = cd[std::size_t(i)];
            double chi2[B];
            for (int j = 0; j < nb; ++j) {
                std::size_t const k = idx[j];
                double const r0 = pxs[j] - mo0[j], r1 = pys[j] - mo1[j];
                double const v00 = m.vx[k] + p2, v11 = m.vy[k] + p2, v01 = m.vxy[k];
                double const t00 = jpix[0][j] * v00 + jpix[1][j] * v01, t01 = jpix[0][j] * v01 + jpix[1][j] * v11;
                double const t10 = jpix[2][j] * v00 + jpix[3][j] * v01, t11 = jpix[2][j] * v01 + jpix[3][j] * v11;
                double const c00 = t00 * jpix[0][j] + t01 * jpix[1][j];
                double const c01 = t00 * jpix[2][j] + t01 * jpix[3][j];
                double const c11 = t10 * jpix[2][j] + t11 * jpix[3][j];
                chi2[j] = chi2Term(r0, r1, c00, c01, c11);
            }
            for (int j = 0; j < nb; ++j) {
                if (std::isnan(chi2[j])) {
                    ++bad;
                    continue;
                }
                s += chi2[j];
                ++n;
                if (measChi2) (*measChi2)[idx[j]] = chi2[j];
            }
        }
        sums[c] = s;
        counts[c] = n;
        failed[c] = bad;
    });
    std::size_t const nf = fs.size();
    std::ptrdiff_t const chunk = 2048;
    std::ptrdiff_t const nTasks = std::ptrdiff_t((nf + chunk - 1) / chunk);
    std::vector<double> rsums(std::size_t(nTasks), 0.0);
    std::vector<std::int64_t> rcounts(std::size_t(nTasks), 0);
    parallelFor(nTasks, [&](std::ptrdiff_t t) {
        std::size_t const b = std::size_t(t * chunk), e = std::min(nf, b + std::size_t(chunk));
        RefEval rv;
        double s = 0.0;
        std::int64_t n = 0;
        for (std::size_t f = b; f < e; ++f) {
            if (!fs.alive[f] || fs.ref[f] < 0) continue;
            if (!evalRef(f, v, false, rv)) continue;
            s += rv.chi2;
            ++n;
            if (refChi2) (*refChi2)[f] = rv.chi2;
        }
        rsums[std::size_t(t)] = s;
        rcounts[std::size_t(t)] = n;
    });
    Chi2Result res;
    std::int64_t nTerms = 0, nBad = 0;
    for (std::size_t c = 0; c < ccds.size(); ++c) {
        res.chi2 += sums[c];
        nTerms += counts[c];
        nBad += failed[c];
    }
    for (std::size_t t = 0; t < rsums.size(); ++t) {
        res.chi2 += rsums[t];
        nTerms += rcounts[t];
    }
    if (nBad > 0)
        log.warn(std::to_string(nBad) +
                 " measurements skipped: their propagated covariance is not positive definite (or not projectable)");
    res.ndof = 2 * nTerms - lastNTotal;
    return res;
}

void Problem::applyStep(Eigen::VectorXd const& delta, double scale) {
    auto& P = model.params();
    auto const& blocks = model.blocks();
    for (std::size_t b = 0; b < blocks.size(); ++b) {
        int const off = layout.blockFit[b];
        if (off < 0) continue;
        for (int i = 0; i < blocks[b].fitSize(); ++i)
            P[std::size_t(blocks[b].offset + blocks[b].paramIndex(i))] += scale * delta[off + i];
    }
    auto& fs = assoc.fitted();
    for (std::size_t k = 0; k < layout.fitStars.size(); ++k) {
        auto const f = std::size_t(layout.fitStars[k]);
        fs.x[f] += scale * delta[std::ptrdiff_t(layout.nModel + 2 * std::int64_t(k))];
        fs.y[f] += scale * delta[std::ptrdiff_t(layout.nModel + 2 * std::int64_t(k) + 1)];
    }
}

std::string Problem::describeBlock(int b) const {
    MappingBlock const& blk = model.blocks()[std::size_t(b)];
    if (blk.kind == MappingBlock::Chip) return "detector " + std::to_string(blk.id) + " (chip mapping)";
    if (blk.kind == MappingBlock::Visit) return "visit " + std::to_string(blk.id) + " (visit mapping)";
    CcdImage const& c = assoc.ccdImages()[std::size_t(blk.id)];
    return "visit " + std::to_string(c.visit) + " detector " + std::to_string(c.detector) + " (CcdImage mapping)";
}

std::string Problem::describeParam(std::int64_t idx) const {
    if (idx < layout.nModel) {
        auto const& blocks = model.blocks();
        for (std::size_t b = 0; b < blocks.size(); ++b) {
            int const off = layout.blockFit[b];
            if (off >= 0 && idx >= off && idx < off + blocks[b].fitSize()) return describeBlock(int(b));
        }
        return "model parameter " + std::to_string(idx);
    }
    std::int64_t const k = (idx - layout.nModel) / 2;
    if (k >= 0 && std::size_t(k) < layout.fitStars.size()) {
        auto const f = std::size_t(layout.fitStars[std::size_t(k)]);
        std::ostringstream s;
        s.precision(10);
        s << "fitted star " << f << " (ra " << assoc.fitted().x[f] << ", dec " << assoc.fitted().y[f] << ", "
          << assoc.fitted().nMeasurements[f] << " measurements)";
        return s.str();
    }
    return "parameter " + std::to_string(idx);
}

}  // namespace detail
}  // namespace diffcal::jointcal
