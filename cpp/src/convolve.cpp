// Direct convolution of masked images (afw semantics); see convolve.hpp.
#include "diffcal/convolve.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "diffcal/parallel.hpp"

namespace diffcal::convolution {

namespace {

template <typename A, typename B>
bool overlaps(ImageView<A> const& a, ImageView<B> const& b) {
    if (a.empty() || b.empty()) return false;
    auto range = [](auto const& v) {
        char const* p0 = reinterpret_cast<char const*>(v.data);
        char const* p1 = reinterpret_cast<char const*>(&v(v.height - 1, v.width - 1));
        using E = std::remove_const_t<std::remove_reference_t<decltype(*v.data)>>;
        return std::make_pair(std::min(p0, p1), std::max(p0, p1) + sizeof(E));
    };
    auto const ra = range(a);
    auto const rb = range(b);
    return ra.first < rb.second && rb.first < ra.second;
}

}  // namespace

template <typename T>
void convolveMaskedImage(ImageView<const T> inImage, ImageView<const T> inVariance,
                         ImageView<const std::int32_t> inMask, ImageView<const double> kernel,
                         ConvolutionControl const& control, ImageView<T> outImage, ImageView<T> outVariance,
                         ImageView<std::int32_t> outMask) {
    if (inImage.empty()) throw std::invalid_argument("convolve: the input image is empty");
    requireSameShape(inImage, inVariance, "image", "variance");
    requireSameShape(inImage, outImage, "image", "output image");
    requireSameShape(inImage, outVariance, "image", "output variance");
    bool const withMask = !inMask.empty();
    if (withMask != !outMask.empty()) throw std::invalid_argument("convolve: give both masks or neither");
    if (withMask) {
        requireSameShape(inImage, inMask, "image", "mask");
        requireSameShape(inImage, outMask, "image", "output mask");
    }
    if (overlaps(outImage, inImage) || overlaps(outImage, inVariance) || overlaps(outVariance, inImage) ||
        overlaps(outVariance, inVariance) || (withMask && overlaps(outMask, inMask)) || overlaps(outImage, outVariance)) {
        throw std::invalid_argument("convolve: output planes must not overlap the input planes (or each other)");
    }
    if (kernel.empty()) throw std::invalid_argument("convolve: the kernel is empty");
    if (kernel.height > inImage.height || kernel.width > inImage.width) {
        throw std::invalid_argument("convolve: kernel (" + std::to_string(kernel.height) + ", " +
                                    std::to_string(kernel.width) + ") is larger than the image (" +
                                    std::to_string(inImage.height) + ", " + std::to_string(inImage.width) + ")");
    }
    std::ptrdiff_t const kh = kernel.height, kw = kernel.width;
    std::vector<double> k(static_cast<std::size_t>(kh * kw));
    double sum = 0.0;
    for (std::ptrdiff_t j = 0; j < kh; ++j) {
        for (std::ptrdiff_t i = 0; i < kw; ++i) {
            double const v = kernel(j, i);
            if (!std::isfinite(v)) throw std::invalid_argument("convolve: the kernel contains non-finite values");
            k[static_cast<std::size_t>(j * kw + i)] = v;
            sum += v;
        }
    }
    if (control.doNormalize) {
        if (sum == 0.0) throw std::invalid_argument("convolve: cannot normalise a kernel whose sum is 0");
        for (auto& v : k) v /= sum;
    }
    std::vector<double> k2(k.size());
    for (std::size_t i = 0; i < k.size(); ++i) k2[i] = k[i] * k[i];

    std::ptrdiff_t const H = inImage.height, W = inImage.width;
    std::ptrdiff_t const ctrX = (kw - 1) / 2, ctrY = (kh - 1) / 2;
    std::ptrdiff_t const gx0 = ctrX, gx1 = W - (kw - 1 - ctrX);  // good columns [gx0, gx1)
    std::ptrdiff_t const gy0 = ctrY, gy1 = H - (kh - 1 - ctrY);  // good rows [gy0, gy1)
    std::ptrdiff_t const gw = gx1 - gx0;

    auto edgePixel = [&](std::ptrdiff_t y, std::ptrdiff_t x) {
        if (control.doCopyEdge) {
            outImage(y, x) = inImage(y, x);
            outVariance(y, x) = inVariance(y, x);
            if (withMask) outMask(y, x) = inMask(y, x) | control.edgeBit;
        } else {
            outImage(y, x) = std::numeric_limits<T>::quiet_NaN();
            outVariance(y, x) = std::numeric_limits<T>::infinity();
            if (withMask) outMask(y, x) = control.noDataBit;
        }
    };

    std::ptrdiff_t const nTasks = std::min(H, kMaxSplitTasks);
    auto body = [&](std::ptrdiff_t task) {
        std::ptrdiff_t const y0 = H * task / nTasks, y1 = H * (task + 1) / nTasks;
        std::vector<double> rowI(static_cast<std::size_t>(W)), rowV(static_cast<std::size_t>(W));
        std::vector<double> accI(static_cast<std::size_t>(std::max<std::ptrdiff_t>(gw, 0)));
        std::vector<double> accV(accI.size());
        std::vector<std::int32_t> rowM(static_cast<std::size_t>(W)), accM(accI.size());
        for (std::ptrdiff_t y = y0; y < y1; ++y) {
            if (y < gy0 || y >= gy1) {
                for (std::ptrdiff_t x = 0; x < W; ++x) edgePixel(y, x);
                continue;
            }
            std::fill(accI.begin(), accI.end(), 0.0);
            std::fill(accV.begin(), accV.end(), 0.0);
            std::fill(accM.begin(), accM.end(), 0);
            for (std::ptrdiff_t j = 0; j < kh; ++j) {
                std::ptrdiff_t const yy = y + j - ctrY;
                for (std::ptrdiff_t x = 0; x < W; ++x) {
                    rowI[static_cast<std::size_t>(x)] = static_cast<double>(inImage(yy, x));
                    rowV[static_cast<std::size_t>(x)] = static_cast<double>(inVariance(yy, x));
                }
                if (withMask) {
                    for (std::ptrdiff_t x = 0; x < W; ++x) rowM[static_cast<std::size_t>(x)] = inMask(yy, x);
                }
                for (std::ptrdiff_t i = 0; i < kw; ++i) {
                    double const kv = k[static_cast<std::size_t>(j * kw + i)];
                    if (kv == 0.0) continue;
                    double const kv2 = k2[static_cast<std::size_t>(j * kw + i)];
                    // output column gx0 + t reads input column gx0 + t + i - ctrX = t + i
                    double const* src = rowI.data() + i;
                    double const* srcV = rowV.data() + i;
                    for (std::ptrdiff_t t = 0; t < gw; ++t) {
                        accI[static_cast<std::size_t>(t)] += kv * src[t];
                        accV[static_cast<std::size_t>(t)] += kv2 * srcV[t];
                    }
                    if (withMask) {
                        std::int32_t const* srcM = rowM.data() + i;
                        for (std::ptrdiff_t t = 0; t < gw; ++t) accM[static_cast<std::size_t>(t)] |= srcM[t];
                    }
                }
            }
            for (std::ptrdiff_t x = 0; x < gx0; ++x) edgePixel(y, x);
            for (std::ptrdiff_t t = 0; t < gw; ++t) {
                outImage(y, gx0 + t) = static_cast<T>(accI[static_cast<std::size_t>(t)]);
                outVariance(y, gx0 + t) = static_cast<T>(accV[static_cast<std::size_t>(t)]);
                if (withMask) outMask(y, gx0 + t) = accM[static_cast<std::size_t>(t)];
            }
            for (std::ptrdiff_t x = gx1; x < W; ++x) edgePixel(y, x);
        }
    };
    if (!control.parallel || nTasks <= 1 || getNumThreads() <= 1) {
        for (std::ptrdiff_t t = 0; t < nTasks; ++t) body(t);
    } else {
        parallelFor(nTasks, body);
    }
}

template void convolveMaskedImage<float>(ImageView<const float>, ImageView<const float>, ImageView<const std::int32_t>,
                                         ImageView<const double>, ConvolutionControl const&, ImageView<float>,
                                         ImageView<float>, ImageView<std::int32_t>);
template void convolveMaskedImage<double>(ImageView<const double>, ImageView<const double>,
                                          ImageView<const std::int32_t>, ImageView<const double>,
                                          ConvolutionControl const&, ImageView<double>, ImageView<double>,
                                          ImageView<std::int32_t>);

}  // namespace diffcal::convolution
