#include <doctest/doctest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
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

TEST_CASE("nested parallelFor runs every inner task, serially inside the outer task") {
    setNumThreads(3);
    std::vector<std::atomic<int>> hits(40 * 25);
    parallelFor(40, [&](std::ptrdiff_t i) {
        parallelFor(25, [&](std::ptrdiff_t j) { hits[std::size_t(i * 25 + j)]++; });
    });
    for (auto& h : hits) CHECK(h.load() == 1);
    setNumThreads(0);
}

TEST_CASE("parallelFor from several threads at once, repeatedly, with exceptions in between") {
    setNumThreads(2);
    std::atomic<long> total{0};
    auto caller = [&](int seed) {
        for (int rep = 0; rep < 200; ++rep) {
            parallelFor(17, [&](std::ptrdiff_t i) { total += i + seed; });
            if (rep % 50 == 0) {
                try {
                    parallelFor(9, [](std::ptrdiff_t i) {
                        if (i == 4) throw std::runtime_error("boom");
                    });
                } catch (std::runtime_error const&) {
                }
            }
        }
    };
    std::thread a(caller, 1), b(caller, 2);
    a.join();
    b.join();
    // each caller: 200 regions of sum(0..16) = 136, plus 17 * seed per region
    CHECK(total.load() == 200L * (136 + 17 * 1) + 200L * (136 + 17 * 2));
    setNumThreads(0);
}

TEST_CASE("the pool follows thread-count changes") {
    for (int threads : {4, 1, 3, 2}) {
        setNumThreads(threads);
        std::vector<std::atomic<int>> hits(333);
        parallelFor(333, [&](std::ptrdiff_t i) { hits[std::size_t(i)]++; });
        for (auto& h : hits) CHECK(h.load() == 1);
    }
    setNumThreads(0);
}
