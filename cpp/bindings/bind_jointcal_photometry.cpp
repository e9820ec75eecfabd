// Bindings of the photometric half of the jointcal core (PhotometryModel, PhotometryFitter, Chebyshev
// helpers), added to the private submodule diffcal._core._jointcal created by bind_jointcal.cpp.
// Use diffcal.jointcal.photometry instead. Long calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "diffcal/jointcal/photometry.hpp"
#include "fitter_bindings.hpp"

namespace py = pybind11;

namespace diffcal::bindings {

namespace {

using namespace diffcal::jointcal;

using DArr = py::array_t<double, py::array::c_style | py::array::forcecast>;

template <typename T>
py::array_t<T> asArray(std::vector<T> const& v) {
    py::array_t<T> out(py::ssize_t(v.size()));
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

py::list takeLog(LogBuffer& log) {
    py::list out;
    for (auto& r : log.take()) out.append(py::make_tuple(r.level, r.message));
    return out;
}

SolverKind parseSolver(std::string const& s) {
    if (s == "schur") return SolverKind::Schur;
    if (s == "sparse") return SolverKind::Sparse;
    throw py::value_error("solver must be 'schur' or 'sparse', got '" + s + "'");
}

char const* kindName(PhotometryModelKind k) {
    switch (k) {
        case PhotometryModelKind::SimpleFlux: return "simpleFlux";
        case PhotometryModelKind::SimpleMagnitude: return "simpleMagnitude";
        case PhotometryModelKind::ConstrainedFlux: return "constrainedFlux";
        case PhotometryModelKind::ConstrainedMagnitude: return "constrainedMagnitude";
    }
    return "?";
}

}  // namespace

void bindJointcalPhotometry(py::module_& parent) {
    py::module_ m = parent.attr("_jointcal").cast<py::module_>();

    m.def(
        "chebyshev_basis",
        [](int order, double u, double v) {
            if (order < 0 || order > 20) throw py::value_error("chebyshev_basis: order must be in [0, 20]");
            std::vector<double> out(std::size_t(nChebyshevParams(order)));
            evalChebyshevBasis(order, u, v, out.data());
            return asArray(out);
        },
        py::arg("order"), py::arg("u"), py::arg("v"),
        "T_i(u) T_j(v) in the parameter order (y degree j outer, x degree i inner)");
    m.def(
        "chebyshev_integral", [](int k, double a, double b) { return chebyshevIntegral(k, a, b); }, py::arg("k"),
        py::arg("a"), py::arg("b"), "Integral of the Chebyshev polynomial T_k over [a, b]");

    py::class_<PhotometryModel>(m, "PhotometryModel")
        .def_static(
            "make_simple",
            [](Associations const& a, bool magnitude, double pedestal) {
                py::gil_scoped_release release;
                return PhotometryModel::makeSimple(a, magnitude, pedestal);
            },
            py::arg("associations"), py::arg("magnitude"), py::arg("error_pedestal") = 0.0)
        .def_static(
            "make_constrained",
            [](Associations const& a, bool magnitude, int order, std::array<double, 4> box, double pedestal) {
                py::gil_scoped_release release;
                return PhotometryModel::makeConstrained(a, magnitude, order, box, pedestal);
            },
            py::arg("associations"), py::arg("magnitude"), py::arg("visit_order"), py::arg("focal_box"),
            py::arg("error_pedestal") = 0.0)
        .def_property_readonly("kind", [](PhotometryModel const& p) { return kindName(p.kind()); })
        .def_property_readonly("is_magnitude", &PhotometryModel::isMagnitude)
        .def_property_readonly("is_constrained", &PhotometryModel::isConstrained)
        .def_property_readonly("n_ccd", &PhotometryModel::nCcd)
        .def_property_readonly("focal_box", &PhotometryModel::focalBox)
        .def_property_readonly("error_pedestal", &PhotometryModel::errorPedestal)
        .def_property_readonly("error_frozen", &PhotometryModel::errorFrozen)
        .def_property(
            "params", [](PhotometryModel const& p) { return asArray(p.params()); },
            [](PhotometryModel& p, DArr v) {
                if (v.ndim() != 1 || std::size_t(v.shape(0)) != p.params().size())
                    throw py::value_error("params: expected " + std::to_string(p.params().size()) + " values");
                std::copy(v.data(), v.data() + v.shape(0), p.params().begin());
            })
        .def_property_readonly("error_params", [](PhotometryModel const& p) { return asArray(p.errorParams()); })
        .def("freeze_error_transform", &PhotometryModel::freezeErrorTransform)
        .def("block_arrays",
             [](PhotometryModel const& p) {
                 std::vector<std::int64_t> kind, id, order, off, size, fixed;
                 for (auto const& b : p.blocks()) {
                     kind.push_back(b.kind);
                     id.push_back(b.id);
                     order.push_back(b.order);
                     off.push_back(b.offset);
                     size.push_back(b.size);
                     fixed.push_back(b.fixed ? 1 : 0);
                 }
                 py::dict d;
                 d["kind"] = asArray(kind);
                 d["id"] = asArray(id);
                 d["order"] = asArray(order);
                 d["offset"] = asArray(off);
                 d["size"] = asArray(size);
                 d["fixed"] = asArray(fixed);
                 return d;
             })
        .def("ccd_blocks",
             [](PhotometryModel const& p) {
                 py::array_t<std::int64_t> out({py::ssize_t(p.nCcd()), py::ssize_t(2)});
                 auto r = out.mutable_unchecked<2>();
                 for (std::size_t c = 0; c < p.nCcd(); ++c) {
                     r(py::ssize_t(c), 0) = p.ccdBlocks()[c][0];
                     r(py::ssize_t(c), 1) = p.ccdBlocks()[c][1];
                 }
                 return out;
             })
        .def(
            "calibration",
            [](PhotometryModel const& p, std::size_t ccd, DArr x, DArr y) {
                if (x.ndim() != 1 || y.ndim() != 1 || x.shape(0) != y.shape(0))
                    throw py::value_error("calibration: x and y must be 1-D arrays of the same length");
                if (ccd >= p.nCcd()) throw py::index_error("calibration: CcdImage index out of range");
                py::array_t<double> out(x.shape(0));
                for (py::ssize_t i = 0; i < x.shape(0); ++i)
                    out.mutable_data()[i] = p.calibration(ccd, x.data()[i], y.data()[i]);
                return out;
            },
            py::arg("ccd"), py::arg("x"), py::arg("y"), "Calibration (nJy per count) at pixel positions")
        .def(
            "validate",
            [](PhotometryModel const& p, std::int64_t ndof) {
                std::string msg;
                return p.validate(ndof, msg);
            },
            py::arg("ndof"))
        .def(
            "validation_error",
            [](PhotometryModel const& p, std::int64_t ndof) {
                std::string msg;
                p.validate(ndof, msg);
                return msg;
            },
            py::arg("ndof"), "Why validate(ndof) fails ('' when valid)");

    py::class_<PhotometryFitter> fitterClass(m, "PhotometryFitter");
    defineFitterMethods(fitterClass
        .def(py::init([](Associations& a, PhotometryModel& model, std::string const& solver, bool allPerPass) {
                 PhotometryFitterOptions o;
                 o.solver = parseSolver(solver);
                 o.removeAllOutliersPerPass = allPerPass;
                 return std::make_unique<PhotometryFitter>(a, model, o);
             }),
             py::arg("associations"), py::arg("model"), py::arg("solver") = "schur",
             py::arg("remove_all_outliers_per_pass") = false, py::keep_alive<1, 2>(), py::keep_alive<1, 3>()))
        .def_property(
            "solver", [](PhotometryFitter const& f) { return f.solverKind() == SolverKind::Schur ? "schur" : "sparse"; },
            [](PhotometryFitter& f, std::string const& s) { f.setSolverKind(parseSolver(s)); })
        .def_property_readonly("n_total", &PhotometryFitter::nTotal)
        .def_property_readonly("n_model_fit", &PhotometryFitter::nModelFit)
        .def_property_readonly("meas_outliers_total", &PhotometryFitter::measOutliersTotal)
        .def_property_readonly("ref_outliers_total", &PhotometryFitter::refOutliersTotal)
        .def_property_readonly("last_error", &PhotometryFitter::lastError)
        .def("take_log", [](PhotometryFitter& f) { return takeLog(f.log()); });
}

}  // namespace diffcal::bindings
