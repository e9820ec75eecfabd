#include "diffcal/jointcal/fitter.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "diffcal/parallel.hpp"
#include "problem.hpp"

namespace diffcal::jointcal {

using detail::MeasEval;
using detail::OutlierSet;
using detail::Problem;
using detail::RefEval;
using detail::StarVec;
using detail::View;

namespace {

std::string fmtG(double v) {
    std::ostringstream s;
    s << v;  // default stream format (6 significant digits), as the reference logs
    return s.str();
}

/// Outlier search (spec 2.7): cut = mean + nSigma * std of the per-term chi2; walk down from the largest,
/// accepting a term only if none of its parameters was touched by a stronger accepted outlier.
OutlierSet findOutliers(Problem& pb, std::vector<double> const& mc, std::vector<double> const& rc, double nSigmaCut,
                        bool onePerGroup, double& cut) {
    auto const& meas = pb.assoc.measured();
    auto const& fs = pb.assoc.fitted();
    // mean and population std with an ordered reduction over fixed chunks
    auto reduce = [](std::vector<double> const& x, double& s1, double& s2, std::int64_t& n) {
        std::size_t const chunk = 65536;
        std::size_t const nTasks = (x.size() + chunk - 1) / chunk;
        std::vector<double> a(nTasks, 0.0), b(nTasks, 0.0);
        std::vector<std::int64_t> c(nTasks, 0);
        parallelFor(std::ptrdiff_t(nTasks), [&](std::ptrdiff_t t) {
            std::size_t const lo = std::size_t(t) * chunk, hi = std::min(x.size(), lo + chunk);
            double sa = 0.0, sb = 0.0;
            std::int64_t sc = 0;
            for (std::size_t i = lo; i < hi; ++i) {
                double const v = x[i];
                if (std::isnan(v)) continue;
                sa += v;
                sb += v * v;
                ++sc;
            }
            a[std::size_t(t)] = sa;  // one write per task (no false sharing)
            b[std::size_t(t)] = sb;
            c[std::size_t(t)] = sc;
        });
        for (std::size_t t = 0; t < nTasks; ++t) {
            s1 += a[t];
            s2 += b[t];
            n += c[t];
        }
    };
    double s1 = 0, s2 = 0;
    std::int64_t n = 0;
    reduce(mc, s1, s2, n);
    reduce(rc, s1, s2, n);
    OutlierSet out;
    cut = std::numeric_limits<double>::infinity();
    if (n == 0) return out;
    double const mean = s1 / double(n);
    double const var = std::max(0.0, s2 / double(n) - mean * mean);
    double const sigma = std::sqrt(var);
    cut = mean + nSigmaCut * sigma;
    // candidates above the cut, strongest first (ties: references after measurements, then index)
    struct Cand {
        double chi2;
        int kind;  // 0 measurement, 1 reference
        std::int64_t index;
    };
    std::vector<Cand> cand;
    for (std::size_t k = 0; k < mc.size(); ++k)
        if (!std::isnan(mc[k]) && mc[k] >= cut) cand.push_back({mc[k], 0, std::int64_t(k)});
    for (std::size_t f = 0; f < rc.size(); ++f)
        if (!std::isnan(rc[f]) && rc[f] >= cut) cand.push_back({rc[f], 1, std::int64_t(f)});
    auto const tSort = std::chrono::steady_clock::now();
    std::sort(cand.begin(), cand.end(), [](Cand const& a, Cand const& b) {
        if (a.chi2 != b.chi2) return a.chi2 > b.chi2;
        if (a.kind != b.kind) return a.kind < b.kind;
        return a.index < b.index;
    });
    pb.log.debug("findOutliers: chi2 per term mean " + fmtG(mean) + ", sigma " + fmtG(sigma) + ", cut " + fmtG(cut) +
                 ", " + std::to_string(cand.size()) + " terms above the cut");
    auto const& L = pb.layout;
    std::vector<std::uint8_t> blockTouched(pb.model.blocks().size(), 0), starTouched(fs.size(), 0);
    std::unordered_map<std::size_t, int> takenFromStar;
    std::int64_t skipped1 = 0, skipped0 = 0;
    for (Cand const& c : cand) {
        if (c.kind == 1) {
            auto const f = std::size_t(c.index);
            if (fs.nMeasurements[f] == 0) {
                ++skipped0;
                continue;
            }
            if (!L.positions()) continue;
            if (onePerGroup && starTouched[f]) continue;
            if (!onePerGroup) {
                auto& taken = takenFromStar[f];
                if (fs.nMeasurements[f] + 1 - taken <= 1) continue;
                ++taken;
            }
            starTouched[f] = 1;
            out.refStars.push_back(int(f));
        } else {
            auto const k = std::size_t(c.index);
            auto const f = std::size_t(meas.fitted[k]);
            if (fs.nMeasurements[f] == 1 && fs.ref[f] < 0) {
                ++skipped1;
                continue;
            }
            detail::CcdFit const& cf = L.ccd[std::size_t(meas.ccd[k])];
            bool const useStar = L.positions();
            if (onePerGroup) {
                bool touched = useStar && starTouched[f];
                for (int j = 0; j < cf.n; ++j) touched = touched || blockTouched[std::size_t(cf.block[j])];
                if (touched) continue;
            } else {
                // without the per-group rule, never take a star's last remaining term in one pass
                auto& taken = takenFromStar[f];
                if (fs.nMeasurements[f] + (fs.ref[f] >= 0 ? 1 : 0) - taken <= 1) {
                    ++skipped1;
                    continue;
                }
                ++taken;
            }
            for (int j = 0; j < cf.n; ++j) blockTouched[std::size_t(cf.block[j])] = 1;
            if (useStar) starTouched[f] = 1;
            out.meas.push_back(std::int64_t(k));
        }
    }
    if (skipped1)
        pb.log.warn("findOutliers: skipped " + std::to_string(skipped1) +
                    " outlier measurements of fitted stars with a single measurement and no reference star");
    if (skipped0)
        pb.log.warn("findOutliers: skipped " + std::to_string(skipped0) +
                    " reference outliers of fitted stars without measurements");
    pb.log.debug("findOutliers: selection took " +
                 fmtG(std::chrono::duration<double>(std::chrono::steady_clock::now() - tSort).count()) + " s");
    pb.log.debug("findOutliers: found " + std::to_string(out.meas.size()) + " measurement outliers and " +
                 std::to_string(out.refStars.size()) + " reference outliers");
    return out;
}

/// Gradient of the outlier terms at the current parameters: sum over outliers of A^T e (in the -J^T W r
/// convention of the build, removing the terms adds this to the (vanishing) total).
Eigen::VectorXd outlierGradient(Problem& pb, View const& v, OutlierSet const& o) {
    auto const& L = pb.layout;
    auto const& meas = pb.assoc.measured();
    auto const& blocks = pb.model.blocks();
    Eigen::VectorXd g = Eigen::VectorXd::Zero(L.nTotal);
    double work[detail::kWorkSize];
    MeasEval ev;
    for (std::int64_t kk : o.meas) {
        auto const k = std::size_t(kk);
        if (!pb.evalMeas(k, v, true, ev, work)) continue;
        detail::CcdFit const& cf = L.ccd[std::size_t(meas.ccd[k])];
        int col = 0;
        for (int j = 0; j < cf.n; ++j) {
            int const off = L.blockFit[std::size_t(cf.block[j])];
            int const size = blocks[std::size_t(cf.block[j])].fitSize();
            for (int q = 0; q < size; ++q)
                g[off + q] += ev.Am[2 * (col + q)] * ev.e[0] + ev.Am[2 * (col + q) + 1] * ev.e[1];
            col += size;
        }
        int const sk = L.starFit[std::size_t(meas.fitted[k])];
        if (sk >= 0) {
            auto const i0 = std::ptrdiff_t(L.nModel + 2 * std::int64_t(sk));
            g[i0] += ev.As[0] * ev.e[0] + ev.As[1] * ev.e[1];
            g[i0 + 1] += ev.As[2] * ev.e[0] + ev.As[3] * ev.e[1];
        }
    }
    for (int f : o.refStars) {
        RefEval rv;
        int const sk = L.starFit[std::size_t(f)];
        if (sk < 0 || !pb.evalRef(std::size_t(f), v, true, rv)) continue;
        auto const i0 = std::ptrdiff_t(L.nModel + 2 * std::int64_t(sk));
        g[i0] += rv.As[0] * rv.e[0] + rv.As[1] * rv.e[1];
        g[i0 + 1] += rv.As[2] * rv.e[0] + rv.As[3] * rv.e[1];
    }
    return g;
}

/// Brent minimisation of chi2(state0 + s * delta) over s in [-1, 2] (26 bits of precision).
double lineSearch(Problem& pb, Eigen::VectorXd const& delta) {
    detail::State const s0 = pb.snapshot();
    std::vector<StarVec> sv;
    auto f = [&](double s) {
        pb.restore(s0);
        pb.applyStep(delta, s);
        double const c = pb.chi2(pb.current(sv)).chi2;
        return std::isfinite(c) ? c : std::numeric_limits<double>::max();
    };
    double const x = detail::brentMinimize(f, -1.0, 2.0, std::ldexp(1.0, -26));
    pb.restore(s0);
    pb.log.debug("line search: scale " + fmtG(x));
    return x;
}

}  // namespace

AstrometryFitter::AstrometryFitter(Associations& assoc, AstrometryModel& model, FitterOptions const& opts)
    : _pb(std::make_unique<Problem>(assoc, model, opts)) {}

AstrometryFitter::~AstrometryFitter() = default;

LogBuffer& AstrometryFitter::log() { return _pb->log; }
std::int64_t AstrometryFitter::nTotal() const { return _pb->layout.nTotal; }
std::int64_t AstrometryFitter::nModelFit() const { return _pb->layout.nModel; }
SolverKind AstrometryFitter::solverKind() const { return _pb->opts.solver; }
void AstrometryFitter::setSolverKind(SolverKind k) { _pb->opts.solver = k; }

Chi2Result AstrometryFitter::computeChi2() {
    std::vector<StarVec> sv;
    return _pb->chi2(_pb->current(sv));
}

void AstrometryFitter::termChi2(std::vector<double>& meas, std::vector<double>& ref) {
    std::vector<StarVec> sv;
    _pb->chi2(_pb->current(sv), &meas, &ref);
}

Eigen::VectorXd AstrometryFitter::computeStep(std::string const& whatToFit) {
    Problem& pb = *_pb;
    pb.assignIndices(WhatToFit::parse(whatToFit));
    auto sys = pb.opts.solver == SolverKind::Schur ? detail::makeSchurSystem(pb) : detail::makeSparseSystem(pb);
    Eigen::VectorXd rhs, delta;
    if (!sys->build(rhs) || !sys->solve(rhs, true, delta)) throw std::runtime_error(sys->message);
    return delta;
}

void AstrometryFitter::normalEquations(std::string const& whatToFit, Eigen::SparseMatrix<double>& upper,
                                       Eigen::VectorXd& rhs) {
    Problem& pb = *_pb;
    pb.assignIndices(WhatToFit::parse(whatToFit));
    detail::assembleNormalEquations(pb, upper, rhs);
}

MinimizeResult AstrometryFitter::minimize(std::string const& whatToFit, double nSigmaCut, double sigmaRelTol,
                                          bool doRankUpdate, bool doLineSearch) {
    Problem& pb = *_pb;
    WhatToFit const what = WhatToFit::parse(whatToFit);
    if (what.pm) pb.log.warn("whatToFit: proper-motion fitting (PM) is not implemented (as in the reference); ignored");
    pb.assignIndices(what);
    _lastError.clear();
    _lastPasses = 0;
    if (pb.layout.nTotal == 0) {
        _lastError = "minimize(" + whatToFit + "): there are no parameters to fit";
        pb.log.error(_lastError);
        return MinimizeResult::Failed;
    }
    auto sys = pb.opts.solver == SolverKind::Schur ? detail::makeSchurSystem(pb) : detail::makeSparseSystem(pb);
    Eigen::VectorXd rhs, delta;
    if (!sys->build(rhs)) {
        _lastError = "minimize(" + whatToFit + "): " + sys->message;
        pb.log.error(_lastError);
        return MinimizeResult::Failed;
    }
    std::vector<StarVec> sv;
    std::vector<double> termMeas, termRef;
    double oldChi2 = pb.chi2(pb.current(sv)).chi2;
    std::int64_t totalMeas = 0, totalRef = 0;
    double prevCut = std::numeric_limits<double>::quiet_NaN();
    bool isBuild = true;
    MinimizeResult result = MinimizeResult::Converged;
    using Clock = std::chrono::steady_clock;
    double tSolve = 0, tChi2 = 0, tFind = 0, tDown = 0;
    auto since = [](Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); };
    for (;;) {
        ++_lastPasses;
        auto t0 = Clock::now();
        bool const solved = sys->solve(rhs, isBuild, delta);
        tSolve += since(t0);
        if (!solved) {
            _lastError = "minimize(" + whatToFit + "): " + sys->message;
            pb.log.error(_lastError);
            return MinimizeResult::Failed;
        }
        double const scale = doLineSearch ? lineSearch(pb, delta) : 1.0;
        pb.applyStep(delta, scale);
        t0 = Clock::now();
        View const v = pb.current(sv);
        Chi2Result const c = nSigmaCut != 0.0 ? pb.chi2(v, &termMeas, &termRef) : pb.chi2(v);
        tChi2 += since(t0);
        pb.log.debug("minimize: pass " + std::to_string(_lastPasses) + " chi2/ndof : " + fmtG(c.chi2) + "/" +
                     std::to_string(c.ndof) + "=" + fmtG(c.chi2 / double(c.ndof)));
        if (!std::isfinite(c.chi2)) {
            _lastError = "minimize(" + whatToFit + "): chi2 is not finite";
            pb.log.error(_lastError);
            return MinimizeResult::NonFinite;
        }
        if (c.chi2 > oldChi2 && totalMeas + totalRef > 0) {
            pb.log.warn("chi2 went up, exiting outlier rejection loop");
            result = MinimizeResult::Chi2Increased;
            break;
        }
        oldChi2 = c.chi2;
        if (nSigmaCut == 0.0) break;
        double cut;
        t0 = Clock::now();
        OutlierSet const o = findOutliers(pb, termMeas, termRef, nSigmaCut, !pb.opts.removeAllOutliersPerPass, cut);
        tFind += since(t0);
        if (sigmaRelTol > 0.0 && std::isfinite(prevCut) && (1.0 - cut / prevCut) < sigmaRelTol) {
            pb.log.info("Outlier cut changed by less than the relative tolerance: " + fmtG(1.0 - cut / prevCut) +
                        " < " + fmtG(sigmaRelTol));
            break;
        }
        prevCut = cut;
        if (o.empty()) break;
        t0 = Clock::now();
        if (doRankUpdate) {
            rhs = outlierGradient(pb, v, o);
            bool const ok = sys->downdate(o);
            tDown += since(t0);
            detail::markOutliers(pb.assoc, o);
            if (!ok) {
                _lastError = "minimize(" + whatToFit + "): " + sys->message;
                pb.log.error(_lastError);
                return MinimizeResult::Failed;
            }
            isBuild = false;
        } else {
            detail::markOutliers(pb.assoc, o);
            if (!sys->build(rhs)) {
                _lastError = "minimize(" + whatToFit + "): " + sys->message;
                pb.log.error(_lastError);
                return MinimizeResult::Failed;
            }
            isBuild = true;
        }
        totalMeas += std::int64_t(o.meas.size());
        totalRef += std::int64_t(o.refStars.size());
    }
    pb.log.debug("minimize(" + whatToFit + "): " + std::to_string(_lastPasses) + " passes; seconds in solve " +
                 fmtG(tSolve) + ", chi2 " + fmtG(tChi2) + ", outlier search " + fmtG(tFind) + ", downdates " +
                 fmtG(tDown));
    if (totalMeas + totalRef > 0) {
        std::size_t const dead = detail::removeDeadStars(pb.assoc);
        if (dead) pb.log.debug("removed " + std::to_string(dead) + " fitted stars left without measurements");
    }
    if (nSigmaCut != 0.0)
        pb.log.info("Number of outliers (Measured + Reference = Total): " + std::to_string(totalMeas) + " + " +
                    std::to_string(totalRef) + " = " + std::to_string(totalMeas + totalRef));
    _measOutliers += totalMeas;
    _refOutliers += totalRef;
    return result;
}

}  // namespace diffcal::jointcal
