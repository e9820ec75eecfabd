#include <doctest/doctest.h>

#include <cmath>
#include <complex>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "diffcal/decorrelation.hpp"
#include "diffcal/parallel.hpp"

using namespace diffcal;
using namespace diffcal::decorrelation;
using Complex = std::complex<double>;

namespace {

std::vector<double> gaussian(std::ptrdiff_t h, std::ptrdiff_t w, double sigma, double scale = 1.0) {
    std::vector<double> k(static_cast<std::size_t>(h * w));
    double s = 0;
    for (std::ptrdiff_t y = 0; y < h; ++y) {
        for (std::ptrdiff_t x = 0; x < w; ++x) {
            double const dx = double(x - (w - 1) / 2), dy = double(y - (h - 1) / 2);
            k[y * w + x] = std::exp(-(dx * dx + dy * dy) / (2 * sigma * sigma));
            s += k[y * w + x];
        }
    }
    for (auto& v : k) v *= scale / s;
    return k;
}

/// Full complex 2-D DFT (direct, O(N^2)) of a rows x cols array.
std::vector<Complex> dft2(std::vector<Complex> const& a, std::ptrdiff_t R, std::ptrdiff_t C, bool inverse) {
    double const sgn = inverse ? 1.0 : -1.0;
    std::vector<Complex> out(a.size());
    for (std::ptrdiff_t u = 0; u < R; ++u) {
        for (std::ptrdiff_t v = 0; v < C; ++v) {
            Complex s = 0;
            for (std::ptrdiff_t y = 0; y < R; ++y) {
                for (std::ptrdiff_t x = 0; x < C; ++x) {
                    double const ph = sgn * 2 * M_PI * (double((u * y) % R) / R + double((v * x) % C) / C);
                    s += a[y * C + x] * Complex(std::cos(ph), std::sin(ph));
                }
            }
            out[u * C + v] = inverse ? s / double(R * C) : s;
        }
    }
    return out;
}

}  // namespace

TEST_CASE("computeCommonShape follows the reference rule") {
    CHECK(computeCommonShape({{256, 256}, {32, 32}, {25, 25}}) == Shape2{288, 288});
    CHECK(computeCommonShape({{33, 32}}) == Shape2{34, 32});
    CHECK(computeCommonShape({{10, 40}, {7, 3}, {9, 50}}) == Shape2{18, 90});
    CHECK(fftShape({4128, 4130}, FftShapeMode::Fast) == Shape2{4320, 4320});  // 2^5 3^3 5, not 4200 = 2^3 3 5^2 7
    CHECK(fftShape({252, 251}, FftShapeMode::Fast) == Shape2{256, 256});
    CHECK_THROWS_AS(computeCommonShape({}), std::invalid_argument);
    CHECK_THROWS_AS(computeCommonShape({{0, 3}}), std::invalid_argument);
}

TEST_CASE("padCenterOrigin places index n/2 at the origin and unpad inverts it") {
    std::vector<double> a(15);
    for (int i = 0; i < 15; ++i) a[i] = i + 1;
    auto in = ImageView<const double>::contiguous(a.data(), 3, 5);
    std::vector<double> p(6 * 8, -1.0);
    padCenterOrigin(in, ImageView<double>::contiguous(p.data(), 6, 8));
    CHECK(p[0] == a[1 * 5 + 2]);
    CHECK(p[2] == a[1 * 5 + 4]);
    CHECK(p[5 * 8 + 7] == a[0 * 5 + 1]);
    CHECK(p[5 * 8 + 6] == a[0]);
    CHECK(p[3 * 8 + 3] == 0.0);
    std::vector<double> back(15);
    unpadCenterOrigin(ImageView<const double>::contiguous(p.data(), 6, 8), ImageView<double>::contiguous(back.data(), 3, 5));
    CHECK(back == a);
}

TEST_CASE("the correction filter satisfies v w1 + vt w2 = v + vt kSum^2 and corr(0) = 1") {
    for (double kscale : {1.0, 1.4, 0.7}) {
        auto k = gaussian(15, 13, 2.0, kscale);
        auto kv = ImageView<const double>::contiguous(k.data(), 15, 13);
        for (auto [v, vt] : std::vector<std::pair<double, double>>{{1, 1}, {0.2, 5}, {3, 0.1}}) {
            auto f = computeCorrectionFilter(kv, {}, v, vt, {40, 58});
            CHECK(f.kSum == doctest::Approx(kscale).epsilon(1e-12));
            CHECK(v * f.w1 + vt * f.w2 == doctest::Approx(v + vt * f.kSum * f.kSum).epsilon(1e-12));
            CHECK(f.corr[0] == doctest::Approx(1.0).epsilon(1e-12));
            CHECK(f.spectrumCols == 30);
        }
    }
    auto k = gaussian(5, 5, 1.0);
    auto kv = ImageView<const double>::contiguous(k.data(), 5, 5);
    CHECK_THROWS_AS(computeCorrectionFilter(kv, {}, 0.0, 1.0, {8, 8}), std::invalid_argument);
    CHECK_THROWS_AS(computeCorrectionFilter(kv, {}, 1.0, -1.0, {8, 8}), std::invalid_argument);
    CHECK_THROWS_AS(computeCorrectionFilter(kv, {}, 1.0, 1.0, {4, 8}), std::invalid_argument);
}

TEST_CASE("decorrelateImage equals a direct DFT implementation of the spec on a small image") {
    std::ptrdiff_t const H = 9, W = 12, kh = 4, kw = 3;
    std::mt19937_64 rng(11);
    std::normal_distribution<double> g;
    std::vector<double> img(H * W), V(H * W, 0.7), Vt(H * W, 1.9);
    for (auto& x : img) x = g(rng);
    auto k = gaussian(kh, kw, 1.1, 1.2);
    double const v = 0.7, vt = 1.9;
    Shape2 const M = computeCommonShape({{kh, kw}, {H, W}});  // (12, 14)
    REQUIRE(M == Shape2{12, 14});
    // direct: pad kernel origin-centred and image (rolled by -n/2, as the reference), DFT, filter, inverse
    std::vector<Complex> kp(M.rows * M.cols, 0.0), ip(M.rows * M.cols, 0.0);
    double kSum = 0;
    for (std::ptrdiff_t y = 0; y < kh; ++y) {
        for (std::ptrdiff_t x = 0; x < kw; ++x) {
            kp[((y - kh / 2 + M.rows) % M.rows) * M.cols + (x - kw / 2 + M.cols) % M.cols] = k[y * kw + x];
            kSum += k[y * kw + x];
        }
    }
    for (std::ptrdiff_t y = 0; y < H; ++y) {
        for (std::ptrdiff_t x = 0; x < W; ++x) {
            ip[((y - H / 2 + M.rows) % M.rows) * M.cols + (x - W / 2 + M.cols) % M.cols] = img[y * W + x];
        }
    }
    auto K = dft2(kp, M.rows, M.cols, false);
    auto I = dft2(ip, M.rows, M.cols, false);
    for (std::size_t i = 0; i < I.size(); ++i) I[i] *= std::sqrt((v + vt * kSum * kSum) / (v + vt * std::norm(K[i])));
    auto out = dft2(I, M.rows, M.cols, true);
    std::vector<double> ours(H * W), ourVar(H * W);
    DecorrelationInputs<double> in;
    in.image = ImageView<const double>::contiguous(img.data(), H, W);
    in.variance = ImageView<const double>::contiguous(V.data(), H, W);
    in.templateVariance = ImageView<const double>::contiguous(Vt.data(), H, W);
    in.kernel = ImageView<const double>::contiguous(k.data(), kh, kw);
    in.v = v;
    in.vt = vt;
    auto r = decorrelateImage<double>(in, {}, ImageView<double>::contiguous(ours.data(), H, W),
                                      ImageView<double>::contiguous(ourVar.data(), H, W));
    CHECK(r.fftShape == M);
    double err = 0;
    for (std::ptrdiff_t y = 0; y < H; ++y) {
        for (std::ptrdiff_t x = 0; x < W; ++x) {
            Complex const ref = out[((y - H / 2 + M.rows) % M.rows) * M.cols + (x - W / 2 + M.cols) % M.cols];
            err = std::max(err, std::abs(ours[y * W + x] - ref.real()));
        }
    }
    CHECK(err < 1e-12);
    for (double vv : ourVar) CHECK(vv == doctest::Approx(v + vt * kSum * kSum).epsilon(1e-12));
}

TEST_CASE("decorrelateImage: identity for vt = 0, NaN/Inf restore, float32, errors") {
    std::ptrdiff_t const H = 40, W = 33;
    std::mt19937_64 rng(5);
    std::normal_distribution<double> g;
    std::vector<float> img(H * W), V(H * W, 2.0f), Vt(H * W, 0.0f), oi(H * W), ov(H * W);
    for (auto& x : img) x = float(g(rng));
    img[3] = std::numeric_limits<float>::quiet_NaN();
    img[50] = std::numeric_limits<float>::infinity();
    img[60] = -std::numeric_limits<float>::infinity();
    auto k = gaussian(7, 7, 1.5);
    DecorrelationInputs<float> in;
    in.image = ImageView<const float>::contiguous(img.data(), H, W);
    in.variance = ImageView<const float>::contiguous(V.data(), H, W);
    in.templateVariance = ImageView<const float>::contiguous(Vt.data(), H, W);
    in.kernel = ImageView<const double>::contiguous(k.data(), 7, 7);
    in.v = 2.0;
    in.vt = 0.0;
    auto outI = ImageView<float>::contiguous(oi.data(), H, W);
    auto outV = ImageView<float>::contiguous(ov.data(), H, W);
    auto r = decorrelateImage<float>(in, {}, outI, outV);
    CHECK(r.nNonFinite == 3);
    CHECK(r.w1 == doctest::Approx(1.0).epsilon(1e-12));
    CHECK(std::isnan(oi[3]));
    CHECK(oi[50] == std::numeric_limits<float>::infinity());
    CHECK(oi[60] == std::numeric_limits<float>::infinity());
    for (std::ptrdiff_t i = 0; i < H * W; ++i) {
        if (std::isfinite(img[i])) CHECK(std::abs(oi[i] - img[i]) < 1e-5);
        CHECK(ov[i] == doctest::Approx(2.0).epsilon(1e-7));
    }
    // in-place on the image is allowed
    std::vector<float> copy = img;
    in.image = ImageView<const float>::contiguous(copy.data(), H, W);
    decorrelateImage<float>(in, {}, ImageView<float>::contiguous(copy.data(), H, W), outV);
    CHECK(std::memcmp(copy.data(), oi.data(), oi.size() * sizeof(float)) == 0);
    // errors
    DecorrelationInputs<float> bad = in;
    bad.v = 0.0;
    CHECK_THROWS_AS(decorrelateImage<float>(bad, {}, outI, outV), std::invalid_argument);
    bad = in;
    bad.vt = std::nan("");
    CHECK_THROWS_AS(decorrelateImage<float>(bad, {}, outI, outV), std::invalid_argument);
    std::vector<double> big(41 * 3, 0.1);
    bad = in;
    bad.kernel = ImageView<const double>::contiguous(big.data(), 41, 3);
    CHECK_THROWS_AS(decorrelateImage<float>(bad, {}, outI, outV), std::invalid_argument);
    CHECK_THROWS_AS(decorrelateImage<float>(in, {}, outI, ImageView<float>::contiguous(V.data(), H, W)),
                    std::invalid_argument);
    CHECK_THROWS_AS(decorrelateImage<float>(in, {}, ImageView<float>::contiguous(oi.data(), H - 1, W), outV),
                    std::invalid_argument);
}

TEST_CASE("decorrelateImage into an output window equals the window of the whole-image result bit for bit") {
    std::ptrdiff_t const H = 50, W = 47;
    std::mt19937_64 rng(9);
    std::normal_distribution<double> g;
    std::vector<float> img(H * W), V(H * W), Vt(H * W);
    for (auto& x : img) x = float(g(rng));
    for (auto& x : V) x = float(1.0 + 0.1 * std::abs(g(rng)));
    for (auto& x : Vt) x = float(2.0 + 0.1 * std::abs(g(rng)));
    img[7 * W + 20] = std::numeric_limits<float>::quiet_NaN();
    auto k = gaussian(9, 7, 1.5);
    DecorrelationInputs<float> in;
    in.image = ImageView<const float>::contiguous(img.data(), H, W);
    in.variance = ImageView<const float>::contiguous(V.data(), H, W);
    in.templateVariance = ImageView<const float>::contiguous(Vt.data(), H, W);
    in.kernel = ImageView<const double>::contiguous(k.data(), 9, 7);
    in.v = 1.1;
    in.vt = 2.1;
    for (bool complete : {false, true}) {
        DecorrelationOptions opt;
        opt.completeVarPlanePropagation = complete;
        std::vector<float> fi(H * W), fv(H * W);
        decorrelateImage<float>(in, opt, ImageView<float>::contiguous(fi.data(), H, W),
                                ImageView<float>::contiguous(fv.data(), H, W));
        std::ptrdiff_t const y0 = 5, x0 = 11, h = 30, w = 21;
        std::vector<float> wi(h * w), wv(h * w);
        decorrelateImage<float>(in, opt, ImageView<float>::contiguous(wi.data(), h, w),
                                ImageView<float>::contiguous(wv.data(), h, w), y0, x0);
        int bad = 0;
        for (std::ptrdiff_t y = 0; y < h; ++y)
            for (std::ptrdiff_t x = 0; x < w; ++x) {
                float const a = fi[(y0 + y) * W + x0 + x], b = wi[y * w + x];
                bad += !(a == b || (std::isnan(a) && std::isnan(b)));
                bad += fv[(y0 + y) * W + x0 + x] != wv[y * w + x];
            }
        CHECK(bad == 0);
        // a window outside the image is an error
        CHECK_THROWS_AS(decorrelateImage<float>(in, opt, ImageView<float>::contiguous(wi.data(), h, w),
                                                ImageView<float>::contiguous(wv.data(), h, w), 25, x0),
                        std::invalid_argument);
    }
}

TEST_CASE("decorrelateImage is bit-identical across thread counts and concurrent serial calls") {
    std::ptrdiff_t const H = 120, W = 90;
    std::mt19937_64 rng(9);
    std::normal_distribution<double> g;
    std::vector<double> img(H * W), V(H * W), Vt(H * W);
    for (auto& x : img) x = g(rng);
    for (auto& x : V) x = 1.0 + 0.1 * g(rng);
    for (auto& x : Vt) x = 2.0 + 0.1 * g(rng);
    auto k = gaussian(16, 16, 2.0);
    auto P = gaussian(11, 11, 1.7);
    DecorrelationInputs<double> in;
    in.image = ImageView<const double>::contiguous(img.data(), H, W);
    in.variance = ImageView<const double>::contiguous(V.data(), H, W);
    in.templateVariance = ImageView<const double>::contiguous(Vt.data(), H, W);
    in.kernel = ImageView<const double>::contiguous(k.data(), 16, 16);
    in.preConvKernel = ImageView<const double>::contiguous(P.data(), 11, 11);
    in.v = 1.0;
    in.vt = 2.0;
    DecorrelationOptions opt;
    opt.completeVarPlanePropagation = true;
    auto run = [&](bool parallel) {
        DecorrelationOptions o = opt;
        o.parallel = parallel;
        std::vector<double> oi(H * W), ov(H * W);
        decorrelateImage<double>(in, o, ImageView<double>::contiguous(oi.data(), H, W),
                                 ImageView<double>::contiguous(ov.data(), H, W));
        oi.insert(oi.end(), ov.begin(), ov.end());
        return oi;
    };
    int const saved = getNumThreads();
    setNumThreads(1);
    auto const one = run(true);
    setNumThreads(4);
    auto const four = run(true);
    setNumThreads(saved);
    CHECK(std::memcmp(one.data(), four.data(), one.size() * sizeof(double)) == 0);
    std::vector<std::vector<double>> res(3);
    std::vector<std::thread> th;
    for (int t = 0; t < 3; ++t) th.emplace_back([&, t] { res[t] = run(false); });
    for (auto& x : th) x.join();
    for (auto const& r : res) CHECK(std::memcmp(r.data(), one.data(), one.size() * sizeof(double)) == 0);
}
