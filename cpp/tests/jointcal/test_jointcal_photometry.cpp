// C++ unit tests of the photometric jointcal core: Chebyshev helpers, the four models (initialization,
// derivatives, validation), and the fitter (Schur and sparse steps agree; fits recover a known truth).
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "diffcal/jointcal/association.hpp"
#include "diffcal/jointcal/photometry.hpp"
#include "diffcal/jointcal/sky.hpp"

using namespace diffcal::jointcal;

namespace {

/// nVisit dithered visits x 2 detectors. True calibration (nJy/count) of CcdImage (v, d)
/// at focal position (xf, yf) mm: scale_vd * (1 + 0.02 * xf / 31 - 0.01 * yf / 16) (a linear per-visit field
/// shared by both detectors when `field`).
struct PhotSynthetic {
    std::vector<CcdImage> ccds;
    SourceInput src;
    RefInput ref;
    std::vector<double> trueFlux;  ///< nJy per star
};

double trueCalib(int v, int d, double xf, double yf, bool field) {
    double const s = 0.5 * (1.0 + 0.03 * v - 0.02 * d);
    return s * (field ? 1.0 + 0.02 * (v + 1) * xf / 31.0 - 0.01 * yf / 16.0 : 1.0);
}

PhotSynthetic makePhot(int nVisit, int nStar, bool field, unsigned seed = 3) {
    PhotSynthetic s;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::normal_distribution<double> gauss(0.0, 1.0);
    std::vector<double> sra(static_cast<std::size_t>(nStar)), sdec(static_cast<std::size_t>(nStar));
    Gnomonic const fieldTp(150.0, 2.0);
    for (int i = 0; i < nStar; ++i) {
        fieldTp.deproject(-0.15 + 0.3 * u(rng), -0.08 + 0.16 * u(rng), sra[std::size_t(i)], sdec[std::size_t(i)]);
        s.trueFlux.push_back(1e4 * std::pow(10.0, 1.5 * u(rng)));
    }
    double const scale = 0.2 / 3600.0, px = 0.015;
    for (int v = 0; v < nVisit; ++v) {
        double pra, pdec;  // dithered pointings break the field / star-flux degeneracy
        fieldTp.deproject(0.03 * (v % 2 ? 1 : -1) * (v + 1) / 2.0, 0.02 * ((v / 2) % 2 ? 1 : -1), pra, pdec);
        Gnomonic const tp(pra, pdec);
        for (int d = 0; d < 2; ++d) {
            CcdImage c;
            c.visit = 100 + v;
            c.detector = d;
            c.bbox = {0, 0, 2047, 2047};
            c.epoch = 2020.0;
            c.boresightRa = pra;
            c.boresightDec = pdec;
            c.calibMean = 0.5;
            c.calibErr = 1e-4;
            double const off = (d == 0 ? -1 : 1) * 1024.0 * 1.02;
            c.wcs.crpix = {1023.5 - off, 1023.5};
            c.wcs.cd = {scale, 0.0, 0.0, scale};
            c.wcs.crval = {pra, pdec};
            c.hasFocal = true;
            c.pixToFocal = {px, 0.0, 0.0, px, px * (off - 1023.5), -px * 1023.5};
            int const ci = int(s.ccds.size());
            s.ccds.push_back(c);
            for (int i = 0; i < nStar; ++i) {
                double xi, eta;
                tp.project(sra[std::size_t(i)], sdec[std::size_t(i)], xi, eta);
                double const x = xi / scale + c.wcs.crpix[0], y = eta / scale + c.wcs.crpix[1];
                if (x < 0 || x > 2047 || y < 0 || y > 2047) continue;
                double const xf = px * x + px * (off - 1023.5), yf = px * y - px * 1023.5;
                double const counts = s.trueFlux[std::size_t(i)] / trueCalib(v, d, xf, yf, field);
                double const err = 1e-3 * counts;
                s.src.ccd.push_back(ci);
                s.src.sourceId.push_back(std::int64_t(ci) * 100000 + i);
                s.src.x.push_back(x);
                s.src.y.push_back(y);
                s.src.xErr.push_back(0.02);
                s.src.yErr.push_back(0.02);
                s.src.ixx.push_back(4.0);
                s.src.iyy.push_back(4.0);
                s.src.ixy.push_back(0.0);
                s.src.instFlux.push_back(counts + err * gauss(rng));
                s.src.instFluxErr.push_back(err);
            }
        }
    }
    for (int i = 0; i < nStar; i += 3) {
        s.ref.id.push_back(i);
        s.ref.ra.push_back(sra[std::size_t(i)]);
        s.ref.dec.push_back(sdec[std::size_t(i)]);
        s.ref.vx.push_back(std::pow(5.0 / 3.6e6, 2));
        s.ref.vy.push_back(std::pow(5.0 / 3.6e6, 2));
        double const f = s.trueFlux[std::size_t(i)];
        s.ref.flux.push_back(f * (1.0 + 0.002 * gauss(rng)));
        s.ref.fluxErr.push_back(0.002 * f);
    }
    return s;
}

void prepare(Associations& a, PhotSynthetic const& s) {
    a.associateCatalogs(3.0);
    a.collectRefStars(s.ref, 3.0);
    a.prepareFittedStars(2);
}

std::array<double, 4> const kFocalBox{-31.0, -16.0, 31.0, 16.0};

PhotometryModel makeModel(Associations const& a, int kind, int order = 2) {
    bool const mag = kind == 1 || kind == 3;
    return kind < 2 ? PhotometryModel::makeSimple(a, mag, 0.0) : PhotometryModel::makeConstrained(a, mag, order, kFocalBox, 0.0);
}

}  // namespace

TEST_CASE("jointcal photometry Chebyshev basis order and integrals") {
    double b[6];
    evalChebyshevBasis(2, 0.3, -0.7, b);
    // (i, j) = (0,0), (1,0), (2,0), (0,1), (1,1), (0,2)
    CHECK(b[0] == 1.0);
    CHECK(b[1] == doctest::Approx(0.3));
    CHECK(b[2] == doctest::Approx(2 * 0.09 - 1));
    CHECK(b[3] == doctest::Approx(-0.7));
    CHECK(b[4] == doctest::Approx(-0.21));
    CHECK(b[5] == doctest::Approx(2 * 0.49 - 1));
    CHECK(nChebyshevParams(7) == 36);
    CHECK(nChebyshevParams(3) == 10);
    CHECK(chebyshevIntegral(0, -1, 1) == doctest::Approx(2.0));
    CHECK(chebyshevIntegral(1, 0, 1) == doctest::Approx(0.5));
    CHECK(chebyshevIntegral(2, -1, 1) == doctest::Approx(-2.0 / 3.0));
    // T_3 = 4x^3 - 3x: antiderivative x^4 - 1.5 x^2
    CHECK(chebyshevIntegral(3, -0.2, 0.9) == doctest::Approx((std::pow(0.9, 4) - 1.5 * 0.81) - (std::pow(0.2, 4) - 1.5 * 0.04)));
}

TEST_CASE("jointcal photometry whatToFit parsing") {
    auto w = PhotometryWhatToFit::parse("Model Fluxes");
    CHECK((w.visit && w.chip && w.fluxes));
    w = PhotometryWhatToFit::parse("ModelVisit");
    CHECK((w.visit && !w.chip && !w.fluxes));
    w = PhotometryWhatToFit::parse("ModelChip Fluxes");
    CHECK((!w.visit && w.chip && w.fluxes));
}

TEST_CASE("jointcal photometric models: layout, initial values, derivatives, validation") {
    auto s = makePhot(3, 150, true);
    Associations a(s.ccds, s.src);
    prepare(a, s);
    auto sf = makeModel(a, 0);
    CHECK(sf.params().size() == 6);
    CHECK(sf.params()[0] == 0.5);
    auto sm = makeModel(a, 1);
    CHECK(sm.params()[3] == doctest::Approx(-2.5 * std::log10(0.5e-9 / 3631.0)).epsilon(1e-14));
    auto cf = makeModel(a, 2, 3);
    // 2 chips + 3 visits x 10 coefficients; one chip (nearest the focal-plane centre) fixed
    CHECK(cf.params().size() == 2 + 30);
    CHECK(cf.blocks()[0].fixed != cf.blocks()[1].fixed);
    CHECK(cf.blocks()[2].size == 10);
    CHECK(cf.params()[2] == 1.0);
    CHECK(cf.params()[3] == 0.0);
    auto cm = makeModel(a, 3, 3);
    CHECK(cm.params()[2] == 0.0);
    // analytic derivatives against central differences (constrained flux, perturbed parameters)
    std::mt19937 rng(1);
    std::normal_distribution<double> g(0.0, 0.05);
    for (std::size_t i = 2; i < cf.params().size(); ++i) cf.params()[i] += g(rng);
    double dA[1], dB[10];
    double const v = cf.value(3, cf.params().data(), 2e4, -2.5 * std::log10(2e4), 5.0, -3.0, dA, dB);
    auto const& cb = cf.ccdBlocks()[3];
    std::vector<double> p = cf.params();
    double const h = 1e-6;
    int const offA = cf.blocks()[std::size_t(cb[0])].offset, offB = cf.blocks()[std::size_t(cb[1])].offset;
    p[std::size_t(offA)] += h;
    double const vA = cf.value(3, p.data(), 2e4, 0.0, 5.0, -3.0);
    p[std::size_t(offA)] -= h;
    CHECK((vA - v) / h == doctest::Approx(dA[0]).epsilon(1e-6));
    for (int k = 0; k < 10; ++k) {
        p[std::size_t(offB + k)] += h;
        double const vk = cf.value(3, p.data(), 2e4, 0.0, 5.0, -3.0);
        p[std::size_t(offB + k)] -= h;
        CHECK((vk - v) / h == doctest::Approx(dB[k]).epsilon(1e-6));
    }
    // validation: positive initial model; a negative visit field is reported with its CcdImage
    std::string msg;
    CHECK(cm.validate(10, msg));
    CHECK_FALSE(cm.validate(-1, msg));
    CHECK(msg.find("ndof") != std::string::npos);
    auto bad = makeModel(a, 2, 3);
    bad.params()[std::size_t(bad.blocks()[3].offset) + 1] = 2.0;  // 1 + 2 u < 0 for u < -0.5
    CHECK_FALSE(bad.validate(10, msg));
    CHECK(msg.find("visit 101") != std::string::npos);
    CHECK(msg.find("not positive") != std::string::npos);
    // freezing keeps the error transform
    double const e0 = cf.sigma(0, 1e4, 100.0, 0.01, 1.0, 1.0);
    cf.freezeErrorTransform();
    cf.params()[std::size_t(offB)] *= 2.0;
    CHECK(cf.sigma(0, 1e4, 100.0, 0.01, 1.0, 1.0) == e0);
    // the pedestal enters in quadrature
    auto ped = PhotometryModel::makeSimple(a, false, 0.01);
    CHECK(ped.sigma(0, 1e4, 100.0, 0.0, 0.0, 0.0) == doctest::Approx(0.5 * std::hypot(100.0, 100.0)));
    auto pedm = PhotometryModel::makeSimple(a, true, 0.01);
    CHECK(pedm.sigma(0, 1e4, 100.0, 0.01, 0.0, 0.0) == doctest::Approx(std::hypot(0.01, 0.01)));
}

TEST_CASE("jointcal photometric fitter: Schur and sparse steps agree, fits recover the truth") {
    for (int kind = 0; kind < 4; ++kind) {
        CAPTURE(kind);
        bool const field = kind >= 2;
        auto s = makePhot(4, 400, field);
        Associations a(s.ccds, s.src);
        prepare(a, s);
        auto model = makeModel(a, kind, 2);
        PhotometryFitterOptions opts;
        PhotometryFitter fitter(a, model, opts);
        std::vector<std::string> steps = {"Model", "Fluxes", "Model Fluxes"};
        if (field) steps.insert(steps.begin(), "ModelVisit");
        for (auto const& what : steps) {
            fitter.setSolverKind(SolverKind::Schur);
            Eigen::VectorXd const x = fitter.computeStep(what);
            fitter.setSolverKind(SolverKind::Sparse);
            Eigen::VectorXd const y = fitter.computeStep(what);
            REQUIRE(x.size() == y.size());
            CHECK((x - y).cwiseAbs().maxCoeff() <= 1e-8 * y.cwiseAbs().maxCoeff());
            CHECK(fitter.minimize(what) == MinimizeResult::Converged);
        }
        model.freezeErrorTransform();
        for (int it = 0; it < 3; ++it) CHECK(fitter.minimize("Model Fluxes", 5.0) == MinimizeResult::Converged);
        Chi2Result const c = fitter.computeChi2();
        CHECK(c.ndof > 300);
        CHECK(c.chi2 / double(c.ndof) == doctest::Approx(1.0).epsilon(0.15));
        std::string msg;
        CHECK(model.validate(c.ndof, msg));
        // calibration recovered at the detector centres and corners (noise: 0.1% per measurement, 0.2% per reference)
        for (std::size_t ci = 0; ci < s.ccds.size(); ++ci) {
            auto const& cc = s.ccds[ci];
            for (double x : {0.0, 1023.5, 2047.0}) {
                for (double y : {0.0, 2047.0}) {
                    auto const& p = cc.pixToFocal;
                    double const xf = p[0] * x + p[4], yf = p[3] * y + p[5];
                    double const truth = trueCalib(int(cc.visit - 100), int(cc.detector), xf, yf, field);
                    CHECK(model.calibration(ci, x, y) == doctest::Approx(truth).epsilon(3e-3));
                }
            }
        }
        // fitted fluxes of stars with references: unbiased to the noise
        double sum = 0;
        int n = 0;
        for (std::size_t f = 0; f < a.fitted().size(); ++f) {
            if (!a.fitted().alive[f] || a.fitted().ref[f] < 0) continue;
            int const star = int(a.refs().id[std::size_t(a.fitted().ref[f])]);
            sum += a.fitted().flux[f] / s.trueFlux[std::size_t(star)] - 1.0;
            ++n;
        }
        CHECK(n > 50);
        CHECK(std::abs(sum / n) < 2e-3);
    }
}

TEST_CASE("jointcal photometric fitter: a degenerate model fails with a message naming a parameter") {
    auto s = makePhot(2, 100, false);
    Associations a(s.ccds, s.src);
    a.associateCatalogs(3.0);
    RefInput none;  // no reference: the overall scale is degenerate with the fluxes
    a.collectRefStars(none, 3.0);
    a.prepareFittedStars(2);
    auto model = makeModel(a, 1);  // magnitudes: (zero points + k, star mags + k) is an exact null direction
    PhotometryFitter fitter(a, model, {});
    CHECK(fitter.minimize("Model Fluxes") == MinimizeResult::Failed);
    CHECK(fitter.lastError().find("not positive definite") != std::string::npos);
    CHECK(fitter.minimize("Fluxes") == MinimizeResult::Converged);
}
