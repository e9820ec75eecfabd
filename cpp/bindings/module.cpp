// diffcal._core: thin pybind11 bindings over the pure C++ core. One bind_<topic>.cpp per topic.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace diffcal::bindings {
void bindBuildInfo(py::module_& m);
void bindStatistics(py::module_& m);
void bindDecorrelation(py::module_& m);
void bindMapReduce(py::module_& m);
void bindJointcal(py::module_& m);
void bindJointcalPhotometry(py::module_& m);
}  // namespace diffcal::bindings

PYBIND11_MODULE(_core, m) {
    m.doc() = "diffcal C++ core (Eigen); use the Python API in diffcal.* instead of calling this directly";
    diffcal::bindings::bindBuildInfo(m);
    diffcal::bindings::bindStatistics(m);
    diffcal::bindings::bindMapReduce(m);      // before bindDecorrelation: defines the CellMapper base class
    diffcal::bindings::bindDecorrelation(m);
    diffcal::bindings::bindJointcal(m);
    diffcal::bindings::bindJointcalPhotometry(m);  // adds to _jointcal
}
