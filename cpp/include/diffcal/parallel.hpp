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

}  // namespace diffcal
