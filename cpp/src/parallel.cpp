#include "diffcal/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace diffcal {

namespace {

int defaultThreadCount() {
    if (char const* env = std::getenv("DIFFCAL_NUM_THREADS")) {
        int n = std::atoi(env);
        if (n > 0) return n;
    }
    unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? static_cast<int>(hw) : 1;
}

std::atomic<int> gNumThreads{0};  // 0 = not yet resolved

}  // namespace

int getNumThreads() {
    int n = gNumThreads.load();
    if (n <= 0) {
        n = defaultThreadCount();
        gNumThreads.store(n);
    }
    return n;
}

void setNumThreads(int n) { gNumThreads.store(n > 0 ? n : defaultThreadCount()); }

void parallelFor(std::ptrdiff_t nTasks, std::function<void(std::ptrdiff_t)> const& body) {
    if (nTasks <= 0) return;
    std::ptrdiff_t const nThreads = std::min<std::ptrdiff_t>(getNumThreads(), nTasks);
    if (nThreads <= 1) {
        for (std::ptrdiff_t i = 0; i < nTasks; ++i) body(i);
        return;
    }
    std::atomic<std::ptrdiff_t> next{0};
    std::exception_ptr firstError;
    std::mutex errorMutex;
    auto worker = [&]() {
        for (;;) {
            std::ptrdiff_t i = next.fetch_add(1);
            if (i >= nTasks) return;
            try {
                body(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(errorMutex);
                if (!firstError) firstError = std::current_exception();
                next.store(nTasks);  // stop handing out work
            }
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(static_cast<std::size_t>(nThreads - 1));
    for (std::ptrdiff_t t = 1; t < nThreads; ++t) threads.emplace_back(worker);
    worker();
    for (auto& th : threads) th.join();
    if (firstError) std::rethrow_exception(firstError);
}

}  // namespace diffcal
