#include "diffcal/jointcal/poly.hpp"

#include <Eigen/Dense>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace diffcal::jointcal {

namespace {

// The kernels are templates on the order so that the monomial loops unroll into straight-line code (these
// run once or twice per measurement and pass of the fit); the arithmetic, and therefore every result, is
// the same as the obvious loops over a run-time order.

template <int N>
inline void powers(double x, double y, double* xp, double* yp) {
    xp[0] = yp[0] = 1.0;
    for (int i = 1; i <= N; ++i) {
        xp[i] = xp[i - 1] * x;
        yp[i] = yp[i - 1] * y;
    }
}

template <int N>
void monomials(double x, double y, double* out) {
    evalMonomialsFixed<N>(x, y, out);
}

template <int N>
void monomialsAndDerivatives(double x, double y, double* m, double* dmdx, double* dmdy) {
    double xp[N + 1], yp[N + 1];
    powers<N>(x, y, xp, yp);
    int k = 0;
    for (int d = 0; d <= N; ++d) {
        for (int py = 0; py <= d; ++py) {
            int const px = d - py;
            m[k] = xp[px] * yp[py];
            dmdx[k] = px > 0 ? px * xp[px - 1] * yp[py] : 0.0;
            dmdy[k] = py > 0 ? py * xp[px] * yp[py - 1] : 0.0;
            ++k;
        }
    }
}

template <int N>
void polyMapping(double const* c, double x, double y, double* out, double* jac, double* work) {
    constexpr int nm = (N + 1) * (N + 2) / 2;
    double const* cx = c;
    double const* cy = c + nm;
    if (jac) {
        double* m = work;
        double* dx = work + nm;
        double* dy = work + 2 * nm;
        monomialsAndDerivatives<N>(x, y, m, dx, dy);
        double ox = 0, oy = 0, j00 = 0, j01 = 0, j10 = 0, j11 = 0;
        for (int k = 0; k < nm; ++k) {
            ox += cx[k] * m[k];
            oy += cy[k] * m[k];
            j00 += cx[k] * dx[k];
            j01 += cx[k] * dy[k];
            j10 += cy[k] * dx[k];
            j11 += cy[k] * dy[k];
        }
        out[0] = ox;
        out[1] = oy;
        jac[0] = j00;
        jac[1] = j01;
        jac[2] = j10;
        jac[3] = j11;
    } else {
        double* m = work;
        monomials<N>(x, y, m);
        double ox = 0, oy = 0;
        for (int k = 0; k < nm; ++k) {
            ox += cx[k] * m[k];
            oy += cy[k] * m[k];
        }
        out[0] = ox;
        out[1] = oy;
    }
}

/// Calls f(std::integral_constant<int, order>{}) for a run-time order in [0, kMaxPolyOrder].
template <int N = 0, class F>
void withOrder(int order, F&& f) {
    if constexpr (N > kMaxPolyOrder) {
        throw std::invalid_argument("polynomial order " + std::to_string(order) + " out of range [0, " +
                                    std::to_string(kMaxPolyOrder) + "]");
    } else {
        if (order == N) {
            f(std::integral_constant<int, N>{});
        } else {
            withOrder<N + 1>(order, std::forward<F>(f));
        }
    }
}

}  // namespace

void evalMonomials(int order, double x, double y, double* out) {
    withOrder(order, [&](auto n) { monomials<decltype(n)::value>(x, y, out); });
}

void evalMonomialsAndDerivatives(int order, double x, double y, double* m, double* dmdx, double* dmdy) {
    withOrder(order, [&](auto n) { monomialsAndDerivatives<decltype(n)::value>(x, y, m, dmdx, dmdy); });
}

void evalPolyMapping(int order, double const* c, double x, double y, double* out, double* jac, double* work) {
    withOrder(order, [&](auto n) { polyMapping<decltype(n)::value>(c, x, y, out, jac, work); });
}

void evalPolyMappingBatch(int order, double const* c, double const* x, double const* y, double* out0, double* out1,
                          double (*jac)[kPolyBatch]) {
    if (order < 0 || order > kMaxPolyOrder) throw std::invalid_argument("evalPolyMappingBatch: order out of range");
    constexpr int B = kPolyBatch;
    int const nm = nMonomials(order);
    double const* cx = c;
    double const* cy = c + nm;
    double xp[kMaxPolyOrder + 1][B], yp[kMaxPolyOrder + 1][B];
    for (int j = 0; j < B; ++j) xp[0][j] = yp[0][j] = 1.0;
    for (int i = 1; i <= order; ++i)
        for (int j = 0; j < B; ++j) {
            xp[i][j] = xp[i - 1][j] * x[j];
            yp[i][j] = yp[i - 1][j] * y[j];
        }
    double ox[B] = {}, oy[B] = {}, j00[B] = {}, j01[B] = {}, j10[B] = {}, j11[B] = {};
    int k = 0;
    for (int d = 0; d <= order; ++d) {
        for (int py = 0; py <= d; ++py, ++k) {
            int const px = d - py;
            double const a = cx[k], b = cy[k];
            // a zero derivative term only adds +-0 to the sums: skipped
            for (int j = 0; j < B; ++j) {
                double const m = xp[px][j] * yp[py][j];
                ox[j] += a * m;
                oy[j] += b * m;
            }
            if (px > 0)
                for (int j = 0; j < B; ++j) {
                    double const dx = px * xp[px - 1][j] * yp[py][j];
                    j00[j] += a * dx;
                    j10[j] += b * dx;
                }
            if (py > 0)
                for (int j = 0; j < B; ++j) {
                    double const dy = py * xp[px][j] * yp[py - 1][j];
                    j01[j] += a * dy;
                    j11[j] += b * dy;
                }
        }
    }
    for (int j = 0; j < B; ++j) {
        out0[j] = ox[j];
        out1[j] = oy[j];
        jac[0][j] = j00[j];
        jac[1][j] = j01[j];
        jac[2][j] = j10[j];
        jac[3][j] = j11[j];
    }
}

void evalPolyValuesBatch(int order, double const* c, double const* x, double const* y, double* out0, double* out1) {
    if (order < 0 || order > kMaxPolyOrder) throw std::invalid_argument("evalPolyValuesBatch: order out of range");
    constexpr int B = kPolyBatch;
    int const nm = nMonomials(order);
    double xp[kMaxPolyOrder + 1][B], yp[kMaxPolyOrder + 1][B];
    for (int j = 0; j < B; ++j) xp[0][j] = yp[0][j] = 1.0;
    for (int i = 1; i <= order; ++i)
        for (int j = 0; j < B; ++j) {
            xp[i][j] = xp[i - 1][j] * x[j];
            yp[i][j] = yp[i - 1][j] * y[j];
        }
    double ox[B] = {}, oy[B] = {};
    int k = 0;
    for (int d = 0; d <= order; ++d)
        for (int py = 0; py <= d; ++py, ++k) {
            double const a = c[k], b = c[nm + k];
            for (int j = 0; j < B; ++j) {
                double const m = xp[d - py][j] * yp[py][j];
                ox[j] += a * m;
                oy[j] += b * m;
            }
        }
    for (int j = 0; j < B; ++j) {
        out0[j] = ox[j];
        out1[j] = oy[j];
    }
}

std::vector<double> fitPolyMapping(int order, int n, double const* x, double const* y, double const* X,
                                   double const* Y, double const* w) {
    if (order < 0 || order > kMaxPolyOrder) throw std::invalid_argument("fitPolyMapping: order out of range");
    int const nm = nMonomials(order);
    Eigen::MatrixXd A = Eigen::MatrixXd::Zero(nm, nm);
    Eigen::VectorXd bx = Eigen::VectorXd::Zero(nm), by = Eigen::VectorXd::Zero(nm);
    Eigen::VectorXd m(nm);
    for (int i = 0; i < n; ++i) {
        double const wi = w ? w[i] : 1.0;
        if (!(wi > 0.0) || !std::isfinite(X[i]) || !std::isfinite(Y[i])) continue;
        evalMonomials(order, x[i], y[i], m.data());
        A.selfadjointView<Eigen::Lower>().rankUpdate(m, wi);
        bx += wi * X[i] * m;
        by += wi * Y[i] * m;
    }
    Eigen::LDLT<Eigen::MatrixXd> ldlt(A.selfadjointView<Eigen::Lower>());
    if (ldlt.info() != Eigen::Success || !ldlt.isPositive() ||
        (ldlt.vectorD().array().abs().minCoeff() <= 1e-14 * ldlt.vectorD().array().abs().maxCoeff())) {
        throw std::runtime_error("fitPolyMapping: singular least-squares system for order " + std::to_string(order) +
                                 " with " + std::to_string(n) + " points");
    }
    std::vector<double> c(std::size_t(2 * nm));
    Eigen::Map<Eigen::VectorXd>(c.data(), nm) = ldlt.solve(bx);
    Eigen::Map<Eigen::VectorXd>(c.data() + nm, nm) = ldlt.solve(by);
    return c;
}

}  // namespace diffcal::jointcal
