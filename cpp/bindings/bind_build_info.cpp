#include <pybind11/pybind11.h>

#include "diffcal/build_info.hpp"
#include "diffcal/parallel.hpp"

namespace py = pybind11;

namespace diffcal::bindings {

void bindBuildInfo(py::module_& m) {
    m.def(
        "build_info",
        []() {
            BuildInfo const info = buildInfo();
            py::dict d;
            d["version"] = info.version;
            d["eigen_version"] = info.eigenVersion;
            d["compiler"] = info.compiler;
            d["build_type"] = info.buildType;
            d["flags"] = info.flags;
            d["simd"] = info.simd;
            d["isa"] = info.isa;
            d["cxx_standard"] = info.cxxStandard;
            d["hardware_threads"] = info.hardwareThreads;
            d["num_threads"] = getNumThreads();
            return d;
        },
        "Build facts of the compiled core: versions, compiler, flags, SIMD, instruction-set level (isa), thread counts.");
    m.def("get_num_threads", &getNumThreads, "Number of worker threads the core uses.");
    m.def("set_num_threads", &setNumThreads, py::arg("n"),
          "Set the number of worker threads (n <= 0 restores the default).");
}

}  // namespace diffcal::bindings
