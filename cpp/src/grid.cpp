#include "diffcal/grid.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace diffcal {

IntBox IntBox::clippedTo(IntBox const& other) const {
    if (empty() || other.empty()) return IntBox();
    IntBox out(std::max(minX, other.minX), std::max(minY, other.minY), std::min(maxX, other.maxX),
               std::min(maxY, other.maxY));
    return out.empty() ? IntBox() : out;
}

std::string IntBox::str() const {
    if (empty()) return "Box2I()";
    std::ostringstream os;
    os << "Box2I(minimum=(" << minX << ", " << minY << "), maximum=(" << maxX << ", " << maxY << "))";
    return os.str();
}

bool operator==(IntBox const& a, IntBox const& b) {
    if (a.empty() && b.empty()) return true;
    return a.minX == b.minX && a.minY == b.minY && a.maxX == b.maxX && a.maxY == b.maxY;
}

AdjustGridOption parseAdjustGridOption(std::string const& name) {
    if (name == "spacing") return AdjustGridOption::Spacing;
    if (name == "size") return AdjustGridOption::Size;
    if (name == "none") return AdjustGridOption::None;
    throw std::invalid_argument("adjustGridOption must be 'spacing', 'size' or 'none', got '" + name + "'");
}

double roundHalfEven(double value) {
    if (!std::isfinite(value)) return value;
    double const lower = std::floor(value);
    double const frac = value - lower;  // exact for |value| < 2^52
    if (frac > 0.5) return lower + 1.0;
    if (frac < 0.5) return lower;
    return std::fmod(lower, 2.0) == 0.0 ? lower : lower + 1.0;
}

std::vector<double> linspace(double start, double stop, std::int64_t num) {
    if (num < 0) throw std::invalid_argument("linspace: negative number of samples");
    std::vector<double> out(static_cast<std::size_t>(num));
    if (num == 0) return out;
    if (num == 1) {
        out[0] = start;
        return out;
    }
    double const delta = stop - start;
    double const step = delta / static_cast<double>(num - 1);
    for (std::int64_t i = 0; i < num; ++i) {
        // numpy: step == 0 -> (i / div) * delta, else i * step; then + start
        out[static_cast<std::size_t>(i)] =
            (step == 0.0 ? (static_cast<double>(i) / static_cast<double>(num - 1)) * delta
                         : static_cast<double>(i) * step) +
            start;
    }
    out.back() = stop;
    return out;
}

namespace {

constexpr double kMaxPixels = 1e15;  // sizes beyond this are certainly a unit mistake
constexpr double kMaxCells = 1e8;    // ~6 GB of boxes: certainly a unit mistake

std::string fmt(double v) {
    std::ostringstream os;
    os.precision(17);
    os << v;
    return os.str();
}

void requirePositiveFinite(double value, char const* name) {
    if (!std::isfinite(value) || !(value > 0.0)) {
        throw std::invalid_argument(std::string(name) + " must be a positive finite number, got " + fmt(value));
    }
    if (value > kMaxPixels) throw std::invalid_argument(std::string(name) + " is unreasonably large: " + fmt(value));
}

void requireNonNegativeFinite(double value, char const* name) {
    if (!std::isfinite(value) || value < 0.0) {
        throw std::invalid_argument(std::string(name) + " must be a finite number >= 0, got " + fmt(value));
    }
    if (value > kMaxPixels) throw std::invalid_argument(std::string(name) + " is unreasonably large: " + fmt(value));
}

/// Regular grid: value (FWHM units or pixels) -> integer pixels by round-half-even.
std::int64_t scaled(double value, GridConfig const& c, char const* name, bool mustBePositive) {
    double const px = roundHalfEven(c.scaleByFwhm ? value * c.fwhm : value);
    if (mustBePositive && px < 1.0) {
        std::string what = c.scaleByFwhm ? std::string(name) + " * fwhm = " + fmt(value) + " * " + fmt(c.fwhm) + " = " +
                                               fmt(value * c.fwhm)
                                         : std::string(name) + " = " + fmt(value);
        throw std::invalid_argument(what + " rounds to 0 pixels; the grid needs at least 1 pixel");
    }
    if (!(px <= kMaxPixels)) {
        throw std::invalid_argument(std::string(name) + " in pixels is unreasonably large: " + fmt(px));
    }
    return static_cast<std::int64_t>(px);
}

/// Explicit centroids: value -> integer pixels by truncation toward zero.
std::int64_t truncated(double value, char const* name, bool mustBePositive) {
    double const px = std::trunc(value);
    if (mustBePositive && px < 1.0) {
        throw std::invalid_argument(std::string(name) + " = " + fmt(value) +
                                    " truncates to 0 pixels (explicit cell centroids use the unscaled, "
                                    "truncated sizes)");
    }
    return static_cast<std::int64_t>(px);
}

/// Floor division for the non-negative sizes used here.
std::int64_t half(std::int64_t v) { return v / 2; }

/// numpy.arange(start, stop, step) for integers (step > 0).
std::vector<double> arangeInt(std::int64_t start, std::int64_t stop, std::int64_t step) {
    std::vector<double> out;
    for (std::int64_t v = start; v < stop; v += step) out.push_back(static_cast<double>(v));
    return out;
}

struct Axis {
    std::vector<double> centres;
    std::int64_t cellSize;
};

Axis regularAxis(std::int64_t extent, std::int64_t cellSize, std::int64_t gridStep, AdjustGridOption option) {
    Axis a;
    switch (option) {
        case AdjustGridOption::Spacing: {
            std::int64_t const n = extent / cellSize + 1;
            a.centres = linspace(static_cast<double>(half(cellSize)), static_cast<double>(extent - half(cellSize)), n);
            a.cellSize = cellSize;
            break;
        }
        case AdjustGridOption::Size:
            a.centres = arangeInt(half(gridStep), extent + half(gridStep), gridStep);
            a.cellSize = gridStep + 1;
            break;
        case AdjustGridOption::None:
            a.centres = arangeInt(half(cellSize), extent + half(cellSize), gridStep);
            a.cellSize = cellSize;
            break;
    }
    return a;
}

/// Make one axis of `box` even-sized inside `bbox`; returns false when impossible.
bool makeEven(IntBox& box, IntBox const& bbox, bool xAxis) {
    auto size = [&](IntBox const& b) { return xAxis ? b.width() : b.height(); };
    if (size(box) % 2 == 0) return true;
    if (xAxis) box.maxX += 1; else box.maxY += 1;
    box = box.clippedTo(bbox);
    if (size(box) % 2 == 0) return true;
    if (xAxis) box.minX -= 1; else box.minY -= 1;
    box = box.clippedTo(bbox);
    return size(box) % 2 == 0;
}

void forceEven(IntBox& box, IntBox const& bbox, std::size_t cell, char const* which) {
    for (bool xAxis : {true, false}) {
        IntBox const before = box;
        if (!makeEven(box, bbox, xAxis)) {
            throw std::runtime_error(std::string("forceEvenSized: cannot make the ") + which + " box of cell " +
                                     std::to_string(cell) + " (" + before.str() + ") even-sized in " +
                                     (xAxis ? "x" : "y") + " inside the exposure bbox " + bbox.str() +
                                     " (the box spans the whole odd-sized " + (xAxis ? "width" : "height") + ")");
        }
    }
}

}  // namespace

GridPixelSizes gridPixelSizes(GridConfig const& c) {
    requirePositiveFinite(c.cellSizeX, "cellSizeX");
    requirePositiveFinite(c.cellSizeY, "cellSizeY");
    requirePositiveFinite(c.gridStepX, "gridStepX");
    requirePositiveFinite(c.gridStepY, "gridStepY");
    requireNonNegativeFinite(c.borderSizeX, "borderSizeX");
    requireNonNegativeFinite(c.borderSizeY, "borderSizeY");
    GridPixelSizes s{};
    if (!c.cellCentroidsX.empty() || !c.cellCentroidsY.empty()) {
        s.cellSizeX = truncated(c.cellSizeX, "cellSizeX", true);
        s.cellSizeY = truncated(c.cellSizeY, "cellSizeY", true);
        s.gridStepX = truncated(c.gridStepX, "gridStepX", false);
        s.gridStepY = truncated(c.gridStepY, "gridStepY", false);
        s.borderSizeX = truncated(c.borderSizeX, "borderSizeX", false);
        s.borderSizeY = truncated(c.borderSizeY, "borderSizeY", false);
        return s;
    }
    if (c.scaleByFwhm) {
        if (!std::isfinite(c.fwhm) || !(c.fwhm > 0.0)) {
            throw std::invalid_argument("scaleByFwhm needs a positive finite PSF FWHM, got " + fmt(c.fwhm));
        }
    }
    bool const stepUsed = c.adjustGridOption != AdjustGridOption::Spacing;
    s.cellSizeX = scaled(c.cellSizeX, c, "cellSizeX", true);
    s.cellSizeY = scaled(c.cellSizeY, c, "cellSizeY", true);
    s.gridStepX = scaled(c.gridStepX, c, "gridStepX", stepUsed);
    s.gridStepY = scaled(c.gridStepY, c, "gridStepY", stepUsed);
    s.borderSizeX = scaled(c.borderSizeX, c, "borderSizeX", false);
    s.borderSizeY = scaled(c.borderSizeY, c, "borderSizeY", false);
    return s;
}

Grid generateGrid(IntBox const& bbox, GridConfig const& c) {
    GridPixelSizes const s = gridPixelSizes(c);
    bool const explicitCentroids = !c.cellCentroidsX.empty() || !c.cellCentroidsY.empty();

    std::vector<double> cxs, cys;  // one entry per cell
    std::int64_t cellX = s.cellSizeX, cellY = s.cellSizeY;
    if (explicitCentroids) {
        if (c.cellCentroidsX.size() != c.cellCentroidsY.size()) {
            throw std::invalid_argument("cellCentroidsX and cellCentroidsY must have the same length, got " +
                                        std::to_string(c.cellCentroidsX.size()) + " and " +
                                        std::to_string(c.cellCentroidsY.size()));
        }
        for (std::size_t i = 0; i < c.cellCentroidsX.size(); ++i) {
            double const x = c.cellCentroidsX[i], y = c.cellCentroidsY[i];
            if (!std::isfinite(x) || !std::isfinite(y) || std::fabs(x) > kMaxPixels || std::fabs(y) > kMaxPixels) {
                throw std::invalid_argument("cell centroid " + std::to_string(i) + " (" + fmt(x) + ", " + fmt(y) +
                                            ") is not a finite pixel position");
            }
        }
        cxs = c.cellCentroidsX;
        cys = c.cellCentroidsY;
    } else {
        Axis const ax = regularAxis(bbox.width(), s.cellSizeX, s.gridStepX, c.adjustGridOption);
        Axis const ay = regularAxis(bbox.height(), s.cellSizeY, s.gridStepY, c.adjustGridOption);
        cellX = ax.cellSize;
        cellY = ay.cellSize;
        double const nCells = static_cast<double>(ax.centres.size()) * static_cast<double>(ay.centres.size());
        if (nCells > kMaxCells) {
            throw std::invalid_argument("the grid would have " + fmt(nCells) + " cells (more than " + fmt(kMaxCells) +
                                        "); the cell size or grid step is far too small for this image");
        }
        cxs.reserve(ax.centres.size() * ay.centres.size());
        cys.reserve(ax.centres.size() * ay.centres.size());
        for (double x : ax.centres) {      // x outer
            for (double y : ay.centres) {  // y inner
                cxs.push_back(x);
                cys.push_back(y);
            }
        }
    }

    IntBox const innerTemplate = IntBox::fromSize(bbox.minX, bbox.minY, cellX, cellY);
    IntBox const expandedTemplate = innerTemplate.grownBy(s.borderSizeX, s.borderSizeY);

    Grid grid;
    grid.inner.reserve(cxs.size());
    grid.expanded.reserve(cxs.size());
    for (std::size_t i = 0; i < cxs.size(); ++i) {
        auto const xoff = static_cast<std::int64_t>(std::floor(cxs[i])) - half(cellX);
        auto const yoff = static_cast<std::int64_t>(std::floor(cys[i])) - half(cellY);
        IntBox const innerUnclipped = innerTemplate.shiftedBy(xoff, yoff);
        IntBox bb0 = innerUnclipped.clippedTo(bbox);
        IntBox bb1 = expandedTemplate.shiftedBy(xoff, yoff).clippedTo(bbox);
        if (explicitCentroids && bb0.empty()) {
            throw std::invalid_argument("cell centroid " + std::to_string(i) + " (" + fmt(cxs[i]) + ", " +
                                        fmt(cys[i]) + ") gives the cell " + innerUnclipped.str() +
                                        ", which does not overlap the exposure bbox " + bbox.str() +
                                        " (centroids are offsets from the bbox origin, not parent coordinates)");
        }
        if (c.forceEvenSized) {
            forceEven(bb0, bbox, i, "inner");
            forceEven(bb1, bbox, i, "expanded");
        }
        if (bb0.area() > 1 && bb1.area() > 1) {
            grid.inner.push_back(bb0);
            grid.expanded.push_back(bb1);
        }
    }
    return grid;
}

}  // namespace diffcal
