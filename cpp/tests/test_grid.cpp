#include <doctest/doctest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "diffcal/grid.hpp"

using namespace diffcal;

namespace {

// FWHM of DoubleGaussianPsf(11, 11, 2.0, 3.7) as diffcal.psf computes it (adaptive moments).
constexpr double kFixtureFwhm = 4.7038;
constexpr double kSigmaToFwhm = 2.3548200450309493;

std::vector<std::vector<int>> coverage(IntBox const& bbox, std::vector<IntBox> const& boxes) {
    std::vector<std::vector<int>> n(std::size_t(bbox.height()), std::vector<int>(std::size_t(bbox.width()), 0));
    for (auto const& b : boxes) {
        for (auto y = b.minY; y <= b.maxY; ++y)
            for (auto x = b.minX; x <= b.maxX; ++x) n[std::size_t(y - bbox.minY)][std::size_t(x - bbox.minX)]++;
    }
    return n;
}

bool fullyCovered(IntBox const& bbox, std::vector<IntBox> const& boxes) {
    for (auto const& row : coverage(bbox, boxes))
        for (int v : row)
            if (v == 0) return false;
    return true;
}

}  // namespace

TEST_CASE("roundHalfEven is numpy.rint") {
    CHECK(roundHalfEven(0.5) == 0.0);
    CHECK(roundHalfEven(1.5) == 2.0);
    CHECK(roundHalfEven(2.5) == 2.0);
    CHECK(roundHalfEven(-0.5) == 0.0);
    CHECK(roundHalfEven(-1.5) == -2.0);
    CHECK(roundHalfEven(23.5) == 24.0);
    CHECK(roundHalfEven(143.5) == 144.0);
    CHECK(roundHalfEven(47.038) == 47.0);
    CHECK(roundHalfEven(2.4999999999999996) == 2.0);
}

TEST_CASE("linspace follows numpy") {
    auto v = linspace(23, 105, 3);
    REQUIRE(v.size() == 3);
    CHECK(v[0] == 23.0);
    CHECK(v[1] == 64.0);
    CHECK(v[2] == 105.0);
    CHECK(linspace(7, 9, 1) == std::vector<double>{7.0});
    CHECK(linspace(0, 1, 0).empty());
    auto w = linspace(20, 4076, 103);
    CHECK(w[1] == 1.0 * ((4076.0 - 20.0) / 102.0) + 20.0);
    CHECK(w.back() == 4076.0);
}

TEST_CASE("worked example: 128x128, sigma-2 PSF, default grid") {
    GridConfig c;
    c.fwhm = kFixtureFwhm;
    IntBox const bbox(0, 0, 127, 127);
    auto s = gridPixelSizes(c);
    CHECK(s.cellSizeX == 47);
    CHECK(s.borderSizeX == 24);
    Grid g = generateGrid(bbox, c);
    REQUIRE(g.inner.size() == 9);
    std::int64_t const x0[3] = {0, 41, 82}, x1[3] = {46, 87, 127};
    std::int64_t const e0[3] = {0, 17, 58}, e1[3] = {70, 111, 127};
    for (int i = 0; i < 9; ++i) {
        int const ix = i / 3, iy = i % 3;  // x outer, y inner
        CHECK(g.inner[i] == IntBox(x0[ix], x0[iy], x1[ix], x1[iy]));
        CHECK(g.expanded[i] == IntBox(e0[ix], e0[iy], e1[ix], e1[iy]));
    }
    CHECK(fullyCovered(bbox, g.inner));
}

TEST_CASE("offsets are relative to the bbox origin") {
    GridConfig c;
    c.fwhm = kFixtureFwhm;
    Grid a = generateGrid(IntBox(0, 0, 127, 127), c);
    Grid b = generateGrid(IntBox(1000, -50, 1127, 77), c);
    REQUIRE(a.inner.size() == b.inner.size());
    for (std::size_t i = 0; i < a.inner.size(); ++i) {
        CHECK(b.inner[i] == a.inner[i].shiftedBy(1000, -50));
        CHECK(b.expanded[i] == a.expanded[i].shiftedBy(1000, -50));
    }
}

TEST_CASE("worked example: spatial decorrelation defaults on 256x256 give one cell") {
    GridConfig c;
    c.cellSizeX = c.cellSizeY = 41;
    c.gridStepX = c.gridStepY = 40;
    c.borderSizeX = c.borderSizeY = 8;
    c.fwhm = 3.3 * kSigmaToFwhm;
    auto s = gridPixelSizes(c);
    CHECK(s.cellSizeX == 319);
    CHECK(s.borderSizeX == 62);
    IntBox const bbox(0, 0, 255, 255);
    Grid g = generateGrid(bbox, c);
    REQUIRE(g.inner.size() == 1);
    CHECK(g.inner[0] == bbox);
    CHECK(g.expanded[0] == bbox);
    c.forceEvenSized = true;  // 256 is even: nothing to do
    g = generateGrid(bbox, c);
    CHECK(g.inner[0] == bbox);
}

TEST_CASE("worked example: 4072x4000 CCD at FWHM 3.5 px with the spatial defaults") {
    GridConfig c;
    c.cellSizeX = c.cellSizeY = 41;
    c.gridStepX = c.gridStepY = 40;
    c.borderSizeX = c.borderSizeY = 8;
    c.fwhm = 3.5;  // 41 * 3.5 = 143.5 exactly -> 144 (ties to even)
    auto s = gridPixelSizes(c);
    CHECK(s.cellSizeX == 144);
    CHECK(s.borderSizeX == 28);
    IntBox const bbox(0, 0, 4071, 3999);
    Grid g = generateGrid(bbox, c);
    CHECK(g.inner.size() == 29 * 28);
    // an interior cell: 144 px inner, 144 + 2 * 28 = 200 px expanded
    IntBox const& mid = g.expanded[14 * 28 + 14];
    CHECK(mid.width() == 200);
    CHECK(mid.height() == 200);
    CHECK(g.inner[14 * 28 + 14].width() == 144);
    CHECK(fullyCovered(bbox, g.inner));
}

TEST_CASE("size mode: cells of gridStep + 1 pixels overlapping by one pixel") {
    GridConfig c;
    c.scaleByFwhm = false;
    c.adjustGridOption = AdjustGridOption::Size;
    c.gridStepX = c.gridStepY = 33;
    c.cellSizeX = c.cellSizeY = 5;  // ignored in size mode
    IntBox const bbox(0, 0, 127, 127);
    Grid g = generateGrid(bbox, c);
    REQUIRE(g.inner.size() == 16);
    std::int64_t const x0[4] = {0, 32, 65, 98}, x1[4] = {32, 65, 98, 127};
    for (int i = 0; i < 4; ++i) CHECK(g.inner[std::size_t(i * 4)] == IntBox(x0[i], 0, x1[i], 32));
    CHECK(fullyCovered(bbox, g.inner));
}

TEST_CASE("none mode uses the given step; gaps when cellSize < gridStep") {
    GridConfig c;
    c.scaleByFwhm = false;
    c.adjustGridOption = AdjustGridOption::None;
    c.cellSizeX = c.cellSizeY = 10;
    c.gridStepX = c.gridStepY = 20;
    IntBox const bbox(0, 0, 99, 99);
    Grid g = generateGrid(bbox, c);
    CHECK(g.inner.size() == 25);
    CHECK(g.inner[0] == IntBox(0, 0, 9, 9));
    CHECK(g.inner[5] == IntBox(20, 0, 29, 9));
    CHECK(!fullyCovered(bbox, g.inner));
    c.cellSizeX = c.cellSizeY = 20;
    CHECK(fullyCovered(bbox, generateGrid(bbox, c).inner));
}

TEST_CASE("spacing mode covers every image for many sizes") {
    for (std::int64_t w : {1, 2, 7, 33, 64, 100, 129}) {
        for (double cell : {1.0, 2.0, 3.0, 10.0, 17.0, 64.0, 200.0}) {
            GridConfig c;
            c.scaleByFwhm = false;
            c.cellSizeX = cell;
            c.cellSizeY = cell + 1;
            c.borderSizeX = c.borderSizeY = 2;
            IntBox const bbox(3, 4, 3 + w - 1, 4 + w + 5);
            Grid g = generateGrid(bbox, c);
            for (std::size_t i = 0; i < g.inner.size(); ++i) {
                CHECK(bbox.contains(g.expanded[i]));
                CHECK(g.expanded[i].contains(g.inner[i]));
            }
            // the area > 1 filter can only drop cells of a 1-pixel-wide image
            if (w > 1) CHECK(fullyCovered(bbox, g.inner));
        }
    }
}

TEST_CASE("explicit centroids: unscaled, truncated sizes, floor of the centre, area filter") {
    GridConfig c;
    c.scaleByFwhm = true;
    c.fwhm = 100.0;  // ignored with explicit centroids
    c.cellSizeX = 10.9;
    c.cellSizeY = 10.2;
    c.borderSizeX = c.borderSizeY = 5.7;
    c.cellCentroidsX = {64.9, 0.0, 128.0, 132.0};
    c.cellCentroidsY = {64.2, 0.0, 128.0, -4.0};
    IntBox const bbox(0, 0, 127, 127);
    Grid g = generateGrid(bbox, c);
    REQUIRE(g.inner.size() == 3);  // the last cell is clipped to the single pixel (127, 0): dropped
    CHECK(g.inner[0] == IntBox(59, 59, 68, 68));
    CHECK(g.expanded[0] == IntBox(54, 54, 73, 73));
    CHECK(g.inner[1] == IntBox(0, 0, 4, 4));
    CHECK(g.inner[2] == IntBox(123, 123, 127, 127));
}

TEST_CASE("explicit centroids: a single-pixel cell is dropped silently") {
    GridConfig c;
    c.cellSizeX = c.cellSizeY = 10;
    c.borderSizeX = c.borderSizeY = 0.5;  // truncates to 0: expanded == inner
    c.cellCentroidsX = {-4.0, 50.0};
    c.cellCentroidsY = {-4.0, 50.0};
    Grid g = generateGrid(IntBox(0, 0, 99, 99), c);
    REQUIRE(g.inner.size() == 1);
    CHECK(g.inner[0] == IntBox(45, 45, 54, 54));
}

TEST_CASE("bad grid parameters throw invalid_argument") {
    IntBox const bbox(0, 0, 99, 99);
    GridConfig c;
    c.fwhm = 4.0;
    GridConfig bad = c;
    bad.cellSizeX = 0.0;
    CHECK_THROWS_AS(generateGrid(bbox, bad), std::invalid_argument);
    bad = c;
    bad.gridStepY = -1.0;
    CHECK_THROWS_AS(generateGrid(bbox, bad), std::invalid_argument);
    bad = c;
    bad.cellSizeX = std::nan("");
    CHECK_THROWS_AS(generateGrid(bbox, bad), std::invalid_argument);
    bad = c;
    bad.fwhm = 0.0;
    CHECK_THROWS_AS(generateGrid(bbox, bad), std::invalid_argument);
    bad.scaleByFwhm = false;  // then the FWHM is not needed
    CHECK(generateGrid(bbox, bad).inner.size() == 121);  // 100 // 10 + 1 = 11 per axis
    bad = c;
    bad.cellSizeX = 0.1;  // 0.4 px rounds to 0
    CHECK_THROWS_WITH_AS(generateGrid(bbox, bad), doctest::Contains("rounds to 0 pixels"), std::invalid_argument);
    bad = c;
    bad.cellCentroidsX = {1.0, 2.0};
    bad.cellCentroidsY = {1.0};
    CHECK_THROWS_WITH_AS(generateGrid(bbox, bad), doctest::Contains("same length"), std::invalid_argument);
    bad.cellCentroidsY = {1.0, std::nan("")};
    CHECK_THROWS_AS(generateGrid(bbox, bad), std::invalid_argument);
    bad.cellCentroidsX = {1.0, 500.0};
    bad.cellCentroidsY = {1.0, 50.0};
    CHECK_THROWS_WITH_AS(generateGrid(bbox, bad), doctest::Contains("does not overlap"), std::invalid_argument);
    bad = c;
    bad.scaleByFwhm = false;
    bad.cellSizeX = bad.cellSizeY = 1e-3;
    CHECK_THROWS_AS(generateGrid(bbox, bad), std::invalid_argument);
    CHECK_THROWS_AS(parseAdjustGridOption("spaced"), std::invalid_argument);
}

TEST_CASE("forceEvenSized makes every box even or throws") {
    GridConfig c;
    c.fwhm = kFixtureFwhm;
    c.forceEvenSized = true;
    IntBox const bbox(0, 0, 127, 127);
    Grid g = generateGrid(bbox, c);
    REQUIRE(g.inner.size() == 9);
    for (std::size_t i = 0; i < g.inner.size(); ++i) {
        CHECK(g.inner[i].width() % 2 == 0);
        CHECK(g.inner[i].height() % 2 == 0);
        CHECK(g.expanded[i].width() % 2 == 0);
        CHECK(g.expanded[i].height() % 2 == 0);
    }
    CHECK(g.inner[0] == IntBox(0, 0, 47, 47));      // 47 wide -> extended right
    CHECK(g.inner[8] == IntBox(82, 82, 127, 127));  // 46 wide already
    CHECK(g.expanded[0] == IntBox(0, 0, 71, 71));
    CHECK(g.expanded[4] == IntBox(17, 17, 112, 112));

    // a box at the right edge extends to the left
    GridConfig e;
    e.scaleByFwhm = false;
    e.cellSizeX = e.cellSizeY = 5;
    e.borderSizeX = e.borderSizeY = 1;
    e.cellCentroidsX = {97.0};
    e.cellCentroidsY = {50.0};
    e.forceEvenSized = true;
    Grid h = generateGrid(IntBox(0, 0, 99, 99), e);
    REQUIRE(h.inner.size() == 1);
    CHECK(h.inner[0] == IntBox(94, 48, 99, 53));  // x: [95, 99] -> right edge -> [94, 99]; y: [48, 52] -> [48, 53]
    CHECK(h.expanded[0] == IntBox(94, 47, 99, 54));

    // a cell spanning an odd-sized image cannot be made even
    GridConfig o;
    o.fwhm = 3.3 * kSigmaToFwhm;
    o.cellSizeX = o.cellSizeY = 41;
    o.borderSizeX = o.borderSizeY = 8;
    o.forceEvenSized = true;
    CHECK_THROWS_AS(generateGrid(IntBox(0, 0, 254, 255), o), std::runtime_error);
}
