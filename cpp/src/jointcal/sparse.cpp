// General sparse solver: the upper triangle of J^T W J is assembled directly in compressed-column form (no
// triplets; model columns from per-CcdImage blocks, star columns per star in parallel), factorized with
// Eigen's SimplicialLDLT (AMD ordering). The symbolic analysis is kept and reused as long as the pattern
// does not change (same whatToFit and fitted-star set). Downdates subtract the outlier terms in place and
// refactorize numerically.
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "diffcal/parallel.hpp"
#include "problem.hpp"

namespace diffcal::jointcal::detail {

namespace {

class SparseSystem final : public NormalSystem {
public:
    explicit SparseSystem(Problem& p) : NormalSystem(p), cache(p.sparseCache) {}

    bool build(Eigen::VectorXd& rhs) override {
        assemble(rhs);
        return factorize(true);
    }

    /// The upper triangle of H = J^T W J (in H) and the right-hand side of H delta = rhs, at the
    /// current parameters (the build point of later downdates), without factorizing.
    void assemble(Eigen::VectorXd& rhs) {
        takeSnapshot();
        Layout const& L = pb.layout;
        nM = L.nModel;
        n = L.nTotal;
        outliers.clear();
        rhs.setZero(n);
        buildPattern();
        std::fill(H.valuePtr(), H.valuePtr() + H.nonZeros(), 0.0);
        if (nM > 0) modelValues(rhs);
        if (L.positions()) starValues(rhs);
    }

    Eigen::SparseMatrix<double> const& matrix() const { return H; }

    bool solve(Eigen::VectorXd const& rhs, bool, Eigen::VectorXd& delta) override {
        if (!outliers.empty() && !pcg(rhs, delta)) {
            if (!foldOutliers()) return false;
        } else if (!outliers.empty()) {
            return true;
        }
        delta = cache.ldlt.solve(rhs);
        if (cache.ldlt.info() != Eigen::Success || !delta.allFinite()) {
            message = "the sparse solve failed";
            return false;
        }
        return true;
    }

    /// Record the removed terms; the downdated system H0 - sum U U^T is solved by preconditioned conjugate
    /// gradients with the factorization of H0 (folded in by a numeric refactorization when that stops
    /// converging quickly).
    bool downdate(OutlierSet const& o) override {
        Layout const& L = pb.layout;
        auto const& m = pb.assoc.measured();
        double work[kWorkSize];
        MeasEval ev;
        for (std::int64_t kk : o.meas) {
            auto const k = std::size_t(kk);
            if (!pb.evalMeas(k, v0, true, ev, work)) continue;
            Term t;
            CcdFit const& cf = L.ccd[std::size_t(m.ccd[k])];
            if (nM > 0 && cf.n > 0) ccdIndices(cf, t.idx);
            int const nP = int(t.idx.size());
            int const sk = L.starFit[std::size_t(m.fitted[k])];
            if (sk >= 0) {
                t.idx.push_back(nM + 2 * sk);
                t.idx.push_back(nM + 2 * sk + 1);
            }
            t.V.resize(Eigen::Index(t.idx.size()), 2);
            for (int q = 0; q < nP; ++q) {
                t.V(q, 0) = ev.Am[2 * q];
                t.V(q, 1) = ev.Am[2 * q + 1];
            }
            if (sk >= 0) {
                t.V(nP, 0) = ev.As[0];
                t.V(nP, 1) = ev.As[1];
                t.V(nP + 1, 0) = ev.As[2];
                t.V(nP + 1, 1) = ev.As[3];
            }
            if (!t.idx.empty()) outliers.push_back(std::move(t));
        }
        for (int f : o.refStars) {
            int const sk = L.starFit[std::size_t(f)];
            RefEval rv;
            if (sk < 0 || !pb.evalRef(std::size_t(f), v0, true, rv)) continue;
            Term t;
            t.idx = {nM + 2 * sk, nM + 2 * sk + 1};
            t.V.resize(2, 2);
            t.V << rv.As[0], rv.As[1], rv.As[2], rv.As[3];
            outliers.push_back(std::move(t));
        }
        return true;
    }

private:
    /// A removed term: rows idx (fit indices) of its whitened Jacobian transposed (|idx| x 2).
    struct Term {
        std::vector<int> idx;
        Eigen::Matrix<double, Eigen::Dynamic, 2> V;
    };
    std::vector<Term> outliers;  ///< removed since the last factorization

    /// y -= sum U U^T x over the removed terms.
    void termsTimes(Eigen::VectorXd const& x, Eigen::VectorXd& y) const {
        for (auto const& t : outliers) {
            double t0 = 0.0, t1 = 0.0;
            for (std::size_t i = 0; i < t.idx.size(); ++i) {
                t0 += t.V(Eigen::Index(i), 0) * x[t.idx[i]];
                t1 += t.V(Eigen::Index(i), 1) * x[t.idx[i]];
            }
            for (std::size_t i = 0; i < t.idx.size(); ++i)
                y[t.idx[i]] -= t.V(Eigen::Index(i), 0) * t0 + t.V(Eigen::Index(i), 1) * t1;
        }
    }

    /// PCG on (H0 - U U^T) x = b with the exact preconditioner H0^-1 (H0 p carried recursively).
    bool pcg(Eigen::VectorXd const& b, Eigen::VectorXd& x) {
        x = cache.ldlt.solve(b);
        double const bnorm = b.dot(x);
        if (!(bnorm > 0.0) || !x.allFinite()) return false;
        Eigen::VectorXd r = Eigen::VectorXd::Zero(Eigen::Index(n));
        termsTimes(x, r);
        r = -r;  // r0 = b - (H0 - UU^T) x0 = U U^T x0
        Eigen::VectorXd z = cache.ldlt.solve(r);
        Eigen::VectorXd p = z, u = r, q = Eigen::VectorXd::Zero(static_cast<Eigen::Index>(n));
        double rz = r.dot(z);
        double const tol2 = 1e-20 * bnorm;
        int it = 0;
        for (; it < 60 && rz > tol2; ++it) {
            q = u;
            termsTimes(p, q);
            double const pq = p.dot(q);
            if (!(pq > 0.0)) return false;
            double const alpha = rz / pq;
            x += alpha * p;
            r -= alpha * q;
            z = cache.ldlt.solve(r);
            double const rzNew = r.dot(z);
            double const beta = rzNew / rz;
            rz = rzNew;
            p = z + beta * p;
            u = r + beta * u;
        }
        pb.log.debug("sparse solver: PCG converged in " + std::to_string(it) + " iterations (" +
                     std::to_string(outliers.size()) + " removed terms)");
        return rz <= tol2;
    }

    /// Subtract the removed terms from H in place and refactorize numerically (same pattern).
    bool foldOutliers() {
        Layout const& L = pb.layout;
        for (auto const& t : outliers) {
            auto const nt = Eigen::Index(t.idx.size());
            for (Eigen::Index qi = 0; qi < nt; ++qi) {
                for (Eigen::Index ri = 0; ri < nt; ++ri) {
                    int const row = t.idx[std::size_t(ri)], col = t.idx[std::size_t(qi)];
                    if (row > col) continue;
                    double const v = t.V(ri, 0) * t.V(qi, 0) + t.V(ri, 1) * t.V(qi, 1);
                    H.valuePtr()[position(row, col, L)] -= v;
                }
            }
        }
        pb.log.debug("sparse solver: folded " + std::to_string(outliers.size()) + " removed terms, refactorizing");
        outliers.clear();
        return factorize(false);
    }

    /// Position of the upper entry (row <= col) of any structural non-zero.
    std::int64_t position(int row, int col, Layout const& L) const {
        if (col < nM) return modelPos(row, col);
        int const k = (col - nM) / 2;
        bool const second = ((col - nM) % 2) == 1;
        std::int64_t const start = H.outerIndexPtr()[col];
        if (row >= nM) return start + starRows[std::size_t(k)] + (row - (nM + 2 * k));
        int const b = blockOfIndex[std::size_t(row)];
        std::int64_t const p0 = starBlockPos(k, b) + (row - L.blockFit[std::size_t(b)]);
        return second ? p1Of(k, p0) : p0;
    }

    SparseCache& cache;
    Eigen::SparseMatrix<double> H;
    int nM = 0;
    std::int64_t n = 0;
    // model structure: for each block b, the coupled blocks with smaller fit offset and their row prefix
    std::vector<std::vector<std::pair<int, int>>> coupled;
    std::vector<int> sumCoupled;
    std::vector<int> blockOfIndex;  // fit index -> block (model part)
    // star structure (CSR over fit stars): blocks and row prefixes
    std::vector<std::int64_t> sbStart;
    std::vector<int> sbBlock, sbPrefix, sbFit;
    std::vector<int> starRows;

    void ccdIndices(CcdFit const& cf, std::vector<int>& idx) const {
        idx.clear();
        auto const& blocks = pb.model.blocks();
        for (int j = 0; j < cf.n; ++j) {
            int const off = pb.layout.blockFit[std::size_t(cf.block[j])];
            for (int q = 0; q < blocks[std::size_t(cf.block[j])].fitSize(); ++q) idx.push_back(off + q);
        }
    }

    /// Position of the upper entry (row, col) (row <= col) in the model columns.
    std::int64_t modelPos(int row, int col) const {
        if (row > col) std::swap(row, col);
        int const bc = blockOfIndex[std::size_t(col)], br = blockOfIndex[std::size_t(row)];
        int const oc = pb.layout.blockFit[std::size_t(bc)];
        std::int64_t const start = H.outerIndexPtr()[col];
        if (br == bc) return start + sumCoupled[std::size_t(bc)] + (row - oc);
        auto const& list = coupled[std::size_t(bc)];
        auto const it = std::lower_bound(list.begin(), list.end(), std::make_pair(br, -1),
                                         [&](auto const& a, auto const& b) {
                                             return pb.layout.blockFit[std::size_t(a.first)] <
                                                    pb.layout.blockFit[std::size_t(b.first)];
                                         });
        return start + it->second + (row - pb.layout.blockFit[std::size_t(br)]);
    }

    /// Position of the first row of block b in the first column of fit star k.
    std::int64_t starBlockPos(int k, int b) const {
        int const bf = pb.layout.blockFit[std::size_t(b)];
        auto const s = std::size_t(sbStart[std::size_t(k)]), e = std::size_t(sbStart[std::size_t(k) + 1]);
        auto const it = std::lower_bound(sbFit.begin() + std::ptrdiff_t(s), sbFit.begin() + std::ptrdiff_t(e), bf);
        std::size_t const j = std::size_t(it - sbFit.begin());
        return H.outerIndexPtr()[nM + 2 * k] + sbPrefix[j];
    }
    /// Same row position in the second column of the star.
    std::int64_t p1Of(int k, std::int64_t p0) const {
        return p0 - H.outerIndexPtr()[nM + 2 * k] + H.outerIndexPtr()[nM + 2 * k + 1];
    }

    void subtractStarDiag(int k, double const* As) {
        int const rows = starRows[std::size_t(k)];
        std::int64_t const c0 = H.outerIndexPtr()[nM + 2 * k], c1 = H.outerIndexPtr()[nM + 2 * k + 1];
        H.valuePtr()[c0 + rows] -= As[0] * As[0] + As[1] * As[1];
        H.valuePtr()[c1 + rows] -= As[2] * As[0] + As[3] * As[1];
        H.valuePtr()[c1 + rows + 1] -= As[2] * As[2] + As[3] * As[3];
    }

    void buildPattern() {
        Layout const& L = pb.layout;
        auto const& blocks = pb.model.blocks();
        auto const& meas = pb.assoc.measured();
        std::size_t const nb = blocks.size();
        coupled.assign(nb, {});
        sumCoupled.assign(nb, 0);
        blockOfIndex.assign(std::size_t(nM), -1);
        for (std::size_t b = 0; b < nb; ++b) {
            int const off = L.blockFit[b];
            if (off < 0) continue;
            for (int q = 0; q < blocks[b].fitSize(); ++q) blockOfIndex[std::size_t(off + q)] = int(b);
        }
        std::vector<std::set<int>> cset(nb);
        for (auto const& cf : L.ccd)
            if (cf.n == 2) cset[std::size_t(cf.block[1])].insert(cf.block[0]);
        for (std::size_t b = 0; b < nb; ++b) {
            std::vector<int> list(cset[b].begin(), cset[b].end());
            std::sort(list.begin(), list.end(),
                      [&](int a, int c) { return L.blockFit[std::size_t(a)] < L.blockFit[std::size_t(c)]; });
            int pre = 0;
            for (int a : list) {
                coupled[b].emplace_back(a, pre);
                pre += blocks[std::size_t(a)].fitSize();
            }
            sumCoupled[b] = pre;
        }
        // star block lists (all in-fit measurements, valid or not, so the pattern is stable)
        std::size_t const nS = L.fitStars.size();
        sbStart.assign(nS + 1, 0);
        std::vector<std::vector<int>> lists(nS);
        if (nM > 0) {
            parallelFor(std::ptrdiff_t(nS), [&](std::ptrdiff_t kk) {
                auto const k = std::size_t(kk);
                int const f = L.fitStars[k];
                auto& lst = lists[k];
                for (std::int64_t i = pb.starMeasStart[std::size_t(f)]; i < pb.starMeasStart[std::size_t(f) + 1]; ++i) {
                    CcdFit const& cf = L.ccd[std::size_t(meas.ccd[std::size_t(pb.starMeas[std::size_t(i)])])];
                    for (int j = 0; j < cf.n; ++j) lst.push_back(cf.block[j]);
                }
                std::sort(lst.begin(), lst.end(),
                          [&](int a, int c) { return L.blockFit[std::size_t(a)] < L.blockFit[std::size_t(c)]; });
                lst.erase(std::unique(lst.begin(), lst.end()), lst.end());
            });
        }
        for (std::size_t k = 0; k < nS; ++k) sbStart[k + 1] = sbStart[k] + std::int64_t(lists[k].size());
        sbBlock.resize(std::size_t(sbStart[nS]));
        sbPrefix.resize(sbBlock.size());
        sbFit.resize(sbBlock.size());
        starRows.assign(nS, 0);
        for (std::size_t k = 0; k < nS; ++k) {
            int pre = 0;
            for (std::size_t j = 0; j < lists[k].size(); ++j) {
                auto const p = std::size_t(sbStart[k]) + j;
                sbBlock[p] = lists[k][j];
                sbFit[p] = L.blockFit[std::size_t(lists[k][j])];
                sbPrefix[p] = pre;
                pre += blocks[std::size_t(lists[k][j])].fitSize();
            }
            starRows[k] = pre;
        }
        // column starts
        std::vector<int> outer(std::size_t(n) + 1, 0);
        std::int64_t nnz = 0;
        for (int col = 0; col < nM; ++col) {
            int const b = blockOfIndex[std::size_t(col)];
            outer[std::size_t(col)] = int(nnz);
            nnz += sumCoupled[std::size_t(b)] + (col - L.blockFit[std::size_t(b)]) + 1;
        }
        for (std::size_t k = 0; k < nS; ++k) {
            outer[std::size_t(nM) + 2 * k] = int(nnz);
            nnz += starRows[k] + 1;
            outer[std::size_t(nM) + 2 * k + 1] = int(nnz);
            nnz += starRows[k] + 2;
        }
        if (nnz > std::int64_t(2147483647)) throw std::runtime_error("sparse normal matrix too large for 32-bit indices");
        outer[std::size_t(n)] = int(nnz);
        H.resize(Eigen::Index(n), Eigen::Index(n));
        H.resizeNonZeros(Eigen::Index(nnz));
        std::copy(outer.begin(), outer.end(), H.outerIndexPtr());
        int* inner = H.innerIndexPtr();
        parallelFor(std::ptrdiff_t(nM), [&](std::ptrdiff_t c) {
            int const col = int(c);
            int const b = blockOfIndex[std::size_t(col)];
            int p = outer[std::size_t(col)];
            for (auto const& [a, pre] : coupled[std::size_t(b)]) {
                (void)pre;
                int const oa = L.blockFit[std::size_t(a)];
                for (int q = 0; q < blocks[std::size_t(a)].fitSize(); ++q) inner[p++] = oa + q;
            }
            for (int r = L.blockFit[std::size_t(b)]; r <= col; ++r) inner[p++] = r;
        });
        parallelFor(std::ptrdiff_t(nS), [&](std::ptrdiff_t kk) {
            auto const k = std::size_t(kk);
            int const c0 = nM + 2 * int(k);
            for (int col = c0; col <= c0 + 1; ++col) {
                int p = outer[std::size_t(col)];
                for (auto j = std::size_t(sbStart[k]); j < std::size_t(sbStart[k + 1]); ++j) {
                    int const b = sbBlock[j];
                    int const ob = L.blockFit[std::size_t(b)];
                    for (int q = 0; q < blocks[std::size_t(b)].fitSize(); ++q) inner[p++] = ob + q;
                }
                for (int r = c0; r <= col; ++r) inner[p++] = r;
            }
        });
    }

    void modelValues(Eigen::VectorXd& rhs) {
        Layout const& L = pb.layout;
        auto const& ccds = pb.assoc.ccdImages();
        auto const& m = pb.assoc.measured();
        std::ptrdiff_t const nCcd = std::ptrdiff_t(ccds.size());
        std::ptrdiff_t const chunk = 256;
        std::vector<Eigen::MatrixXd> Hc(static_cast<std::size_t>(chunk));
        std::vector<Eigen::VectorXd> bc(static_cast<std::size_t>(chunk));
        std::vector<int> idx;
        for (std::ptrdiff_t c0 = 0; c0 < nCcd; c0 += chunk) {
            std::ptrdiff_t const cn = std::min(chunk, nCcd - c0);
            parallelFor(cn, [&](std::ptrdiff_t t) {
                auto const c = std::size_t(c0 + t);
                CcdFit const& cf = L.ccd[c];
                Hc[std::size_t(t)].resize(0, 0);
                if (cf.n == 0) return;
                Hc[std::size_t(t)].setZero(cf.nP, cf.nP);
                bc[std::size_t(t)].setZero(cf.nP);
                MeasEval ev;
                double work[kWorkSize];
                std::int64_t nv = 0;
                for (std::int64_t k = ccds[c].measBegin; k < ccds[c].measEnd; ++k)
                    nv += (m.inFit[std::size_t(k)] && m.valid[std::size_t(k)]) ? 1 : 0;
                Eigen::MatrixXd A(2 * nv, cf.nP);
                Eigen::VectorXd e(2 * nv);
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
                Hc[std::size_t(t)].selfadjointView<Eigen::Lower>().rankUpdate(At.transpose());
                bc[std::size_t(t)] = -(At.transpose() * e.head(row));
            });
            for (std::ptrdiff_t t = 0; t < cn; ++t) {
                auto const c = std::size_t(c0 + t);
                if (Hc[std::size_t(t)].size() == 0) continue;
                ccdIndices(L.ccd[c], idx);
                int const np = int(idx.size());
                for (int q = 0; q < np; ++q) {
                    rhs[idx[std::size_t(q)]] += bc[std::size_t(t)][q];
                    for (int r = q; r < np; ++r)
                        H.valuePtr()[modelPos(idx[std::size_t(q)], idx[std::size_t(r)])] += Hc[std::size_t(t)](r, q);
                }
            }
        }
    }

    void starValues(Eigen::VectorXd& rhs) {
        Layout const& L = pb.layout;
        std::size_t const nS = L.fitStars.size();
        std::ptrdiff_t const sub = 64;
        std::ptrdiff_t const nTasks = std::ptrdiff_t((nS + std::size_t(sub) - 1) / std::size_t(sub));
        double* val = H.valuePtr();
        parallelFor(nTasks, [&](std::ptrdiff_t t) {
            StarAccum A;
            double work[kWorkSize];
            std::size_t const a = std::size_t(t * sub), e = std::min(nS, a + std::size_t(sub));
            for (std::size_t k = a; k < e; ++k) {
                pb.accumulateStar(L.fitStars[k], v0, nM > 0, true, nullptr, 0, false, true, A, work);
                std::int64_t const c0 = H.outerIndexPtr()[nM + 2 * std::int64_t(k)];
                std::int64_t const c1 = H.outerIndexPtr()[nM + 2 * std::int64_t(k) + 1];
                int const rows = starRows[k];
                if (A.nRows != rows) throw std::logic_error("sparse star pattern mismatch");
                // G of each block, in the same block order as the pattern
                for (std::size_t j = 0; j < A.blocks.size(); ++j) {
                    int const size = (j + 1 < A.gOff.size() ? A.gOff[j + 1] : int(A.G.size())) - A.gOff[j];
                    int const nq = size / 2;
                    int const pre = sbPrefix[std::size_t(sbStart[k]) + j];
                    double const* g0 = A.G.data() + A.gOff[j];
                    double const* g1 = g0 + nq;
                    for (int q = 0; q < nq; ++q) {
                        val[c0 + pre + q] = g0[q];
                        val[c1 + pre + q] = g1[q];
                    }
                }
                val[c0 + rows] = A.H[0];
                val[c1 + rows] = A.H[1];
                val[c1 + rows + 1] = A.H[2];
                rhs[std::ptrdiff_t(nM + 2 * std::int64_t(k))] = A.b[0];
                rhs[std::ptrdiff_t(nM + 2 * std::int64_t(k) + 1)] = A.b[1];
            }
        });
    }

    bool samePattern() const {
        auto const nn = std::size_t(n) + 1;
        if (!cache.analyzed || cache.outer.size() != nn) return false;
        if (!std::equal(cache.outer.begin(), cache.outer.end(), H.outerIndexPtr())) return false;
        auto const nnz = std::size_t(H.nonZeros());
        return cache.inner.size() == nnz && std::equal(cache.inner.begin(), cache.inner.end(), H.innerIndexPtr());
    }

    bool factorize(bool maybeAnalyze) {
        if (n == 0) {
            message = "nothing to fit";
            return false;
        }
        if (maybeAnalyze && !samePattern()) {
            cache.ldlt.analyzePattern(H);
            cache.outer.assign(H.outerIndexPtr(), H.outerIndexPtr() + n + 1);
            cache.inner.assign(H.innerIndexPtr(), H.innerIndexPtr() + H.nonZeros());
            cache.analyzed = true;
            cache.analyses++;
            pb.log.debug("sparse solver: symbolic analysis of a " + std::to_string(n) + " x " + std::to_string(n) +
                         " matrix with " + std::to_string(H.nonZeros()) + " upper non-zeros");
        }
        cache.ldlt.factorize(H);
        auto const& D = cache.ldlt.vectorD();
        std::vector<std::string> names;
        bool bad = cache.ldlt.info() != Eigen::Success;
        if (!bad) {
            double dmax = 0.0;
            for (Eigen::Index i = 0; i < D.size(); ++i) dmax = std::max(dmax, std::abs(D[i]));
            for (Eigen::Index i = 0; i < D.size(); ++i) {
                if (!(D[i] > 1e-14 * dmax) || !std::isfinite(D[i])) {
                    bad = true;
                    std::string const nm = pb.describeParam(cache.ldlt.permutationPinv().indices()[i]);
                    if (std::find(names.begin(), names.end(), nm) == names.end() && names.size() < 20)
                        names.push_back(nm);
                }
            }
        }
        if (!bad) return true;
        std::ostringstream s;
        s << "sparse LDL^T factorization failed: the normal matrix is not positive definite";
        if (!names.empty()) {
            s << "; unconstrained parameters: ";
            for (std::size_t i = 0; i < names.size(); ++i) s << (i ? ", " : "") << names[i];
        }
        message = s.str();
        return false;
    }
};

}  // namespace

std::unique_ptr<NormalSystem> makeSparseSystem(Problem& pb) { return std::make_unique<SparseSystem>(pb); }

void assembleNormalEquations(Problem& pb, Eigen::SparseMatrix<double>& upper, Eigen::VectorXd& rhs) {
    SparseSystem s(pb);
    s.assemble(rhs);
    upper = s.matrix();
}

}  // namespace diffcal::jointcal::detail
