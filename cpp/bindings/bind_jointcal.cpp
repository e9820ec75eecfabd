// Bindings of the jointcal core, in the private submodule diffcal._core._jointcal (use diffcal.jointcal).
//
// Inputs are copied into the core's own arrays (the data model owns its catalogs), so array arguments
// accept any float64/int64-convertible array; the Python layer passes float64/int64 arrays already.
// Long calls release the GIL. Log records produced by the core are drained with take_log().
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <stdexcept>

#include "diffcal/jointcal/association.hpp"
#include "diffcal/jointcal/fitter.hpp"
#include "diffcal/jointcal/model.hpp"
#include "diffcal/jointcal/sky.hpp"
#include "fitter_bindings.hpp"

namespace py = pybind11;

namespace diffcal::bindings {

namespace {

using namespace diffcal::jointcal;

using DArr = py::array_t<double, py::array::c_style | py::array::forcecast>;
using IArr = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

template <typename T, typename A>
std::vector<T> toVec(A const& a, char const* name, py::ssize_t n = -1) {
    if (a.ndim() != 1) throw py::value_error(std::string(name) + ": expected a 1-D array");
    if (n >= 0 && a.shape(0) != n)
        throw py::value_error(std::string(name) + ": expected " + std::to_string(n) + " entries, got " +
                              std::to_string(a.shape(0)));
    auto const* p = a.data();
    return std::vector<T>(p, p + a.shape(0));
}

template <typename T>
py::array_t<T> toArray(std::vector<T> const& v) {
    py::array_t<T> out(py::ssize_t(v.size()));
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

py::array_t<std::uint8_t> toArrayU8(std::vector<std::uint8_t> const& v) { return toArray<std::uint8_t>(v); }

py::list drainLog(LogBuffer& log) {
    py::list out;
    for (auto& r : log.take()) out.append(py::make_tuple(r.level, r.message));
    return out;
}

void checkSame(DArr const& a, DArr const& b, char const* what) {
    if (a.ndim() != 1 || b.ndim() != 1 || a.shape(0) != b.shape(0))
        throw py::value_error(std::string(what) + ": x and y must be 1-D arrays of the same length");
}

}  // namespace

void bindJointcal(py::module_& parent) {
    py::module_ m = parent.def_submodule("_jointcal", "jointcal core (private; use diffcal.jointcal)");

    py::class_<TanSipWcs>(m, "TanSipWcs")
        .def(py::init([](std::array<double, 2> crpix, std::array<double, 4> cd, std::array<double, 2> crval,
                         int sipOrder, DArr a, DArr b) {
                 TanSipWcs w;
                 w.crpix = crpix;
                 w.cd = cd;
                 w.crval = crval;
                 w.sipOrder = sipOrder;
                 w.a = std::vector<double>(a.data(), a.data() + a.size());
                 w.b = std::vector<double>(b.data(), b.data() + b.size());
                 w.validate();
                 return w;
             }),
             py::arg("crpix"), py::arg("cd"), py::arg("crval"), py::arg("sip_order"), py::arg("a"), py::arg("b"))
        .def_readonly("crpix", &TanSipWcs::crpix)
        .def_readonly("cd", &TanSipWcs::cd)
        .def_readonly("crval", &TanSipWcs::crval)
        .def_readonly("sip_order", &TanSipWcs::sipOrder)
        .def("pixel_to_sky",
             [](TanSipWcs const& w, DArr x, DArr y) {
                 checkSame(x, y, "pixel_to_sky");
                 py::ssize_t const n = x.shape(0);
                 py::array_t<double> ra(n), dec(n);
                 auto const* px = x.data();
                 auto const* py_ = y.data();
                 auto* pr = ra.mutable_data();
                 auto* pd = dec.mutable_data();
                 {
                     py::gil_scoped_release release;
                     for (py::ssize_t i = 0; i < n; ++i) w.pixelToSky(px[i], py_[i], pr[i], pd[i]);
                 }
                 return py::make_tuple(ra, dec);
             })
        .def("pixel_to_iwc", [](TanSipWcs const& w, DArr x, DArr y) {
            checkSame(x, y, "pixel_to_iwc");
            py::ssize_t const n = x.shape(0);
            py::array_t<double> xi(n), eta(n);
            for (py::ssize_t i = 0; i < n; ++i)
                w.pixelToIwc(x.data()[i], y.data()[i], xi.mutable_data()[i], eta.mutable_data()[i]);
            return py::make_tuple(xi, eta);
        });

    m.def(
        "gnomonic_project",
        [](double ra0, double dec0, DArr ra, DArr dec) {
            checkSame(ra, dec, "gnomonic_project");
            Gnomonic const g(ra0, dec0);
            py::ssize_t const n = ra.shape(0);
            py::array_t<double> xi(n), eta(n);
            double const nan = std::numeric_limits<double>::quiet_NaN();
            for (py::ssize_t i = 0; i < n; ++i) {
                double& x = xi.mutable_data()[i];
                double& y = eta.mutable_data()[i];
                if (!g.project(ra.data()[i], dec.data()[i], x, y)) x = y = nan;
            }
            return py::make_tuple(xi, eta);
        },
        py::arg("ra0"), py::arg("dec0"), py::arg("ra"), py::arg("dec"));
    m.def(
        "gnomonic_deproject",
        [](double ra0, double dec0, DArr xi, DArr eta) {
            checkSame(xi, eta, "gnomonic_deproject");
            Gnomonic const g(ra0, dec0);
            py::ssize_t const n = xi.shape(0);
            py::array_t<double> ra(n), dec(n);
            for (py::ssize_t i = 0; i < n; ++i)
                g.deproject(xi.data()[i], eta.data()[i], ra.mutable_data()[i], dec.mutable_data()[i]);
            return py::make_tuple(ra, dec);
        },
        py::arg("ra0"), py::arg("dec0"), py::arg("xi"), py::arg("eta"));
    m.def(
        "apply_proper_motion",
        [](DArr ra, DArr dec, DArr pmRa, DArr pmDec, DArr dt) {
            py::ssize_t const n = ra.shape(0);
            for (auto const* a : {&dec, &pmRa, &pmDec, &dt})
                if (a->ndim() != 1 || a->shape(0) != n) throw py::value_error("apply_proper_motion: length mismatch");
            py::array_t<double> ro(n), dout(n);
            for (py::ssize_t i = 0; i < n; ++i)
                applyProperMotion(ra.data()[i], dec.data()[i], pmRa.data()[i], pmDec.data()[i], dt.data()[i],
                                  ro.mutable_data()[i], dout.mutable_data()[i]);
            return py::make_tuple(ro, dout);
        },
        py::arg("ra"), py::arg("dec"), py::arg("pm_ra"), py::arg("pm_dec"), py::arg("dt"));

    py::class_<Associations>(m, "Associations")
        .def(py::init([](IArr visit, IArr detector, DArr bbox, std::vector<TanSipWcs> wcs, DArr epoch, DArr bRa,
                         DArr bDec, DArr calibMean, DArr calibErr, DArr pixToFocal, IArr ccd, IArr sourceId, DArr x,
                         DArr y, DArr xErr, DArr yErr, DArr ixx, DArr iyy, DArr ixy, DArr instFlux,
                         DArr instFluxErr) {
                 py::ssize_t const nc = visit.shape(0);
                 if (py::ssize_t(wcs.size()) != nc) throw py::value_error("Associations: one WCS per CcdImage needed");
                 if (bbox.ndim() != 2 || bbox.shape(0) != nc || bbox.shape(1) != 4)
                     throw py::value_error("Associations: bbox must have shape (nCcd, 4)");
                 if (pixToFocal.ndim() != 2 || pixToFocal.shape(0) != nc || pixToFocal.shape(1) != 6)
                     throw py::value_error("Associations: pix_to_focal must have shape (nCcd, 6)");
                 auto vv = toVec<std::int64_t>(visit, "visit");
                 auto dd = toVec<std::int64_t>(detector, "detector", nc);
                 auto ep = toVec<double>(epoch, "epoch", nc);
                 auto br = toVec<double>(bRa, "boresight_ra", nc);
                 auto bd = toVec<double>(bDec, "boresight_dec", nc);
                 auto cm = toVec<double>(calibMean, "calib_mean", nc);
                 auto ce = toVec<double>(calibErr, "calib_err", nc);
                 std::vector<CcdImage> ccds(static_cast<std::size_t>(nc));
                 for (py::ssize_t c = 0; c < nc; ++c) {
                     auto& C = ccds[std::size_t(c)];
                     C.visit = vv[std::size_t(c)];
                     C.detector = dd[std::size_t(c)];
                     for (int i = 0; i < 4; ++i) C.bbox[std::size_t(i)] = bbox.at(c, i);
                     C.wcs = wcs[std::size_t(c)];
                     C.epoch = ep[std::size_t(c)];
                     C.boresightRa = br[std::size_t(c)];
                     C.boresightDec = bd[std::size_t(c)];
                     C.calibMean = cm[std::size_t(c)];
                     C.calibErr = ce[std::size_t(c)];
                     C.hasFocal = true;
                     for (int i = 0; i < 6; ++i) {
                         C.pixToFocal[std::size_t(i)] = pixToFocal.at(c, i);
                         if (!std::isfinite(C.pixToFocal[std::size_t(i)])) C.hasFocal = false;
                     }
                 }
                 SourceInput s;
                 py::ssize_t const n = x.shape(0);
                 auto c64 = toVec<std::int64_t>(ccd, "ccd", n);
                 s.ccd.assign(c64.begin(), c64.end());
                 s.sourceId = toVec<std::int64_t>(sourceId, "source_id", n);
                 s.x = toVec<double>(x, "x", n);
                 s.y = toVec<double>(y, "y", n);
                 s.xErr = toVec<double>(xErr, "x_err", n);
                 s.yErr = toVec<double>(yErr, "y_err", n);
                 s.ixx = toVec<double>(ixx, "ixx", n);
                 s.iyy = toVec<double>(iyy, "iyy", n);
                 s.ixy = toVec<double>(ixy, "ixy", n);
                 s.instFlux = toVec<double>(instFlux, "inst_flux", n);
                 s.instFluxErr = toVec<double>(instFluxErr, "inst_flux_err", n);
                 py::gil_scoped_release release;
                 return std::make_unique<Associations>(std::move(ccds), s);
             }),
             py::arg("visit"), py::arg("detector"), py::arg("bbox"), py::arg("wcs"), py::arg("epoch"),
             py::arg("boresight_ra"), py::arg("boresight_dec"), py::arg("calib_mean"), py::arg("calib_err"),
             py::arg("pix_to_focal"), py::arg("ccd"), py::arg("source_id"), py::arg("x"), py::arg("y"),
             py::arg("x_err"), py::arg("y_err"), py::arg("ixx"), py::arg("iyy"), py::arg("ixy"), py::arg("inst_flux"),
             py::arg("inst_flux_err"))
        .def_property(
            "epoch", &Associations::epoch, &Associations::setEpoch)
        .def_property_readonly("common_tangent_point",
                               [](Associations const& a) {
                                   return py::make_tuple(a.commonTangentPlane().ra0(), a.commonTangentPlane().dec0());
                               })
        .def("set_common_tangent_point", &Associations::setCommonTangentPoint, py::arg("ra"), py::arg("dec"),
             py::call_guard<py::gil_scoped_release>())
        .def("associate_catalogs", &Associations::associateCatalogs, py::arg("radius_arcsec") = 3.0,
             py::call_guard<py::gil_scoped_release>())
        .def(
            "collect_ref_stars",
            [](Associations& a, IArr id, DArr ra, DArr dec, DArr vx, DArr vy, DArr flux, DArr fluxErr,
               py::object pmRa, py::object pmDec, py::object pmRaErr, py::object pmDecErr, double matchCut) {
                RefInput in;
                py::ssize_t const n = ra.shape(0);
                in.id = toVec<std::int64_t>(id, "id", n);
                in.ra = toVec<double>(ra, "ra", n);
                in.dec = toVec<double>(dec, "dec", n);
                in.vx = toVec<double>(vx, "vx", n);
                in.vy = toVec<double>(vy, "vy", n);
                in.flux = toVec<double>(flux, "flux", n);
                in.fluxErr = toVec<double>(fluxErr, "flux_err", n);
                if (!pmRa.is_none()) {
                    in.pmRa = toVec<double>(pmRa.cast<DArr>(), "pm_ra", n);
                    in.pmDec = toVec<double>(pmDec.cast<DArr>(), "pm_dec", n);
                    in.pmRaErr = toVec<double>(pmRaErr.cast<DArr>(), "pm_ra_err", n);
                    in.pmDecErr = toVec<double>(pmDecErr.cast<DArr>(), "pm_dec_err", n);
                }
                py::gil_scoped_release release;
                return a.collectRefStars(in, matchCut);
            },
            py::arg("id"), py::arg("ra"), py::arg("dec"), py::arg("vx"), py::arg("vy"), py::arg("flux"),
            py::arg("flux_err"), py::arg("pm_ra") = py::none(), py::arg("pm_dec") = py::none(),
            py::arg("pm_ra_err") = py::none(), py::arg("pm_dec_err") = py::none(), py::arg("match_cut_arcsec") = 3.0)
        .def("prepare_fitted_stars", &Associations::prepareFittedStars, py::arg("min_measurements"),
             py::call_guard<py::gil_scoped_release>())
        .def("deproject_fitted_stars", &Associations::deprojectFittedStars)
        .def_property_readonly("fitted_on_sky", &Associations::fittedOnSky)
        .def_property_readonly("n_ccd_images", [](Associations const& a) { return a.ccdImages().size(); })
        .def_property_readonly("n_fitted_stars", &Associations::nFittedStars)
        .def_property_readonly("n_fitted_with_ref", &Associations::nFittedWithRef)
        .def_property_readonly("n_ccd_images_with_data", &Associations::nCcdImagesWithData)
        .def_property_readonly("n_measurements_in_fit", &Associations::nMeasurementsInFit)
        .def_property_readonly("n_ref_stars", [](Associations const& a) { return a.refs().size(); })
        .def("measured_arrays",
             [](Associations const& a) {
                 auto const& m = a.measured();
                 py::dict d;
                 d["ccd"] = toArray<int>(m.ccd);
                 d["source_id"] = toArray<std::int64_t>(m.sourceId);
                 d["input_row"] = toArray<std::int64_t>(m.inputRow);
                 d["x"] = toArray<double>(m.x);
                 d["y"] = toArray<double>(m.y);
                 d["vx"] = toArray<double>(m.vx);
                 d["vy"] = toArray<double>(m.vy);
                 d["vxy"] = toArray<double>(m.vxy);
                 d["inst_flux"] = toArray<double>(m.instFlux);
                 d["inst_flux_err"] = toArray<double>(m.instFluxErr);
                 d["flux"] = toArray<double>(m.flux);
                 d["flux_err"] = toArray<double>(m.fluxErr);
                 d["mag"] = toArray<double>(m.mag);
                 d["mag_err"] = toArray<double>(m.magErr);
                 d["inst_mag"] = toArray<double>(m.instMag);
                 d["inst_mag_err"] = toArray<double>(m.instMagErr);
                 d["x_focal"] = toArray<double>(m.xFocal);
                 d["y_focal"] = toArray<double>(m.yFocal);
                 d["ctp_x"] = toArray<double>(m.ctpX);
                 d["ctp_y"] = toArray<double>(m.ctpY);
                 d["fitted"] = toArray<int>(m.fitted);
                 d["in_fit"] = toArrayU8(m.inFit);
                 d["valid"] = toArrayU8(m.valid);
                 return d;
             })
        .def("fitted_arrays",
             [](Associations const& a) {
                 auto const& f = a.fitted();
                 py::dict d;
                 d["x"] = toArray<double>(f.x);
                 d["y"] = toArray<double>(f.y);
                 d["flux"] = toArray<double>(f.flux);
                 d["mag"] = toArray<double>(f.mag);
                 d["n_measurements"] = toArray<int>(f.nMeasurements);
                 d["ref"] = toArray<int>(f.ref);
                 d["alive"] = toArrayU8(f.alive);
                 return d;
             })
        .def("ref_arrays",
             [](Associations const& a) {
                 auto const& r = a.refs();
                 py::dict d;
                 d["id"] = toArray<std::int64_t>(r.id);
                 d["ra"] = toArray<double>(r.ra);
                 d["dec"] = toArray<double>(r.dec);
                 d["vx"] = toArray<double>(r.vx);
                 d["vy"] = toArray<double>(r.vy);
                 d["flux"] = toArray<double>(r.flux);
                 d["mag"] = toArray<double>(r.mag);
                 d["has_pm"] = toArrayU8(r.hasPm);
                 d["fitted"] = toArray<int>(r.fitted);
                 return d;
             })
        .def("take_log", [](Associations& a) { return drainLog(a.log()); });

    py::class_<AstrometryModel>(m, "AstrometryModel")
        .def_static(
            "make_simple",
            [](Associations& a, int order, bool useInputWcs) {
                py::gil_scoped_release release;
                return AstrometryModel::makeSimple(a, order, useInputWcs, a.log());
            },
            py::arg("associations"), py::arg("order"), py::arg("use_input_wcs"))
        .def_static(
            "make_constrained",
            [](Associations& a, int chipOrder, int visitOrder, double focalScale) {
                py::gil_scoped_release release;
                return AstrometryModel::makeConstrained(a, chipOrder, visitOrder, focalScale, a.log());
            },
            py::arg("associations"), py::arg("chip_order"), py::arg("visit_order"), py::arg("focal_scale") = 0.0)
        .def(py::init([](int kind, IArr bKind, IArr bId, IArr bOrder, IArr bOffset, IArr bSize, IArr bFixed,
                         IArr bFitOrder, IArr mA, IArr mB, IArr mVisit, DArr mx0, DArr my0, DArr msx, DArr msy,
                         IArr visitIds, DArr visitRa, DArr visitDec, double focalScale, DArr params) {
                 py::ssize_t const nb = bKind.shape(0), nm = mA.shape(0);
                 auto k = toVec<std::int64_t>(bKind, "block_kind");
                 auto id = toVec<std::int64_t>(bId, "block_id", nb);
                 auto order = toVec<std::int64_t>(bOrder, "block_order", nb);
                 auto off = toVec<std::int64_t>(bOffset, "block_offset", nb);
                 auto size = toVec<std::int64_t>(bSize, "block_size", nb);
                 auto fixed = toVec<std::int64_t>(bFixed, "block_fixed", nb);
                 auto fitOrder = toVec<std::int64_t>(bFitOrder, "block_fit_order", nb);
                 std::vector<MappingBlock> blocks(static_cast<std::size_t>(nb));
                 for (std::size_t i = 0; i < std::size_t(nb); ++i) {
                     blocks[i].kind = int(k[i]);
                     blocks[i].id = id[i];
                     blocks[i].order = int(order[i]);
                     blocks[i].offset = int(off[i]);
                     blocks[i].size = int(size[i]);
                     blocks[i].fixed = fixed[i] != 0;
                     blocks[i].fitOrder = int(fitOrder[i]);
                 }
                 auto a = toVec<std::int64_t>(mA, "mapping_block_a");
                 auto b = toVec<std::int64_t>(mB, "mapping_block_b", nm);
                 auto v = toVec<std::int64_t>(mVisit, "mapping_visit", nm);
                 auto x0 = toVec<double>(mx0, "x0", nm), y0 = toVec<double>(my0, "y0", nm);
                 auto sx = toVec<double>(msx, "sx", nm), sy = toVec<double>(msy, "sy", nm);
                 std::vector<CcdMapping> maps(static_cast<std::size_t>(nm));
                 for (std::size_t i = 0; i < std::size_t(nm); ++i) {
                     maps[i].blockA = int(a[i]);
                     maps[i].blockB = int(b[i]);
                     maps[i].visitIndex = int(v[i]);
                     maps[i].x0 = x0[i];
                     maps[i].y0 = y0[i];
                     maps[i].sx = sx[i];
                     maps[i].sy = sy[i];
                 }
                 py::ssize_t const nv = visitIds.shape(0);
                 return AstrometryModel(AstrometryModelKind(kind), std::move(blocks), std::move(maps),
                                        toVec<std::int64_t>(visitIds, "visit_ids"),
                                        toVec<double>(visitRa, "visit_ra", nv), toVec<double>(visitDec, "visit_dec", nv),
                                        focalScale, toVec<double>(params, "params"));
             }),
             py::arg("kind"), py::arg("block_kind"), py::arg("block_id"), py::arg("block_order"),
             py::arg("block_offset"), py::arg("block_size"), py::arg("block_fixed"), py::arg("block_fit_order"),
             py::arg("mapping_block_a"),
             py::arg("mapping_block_b"), py::arg("mapping_visit"), py::arg("x0"), py::arg("y0"), py::arg("sx"),
             py::arg("sy"), py::arg("visit_ids"), py::arg("visit_ra"), py::arg("visit_dec"), py::arg("focal_scale"),
             py::arg("params"))
        .def_property_readonly("kind", [](AstrometryModel const& m) { return int(m.kind()); })
        .def_property_readonly("focal_scale", &AstrometryModel::focalScale)
        .def_property_readonly("n_ccd", &AstrometryModel::nCcd)
        .def("has_mapping", &AstrometryModel::hasMapping, py::arg("ccd"))
        .def_property(
            "params", [](AstrometryModel const& m) { return toArray<double>(m.params()); },
            [](AstrometryModel& m, DArr p) {
                auto v = toVec<double>(p, "params", py::ssize_t(m.params().size()));
                m.params() = std::move(v);
            })
        .def("block_arrays",
             [](AstrometryModel const& m) {
                 py::dict d;
                 std::vector<std::int64_t> kind, id, order, off, size, fixed, fitOrder;
                 for (auto const& b : m.blocks()) {
                     fitOrder.push_back(b.effectiveFitOrder());
                     kind.push_back(b.kind);
                     id.push_back(b.id);
                     order.push_back(b.order);
                     off.push_back(b.offset);
                     size.push_back(b.size);
                     fixed.push_back(b.fixed ? 1 : 0);
                 }
                 d["kind"] = toArray(kind);
                 d["id"] = toArray(id);
                 d["order"] = toArray(order);
                 d["offset"] = toArray(off);
                 d["size"] = toArray(size);
                 d["fixed"] = toArray(fixed);
                 d["fit_order"] = toArray(fitOrder);
                 return d;
             })
        .def("mapping_arrays",
             [](AstrometryModel const& m) {
                 py::dict d;
                 std::vector<std::int64_t> a, b, v;
                 std::vector<double> x0, y0, sx, sy;
                 for (auto const& mp : m.mappings()) {
                     a.push_back(mp.blockA);
                     b.push_back(mp.blockB);
                     v.push_back(mp.visitIndex);
                     x0.push_back(mp.x0);
                     y0.push_back(mp.y0);
                     sx.push_back(mp.sx);
                     sy.push_back(mp.sy);
                 }
                 d["block_a"] = toArray(a);
                 d["block_b"] = toArray(b);
                 d["visit"] = toArray(v);
                 d["x0"] = toArray(x0);
                 d["y0"] = toArray(y0);
                 d["sx"] = toArray(sx);
                 d["sy"] = toArray(sy);
                 return d;
             })
        .def("visit_arrays",
             [](AstrometryModel const& m) {
                 std::vector<double> ra, dec;
                 for (auto const& g : m.visitTangentPlanes()) {
                     ra.push_back(g.ra0());
                     dec.push_back(g.dec0());
                 }
                 return py::make_tuple(toArray(m.visitIds()), toArray(ra), toArray(dec));
             })
        .def(
            "transform",
            [](AstrometryModel const& m, std::size_t ccd, DArr x, DArr y) {
                checkSame(x, y, "transform");
                if (ccd >= m.nCcd() || !m.hasMapping(ccd))
                    throw py::value_error("transform: CcdImage " + std::to_string(ccd) + " has no mapping");
                py::ssize_t const n = x.shape(0);
                py::array_t<double> xi(n), eta(n);
                double out[2], jac[4];
                for (py::ssize_t i = 0; i < n; ++i) {
                    m.transform(ccd, m.params().data(), x.data()[i], y.data()[i], out, jac);
                    xi.mutable_data()[i] = out[0];
                    eta.mutable_data()[i] = out[1];
                }
                return py::make_tuple(xi, eta);
            },
            py::arg("ccd"), py::arg("x"), py::arg("y"))
        .def(
            "pixel_to_sky",
            [](AstrometryModel const& m, std::size_t ccd, DArr x, DArr y) {
                checkSame(x, y, "pixel_to_sky");
                if (ccd >= m.nCcd() || !m.hasMapping(ccd))
                    throw py::value_error("pixel_to_sky: CcdImage " + std::to_string(ccd) + " has no mapping");
                py::ssize_t const n = x.shape(0);
                py::array_t<double> ra(n), dec(n);
                auto const& tp = m.visitTangentPlanes()[std::size_t(m.mappings()[ccd].visitIndex)];
                double out[2], jac[4];
                for (py::ssize_t i = 0; i < n; ++i) {
                    m.transform(ccd, m.params().data(), x.data()[i], y.data()[i], out, jac);
                    tp.deproject(out[0], out[1], ra.mutable_data()[i], dec.mutable_data()[i]);
                }
                return py::make_tuple(ra, dec);
            },
            py::arg("ccd"), py::arg("x"), py::arg("y"))
        .def("validate", &AstrometryModel::validate, py::arg("ndof"));

    py::class_<AstrometryFitter> fitterClass(m, "AstrometryFitter");
    defineFitterMethods(fitterClass
        .def(py::init([](Associations& a, AstrometryModel& model, double pedestal, std::string const& solver,
                         bool referencePmSign, bool removeAllOutliersPerPass) {
                 FitterOptions o;
                 o.positionErrorPedestal = pedestal;
                 if (solver == "schur") o.solver = SolverKind::Schur;
                 else if (solver == "sparse") o.solver = SolverKind::Sparse;
                 else throw py::value_error("solver must be 'schur' or 'sparse', got '" + solver + "'");
                 o.referencePmSign = referencePmSign;
                 o.removeAllOutliersPerPass = removeAllOutliersPerPass;
                 return std::make_unique<AstrometryFitter>(a, model, o);
             }),
             py::arg("associations"), py::arg("model"), py::arg("position_error_pedestal"), py::arg("solver"),
             py::arg("reference_pm_sign") = false, py::arg("remove_all_outliers_per_pass") = false,
             py::keep_alive<1, 2>(), py::keep_alive<1, 3>()))
        .def_property(
            "solver",
            [](AstrometryFitter const& f) { return f.solverKind() == SolverKind::Schur ? "schur" : "sparse"; },
            [](AstrometryFitter& f, std::string const& s) {
                if (s == "schur") f.setSolverKind(SolverKind::Schur);
                else if (s == "sparse") f.setSolverKind(SolverKind::Sparse);
                else throw py::value_error("solver must be 'schur' or 'sparse'");
            })
        .def_property_readonly("n_total", &AstrometryFitter::nTotal)
        .def_property_readonly("n_model_fit", &AstrometryFitter::nModelFit)
        .def_property_readonly("meas_outliers_total", &AstrometryFitter::measOutliersTotal)
        .def_property_readonly("ref_outliers_total", &AstrometryFitter::refOutliersTotal)
        .def_property_readonly("last_error", &AstrometryFitter::lastError)
        .def_property_readonly("last_pass_count", &AstrometryFitter::lastPassCount)
        .def("take_log", [](AstrometryFitter& f) { return drainLog(f.log()); });
}

}  // namespace diffcal::bindings
