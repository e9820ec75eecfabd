#include "diffcal/prefault.hpp"

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace diffcal {

bool BackgroundPrefault::supported() {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
    return true;
#else
    return false;
#endif
}

BackgroundPrefault::BackgroundPrefault(std::vector<std::pair<void*, std::size_t>> regions) {
    if (!supported() || regions.empty()) return;
    _thread = std::thread([this, regions = std::move(regions)]() {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
        auto const page = std::uintptr_t(sysconf(_SC_PAGESIZE));
        for (auto const& [ptr, bytes] : regions) {
            auto const a = reinterpret_cast<std::uintptr_t>(ptr);
            std::uintptr_t const begin = (a + page - 1) / page * page, end = (a + bytes) / page * page;
            if (end <= begin) continue;
            // failure (old kernel: EINVAL; memory pressure) only means the writer takes the faults itself
            if (madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE) == 0)
                _populated += end - begin;
        }
#endif
    });
}

void BackgroundPrefault::join() {
    if (_thread.joinable()) _thread.join();
}

BackgroundPrefault::~BackgroundPrefault() { join(); }

}  // namespace diffcal
