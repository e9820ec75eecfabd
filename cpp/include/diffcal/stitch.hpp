// Stitching ("reduce") of per-cell results into one output exposure (spec mapreduce-decorrelation.md §1.7).
//
// A *patch* is a processed cell: image, mask and variance planes over an integer box (parent
// coordinates) inside the output bbox. Patches are combined in patch order (= cell order):
//
//  * valid pixel: !isnan(image * variance), evaluated in the pixel type T (NaN in either plane or
//    Inf * 0 invalidates; Inf * finite non-zero stays valid);
//  * mask: the output mask starts as the input exposure's mask; every patch ORs its WHOLE mask
//    (valid and invalid pixels) into its box;
//  * Copy: output image/variance start as NaN; valid patch pixels are copied (the last patch wins);
//  * Sum: output starts at 0; valid pixels are added;
//  * Average: like Sum, and each pixel is divided by the number N of valid contributions (the
//    variance too is divided by N, not N^2: overlapping patches are treated as the same estimate);
//  * bad pixels: after accumulation every pixel whose image * variance (the sums, cast to T) is NaN
//    gets `badBits` ORed into its mask; for Average, pixels with N == 0 are set to NaN (image and
//    variance) and flagged too. Sum leaves uncovered pixels at 0 and does NOT flag them (as the
//    reference does); Copy leaves them NaN and flags them.
//
// Differences from the reference: Sum and Average accumulate in double (the reference accumulates
// in the pixel type, float32 for ExposureF) and divide in double before the final cast to T; the
// output planes are written exactly once (no clone of the input followed by a reset).
//
// Implementation: each output row is swept into column segments over which the set of covering
// patches is constant. A segment covered by exactly one patch (nearly every pixel of a grid) goes
// straight from the patch to the output, with the single-contribution results of the rules above
// (0.0 + a == a + 0, a / 1 == a, so bit-identical); segments covered by several patches (or none)
// use double accumulators (a few columns wide, as where neighbouring grid cells overlap by one
// column, pixel by pixel in registers, with the same operations in the same order). A row's segments
// are planned once and reused by the following rows until a patch starts or ends. SSE2 kernels
// (x86-64) and scalar ones give bit-identical results.
//
// Parallelism and determinism: the output is split into fixed bands of rows; each band is handled
// by one task, which adds the patches that intersect it in patch order. Every pixel's result is
// therefore the same ordered sum whatever the number of threads or the band split, so results are
// bit-identical for any thread count.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "diffcal/grid.hpp"
#include "diffcal/image_view.hpp"

namespace diffcal {

enum class ReduceOperation { Copy, Sum, Average };

/// "copy" / "sum" / "average" -> enum. Anything else (including the reducer's "none" and
/// "coaddPsf", which build no image) throws std::invalid_argument.
ReduceOperation parseReduceOperation(std::string const& name);

/// Sub-view of `v` starting at row y0, column x0, of `height` x `width` (no bounds check).
template <typename T>
ImageView<T> subView(ImageView<T> const& v, std::int64_t y0, std::int64_t x0, std::int64_t height,
                     std::int64_t width) {
    return ImageView<T>(v.data + y0 * v.rowStride + x0 * v.colStride, height, width, v.rowStride, v.colStride);
}

/// Read-only image/mask/variance planes; element [0][0] is the pixel (bbox.minX, bbox.minY).
template <typename T>
struct ConstPlanes {
    IntBox bbox;
    ImageView<const T> image;
    ImageView<const std::int32_t> mask;
    ImageView<const T> variance;

    /// Throws std::invalid_argument (naming `what`) unless all three views are bbox-shaped.
    void validate(std::string const& what) const;
};

/// Writable image/mask/variance planes; element [0][0] is the pixel (bbox.minX, bbox.minY).
template <typename T>
struct MutablePlanes {
    IntBox bbox;
    ImageView<T> image;
    ImageView<std::int32_t> mask;
    ImageView<T> variance;

    void validate(std::string const& what) const;
    ConstPlanes<T> asConst() const { return ConstPlanes<T>{bbox, image, mask, variance}; }
};

/// What a stitch did, for logging and task metadata. `weight` of a pixel is the number of valid
/// patch contributions it received (for every operation; the reference reports it for Average).
struct StitchStats {
    std::int64_t nPixels = 0;      // output pixels
    std::int64_t nPatches = 0;     // patches stitched
    std::int64_t nFlagged = 0;     // pixels that received badBits
    std::int64_t nZeroWeight = 0;  // pixels with no valid contribution
    std::int32_t maxWeight = 0;
    std::int32_t minWeight = 0;
    std::int64_t sumWeight = 0;    // mean weight = sumWeight / nPixels

    double meanWeight() const { return nPixels > 0 ? static_cast<double>(sumWeight) / static_cast<double>(nPixels) : 0.0; }
    /// Combine with the statistics of a disjoint set of pixels.
    void merge(StitchStats const& other);
};

/// Stitch `patches` (in order) into `output`. `inputMask` (bbox-shaped like the output, or empty
/// for all zeros) is the initial mask. Every output pixel is written exactly once; inputs are not
/// modified. Throws std::invalid_argument (naming the patch index and boxes) for a patch outside
/// the output bbox or with inconsistent shapes.
template <typename T>
StitchStats stitch(std::vector<ConstPlanes<T>> const& patches, ImageView<const std::int32_t> inputMask,
                   MutablePlanes<T> const& output, ReduceOperation op, std::int32_t badBits);

namespace detail {

/// Use the SSE2 kernels (default, on x86-64) or the scalar ones; both give bit-identical results
/// (tests switch this to prove it). useSimd() is false where SSE2 is unavailable.
void setUseSimd(bool enabled);
bool useSimd();

/// Stitches the output rows [y0, y1] (parent coordinates, inclusive) from `patches`, which must be
/// in patch order and contain at least every patch intersecting those rows (others are skipped).
/// The rows are split into fixed bands; runBand(b) for b in [0, nBands()) may run concurrently (each
/// band writes only its own output rows). No validation. Used by stitch() and by the streaming
/// map-and-stitch driver, which runs bands in the same parallel phase as mapping the next cells.
template <typename T>
struct RowScratch;

template <typename T>
class RowStitcher {
public:
    RowStitcher(std::int64_t y0, std::int64_t y1, std::vector<ConstPlanes<T> const*> const& patches,
                ImageView<const std::int32_t> inputMask, MutablePlanes<T> const& output, ReduceOperation op,
                std::int32_t badBits);
    ~RowStitcher();
    RowStitcher(RowStitcher const&) = delete;
    RowStitcher& operator=(RowStitcher const&) = delete;
    std::int64_t nBands() const { return static_cast<std::int64_t>(_buckets.size()); }
    void runBand(std::int64_t band);
    /// Statistics of the bands run so far (combine after all bands are done).
    StitchStats stats() const;

private:
    std::int64_t _y0, _y1;
    ImageView<const std::int32_t> _inputMask;
    MutablePlanes<T> _output;
    ReduceOperation _op;
    std::int32_t _badBits;
    bool _simd;
    std::vector<std::vector<ConstPlanes<T> const*>> _buckets;  // patches intersecting each band
    std::vector<StitchStats> _partial;
    // Row scratch buffers of finished bands, reused by the next ones (at most one per concurrent
    // task is ever allocated: fresh per-band buffers cost page faults on every band).
    std::mutex _scratchLock;
    std::vector<std::unique_ptr<RowScratch<T>>> _idleScratch;
};

/// RowStitcher over [y0, y1] with all bands run by parallelFor.
template <typename T>
StitchStats stitchRows(std::int64_t y0, std::int64_t y1, std::vector<ConstPlanes<T> const*> const& patches,
                       ImageView<const std::int32_t> inputMask, MutablePlanes<T> const& output, ReduceOperation op,
                       std::int32_t badBits);

}  // namespace detail

}  // namespace diffcal
