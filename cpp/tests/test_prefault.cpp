#include <doctest/doctest.h>

#include <cstdint>
#include <memory>
#include <numeric>
#include <vector>

#include "diffcal/prefault.hpp"

using diffcal::BackgroundPrefault;

TEST_CASE("BackgroundPrefault maps pages without changing their contents, also under concurrent writes") {
    std::size_t const n = std::size_t(1) << 22;  // 32 MiB of doubles, fresh pages
    std::unique_ptr<double[]> fresh(new double[n]);
    std::vector<std::int32_t> written(std::size_t(1) << 20);
    std::iota(written.begin(), written.end(), 0);
    BackgroundPrefault pf({{fresh.get(), n * sizeof(double)}, {written.data(), written.size() * sizeof(std::int32_t)}});
    for (std::size_t i = 0; i < n; i += 509) fresh[i] = double(i);  // races with the population: allowed
    pf.join();
    pf.join();
    bool same = true;
    for (std::size_t i = 0; i < n; i += 509) same = same && fresh[i] == double(i);
    CHECK(same);
    for (std::size_t i = 0; i < written.size(); ++i) same = same && written[i] == std::int32_t(i);
    CHECK(same);
    if (BackgroundPrefault::supported()) {
        CHECK(pf.populatedBytes() > 0);
        CHECK(pf.populatedBytes() <= n * sizeof(double) + written.size() * sizeof(std::int32_t));
    } else {
        CHECK(pf.populatedBytes() == 0);
    }
    // degenerate regions: nothing to do
    BackgroundPrefault none({});
    BackgroundPrefault tiny({{fresh.get(), 10}});
    tiny.join();
    CHECK(tiny.populatedBytes() == 0);
}
