// Internal: the astrometric least-squares problem (parameter layout, term evaluation) and the normal-equation
// systems used by AstrometryFitter. Not a public header.
#pragma once

#include <Eigen/Core>
#include <Eigen/SparseCholesky>
#include <Eigen/SparseCore>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffcal/jointcal/fitter.hpp"
#include "fit_common.hpp"

namespace diffcal::jointcal::detail {

constexpr int kMaxBlockParams = (kMaxPolyOrder + 1) * (kMaxPolyOrder + 2);  // one polynomial mapping
constexpr int kMaxCcdParams = 2 * kMaxBlockParams;                          // chip + visit
constexpr int kWorkSize = 6 * ((kMaxPolyOrder + 1) * (kMaxPolyOrder + 2) / 2);
constexpr int kLinSize = 15;

/// Active (fitted) blocks of one CcdImage, in increasing fit-offset order.
struct CcdFit {
    int n = 0;          ///< number of active blocks (0..2)
    int block[2] = {-1, -1};
    int part[2] = {0, 0};  ///< 0: derivatives from dA (block A), 1: from dB (block B)
    int nP = 0;         ///< total active parameters
};

struct Layout {
    WhatToFit what;
    std::vector<int> blockFit;  ///< per model block: fit offset or -1
    int nModel = 0;
    std::vector<int> starFit;   ///< per fitted star: fit-star index k (parameters nModel + 2k, +1) or -1
    std::vector<int> fitStars;  ///< k -> fitted-star index
    std::int64_t nTotal = 0;
    std::vector<CcdFit> ccd;
    bool positions() const { return what.positions; }
};

/// Star unit vector and its derivatives with respect to RA and Dec (per radian).
struct StarVec {
    double p[3], dpr[3], dpd[3];
    double pm[3];   ///< proper motion as a tangent vector (rad/yr) when the star has a reference PM
    double pmNorm;  ///< |pm| (rad/yr), 0 if none
};

/// A full parameter state (model + stars) owned by value.
struct State {
    std::vector<double> model, ra, dec;
};

/// Read-only view of a parameter state plus its precomputed star vectors.
struct View {
    double const* model = nullptr;
    double const* ra = nullptr;
    double const* dec = nullptr;
    StarVec const* sv = nullptr;
};

/// A measurement term: whitened residual and whitened Jacobians (residual derivatives, not model ones).
struct MeasEval {
    double e[2];
    double chi2;
    int nP;
    double Am[2 * kMaxCcdParams];  ///< column-major 2 x nP, columns in the CcdFit block order
    double As[4];                  ///< column-major 2 x 2: d e / d(ra, dec)
};

struct RefEval {
    double e[2];
    double chi2;
    double As[4];
};

/// Per-star accumulation of the star rows of the normal equations.
struct StarAccum {
    double H[3];                 ///< star block (h00, h10, h11)
    double b[2];                 ///< star right-hand side (-sum As^T e)
    std::vector<int> blocks;     ///< model blocks coupled to the star, increasing fit offset
    std::vector<int> blockFit;   ///< their fit offsets
    std::vector<int> gOff;       ///< offset of each block's G (size x 2, column-major) in G
    std::vector<double> G;       ///< sum Am^T As per block
    int nRows = 0;               ///< sum of block sizes
    double z[2];                 ///< scratch (whitened rhs)
};

/// Persistent sparse factorization (symbolic analysis reused while the pattern does not change).
struct SparseCache {
    Eigen::SimplicialLDLT<Eigen::SparseMatrix<double>, Eigen::Upper, Eigen::AMDOrdering<int>> ldlt;
    std::vector<int> outer, inner;
    bool analyzed = false;
    int analyses = 0;
};

class Problem {
public:
    Problem(Associations& assoc, AstrometryModel& model, FitterOptions const& opts);

    Associations& assoc;
    AstrometryModel& model;
    FitterOptions opts;
    LogBuffer log;
    Layout layout;
    std::int64_t lastNTotal = 0;
    SparseCache sparseCache;

    std::vector<std::int64_t> starMeasStart, starMeas;  ///< in-fit measurements of each fitted star (CSR)
    std::vector<std::uint8_t> constantMapping;          ///< per CcdImage: order-0 simple mapping
    /// When set, accumulateStar stores kLinSize numbers per measurement k at linOut + kLinSize * k: the model
    /// linearisation point (8, see AstrometryModel::linearChangeBatch), the whitening factor (l00, l10, l11) and the
    /// whitened star Jacobian As.
    double* linOut = nullptr;

    void assignIndices(WhatToFit const& what);

    State snapshot() const;
    void restore(State const& s);
    void starVectors(double const* ra, double const* dec, std::vector<StarVec>& out) const;
    /// View of the current parameters (star vectors recomputed into `storage`).
    View current(std::vector<StarVec>& storage) const;
    View viewOf(State const& s, std::vector<StarVec>& storage) const;

    /// Position of measurement k's fitted star (proper motion applied) in its visit's tangent plane (deg), with
    /// (jp) d/d(ra, dec) per radian; false when the star is not in front of the tangent plane.
    bool projectStar(std::size_t k, View const& v, double& px, double& py, double* jp) const;
    /// Whitened residual, chi2 and (jac) derivatives of measurement k; without jac only out.chi2 is set (by the
    /// explicit inverse covariance; e is NaN). False when the term cannot be evaluated.
    bool evalMeas(std::size_t k, View const& v, bool jac, MeasEval& out, double* work, double* lin = nullptr) const;
    bool evalRef(std::size_t f, View const& v, bool jac, RefEval& out) const;

    /// Star rows of the normal equations at view v. Measurements listed in excl (sorted) and, if excludeRef,
    /// the reference term are left out. With allInFit the block list also covers invalid in-fit
    /// measurements (fixed sparse pattern).
    void accumulateStar(int f, View const& v, bool withModel, bool withRhs, std::int64_t const* excl,
                        std::size_t nExcl, bool excludeRef, bool allInFit, StarAccum& acc, double* work) const;

    /// chi2 and ndof at view v; optional per-term chi2 (NaN where no term).
    Chi2Result chi2(View const& v, std::vector<double>* measChi2 = nullptr, std::vector<double>* refChi2 = nullptr);

    void applyStep(Eigen::VectorXd const& delta, double scale);

    /// Human-readable owner of fit parameter idx (e.g. "visit 12 (visit mapping)").
    std::string describeParam(std::int64_t idx) const;
    std::string describeBlock(int block) const;
};

class NormalSystem {
public:
    explicit NormalSystem(Problem& pb) : pb(pb) {}
    virtual ~NormalSystem() = default;
    /// Build and factorize the normal equations at the current parameters; rhs = -J^T W r.
    virtual bool build(Eigen::VectorXd& rhs) = 0;
    /// Solve the (possibly downdated) system. isBuildRhs: rhs is the one returned by build().
    virtual bool solve(Eigen::VectorXd const& rhs, bool isBuildRhs, Eigen::VectorXd& delta) = 0;
    /// Remove terms (still valid when called) from the factorized system, evaluated at the build point.
    virtual bool downdate(OutlierSet const& o) = 0;
    std::string message;

protected:
    Problem& pb;
    State p0;
    std::vector<StarVec> sv0;
    View v0;
    void takeSnapshot() {
        p0 = pb.snapshot();
        v0 = pb.viewOf(p0, sv0);
    }
};

std::unique_ptr<NormalSystem> makeSchurSystem(Problem& pb);
std::unique_ptr<NormalSystem> makeSparseSystem(Problem& pb);
/// Upper triangle of the normal matrix and the right-hand side at the current parameters (no solve).
void assembleNormalEquations(Problem& pb, Eigen::SparseMatrix<double>& upper, Eigen::VectorXd& rhs);

}  // namespace diffcal::jointcal::detail
