// 2-D polynomials as used by the jointcal astrometric mappings.
//
// A polynomial of order n has (n+1)(n+2)/2 monomials x^(d-k) y^k ordered by total degree d = 0..n and,
// within a degree, by increasing power k of y (index d(d+1)/2 + k). A 2-D -> 2-D polynomial mapping stores
// all x-output coefficients first, then all y-output coefficients: 2 * nMonomials(n) parameters.
#pragma once

#include <vector>

namespace diffcal::jointcal {

constexpr int kMaxPolyOrder = 12;

inline int nMonomials(int order) { return (order + 1) * (order + 2) / 2; }
inline int nPolyParams(int order) { return (order + 1) * (order + 2); }

/// Monomial values at (x, y): out[0 .. nMonomials(order)).
void evalMonomials(int order, double x, double y, double* out);

/// evalMonomials for an order known at compile time (unrolled; the same arithmetic).
template <int N>
inline void evalMonomialsFixed(double x, double y, double* out) {
    double xp[N + 1], yp[N + 1];
    xp[0] = yp[0] = 1.0;
    for (int i = 1; i <= N; ++i) {
        xp[i] = xp[i - 1] * x;
        yp[i] = yp[i - 1] * y;
    }
    int k = 0;
    for (int d = 0; d <= N; ++d)
        for (int py = 0; py <= d; ++py) out[k++] = xp[d - py] * yp[py];
}

/// Monomials and their partial derivatives with respect to x and y.
void evalMonomialsAndDerivatives(int order, double x, double y, double* m, double* dmdx, double* dmdy);

/// Evaluate a 2-D -> 2-D polynomial mapping with coefficients c (x-output then y-output).
/// If jac is non-null it receives d(out)/d(x, y), row-major 2x2. mono (optional) receives the monomials;
/// work must hold 3 * nMonomials(order) doubles when jac is requested, else nMonomials(order).
void evalPolyMapping(int order, double const* c, double x, double y, double* out, double* jac, double* work);

/// Points evaluated together by evalPolyMappingBatch (the loops over points vectorise).
constexpr int kPolyBatch = 8;

/// evalPolyMapping with jac at kPolyBatch points: out0/out1 the outputs, jac[4][kPolyBatch] the row-major
/// 2x2 Jacobians per point. Same arithmetic per point as evalPolyMapping.
void evalPolyMappingBatch(int order, double const* c, double const* x, double const* y, double* out0, double* out1,
                          double (*jac)[kPolyBatch]);

/// Values only (no Jacobian) of a 2-D -> 2-D polynomial at kPolyBatch points: out_i[j] = sum_k c[i nm + k] m_k(x_j, y_j),
/// summed in monomial order.
void evalPolyValuesBatch(int order, double const* c, double const* x, double const* y, double* out0, double* out1);

/// Least-squares fit of a 2-D -> 2-D polynomial mapping of the given order to n points (x, y) -> (X, Y),
/// with optional weights w (nullptr = uniform). Inputs should be normalised (|x|, |y| of order 1).
/// Returns the 2 * nMonomials(order) coefficients; throws std::runtime_error if the system is singular.
std::vector<double> fitPolyMapping(int order, int n, double const* x, double const* y, double const* X,
                                   double const* Y, double const* w = nullptr);

}  // namespace diffcal::jointcal
