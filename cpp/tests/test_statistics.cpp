#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "diffcal/parallel.hpp"
#include "diffcal/statistics.hpp"
#include "../src/candidate_scan.hpp"

using namespace diffcal;

namespace {

double const kNaN = std::numeric_limits<double>::quiet_NaN();

/// Straightforward reference: sort the candidates, interpolate quantiles, clip 3 times.
template <typename T>
ClippedStatistics naive(std::vector<T> const& v, std::vector<std::int32_t> const* mask, ClipControl const& ctrl) {
    std::vector<double> cand;
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (!std::isfinite(v[i])) continue;
        if (mask && ((*mask)[i] & ctrl.andMask)) continue;
        cand.push_back(double(v[i]));
    }
    ClippedStatistics s;
    s.nCandidates = std::int64_t(cand.size());
    if (cand.empty()) {
        s.mean = s.variance = s.median = s.iqr = kNaN;
        return s;
    }
    std::sort(cand.begin(), cand.end());
    auto q = [&](double f) {
        double pos = f * double(cand.size() - 1);
        auto k = std::size_t(std::floor(pos));
        double t = pos - double(k);
        if (t == 0 || k + 1 >= cand.size()) return cand[k];
        return cand[k] + (cand[k + 1] - cand[k]) * t;
    };
    s.median = q(0.5);
    s.iqr = q(0.75) - q(0.25);
    double c = s.median, hw = ctrl.nSigma * 0.741301109252802 * s.iqr;
    for (int it = 0; it < ctrl.nIter; ++it) {
        double n = 0, s1 = 0, s2 = 0;
        for (double x : cand) {
            double d = x - c;
            if (std::abs(d) <= hw) {
                n += 1;
                s1 += d;
                s2 += d * d;
            }
        }
        s.nUsed = std::int64_t(n);
        s.mean = n > 0 ? c + s1 / n : kNaN;
        s.variance = n > 1 ? (s2 - s1 * s1 / n) / (n - 1) : kNaN;
        c = s.mean;
        hw = ctrl.nSigma * std::sqrt(s.variance);
    }
    return s;
}

void checkClose(double a, double b, double rtol) {
    if (std::isnan(b)) {
        CHECK(std::isnan(a));
    } else {
        CHECK(std::abs(a - b) <= rtol * std::max(std::abs(a), std::abs(b)) + 1e-300);
    }
}

}  // namespace

TEST_CASE_TEMPLATE("clippedStatistics matches a sorted reference", T, float, double) {
    std::mt19937_64 rng(42);
    std::normal_distribution<double> normal(100.0, 3.0);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    int const h = 301, w = 257;
    std::vector<T> v(std::size_t(h * w));
    std::vector<std::int32_t> mask(v.size(), 0);
    for (std::size_t i = 0; i < v.size(); ++i) {
        v[i] = T(normal(rng));
        double u = uni(rng);
        if (u < 0.01) v[i] = T(1e4);  // outliers that clipping must remove
        else if (u < 0.02) v[i] = std::numeric_limits<T>::quiet_NaN();
        else if (u < 0.03) mask[i] = 1 << 3;
        else if (u < 0.04) mask[i] = 1 << 7;  // a plane not in the and-mask: still used
    }
    ClipControl ctrl;
    ctrl.andMask = 1 << 3;
    auto const got = clippedStatistics<T>(ImageView<const T>::contiguous(v.data(), h, w),
                                          ImageView<const std::int32_t>::contiguous(mask.data(), h, w), ctrl);
    auto const ref = naive(v, &mask, ctrl);
    CHECK(got.nCandidates == ref.nCandidates);
    CHECK(got.nUsed == ref.nUsed);
    checkClose(got.median, ref.median, 1e-15);
    checkClose(got.iqr, ref.iqr, 1e-12);
    checkClose(got.mean, ref.mean, 1e-12);
    checkClose(got.variance, ref.variance, 1e-10);
    CHECK(std::abs(got.mean - 100.0) < 0.1);
    CHECK(std::abs(std::sqrt(got.variance) - 3.0) < 0.1);
}

TEST_CASE_TEMPLATE("small images (bucket sort path) match the sorted reference on hard data", T, float, double) {
    // 4096..131072 pixels take the bucket-sort path: exact quartiles from the buckets holding
    // their ranks, clipping passes from bucket moments plus the straddling buckets' values.
    std::mt19937_64 rng(7);
    std::normal_distribution<double> normal(25.0, 0.5);
    std::cauchy_distribution<double> cauchy(0.0, 1.0);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    std::uniform_int_distribution<int> small(-3, 3);
    struct Case {
        char const* name;
        int h, w;
        int kind;
    };
    Case const cases[] = {{"normal", 228, 228, 0},   {"cauchy (wide key range)", 91, 91, 1},
                          {"ties", 128, 200, 2},      {"signed zeros", 64, 64, 3},
                          {"saturated outliers", 300, 430, 4}, {"one value", 100, 41, 5},
                          {"sign change", 111, 97, 6}};
    for (auto const& c : cases) {
        std::string const caseName = c.name;
        CAPTURE(caseName);
        std::size_t const n = std::size_t(c.h) * std::size_t(c.w);
        if (n > (std::size_t(1) << 17)) continue;  // that size is planned from a sample instead
        std::vector<T> v(n);
        std::vector<std::int32_t> mask(n, 0);
        for (std::size_t i = 0; i < n; ++i) {
            double x = 0.0;
            switch (c.kind) {
                case 0: x = normal(rng); break;
                case 1: x = cauchy(rng); break;
                case 2: x = double(small(rng)); break;
                case 3: x = uni(rng) < 0.5 ? -0.0 : (uni(rng) < 0.5 ? 0.0 : normal(rng) - 25.0); break;
                case 4: x = uni(rng) < 0.02 ? 1.0e6 : normal(rng); break;
                case 5: x = 4.25; break;
                case 6: x = normal(rng) - 25.0; break;
            }
            v[i] = T(x);
            double const u = uni(rng);
            if (u < 0.01) v[i] = std::numeric_limits<T>::quiet_NaN();
            else if (u < 0.015) v[i] = std::numeric_limits<T>::infinity();
            else if (u < 0.05) mask[i] = 1 << 2;
        }
        for (int nIter : {1, 3, 5}) {
            ClipControl ctrl;
            ctrl.andMask = 1 << 2;
            ctrl.nIter = nIter;
            auto const got = clippedStatistics<T>(ImageView<const T>::contiguous(v.data(), c.h, c.w),
                                                  ImageView<const std::int32_t>::contiguous(mask.data(), c.h, c.w), ctrl);
            auto const ref = naive(v, &mask, ctrl);
            CHECK(got.nCandidates == ref.nCandidates);
            CHECK(got.nUsed == ref.nUsed);
            CAPTURE(nIter);
            CHECK(got.median == ref.median);
            checkClose(got.iqr, ref.iqr, 1e-15);
            // the naive reference sums sequentially (errors ~1e-13 of the spread when the mean is
            // near zero): compare the mean on the scale of the data, not of the mean itself
            double const spread = std::abs(ref.mean) + std::sqrt(ref.variance);
            CHECK(std::abs(got.mean - ref.mean) <= 1e-12 * spread);
            checkClose(got.variance, ref.variance, 1e-9);
        }
    }
    // a strided (column) view gives the same as its contiguous copy
    std::vector<T> wide(2 * 100 * 80), tight(100 * 80);
    for (std::size_t i = 0; i < tight.size(); ++i) {
        tight[i] = T(normal(rng));
        wide[2 * i] = tight[i];
        wide[2 * i + 1] = T(1e30);
    }
    auto const a = clippedStatistics<T>(ImageView<const T>(wide.data(), 100, 80, 160, 2), {}, ClipControl{});
    auto const b = clippedStatistics<T>(ImageView<const T>::contiguous(tight.data(), 100, 80), {}, ClipControl{});
    CHECK(a.mean == b.mean);
    CHECK(a.variance == b.variance);
    CHECK(a.median == b.median);
}

TEST_CASE("clippedStatistics is bit-identical for any thread count") {
    std::mt19937_64 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> v(1000 * 700);
    for (auto& x : v) x = normal(rng);
    ImageView<const float> view = ImageView<const float>::contiguous(v.data(), 1000, 700);
    setNumThreads(1);
    auto const a = clippedStatistics<float>(view, {}, ClipControl{});
    setNumThreads(3);
    auto const b = clippedStatistics<float>(view, {}, ClipControl{});
    setNumThreads(0);
    CHECK(a.mean == b.mean);
    CHECK(a.variance == b.variance);
    CHECK(a.median == b.median);
}

TEST_CASE("constant, empty, single and tiny inputs") {
    ClipControl ctrl;
    std::vector<double> constant(50, 7.25);
    auto c = clippedStatistics<double>(ImageView<const double>::contiguous(constant.data(), 5, 10), {}, ctrl);
    CHECK(c.mean == 7.25);
    CHECK(c.variance == 0.0);
    CHECK(c.nUsed == 50);

    std::vector<double> allNan(4, kNaN);
    auto e = clippedStatistics<double>(ImageView<const double>::contiguous(allNan.data(), 2, 2), {}, ctrl);
    CHECK(e.nCandidates == 0);
    CHECK(std::isnan(e.mean));
    CHECK(std::isnan(e.variance));

    std::vector<double> one{3.5};
    auto s = clippedStatistics<double>(ImageView<const double>::contiguous(one.data(), 1, 1), {}, ctrl);
    CHECK(s.median == 3.5);
    CHECK(std::isnan(s.variance));

    std::vector<double> two{1.0, 2.0};
    auto t = clippedStatistics<double>(ImageView<const double>::contiguous(two.data(), 1, 2), {}, ctrl);
    auto tr = naive(two, nullptr, ctrl);
    checkClose(t.mean, tr.mean, 1e-15);
    checkClose(t.variance, tr.variance, 1e-15);
}

TEST_CASE("strided views are read in place") {
    // A 4x6 buffer viewed as its 4x3 even columns.
    std::vector<double> buf(24);
    for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = (i % 2 == 0) ? double(i) : 1e9;
    ImageView<const double> even(buf.data(), 4, 3, 6, 2);
    auto const s = clippedStatistics<double>(even, {}, ClipControl{});
    CHECK(s.nCandidates == 12);
    CHECK(s.median == doctest::Approx(11.0));
}

TEST_CASE("quantiles of clustered float data need several radix rounds") {
    // 3 million values in a narrow band exercise the refine-then-gather path.
    std::mt19937_64 rng(3);
    std::normal_distribution<double> normal(100.0, 0.01);
    std::vector<double> v(3000000);
    for (auto& x : v) x = normal(rng);
    ImageView<const double> view = ImageView<const double>::contiguous(v.data(), 3000, 1000);
    std::vector<double> sorted = v;
    std::sort(sorted.begin(), sorted.end());
    for (double f : {0.0, 0.25, 0.5, 0.75, 1.0}) {
        double pos = f * double(sorted.size() - 1);
        auto k = std::size_t(pos);
        double expect = sorted[k] + (k + 1 < sorted.size() ? (sorted[k + 1] - sorted[k]) * (pos - double(k)) : 0.0);
        checkClose(candidateQuantile<double>(view, {}, 0, f), expect, 1e-15);
    }
}

TEST_CASE("bad control values and shapes are rejected") {
    std::vector<float> v(6, 1.0f);
    std::vector<std::int32_t> m(4, 0);
    auto view = ImageView<const float>::contiguous(v.data(), 2, 3);
    ClipControl bad;
    bad.nIter = 0;
    CHECK_THROWS_AS(clippedStatistics<float>(view, {}, bad), std::invalid_argument);
    bad = ClipControl{};
    bad.nSigma = -1.0;
    CHECK_THROWS_AS(clippedStatistics<float>(view, {}, bad), std::invalid_argument);
    CHECK_THROWS_AS(clippedStatistics<float>(view, ImageView<const std::int32_t>::contiguous(m.data(), 2, 2), ClipControl{}),
                    std::invalid_argument);
    CHECK_THROWS_AS(candidateQuantile<float>(view, {}, 0, 1.5), std::invalid_argument);
}

TEST_CASE("a sample that misrepresents the data still gives exact quantiles") {
    // The pixels the sampler reads (i * npix / 65536) hold 0; every other pixel a distinct value.
    int const h = 512, w = 512;
    std::size_t const npix = std::size_t(h) * std::size_t(w);
    std::vector<double> v(npix);
    for (std::size_t i = 0; i < npix; ++i) v[i] = double(i % 9973) + 0.5;
    for (std::size_t i = 0; i < 65536; ++i) v[i * npix / 65536] = 0.0;
    auto view = ImageView<const double>::contiguous(v.data(), h, w);
    std::vector<double> sorted = v;
    std::sort(sorted.begin(), sorted.end());
    for (double f : {0.1, 0.25, 0.5, 0.75}) {
        double pos = f * double(npix - 1);
        auto k = std::size_t(pos);
        double expect = sorted[k] + (sorted[k + 1] - sorted[k]) * (pos - double(k));
        checkClose(candidateQuantile<double>(view, {}, 0, f), expect, 1e-15);
    }
    ClipControl ctrl;
    auto const got = clippedStatistics<double>(view, {}, ctrl);
    auto const ref = naive(v, nullptr, ctrl);
    CHECK(got.nUsed == ref.nUsed);
    checkClose(got.mean, ref.mean, 1e-12);
    checkClose(got.variance, ref.variance, 1e-12);
}

TEST_CASE("clip windows that move far from the first one fall back to full passes") {
    // Bimodal data: the IQR-based first window is wide, later windows shrink onto one mode.
    std::mt19937_64 rng(11);
    std::normal_distribution<double> a(0.0, 1.0), b(30.0, 1.0);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<double> v(200000);
    for (auto& x : v) x = u(rng) < 0.7 ? a(rng) : b(rng);
    auto view = ImageView<const double>::contiguous(v.data(), 400, 500);
    for (int nIter : {1, 2, 3, 6}) {
        ClipControl ctrl;
        ctrl.nIter = nIter;
        ctrl.nSigma = 2.0;
        auto const got = clippedStatistics<double>(view, {}, ctrl);
        auto const ref = naive(v, nullptr, ctrl);
        CHECK(got.nUsed == ref.nUsed);
        checkClose(got.mean, ref.mean, 1e-12);
        checkClose(got.variance, ref.variance, 1e-11);
    }
}

TEST_CASE("planned single-scan path equals the direct path, with SIMD and scalar scans") {
    // Large enough (> 2^17 pixels) to take the sampled plan; strided and contiguous views.
    std::mt19937_64 rng(21);
    std::normal_distribution<double> normal(50.0, 2.0);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    int const h = 700, w = 400;
    std::vector<float> v(std::size_t(h * w));
    std::vector<std::int32_t> mask(v.size(), 0);
    for (std::size_t i = 0; i < v.size(); ++i) {
        v[i] = float(normal(rng));
        double u = uni(rng);
        if (u < 0.01) v[i] = 5e3f;
        else if (u < 0.02) v[i] = std::numeric_limits<float>::infinity();
        else if (u < 0.05) mask[i] = 4;
    }
    ClipControl ctrl;
    ctrl.andMask = 4;
    auto const ref = naive(v, &mask, ctrl);
    for (bool scalar : {false, true}) {
        detail::forceScalarScan() = scalar;
        auto const got = clippedStatistics<float>(ImageView<const float>::contiguous(v.data(), h, w),
                                                  ImageView<const std::int32_t>::contiguous(mask.data(), h, w), ctrl);
        CHECK(got.nCandidates == ref.nCandidates);
        CHECK(got.nUsed == ref.nUsed);
        CHECK(got.median == ref.median);
        checkClose(got.iqr, ref.iqr, 1e-12);
        checkClose(got.mean, ref.mean, 1e-12);
        checkClose(got.variance, ref.variance, 1e-11);
    }
    detail::forceScalarScan() = false;
    // A column-strided view (every other column of a wider buffer) takes the scalar scan.
    std::vector<float> wide(v.size() * 2, 1e30f);
    std::vector<std::int32_t> wideMask(v.size() * 2, 4);
    for (std::size_t i = 0; i < v.size(); ++i) {
        wide[2 * i] = v[i];
        wideMask[2 * i] = mask[i];
    }
    auto const strided = clippedStatistics<float>(ImageView<const float>(wide.data(), h, w, 2 * w, 2),
                                                  ImageView<const std::int32_t>(wideMask.data(), h, w, 2 * w, 2), ctrl);
    CHECK(strided.nUsed == ref.nUsed);
    checkClose(strided.mean, ref.mean, 1e-12);
}

TEST_CASE("large constant and mostly constant planes are exact (counted, not collected)") {
    int const h = 600, w = 500;  // > 2^17 pixels: the sampled plan
    std::vector<float> constant(std::size_t(h * w), 0.08f);
    ClipControl ctrl;
    auto const c = clippedStatistics<float>(ImageView<const float>::contiguous(constant.data(), h, w), {}, ctrl);
    CHECK(c.mean == double(0.08f));
    CHECK(c.variance == 0.0);
    CHECK(c.nUsed == h * w);
    CHECK(c.iqr == 0.0);

    // 70 % of the pixels share one value, the rest are spread: quartiles straddle the plateau.
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    std::vector<double> mostly(std::size_t(h * w));
    for (auto& x : mostly) x = uni(rng) < 0.7 ? 10.0 : 10.0 + 4.0 * (uni(rng) - 0.5);
    for (int nIter : {1, 3}) {
        ctrl.nIter = nIter;
        auto const got = clippedStatistics<double>(ImageView<const double>::contiguous(mostly.data(), h, w), {}, ctrl);
        auto const ref = naive(mostly, nullptr, ctrl);
        CHECK(got.nUsed == ref.nUsed);
        CHECK(got.median == ref.median);
        checkClose(got.iqr, ref.iqr, 1e-15);
        checkClose(got.mean, ref.mean, 1e-12);
        if (std::isnan(ref.variance)) CHECK(std::isnan(got.variance));
        else CHECK(std::abs(got.variance - ref.variance) <= 1e-12 * (1.0 + std::abs(ref.variance)));
    }
}
