// Facts about how this copy of the core was built, for `diffcal info` and bug reports.
#pragma once

#include <string>

namespace diffcal {

struct BuildInfo {
    std::string version;       // diffcal version
    std::string eigenVersion;  // e.g. "3.4.1"
    std::string compiler;      // compiler id and version
    std::string buildType;     // CMake build type
    std::string flags;         // optimisation / arch / sanitizer flags
    std::string simd;          // SIMD instruction sets Eigen vectorises with
    std::string isa;           // instruction-set level built for: baseline, x86-64-v3 or native
    int cxxStandard = 0;       // value of __cplusplus
    int hardwareThreads = 0;   // std::thread::hardware_concurrency()
};

BuildInfo buildInfo();

}  // namespace diffcal
