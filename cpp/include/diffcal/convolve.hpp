// Direct (real-space) convolution of a masked image by a fixed kernel, with the semantics of
// LSST afw's convolve(outMI, inMI, kernel, ConvolutionControl(doNormalize, doCopyEdge)) that the
// decorrelation tests rely on (spec mapreduce-decorrelation.md §3.2, "matched template").
//
// For a kernel K of w x h pixels with centre ctr = ((w - 1) / 2, (h - 1) / 2) (integer division):
//   image     out(x, y) = sum_{i, j} K[j, i] * in(x + i - ctrX, y + j - ctrY)
//   variance  out(x, y) = sum_{i, j} K[j, i]^2 * var(x + i - ctrX, y + j - ctrY)
//   mask      out(x, y) = OR of mask(x + i - ctrX, y + j - ctrY) over the (i, j) with K[j, i] != 0
// i.e. afw's orientation: the kernel image is applied without flipping (a correlation; identical to
// a convolution for kernels symmetric about their centre pixel). An output pixel is "good" when
// the whole kernel footprint is inside the input: ctrX columns on the left (low x), w - ctrX - 1
// on the right, ctrY rows at the bottom (low y) and h - ctrY - 1 at the top form the edge band.
// Edge pixels: doCopyEdge -> image, variance and mask copied from the input with `edgeBit` OR-ed
// into the mask; otherwise image NaN, variance +Inf and mask = `noDataBit` (afw's standard edge
// pixel). Sums are accumulated in double. With doNormalize the kernel is divided by its sum first.
// Rows are processed in parallel (fixed split: results independent of the thread count).
#pragma once

#include <cstdint>

#include "diffcal/image_view.hpp"

namespace diffcal::convolution {

struct ConvolutionControl {
    bool doNormalize = false;
    bool doCopyEdge = true;
    std::int32_t edgeBit = 1 << 4;    // mask value OR-ed into copied edge pixels (EDGE)
    std::int32_t noDataBit = 1 << 8;  // mask value of edge pixels when !doCopyEdge (NO_DATA)
    bool parallel = true;
};

/// Convolve image, variance and mask planes. Outputs must have the input shape and must not
/// overlap the inputs. `inMask`/`outMask` may both be empty views (no mask processing).
/// Throws std::invalid_argument on shape mismatches, aliasing, an empty or non-finite kernel,
/// or a zero kernel sum with doNormalize.
template <typename T>
void convolveMaskedImage(ImageView<const T> inImage, ImageView<const T> inVariance,
                         ImageView<const std::int32_t> inMask, ImageView<const double> kernel,
                         ConvolutionControl const& control, ImageView<T> outImage, ImageView<T> outVariance,
                         ImageView<std::int32_t> outMask);

}  // namespace diffcal::convolution
