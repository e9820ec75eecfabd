#include "diffcal/build_info.hpp"

#include <Eigen/Core>
#include <thread>

#ifndef DIFFCAL_VERSION
#define DIFFCAL_VERSION "unknown"
#endif
#ifndef DIFFCAL_BUILD_TYPE
#define DIFFCAL_BUILD_TYPE "unknown"
#endif
#ifndef DIFFCAL_BUILD_FLAGS
#define DIFFCAL_BUILD_FLAGS ""
#endif
#ifndef DIFFCAL_ISA
#define DIFFCAL_ISA "baseline"
#endif

namespace diffcal {

namespace {

std::string compilerString() {
#if defined(__clang__)
    return "clang " + std::to_string(__clang_major__) + "." + std::to_string(__clang_minor__) + "." +
           std::to_string(__clang_patchlevel__);
#elif defined(__GNUC__)
    return "gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
           std::to_string(__GNUC_PATCHLEVEL__);
#else
    return "unknown";
#endif
}

}  // namespace

BuildInfo buildInfo() {
    BuildInfo info;
    info.version = DIFFCAL_VERSION;
    info.eigenVersion = std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
                        std::to_string(EIGEN_MINOR_VERSION);
    info.compiler = compilerString();
    info.buildType = DIFFCAL_BUILD_TYPE;
    info.flags = DIFFCAL_BUILD_FLAGS;
    info.simd = Eigen::SimdInstructionSetsInUse();
    info.isa = DIFFCAL_ISA;
    info.cxxStandard = static_cast<int>(__cplusplus);
    info.hardwareThreads = static_cast<int>(std::thread::hardware_concurrency());
    return info;
}

}  // namespace diffcal
