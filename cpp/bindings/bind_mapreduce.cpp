// Bindings of the ImageMapReduce core: grid generation, stitching, native cell mappers.
//
// Boxes cross the boundary as int64 arrays of shape (N, 4) holding (minX, minY, maxX, maxY)
// (inclusive, parent coordinates). Pixel planes are viewed zero-copy (numpy_view.hpp); every heavy
// call releases the GIL. C++ std::invalid_argument becomes ValueError, std::runtime_error
// RuntimeError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffcal/grid.hpp"
#include "diffcal/mapreduce.hpp"
#include "diffcal/prefault.hpp"
#include "diffcal/stitch.hpp"
#include "numpy_view.hpp"

namespace py = pybind11;

namespace diffcal::bindings {

namespace {

using BoxArray = py::array_t<std::int64_t, py::array::c_style>;

IntBox boxFromTuple(py::object const& obj, char const* name) {
    auto t = obj.cast<std::vector<std::int64_t>>();
    if (t.size() != 4) throw py::value_error(std::string(name) + ": expected (minX, minY, maxX, maxY)");
    return IntBox(t[0], t[1], t[2], t[3]);
}

std::vector<IntBox> boxesFromArray(py::array const& arr, char const* name) {
    if (!py::dtype::of<std::int64_t>().is(arr.dtype())) {
        throw py::type_error(std::string(name) + ": expected an int64 array of shape (N, 4), got dtype " +
                             dtypeName(arr));
    }
    if (arr.ndim() != 2 || arr.shape(1) != 4) {
        throw py::value_error(std::string(name) + ": expected shape (N, 4) of (minX, minY, maxX, maxY)");
    }
    auto const v = viewOf<const std::int64_t>(arr, name);
    std::vector<IntBox> out(static_cast<std::size_t>(v.height));
    for (std::ptrdiff_t i = 0; i < v.height; ++i) out[std::size_t(i)] = IntBox(v(i, 0), v(i, 1), v(i, 2), v(i, 3));
    return out;
}

BoxArray boxesToArray(std::vector<IntBox> const& boxes) {
    BoxArray out({static_cast<py::ssize_t>(boxes.size()), py::ssize_t(4)});
    auto a = out.mutable_unchecked<2>();
    for (std::size_t i = 0; i < boxes.size(); ++i) {
        auto const k = static_cast<py::ssize_t>(i);
        a(k, 0) = boxes[i].minX;
        a(k, 1) = boxes[i].minY;
        a(k, 2) = boxes[i].maxX;
        a(k, 3) = boxes[i].maxY;
    }
    return out;
}

std::vector<double> doublesOrEmpty(py::object const& obj) {
    if (obj.is_none()) return {};
    return obj.cast<std::vector<double>>();
}

bool isFloat32(py::array const& a) { return py::dtype::of<float>().is(a.dtype()); }
bool isFloat64(py::array const& a) { return py::dtype::of<double>().is(a.dtype()); }

void requireFloat(py::array const& a, char const* name) {
    if (!isFloat32(a) && !isFloat64(a)) {
        throw py::type_error(std::string(name) + ": expected dtype float32 or float64, got " + dtypeName(a));
    }
}

template <typename T, typename Name>
ConstPlanes<T> constPlanes(IntBox const& bbox, py::array const& image, py::array const& mask, py::array const& variance,
                           Name const& what) {
    return ConstPlanes<T>{bbox, viewOf<const T>(image, [&] { return argName(what) + " image"; }),
                          viewOf<const std::int32_t>(mask, [&] { return argName(what) + " mask"; }),
                          viewOf<const T>(variance, [&] { return argName(what) + " variance"; })};
}

template <typename T>
MutablePlanes<T> mutablePlanes(IntBox const& bbox, py::array const& image, py::array const& mask,
                               py::array const& variance, std::string const& what) {
    return MutablePlanes<T>{bbox, viewOf<T>(image, (what + " image").c_str(), true),
                            viewOf<std::int32_t>(mask, (what + " mask").c_str(), true),
                            viewOf<T>(variance, (what + " variance").c_str(), true)};
}

py::dict statsToDict(StitchStats const& s) {
    py::dict d;
    d["n_pixels"] = s.nPixels;
    d["n_patches"] = s.nPatches;
    d["n_flagged"] = s.nFlagged;
    d["n_zero_weight"] = s.nZeroWeight;
    d["max_weight"] = s.maxWeight;
    d["min_weight"] = s.minWeight;
    d["sum_weight"] = s.sumWeight;
    d["mean_weight"] = s.meanWeight();
    return d;
}

template <typename T>
py::dict stitchT(py::list const& images, py::list const& masks, py::list const& variances, py::array const& boxes,
                 IntBox const& outBBox, py::array const& inputMask, py::array const& outImage, py::array const& outMask,
                 py::array const& outVariance, ReduceOperation op, std::int32_t badBits) {
    std::vector<IntBox> const bx = boxesFromArray(boxes, "boxes");
    std::size_t const n = bx.size();
    if (py::len(images) != n || py::len(masks) != n || py::len(variances) != n) {
        throw py::value_error("stitch: images, masks, variances and boxes must have the same length");
    }
    std::vector<ConstPlanes<T>> patches;
    patches.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        auto const what = [i] { return "mapper result " + std::to_string(i); };  // built only for errors
        patches.push_back(constPlanes<T>(bx[i], images[i].cast<py::array>(), masks[i].cast<py::array>(),
                                         variances[i].cast<py::array>(), what));
    }
    auto const in = viewOf<const std::int32_t>(inputMask, "input mask");
    auto const out = mutablePlanes<T>(outBBox, outImage, outMask, outVariance, "output");
    StitchStats st;
    {
        py::gil_scoped_release release;
        st = stitch<T>(patches, in, out, op, badBits);
    }
    return statsToDict(st);
}

template <typename T>
py::dict mapAndStitchT(CellMapper const& mapper, py::array const& image, py::array const& mask,
                       py::array const& variance, IntBox const& bbox, std::vector<IntBox> const& inner,
                       std::vector<IntBox> const& expanded, py::array const& outImage, py::array const& outMask,
                       py::array const& outVariance, ReduceOperation op, std::int32_t badBits) {
    auto const in = constPlanes<T>(bbox, image, mask, variance, "input");
    auto const out = mutablePlanes<T>(bbox, outImage, outMask, outVariance, "output");
    StitchStats st;
    {
        py::gil_scoped_release release;
        st = mapAndStitch<T>(mapper, in, inner, expanded, out, op, badBits);
    }
    return statsToDict(st);
}

template <typename T>
void mapCellsT(CellMapper const& mapper, py::array const& image, py::array const& mask, py::array const& variance,
               IntBox const& bbox, std::vector<IntBox> const& inner, std::vector<IntBox> const& expanded,
               py::list const& outImages, py::list const& outMasks, py::list const& outVariances) {
    std::size_t const n = inner.size();
    if (py::len(outImages) != n || py::len(outMasks) != n || py::len(outVariances) != n) {
        throw py::value_error("map_cells: need one output image, mask and variance per cell");
    }
    auto const in = constPlanes<T>(bbox, image, mask, variance, "input");
    std::vector<MutablePlanes<T>> outs;
    outs.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        outs.push_back(mutablePlanes<T>(inner[i], outImages[i].cast<py::array>(), outMasks[i].cast<py::array>(),
                                        outVariances[i].cast<py::array>(), "output of cell " + std::to_string(i)));
    }
    py::gil_scoped_release release;
    mapCells<T>(mapper, in, inner, expanded, outs);
}

}  // namespace

void bindMapReduce(py::module_& m) {
    // background page population of fresh output arrays (see diffcal/prefault.hpp)
    py::class_<BackgroundPrefault>(m, "Prefault",
                                   "Maps the pages of new arrays on a background thread without changing them; "
                                   "join() before relying on populated_bytes (it also keeps the arrays alive "
                                   "until then).")
        .def(py::init([](py::list const& arrays) {
                 std::vector<std::pair<void*, std::size_t>> regions;
                 for (auto const& item : arrays) {
                     if (!py::isinstance<py::array>(item)) throw py::type_error("Prefault: expected numpy arrays");
                     auto a = py::reinterpret_borrow<py::array>(item);
                     if (!a.writeable()) throw py::value_error("Prefault: arrays must be writeable");
                     regions.emplace_back(a.mutable_data(), std::size_t(a.nbytes()));
                 }
                 return std::make_unique<BackgroundPrefault>(std::move(regions));
             }),
             py::arg("arrays"), py::keep_alive<1, 2>())
        .def("join", &BackgroundPrefault::join, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("populated_bytes", &BackgroundPrefault::populatedBytes)
        .def_static("supported", &BackgroundPrefault::supported,
                    "Whether this build can populate pages (Linux MADV_POPULATE_WRITE); else a no-op.");
    m.def(
        "generate_grid",
        [](py::object const& bbox, double cellSizeX, double cellSizeY, double gridStepX, double gridStepY,
           double borderSizeX, double borderSizeY, std::string const& adjustGridOption, bool scaleByFwhm, double fwhm,
           py::object const& cellCentroidsX, py::object const& cellCentroidsY, bool forceEvenSized) {
            GridConfig c;
            c.cellSizeX = cellSizeX;
            c.cellSizeY = cellSizeY;
            c.gridStepX = gridStepX;
            c.gridStepY = gridStepY;
            c.borderSizeX = borderSizeX;
            c.borderSizeY = borderSizeY;
            c.adjustGridOption = parseAdjustGridOption(adjustGridOption);
            c.scaleByFwhm = scaleByFwhm;
            c.fwhm = fwhm;
            c.cellCentroidsX = doublesOrEmpty(cellCentroidsX);
            c.cellCentroidsY = doublesOrEmpty(cellCentroidsY);
            c.forceEvenSized = forceEvenSized;
            IntBox const b = boxFromTuple(bbox, "bbox");
            Grid g;
            GridPixelSizes s{};
            {
                py::gil_scoped_release release;
                s = gridPixelSizes(c);
                g = generateGrid(b, c);
            }
            py::dict sizes;
            sizes["cellSizeX"] = s.cellSizeX;
            sizes["cellSizeY"] = s.cellSizeY;
            sizes["gridStepX"] = s.gridStepX;
            sizes["gridStepY"] = s.gridStepY;
            sizes["borderSizeX"] = s.borderSizeX;
            sizes["borderSizeY"] = s.borderSizeY;
            return py::make_tuple(boxesToArray(g.inner), boxesToArray(g.expanded), sizes);
        },
        py::arg("bbox"), py::arg("cell_size_x"), py::arg("cell_size_y"), py::arg("grid_step_x"),
        py::arg("grid_step_y"), py::arg("border_size_x"), py::arg("border_size_y"), py::arg("adjust_grid_option"),
        py::arg("scale_by_fwhm"), py::arg("fwhm"), py::arg("cell_centroids_x") = py::none(),
        py::arg("cell_centroids_y") = py::none(), py::arg("force_even_sized") = false,
        "ImageMapReduce grid (spec §1.5) of bbox=(minX, minY, maxX, maxY): returns (inner, expanded, sizes), "
        "two int64 (N, 4) arrays of inclusive boxes and the integer pixel sizes used.");

    m.def("round_half_even", &roundHalfEven, py::arg("value"), "numpy.rint semantics, FP-environment independent.");

    py::class_<CellMapper, std::shared_ptr<CellMapper>>(m, "CellMapper",
                                                        "Abstract native per-cell mapper (C++); see "
                                                        "cpp/include/diffcal/mapreduce.hpp for the contract.")
        .def_property_readonly("name", &CellMapper::name)
        .def_property_readonly("overwrites_output", &CellMapper::overwritesOutput)
        .def("__repr__", [](CellMapper const& self) { return "<diffcal._core." + self.name() + ">"; });

    py::class_<IdentityCellMapper, CellMapper, std::shared_ptr<IdentityCellMapper>>(
        m, "IdentityCellMapper", "Native mapper copying each cell's inner box (image, mask, variance) unchanged.")
        .def(py::init<>());

    py::class_<AddConstantCellMapper, CellMapper, std::shared_ptr<AddConstantCellMapper>>(
        m, "AddConstantCellMapper",
        "Native mapper copying each cell's inner box and adding `amount` (cast to the pixel type) to the image.")
        .def(py::init<double>(), py::arg("amount"))
        .def_property_readonly("amount", &AddConstantCellMapper::amount);

    m.def(
        "stitch",
        [](py::list const& images, py::list const& masks, py::list const& variances, py::array const& boxes,
           py::object const& outBBox, py::array const& inputMask, py::array const& outImage, py::array const& outMask,
           py::array const& outVariance, std::string const& operation, std::int32_t badBits) {
            ReduceOperation const op = parseReduceOperation(operation);
            IntBox const ob = boxFromTuple(outBBox, "out_bbox");
            requireFloat(outImage, "output image");
            if (isFloat32(outImage)) {
                return stitchT<float>(images, masks, variances, boxes, ob, inputMask, outImage, outMask, outVariance,
                                      op, badBits);
            }
            return stitchT<double>(images, masks, variances, boxes, ob, inputMask, outImage, outMask, outVariance, op,
                                   badBits);
        },
        py::arg("images"), py::arg("masks"), py::arg("variances"), py::arg("boxes"), py::arg("out_bbox"),
        py::arg("input_mask"), py::arg("out_image"), py::arg("out_mask"), py::arg("out_variance"),
        py::arg("operation"), py::arg("bad_bits"),
        "Stitch patches (lists of planes + (N, 4) boxes, all of the output's dtype) into preallocated output planes "
        "(spec §1.7). Returns statistics. Releases the GIL.");

    m.def(
        "map_and_stitch",
        [](CellMapper const& mapper, py::array const& image, py::array const& mask, py::array const& variance,
           py::object const& bbox, py::array const& inner, py::array const& expanded, py::array const& outImage,
           py::array const& outMask, py::array const& outVariance, std::string const& operation,
           std::int32_t badBits) {
            ReduceOperation const op = parseReduceOperation(operation);
            IntBox const b = boxFromTuple(bbox, "bbox");
            auto const in0 = boxesFromArray(inner, "inner");
            auto const ex = boxesFromArray(expanded, "expanded");
            requireFloat(image, "input image");
            if (isFloat32(image)) {
                return mapAndStitchT<float>(mapper, image, mask, variance, b, in0, ex, outImage, outMask, outVariance,
                                            op, badBits);
            }
            return mapAndStitchT<double>(mapper, image, mask, variance, b, in0, ex, outImage, outMask, outVariance, op,
                                         badBits);
        },
        py::arg("mapper"), py::arg("image"), py::arg("mask"), py::arg("variance"), py::arg("bbox"), py::arg("inner"),
        py::arg("expanded"), py::arg("out_image"), py::arg("out_mask"), py::arg("out_variance"), py::arg("operation"),
        py::arg("bad_bits"),
        "Run a native mapper on every cell in parallel and stitch the results (streaming). Releases the GIL.");

    m.def(
        "map_cells",
        [](CellMapper const& mapper, py::array const& image, py::array const& mask, py::array const& variance,
           py::object const& bbox, py::array const& inner, py::array const& expanded, py::list const& outImages,
           py::list const& outMasks, py::list const& outVariances) {
            IntBox const b = boxFromTuple(bbox, "bbox");
            auto const in0 = boxesFromArray(inner, "inner");
            auto const ex = boxesFromArray(expanded, "expanded");
            requireFloat(image, "input image");
            if (isFloat32(image)) {
                mapCellsT<float>(mapper, image, mask, variance, b, in0, ex, outImages, outMasks, outVariances);
            } else {
                mapCellsT<double>(mapper, image, mask, variance, b, in0, ex, outImages, outMasks, outVariances);
            }
        },
        py::arg("mapper"), py::arg("image"), py::arg("mask"), py::arg("variance"), py::arg("bbox"), py::arg("inner"),
        py::arg("expanded"), py::arg("out_images"), py::arg("out_masks"), py::arg("out_variances"),
        "Run a native mapper on every cell in parallel into per-cell output planes. Releases the GIL.");
}

}  // namespace diffcal::bindings
