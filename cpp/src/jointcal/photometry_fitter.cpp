// The photometric Gauss-Newton fitter: parameter layout, terms, the two linear solvers (Schur complement
// over the 1x1 star blocks, sparse LDL^T of the full system), outlier rejection and the line search.
#include <Eigen/Cholesky>
#include <Eigen/SparseCholesky>
#include <Eigen/SparseCore>
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "diffcal/jointcal/photometry.hpp"
#include "fit_common.hpp"

namespace diffcal::jointcal {

namespace {

constexpr int kMaxTermParams = 1 + 231 + 1;  // chip + Chebyshev of order <= 20 + star
constexpr double kPivotTolerance = 1e-12;     // relative pivot below which the system is called degenerate

std::string fmtG(double v) {
    std::ostringstream s;
    s << v;
    return s.str();
}

bool contains(std::string const& s, char const* w) { return s.find(w) != std::string::npos; }

}  // namespace

PhotometryWhatToFit PhotometryWhatToFit::parse(std::string const& s) {
    PhotometryWhatToFit w;
    bool const mv = contains(s, "ModelVisit"), mc = contains(s, "ModelChip");
    if (mv) w.visit = true;
    if (mc) w.chip = true;
    if (contains(s, "Model") && !mv && !mc) w.visit = w.chip = true;
    w.fluxes = contains(s, "Fluxes");
    return w;
}

namespace detail {

/// One evaluated term: residual r = model - F (measurement) or F - R (reference), weight w = 1/sigma^2 and
/// the derivatives of r with respect to the fitted parameters (global fit indices).
struct PhotTerm {
    double r = 0.0, w = 0.0;
    int n = 0;
    std::int64_t idx[kMaxTermParams];
    double d[kMaxTermParams];
};

class PhotometryProblem {
public:
    PhotometryProblem(Associations& a, PhotometryModel& m, PhotometryFitterOptions const& o)
        : assoc(a), model(m), opts(o) {}

    Associations& assoc;
    PhotometryModel& model;
    PhotometryFitterOptions opts;
    LogBuffer log;
    PhotometryWhatToFit what;
    std::vector<int> blockFit;  ///< per model block: fit offset or -1
    int nModel = 0;
    std::vector<std::int64_t> starFit;  ///< per fitted star: fit index (>= nModel) or -1
    std::int64_t nStarsFit = 0, nTotal = 0, lastNTotal = 0;
    std::vector<std::int64_t> starStart, starMeas;  ///< in-fit measurements of each fitted star (CSR)

    // factorization state
    Eigen::LLT<Eigen::MatrixXd> llt;
    std::vector<double> D;                    ///< star diagonal (Schur)
    std::vector<std::int64_t> gStart;         ///< per fit star: start in gIdx/gVal
    std::vector<int> gIdx;
    std::vector<double> gVal;
    Eigen::SimplicialLDLT<Eigen::SparseMatrix<double>, Eigen::Upper> ldlt;
    std::string message;

    std::vector<double>& starValues() { return model.isMagnitude() ? assoc.fitted().mag : assoc.fitted().flux; }

    double refValue(int r) const {
        auto const& R = assoc.refs();
        return model.isMagnitude() ? R.mag[std::size_t(r)] : R.flux[std::size_t(r)];
    }
    double refSigma(int r) const {
        auto const& R = assoc.refs();
        return model.isMagnitude() ? R.magErr[std::size_t(r)] : R.fluxErr[std::size_t(r)];
    }

    void assignIndices(PhotometryWhatToFit const& w) {
        what = w;
        auto const& meas = assoc.measured();
        auto const& fs = assoc.fitted();
        auto const& blocks = model.blocks();
        std::vector<std::uint8_t> hasData(blocks.size(), 0);
        for (std::size_t k = 0; k < meas.size(); ++k) {
            if (!meas.inFit[k] || !meas.valid[k] || meas.fitted[k] < 0 || !fs.alive[std::size_t(meas.fitted[k])])
                continue;
            auto const& cb = model.ccdBlocks()[std::size_t(meas.ccd[k])];
            hasData[std::size_t(cb[0])] = 1;
            if (cb[1] >= 0) hasData[std::size_t(cb[1])] = 1;
        }
        blockFit.assign(blocks.size(), -1);
        nModel = 0;
        std::size_t noData = 0;
        for (std::size_t b = 0; b < blocks.size(); ++b) {
            PhotometryBlock const& B = blocks[b];
            bool fit = false;
            if (B.kind == PhotometryBlock::Ccd) fit = w.model();
            else if (B.kind == PhotometryBlock::Chip) fit = w.chip && !B.fixed;
            else fit = w.visit;
            if (fit && !hasData[b]) {
                ++noData;
                fit = false;
            }
            if (fit) {
                blockFit[b] = nModel;
                nModel += B.size;
            }
        }
        if (noData) log.debug("assignIndices: " + std::to_string(noData) + " model blocks without data are not fit");
        starFit.assign(fs.size(), -1);
        nStarsFit = 0;
        if (w.fluxes) {
            for (std::size_t f = 0; f < fs.size(); ++f)
                if (fs.alive[f] && (fs.nMeasurements[f] > 0 || fs.ref[f] >= 0)) starFit[f] = nModel + nStarsFit++;
        }
        nTotal = nModel + nStarsFit;
        lastNTotal = nTotal;
        // CSR of in-fit measurements per fitted star
        starStart.assign(fs.size() + 1, 0);
        for (std::size_t k = 0; k < meas.size(); ++k)
            if (meas.inFit[k] && meas.fitted[k] >= 0) starStart[std::size_t(meas.fitted[k]) + 1]++;
        for (std::size_t f = 0; f < fs.size(); ++f) starStart[f + 1] += starStart[f];
        starMeas.assign(std::size_t(starStart.back()), 0);
        std::vector<std::int64_t> pos(starStart.begin(), starStart.end() - 1);
        for (std::size_t k = 0; k < meas.size(); ++k)
            if (meas.inFit[k] && meas.fitted[k] >= 0) starMeas[std::size_t(pos[std::size_t(meas.fitted[k])]++)] = std::int64_t(k);
        log.info("assignIndices: Now fitting " + std::string(w.chip && model.isConstrained() ? "ModelChip " : "") +
                 std::string(w.visit && model.isConstrained() ? "ModelVisit " : "") +
                 std::string(w.model() && !model.isConstrained() ? "Model " : "") + (w.fluxes ? "Fluxes" : ""));
        log.debug("assignIndices: " + std::to_string(nModel) + " model parameters, " + std::to_string(nStarsFit) +
                  " star parameters");
    }

    /// Measurement term k at model parameters P and star values F (false if there is no term).
    bool measTerm(std::size_t k, double const* P, double const* F, bool jac, PhotTerm& t) const {
        auto const& m = assoc.measured();
        auto const& fs = assoc.fitted();
        if (!m.inFit[k] || !m.valid[k] || m.fitted[k] < 0) return false;
        auto const f = std::size_t(m.fitted[k]);
        if (!fs.alive[f]) return false;
        auto const c = std::size_t(m.ccd[k]);
        double const s = model.sigma(c, m.instFlux[k], m.instFluxErr[k], m.instMagErr[k], m.xFocal[k], m.yFocal[k]);
        if (!(s > 0.0) || !std::isfinite(s)) return false;
        auto const& cb = model.ccdBlocks()[c];
        auto const& blocks = model.blocks();
        int const fa = blockFit[std::size_t(cb[0])];
        int const fb = cb[1] >= 0 ? blockFit[std::size_t(cb[1])] : -1;
        double dA[1], dB[kMaxTermParams];
        bool const needB = jac && fb >= 0;
        double const v = model.value(c, P, m.instFlux[k], m.instMag[k], m.xFocal[k], m.yFocal[k], jac ? dA : nullptr,
                                     needB ? dB : nullptr);
        t.r = v - F[f];
        t.w = 1.0 / (s * s);
        t.n = 0;
        if (!jac) return true;
        if (fa >= 0) {
            t.idx[t.n] = fa;
            t.d[t.n++] = dA[0];
        }
        if (fb >= 0) {
            int const size = blocks[std::size_t(cb[1])].size;
            for (int q = 0; q < size; ++q) {
                t.idx[t.n] = fb + q;
                t.d[t.n++] = dB[q];
            }
        }
        if (starFit[f] >= 0) {
            t.idx[t.n] = starFit[f];
            t.d[t.n++] = -1.0;
        }
        return true;
    }

    bool refTerm(std::size_t f, double const* F, bool jac, PhotTerm& t) const {
        auto const& fs = assoc.fitted();
        if (!fs.alive[f] || fs.ref[f] < 0) return false;
        double const s = refSigma(fs.ref[f]);
        if (!(s > 0.0) || !std::isfinite(s)) return false;
        t.r = F[f] - refValue(fs.ref[f]);
        t.w = 1.0 / (s * s);
        t.n = 0;
        if (jac && starFit[f] >= 0) {
            t.idx[0] = starFit[f];
            t.d[0] = 1.0;
            t.n = 1;
        }
        return true;
    }

    Chi2Result chi2(double const* P, double const* F, std::vector<double>* mc = nullptr,
                    std::vector<double>* rc = nullptr) const {
        auto const& m = assoc.measured();
        auto const& fs = assoc.fitted();
        double const nan = std::numeric_limits<double>::quiet_NaN();
        if (mc) mc->assign(m.size(), nan);
        if (rc) rc->assign(fs.size(), nan);
        Chi2Result out;
        std::int64_t n = 0;
        PhotTerm t;
        for (std::size_t k = 0; k < m.size(); ++k) {
            if (!measTerm(k, P, F, false, t)) continue;
            double const c = t.r * t.r * t.w;
            out.chi2 += c;
            ++n;
            if (mc) (*mc)[k] = c;
        }
        for (std::size_t f = 0; f < fs.size(); ++f) {
            if (!refTerm(f, F, false, t)) continue;
            double const c = t.r * t.r * t.w;
            out.chi2 += c;
            ++n;
            if (rc) (*rc)[f] = c;
        }
        out.ndof = n - lastNTotal;
        return out;
    }

    /// Gradient J^T W r of all terms (outliers == nullptr) or of the listed terms only.
    Eigen::VectorXd gradient(double const* P, double const* F, std::vector<std::int64_t> const* measList = nullptr,
                             std::vector<int> const* refList = nullptr) const {
        Eigen::VectorXd g = Eigen::VectorXd::Zero(nTotal);
        PhotTerm t;
        auto add = [&]() {
            for (int a = 0; a < t.n; ++a) g[t.idx[a]] += t.w * t.d[a] * t.r;
        };
        if (measList == nullptr) {
            for (std::size_t k = 0; k < assoc.measured().size(); ++k)
                if (measTerm(k, P, F, true, t)) add();
            for (std::size_t f = 0; f < assoc.fitted().size(); ++f)
                if (refTerm(f, F, true, t)) add();
        } else {
            for (std::int64_t k : *measList)
                if (measTerm(std::size_t(k), P, F, true, t)) add();
            for (int f : *refList)
                if (refTerm(std::size_t(f), F, true, t)) add();
        }
        return g;
    }

    std::string describeParam(std::int64_t i) const {
        if (i >= nModel) return "fitted star parameter " + std::to_string(i - nModel);
        auto const& blocks = model.blocks();
        for (std::size_t b = 0; b < blocks.size(); ++b) {
            int const off = blockFit[b];
            if (off < 0 || i < off || i >= off + blocks[b].size) continue;
            PhotometryBlock const& B = blocks[b];
            if (B.kind == PhotometryBlock::Chip) return "chip " + std::to_string(B.id) + " (chip constant)";
            if (B.kind == PhotometryBlock::Visit)
                return "visit " + std::to_string(B.id) + " (visit field coefficient " + std::to_string(i - off) + ")";
            auto const& c = assoc.ccdImages()[std::size_t(B.id)];
            return "visit " + std::to_string(c.visit) + ", detector " + std::to_string(c.detector) + " (CcdImage " +
                   (model.isMagnitude() ? "zero point)" : "scale)");
        }
        return "parameter " + std::to_string(i);
    }

    /// Build and factorize the normal matrix at (P, F) (valid terms only). False with `message` on failure.
    bool build(double const* P, double const* F) {
        return opts.solver == SolverKind::Schur ? buildSchur(P, F) : buildSparse(P, F);
    }

    bool buildSchur(double const* P, double const* F) {
        auto const& fs = assoc.fitted();
        Eigen::MatrixXd H = Eigen::MatrixXd::Zero(nModel, nModel);
        D.assign(std::size_t(nStarsFit), 0.0);
        gStart.assign(std::size_t(nStarsFit) + 1, 0);
        gIdx.clear();
        gVal.clear();
        std::vector<double> scratch(std::size_t(nModel), 0.0);
        std::vector<std::uint8_t> touched(std::size_t(nModel), 0);
        std::vector<int> list;
        PhotTerm t;
        for (std::size_t f = 0; f < fs.size(); ++f) {
            std::int64_t const sf = starFit[f];
            list.clear();
            double d = 0.0;
            for (std::int64_t q = starStart[f]; q < starStart[f + 1]; ++q) {
                if (!measTerm(std::size_t(starMeas[std::size_t(q)]), P, F, true, t)) continue;
                int const nm = sf >= 0 ? t.n - 1 : t.n;  // model entries come first
                for (int a = 0; a < nm; ++a) {
                    double const wa = t.w * t.d[a];
                    for (int b = 0; b <= a; ++b) H(t.idx[a], t.idx[b]) += wa * t.d[b];
                }
                if (sf >= 0) {
                    d += t.w;
                    for (int a = 0; a < nm; ++a) {
                        auto const i = std::size_t(t.idx[a]);
                        if (!touched[i]) {
                            touched[i] = 1;
                            list.push_back(int(i));
                        }
                        scratch[i] -= t.w * t.d[a];
                    }
                }
            }
            if (sf < 0) continue;
            if (refTerm(f, F, false, t)) d += t.w;
            std::size_t const s = std::size_t(sf - nModel);
            D[s] = d;
            std::sort(list.begin(), list.end());
            for (int i : list) {
                gIdx.push_back(i);
                gVal.push_back(scratch[std::size_t(i)]);
                scratch[std::size_t(i)] = 0.0;
                touched[std::size_t(i)] = 0;
            }
            gStart[s + 1] = std::int64_t(gIdx.size());
            if (d > 0.0) {
                std::int64_t const b0 = gStart[s], b1 = gStart[s + 1];
                for (std::int64_t a = b0; a < b1; ++a) {
                    double const ga = gVal[std::size_t(a)] / d;
                    for (std::int64_t b = b0; b <= a; ++b)
                        H(gIdx[std::size_t(a)], gIdx[std::size_t(b)]) -= ga * gVal[std::size_t(b)];
                }
            }
        }
        if (nModel == 0) return true;
        // the accumulation filled the lower triangle (indices increase within a term)
        Eigen::VectorXd const diag = H.diagonal();
        llt.compute(H.selfadjointView<Eigen::Lower>());
        // a pivot much smaller than its diagonal entry means a (numerically) rank-deficient system
        std::int64_t worst = -1;
        if (llt.info() != Eigen::Success) {
            worst = 0;
        } else {
            Eigen::MatrixXd const& L = llt.matrixLLT();
            for (int i = 0; i < nModel; ++i) {
                double const piv = L(i, i) * L(i, i);
                if (!(piv > kPivotTolerance * diag[i])) {
                    worst = i;
                    break;
                }
            }
        }
        if (worst >= 0) {
            message = "the reduced normal matrix is not positive definite (degenerate model; first bad pivot at " +
                      describeParam(worst) + ")";
            return false;
        }
        return true;
    }

    bool buildSparse(double const* P, double const* F) {
        Eigen::SparseMatrix<double> const H = sparseMatrix(P, F);
        Eigen::VectorXd const hdiag = H.diagonal();
        ldlt.compute(H);
        if (ldlt.info() != Eigen::Success) {
            message = "sparse LDL^T factorization of the normal matrix failed";
            return false;
        }
        auto const dv = ldlt.vectorD();
        for (Eigen::Index i = 0; i < dv.size(); ++i) {
            Eigen::Index const orig = ldlt.permutationPinv().indices()[i];
            if (!(dv[i] > kPivotTolerance * hdiag[orig])) {
                message = "the normal matrix is not positive definite (degenerate model; pivot of " +
                          describeParam(orig) + ")";
                return false;
            }
        }
        return true;
    }

    /// Upper triangle of the normal matrix J^T W J at parameters P and star values F (stars without
    /// any term get a unit pivot, so that their step is zero).
    Eigen::SparseMatrix<double> sparseMatrix(double const* P, double const* F) {
        auto const& fs = assoc.fitted();
        std::vector<Eigen::Triplet<double>> trip;
        std::vector<double> diag(std::size_t(nStarsFit), 0.0);
        PhotTerm t;
        for (std::size_t f = 0; f < fs.size(); ++f) {
            for (std::int64_t q = starStart[f]; q < starStart[f + 1]; ++q) {
                if (!measTerm(std::size_t(starMeas[std::size_t(q)]), P, F, true, t)) continue;
                for (int a = 0; a < t.n; ++a)
                    for (int b = 0; b <= a; ++b)  // idx increase within a term: (b, a) is upper
                        trip.emplace_back(Eigen::Index(t.idx[b]), Eigen::Index(t.idx[a]), t.w * t.d[a] * t.d[b]);
                if (starFit[f] >= 0) diag[std::size_t(starFit[f] - nModel)] += t.w;
            }
            if (starFit[f] >= 0 && refTerm(f, F, true, t)) {
                trip.emplace_back(Eigen::Index(t.idx[0]), Eigen::Index(t.idx[0]), t.w);
                diag[std::size_t(starFit[f] - nModel)] += t.w;
            }
        }
        for (std::int64_t s = 0; s < nStarsFit; ++s)  // stars without any term: unit pivot, zero step
            if (diag[std::size_t(s)] == 0.0) trip.emplace_back(Eigen::Index(nModel + s), Eigen::Index(nModel + s), 1.0);
        Eigen::SparseMatrix<double> H(nTotal, nTotal);
        H.setFromTriplets(trip.begin(), trip.end());
        return H;
    }

    /// Solve the factorized system for rhs (full length nTotal).
    Eigen::VectorXd solve(Eigen::VectorXd const& rhs) const {
        if (opts.solver == SolverKind::Sparse) return ldlt.solve(rhs);
        Eigen::VectorXd out(nTotal);
        Eigen::VectorXd cm = rhs.head(nModel);
        for (std::int64_t s = 0; s < nStarsFit; ++s) {
            double const d = D[std::size_t(s)];
            if (d <= 0.0) continue;
            double const cs = rhs[nModel + s] / d;
            for (std::int64_t a = gStart[std::size_t(s)]; a < gStart[std::size_t(s) + 1]; ++a)
                cm[gIdx[std::size_t(a)]] -= gVal[std::size_t(a)] * cs;
        }
        Eigen::VectorXd x = nModel > 0 ? Eigen::VectorXd(llt.solve(cm)) : Eigen::VectorXd(0);
        out.head(nModel) = x;
        for (std::int64_t s = 0; s < nStarsFit; ++s) {
            double const d = D[std::size_t(s)];
            if (d <= 0.0) {
                out[nModel + s] = 0.0;
                continue;
            }
            double v = rhs[nModel + s];
            for (std::int64_t a = gStart[std::size_t(s)]; a < gStart[std::size_t(s) + 1]; ++a)
                v -= gVal[std::size_t(a)] * x[gIdx[std::size_t(a)]];
            out[nModel + s] = v / d;
        }
        return out;
    }

    void applyStep(Eigen::VectorXd const& delta, double scale, std::vector<double>& P, std::vector<double>& F) const {
        auto const& blocks = model.blocks();
        for (std::size_t b = 0; b < blocks.size(); ++b) {
            int const off = blockFit[b];
            if (off < 0) continue;
            for (int q = 0; q < blocks[b].size; ++q) P[std::size_t(blocks[b].offset + q)] += scale * delta[off + q];
        }
        for (std::size_t f = 0; f < starFit.size(); ++f)
            if (starFit[f] >= 0) F[f] += scale * delta[starFit[f]];
    }

    void syncStars() {
        auto& fs = assoc.fitted();
        for (std::size_t f = 0; f < fs.size(); ++f) {
            if (model.isMagnitude()) fs.flux[f] = 3631e9 * std::pow(10.0, -0.4 * fs.mag[f]);
            else fs.mag[f] = nJyToAbMag(fs.flux[f]);
        }
    }
};

}  // namespace detail

namespace {

using detail::PhotometryProblem;

using detail::OutlierSet;

/// Spec 2.7: cut = mean + nSigma * std of the per-term chi2; strongest first, at most one term per parameter
/// group (CcdImage model blocks, star) per pass unless removeAllOutliersPerPass.
OutlierSet findOutliers(PhotometryProblem& pb, std::vector<double> const& mc, std::vector<double> const& rc,
                      double nSigma, double& cut) {
    auto const& meas = pb.assoc.measured();
    auto const& fs = pb.assoc.fitted();
    double s1 = 0, s2 = 0;
    std::int64_t n = 0;
    for (auto const* v : {&mc, &rc})
        for (double x : *v)
            if (!std::isnan(x)) {
                s1 += x;
                s2 += x * x;
                ++n;
            }
    OutlierSet out;
    cut = std::numeric_limits<double>::infinity();
    if (n == 0) return out;
    double const mean = s1 / double(n), sigma = std::sqrt(std::max(0.0, s2 / double(n) - mean * mean));
    cut = mean + nSigma * sigma;
    struct Cand {
        double chi2;
        int kind;
        std::int64_t index;
    };
    std::vector<Cand> cand;
    for (std::size_t k = 0; k < mc.size(); ++k)
        if (!std::isnan(mc[k]) && mc[k] >= cut) cand.push_back({mc[k], 0, std::int64_t(k)});
    for (std::size_t f = 0; f < rc.size(); ++f)
        if (!std::isnan(rc[f]) && rc[f] >= cut) cand.push_back({rc[f], 1, std::int64_t(f)});
    std::sort(cand.begin(), cand.end(), [](Cand const& a, Cand const& b) {
        if (a.chi2 != b.chi2) return a.chi2 > b.chi2;
        if (a.kind != b.kind) return a.kind < b.kind;
        return a.index < b.index;
    });
    pb.log.debug("findOutliers: chi2 per term mean " + fmtG(mean) + ", sigma " + fmtG(sigma) + ", cut " + fmtG(cut) +
                 ", " + std::to_string(cand.size()) + " terms above the cut");
    bool const onePerGroup = !pb.opts.removeAllOutliersPerPass;
    std::vector<std::uint8_t> blockTouched(pb.model.blocks().size(), 0), starTouched(fs.size(), 0);
    std::unordered_map<std::size_t, int> taken;
    std::int64_t skipped1 = 0, skipped0 = 0;
    for (Cand const& c : cand) {
        if (c.kind == 1) {
            auto const f = std::size_t(c.index);
            if (fs.nMeasurements[f] == 0) {
                ++skipped0;
                continue;
            }
            if (pb.starFit[f] < 0) continue;
            if (onePerGroup && starTouched[f]) continue;
            if (!onePerGroup) {
                auto& t = taken[f];
                if (fs.nMeasurements[f] + 1 - t <= 1) continue;
                ++t;
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
            auto const& cb = pb.model.ccdBlocks()[std::size_t(meas.ccd[k])];
            int blocks[2] = {cb[0], cb[1]};
            bool const useStar = pb.starFit[f] >= 0;
            if (onePerGroup) {
                bool touched = useStar && starTouched[f];
                for (int b : blocks)
                    if (b >= 0 && pb.blockFit[std::size_t(b)] >= 0 && blockTouched[std::size_t(b)]) touched = true;
                if (touched) continue;
            } else {
                auto& t = taken[f];
                if (fs.nMeasurements[f] + (fs.ref[f] >= 0 ? 1 : 0) - t <= 1) {
                    ++skipped1;
                    continue;
                }
                ++t;
            }
            for (int b : blocks)
                if (b >= 0 && pb.blockFit[std::size_t(b)] >= 0) blockTouched[std::size_t(b)] = 1;
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
    pb.log.debug("findOutliers: found " + std::to_string(out.meas.size()) + " measurement outliers and " +
                 std::to_string(out.refStars.size()) + " reference outliers");
    return out;
}

}  // namespace

PhotometryFitter::PhotometryFitter(Associations& assoc, PhotometryModel& model, PhotometryFitterOptions const& opts)
    : _pb(std::make_unique<PhotometryProblem>(assoc, model, opts)) {
    if (model.nCcd() != assoc.ccdImages().size())
        throw std::invalid_argument("PhotometryFitter: the model and the associations have different CcdImages");
}

PhotometryFitter::~PhotometryFitter() = default;

LogBuffer& PhotometryFitter::log() { return _pb->log; }
std::int64_t PhotometryFitter::nTotal() const { return _pb->nTotal; }
std::int64_t PhotometryFitter::nModelFit() const { return _pb->nModel; }
SolverKind PhotometryFitter::solverKind() const { return _pb->opts.solver; }
void PhotometryFitter::setSolverKind(SolverKind k) { _pb->opts.solver = k; }

Chi2Result PhotometryFitter::computeChi2() {
    return _pb->chi2(_pb->model.params().data(), _pb->starValues().data());
}

void PhotometryFitter::termChi2(std::vector<double>& meas, std::vector<double>& ref) {
    _pb->chi2(_pb->model.params().data(), _pb->starValues().data(), &meas, &ref);
}

Eigen::VectorXd PhotometryFitter::computeStep(std::string const& whatToFit) {
    PhotometryProblem& pb = *_pb;
    pb.assignIndices(PhotometryWhatToFit::parse(whatToFit));
    double const* P = pb.model.params().data();
    double const* F = pb.starValues().data();
    if (!pb.build(P, F)) throw std::runtime_error(pb.message);
    return pb.solve(-pb.gradient(P, F));
}

void PhotometryFitter::normalEquations(std::string const& whatToFit, Eigen::SparseMatrix<double>& upper,
                                       Eigen::VectorXd& rhs) {
    PhotometryProblem& pb = *_pb;
    pb.assignIndices(PhotometryWhatToFit::parse(whatToFit));
    double const* P = pb.model.params().data();
    double const* F = pb.starValues().data();
    upper = pb.sparseMatrix(P, F);
    rhs = -pb.gradient(P, F);
}

MinimizeResult PhotometryFitter::minimize(std::string const& whatToFit, double nSigmaCut, double sigmaRelTol,
                                          bool doRankUpdate, bool doLineSearch) {
    PhotometryProblem& pb = *_pb;
    pb.assignIndices(PhotometryWhatToFit::parse(whatToFit));
    _lastError.clear();
    auto fail = [&](MinimizeResult r, std::string const& why) {
        _lastError = "minimize(" + whatToFit + "): " + why;
        pb.log.error(_lastError);
        return r;
    };
    if (pb.nTotal == 0) return fail(MinimizeResult::Failed, "there are no parameters to fit");
    std::vector<double>& P = pb.model.params();
    std::vector<double>& F = pb.starValues();
    std::vector<double> P0 = P, F0 = F;  // parameters of the last full build
    if (!pb.build(P.data(), F.data())) return fail(MinimizeResult::Failed, pb.message);
    Eigen::VectorXd rhs = -pb.gradient(P.data(), F.data());
    double oldChi2 = pb.chi2(P.data(), F.data()).chi2;
    std::int64_t totalMeas = 0, totalRef = 0;
    double prevCut = std::numeric_limits<double>::quiet_NaN();
    std::vector<double> mc, rc;
    MinimizeResult result = MinimizeResult::Converged;
    for (;;) {
        Eigen::VectorXd const delta = pb.solve(rhs);
        if (!delta.allFinite()) return fail(MinimizeResult::Failed, "the solved step is not finite");
        double scale = 1.0;
        if (doLineSearch) {
            std::vector<double> const Ps = P, Fs = F;
            auto g = [&](double s) {
                std::vector<double> Pt = Ps, Ft = Fs;
                pb.applyStep(delta, s, Pt, Ft);
                double const c = pb.chi2(Pt.data(), Ft.data()).chi2;
                return std::isfinite(c) ? c : std::numeric_limits<double>::max();
            };
            scale = detail::brentMinimize(g, -1.0, 2.0, std::ldexp(1.0, -26));
            pb.log.debug("line search: scale " + fmtG(scale));
        }
        pb.applyStep(delta, scale, P, F);
        Chi2Result const c = nSigmaCut != 0.0 ? pb.chi2(P.data(), F.data(), &mc, &rc) : pb.chi2(P.data(), F.data());
        pb.log.debug("minimize: chi2/ndof : " + fmtG(c.chi2) + "/" + std::to_string(c.ndof));
        if (!std::isfinite(c.chi2)) return fail(MinimizeResult::NonFinite, "chi2 is not finite");
        if (c.chi2 > oldChi2 && totalMeas + totalRef > 0) {
            pb.log.warn("chi2 went up, exiting outlier rejection loop");
            result = MinimizeResult::Chi2Increased;
            break;
        }
        oldChi2 = c.chi2;
        if (nSigmaCut == 0.0) break;
        double cut;
        OutlierSet const o = findOutliers(pb, mc, rc, nSigmaCut, cut);
        if (sigmaRelTol > 0.0 && std::isfinite(prevCut) && (1.0 - cut / prevCut) < sigmaRelTol) {
            pb.log.info("Outlier cut changed by less than the relative tolerance: " + fmtG(1.0 - cut / prevCut) +
                        " < " + fmtG(sigmaRelTol));
            break;
        }
        prevCut = cut;
        if (o.empty()) break;
        if (doRankUpdate) {
            rhs = pb.gradient(P.data(), F.data(), &o.meas, &o.refStars);
            detail::markOutliers(pb.assoc, o);
            if (!pb.build(P0.data(), F0.data())) return fail(MinimizeResult::Failed, pb.message);
        } else {
            detail::markOutliers(pb.assoc, o);
            P0 = P;
            F0 = F;
            if (!pb.build(P.data(), F.data())) return fail(MinimizeResult::Failed, pb.message);
            rhs = -pb.gradient(P.data(), F.data());
        }
        totalMeas += std::int64_t(o.meas.size());
        totalRef += std::int64_t(o.refStars.size());
    }
    if (totalMeas + totalRef > 0) {
        std::size_t const dead = detail::removeDeadStars(pb.assoc);
        if (dead) pb.log.debug("removed " + std::to_string(dead) + " fitted stars left without measurements");
    }
    if (nSigmaCut != 0.0)
        pb.log.info("Number of outliers (Measured + Reference = Total): " + std::to_string(totalMeas) + " + " +
                    std::to_string(totalRef) + " = " + std::to_string(totalMeas + totalRef));
    _measOutliers += totalMeas;
    _refOutliers += totalRef;
    pb.syncStars();
    return result;
}

}  // namespace diffcal::jointcal
