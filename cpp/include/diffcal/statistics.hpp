// Sigma-clipped statistics with the semantics of the reference's MEANCLIP / VARIANCECLIP
// (afw Statistics as used by ip_diffim's decorrelation; spec mapreduce-decorrelation.md §2.2).
//
//  1. Candidates: finite values whose mask bits do not intersect `andMask`.
//  2. Median and quartiles of the candidates, linearly interpolated at index f*(n-1)
//     (f = 0.25, 0.5, 0.75); IQR = Q3 - Q1.
//  3. Pass 0: centre = median, half-width = nSigma * 0.741301109252802 * IQR.
//     Pass i > 0: centre = mean of pass i-1, half-width = nSigma * sqrt(variance of pass i-1).
//     A candidate is kept when |v - centre| <= half-width (inclusive).
//  4. Each pass: mean and unbiased (n - 1) variance of the kept values, accumulated in double
//     as deviations from the centre. The result is that of the last pass. An empty pass gives
//     NaN mean and variance; a single kept value gives a NaN variance.
//
// Results are bit-identical for any thread count (fixed work split, ordered reductions).
#pragma once

#include <cstdint>

#include "diffcal/image_view.hpp"

namespace diffcal {

struct ClipControl {
    double nSigma = 3.0;      // clip half-width in units of the standard deviation
    int nIter = 3;            // number of clipping passes (>= 1)
    std::int32_t andMask = 0; // a candidate must have (mask & andMask) == 0
};

struct ClippedStatistics {
    double mean = 0.0;              // MEANCLIP: mean of the last pass
    double variance = 0.0;          // VARIANCECLIP: unbiased variance of the last pass
    double median = 0.0;            // median of all candidates
    double iqr = 0.0;               // interquartile range of all candidates
    std::int64_t nCandidates = 0;   // finite, unmasked values
    std::int64_t nUsed = 0;         // values kept by the last pass
};

/// Clipped statistics of `values`; `mask` may be an empty view (data == nullptr) for no mask,
/// otherwise it must have the same shape. Throws std::invalid_argument on bad control values
/// or a shape mismatch.
template <typename T>
ClippedStatistics clippedStatistics(ImageView<const T> values, ImageView<const std::int32_t> mask,
                                    ClipControl const& control);

/// Value at fractional rank `fraction` * (n - 1) of the candidates, linearly interpolated
/// (numpy's default "linear" percentile method). NaN when there are no candidates.
template <typename T>
double candidateQuantile(ImageView<const T> values, ImageView<const std::int32_t> mask, std::int32_t andMask,
                         double fraction);

}  // namespace diffcal
