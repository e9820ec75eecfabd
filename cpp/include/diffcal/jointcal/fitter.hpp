// The astrometric Gauss-Newton fitter with outlier rejection (spec sections 2.4-2.9).
//
// One minimize() call assigns parameter indices for `whatToFit`, builds and factorizes the normal equations
// at the current parameters, applies the undamped Gauss-Newton step and, if nSigmaCut > 0, runs the
// linearized outlier-rejection loop that reuses the factorization.
//
// Conventions: the residual of a measurement is r = P_v(F) - M_c(x) in visit tangent-plane degrees, that of
// a reference association r = -P_F(R); the step solves (J^T W J) delta = -J^T W r and is *added* to the
// parameters (polynomial coefficients, fitted-star RA/Dec in degrees).
//
// Deliberate differences from the reference (LSST jointcal FitterBase / AstrometryFit):
// * Star-position derivatives of the projections are analytic (the reference uses forward differences
//   with 1e-3 / 1e-4 degree steps).
// * Proper motion: a fitted star with a reference proper motion is moved by pm * (ccdEpoch - fitEpoch)
//   before projection (the physically correct sign). The reference uses fitEpoch - ccdEpoch (quirk 3);
//   FitterOptions::referencePmSign reproduces it.
// * Rank update ("doRankUpdate"): removed outlier terms are subtracted from the normal equations evaluated
//   at the parameters of the factorization (the reference subtracts them evaluated at the current
//   parameters, a second-order difference). Instead of CHOLMOD's factor downdate, the downdated system is
//   solved by conjugate gradients preconditioned with the (exact) factorization of the build point, to a
//   relative precision of 1e-9 (Schur: each removed term is a rank-2 downdate of the reduced matrix;
//   sparse: of the full matrix); the downdates are folded in and refactorized when they grow large or PCG
//   stalls. The gradient update is the reference's linearized one (minus the outliers' gradient).
// * removeAllOutliersPerPass (option, default off) drops the one-outlier-per-parameter-group rule.
// * Simple-model parameter blocks follow the CcdImage input order (the reference uses hash-map order).
// * A CcdImage whose simple mapping was reduced to order 0 (a constant) propagates its centroid errors with
//   the input WCS's CD matrix; the reference propagates them through the constant map, gets a zero
//   covariance and skips every such measurement.
#pragma once

#include <Eigen/Core>
#include <Eigen/SparseCore>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffcal/jointcal/association.hpp"
#include "diffcal/jointcal/model.hpp"

namespace diffcal::jointcal {

enum class MinimizeResult { Converged = 0, Chi2Increased = 1, NonFinite = 2, Failed = 3 };
enum class SolverKind { Sparse = 0, Schur = 1 };

struct FitterOptions {
    double positionErrorPedestal = 0.02;  ///< pixels, added in quadrature to x and y errors
    SolverKind solver = SolverKind::Schur;
    bool referencePmSign = false;         ///< reproduce the reference's proper-motion sign (quirk 3)
    bool removeAllOutliersPerPass = false;  ///< faster variant: no one-outlier-per-parameter-group limit
};

struct Chi2Result {
    double chi2 = 0.0;
    std::int64_t ndof = 0;
};

/// Parsed whatToFit.
struct WhatToFit {
    bool visit = false, chip = false, positions = false, pm = false;
    bool model() const { return visit || chip; }
    static WhatToFit parse(std::string const& s);
};

namespace detail {
class Problem;
}

class AstrometryFitter {
public:
    AstrometryFitter(Associations& assoc, AstrometryModel& model, FitterOptions const& opts);
    ~AstrometryFitter();
    AstrometryFitter(AstrometryFitter const&) = delete;
    AstrometryFitter& operator=(AstrometryFitter const&) = delete;

    MinimizeResult minimize(std::string const& whatToFit, double nSigmaCut = 0.0, double sigmaRelativeTolerance = 0.0,
                            bool doRankUpdate = true, bool doLineSearch = false);

    /// chi2 of all valid measurement and reference terms; ndof = residual count - parameters of the last
    /// index assignment.
    Chi2Result computeChi2();

    /// Per-term chi2 (NaN where there is no term): measurements (size measured().size()) and reference
    /// associations (size fitted().size()).
    void termChi2(std::vector<double>& meas, std::vector<double>& ref);

    /// Assign indices for whatToFit, build the normal equations and return the Gauss-Newton step without
    /// applying it (for solver comparisons). Throws std::runtime_error if the factorization fails.
    Eigen::VectorXd computeStep(std::string const& whatToFit);

    /// Assign indices for whatToFit and return the normal equations H delta = rhs at the current
    /// parameters: the upper triangle of H = J^T W J (parameter order of spec 1.4: model, then stars)
    /// and rhs = -J^T W r (the step the fit would take solves them). For writeInitMatrix dumps.
    void normalEquations(std::string const& whatToFit, Eigen::SparseMatrix<double>& upper, Eigen::VectorXd& rhs);

    std::int64_t nTotal() const;
    std::int64_t nModelFit() const;
    std::int64_t measOutliersTotal() const { return _measOutliers; }
    std::int64_t refOutliersTotal() const { return _refOutliers; }
    std::string const& lastError() const { return _lastError; }
    SolverKind solverKind() const;
    void setSolverKind(SolverKind k);
    int lastPassCount() const { return _lastPasses; }

    LogBuffer& log();

private:
    std::unique_ptr<detail::Problem> _pb;
    std::int64_t _measOutliers = 0, _refOutliers = 0;
    std::string _lastError;
    int _lastPasses = 0;
};

}  // namespace diffcal::jointcal
