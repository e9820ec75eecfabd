#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "diffcal/convolve.hpp"

using namespace diffcal;
using namespace diffcal::convolution;

TEST_CASE("convolveMaskedImage: interior, variance, mask OR and edge band") {
    std::ptrdiff_t const H = 30, W = 25, kh = 4, kw = 5;  // ctr = (2, 1): bands left 2, right 2, bottom 1, top 2
    std::mt19937_64 rng(1);
    std::uniform_real_distribution<double> u(0.5, 1.5);
    std::vector<double> img(H * W), var(H * W), k(kh * kw);
    std::vector<std::int32_t> mask(H * W, 0);
    for (auto& v : img) v = u(rng);
    for (auto& v : var) v = u(rng);
    for (auto& v : k) v = u(rng);
    k[0] = 0.0;
    mask[10 * W + 12] = 8;
    std::vector<double> oi(H * W), ov(H * W);
    std::vector<std::int32_t> om(H * W);
    ConvolutionControl ctrl;
    convolveMaskedImage<double>(ImageView<const double>::contiguous(img.data(), H, W),
                                ImageView<const double>::contiguous(var.data(), H, W),
                                ImageView<const std::int32_t>::contiguous(mask.data(), H, W),
                                ImageView<const double>::contiguous(k.data(), kh, kw), ctrl,
                                ImageView<double>::contiguous(oi.data(), H, W),
                                ImageView<double>::contiguous(ov.data(), H, W),
                                ImageView<std::int32_t>::contiguous(om.data(), H, W));
    std::ptrdiff_t const cx = 2, cy = 1;
    for (std::ptrdiff_t y = 0; y < H; ++y) {
        for (std::ptrdiff_t x = 0; x < W; ++x) {
            bool const good = y >= cy && y < H - (kh - 1 - cy) && x >= cx && x < W - (kw - 1 - cx);
            if (!good) {
                CHECK(oi[y * W + x] == img[y * W + x]);
                CHECK(ov[y * W + x] == var[y * W + x]);
                CHECK(om[y * W + x] == (mask[y * W + x] | ctrl.edgeBit));
                continue;
            }
            double s = 0, sv = 0;
            std::int32_t m = 0;
            for (std::ptrdiff_t j = 0; j < kh; ++j) {
                for (std::ptrdiff_t i = 0; i < kw; ++i) {
                    std::ptrdiff_t const p = (y + j - cy) * W + (x + i - cx);
                    s += k[j * kw + i] * img[p];
                    sv += k[j * kw + i] * k[j * kw + i] * var[p];
                    if (k[j * kw + i] != 0) m |= mask[p];
                }
            }
            CHECK(oi[y * W + x] == doctest::Approx(s).epsilon(1e-13));
            CHECK(ov[y * W + x] == doctest::Approx(sv).epsilon(1e-13));
            CHECK(om[y * W + x] == m);
        }
    }
}

TEST_CASE("convolveMaskedImage: no-copy edge, normalisation, float32 and errors") {
    std::ptrdiff_t const H = 12, W = 10;
    std::vector<float> img(H * W, 1.0f), var(H * W, 1.0f), oi(H * W), ov(H * W);
    std::vector<double> k(9, 2.0);
    ConvolutionControl ctrl;
    ctrl.doCopyEdge = false;
    ctrl.doNormalize = true;
    auto ii = ImageView<const float>::contiguous(img.data(), H, W);
    auto iv = ImageView<const float>::contiguous(var.data(), H, W);
    convolveMaskedImage<float>(ii, iv, {}, ImageView<const double>::contiguous(k.data(), 3, 3), ctrl,
                               ImageView<float>::contiguous(oi.data(), H, W), ImageView<float>::contiguous(ov.data(), H, W),
                               {});
    CHECK(std::isnan(oi[0]));
    CHECK(std::isinf(ov[0]));
    CHECK(oi[5 * W + 5] == doctest::Approx(1.0));
    CHECK(ov[5 * W + 5] == doctest::Approx(1.0 / 9.0));
    // errors: kernel larger than image, aliasing, zero-sum normalisation
    std::vector<double> big(13 * 3, 1.0);
    CHECK_THROWS_AS(convolveMaskedImage<float>(ii, iv, {}, ImageView<const double>::contiguous(big.data(), 13, 3), ctrl,
                                               ImageView<float>::contiguous(oi.data(), H, W),
                                               ImageView<float>::contiguous(ov.data(), H, W), {}),
                    std::invalid_argument);
    CHECK_THROWS_AS(convolveMaskedImage<float>(ii, iv, {}, ImageView<const double>::contiguous(k.data(), 3, 3), ctrl,
                                               ImageView<float>::contiguous(img.data(), H, W),
                                               ImageView<float>::contiguous(ov.data(), H, W), {}),
                    std::invalid_argument);
    std::vector<double> zero = {1.0, -1.0};
    CHECK_THROWS_AS(convolveMaskedImage<float>(ii, iv, {}, ImageView<const double>::contiguous(zero.data(), 1, 2), ctrl,
                                               ImageView<float>::contiguous(oi.data(), H, W),
                                               ImageView<float>::contiguous(ov.data(), H, W), {}),
                    std::invalid_argument);
}
