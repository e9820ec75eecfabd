// Bindings for the FFT layer, the non-spatial decorrelation core and the direct convolution.
// Arrays are viewed without copies (numpy_view.hpp); std::invalid_argument becomes ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <complex>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "diffcal/convolve.hpp"
#include "diffcal/decorrelation.hpp"
#include "diffcal/decorrelation_mapper.hpp"
#include "diffcal/mapreduce.hpp"
#include "diffcal/fft.hpp"
#include "numpy_view.hpp"

namespace py = pybind11;

namespace diffcal::bindings {

namespace {

namespace dec = diffcal::decorrelation;
using Complex = std::complex<double>;

bool isFloat32(py::array const& a) { return py::dtype::of<float>().is(a.dtype()); }

ImageView<const double> optionalKernel(py::object const& obj, char const* name) {
    if (obj.is_none()) return {};
    return viewOf<const double>(obj.cast<py::array>(), name);
}

template <typename T>
py::dict decorrelate(py::array const& image, py::array const& variance, py::array const& templateVariance,
                     py::array const& kernel, py::object const& preConv, double v, double vt, py::array& outImage,
                     py::array& outVariance, dec::DecorrelationOptions const& opt) {
    dec::DecorrelationInputs<T> in;
    in.image = viewOf<const T>(image, "image");
    in.variance = viewOf<const T>(variance, "variance");
    in.templateVariance = viewOf<const T>(templateVariance, "template_variance");
    in.kernel = viewOf<const double>(kernel, "kernel");
    in.preConvKernel = optionalKernel(preConv, "pre_conv_kernel");
    in.v = v;
    in.vt = vt;
    auto oi = viewOf<T>(outImage, "out_image", true);
    auto ov = viewOf<T>(outVariance, "out_variance", true);
    dec::DecorrelationResult r;
    {
        py::gil_scoped_release release;
        r = dec::decorrelateImage<T>(in, opt, oi, ov);
    }
    py::dict d;
    d["fft_shape"] = py::make_tuple(r.fftShape.rows, r.fftShape.cols);
    d["k_sum"] = r.kSum;
    d["w1"] = r.w1;
    d["w2"] = r.w2;
    d["max_corr"] = r.maxCorr;
    d["fill_value"] = r.fillValue;
    d["n_non_finite"] = r.nNonFinite;
    return d;
}

template <typename T>
void convolveImpl(py::array const& inImage, py::array const& inVariance, py::object const& inMask,
                  py::array const& kernel, convolution::ConvolutionControl const& ctrl, py::array& outImage,
                  py::array& outVariance, py::object const& outMask) {
    auto ii = viewOf<const T>(inImage, "in_image");
    auto iv = viewOf<const T>(inVariance, "in_variance");
    ImageView<const std::int32_t> im;
    ImageView<std::int32_t> om;
    if (!inMask.is_none()) im = viewOf<const std::int32_t>(inMask.cast<py::array>(), "in_mask");
    if (!outMask.is_none()) om = viewOf<std::int32_t>(outMask.cast<py::array>(), "out_mask", true);
    auto k = viewOf<const double>(kernel, "kernel");
    auto oi = viewOf<T>(outImage, "out_image", true);
    auto ov = viewOf<T>(outVariance, "out_variance", true);
    py::gil_scoped_release release;
    convolution::convolveMaskedImage<T>(ii, iv, im, k, ctrl, oi, ov, om);
}

template <typename T>
dec::ExposurePlanes<T> exposurePlanes(py::array const& image, py::array const& mask, py::array const& variance,
                                      std::string const& what) {
    dec::ExposurePlanes<T> p;
    p.image = viewOf<const T>(image, (what + " image").c_str());
    p.mask = viewOf<const std::int32_t>(mask, (what + " mask").c_str());
    p.variance = viewOf<const T>(variance, (what + " variance").c_str());
    return p;
}

std::shared_ptr<dec::DecorrelationCellMapper> makeDecorrelationCellMapper(
    std::vector<std::int64_t> const& bbox, py::array const& sciImage, py::array const& sciMask,
    py::array const& sciVariance, py::array const& tmplImage, py::array const& tmplMask, py::array const& tmplVariance,
    py::array const& basis, py::array const& coeffs, int order, std::string const& function,
    std::vector<std::int64_t> const& kernelBBox, py::object const& preConv, bool fast, bool completeVar,
    bool templateMatched, std::vector<std::pair<std::ptrdiff_t, std::ptrdiff_t>> const& extraShapes,
    std::int32_t scienceAndMask, std::int32_t templateAndMask) {
    if (bbox.size() != 4 || kernelBBox.size() != 4) {
        throw py::value_error("bbox and kernel_bbox must be (minX, minY, maxX, maxY)");
    }
    IntBox const b(bbox[0], bbox[1], bbox[2], bbox[3]);
    IntBox const kb(kernelBBox[0], kernelBBox[1], kernelBBox[2], kernelBBox[3]);
    auto basisArr = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(basis);
    auto coeffArr = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(coeffs);
    if (!basisArr || basisArr.ndim() != 3) throw py::value_error("basis: expected an (n, h, w) float64 array");
    if (!coeffArr || coeffArr.ndim() != 2) throw py::value_error("coeffs: expected an (n, nTerms) float64 array");
    std::vector<double> bv(basisArr.data(), basisArr.data() + basisArr.size());
    std::vector<double> cv(coeffArr.data(), coeffArr.data() + coeffArr.size());
    dec::SpatialFunction fn;
    if (function == "polynomial") {
        fn = dec::SpatialFunction::Polynomial;
    } else if (function == "chebyshev1") {
        fn = dec::SpatialFunction::Chebyshev1;
    } else {
        throw py::value_error("function must be 'polynomial' or 'chebyshev1', got '" + function + "'");
    }
    if (coeffArr.shape(0) != basisArr.shape(0)) throw py::value_error("coeffs must have one row per basis image");
    dec::SpatialKernel kernel(std::move(bv), basisArr.shape(0), basisArr.shape(1), basisArr.shape(2), std::move(cv),
                              order, fn, kb);
    std::vector<double> pc;
    dec::Shape2 pcShape;
    if (!preConv.is_none()) {
        auto pa = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(preConv);
        if (!pa || pa.ndim() != 2) throw py::value_error("pre_conv_kernel: expected a 2-D float64 array");
        pc.assign(pa.data(), pa.data() + pa.size());
        pcShape = {pa.shape(0), pa.shape(1)};
    }
    dec::DecorrelationMapperOptions opt;
    opt.decorrelation.shapeMode = fast ? dec::FftShapeMode::Fast : dec::FftShapeMode::Exact;
    opt.decorrelation.completeVarPlanePropagation = completeVar;
    opt.decorrelation.templateMatched = templateMatched;
    opt.decorrelation.parallel = false;
    for (auto const& p : extraShapes) opt.decorrelation.extraShapes.push_back({p.first, p.second});
    opt.scienceAndMask = scienceAndMask;
    opt.templateAndMask = templateAndMask;
    dec::ExposurePlanes<float> s32, t32;
    dec::ExposurePlanes<double> s64, t64;
    if (isFloat32(sciImage)) {
        s32 = exposurePlanes<float>(sciImage, sciMask, sciVariance, "science");
        t32 = exposurePlanes<float>(tmplImage, tmplMask, tmplVariance, "template");
    } else {
        s64 = exposurePlanes<double>(sciImage, sciMask, sciVariance, "science");
        t64 = exposurePlanes<double>(tmplImage, tmplMask, tmplVariance, "template");
    }
    return std::make_shared<dec::DecorrelationCellMapper>(b, s32, t32, s64, t64, std::move(kernel), std::move(pc),
                                                          pcShape, opt);
}

}  // namespace

void bindDecorrelation(py::module_& m) {
    m.def("next_fast_size", &fft::nextFastSize, py::arg("n"),
          "Smallest even 2/3/5/7-smooth integer >= max(n, 2).");
    m.def("cheapest_fast_size", &fft::cheapestFastSize, py::arg("n"),
          "The even 2/3/5/7-smooth size >= max(n, 2) with the lowest modelled FFT cost (fftShape='fast').");
    m.def("fft_backend", &fft::backendName, "Name of the compiled FFT implementation.");

    m.def(
        "rfft2",
        [](py::array const& a) {
            auto in = viewOf<const double>(a, "a");
            auto plan = fft::RealFft2d::get(in.height, in.width);
            py::array_t<Complex> out({in.height, plan->spectrumCols()});
            auto* o = out.mutable_data();
            {
                py::gil_scoped_release release;
                plan->forward(in, o);
            }
            return out;
        },
        py::arg("a"), "2-D real forward FFT of a float64 array, like numpy.fft.rfft2. Releases the GIL.");

    m.def(
        "irfft2",
        [](py::array const& spectrum, std::ptrdiff_t cols) {
            auto s = viewOf<const Complex>(spectrum, "spectrum");
            if (cols < 1 || s.width != cols / 2 + 1) {
                throw py::value_error("irfft2: spectrum has " + std::to_string(s.width) + " columns, expected cols/2+1 = " +
                                      std::to_string(cols / 2 + 1));
            }
            auto plan = fft::RealFft2d::get(s.height, cols);
            py::array_t<double> out({s.height, cols});
            auto ov = ImageView<double>::contiguous(out.mutable_data(), s.height, cols);
            {
                py::gil_scoped_release release;
                std::vector<Complex> buf(static_cast<std::size_t>(plan->bufferSize()));
                for (std::ptrdiff_t y = 0; y < s.height; ++y) {
                    for (std::ptrdiff_t x = 0; x < s.width; ++x) buf[static_cast<std::size_t>(y * s.width + x)] = s(y, x);
                }
                plan->inverse(buf.data(), ov);
            }
            return out;
        },
        py::arg("spectrum"), py::arg("cols"),
        "Normalised 2-D inverse of rfft2 (complex128 half spectrum -> float64 rows x cols), like numpy.fft.irfft2.");

    m.def(
        "compute_common_shape",
        [](std::vector<std::pair<std::ptrdiff_t, std::ptrdiff_t>> const& shapes) {
            std::vector<dec::Shape2> s;
            for (auto const& p : shapes) s.push_back({p.first, p.second});
            auto r = dec::computeCommonShape(s);
            return py::make_tuple(r.rows, r.cols);
        },
        py::arg("shapes"), "Reference FFT grid (rows, cols) of a list of (rows, cols) shapes (spec §2.4).");

    m.def(
        "correction_filter",
        [](py::array const& kernel, py::object const& preConv, double v, double vt,
           std::pair<std::ptrdiff_t, std::ptrdiff_t> shape) {
            auto k = viewOf<const double>(kernel, "kernel");
            auto p = optionalKernel(preConv, "pre_conv_kernel");
            dec::CorrectionFilter f;
            {
                py::gil_scoped_release release;
                f = dec::computeCorrectionFilter(k, p, v, vt, {shape.first, shape.second});
            }
            py::array_t<double> corr({f.shape.rows, f.spectrumCols});
            std::memcpy(corr.mutable_data(), f.corr.data(), f.corr.size() * sizeof(double));
            py::dict d;
            d["corr"] = corr;
            d["k_sum"] = f.kSum;
            d["w1"] = f.w1;
            d["w2"] = f.w2;
            d["max_corr"] = f.maxCorr;
            return d;
        },
        py::arg("kernel"), py::arg("pre_conv_kernel"), py::arg("v"), py::arg("vt"), py::arg("shape"),
        "Decorrelation filter on the half spectrum of the given FFT grid (diffim or score correction).");

    m.def(
        "decorrelate_image",
        [](py::array const& image, py::array const& variance, py::array const& templateVariance,
           py::array const& kernel, py::object const& preConv, double v, double vt, py::array outImage,
           py::array outVariance, bool fast, bool completeVar, bool templateMatched,
           std::vector<std::pair<std::ptrdiff_t, std::ptrdiff_t>> const& extraShapes, bool parallel) {
            dec::DecorrelationOptions opt;
            opt.shapeMode = fast ? dec::FftShapeMode::Fast : dec::FftShapeMode::Exact;
            opt.completeVarPlanePropagation = completeVar;
            opt.templateMatched = templateMatched;
            opt.parallel = parallel;
            for (auto const& p : extraShapes) opt.extraShapes.push_back({p.first, p.second});
            if (isFloat32(image)) {
                return decorrelate<float>(image, variance, templateVariance, kernel, preConv, v, vt, outImage,
                                          outVariance, opt);
            }
            return decorrelate<double>(image, variance, templateVariance, kernel, preConv, v, vt, outImage,
                                       outVariance, opt);
        },
        py::arg("image"), py::arg("variance"), py::arg("template_variance"), py::arg("kernel"),
        py::arg("pre_conv_kernel"), py::arg("v"), py::arg("vt"), py::arg("out_image"), py::arg("out_variance"),
        py::arg("fast") = false, py::arg("complete_var") = false, py::arg("template_matched") = true,
        py::arg("extra_shapes") = std::vector<std::pair<std::ptrdiff_t, std::ptrdiff_t>>{}, py::arg("parallel") = true,
        "Non-spatial kernel decorrelation of one image into caller-provided outputs (all planes float32 or all "
        "float64; kernels float64). Returns a dict of the FFT shape, kSum, w1, w2, max correction, fill value. "
        "Releases the GIL.");

    py::class_<dec::DecorrelationCellMapper, CellMapper, std::shared_ptr<dec::DecorrelationCellMapper>>(
        m, "DecorrelationCellMapper",
        "Native mapper of the spatially varying A&L decorrelation (decorrelation_mapper.hpp): per cell, the kernel "
        "at the expanded-box centre, local clipped svar/tvar, decorrelateImage on the expanded box, inner box out. "
        "Keeps the science/template arrays alive.")
        .def(py::init(&makeDecorrelationCellMapper), py::arg("bbox"), py::arg("science_image"),
             py::arg("science_mask"), py::arg("science_variance"), py::arg("template_image"),
             py::arg("template_mask"), py::arg("template_variance"), py::arg("basis"), py::arg("coeffs"),
             py::arg("order"), py::arg("function"), py::arg("kernel_bbox"), py::arg("pre_conv_kernel"),
             py::arg("fast") = false, py::arg("complete_var") = false, py::arg("template_matched") = true,
             py::arg("extra_shapes") = std::vector<std::pair<std::ptrdiff_t, std::ptrdiff_t>>{},
             py::arg("science_and_mask") = 0, py::arg("template_and_mask") = 0,
             py::keep_alive<1, 3>(), py::keep_alive<1, 4>(), py::keep_alive<1, 5>(), py::keep_alive<1, 6>(),
             py::keep_alive<1, 7>(), py::keep_alive<1, 8>())
        .def("cell_info",
             [](dec::DecorrelationCellMapper const& self) {
                 auto const info = self.cellInfo();
                 auto const n = static_cast<py::ssize_t>(info.size());
                 py::array_t<double> a({n, py::ssize_t(8)});
                 py::array_t<std::int64_t> idx(n);
                 auto iv = idx.mutable_unchecked<1>();
                 py::array_t<std::int64_t> shp({n, py::ssize_t(2)});
                 py::array_t<bool> skipped(n);
                 auto av = a.mutable_unchecked<2>();
                 auto sv = shp.mutable_unchecked<2>();
                 auto kv = skipped.mutable_unchecked<1>();
                 for (py::ssize_t i = 0; i < n; ++i) {
                     auto const& c = info[std::size_t(i)];
                     double const vals[8] = {c.xcen, c.ycen, c.svar, c.tvar, c.kSum, c.w1, c.w2, c.maxCorr};
                     for (int k = 0; k < 8; ++k) av(i, k) = vals[k];
                     sv(i, 0) = c.fftShape.rows;
                     sv(i, 1) = c.fftShape.cols;
                     kv(i) = c.skipped;
                     iv(i) = c.index;
                 }
                 py::dict d;
                 d["index"] = idx;
                 d["values"] = a;
                 d["columns"] = py::make_tuple("xcen", "ycen", "svar", "tvar", "kSum", "w1", "w2", "maxCorr");
                 d["fft_shape"] = shp;
                 d["skipped"] = skipped;
                 return d;
             },
             "Per-cell statistics of the cells processed so far (cell order): dict of 'index' (n,), 'values' (n, 8) with "
             "'columns', 'fft_shape' (n, 2) and 'skipped' (n,).")
;

    m.def(
        "evaluate_spatial_kernel",
        [](py::array const& basis, py::array const& coeffs, int order, std::string const& function,
           std::vector<std::int64_t> const& kernelBBox, double x, double y) {
            auto basisArr = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(basis);
            auto coeffArr = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(coeffs);
            if (!basisArr || basisArr.ndim() != 3) throw py::value_error("basis: expected an (n, h, w) array");
            if (!coeffArr || coeffArr.ndim() != 2) throw py::value_error("coeffs: expected an (n, nTerms) array");
            if (kernelBBox.size() != 4) throw py::value_error("kernel_bbox must be (minX, minY, maxX, maxY)");
            if (function != "polynomial" && function != "chebyshev1") {
                throw py::value_error("function must be 'polynomial' or 'chebyshev1', got '" + function + "'");
            }
            dec::SpatialKernel k(std::vector<double>(basisArr.data(), basisArr.data() + basisArr.size()),
                                 basisArr.shape(0), basisArr.shape(1), basisArr.shape(2),
                                 std::vector<double>(coeffArr.data(), coeffArr.data() + coeffArr.size()), order,
                                 function == "polynomial" ? dec::SpatialFunction::Polynomial
                                                          : dec::SpatialFunction::Chebyshev1,
                                 IntBox(kernelBBox[0], kernelBBox[1], kernelBBox[2], kernelBBox[3]));
            std::vector<double> img;
            k.evaluate(x, y, img);
            py::array_t<double> out({k.height(), k.width()});
            std::memcpy(out.mutable_data(), img.data(), img.size() * sizeof(double));
            return out;
        },
        py::arg("basis"), py::arg("coeffs"), py::arg("order"), py::arg("function"), py::arg("kernel_bbox"),
        py::arg("x"), py::arg("y"),
        "Unnormalised image at (x, y) of a linear-combination kernel as the native decorrelation mapper evaluates it.");

    m.def(
        "convolve_masked_image",
        [](py::array const& inImage, py::array const& inVariance, py::object const& inMask, py::array const& kernel,
           bool doNormalize, bool doCopyEdge, std::int32_t edgeBit, std::int32_t noDataBit, py::array outImage,
           py::array outVariance, py::object const& outMask, bool parallel) {
            convolution::ConvolutionControl ctrl;
            ctrl.doNormalize = doNormalize;
            ctrl.doCopyEdge = doCopyEdge;
            ctrl.edgeBit = edgeBit;
            ctrl.noDataBit = noDataBit;
            ctrl.parallel = parallel;
            if (isFloat32(inImage)) {
                convolveImpl<float>(inImage, inVariance, inMask, kernel, ctrl, outImage, outVariance, outMask);
            } else {
                convolveImpl<double>(inImage, inVariance, inMask, kernel, ctrl, outImage, outVariance, outMask);
            }
        },
        py::arg("in_image"), py::arg("in_variance"), py::arg("in_mask"), py::arg("kernel"), py::arg("do_normalize"),
        py::arg("do_copy_edge"), py::arg("edge_bit"), py::arg("no_data_bit"), py::arg("out_image"),
        py::arg("out_variance"), py::arg("out_mask"), py::arg("parallel") = true,
        "Direct convolution of a masked image with afw semantics (see diffcal/convolve.hpp). Releases the GIL.");
}

}  // namespace diffcal::bindings
