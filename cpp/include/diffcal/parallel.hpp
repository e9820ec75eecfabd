// Minimal deterministic parallelism for the core.
//
// Work is split into a fixed number of tasks that does not depend on the thread count; each task
// writes its own partial result and callers combine partials in task order. That keeps every
// floating-point result bit-identical whatever the number of threads.
#pragma once

#include <cstddef>
#include <functional>

namespace diffcal {

/// Number of worker threads used by parallelFor (>= 1). Default: the DIFFCAL_NUM_THREADS
/// environment variable if set, else std::thread::hardware_concurrency().
int getNumThreads();

/// Set the number of worker threads; n <= 0 restores the default.
void setNumThreads(int n);

/// Run body(i) for i in [0, nTasks) on up to getNumThreads() threads (dynamic scheduling).
/// The first exception thrown by any task is rethrown in the caller after all threads join.
void parallelFor(std::ptrdiff_t nTasks, std::function<void(std::ptrdiff_t)> const& body);

/// Most tasks a fixed work split uses (results never depend on the split, only speed does).
constexpr std::ptrdiff_t kMaxSplitTasks = 64;

/// How many tasks to split n independent items into: up to kMaxSplitTasks when running in
/// parallel, else one (a serial caller, e.g. one cell of a parallel cell mapper, then sets up
/// per-task scratch once).
inline std::ptrdiff_t taskCount(std::ptrdiff_t n, bool parallel) {
    if (n <= 0) return 0;
    return (parallel && getNumThreads() > 1) ? (n < kMaxSplitTasks ? n : kMaxSplitTasks) : 1;
}

/// body(i) for i in [0, n): on the worker pool when `parallel` (and more than one thread), else
/// in order on the calling thread.
inline void forTasks(std::ptrdiff_t n, bool parallel, std::function<void(std::ptrdiff_t)> const& body) {
    if (!parallel || n <= 1 || getNumThreads() <= 1) {
        for (std::ptrdiff_t i = 0; i < n; ++i) body(i);
    } else {
        parallelFor(n, body);
    }
}

}  // namespace diffcal
