// Schur-complement ("block-arrow") solver: the 2x2 star blocks are eliminated analytically, the reduced
// model matrix is assembled densely (per-CcdImage model blocks, then star contributions accumulated with
// block-row ownership so that each tile is written by exactly one task, in star order: bit-identical for
// any thread count), factorized by a parallel blocked Cholesky, and star steps are back-substituted.
#include <Eigen/Dense>
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <map>
#include <limits>
#include <set>
#include <sstream>

#include "diffcal/jointcal/linalg.hpp"
#include "diffcal/parallel.hpp"
#include "problem.hpp"

namespace diffcal::jointcal::detail {

namespace {

bool chol2(double const* H, double& l00, double& l10, double& l11) {
    if (!(H[0] > 0.0) || !std::isfinite(H[0])) return false;
    l00 = std::sqrt(H[0]);
    l10 = H[1] / l00;
    double const d = H[2] - l10 * l10;
    if (!(d > 1e-12 * H[2]) || !std::isfinite(d)) return false;
    l11 = std::sqrt(d);
    return true;
}

/// G <- G L^-T in place (rows of G are 2-vectors, stored column-major per block), z <- L^-1 b.
void whitenStar(StarAccum& acc, double l00, double l10, double l11, double const* b) {
    double const i00 = 1.0 / l00, i11 = 1.0 / l11;
    for (std::size_t j = 0; j < acc.gOff.size(); ++j) {
        int const size = (j + 1 < acc.gOff.size() ? acc.gOff[j + 1] : int(acc.G.size())) - acc.gOff[j];
        int const n = size / 2;
        double* g0 = acc.G.data() + acc.gOff[j];
        double* g1 = g0 + n;
        for (int q = 0; q < n; ++q) {
            double const w0 = g0[q] * i00;
            g1[q] = (g1[q] - l10 * w0) * i11;
            g0[q] = w0;
        }
    }
    if (b) {
        acc.z[0] = b[0] * i00;
        acc.z[1] = (b[1] - l10 * acc.z[0]) * i11;
    }
}

class SchurSystem final : public NormalSystem {
public:
    explicit SchurSystem(Problem& p) : NormalSystem(p) {}

    bool build(Eigen::VectorXd& rhs) override {
        takeSnapshot();
        Layout const& L = pb.layout;
        nM = L.nModel;
        clearCorrections();
        rhs.setZero(L.nTotal);
        if (nM > 0) {
            S.setZero(nM, nM);
            modelPass(rhs);
        }
        if (L.positions() && !starPass(rhs)) return false;
        if (nM > 0) {
            bRed = rhs.head(nM);
            if (L.positions()) bRed -= starReduction;
            return factor();
        }
        return true;
    }

    bool solve(Eigen::VectorXd const& rhs, bool isBuildRhs, Eigen::VectorXd& delta) override {
        Layout const& L = pb.layout;
        delta.setZero(L.nTotal);
        Eigen::VectorXd dm;
        if (nM > 0) {
            Eigen::VectorXd b;
            if (isBuildRhs) {
                b = bRed;
            } else {
                b = rhs.head(nM);
                auto const t0 = std::chrono::steady_clock::now();
                if (L.positions()) reduceRhs(rhs, b);
                tReduce += since(t0);
            }
            if (nCorrections() == 0 || !pcg(b, dm)) {
                if (nCorrections() > 0 && !consolidate()) return false;
                dm = b;
                denseCholeskySolveInPlace(Lf, dm);
            }
            delta.head(nM) = dm;
        }
        auto const t0 = std::chrono::steady_clock::now();
        if (L.positions()) backSubstitute(rhs, dm, delta);
        tBack += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        for (Eigen::Index i = 0; i < delta.size(); ++i)
            if (!std::isfinite(delta[i])) {
                message = "the solved step is not finite";
                return false;
            }
        return true;
    }

    /// Remove terms from the reduced system: each removed measurement (or reference term) of star s is a
    /// rank-2 downdate U U^T of the full matrix, i.e. a rank-2 downdate of the Schur complement,
    ///   S' = S - V C^-1 V^T,  V = U_m - H_ms H_ss^-1 U_s,  C = I - U_s^T H_ss^-1 U_s,
    /// with H_ms, H_ss the star's current blocks (updated after each removal). The downdates are kept as
    /// packed low-rank factors (solved by PCG) and folded into S when they get large.
    bool downdate(OutlierSet const& o) override {
        Layout const& L = pb.layout;
        auto const& m = pb.assoc.measured();
        std::map<int, std::vector<std::int64_t>> byStar;
        std::set<int> refOut(o.refStars.begin(), o.refStars.end());
        for (std::int64_t k : o.meas) byStar[m.fitted[std::size_t(k)]].push_back(k);
        for (int f : o.refStars) byStar[f];
        double work[kWorkSize];
        MeasEval ev;
        std::vector<int> ccdIdx;
        if (!L.positions()) {
            if (nM == 0) return true;
            for (std::int64_t k : o.meas) {
                if (!pb.evalMeas(std::size_t(k), v0, true, ev, work)) continue;
                ccdIndices(L.ccd[std::size_t(m.ccd[std::size_t(k)])], ccdIdx);
                Eigen::Matrix<double, Eigen::Dynamic, 2> V(Eigen::Index(ccdIdx.size()), 2);
                for (int q = 0; q < int(ccdIdx.size()); ++q) V.row(q) << ev.Am[2 * q], ev.Am[2 * q + 1];
                pushCorrection(ccdIdx, V);
            }
            return maybeFold();
        }
        StarAccum A;
        std::vector<int> idx;
        for (auto& kv : byStar) {
            int const f = kv.first;
            int const ks = L.starFit[std::size_t(f)];
            if (ks < 0) continue;
            std::sort(kv.second.begin(), kv.second.end());
            pb.accumulateStar(f, v0, nM > 0, false, nullptr, 0, false, false, A, work);
            Eigen::Matrix2d H;
            H << A.H[0], A.H[1], A.H[1], A.H[2];
            // dense G = H_ms over the star's fit indices
            idx.clear();
            Eigen::Matrix<double, Eigen::Dynamic, 2> G(A.nRows, 2);
            int row = 0;
            for (std::size_t j = 0; j < A.blocks.size(); ++j) {
                int const na = pb.model.blocks()[std::size_t(A.blocks[j])].fitSize();
                double const* g0 = A.G.data() + A.gOff[j];
                for (int r = 0; r < na; ++r, ++row) {
                    idx.push_back(A.blockFit[j] + r);
                    G(row, 0) = g0[r];
                    G(row, 1) = g0[na + r];
                }
            }
            auto removeTerm = [&](Eigen::Matrix2d const& Us, std::vector<int> const* mIdx,
                                  Eigen::Matrix<double, Eigen::Dynamic, 2> const* Um) -> bool {
                Eigen::Matrix2d const T = H.inverse() * Us;
                Eigen::Matrix2d const C = Eigen::Matrix2d::Identity() - Us.transpose() * T;
                if (!(C(0, 0) > 0.0) || !(C.determinant() > 0.0)) return false;
                if (nM > 0) {
                    Eigen::Matrix<double, Eigen::Dynamic, 2> V = -G * T;
                    if (Um) {
                        for (std::size_t q = 0; q < mIdx->size(); ++q) {
                            auto const it = std::lower_bound(idx.begin(), idx.end(), (*mIdx)[q]);
                            V.row(it - idx.begin()) += Um->row(Eigen::Index(q));
                        }
                    }
                    Eigen::Matrix2d const Lc = Eigen::LLT<Eigen::Matrix2d>(C.inverse()).matrixL();
                    Eigen::Matrix<double, Eigen::Dynamic, 2> const Vc = V * Lc;
                    pushCorrection(idx, Vc);
                    // star blocks after the removal
                    if (Um) {
                        for (std::size_t q = 0; q < mIdx->size(); ++q) {
                            auto const it = std::lower_bound(idx.begin(), idx.end(), (*mIdx)[q]);
                            G.row(it - idx.begin()) -= Um->row(Eigen::Index(q)) * Us.transpose();
                        }
                    }
                }
                H -= Us * Us.transpose();
                return true;
            };
            for (std::int64_t k : kv.second) {
                // the back-substitution skips the removed term from now on
                if (!linData.empty()) linData[std::size_t(kLinSize * k + 8)] = std::numeric_limits<double>::quiet_NaN();
                if (!pb.evalMeas(std::size_t(k), v0, true, ev, work)) continue;
                Eigen::Matrix2d Us;  // rows: star parameters, columns: residual components
                Us << ev.As[0], ev.As[1], ev.As[2], ev.As[3];
                std::vector<int> mIdx;
                Eigen::Matrix<double, Eigen::Dynamic, 2> Um;
                if (nM > 0) {
                    ccdIndices(L.ccd[std::size_t(m.ccd[std::size_t(k)])], mIdx);
                    Um.resize(Eigen::Index(mIdx.size()), 2);
                    for (int q = 0; q < int(mIdx.size()); ++q) Um.row(q) << ev.Am[2 * q], ev.Am[2 * q + 1];
                }
                if (!removeTerm(Us, &mIdx, &Um)) return lostStar(ks);
            }
            if (refOut.count(f)) {
                RefEval rv;
                if (pb.evalRef(std::size_t(f), v0, true, rv)) {
                    Eigen::Matrix2d Us;
                    Us << rv.As[0], rv.As[1], rv.As[2], rv.As[3];
                    if (!removeTerm(Us, nullptr, nullptr)) return lostStar(ks);
                }
            }
            Hs[std::size_t(ks)] = {H(0, 0), H(1, 0), H(1, 1)};
        }
        return nM > 0 ? maybeFold() : true;
    }

    ~SchurSystem() override {
        pb.log.debug("Schur solver: seconds in back-substitution " + std::to_string(tBack) + ", PCG corrections " +
                     std::to_string(tCorr) + ", PCG triangular solves " + std::to_string(tTrsv) +
                     ", rhs reduction " + std::to_string(tReduce) + ", factorizations " + std::to_string(tFactor));
    }

private:
    double tBack = 0.0, tFactor = 0.0;
    mutable double tCorr = 0.0, tTrsv = 0.0, tReduce = 0.0;
    static double since(std::chrono::steady_clock::time_point t0) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    int nM = 0;
    /// Per-measurement linearisation data at the build point (kLinSize numbers each, NaN when the
    /// measurement has no term), filled by the star pass and used by the back-substitution.
    std::vector<double> linData;
    Eigen::MatrixXd S, Lf;
    Eigen::VectorXd bRed, starReduction;
    std::vector<std::array<double, 3>> Hs;
    // Downdates since the last factorization: S' = S - sum_c Vc Vc^T. The rows of correction c are runs of
    // consecutive indices (one per model block): runs cRun[cRunStart[c] .. cRunStart[c+1]) as (first, length);
    // its values start at cV[cVStart[c]]: the n first-column entries, then the n second-column entries, in
    // run order (contiguous loads and stores in the PCG products; no per-entry index).
    std::vector<std::int64_t> cRunStart{0}, cVStart{0};
    std::vector<std::array<int, 2>> cRun;
    std::vector<double> cV;
    std::int64_t cEntries = 0;
    mutable double corrWork = 0.0;  // correction entries processed by PCG products since the last factorization

    bool lostStar(int ks) {
        message = "after outlier rejection " + pb.describeParam(nM + 2 * std::int64_t(ks)) +
                  " is no longer constrained";
        return false;
    }

    void pushCorrection(std::vector<int> const& idx, Eigen::Matrix<double, Eigen::Dynamic, 2> const& V) {
        for (std::size_t i = 0; i < idx.size(); ++i) {
            if (i > 0 && idx[i] == idx[i - 1] + 1) {
                cRun.back()[1]++;
            } else {
                cRun.push_back({idx[i], 1});
            }
        }
        cRunStart.push_back(std::int64_t(cRun.size()));
        for (int col = 0; col < 2; ++col)
            for (std::size_t i = 0; i < idx.size(); ++i) cV.push_back(V(Eigen::Index(i), col));
        cVStart.push_back(std::int64_t(cV.size()));
        cEntries += std::int64_t(idx.size());
    }

    std::size_t nCorrections() const { return cRunStart.size() - 1; }

    void clearCorrections() {
        cRunStart.assign(1, 0);
        cVStart.assign(1, 0);
        cRun.clear();
        cV.clear();
        cEntries = 0;
    }

    /// Row indices of correction c, in value order.
    void correctionRows(std::size_t c, std::vector<int>& rows) const {
        rows.clear();
        for (auto r = std::size_t(cRunStart[c]); r < std::size_t(cRunStart[c + 1]); ++r)
            for (int i = 0; i < cRun[r][1]; ++i) rows.push_back(cRun[r][0] + i);
    }

    /// Fold the downdates into the factorization once the PCG products with them have cost, since the last
    /// factorization, about as much as a new factorization (nM^3 / 3 flops; one correction entry in one
    /// product costs about kFlopsPerEntry, measured): with downdates growing linearly from pass to pass this
    /// rule minimises the total (the cost of a period F is a F^2 / 2 + C, optimal at F^2 a / 2 = C), and it
    /// also keeps the PCG iteration count low. Also folded when the downdates outgrow half a dense matrix.
    /// The rule counts work, not time: results do not depend on the machine's speed.
    bool maybeFold() {
        constexpr double kFlopsPerEntry = 80.0;
        double const factorFlops = double(nM) * double(nM) * double(nM) / 3.0;
        if (double(cEntries) > 0.5 * double(nM) * double(nM) || kFlopsPerEntry * corrWork > factorFlops)
            return consolidate();
        return true;
    }

    /// y -= sum_c Vc Vc^T x.
    void corrTimes(Eigen::VectorXd const& x, Eigen::VectorXd& y) const {
        auto const t0 = std::chrono::steady_clock::now();
        corrWork += double(cEntries);
        corrTimesImpl(x, y);
        tCorr += since(t0);
    }
    void trsv(Eigen::VectorXd& x) const {
        auto const t0 = std::chrono::steady_clock::now();
        denseCholeskySolveInPlace(Lf, x);
        tTrsv += since(t0);
    }
    /// Corrections are processed in fixed chunks of 512, each into its own partial vector, and the partials
    /// are added in chunk order: the result does not depend on the thread count.
    void corrTimesImpl(Eigen::VectorXd const& x, Eigen::VectorXd& y) const {
        std::size_t const nc = nCorrections();
        std::size_t const chunk = 512;
        std::size_t const nChunks = (nc + chunk - 1) / chunk;
        if (partial.size() < nChunks) partial.resize(nChunks);
        parallelFor(std::ptrdiff_t(nChunks), [&](std::ptrdiff_t t) {
            Eigen::VectorXd& yp = partial[std::size_t(t)];
            yp.setZero(nM);
            std::size_t const c0 = std::size_t(t) * chunk, c1 = std::min(nc, c0 + chunk);
            double const* xd = x.data();
            double* yd = yp.data();
            for (std::size_t c = c0; c < c1; ++c) {
                auto const r0 = std::size_t(cRunStart[c]), r1 = std::size_t(cRunStart[c + 1]);
                auto const n = std::size_t(cVStart[c + 1] - cVStart[c]) / 2;
                double const* v0 = cV.data() + cVStart[c];
                double const* v1 = v0 + n;
                // same summation order as a loop over the rows: results do not depend on the storage
                double t0 = 0.0, t1 = 0.0;
                std::size_t e = 0;
                for (std::size_t r = r0; r < r1; ++r) {
                    double const* xr = xd + cRun[r][0];
                    for (int i = 0; i < cRun[r][1]; ++i, ++e) {
                        t0 += v0[e] * xr[i];
                        t1 += v1[e] * xr[i];
                    }
                }
                e = 0;
                for (std::size_t r = r0; r < r1; ++r) {
                    double* yr = yd + cRun[r][0];
                    int const len = cRun[r][1];
                    for (int i = 0; i < len; ++i) yr[i] -= v0[e + std::size_t(i)] * t0 + v1[e + std::size_t(i)] * t1;
                    e += std::size_t(len);
                }
            }
        });
        for (std::size_t t = 0; t < nChunks; ++t) y += partial[t];
    }
    mutable std::vector<Eigen::VectorXd> partial;

    /// Fold the downdates into S and refactorize.
    /// The columns of S are split into fixed ranges, each updated by one task going through the corrections
    /// in order: every entry sees the same sequence of operations for any thread count.
    bool consolidate() {
        std::size_t const nc = nCorrections();
        std::ptrdiff_t const nRanges = 32;
        parallelFor(nRanges, [&](std::ptrdiff_t t) {
            int const j0 = int(std::int64_t(nM) * t / nRanges), j1 = int(std::int64_t(nM) * (t + 1) / nRanges);
            std::vector<int> rows;
            for (std::size_t c = 0; c < nc; ++c) {
                // rows are increasing: skip corrections without a column in [j0, j1)
                auto const r0 = std::size_t(cRunStart[c]), r1 = std::size_t(cRunStart[c + 1]);
                if (cRun[r0][0] >= j1 || cRun[r1 - 1][0] + cRun[r1 - 1][1] <= j0) continue;
                correctionRows(c, rows);
                std::size_t const n = rows.size();
                double const* v0 = cV.data() + cVStart[c];
                double const* v1 = v0 + n;
                std::size_t const q0 = std::size_t(std::lower_bound(rows.begin(), rows.end(), j0) - rows.begin());
                for (std::size_t q = q0; q < n && rows[q] < j1; ++q) {
                    double const a0 = v0[q], a1 = v1[q];
                    double* col = S.data() + std::ptrdiff_t(rows[q]) * nM;
                    for (std::size_t r = q; r < n; ++r) col[rows[r]] -= v0[r] * a0 + v1[r] * a1;
                }
            }
        });
        pb.log.debug("Schur solver: folded " + std::to_string(nc) + " downdates into the reduced matrix");
        clearCorrections();
        return factor();
    }

    /// Preconditioned conjugate gradients on (S + D) x = b with the factorization of S as the (exact)
    /// preconditioner; S p is carried recursively (S z = r), so each iteration costs two triangular solves
    /// and one product with the low-rank corrections D.
    bool pcg(Eigen::VectorXd const& b, Eigen::VectorXd& x) {
        x = b;
        trsv(x);
        double const bnorm = b.dot(x);
        if (!(bnorm > 0.0)) return false;
        Eigen::VectorXd r = Eigen::VectorXd::Zero(nM);
        corrTimes(x, r);
        r = -r;
        Eigen::VectorXd z = r;
        trsv(z);
        Eigen::VectorXd p = z, u = r, q(nM);
        double rz = r.dot(z);
        double const tol2 = 1e-18 * bnorm;  // 1e-9 relative in the preconditioned norm
        int it = 0;
        for (; it < 60 && rz > tol2; ++it) {
            q = u;
            corrTimes(p, q);
            double const pq = p.dot(q);
            if (!(pq > 0.0)) return false;
            double const alpha = rz / pq;
            x += alpha * p;
            r -= alpha * q;
            z = r;
            trsv(z);
            double const rzNew = r.dot(z);
            double const beta = rzNew / rz;
            rz = rzNew;
            p = z + beta * p;
            u = r + beta * u;
        }
        pb.log.debug("Schur solver: PCG converged in " + std::to_string(it) + " iterations (" +
                     std::to_string(nCorrections()) + " rank-2 downdates)");
        return rz <= tol2;
    }

    /// Per-CcdImage model blocks: S += A^T A, rhs_m -= A^T e.
    void modelPass(Eigen::VectorXd& rhs) {
        Layout const& L = pb.layout;
        auto const& ccds = pb.assoc.ccdImages();
        auto const& m = pb.assoc.measured();
        std::ptrdiff_t const nCcd = std::ptrdiff_t(ccds.size());
        std::ptrdiff_t const chunk = 256;
        std::vector<Eigen::MatrixXd> H(static_cast<std::size_t>(chunk));
        std::vector<Eigen::VectorXd> b(static_cast<std::size_t>(chunk));
        for (std::ptrdiff_t c0 = 0; c0 < nCcd; c0 += chunk) {
            std::ptrdiff_t const cn = std::min(chunk, nCcd - c0);
            parallelFor(cn, [&](std::ptrdiff_t t) {
                auto const c = std::size_t(c0 + t);
                CcdFit const& cf = L.ccd[c];
                H[std::size_t(t)].resize(0, 0);
                if (cf.n == 0) return;
                std::int64_t n = 0;
                for (std::int64_t k = ccds[c].measBegin; k < ccds[c].measEnd; ++k)
                    n += (m.inFit[std::size_t(k)] && m.valid[std::size_t(k)]) ? 1 : 0;
                Eigen::MatrixXd A(2 * n, cf.nP);
                Eigen::VectorXd e(2 * n);
                MeasEval ev;
                double work[kWorkSize];
                Eigen::Index row = 0;
                for (std::int64_t kk = ccds[c].measBegin; kk < ccds[c].measEnd; ++kk) {
                    auto const k = std::size_t(kk);
                    if (!m.inFit[k] || !m.valid[k]) continue;
                    if (!pb.evalMeas(k, v0, true, ev, work)) continue;
                    for (int q = 0; q < cf.nP; ++q) {
                        A(row, q) = ev.Am[2 * q];
                        A(row + 1, q) = ev.Am[2 * q + 1];
                    }
                    e[row] = ev.e[0];
                    e[row + 1] = ev.e[1];
                    row += 2;
                }
                auto At = A.topRows(row);
                H[std::size_t(t)].setZero(cf.nP, cf.nP);
                H[std::size_t(t)].selfadjointView<Eigen::Lower>().rankUpdate(At.transpose());
                b[std::size_t(t)] = -(At.transpose() * e.head(row));
            });
            for (std::ptrdiff_t t = 0; t < cn; ++t) {
                auto const c = std::size_t(c0 + t);
                if (H[std::size_t(t)].size() == 0) continue;
                scatterCcd(L.ccd[c], H[std::size_t(t)], b[std::size_t(t)], rhs);
            }
        }
    }

    /// Global fit indices of a CcdImage's active parameters, in CcdFit column order.
    void ccdIndices(CcdFit const& cf, std::vector<int>& idx) const {
        idx.clear();
        auto const& blocks = pb.model.blocks();
        for (int j = 0; j < cf.n; ++j) {
            int const off = pb.layout.blockFit[std::size_t(cf.block[j])];
            for (int q = 0; q < blocks[std::size_t(cf.block[j])].fitSize(); ++q) idx.push_back(off + q);
        }
    }

    void scatterCcd(CcdFit const& cf, Eigen::MatrixXd const& H, Eigen::VectorXd const& b, Eigen::VectorXd& rhs) {
        std::vector<int> idx;
        ccdIndices(cf, idx);
        int const n = int(idx.size());
        for (int q = 0; q < n; ++q) {
            rhs[idx[std::size_t(q)]] += b[q];
            for (int r = q; r < n; ++r) S(idx[std::size_t(r)], idx[std::size_t(q)]) += H(r, q);
        }
    }

    bool starPass(Eigen::VectorXd& rhs) {
        Layout const& L = pb.layout;
        std::size_t const nS = L.fitStars.size();
        Hs.assign(nS, {0.0, 0.0, 0.0});
        if (nM > 0) starReduction.setZero(nM);
        if (nM > 0) {
            linData.assign(pb.assoc.measured().size() * std::size_t(kLinSize), std::numeric_limits<double>::quiet_NaN());
            pb.linOut = linData.data();
        }
        auto const& blocks = pb.model.blocks();
        std::size_t const chunk = 2048;
        std::vector<StarAccum> acc(std::min(chunk, nS));
        std::vector<std::uint8_t> bad(chunk);
        // per-block entry lists for the ownership accumulation
        std::size_t const nBlocks = blocks.size();
        std::vector<std::vector<std::pair<int, int>>> entries(nBlocks);
        std::vector<int> active;
        for (std::size_t s0 = 0; s0 < nS; s0 += chunk) {
            std::size_t const sn = std::min(chunk, nS - s0);
            std::ptrdiff_t const sub = 32;
            std::ptrdiff_t const nTasks = std::ptrdiff_t((sn + std::size_t(sub) - 1) / std::size_t(sub));
            parallelFor(nTasks, [&](std::ptrdiff_t t) {
                double work[kWorkSize];
                std::size_t const a = std::size_t(t * sub), e = std::min(sn, a + std::size_t(sub));
                for (std::size_t i = a; i < e; ++i) {
                    std::size_t const k = s0 + i;
                    int const f = L.fitStars[k];
                    StarAccum& A = acc[i];
                    pb.accumulateStar(f, v0, nM > 0, true, nullptr, 0, false, false, A, work);
                    std::copy(A.H, A.H + 3, Hs[k].begin());
                    rhs[std::ptrdiff_t(nM + 2 * std::int64_t(k))] = A.b[0];
                    rhs[std::ptrdiff_t(nM + 2 * std::int64_t(k) + 1)] = A.b[1];
                    double l00 = 0.0, l10 = 0.0, l11 = 0.0;
                    bad[i] = chol2(A.H, l00, l10, l11) ? 0 : 1;
                    if (!bad[i] && nM > 0) whitenStar(A, l00, l10, l11, A.b);
                }
            });
            for (std::size_t i = 0; i < sn; ++i) {
                if (bad[i]) {
                    message = "the normal matrix is singular: " + pb.describeParam(nM + 2 * std::int64_t(s0 + i)) +
                              " is not constrained by its measurements";
                    pb.linOut = nullptr;
                    return false;
                }
            }
            if (nM == 0) continue;
            // block-row ownership: block a owns rows of a; tiles (a, b) with fit offset(b) <= offset(a)
            for (int b : active) entries[std::size_t(b)].clear();
            active.clear();
            for (std::size_t i = 0; i < sn; ++i) {
                for (std::size_t j = 0; j < acc[i].blocks.size(); ++j) {
                    int const b = acc[i].blocks[j];
                    if (entries[std::size_t(b)].empty()) active.push_back(b);
                    entries[std::size_t(b)].emplace_back(int(i), int(j));
                }
            }
            parallelFor(std::ptrdiff_t(active.size()), [&](std::ptrdiff_t t) {
                int const a = active[std::size_t(t)];
                int const na = blocks[std::size_t(a)].fitSize();
                for (auto const& [i, ja] : entries[std::size_t(a)]) {
                    StarAccum const& A = acc[std::size_t(i)];
                    int const oa = A.blockFit[std::size_t(ja)];
                    double const* wa0 = A.G.data() + A.gOff[std::size_t(ja)];
                    double const* wa1 = wa0 + na;
                    double* red = starReduction.data() + oa;
                    for (int r = 0; r < na; ++r) red[r] += wa0[r] * A.z[0] + wa1[r] * A.z[1];
                    for (int jb = 0; jb <= ja; ++jb) {
                        int const nb = blocks[std::size_t(A.blocks[std::size_t(jb)])].fitSize();
                        int const ob = A.blockFit[std::size_t(jb)];
                        double const* wb0 = A.G.data() + A.gOff[std::size_t(jb)];
                        double const* wb1 = wb0 + nb;
                        for (int q = 0; q < nb; ++q) {
                            double const c0 = wb0[q], c1 = wb1[q];
                            double* col = S.data() + std::ptrdiff_t(ob + q) * nM + oa;
                            for (int r = 0; r < na; ++r) col[r] -= wa0[r] * c0 + wa1[r] * c1;
                        }
                    }
                }
            });
        }
        pb.linOut = nullptr;
        return true;
    }

    bool factor() {
        corrWork = 0.0;
        Lf = S;
        auto const t0 = std::chrono::steady_clock::now();
        std::ptrdiff_t const fail = denseCholeskyInPlace(Lf);
        tFactor += since(t0);
        if (fail < 0) return true;
        std::ostringstream s;
        s << "Cholesky factorization of the reduced normal matrix failed (not positive definite) at "
          << pb.describeParam(fail);
        // every block with no information on its diagonal
        auto const& blocks = pb.model.blocks();
        std::vector<std::string> empty;
        for (std::size_t b = 0; b < blocks.size(); ++b) {
            int const off = pb.layout.blockFit[b];
            if (off < 0) continue;
            bool zero = false;
            for (int q = 0; q < blocks[b].fitSize(); ++q) zero = zero || !(S(off + q, off + q) > 0.0);
            if (zero) empty.push_back(pb.describeBlock(int(b)));
        }
        if (!empty.empty()) {
            s << "; parameters without any constraint: ";
            for (std::size_t i = 0; i < empty.size(); ++i) s << (i ? ", " : "") << empty[i];
        } else if (nM <= 4000) {
            // name the blocks spanned by the (near) null space of the reduced matrix
            Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(S.selfadjointView<Eigen::Lower>());
            auto const& ev = es.eigenvalues();
            double const emax = ev.cwiseAbs().maxCoeff();
            std::vector<double> weight(blocks.size(), 0.0);
            for (Eigen::Index i = 0; i < ev.size(); ++i) {
                if (ev[i] > 1e-11 * emax) continue;
                for (std::size_t b = 0; b < blocks.size(); ++b) {
                    int const off = pb.layout.blockFit[b];
                    if (off >= 0) weight[b] += es.eigenvectors().col(i).segment(off, blocks[b].fitSize()).squaredNorm();
                }
            }
            double const wmax = *std::max_element(weight.begin(), weight.end());
            std::vector<std::string> names;
            for (std::size_t b = 0; b < blocks.size(); ++b)
                if (wmax > 0 && weight[b] > 0.01 * wmax) names.push_back(pb.describeBlock(int(b)));
            if (!names.empty()) {
                s << "; unconstrained (degenerate) mappings: ";
                for (std::size_t i = 0; i < names.size() && i < 30; ++i) s << (i ? ", " : "") << names[i];
                if (names.size() > 30) s << " and " << names.size() - 30 << " more";
                s << " (are these visits/detectors connected to the others by common stars or reference stars?)";
            }
        } else {
            s << "; the mapping is degenerate (too few or badly distributed stars, or overlapping visits missing)";
        }
        message = s.str();
        return false;
    }

    /// dm -= sum over stars with a non-zero rhs of W z (W = G L^-T, z = L^-1 rhs_s), G recomputed at the
    /// build point over the current valid terms (only the few stars touched by outliers have a rhs).
    void reduceRhs(Eigen::VectorXd const& rhs, Eigen::VectorXd& dm) {
        Layout const& L = pb.layout;
        StarAccum A;
        double work[kWorkSize];
        auto const& blocks = pb.model.blocks();
        for (std::size_t k = 0; k < L.fitStars.size(); ++k) {
            double const b[2] = {rhs[std::ptrdiff_t(nM + 2 * std::int64_t(k))],
                                 rhs[std::ptrdiff_t(nM + 2 * std::int64_t(k) + 1)]};
            if (b[0] == 0.0 && b[1] == 0.0) continue;
            pb.accumulateStar(L.fitStars[k], v0, true, false, nullptr, 0, false, false, A, work);
            double l00 = 0.0, l10 = 0.0, l11 = 0.0;
            if (!chol2(Hs[k].data(), l00, l10, l11)) continue;
            whitenStar(A, l00, l10, l11, b);
            for (std::size_t j = 0; j < A.blocks.size(); ++j) {
                int const na = blocks[std::size_t(A.blocks[j])].fitSize();
                double const* w0 = A.G.data() + A.gOff[j];
                double const* w1 = w0 + na;
                for (int r = 0; r < na; ++r) dm[A.blockFit[j] + r] -= w0[r] * A.z[0] + w1[r] * A.z[1];
            }
        }
    }

    /// delta_s = H_ss^-1 (rhs_s - G^T dm) for every fit star, with G^T dm = sum over the star's valid
    /// measurements of As^T (Am dm) and Am dm = -L^-1 (first-order change of the mapping), evaluated from the
    /// per-measurement linearisation data of the build (no Jacobian recomputation). Two passes: the terms
    /// As^T (Am dm) per CcdImage (its coefficient changes shared by kPolyBatch measurements at a time, data read
    /// in storage order), then the sums per star (in the star's measurement order, as a single pass would).
    void backSubstitute(Eigen::VectorXd const& rhs, Eigen::VectorXd const& dm, Eigen::VectorXd& delta) {
        Layout const& L = pb.layout;
        auto const& ccds = pb.assoc.ccdImages();
        std::size_t const nS = L.fitStars.size();
        if (nM > 0) {
            starTerm.resize(2 * pb.assoc.measured().size());
            parallelFor(std::ptrdiff_t(ccds.size()), [&](std::ptrdiff_t ci) {
                auto const c = std::size_t(ci);
                CcdFit const& cf = L.ccd[c];
                double const* dA = nullptr;
                double const* dB = nullptr;
                for (int j = 0; j < cf.n; ++j) {
                    double const* d = dm.data() + L.blockFit[std::size_t(cf.block[j])];
                    (cf.part[j] == 0 ? dA : dB) = d;
                }
                constexpr int B = kPolyBatch;
                std::int64_t const end = ccds[c].measEnd;
                std::int64_t k = ccds[c].measBegin;
                while (k < end) {
                    double const* lin[B];
                    std::int64_t idx[B];
                    int nb = 0;
                    for (; k < end && nb < B; ++k) {
                        double const* l = linData.data() + std::ptrdiff_t(kLinSize) * k;
                        if (std::isnan(l[8])) {  // no term at the build, or removed since (downdate)
                            starTerm[std::size_t(2 * k)] = starTerm[std::size_t(2 * k + 1)] = 0.0;
                            continue;
                        }
                        lin[nb] = l;
                        idx[nb] = k;
                        ++nb;
                    }
                    if (nb == 0) continue;
                    for (int j = nb; j < B; ++j) lin[j] = lin[0];  // padding lanes (results unused)
                    double dM0[B], dM1[B];
                    pb.model.linearChangeBatch(c, lin, dA, dB, dM0, dM1);
                    for (int j = 0; j < nb; ++j) {
                        double const* l = lin[j];
                        double const e0 = -dM0[j] / l[8];
                        double const e1 = (-dM1[j] - l[9] * e0) / l[10];
                        starTerm[std::size_t(2 * idx[j])] = l[11] * e0 + l[12] * e1;
                        starTerm[std::size_t(2 * idx[j] + 1)] = l[13] * e0 + l[14] * e1;
                    }
                }
            });
        }
        std::ptrdiff_t const sub = 256;
        std::ptrdiff_t const nTasks = std::ptrdiff_t((nS + std::size_t(sub) - 1) / std::size_t(sub));
        parallelFor(nTasks, [&](std::ptrdiff_t t) {
            std::size_t const a = std::size_t(t * sub), e = std::min(nS, a + std::size_t(sub));
            for (std::size_t k = a; k < e; ++k) {
                auto const i0 = std::ptrdiff_t(nM + 2 * std::int64_t(k));
                double b0 = rhs[i0], b1 = rhs[i0 + 1];
                if (nM > 0) {
                    auto const f = std::size_t(L.fitStars[k]);
                    for (std::int64_t i = pb.starMeasStart[f]; i < pb.starMeasStart[f + 1]; ++i) {
                        auto const km = std::size_t(pb.starMeas[std::size_t(i)]);
                        b0 -= starTerm[2 * km];
                        b1 -= starTerm[2 * km + 1];
                    }
                }
                auto const& H = Hs[k];
                double const det = H[0] * H[2] - H[1] * H[1];
                delta[i0] = (H[2] * b0 - H[1] * b1) / det;
                delta[i0 + 1] = (H[0] * b1 - H[1] * b0) / det;
            }
        });
    }
    std::vector<double> starTerm;  ///< As^T (Am dm) per measurement (0 without a term), back-substitution
};

}  // namespace

std::unique_ptr<NormalSystem> makeSchurSystem(Problem& pb) { return std::make_unique<SchurSystem>(pb); }

}  // namespace diffcal::jointcal::detail
