// Mapping fresh output memory ahead of its first write, on a background thread.
//
// A new numpy array of hundreds of MiB is backed by pages the kernel maps and zero-fills on first touch;
// for a memory-bound pass (the map-reduce stitch) that fault-and-zero work costs as much as the pass. When the
// caller has other (single-threaded) work to do before the pass, a background thread can take the faults
// on an otherwise idle core. MADV_POPULATE_WRITE (Linux >= 5.14) maps the pages as a write would, without
// changing any byte: the background thread never races with writers, and on other systems it is a no-op.
#pragma once

#include <cstddef>
#include <thread>
#include <utility>
#include <vector>

namespace diffcal {

class BackgroundPrefault {
public:
    /// Start populating the page-aligned interior of every (pointer, bytes) region.
    explicit BackgroundPrefault(std::vector<std::pair<void*, std::size_t>> regions);
    ~BackgroundPrefault();
    BackgroundPrefault(BackgroundPrefault const&) = delete;
    BackgroundPrefault& operator=(BackgroundPrefault const&) = delete;

    /// Wait for the thread (idempotent).
    void join();
    /// Bytes the kernel populated (after join); 0 where unsupported.
    std::size_t populatedBytes() const { return _populated; }
    /// Whether this system supports populating (MADV_POPULATE_WRITE known at build time).
    static bool supported();

private:
    std::thread _thread;
    std::size_t _populated = 0;
};

}  // namespace diffcal
