// Astrometric models: per-CcdImage mappings from pixels to the per-visit tangent plane (degrees).
//
// simple:      one polynomial per CcdImage, pixels normalised to [-1, 1] over the detector frame.
// constrained: a per-chip polynomial (pixels normalised to [-1, 1] -> focal plane, mm) composed with a
//              per-visit polynomial (focal plane -> visit tangent plane, deg); the chip nearest the
//              focal-plane centre is held fixed.
//
// Parameters are stored in "mapping blocks" (one polynomial each, x-output coefficients then y-output
// coefficients, monomials ordered as in poly.hpp). Block order = fit order: simple, CcdImages in input order;
// constrained, chip blocks sorted by detector id, then visit blocks sorted by visit id.
//
// Deliberate differences from the reference (LSST jointcal):
// * The visit polynomials of the constrained model take focal-plane coordinates divided by `focalScale`
//   (mm; default the largest |coordinate| of any detector corner) instead of raw millimetres. This is a
//   reparametrisation of the same function space (identical optimum) that keeps the order-5 normal
//   equations well conditioned; "identity" initialisation means the same function as in the reference.
// * The simple model is initialised by fitting the input WCS projected onto the *visit* tangent plane (the
//   plane the fit uses), not onto each CcdImage's own WCS tangent plane; only the starting point changes.
// * CcdImages whose fit catalog is empty get no mapping (the reference would create unconstrained ones).
// * Order lowering of the simple model (too few stars) lowers the *fitted* order only: the polynomial keeps
//   the configured order, initialised from the input WCS, and only the coefficients of total degree <= the
//   lowered order are fitted (the others stay at their WCS values). The reference fits a lower-order
//   polynomial instead; at order 0 that is a constant map, which has no pixel scale at all.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "diffcal/jointcal/association.hpp"
#include "diffcal/jointcal/poly.hpp"
#include "diffcal/jointcal/sky.hpp"

namespace diffcal::jointcal {

enum class AstrometryModelKind { Simple = 0, Constrained = 1 };

struct MappingBlock {
    enum Kind { Ccd = 0, Chip = 1, Visit = 2 };
    int kind = Ccd;
    std::int64_t id = 0;  ///< ccd index (simple), detector id (chip) or visit id (visit)
    int order = 0;
    int offset = 0;       ///< first parameter in the model parameter vector
    int size = 0;         ///< number of parameters = nPolyParams(order)
    bool fixed = false;   ///< never fitted (the reference chip of the constrained model)
    int fitOrder = -1;    ///< coefficients of total degree <= fitOrder are fitted (-1: = order)

    int effectiveFitOrder() const { return fitOrder < 0 ? order : fitOrder; }
    /// Number of fitted parameters: 2 * nMonomials(fitOrder).
    int fitSize() const { return 2 * nMonomials(effectiveFitOrder()); }
    /// Index inside the block's parameters of fitted parameter q (x-output ones first, then y-output ones).
    int paramIndex(int q) const {
        int const nmf = nMonomials(effectiveFitOrder()), nm = nMonomials(order);
        return q < nmf ? q : nm + (q - nmf);
    }
};

/// How one CcdImage maps pixels to its visit tangent plane.
struct CcdMapping {
    int blockA = -1;      ///< simple: the CcdImage block; constrained: the chip block
    int blockB = -1;      ///< constrained: the visit block; -1 for simple
    int visitIndex = -1;  ///< index into the visit list (tangent planes)
    double x0 = 0, y0 = 0, sx = 1, sy = 1;  ///< pixel normalisation u = (x - x0) * sx, v = (y - y0) * sy
};

class AstrometryModel {
public:
    /// Build a simple model: one polynomial of order `order` (lowered while its parameter count exceeds twice
    /// the CcdImage's number of measurements) per CcdImage with data, initialised from the input WCS
    /// (useInputWcs) or to the identity.
    static AstrometryModel makeSimple(Associations const& assoc, int order, bool useInputWcs, LogBuffer& log);

    /// Build a constrained model (needs the pixel -> focal-plane transform of every CcdImage with data).
    /// focalScale <= 0 selects the default (largest |focal coordinate| over all detector corners).
    static AstrometryModel makeConstrained(Associations const& assoc, int chipOrder, int visitOrder,
                                           double focalScale, LogBuffer& log);

    /// Assemble a model from its parts (deserialisation); validates sizes.
    AstrometryModel(AstrometryModelKind kind, std::vector<MappingBlock> blocks, std::vector<CcdMapping> mappings,
                    std::vector<std::int64_t> visitIds, std::vector<double> visitRa, std::vector<double> visitDec,
                    double focalScale, std::vector<double> params);

    AstrometryModelKind kind() const { return _kind; }
    std::vector<MappingBlock> const& blocks() const { return _blocks; }
    std::vector<CcdMapping> const& mappings() const { return _mappings; }
    std::vector<std::int64_t> const& visitIds() const { return _visitIds; }
    std::vector<Gnomonic> const& visitTangentPlanes() const { return _visitTp; }
    double focalScale() const { return _focalScale; }
    std::vector<double>& params() { return _params; }
    std::vector<double> const& params() const { return _params; }
    std::size_t nCcd() const { return _mappings.size(); }
    bool hasMapping(std::size_t ccd) const { return _mappings[ccd].blockA >= 0; }

    /// Pixel -> visit tangent plane (deg) for CcdImage ccd using parameter vector P (size params().size()).
    /// jacPix (optional) receives d(out)/d(pixel), row-major 2x2.
    void transform(std::size_t ccd, double const* P, double x, double y, double* out, double* jacPix) const;

    /// transform with jacPix at kPolyBatch pixel positions of CcdImage ccd (same arithmetic per point):
    /// out0/out1 the tangent-plane positions, jacPix[4][kPolyBatch] the row-major Jacobians.
    void transformBatch(std::size_t ccd, double const* P, double const* x, double const* y, double* out0,
                        double* out1, double (*jacPix)[kPolyBatch]) const;

    /// Same plus parameter derivatives: dA (2 x size(blockA), column-major) and, for the constrained model,
    /// dB (2 x size(blockB), column-major). work must hold 6 * nMonomials(maxOrder) doubles.
    void transformWithDerivatives(std::size_t ccd, double const* P, double x, double y, double* out, double* jacPix,
                                  double* dA, double* dB, double* work, double* lin = nullptr) const;

    /// First-order change of the mapping output of CcdImage ccd for coefficient changes of block A (and B)
    /// dCoefA (dCoefB; fitted coefficients only, see MappingBlock::paramIndex; nullptr: not fitted), at
    /// kPolyBatch linearisation points lin[j] written by transformWithDerivatives (normalised pixel,
    /// normalised focal position, scaled visit Jacobian): dOut0[j], dOut1[j].
    void linearChangeBatch(std::size_t ccd, double const* const* lin, double const* dCoefA, double const* dCoefB,
                           double* dOut0, double* dOut1) const;

    int maxOrder() const;

    /// ndof >= 0 (the only check that applies to astrometry).
    bool validate(std::int64_t ndof) const { return ndof >= 0; }

private:
    AstrometryModel() = default;
    AstrometryModelKind _kind = AstrometryModelKind::Simple;
    std::vector<MappingBlock> _blocks;
    std::vector<CcdMapping> _mappings;
    std::vector<std::int64_t> _visitIds;
    std::vector<Gnomonic> _visitTp;
    double _focalScale = 1.0;
    std::vector<double> _params;
};

}  // namespace diffcal::jointcal
