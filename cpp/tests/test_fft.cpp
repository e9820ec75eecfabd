#include <doctest/doctest.h>

#include <cmath>
#include <complex>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "diffcal/fft.hpp"
#include "diffcal/parallel.hpp"

using namespace diffcal;
using diffcal::fft::Complex;

namespace {

/// Direct O(n^2) DFT (long double accumulation) of one sequence.
std::vector<Complex> naiveDft(std::vector<Complex> const& x, bool inverse) {
    std::ptrdiff_t const n = static_cast<std::ptrdiff_t>(x.size());
    std::vector<Complex> out(x.size());
    long double const sign = inverse ? 1.0L : -1.0L;
    for (std::ptrdiff_t k = 0; k < n; ++k) {
        long double re = 0, im = 0;
        for (std::ptrdiff_t t = 0; t < n; ++t) {
            long double const a = sign * 2.0L * 3.14159265358979323846264338327950288L *
                                  static_cast<long double>((t * k) % n) / static_cast<long double>(n);
            long double const c = std::cos(a), s = std::sin(a);
            re += c * x[t].real() - s * x[t].imag();
            im += s * x[t].real() + c * x[t].imag();
        }
        out[k] = Complex(static_cast<double>(re), static_cast<double>(im));
    }
    return out;
}

/// Direct 2-D real-to-half-spectrum DFT of a rows x cols array.
std::vector<Complex> naiveRfft2(std::vector<double> const& x, std::ptrdiff_t rows, std::ptrdiff_t cols) {
    std::ptrdiff_t const cc = cols / 2 + 1;
    std::vector<Complex> rowT(static_cast<std::size_t>(rows * cc));
    for (std::ptrdiff_t y = 0; y < rows; ++y) {
        std::vector<Complex> r(static_cast<std::size_t>(cols));
        for (std::ptrdiff_t c = 0; c < cols; ++c) r[c] = x[y * cols + c];
        auto f = naiveDft(r, false);
        for (std::ptrdiff_t c = 0; c < cc; ++c) rowT[y * cc + c] = f[c];
    }
    std::vector<Complex> out(rowT.size());
    for (std::ptrdiff_t c = 0; c < cc; ++c) {
        std::vector<Complex> col(static_cast<std::size_t>(rows));
        for (std::ptrdiff_t y = 0; y < rows; ++y) col[y] = rowT[y * cc + c];
        auto f = naiveDft(col, false);
        for (std::ptrdiff_t y = 0; y < rows; ++y) out[y * cc + c] = f[y];
    }
    return out;
}

double maxAbs(std::vector<Complex> const& v) {
    double m = 0;
    for (auto const& c : v) m = std::max(m, std::abs(c));
    return m;
}

}  // namespace

TEST_CASE("cheapestFastSize prefers cheap factors over the next smooth size") {
    CHECK(fft::cheapestFastSize(252) == 256);  // 2^2 3^2 7 costs more than 2^8
    CHECK(fft::cheapestFastSize(256) == 256);
    CHECK(fft::cheapestFastSize(4072) == 4096);
    CHECK(fft::cheapestFastSize(1) == 2);
    for (std::ptrdiff_t n : {3, 17, 100, 251, 289, 1000, 4001}) {
        std::ptrdiff_t const m = fft::cheapestFastSize(n);
        CHECK(m >= n);
        CHECK(m % 2 == 0);
        CHECK(fft::isSmooth(m));
        CHECK(m <= fft::nextFastSize(n) * 17 / 16);
    }
}

TEST_CASE("nextFastSize returns even 2/3/5/7-smooth sizes") {
    CHECK(fft::nextFastSize(0) == 2);
    CHECK(fft::nextFastSize(1) == 2);
    CHECK(fft::nextFastSize(287) == 288);
    CHECK(fft::nextFastSize(288) == 288);
    CHECK(fft::nextFastSize(4127) == 4200);
    CHECK(fft::nextFastSize(4103) == 4116);
    CHECK(fft::nextFastSize(22) == 24);
    CHECK(fft::nextFastSize(4097) == 4116);
    for (std::ptrdiff_t n = 1; n < 3000; ++n) {
        std::ptrdiff_t const m = fft::nextFastSize(n);
        REQUIRE(m >= n);
        REQUIRE(m % 2 == 0);
        REQUIRE(fft::isSmooth(m));
        for (std::ptrdiff_t k = std::max<std::ptrdiff_t>(n, 2); k < m; ++k) REQUIRE(!(k % 2 == 0 && fft::isSmooth(k)));
    }
    CHECK_THROWS_AS(fft::nextFastSize(-1), std::invalid_argument);
}

TEST_CASE("1-D complex FFT matches the direct DFT for many lengths, batches and both directions") {
    std::mt19937_64 rng(42);
    std::normal_distribution<double> g;
    // smooth, generic primes (11, 13, 43, 97), Bluestein primes (101, 211, 503) and mixtures
    for (std::ptrdiff_t n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 25, 27, 30, 43, 49, 64, 97, 101, 120,
                             129, 211, 288, 343, 503, 1006, 1024}) {
        for (std::ptrdiff_t batch : {1, 3}) {
            auto plan = fft::ComplexFft::get(n);
            std::vector<Complex> data(static_cast<std::size_t>(n * batch));
            for (auto& c : data) c = Complex(g(rng), g(rng));
            std::vector<Complex> orig = data;
            std::vector<Complex> work(static_cast<std::size_t>(plan->workSize(batch)));
            for (bool inverse : {false, true}) {
                data = orig;
                plan->run(data.data(), work.data(), batch, inverse);
                for (std::ptrdiff_t b = 0; b < batch; ++b) {
                    std::vector<Complex> seq(static_cast<std::size_t>(n));
                    for (std::ptrdiff_t t = 0; t < n; ++t) seq[t] = orig[t * batch + b];
                    auto ref = naiveDft(seq, inverse);
                    double err = 0;
                    for (std::ptrdiff_t t = 0; t < n; ++t) err = std::max(err, std::abs(data[t * batch + b] - ref[t]));
                    INFO("n=" << n << " batch=" << batch << " inverse=" << inverse);
                    CHECK(err <= 1e-13 * std::max(1.0, maxAbs(ref)));
                }
            }
        }
    }
    CHECK(fft::ComplexFft::get(503)->usesBluestein());
    CHECK(!fft::ComplexFft::get(4128)->usesBluestein());
}

TEST_CASE("2-D real FFT matches the direct DFT and round-trips (even and odd sizes)") {
    std::mt19937_64 rng(7);
    std::normal_distribution<double> g;
    for (auto [rows, cols] : std::vector<std::pair<std::ptrdiff_t, std::ptrdiff_t>>{
             {1, 1}, {1, 8}, {8, 1}, {6, 10}, {9, 7}, {12, 15}, {32, 22}, {43, 18}, {20, 86}, {17, 101}}) {
        auto plan = fft::RealFft2d::get(rows, cols);
        REQUIRE(plan->spectrumCols() == cols / 2 + 1);
        std::vector<double> x(static_cast<std::size_t>(rows * cols));
        for (auto& v : x) v = g(rng);
        // zero a few rows to exercise the zero-row skip
        if (rows > 4) {
            for (std::ptrdiff_t c = 0; c < cols; ++c) x[2 * cols + c] = 0.0;
        }
        std::vector<Complex> spec(static_cast<std::size_t>(plan->bufferSize()));
        plan->forward(ImageView<const double>::contiguous(x.data(), rows, cols), spec.data());
        auto ref = naiveRfft2(x, rows, cols);
        double err = 0;
        for (std::size_t i = 0; i < ref.size(); ++i) err = std::max(err, std::abs(spec[i] - ref[i]));
        INFO("rows=" << rows << " cols=" << cols);
        CHECK(err <= 1e-12 * std::max(1.0, maxAbs(ref)));
        std::vector<double> back(x.size());
        plan->inverse(spec.data(), ImageView<double>::contiguous(back.data(), rows, cols));
        double rerr = 0;
        for (std::size_t i = 0; i < x.size(); ++i) rerr = std::max(rerr, std::abs(back[i] - x[i]));
        CHECK(rerr <= 1e-13);
    }
}

TEST_CASE("2-D real FFT is bit-identical for any thread count and usable from many threads") {
    std::ptrdiff_t const rows = 96, cols = 130;
    std::mt19937_64 rng(3);
    std::normal_distribution<double> g;
    std::vector<double> x(static_cast<std::size_t>(rows * cols));
    for (auto& v : x) v = g(rng);
    auto plan = fft::RealFft2d::get(rows, cols);
    auto transform = [&](bool parallel) {
        std::vector<Complex> spec(static_cast<std::size_t>(plan->bufferSize()));
        plan->forward(ImageView<const double>::contiguous(x.data(), rows, cols), spec.data(), parallel);
        return spec;
    };
    int const saved = getNumThreads();
    setNumThreads(1);
    auto const one = transform(true);
    setNumThreads(3);
    auto const three = transform(true);
    setNumThreads(saved);
    CHECK(std::memcmp(one.data(), three.data(), one.size() * sizeof(Complex)) == 0);
    // concurrent serial use of the same cached plan
    std::vector<std::vector<Complex>> results(4);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { results[t] = transform(false); });
    for (auto& th : threads) th.join();
    for (auto const& r : results) CHECK(std::memcmp(r.data(), one.data(), one.size() * sizeof(Complex)) == 0);
}

TEST_CASE("RealFft2d rejects bad sizes") {
    CHECK_THROWS_AS(fft::RealFft2d(0, 4), std::invalid_argument);
    CHECK_THROWS_AS(fft::ComplexFft(0), std::invalid_argument);
    auto plan = fft::RealFft2d::get(4, 4);
    std::vector<double> x(9);
    std::vector<Complex> spec(static_cast<std::size_t>(plan->bufferSize()));
    CHECK_THROWS_AS(plan->forward(ImageView<const double>::contiguous(x.data(), 3, 3), spec.data()),
                    std::invalid_argument);
}
