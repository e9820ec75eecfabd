#include "diffcal/jointcal/poly.hpp"

#include <Eigen/Dense>
#include <cmath>
#include <stdexcept>
#include <string>

namespace diffcal::jointcal {

void evalMonomials(int order, double x, double y, double* out) {
    double xp[kMaxPolyOrder + 1], yp[kMaxPolyOrder + 1];
    xp[0] = yp[0] = 1.0;
    for (int i = 1; i <= order; ++i) {
        xp[i] = xp[i - 1] * x;
        yp[i] = yp[i - 1] * y;
    }
    int k = 0;
    for (int d = 0; d <= order; ++d)
        for (int py = 0; py <= d; ++py) out[k++] = xp[d - py] * yp[py];
}

void evalMonomialsAndDerivatives(int order, double x, double y, double* m, double* dmdx, double* dmdy) {
    double xp[kMaxPolyOrder + 1], yp[kMaxPolyOrder + 1];
    xp[0] = yp[0] = 1.0;
    for (int i = 1; i <= order; ++i) {
        xp[i] = xp[i - 1] * x;
        yp[i] = yp[i - 1] * y;
    }
    int k = 0;
    for (int d = 0; d <= order; ++d) {
        for (int py = 0; py <= d; ++py) {
            int const px = d - py;
            m[k] = xp[px] * yp[py];
            dmdx[k] = px > 0 ? px * xp[px - 1] * yp[py] : 0.0;
            dmdy[k] = py > 0 ? py * xp[px] * yp[py - 1] : 0.0;
            ++k;
        }
    }
}

void evalPolyMapping(int order, double const* c, double x, double y, double* out, double* jac, double* work) {
    int const nm = nMonomials(order);
    double const* cx = c;
    double const* cy = c + nm;
    if (jac) {
        double* m = work;
        double* dx = work + nm;
        double* dy = work + 2 * nm;
        evalMonomialsAndDerivatives(order, x, y, m, dx, dy);
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
        evalMonomials(order, x, y, m);
        double ox = 0, oy = 0;
        for (int k = 0; k < nm; ++k) {
            ox += cx[k] * m[k];
            oy += cy[k] * m[k];
        }
        out[0] = ox;
        out[1] = oy;
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
