// C++ unit tests of the jointcal core: sky geometry, polynomials, dense Cholesky, association, model and
// fitter (Schur vs sparse steps on a small synthetic problem).
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <random>
#include <vector>

#include "diffcal/jointcal/association.hpp"
#include "diffcal/jointcal/fitter.hpp"
#include "diffcal/jointcal/linalg.hpp"
#include "diffcal/jointcal/model.hpp"
#include "diffcal/jointcal/poly.hpp"
#include "diffcal/jointcal/sky.hpp"
#include "diffcal/parallel.hpp"

using namespace diffcal;
using namespace diffcal::jointcal;

TEST_CASE("jointcal gnomonic projection round trip and analytic Jacobians") {
    Gnomonic const g(214.87, 52.65);
    double xi, eta, jac[4];
    REQUIRE(g.project(215.1, 52.9, xi, eta, jac));
    double ra, dec;
    g.deproject(xi, eta, ra, dec);
    CHECK(ra == doctest::Approx(215.1).epsilon(1e-13));
    CHECK(dec == doctest::Approx(52.9).epsilon(1e-13));
    double const h = 1e-6;
    double x1, y1, x2, y2;
    g.project(215.1 + h, 52.9, x1, y1);
    g.project(215.1 - h, 52.9, x2, y2);
    CHECK(jac[0] == doctest::Approx((x1 - x2) / (2 * h)).epsilon(1e-7));
    CHECK(jac[2] == doctest::Approx((y1 - y2) / (2 * h)).epsilon(1e-7));
    g.project(215.1, 52.9 + h, x1, y1);
    g.project(215.1, 52.9 - h, x2, y2);
    CHECK(jac[1] == doctest::Approx((x1 - x2) / (2 * h)).epsilon(1e-7));
    CHECK(jac[3] == doctest::Approx((y1 - y2) / (2 * h)).epsilon(1e-7));
    // derivative with respect to the tangent point
    double jc[4];
    REQUIRE(g.projectWithCentreDerivative(215.1, 52.9, xi, eta, jc));
    Gnomonic(214.87 + h, 52.65).project(215.1, 52.9, x1, y1);
    Gnomonic(214.87 - h, 52.65).project(215.1, 52.9, x2, y2);
    CHECK(jc[0] == doctest::Approx((x1 - x2) / (2 * h)).epsilon(1e-6));
    CHECK(jc[2] == doctest::Approx((y1 - y2) / (2 * h)).epsilon(1e-6));
    Gnomonic(214.87, 52.65 + h).project(215.1, 52.9, x1, y1);
    Gnomonic(214.87, 52.65 - h).project(215.1, 52.9, x2, y2);
    CHECK(jc[1] == doctest::Approx((x1 - x2) / (2 * h)).epsilon(1e-6));
    CHECK(jc[3] == doctest::Approx((y1 - y2) / (2 * h)).epsilon(1e-6));
    // far hemisphere
    CHECK_FALSE(g.project(34.87, -52.65, xi, eta));
}

TEST_CASE("jointcal TAN-SIP evaluation") {
    TanSipWcs w;
    w.crpix = {1000.0, 2000.0};
    w.cd = {-5e-5, 0.0, 0.0, 5e-5};
    w.crval = {150.0, 2.0};
    double ra, dec;
    w.pixelToSky(1000.0, 2000.0, ra, dec);
    CHECK(ra == doctest::Approx(150.0));
    CHECK(dec == doctest::Approx(2.0));
    w.sipOrder = 2;
    w.a.assign(9, 0.0);
    w.b.assign(9, 0.0);
    w.a[2 * 3 + 0] = 1e-6;  // A_2_0
    w.validate();
    double xi, eta;
    w.pixelToIwc(1100.0, 2000.0, xi, eta);
    CHECK(xi == doctest::Approx(-5e-5 * (100.0 + 1e-6 * 1e4)).epsilon(1e-12));
    w.a.pop_back();
    CHECK_THROWS_AS(w.validate(), std::invalid_argument);
}

TEST_CASE("jointcal proper motion moves along a great circle and is reversible") {
    double const pmRa = 100.0 / 3.6e6 * kDegToRad, pmDec = -50.0 / 3.6e6 * kDegToRad;  // 100, -50 mas/yr
    double ra, dec, ra2, dec2;
    applyProperMotion(10.0, 60.0, pmRa, pmDec, 10.0, ra, dec);
    CHECK((ra - 10.0) * std::cos(60.0 * kDegToRad) * 3.6e6 == doctest::Approx(1000.0).epsilon(1e-4));
    CHECK((dec - 60.0) * 3.6e6 == doctest::Approx(-500.0).epsilon(1e-4));
    applyProperMotion(ra, dec, pmRa, pmDec, 0.0, ra2, dec2);
    CHECK(ra2 == ra);
    CHECK(julianEpochFromTaiNs(1148126893050000000.0) == doctest::Approx(2006.3817).epsilon(1e-6));
}

TEST_CASE("jointcal polynomial monomial order, derivatives and exact fit") {
    // order 2: 1, x, y, x2, xy, y2
    double m[6], dx[6], dy[6];
    evalMonomialsAndDerivatives(2, 2.0, 3.0, m, dx, dy);
    CHECK(m[3] == 4.0);
    CHECK(m[4] == 6.0);
    CHECK(m[5] == 9.0);
    CHECK(dx[4] == 3.0);
    CHECK(dy[5] == 6.0);
    CHECK(nPolyParams(5) == 42);
    std::mt19937 rng(1);
    std::uniform_real_distribution<double> u(-1, 1);
    std::vector<double> c(20);
    for (auto& v : c) v = u(rng);
    std::vector<double> x(200), y(200), X(200), Y(200);
    double work[30];
    for (int i = 0; i < 200; ++i) {
        x[i] = u(rng);
        y[i] = u(rng);
        double out[2];
        evalPolyMapping(3, c.data(), x[i], y[i], out, nullptr, work);
        X[i] = out[0];
        Y[i] = out[1];
    }
    auto fit = fitPolyMapping(3, 200, x.data(), y.data(), X.data(), Y.data());
    for (int k = 0; k < 20; ++k) CHECK(fit[k] == doctest::Approx(c[k]).epsilon(1e-10));
}

TEST_CASE("jointcal batched polynomial mappings equal the one-point evaluation bit for bit") {
    std::mt19937 rng(7);
    std::uniform_real_distribution<double> u(-1.5, 1.5);
    for (int order = 0; order <= kMaxPolyOrder; ++order) {
        std::vector<double> c(std::size_t(nPolyParams(order)));
        for (auto& v : c) v = u(rng);
        double x[kPolyBatch], y[kPolyBatch], o0[kPolyBatch], o1[kPolyBatch], jac[4][kPolyBatch];
        for (int j = 0; j < kPolyBatch; ++j) {
            x[j] = u(rng);
            y[j] = u(rng);
        }
        evalPolyMappingBatch(order, c.data(), x, y, o0, o1, jac);
        std::vector<double> work(std::size_t(3 * nMonomials(order)));
        for (int j = 0; j < kPolyBatch; ++j) {
            double out[2], jj[4];
            evalPolyMapping(order, c.data(), x[j], y[j], out, jj, work.data());
            CHECK(o0[j] == out[0]);
            CHECK(o1[j] == out[1]);
            for (int i = 0; i < 4; ++i) CHECK(jac[i][j] == jj[i]);
        }
    }
    CHECK_THROWS_AS(evalMonomials(kMaxPolyOrder + 1, 0.0, 0.0, nullptr), std::invalid_argument);
}

TEST_CASE("jointcal dense Cholesky matches Eigen, reports the failing pivot, is thread-count independent") {
    int const n = 300;
    Eigen::MatrixXd B = Eigen::MatrixXd::Random(n, n + 20);
    Eigen::MatrixXd A = B * B.transpose();
    Eigen::MatrixXd L1 = A;
    setNumThreads(1);
    CHECK(denseCholeskyInPlace(L1, 64) == -1);
    setNumThreads(3);
    Eigen::MatrixXd L3 = A;
    CHECK(denseCholeskyInPlace(L3, 64) == -1);
    setNumThreads(0);
    CHECK((L1.triangularView<Eigen::Lower>().toDenseMatrix() - L3.triangularView<Eigen::Lower>().toDenseMatrix())
              .cwiseAbs()
              .maxCoeff() == 0.0);
    Eigen::MatrixXd Le = A.llt().matrixL();
    CHECK((L1.triangularView<Eigen::Lower>().toDenseMatrix() - Le).cwiseAbs().maxCoeff() < 1e-9 * Le.cwiseAbs().maxCoeff());
    Eigen::VectorXd b = Eigen::VectorXd::Random(n), x = b;
    denseCholeskySolveInPlace(L1, x);
    CHECK((A * x - b).norm() < 1e-8 * b.norm() * A.norm());
    // a zero row/column at index 170 -> failure reported there
    Eigen::MatrixXd S = A;
    S.row(170).setZero();
    S.col(170).setZero();
    CHECK(denseCholeskyInPlace(S, 64) == 170);
}

namespace {

/// A small synthetic problem: nVisit visits x 2 detectors with TAN WCS, stars seen in every visit (the WCS
/// is the truth), reference stars for a third of them.
struct Synthetic {
    std::vector<CcdImage> ccds;
    SourceInput src;
    RefInput ref;
};

Synthetic makeSynthetic(int nVisit, int nStar, bool constrainedGeometry) {
    Synthetic s;
    std::mt19937 rng(7);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::normal_distribution<double> gauss(0.0, 1.0);
    std::vector<double> sra(nStar), sdec(nStar);
    Gnomonic const field(150.0, 2.0);
    for (int i = 0; i < nStar; ++i) field.deproject(-0.09 + 0.18 * u(rng), -0.09 + 0.18 * u(rng), sra[i], sdec[i]);
    double const scale = 0.2 / 3600.0;  // deg/pixel
    for (int v = 0; v < nVisit; ++v) {
        double pra, pdec;
        field.deproject(0.01 * gauss(rng), 0.01 * gauss(rng), pra, pdec);
        for (int d = 0; d < 2; ++d) {
            CcdImage c;
            c.visit = 100 + v;
            c.detector = d;
            c.bbox = {0, 0, 2047, 2047};
            c.epoch = 2020.0 + 0.01 * v;
            c.boresightRa = pra;
            c.boresightDec = pdec;
            c.calibMean = 1.0;
            // detector d centred at +-0.058 deg in x from the pointing
            double const off = (d == 0 ? -1 : 1) * 1024.0 * 1.02;
            c.wcs.crpix = {1023.5 - off, 1023.5};
            c.wcs.cd = {scale * (1 + 1e-3 * v), 0.0, 0.0, scale};
            c.wcs.crval = {pra, pdec};
            c.hasFocal = constrainedGeometry;
            double const px = 0.015;
            c.pixToFocal = {px, 0.0, 0.0, px, px * (off - 1023.5), -px * 1023.5};
            int const ci = int(s.ccds.size());
            s.ccds.push_back(c);
            Gnomonic const tp(pra, pdec);
            for (int i = 0; i < nStar; ++i) {
                double xi, eta;
                if (!tp.project(sra[i], sdec[i], xi, eta)) continue;
                double const x = xi / c.wcs.cd[0] + c.wcs.crpix[0], y = eta / scale + c.wcs.crpix[1];
                if (x < 0 || x > 2047 || y < 0 || y > 2047) continue;
                s.src.ccd.push_back(ci);
                s.src.sourceId.push_back(std::int64_t(ci) * 100000 + i);
                s.src.x.push_back(x + 0.02 * gauss(rng));
                s.src.y.push_back(y + 0.02 * gauss(rng));
                s.src.xErr.push_back(0.02);
                s.src.yErr.push_back(0.02);
                s.src.ixx.push_back(4.0);
                s.src.iyy.push_back(4.0);
                s.src.ixy.push_back(0.0);
                s.src.instFlux.push_back(1e4);
                s.src.instFluxErr.push_back(100.0);
            }
        }
    }
    for (int i = 0; i < nStar; i += 3) {
        s.ref.id.push_back(i);
        s.ref.ra.push_back(sra[i]);
        s.ref.dec.push_back(sdec[i]);
        s.ref.vx.push_back(std::pow(5.0 / 3.6e6, 2));
        s.ref.vy.push_back(std::pow(5.0 / 3.6e6, 2));
        s.ref.flux.push_back(1e5);
        s.ref.fluxErr.push_back(1e3);
    }
    return s;
}

}  // namespace

TEST_CASE("jointcal association: every star of every visit matched, references attached") {
    auto s = makeSynthetic(3, 120, false);
    Associations assoc(s.ccds, s.src);
    std::size_t const nf = assoc.associateCatalogs(3.0);
    // each star seen in 3 visits: about as many fitted stars as distinct stars seen
    CHECK(nf > 60);
    CHECK(nf < 120);
    std::size_t const nref = assoc.collectRefStars(s.ref, 3.0);
    CHECK(nref == s.ref.ra.size());
    assoc.prepareFittedStars(2);
    CHECK(assoc.nFittedWithRef() > 20);
    for (std::size_t f = 0; f < assoc.fitted().size(); ++f) CHECK(assoc.fitted().nMeasurements[f] >= 1);
    // separated catalogs: two far-apart groups give distinct fitted stars
    Synthetic t;
    t.ccds = s.ccds;
    t.src = s.src;
    Associations a2(t.ccds, t.src);
    CHECK(a2.associateCatalogs(0.0001) == a2.measured().size());
}

TEST_CASE("jointcal fitter - Schur and sparse steps agree and both models converge") {
    for (bool constrained : {false, true}) {
        auto s = makeSynthetic(4, 150, constrained);
        Associations assoc(s.ccds, s.src);
        assoc.associateCatalogs(3.0);
        assoc.collectRefStars(s.ref, 3.0);
        assoc.prepareFittedStars(2);
        assoc.deprojectFittedStars();
        LogBuffer log;
        auto model = constrained ? AstrometryModel::makeConstrained(assoc, 1, 3, 0.0, log)
                                 : AstrometryModel::makeSimple(assoc, 2, true, log);
        FitterOptions opt;
        opt.solver = SolverKind::Schur;
        opt.positionErrorPedestal = 0.0;  // the simulated noise is exactly the reported error
        // the batched transform equals the one-point transform bit for bit
        for (std::size_t ci = 0; ci < s.ccds.size(); ++ci) {
            double x[kPolyBatch], y[kPolyBatch], o0[kPolyBatch], o1[kPolyBatch], jac[4][kPolyBatch];
            for (int j = 0; j < kPolyBatch; ++j) {
                x[j] = 100.0 + 250.0 * j;
                y[j] = 1900.0 - 230.0 * j;
            }
            model.transformBatch(ci, model.params().data(), x, y, o0, o1, jac);
            for (int j = 0; j < kPolyBatch; ++j) {
                double out[2], jj[4];
                model.transform(ci, model.params().data(), x[j], y[j], out, jj);
                CHECK(o0[j] == out[0]);
                CHECK(o1[j] == out[1]);
                for (int i = 0; i < 4; ++i) CHECK(jac[i][j] == jj[i]);
            }
        }
        AstrometryFitter fitter(assoc, model, opt);
        for (char const* what : {"Distortions", "Positions", "Distortions Positions"}) {
            fitter.setSolverKind(SolverKind::Schur);
            Eigen::VectorXd a = fitter.computeStep(what);
            fitter.setSolverKind(SolverKind::Sparse);
            Eigen::VectorXd b = fitter.computeStep(what);
            REQUIRE(a.size() == b.size());
            CHECK((a - b).cwiseAbs().maxCoeff() <= 1e-8 * b.cwiseAbs().maxCoeff());
            CHECK(fitter.minimize(what) == MinimizeResult::Converged);
        }
        CHECK(fitter.minimize("Distortions Positions", 5.0) == MinimizeResult::Converged);
        Chi2Result const c = fitter.computeChi2();
        CHECK(c.ndof > 0);
        CHECK(c.chi2 / double(c.ndof) == doctest::Approx(1.0).epsilon(0.1));
    }
}

TEST_CASE("jointcal whatToFit parsing") {
    auto w = WhatToFit::parse("DistortionsVisit Positions");
    CHECK(w.visit);
    CHECK_FALSE(w.chip);
    CHECK(w.positions);
    w = WhatToFit::parse("Distortions");
    CHECK(w.visit);
    CHECK(w.chip);
    CHECK_FALSE(w.positions);
    CHECK_THROWS_AS(WhatToFit::parse("Fluxes"), std::invalid_argument);
}

TEST_CASE("jointcal dense triangular solves: blocked parallel path matches the serial one") {
    int const n = 1500;
    Eigen::MatrixXd B = Eigen::MatrixXd::Random(n, n + 10);
    Eigen::MatrixXd A = B * B.transpose() + n * Eigen::MatrixXd::Identity(n, n);
    Eigen::MatrixXd L = A;
    REQUIRE(denseCholeskyInPlace(L) == -1);
    Eigen::VectorXd b = Eigen::VectorXd::Random(n);
    Eigen::VectorXd x1 = b, x2 = b, x3 = b;
    setNumThreads(1);
    denseCholeskySolveInPlace(L, x1);
    setNumThreads(2);
    denseCholeskySolveInPlace(L, x2);
    setNumThreads(4);
    denseCholeskySolveInPlace(L, x3);
    setNumThreads(0);
    CHECK((x2 - x3).cwiseAbs().maxCoeff() == 0.0);
    CHECK((x1 - x2).cwiseAbs().maxCoeff() == 0.0);
    CHECK((A * x2 - b).norm() < 1e-10 * b.norm());
}
