// The jointcal photometric models (spec section 1.3): what maps an instrumental flux to a calibrated flux
// (nJy) or magnitude (AB) for a measurement on one CcdImage.
//
// Four models, each a list of parameter blocks:
// * SimpleFlux: one scale s per CcdImage (nJy/count); model = s * instFlux, sigma = s_err * instFluxErr.
// * SimpleMagnitude: one zero point z per CcdImage (AB mag of 1 count); model = instMag + z,
//   sigma = instMagErr.
// * ConstrainedFlux: one constant c per chip (detector) times one 2-D Chebyshev field T per visit over the
//   focal plane; model = c * T(xFocal, yFocal) * instFlux, sigma = c_err * T_err(xF, yF) * instFluxErr.
// * ConstrainedMagnitude: model = instMag + c + T(xF, yF), sigma = 2.5/ln10 * instFluxErr / instFlux.
//
// Chebyshev fields: order n has (n+1)(n+2)/2 coefficients a_ij (T = sum a_ij T_i(u) T_j(v)), stored with the
// y degree j outer (0..n) and the x degree i inner (0..n-j); u, v are the focal-plane coordinates (mm) mapped
// to [-1, 1] over the focal-plane box given at construction. Constrained models hold the chip whose detector
// centre is closest to the focal-plane origin fixed (chip/visit degeneracy).
//
// The error pedestal f (photometryErrorPedestal) is applied as hypot(instFluxErr, f * instFlux) for the flux
// models and ConstrainedMagnitude (before the magnitude conversion) and as hypot(instMagErr, f) for
// SimpleMagnitude. Before freezeErrorTransform() the error uses the current parameters; afterwards a frozen
// copy (the flux problems then become exactly linear in the chip/scale parameters).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "diffcal/jointcal/association.hpp"
#include "diffcal/jointcal/fitter.hpp"

namespace diffcal::jointcal {

enum class PhotometryModelKind { SimpleFlux = 0, SimpleMagnitude = 1, ConstrainedFlux = 2, ConstrainedMagnitude = 3 };

inline int nChebyshevParams(int order) { return (order + 1) * (order + 2) / 2; }

/// Chebyshev basis T_i(u) T_j(v) in the parameter order (j outer, i inner, i + j <= order): out[0 .. n).
void evalChebyshevBasis(int order, double u, double v, double* out);

/// Integral of T_k over [a, b] (both in [-1, 1]).
double chebyshevIntegral(int k, double a, double b);

/// One parameter block of a photometric model.
struct PhotometryBlock {
    enum Kind { Ccd = 0, Chip = 1, Visit = 2 };
    int kind = Ccd;
    std::int64_t id = 0;  ///< CcdImage index (Ccd), detector id (Chip) or visit id (Visit)
    int order = 0;        ///< Chebyshev order (Visit), else 0
    int offset = 0;       ///< first parameter in params()
    int size = 1;
    bool fixed = false;   ///< not fitted (the central chip of a constrained model)
};

class PhotometryModel {
public:
    /// One scale (flux) or zero point (magnitude) per CcdImage, initialized from its input calibration.
    static PhotometryModel makeSimple(Associations const& assoc, bool magnitude, double errorPedestal);
    /// Chip constants times (flux) / plus (magnitude) visit Chebyshev fields over focalBox = {xmin, ymin, xmax,
    /// ymax} (mm). Every CcdImage needs its pixel -> focal-plane map. Throws std::invalid_argument otherwise.
    static PhotometryModel makeConstrained(Associations const& assoc, bool magnitude, int visitOrder,
                                           std::array<double, 4> const& focalBox, double errorPedestal);
    /// Rebuild from serialized parts (see blocks(), ccdBlocks(), params()).
    PhotometryModel(PhotometryModelKind kind, std::vector<PhotometryBlock> blocks, std::vector<std::array<int, 2>> ccdBlocks,
                    std::vector<CcdImage> ccds, std::array<double, 4> focalBox, std::vector<double> params,
                    double errorPedestal);

    PhotometryModelKind kind() const { return _kind; }
    bool isMagnitude() const {
        return _kind == PhotometryModelKind::SimpleMagnitude || _kind == PhotometryModelKind::ConstrainedMagnitude;
    }
    bool isConstrained() const {
        return _kind == PhotometryModelKind::ConstrainedFlux || _kind == PhotometryModelKind::ConstrainedMagnitude;
    }
    std::vector<PhotometryBlock> const& blocks() const { return _blocks; }
    /// Per CcdImage: {block A, block B}: (ccd block, -1) for simple models, (chip block, visit block) otherwise.
    std::vector<std::array<int, 2>> const& ccdBlocks() const { return _ccdBlocks; }
    std::vector<double>& params() { return _params; }
    std::vector<double> const& params() const { return _params; }
    std::array<double, 4> const& focalBox() const { return _focalBox; }
    std::size_t nCcd() const { return _ccdBlocks.size(); }
    double errorPedestal() const { return _pedestal; }
    bool errorFrozen() const { return _frozen; }
    std::vector<double> const& errorParams() const { return _frozen ? _errParams : _params; }

    /// Replace the error transform by a copy of the current parameters.
    void freezeErrorTransform();

    /// Model value (nJy or AB mag) for a measurement of CcdImage ccd with the given parameters; if dA/dB are
    /// non-null they receive the derivatives with respect to the parameters of block A / B.
    double value(std::size_t ccd, double const* params, double instFlux, double instMag, double xFocal,
                 double yFocal, double* dA = nullptr, double* dB = nullptr) const;
    /// Model uncertainty (same units) of a measurement, through the (possibly frozen) error transform.
    double sigma(std::size_t ccd, double instFlux, double instFluxErr, double instMagErr, double xFocal,
                 double yFocal) const;
    /// Calibration factor (nJy per count) at pixel (x, y) of CcdImage ccd for the current parameters.
    double calibration(std::size_t ccd, double x, double y) const;

    /// Model value for instFlux = 1 (a flux scale, or a magnitude offset) at the 9 points {min, centre,
    /// max}^2 of each CcdImage's bbox must be positive. Returns false and sets message (naming the visit and
    /// detector) otherwise, or when ndof < 0.
    bool validate(std::int64_t ndof, std::string& message) const;

    /// Chebyshev normalized coordinates of a focal-plane point.
    void focalToUnit(double xf, double yf, double& u, double& v) const;

private:
    PhotometryModel() = default;
    PhotometryModelKind _kind = PhotometryModelKind::SimpleFlux;
    std::vector<PhotometryBlock> _blocks;
    std::vector<std::array<int, 2>> _ccdBlocks;
    std::vector<CcdImage> _ccds;  ///< copies (bbox, pixToFocal, ids) for validation and calibration()
    std::array<double, 4> _focalBox{-1, -1, 1, 1};
    std::vector<double> _params, _errParams;
    double _pedestal = 0.0;
    bool _frozen = false;
};

struct PhotometryFitterOptions {
    SolverKind solver = SolverKind::Schur;
    bool removeAllOutliersPerPass = false;  ///< faster variant: no one-outlier-per-parameter-group limit
};

/// Parsed photometric whatToFit ("Model", "ModelVisit", "ModelChip", "Fluxes").
struct PhotometryWhatToFit {
    bool visit = false, chip = false, fluxes = false;
    bool model() const { return visit || chip; }
    static PhotometryWhatToFit parse(std::string const& s);
};

namespace detail {
class PhotometryProblem;
}

/// Gauss-Newton fitter of a PhotometryModel and the fitted-star fluxes/magnitudes (spec 2.4-2.9 with 1
/// residual per term). Residuals: model(m) - F for measurements, F - R for reference stars. The step solves
/// (J^T W J) delta = -J^T W r and is added (the reference subtracts the opposite-sign solution: same update).
/// Solvers: Schur (1x1 star blocks eliminated, dense Cholesky of the reduced model system) or Sparse (Eigen
/// SimplicialLDLT of the full system). Rank update: the normal matrix is rebuilt at the parameters of the
/// last full build without the rejected terms (= a downdate of that factorization) and the right-hand side is
/// the rejected terms' gradient (the reference's linearized update).
class PhotometryFitter {
public:
    PhotometryFitter(Associations& assoc, PhotometryModel& model, PhotometryFitterOptions const& opts);
    ~PhotometryFitter();
    PhotometryFitter(PhotometryFitter const&) = delete;
    PhotometryFitter& operator=(PhotometryFitter const&) = delete;

    MinimizeResult minimize(std::string const& whatToFit, double nSigmaCut = 0.0, double sigmaRelativeTolerance = 0.0,
                            bool doRankUpdate = true, bool doLineSearch = false);
    Chi2Result computeChi2();
    /// Per-term chi2 (NaN where there is no term): measurements and reference associations (per fitted star).
    void termChi2(std::vector<double>& meas, std::vector<double>& ref);
    /// Assign indices and return the Gauss-Newton step without applying it.
    Eigen::VectorXd computeStep(std::string const& whatToFit);
    /// Normal equations H delta = rhs at the current parameters (upper triangle of H); see
    /// AstrometryFitter::normalEquations.
    void normalEquations(std::string const& whatToFit, Eigen::SparseMatrix<double>& upper, Eigen::VectorXd& rhs);

    std::int64_t nTotal() const;
    std::int64_t nModelFit() const;
    std::int64_t measOutliersTotal() const { return _measOutliers; }
    std::int64_t refOutliersTotal() const { return _refOutliers; }
    std::string const& lastError() const { return _lastError; }
    SolverKind solverKind() const;
    void setSolverKind(SolverKind k);
    LogBuffer& log();

private:
    std::unique_ptr<detail::PhotometryProblem> _pb;
    std::int64_t _measOutliers = 0, _refOutliers = 0;
    std::string _lastError;
};

}  // namespace diffcal::jointcal
