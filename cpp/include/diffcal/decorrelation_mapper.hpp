// Native cell mapper of the spatially varying A&L decorrelation (DecorrelateALKernelSpatialTask,
// spec mapreduce-decorrelation.md §2.9). One instance serves one run: it holds read-only views of
// the science and template exposures (same bbox as the difference image being split), the matching
// kernel (a fixed image, or the basis images + spatial coefficients of a LinearCombinationKernel)
// and the options. For every cell (mapreduce.hpp contract) it
//   1. evaluates the kernel, unnormalised, at the centre of the cell's EXPANDED box
//      ((minX + maxX + 1) / 2, (minY + maxY + 1) / 2) in parent coordinates (the reference's
//      default xcen/ycen of the expanded sub-exposure);
//   2. computes the local mean variances svar / tvar: 3-sigma, 3-pass clipped means
//      (statistics.hpp) of the science / template variance planes over the expanded box, pixels
//      with (mask & andMask) != 0 excluded;
//   3. if svar or tvar is NaN and the science or template image is entirely NaN over the expanded
//      box, copies the cell unchanged (the reference's early return); otherwise v / vt must be
//      valid (v > 0, vt >= 0, finite) or std::invalid_argument names the cell;
//   4. decorrelates the expanded box with decorrelation::decorrelateImage (serially) and writes the
//      inner box of the result (image, variance) plus the input mask of the inner box.
// The input difference image is only read; nothing aliases the outputs.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "diffcal/decorrelation.hpp"
#include "diffcal/mapreduce.hpp"
#include "diffcal/statistics.hpp"

namespace diffcal::decorrelation {

enum class SpatialFunction { Polynomial, Chebyshev1 };

/// K(x, y) = sum_i c_i(x, y) B_i with c = C terms(x, y); term order 1, x, y, x^2, x y, y^2, ...
/// (degree by degree, x^d, x^(d-1) y, ..., y^d), as diffcal.kernel.LinearCombinationKernel.
/// A fixed kernel is one basis image with order 0 and coefficient 1.
class SpatialKernel {
public:
    SpatialKernel() = default;
    /// basis: nBasis * height * width doubles ([i][y][x]); coeffs: nBasis * nTerms ([i][t]);
    /// bbox: the kernel's domain (parent, inclusive), used by chebyshev1 for the coordinate map.
    SpatialKernel(std::vector<double> basis, std::ptrdiff_t nBasis, std::ptrdiff_t height, std::ptrdiff_t width,
                  std::vector<double> coeffs, int order, SpatialFunction function, IntBox const& bbox);

    std::ptrdiff_t height() const { return _height; }
    std::ptrdiff_t width() const { return _width; }
    std::ptrdiff_t nBasis() const { return _nBasis; }
    int order() const { return _order; }
    std::ptrdiff_t nTerms() const { return std::ptrdiff_t(_order + 1) * (_order + 2) / 2; }

    /// Spatial terms at (x, y) (nTerms values, documented order).
    std::vector<double> terms(double x, double y) const;
    /// Kernel coefficients c_i(x, y) (nBasis values).
    std::vector<double> parameters(double x, double y) const;
    /// Unnormalised kernel image at (x, y) into `out` (resized to height * width, row-major).
    void evaluate(double x, double y, std::vector<double>& out) const;

private:
    std::vector<double> _basis;
    std::vector<double> _coeffs;
    std::ptrdiff_t _nBasis = 0, _height = 0, _width = 0;
    int _order = 0;
    SpatialFunction _function = SpatialFunction::Polynomial;
    double _xMin = 0, _xMax = 0, _yMin = 0, _yMax = 0;  // chebyshev1: pixel-edge box
};

/// Read-only full-image planes of one exposure (bbox of the difference image).
template <typename T>
struct ExposurePlanes {
    ImageView<const T> image;
    ImageView<const std::int32_t> mask;
    ImageView<const T> variance;
};

struct DecorrelationMapperOptions {
    DecorrelationOptions decorrelation;  // `parallel` is forced to false per cell
    std::int32_t scienceAndMask = 0;     // ignoreMaskPlanes bits in the science mask dictionary
    std::int32_t templateAndMask = 0;    // ... in the template mask dictionary
    double nSigma = 3.0;
    int nIter = 3;
};

/// Per-cell statistics, recorded when a cell has been processed (index = cell index).
struct DecorrelationCellInfo {
    std::int64_t index = 0;
    double xcen = 0.0, ycen = 0.0, svar = 0.0, tvar = 0.0, kSum = 0.0, w1 = 0.0, w2 = 0.0, maxCorr = 0.0;
    Shape2 fftShape;
    bool skipped = false;  // all-NaN early return
};

class DecorrelationCellMapper final : public CellMapperBase<DecorrelationCellMapper> {
public:
    /// The float32 or float64 planes (the other pair left empty): processT<T> requires planes of its T.
    DecorrelationCellMapper(IntBox const& bbox, ExposurePlanes<float> science32, ExposurePlanes<float> template32,
                            ExposurePlanes<double> science64, ExposurePlanes<double> template64,
                            SpatialKernel kernel, std::vector<double> preConvKernel, Shape2 preConvShape,
                            DecorrelationMapperOptions options);

    template <typename T>
    void processT(CellInput<T> const& input, CellOutput<T>& output) const;
    bool overwritesOutput() const override { return true; }
    std::string name() const override { return "DecorrelationCellMapper"; }

    /// Statistics of every cell processed so far, sorted by cell index.
    std::vector<DecorrelationCellInfo> cellInfo() const;

private:
    template <typename T>
    ExposurePlanes<T> const& science() const;
    template <typename T>
    ExposurePlanes<T> const& templ() const;

    IntBox _bbox;
    ExposurePlanes<float> _sci32, _tmpl32;
    ExposurePlanes<double> _sci64, _tmpl64;
    SpatialKernel _kernel;
    std::vector<double> _preConv;
    Shape2 _preConvShape;
    DecorrelationMapperOptions _opt;
    mutable std::mutex _mutex;
    mutable std::vector<DecorrelationCellInfo> _info;  // appended under _mutex
};

}  // namespace diffcal::decorrelation
