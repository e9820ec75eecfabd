// Alard-Lupton kernel decorrelation of a difference image, non-spatial (one kernel per image)
// - spec mapreduce-decorrelation.md §2.4-2.8. The spatially varying path calls
// decorrelateImage once per cell (with `parallel = false` from inside its own parallel loop).
//
// Geometry and conventions
//   * Arrays are row-major [y, x]; "shape" = (rows, cols).
//   * FFT grid (computeCommonShape, §2.4): per axis, the two largest sizes N1 >= N2 among the
//     given shapes, N = N1 + N2 - 1 rounded up to even. "Exact" mode uses it (reproduces the
//     reference); "fast" mode rounds each axis up to fft::cheapestFastSize (the even 2/3/5/7-smooth
//     size with the lowest modelled transform cost, e.g. 252 -> 256).
//   * Origin-centred padding (padCenterOrigin, §2.4): along an axis of input length n and target
//     length M, input index n/2 (integer division) goes to index 0, the following elements follow,
//     and the first n/2 wrap to the end. unpadCenterOrigin is its inverse crop.
//   * Filters (§2.5, §2.6) with K = FFT(pad(kappa)), kSum = sum(kappa), Phat = FFT(pad(P)):
//       diffim:  corr = sqrt((v + vt kSum^2) / (v + vt |K|^2)),   cn = corr,            cr = K corr
//       score:   corr = (v + vt kSum^2) / (v + vt |K|^2 / |Phat|^2)  with |Phat|^2 floored at
//                1000 * DBL_MIN,                                   cn = conj(Phat) corr, cr = K corr
//     corr is real and even, so the image is filtered with real-to-complex transforms.
//   * Corrected image (§2.7): NaN and +-Inf pixels are replaced by the mean of the finite pixels,
//     the image is filtered (zero padding to the FFT grid), and NaN / +Inf are restored at the
//     original NaN / Inf positions (the sign of -Inf is lost, as in the reference). Because the
//     pad's roll commutes with circular convolution and the crop undoes it, the image is placed
//     at the grid origin without rolling (mathematically identical result).
//   * Variance (§2.8): estimate Vout = w1 V + w2 Vt with w1 = sum|cn|^2 / N, w2 = sum|cr|^2 / N
//     over the full grid (N pixels); or full propagation Vout = (V ⊛ Dn^2) + (Vt ⊛ Dr^2) with
//     D = IFFT(c), NaN/Inf of each plane replaced by its mean (v, vt) before and restored after.
//     When templateMatched is false the variance is divided by kSum^2.
//   * All arithmetic is double precision; sums are formed per row and added in row order, so
//     results are bit-identical for any thread count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "diffcal/image_view.hpp"

namespace diffcal::decorrelation {

struct Shape2 {
    std::ptrdiff_t rows = 0;
    std::ptrdiff_t cols = 0;
    bool operator==(Shape2 const& o) const { return rows == o.rows && cols == o.cols; }
};

enum class FftShapeMode { Exact, Fast };

/// Reference FFT grid for the given shapes (at least one, all positive). §2.4.
Shape2 computeCommonShape(std::vector<Shape2> const& shapes);

/// The grid actually used: exact, or each axis rounded up to fft::cheapestFastSize.
Shape2 fftShape(Shape2 exact, FftShapeMode mode);

/// Forward origin-centred pad of `in` into `out` (every element of `out` is written).
void padCenterOrigin(ImageView<const double> in, ImageView<double> out);

/// Inverse of padCenterOrigin: crop `in` (the padded array) back into `out` (original shape).
void unpadCenterOrigin(ImageView<const double> in, ImageView<double> out);

/// The frequency-space correction for one kernel on one FFT grid.
struct CorrectionFilter {
    Shape2 shape;              // FFT grid
    std::ptrdiff_t spectrumCols = 0;  // shape.cols / 2 + 1
    bool score = false;        // true: score (pre-convolution) correction, §2.6
    std::vector<double> corr;  // real filter on the half spectrum, rows x spectrumCols
    double kSum = 0.0;         // sum of the matching kernel image
    double w1 = 0.0;           // sum |cn|^2 / N  (weight of V in the estimated variance)
    double w2 = 0.0;           // sum |cr|^2 / N  (weight of Vt)
    double maxCorr = 0.0;      // largest filter value (the maximum noise correction factor)
};

/// Compute the filter of §2.5 (preConvKernel empty) or §2.6 (preConvKernel given, unit sum).
/// Throws std::invalid_argument if a kernel is empty or larger than the grid, or v, vt are not
/// finite / v <= 0 / vt < 0 (vt = 0, a noiseless template, gives the identity filter).
CorrectionFilter computeCorrectionFilter(ImageView<const double> kernel, ImageView<const double> preConvKernel,
                                         double v, double vt, Shape2 shape, bool parallel = true);

struct DecorrelationOptions {
    FftShapeMode shapeMode = FftShapeMode::Exact;
    bool completeVarPlanePropagation = false;  // full propagation instead of the w1/w2 estimate
    bool templateMatched = true;               // false: variance divided by kSum^2
    bool parallel = true;                      // false: run serially (e.g. one call per cell)
    /// Extra shapes taking part in computeCommonShape (the PSF image used for sizing in the
    /// reference); shapes with a zero dimension are ignored.
    std::vector<Shape2> extraShapes;
};

template <typename T>
struct DecorrelationInputs {
    ImageView<const T> image;             // difference image plane
    ImageView<const T> variance;          // V: variance plane of the unconvolved image
    ImageView<const T> templateVariance;  // Vt: variance plane of the convolved image (pre-convolution)
    ImageView<const double> kernel;       // kappa: matching kernel image, unnormalised
    ImageView<const double> preConvKernel;  // P (unit sum) for the score correction, or empty
    double v = 0.0;                       // mean variance of the unconvolved image
    double vt = 0.0;                      // mean variance of the convolved image
};

struct DecorrelationResult {
    Shape2 fftShape;
    double kSum = 0.0;
    double w1 = 0.0;
    double w2 = 0.0;
    double maxCorr = 0.0;
    double fillValue = 0.0;             // mean of the finite image pixels (used for NaN/Inf)
    std::int64_t nNonFinite = 0;        // number of NaN/Inf image pixels
};

/// Decorrelate one image. Writes the corrected image into `outImage` and the new variance into
/// `outVariance`: by default (origin -1, -1) the whole image (same shape as the inputs); with an output
/// origin (outRow0, outCol0) >= 0 the outputs receive the window of their own shape starting there (the
/// spatial decorrelation keeps only a cell's inner box: the rest is never computed). A whole-image
/// `outImage` may alias `inputs.image`; `outVariance` may alias the diffim's own variance plane, but
/// neither output may alias V or Vt.
/// Allocates (besides small kernel buffers) the filter (rows x cols/2+1 doubles) and one rfft
/// buffer of the grid, plus two more rfft buffers for complete variance propagation.
/// Thread-safe; throws std::invalid_argument on bad shapes/values.
template <typename T>
DecorrelationResult decorrelateImage(DecorrelationInputs<T> const& inputs, DecorrelationOptions const& options,
                                     ImageView<T> outImage, ImageView<T> outVariance, std::ptrdiff_t outRow0 = -1,
                                     std::ptrdiff_t outCol0 = -1);

}  // namespace diffcal::decorrelation
