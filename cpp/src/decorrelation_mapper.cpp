// Native cell mapper of the spatially varying decorrelation; see decorrelation_mapper.hpp.
#include "diffcal/decorrelation_mapper.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace diffcal::decorrelation {

namespace {

std::string boxStr(IntBox const& b) {
    return "(" + std::to_string(b.minX) + ", " + std::to_string(b.minY) + ") - (" + std::to_string(b.maxX) + ", " +
           std::to_string(b.maxY) + ")";
}

template <typename V>
bool allNaN(ImageView<V> const& v) {
    for (std::ptrdiff_t y = 0; y < v.height; ++y) {
        for (std::ptrdiff_t x = 0; x < v.width; ++x) {
            if (!std::isnan(static_cast<double>(v(y, x)))) return false;
        }
    }
    return true;
}

template <typename T>
void requirePlanes(ExposurePlanes<T> const& p, IntBox const& bbox, char const* what) {
    if (p.image.data == nullptr || p.variance.data == nullptr || p.mask.data == nullptr) {
        throw std::invalid_argument(std::string("DecorrelationCellMapper: the ") + what +
                                    " planes of this pixel type were not given (dtype mismatch with the difference image)");
    }
    auto check = [&](std::ptrdiff_t h, std::ptrdiff_t w, char const* plane) {
        if (h != bbox.height() || w != bbox.width()) {
            throw std::invalid_argument(std::string("DecorrelationCellMapper: ") + what + " " + plane + " shape (" +
                                        std::to_string(h) + ", " + std::to_string(w) +
                                        ") differs from the difference image shape (" + std::to_string(bbox.height()) +
                                        ", " + std::to_string(bbox.width()) + ")");
        }
    };
    check(p.image.height, p.image.width, "image");
    check(p.mask.height, p.mask.width, "mask");
    check(p.variance.height, p.variance.width, "variance");
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// SpatialKernel
// ------------------------------------------------------------------------------------------------

SpatialKernel::SpatialKernel(std::vector<double> basis, std::ptrdiff_t nBasis, std::ptrdiff_t height,
                             std::ptrdiff_t width, std::vector<double> coeffs, int order, SpatialFunction function,
                             IntBox const& bbox)
    : _basis(std::move(basis)),
      _coeffs(std::move(coeffs)),
      _nBasis(nBasis),
      _height(height),
      _width(width),
      _order(order),
      _function(function) {
    if (nBasis < 1 || height < 1 || width < 1) {
        throw std::invalid_argument("SpatialKernel: need at least one non-empty basis image");
    }
    if (order < 0) throw std::invalid_argument("SpatialKernel: spatial order must be >= 0");
    if (std::ptrdiff_t(_basis.size()) != nBasis * height * width) {
        throw std::invalid_argument("SpatialKernel: basis has " + std::to_string(_basis.size()) + " values, expected " +
                                    std::to_string(nBasis * height * width));
    }
    if (std::ptrdiff_t(_coeffs.size()) != nBasis * nTerms()) {
        throw std::invalid_argument("SpatialKernel: coefficients have " + std::to_string(_coeffs.size()) +
                                    " values, expected nBasis * nTerms = " + std::to_string(nBasis * nTerms()));
    }
    for (double v : _basis) {
        if (!std::isfinite(v)) throw std::invalid_argument("SpatialKernel: basis images contain non-finite values");
    }
    for (double v : _coeffs) {
        if (!std::isfinite(v)) throw std::invalid_argument("SpatialKernel: coefficients contain non-finite values");
    }
    if (function == SpatialFunction::Chebyshev1) {
        if (bbox.empty()) throw std::invalid_argument("SpatialKernel: chebyshev1 needs a non-empty bbox");
        _xMin = double(bbox.minX) - 0.5;
        _xMax = double(bbox.maxX) + 0.5;
        _yMin = double(bbox.minY) - 0.5;
        _yMax = double(bbox.maxY) + 0.5;
    }
}

std::vector<double> SpatialKernel::terms(double x, double y) const {
    int const n = _order;
    std::vector<double> px(std::size_t(n + 1)), py(std::size_t(n + 1));
    if (_function == SpatialFunction::Polynomial) {
        for (int k = 0; k <= n; ++k) {
            px[std::size_t(k)] = std::pow(x, double(k));
            py[std::size_t(k)] = std::pow(y, double(k));
        }
    } else {
        double const tx = (2.0 * x - (_xMin + _xMax)) / (_xMax - _xMin);
        double const ty = (2.0 * y - (_yMin + _yMax)) / (_yMax - _yMin);
        px[0] = py[0] = 1.0;
        if (n >= 1) {
            px[1] = tx;
            py[1] = ty;
        }
        for (int k = 2; k <= n; ++k) {
            px[std::size_t(k)] = 2.0 * tx * px[std::size_t(k - 1)] - px[std::size_t(k - 2)];
            py[std::size_t(k)] = 2.0 * ty * py[std::size_t(k - 1)] - py[std::size_t(k - 2)];
        }
    }
    std::vector<double> t;
    t.reserve(std::size_t(nTerms()));
    for (int d = 0; d <= n; ++d) {
        for (int k = 0; k <= d; ++k) t.push_back(px[std::size_t(d - k)] * py[std::size_t(k)]);
    }
    return t;
}

std::vector<double> SpatialKernel::parameters(double x, double y) const {
    std::vector<double> const t = terms(x, y);
    std::ptrdiff_t const nt = nTerms();
    std::vector<double> c(std::size_t(_nBasis), 0.0);
    for (std::ptrdiff_t i = 0; i < _nBasis; ++i) {
        double s = 0.0;
        for (std::ptrdiff_t k = 0; k < nt; ++k) s += _coeffs[std::size_t(i * nt + k)] * t[std::size_t(k)];
        c[std::size_t(i)] = s;
    }
    return c;
}

void SpatialKernel::evaluate(double x, double y, std::vector<double>& out) const {
    std::ptrdiff_t const np = _height * _width;
    out.assign(std::size_t(np), 0.0);
    if (_nBasis == 1 && _order == 0 && _coeffs[0] == 1.0) {  // a fixed kernel: exact copy
        std::copy(_basis.begin(), _basis.end(), out.begin());
        return;
    }
    std::vector<double> const c = parameters(x, y);
    for (std::ptrdiff_t i = 0; i < _nBasis; ++i) {
        double const ci = c[std::size_t(i)];
        double const* b = _basis.data() + i * np;
        for (std::ptrdiff_t p = 0; p < np; ++p) out[std::size_t(p)] += ci * b[p];
    }
}

// ------------------------------------------------------------------------------------------------
// DecorrelationCellMapper
// ------------------------------------------------------------------------------------------------

DecorrelationCellMapper::DecorrelationCellMapper(IntBox const& bbox, ExposurePlanes<float> science32,
                                                 ExposurePlanes<float> template32, ExposurePlanes<double> science64,
                                                 ExposurePlanes<double> template64, SpatialKernel kernel,
                                                 std::vector<double> preConvKernel, Shape2 preConvShape,
                                                 DecorrelationMapperOptions options)
    : _bbox(bbox),
      _sci32(science32),
      _tmpl32(template32),
      _sci64(science64),
      _tmpl64(template64),
      _kernel(std::move(kernel)),
      _preConv(std::move(preConvKernel)),
      _preConvShape(preConvShape),
      _opt(std::move(options)) {
    if (bbox.empty()) throw std::invalid_argument("DecorrelationCellMapper: empty bbox");
    if (_sci32.image.data != nullptr) {
        requirePlanes(_sci32, bbox, "science");
        requirePlanes(_tmpl32, bbox, "template");
    } else {
        requirePlanes(_sci64, bbox, "science");
        requirePlanes(_tmpl64, bbox, "template");
    }
    if (!_preConv.empty() && std::ptrdiff_t(_preConv.size()) != _preConvShape.rows * _preConvShape.cols) {
        throw std::invalid_argument("DecorrelationCellMapper: preConvKernel size does not match its shape");
    }
    if (_kernel.nBasis() < 1) throw std::invalid_argument("DecorrelationCellMapper: no kernel");
    _opt.decorrelation.parallel = false;
}

template <>
ExposurePlanes<float> const& DecorrelationCellMapper::science<float>() const { return _sci32; }
template <>
ExposurePlanes<double> const& DecorrelationCellMapper::science<double>() const { return _sci64; }
template <>
ExposurePlanes<float> const& DecorrelationCellMapper::templ<float>() const { return _tmpl32; }
template <>
ExposurePlanes<double> const& DecorrelationCellMapper::templ<double>() const { return _tmpl64; }

std::vector<DecorrelationCellInfo> DecorrelationCellMapper::cellInfo() const {
    std::vector<DecorrelationCellInfo> out;
    {
        std::lock_guard<std::mutex> lock(_mutex);
        out = _info;
    }
    std::stable_sort(out.begin(), out.end(),
                     [](DecorrelationCellInfo const& a, DecorrelationCellInfo const& b) { return a.index < b.index; });
    return out;
}

template <typename T>
void DecorrelationCellMapper::processT(CellInput<T> const& in, CellOutput<T>& out) const {
    ExposurePlanes<T> const& sci = science<T>();
    ExposurePlanes<T> const& tmp = templ<T>();
    if (sci.image.data == nullptr) {
        throw std::invalid_argument("DecorrelationCellMapper: the science/template planes have a different dtype "
                                    "than the difference image");
    }
    if (!(in.fullBBox.minX == _bbox.minX && in.fullBBox.minY == _bbox.minY && in.fullBBox.maxX == _bbox.maxX &&
          in.fullBBox.maxY == _bbox.maxY)) {
        throw std::invalid_argument("DecorrelationCellMapper: the exposure bbox " + boxStr(in.fullBBox) +
                                    " differs from the science/template bbox " + boxStr(_bbox));
    }
    IntBox const& eb = in.expandedBox;
    std::int64_t const oy = eb.minY - _bbox.minY, ox = eb.minX - _bbox.minX;
    std::int64_t const h = eb.height(), w = eb.width();
    auto cut = [&](auto const& v) { return subView(v, oy, ox, h, w); };

    DecorrelationCellInfo info;
    info.index = in.index;
    // 1. kernel at the expanded-box centre ((begin + end) / 2, parent coordinates)
    info.xcen = 0.5 * double(eb.minX + eb.maxX + 1);
    info.ycen = 0.5 * double(eb.minY + eb.maxY + 1);
    std::vector<double> kappa;
    _kernel.evaluate(info.xcen, info.ycen, kappa);
    auto const kView = ImageView<const double>::contiguous(kappa.data(), _kernel.height(), _kernel.width());

    // 2. local mean variances
    ClipControl sc{_opt.nSigma, _opt.nIter, _opt.scienceAndMask};
    ClipControl tc{_opt.nSigma, _opt.nIter, _opt.templateAndMask};
    info.svar = clippedStatistics<T>(cut(sci.variance), cut(sci.mask), sc).mean;
    info.tvar = clippedStatistics<T>(cut(tmp.variance), cut(tmp.mask), tc).mean;

    auto copyInner = [&](ImageView<const T> srcImg, ImageView<const T> srcVar) {
        std::int64_t const iy = in.innerOffsetY(), ix = in.innerOffsetX();
        auto const m = in.innerMask();
        for (std::ptrdiff_t y = 0; y < out.image.height; ++y) {
            for (std::ptrdiff_t x = 0; x < out.image.width; ++x) {
                out.image(y, x) = srcImg(y + iy, x + ix);
                out.variance(y, x) = srcVar(y + iy, x + ix);
                out.mask(y, x) = m(y, x);
            }
        }
    };
    auto record = [&]() {
        std::lock_guard<std::mutex> lock(_mutex);
        _info.push_back(info);
    };

    // 3. all-NaN early return (reference §2.3 step 5)
    if (std::isnan(info.svar) || std::isnan(info.tvar)) {
        if (allNaN(cut(sci.image)) || allNaN(cut(tmp.image))) {
            info.skipped = true;
            copyInner(in.image, in.variance);
            record();
            return;
        }
    }
    bool const tm = _opt.decorrelation.templateMatched;
    double const v = tm ? info.svar : info.tvar;
    double const vt = tm ? info.tvar : info.svar;
    char const* vName = tm ? "science (svar)" : "template (tvar)";
    char const* vtName = tm ? "template (tvar)" : "science (svar)";
    std::string const where = "cell " + std::to_string(in.index) + " (inner box " + boxStr(in.innerBox) +
                              ", expanded box " + boxStr(eb) + "): ";
    if (!(std::isfinite(v) && v > 0.0)) {
        throw std::invalid_argument(where + "the mean variance of the " + vName +
                                    " image must be positive and finite, got " + std::to_string(v) +
                                    " (all variance pixels masked or NaN?)");
    }
    if (!(std::isfinite(vt) && vt >= 0.0)) {
        throw std::invalid_argument(where + "the mean variance of the " + vtName +
                                    " image must be non-negative and finite, got " + std::to_string(vt));
    }
    if (kView.height > h || kView.width > w) {
        throw std::invalid_argument(where + "psfMatchingKernel image shape (" + std::to_string(kView.height) + ", " +
                                    std::to_string(kView.width) + ") is larger than the expanded cell (" +
                                    std::to_string(h) + ", " + std::to_string(w) + ")");
    }

    // 4. decorrelate the expanded box
    DecorrelationInputs<T> di;
    di.image = in.image;
    di.variance = cut(tm ? sci.variance : tmp.variance);
    di.templateVariance = cut(tm ? tmp.variance : sci.variance);
    di.kernel = kView;
    if (!_preConv.empty()) {
        di.preConvKernel = ImageView<const double>::contiguous(_preConv.data(), _preConvShape.rows, _preConvShape.cols);
    }
    di.v = v;
    di.vt = vt;
    // only the inner box is kept: decorrelate straight into the output window (the rest of the
    // expanded box is never transformed back)
    DecorrelationResult r;
    try {
        r = decorrelateImage<T>(di, _opt.decorrelation, out.image, out.variance, in.innerOffsetY(), in.innerOffsetX());
    } catch (std::invalid_argument const& e) {
        throw std::invalid_argument(where + e.what());
    }
    auto const m = in.innerMask();
    for (std::ptrdiff_t y = 0; y < out.mask.height; ++y)
        for (std::ptrdiff_t x = 0; x < out.mask.width; ++x) out.mask(y, x) = m(y, x);
    info.kSum = r.kSum;
    info.w1 = r.w1;
    info.w2 = r.w2;
    info.maxCorr = r.maxCorr;
    info.fftShape = r.fftShape;
    record();
}

template void DecorrelationCellMapper::processT<float>(CellInput<float> const&, CellOutput<float>&) const;
template void DecorrelationCellMapper::processT<double>(CellInput<double> const&, CellOutput<double>&) const;

}  // namespace diffcal::decorrelation
