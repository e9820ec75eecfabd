// Cell grid of the ImageMapReduce framework (spec mapreduce-decorrelation.md §1.5).
//
// An exposure of bounding box `bbox` is covered by cells. Every cell has an *inner* box (the
// reference's boxes0: the region whose processed pixels are stitched back) and an *expanded* box
// (boxes1: the inner box grown by a border, the region a mapper may read, e.g. for a convolution).
// Both are inclusive integer boxes in parent pixel coordinates, clipped to `bbox`.
//
// Algorithm (exactly the reference's):
//
//  A. Regular grid (no explicit centroids):
//     1. Each of cellSize, gridStep and borderSize (x and y) becomes an integer number of pixels:
//        roundHalfEven(value * fwhm) when scaleByFwhm, else roundHalfEven(value). The FWHM (pixels)
//        is supplied by the caller (the Python layer computes it from the PSF's determinant radius
//        at its average position); it is only read when scaleByFwhm is true.
//     2. Cell centre coordinates along x (likewise y), relative to the bbox origin:
//        * Spacing: n = W / cellSize + 1 (integer division); centres = numpy.linspace(cellSize / 2,
//          W - cellSize / 2, n) (evaluated exactly as numpy does: start + i * step, last = stop);
//          gridStep is not used.
//        * Size: cellSize := gridStep; centres = gridStep/2, gridStep/2 + gridStep, ... < W + gridStep/2;
//          then cellSize := gridStep + 1.
//        * None: centres = cellSize/2, cellSize/2 + gridStep, ... < W + cellSize/2; cellSize kept.
//     3. Centroids are the Cartesian product with x as the OUTER loop and y as the inner loop.
//  B. Explicit centroids (cellCentroidsX/Y non-empty): pairs (cx[i], cy[i]); cellSize and
//     borderSize are used unscaled and truncated toward zero (the reference's integer Extent).
//  C. For every centroid (cx, cy): xoff = floor(cx) - cellSizeX / 2 (integer), likewise y;
//     inner = [bbox.minX + xoff, + cellSizeX - 1] x [...] clipped to bbox;
//     expanded = the unclipped inner box grown by (borderSizeX, borderSizeY), clipped to bbox.
//     With forceEvenSized each box is made even-sized independently (odd width: extend 1 px to the
//     right and clip; still odd: extend 1 px to the left and clip; still odd: std::runtime_error;
//     same for the height, up first, then down). A cell is kept only if both boxes have area > 1.
//
// Deliberate differences from the reference (documented in diffcal.mapreduce):
//  * an explicit centroid whose inner box does not intersect bbox at all is an error
//    (std::invalid_argument naming it) instead of being dropped silently;
//  * a size that rounds (or truncates) to 0 pixels is an error instead of a ZeroDivisionError or
//    an empty grid; in Spacing mode gridStep is not needed and never rounded-to-zero-checked.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace diffcal {

/// Inclusive integer box in parent pixel coordinates (lsst.geom.Box2I semantics). Empty when
/// maxX < minX or maxY < minY.
struct IntBox {
    std::int64_t minX = 0;
    std::int64_t minY = 0;
    std::int64_t maxX = -1;
    std::int64_t maxY = -1;

    IntBox() = default;
    IntBox(std::int64_t minX_, std::int64_t minY_, std::int64_t maxX_, std::int64_t maxY_)
        : minX(minX_), minY(minY_), maxX(maxX_), maxY(maxY_) {}

    /// Box of `width` x `height` pixels starting at (x0, y0).
    static IntBox fromSize(std::int64_t x0, std::int64_t y0, std::int64_t width, std::int64_t height) {
        return IntBox(x0, y0, x0 + width - 1, y0 + height - 1);
    }

    bool empty() const { return maxX < minX || maxY < minY; }
    std::int64_t width() const { return empty() ? 0 : maxX - minX + 1; }
    std::int64_t height() const { return empty() ? 0 : maxY - minY + 1; }
    std::int64_t area() const { return width() * height(); }

    /// True when `other` lies entirely inside this box (an empty box is inside anything).
    bool contains(IntBox const& other) const {
        if (other.empty()) return true;
        if (empty()) return false;
        return minX <= other.minX && other.maxX <= maxX && minY <= other.minY && other.maxY <= maxY;
    }
    /// Intersection (an empty box when they do not overlap).
    IntBox clippedTo(IntBox const& other) const;
    /// Grown by (dx, dy) on every side.
    IntBox grownBy(std::int64_t dx, std::int64_t dy) const { return IntBox(minX - dx, minY - dy, maxX + dx, maxY + dy); }
    /// Moved by (dx, dy).
    IntBox shiftedBy(std::int64_t dx, std::int64_t dy) const { return IntBox(minX + dx, minY + dy, maxX + dx, maxY + dy); }

    /// "Box2I(minimum=(x0, y0), maximum=(x1, y1))" (the Python repr), or "Box2I()" when empty.
    std::string str() const;
};

bool operator==(IntBox const& a, IntBox const& b);
inline bool operator!=(IntBox const& a, IntBox const& b) { return !(a == b); }

enum class AdjustGridOption { Spacing, Size, None };

/// "spacing" / "size" / "none" -> enum; std::invalid_argument otherwise.
AdjustGridOption parseAdjustGridOption(std::string const& name);

/// Parameters of generateGrid; field names and defaults are those of ImageMapReduceConfig.
struct GridConfig {
    double cellSizeX = 10.0;
    double cellSizeY = 10.0;
    double gridStepX = 10.0;
    double gridStepY = 10.0;
    double borderSizeX = 5.0;
    double borderSizeY = 5.0;
    AdjustGridOption adjustGridOption = AdjustGridOption::Spacing;
    bool scaleByFwhm = true;
    /// PSF FWHM in pixels; read only when scaleByFwhm is true and no centroids are given.
    double fwhm = 0.0;
    /// Explicit cell centres (pixels from the bbox origin). Used when non-empty; same length.
    std::vector<double> cellCentroidsX;
    std::vector<double> cellCentroidsY;
    bool forceEvenSized = false;
};

/// The cells: inner[i] and expanded[i] belong to cell i (grid order, see the header comment).
struct Grid {
    std::vector<IntBox> inner;     // boxes0
    std::vector<IntBox> expanded;  // boxes1
};

/// Round to the nearest integer, ties to even (numpy.rint), independent of the FP environment.
double roundHalfEven(double value);

/// numpy.linspace(start, stop, num) with endpoint=True, element for element.
std::vector<double> linspace(double start, double stop, std::int64_t num);

/// The integer pixel sizes the regular grid uses (after scaling and rounding), exposed for tests
/// and logging. For explicit centroids these are the truncated sizes.
struct GridPixelSizes {
    std::int64_t cellSizeX, cellSizeY, gridStepX, gridStepY, borderSizeX, borderSizeY;
};
GridPixelSizes gridPixelSizes(GridConfig const& config);

/// Generate the cells covering `bbox`. Throws std::invalid_argument for bad parameters (non-finite
/// or non-positive sizes, a size rounding to 0 px, a bad FWHM, centroid lists of different lengths,
/// a non-finite centroid or one whose cell misses bbox) and std::runtime_error when forceEvenSized
/// cannot make a box even-sized inside bbox.
Grid generateGrid(IntBox const& bbox, GridConfig const& config);

}  // namespace diffcal
