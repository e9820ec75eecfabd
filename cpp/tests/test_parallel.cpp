#include <doctest/doctest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "diffcal/parallel.hpp"

using namespace diffcal;

TEST_CASE("parallelFor visits every task exactly once") {
    for (int threads : {1, 2, 5}) {
        setNumThreads(threads);
        CHECK(getNumThreads() == threads);
        std::vector<std::atomic<int>> hits(1000);
        parallelFor(1000, [&](std::ptrdiff_t i) { hits[std::size_t(i)]++; });
        for (auto& h : hits) CHECK(h.load() == 1);
    }
    setNumThreads(0);
    CHECK(getNumThreads() >= 1);
}

TEST_CASE("parallelFor with no tasks does nothing") {
    int calls = 0;
    parallelFor(0, [&](std::ptrdiff_t) { ++calls; });
    parallelFor(-3, [&](std::ptrdiff_t) { ++calls; });
    CHECK(calls == 0);
}

TEST_CASE("parallelFor rethrows a task's exception after joining") {
    setNumThreads(2);
    CHECK_THROWS_AS(parallelFor(100,
                                [](std::ptrdiff_t i) {
                                    if (i == 37) throw std::runtime_error("task 37 failed");
                                }),
                    std::runtime_error);
    setNumThreads(0);
}
