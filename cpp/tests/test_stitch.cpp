#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "diffcal/grid.hpp"
#include "diffcal/mapreduce.hpp"
#include "diffcal/parallel.hpp"
#include "diffcal/stitch.hpp"

using namespace diffcal;

namespace {

template <typename T>
struct Owned {
    IntBox bbox;
    std::vector<T> image, variance;
    std::vector<std::int32_t> mask;
    explicit Owned(IntBox b, T img = 0, T var = 0, std::int32_t m = 0)
        : bbox(b),
          image(std::size_t(b.area()), img),
          variance(std::size_t(b.area()), var),
          mask(std::size_t(b.area()), m) {}
    T& im(std::int64_t x, std::int64_t y) { return image[std::size_t((y - bbox.minY) * bbox.width() + x - bbox.minX)]; }
    T& va(std::int64_t x, std::int64_t y) { return variance[std::size_t((y - bbox.minY) * bbox.width() + x - bbox.minX)]; }
    std::int32_t& ma(std::int64_t x, std::int64_t y) {
        return mask[std::size_t((y - bbox.minY) * bbox.width() + x - bbox.minX)];
    }
    MutablePlanes<T> planes() {
        auto h = bbox.height(), w = bbox.width();
        return MutablePlanes<T>{bbox, ImageView<T>::contiguous(image.data(), h, w),
                                ImageView<std::int32_t>::contiguous(mask.data(), h, w),
                                ImageView<T>::contiguous(variance.data(), h, w)};
    }
    ConstPlanes<T> cplanes() { return planes().asConst(); }
};

/// v[i] = value when v has an element i (random patches can be a single pixel).
template <typename T>
void setIf(std::vector<T>& v, std::size_t i, T value) {
    if (i < v.size()) v[i] = value;
}

template <typename T>
bool bitEqual(std::vector<T> const& a, std::vector<T> const& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

constexpr std::int32_t kBad = 1 << 9;
float const kNaN = std::numeric_limits<float>::quiet_NaN();
float const kInf = std::numeric_limits<float>::infinity();

}  // namespace

TEST_CASE("average: overlaps, NaN contributions, zero weight, masks") {
    IntBox const out(10, 20, 15, 21);  // 6 x 2
    Owned<float> a(IntBox(10, 20, 12, 21), 1.0f, 2.0f, 1);
    Owned<float> b(IntBox(12, 20, 13, 21), 3.0f, 4.0f, 2);
    b.im(12, 20) = kNaN;  // invalid: no contribution, but its mask bit still ORs
    Owned<float> o(out);
    Owned<float> in(out, 0, 0, 1 << 4);  // input mask bit 4 everywhere
    std::vector<ConstPlanes<float>> patches{a.cplanes(), b.cplanes()};
    StitchStats st = stitch<float>(patches, in.cplanes().mask, o.planes(), ReduceOperation::Average, kBad);
    CHECK(o.im(10, 20) == 1.0f);
    CHECK(o.va(10, 20) == 2.0f);
    CHECK(o.ma(10, 20) == (1 | 16));
    CHECK(o.im(12, 20) == 1.0f);  // only a is valid there
    CHECK(o.ma(12, 20) == (1 | 2 | 16));
    CHECK(o.im(12, 21) == 2.0f);  // (1 + 3) / 2
    CHECK(o.va(12, 21) == 3.0f);  // (2 + 4) / 2: divided by N, not N^2
    CHECK(o.im(13, 21) == 3.0f);
    CHECK(std::isnan(o.im(14, 20)));
    CHECK(std::isnan(o.va(15, 21)));
    CHECK(o.ma(15, 21) == (16 | kBad));
    CHECK(st.nPixels == 12);
    CHECK(st.nZeroWeight == 4);
    CHECK(st.nFlagged == 4);
    CHECK(st.maxWeight == 2);
    CHECK(st.minWeight == 0);
    CHECK(st.sumWeight == 6 + 4 - 1);
}

TEST_CASE("copy: last writer wins, NaN start, invalid pixels flagged") {
    IntBox const out(0, 0, 3, 0);
    Owned<double> a(IntBox(0, 0, 2, 0), 1.0, 1.0);
    Owned<double> b(IntBox(1, 0, 2, 0), 5.0, 7.0);
    b.va(2, 0) = std::numeric_limits<double>::quiet_NaN();
    Owned<double> o(out);
    std::vector<ConstPlanes<double>> patches{a.cplanes(), b.cplanes()};
    StitchStats st = stitch<double>(patches, {}, o.planes(), ReduceOperation::Copy, kBad);
    CHECK(o.im(0, 0) == 1.0);
    CHECK(o.im(1, 0) == 5.0);
    CHECK(o.va(1, 0) == 7.0);
    CHECK(o.im(2, 0) == 1.0);  // b invalid there: a's value stays
    CHECK(std::isnan(o.im(3, 0)));
    CHECK(o.ma(3, 0) == kBad);
    CHECK(o.ma(2, 0) == 0);
    CHECK(st.nFlagged == 1);
}

TEST_CASE("sum: untouched pixels stay 0 and are not flagged") {
    IntBox const out(0, 0, 2, 0);
    Owned<float> a(IntBox(0, 0, 1, 0), 1.5f, 1.0f);
    Owned<float> b(IntBox(1, 0, 1, 0), 2.0f, 3.0f);
    Owned<float> o(out);
    std::vector<ConstPlanes<float>> patches{a.cplanes(), b.cplanes()};
    StitchStats st = stitch<float>(patches, {}, o.planes(), ReduceOperation::Sum, kBad);
    CHECK(o.im(0, 0) == 1.5f);
    CHECK(o.im(1, 0) == 3.5f);
    CHECK(o.va(1, 0) == 4.0f);
    CHECK(o.im(2, 0) == 0.0f);
    CHECK(o.va(2, 0) == 0.0f);
    CHECK(o.ma(2, 0) == 0);
    CHECK(st.nFlagged == 0);
    CHECK(st.nZeroWeight == 1);
}

TEST_CASE("validity is !isnan(image * variance): Inf * 0 invalid, Inf * 1 valid") {
    IntBox const out(0, 0, 1, 0);
    Owned<float> a(out, 1.0f, 1.0f);
    a.im(0, 0) = kInf;
    a.va(0, 0) = 0.0f;
    a.im(1, 0) = kInf;
    a.va(1, 0) = 1.0f;
    Owned<float> o(out);
    std::vector<ConstPlanes<float>> patches{a.cplanes()};
    stitch<float>(patches, {}, o.planes(), ReduceOperation::Average, kBad);
    CHECK(std::isnan(o.im(0, 0)));
    CHECK(o.ma(0, 0) == kBad);
    CHECK(o.im(1, 0) == kInf);
    CHECK(o.ma(1, 0) == 0);
}

TEST_CASE("sums are accumulated in double") {
    IntBox const out(0, 0, 0, 0);
    Owned<float> p1(out, 1e8f, 1.0f), p2(out, 1.0f, 1.0f), p3(out, -1e8f, 1.0f);
    Owned<float> o(out);
    std::vector<ConstPlanes<float>> patches{p1.cplanes(), p2.cplanes(), p3.cplanes()};
    stitch<float>(patches, {}, o.planes(), ReduceOperation::Sum, kBad);
    CHECK(o.im(0, 0) == 1.0f);  // float accumulation would give 0
    stitch<float>(patches, {}, o.planes(), ReduceOperation::Average, kBad);
    CHECK(o.im(0, 0) == static_cast<float>(1.0 / 3.0));
}

TEST_CASE("bad patches throw invalid_argument naming the patch") {
    IntBox const out(0, 0, 9, 9);
    Owned<float> o(out);
    Owned<float> outside(IntBox(5, 5, 10, 6));
    std::vector<ConstPlanes<float>> patches{outside.cplanes()};
    CHECK_THROWS_WITH_AS(stitch<float>(patches, {}, o.planes(), ReduceOperation::Copy, kBad),
                         doctest::Contains("mapper result 0"), std::invalid_argument);
    Owned<float> p(IntBox(0, 0, 3, 3));
    ConstPlanes<float> wrong = p.cplanes();
    wrong.bbox = IntBox(0, 0, 4, 3);
    patches = {wrong};
    CHECK_THROWS_AS(stitch<float>(patches, {}, o.planes(), ReduceOperation::Copy, kBad), std::invalid_argument);
    CHECK_THROWS_AS(parseReduceOperation("none"), std::invalid_argument);
}

namespace {

template <typename T>
std::vector<Owned<T>> randomPatches(IntBox const& out, int n, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<std::int64_t> ux(out.minX, out.maxX), uy(out.minY, out.maxY), us(1, 40);
    std::normal_distribution<double> g(0.0, 1.0);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<Owned<T>> ps;
    for (int i = 0; i < n; ++i) {
        std::int64_t x0 = ux(rng), y0 = uy(rng);
        IntBox b(x0, y0, std::min(out.maxX, x0 + us(rng)), std::min(out.maxY, y0 + us(rng)));
        Owned<T> p(b);
        for (std::size_t k = 0; k < p.image.size(); ++k) {
            p.image[k] = static_cast<T>(g(rng) * 1000.0);
            p.variance[k] = static_cast<T>(u(rng) * 10.0);
            p.mask[k] = std::int32_t(1) << (k % 7);
            if (u(rng) < 0.05) p.image[k] = std::numeric_limits<T>::quiet_NaN();
        }
        ps.push_back(std::move(p));
    }
    return ps;
}

}  // namespace

TEST_CASE("stitch results are bit-identical for any thread count") {
    IntBox const out(-7, 3, 150, 97);
    auto owned = randomPatches<float>(out, 200, 42);
    std::vector<ConstPlanes<float>> patches;
    for (auto& p : owned) patches.push_back(p.cplanes());
    for (auto op : {ReduceOperation::Copy, ReduceOperation::Sum, ReduceOperation::Average}) {
        setNumThreads(1);
        Owned<float> ref(out);
        StitchStats s1 = stitch<float>(patches, {}, ref.planes(), op, kBad);
        for (int threads : {2, 3, 7}) {
            setNumThreads(threads);
            Owned<float> o(out);
            StitchStats s2 = stitch<float>(patches, {}, o.planes(), op, kBad);
            CHECK(bitEqual(o.image, ref.image));
            CHECK(bitEqual(o.variance, ref.variance));
            CHECK(bitEqual(o.mask, ref.mask));
            CHECK(s2.sumWeight == s1.sumWeight);
            CHECK(s2.nFlagged == s1.nFlagged);
        }
    }
    setNumThreads(0);
}

namespace {

struct ThrowingMapper final : CellMapperBase<ThrowingMapper> {
    template <typename T>
    void processT(CellInput<T> const& in, CellOutput<T>&) const {
        if (in.index == 3) throw std::runtime_error("cell 3 failed");
    }
    std::string name() const override { return "ThrowingMapper"; }
};

struct RepointingMapper final : CellMapperBase<RepointingMapper> {
    template <typename T>
    void processT(CellInput<T> const&, CellOutput<T>& out) const {
        out.image.width -= 1;
    }
    std::string name() const override { return "RepointingMapper"; }
};

struct PartialMapper final : CellMapperBase<PartialMapper> {  // writes only the first row of the image
    template <typename T>
    void processT(CellInput<T> const& in, CellOutput<T>& out) const {
        for (std::ptrdiff_t x = 0; x < out.image.width; ++x) {
            out.image(0, x) = in.innerImage()(0, x);
            out.variance(0, x) = 1;
        }
    }
    std::string name() const override { return "PartialMapper"; }
};

template <typename T>
Owned<T> randomInput(IntBox const& bbox, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> g(0.0, 1.0);
    Owned<T> in(bbox);
    for (std::size_t k = 0; k < in.image.size(); ++k) {
        in.image[k] = static_cast<T>(g(rng));
        in.variance[k] = static_cast<T>(1.0 + std::abs(g(rng)));
        in.mask[k] = std::int32_t(k % 5 == 0);
        if (k % 97 == 0) in.image[k] = std::numeric_limits<T>::quiet_NaN();
    }
    return in;
}

}  // namespace

TEST_CASE("identity mapper reproduces the input, map-and-stitch == map + stitch for any thread count") {
    IntBox const bbox(5, -3, 5 + 99, -3 + 76);
    auto input = randomInput<float>(bbox, 7);
    auto const before = input.image;
    GridConfig c;
    c.scaleByFwhm = false;
    c.cellSizeX = 13;
    c.cellSizeY = 9;
    c.borderSizeX = c.borderSizeY = 4;
    Grid g = generateGrid(bbox, c);
    IdentityCellMapper identity;
    AddConstantCellMapper add(5.0);
    for (auto op : {ReduceOperation::Copy, ReduceOperation::Sum, ReduceOperation::Average}) {
        Owned<float> ref(bbox);
        setNumThreads(1);
        {
            // two-step reference: map every cell into its own buffer, then stitch
            std::vector<Owned<float>> cells;
            for (auto const& b : g.inner) cells.emplace_back(b);
            std::vector<MutablePlanes<float>> outs;
            for (auto& cell : cells) outs.push_back(cell.planes());
            mapCells<float>(add, input.cplanes(), g.inner, g.expanded, outs);
            std::vector<ConstPlanes<float>> patches;
            for (auto& cell : cells) patches.push_back(cell.cplanes());
            stitch<float>(patches, input.cplanes().mask, ref.planes(), op, kBad);
        }
        for (int threads : {1, 2, 5}) {
            setNumThreads(threads);
            Owned<float> o(bbox);
            mapAndStitch<float>(add, input.cplanes(), g.inner, g.expanded, o.planes(), op, kBad);
            CHECK(bitEqual(o.image, ref.image));
            CHECK(bitEqual(o.variance, ref.variance));
            CHECK(bitEqual(o.mask, ref.mask));
        }
    }
    for (int threads : {1, 2}) {
        setNumThreads(threads);
        Owned<float> o(bbox);
        StitchStats st =
            mapAndStitch<float>(identity, input.cplanes(), g.inner, g.expanded, o.planes(), ReduceOperation::Average, kBad);
        std::int64_t nNaN = 0;
        for (std::size_t k = 0; k < o.image.size(); ++k) {
            bool const wasNaN = std::isnan(input.image[k]);
            nNaN += wasNaN;
            if (wasNaN) {
                CHECK(std::isnan(o.image[k]));
                CHECK(o.mask[k] == (input.mask[k] | kBad));
            } else {
                CHECK(o.image[k] == input.image[k]);
                CHECK(o.variance[k] == input.variance[k]);
                CHECK(o.mask[k] == input.mask[k]);
            }
        }
        CHECK(st.nFlagged == nNaN);
        CHECK(st.nZeroWeight == nNaN);
    }
    setNumThreads(0);
    CHECK(bitEqual(input.image, before));  // never modified
}

TEST_CASE("native mapper errors") {
    IntBox const bbox(0, 0, 39, 29);
    auto input = randomInput<double>(bbox, 3);
    GridConfig c;
    c.scaleByFwhm = false;
    Grid g = generateGrid(bbox, c);
    REQUIRE(g.inner.size() > 3);
    Owned<double> o(bbox);
    CHECK_THROWS_WITH_AS(mapAndStitch<double>(ThrowingMapper(), input.cplanes(), g.inner, g.expanded, o.planes(),
                                              ReduceOperation::Average, kBad),
                         "cell 3 failed", std::runtime_error);
    CHECK_THROWS_WITH_AS(mapAndStitch<double>(RepointingMapper(), input.cplanes(), g.inner, g.expanded, o.planes(),
                                              ReduceOperation::Average, kBad),
                         doctest::Contains("replaced its output views"), std::invalid_argument);
    auto inner = g.inner;
    inner.pop_back();
    CHECK_THROWS_WITH_AS(mapAndStitch<double>(IdentityCellMapper(), input.cplanes(), inner, g.expanded, o.planes(),
                                              ReduceOperation::Average, kBad),
                         doctest::Contains("inner boxes"), std::invalid_argument);
    auto expanded = g.expanded;
    expanded[1] = expanded[1].grownBy(1, 1);
    CHECK_THROWS_WITH_AS(mapAndStitch<double>(IdentityCellMapper(), input.cplanes(), g.inner, expanded, o.planes(),
                                              ReduceOperation::Average, kBad),
                         doctest::Contains("cell 1"), std::invalid_argument);
    // a mapper that forgets pixels leaves them NaN (pre-filled) and the reducer flags them
    Owned<double> p(bbox);
    StitchStats st = mapAndStitch<double>(PartialMapper(), input.cplanes(), g.inner, g.expanded, p.planes(),
                                          ReduceOperation::Average, kBad);
    CHECK(st.nZeroWeight > 0);
    CHECK(st.nFlagged == st.nZeroWeight);
}

namespace {

template <typename T>
void checkSimdMatchesScalar(IntBox const& out, unsigned seed) {
    auto owned = randomPatches<T>(out, 150, seed);
    // special values: Inf * 0 (invalid), Inf * 1 (valid), -0.0, huge values
    setIf(owned[0].image, 0, std::numeric_limits<T>::infinity());
    setIf(owned[0].variance, 0, T(0));
    setIf(owned[1].image, 0, -std::numeric_limits<T>::infinity());
    setIf(owned[2].image, 1, T(-0.0));
    setIf(owned[3].image, 2, std::numeric_limits<T>::max());
    std::vector<ConstPlanes<T>> patches;
    for (auto& p : owned) patches.push_back(p.cplanes());
    Owned<T> input(out, 0, 0, 1 << 12);
    for (auto op : {ReduceOperation::Copy, ReduceOperation::Sum, ReduceOperation::Average}) {
        detail::setUseSimd(false);
        Owned<T> scalar(out);
        StitchStats s1 = stitch<T>(patches, input.cplanes().mask, scalar.planes(), op, kBad);
        detail::setUseSimd(true);
        Owned<T> simd(out);
        StitchStats s2 = stitch<T>(patches, input.cplanes().mask, simd.planes(), op, kBad);
        CHECK(bitEqual(scalar.image, simd.image));
        CHECK(bitEqual(scalar.variance, simd.variance));
        CHECK(bitEqual(scalar.mask, simd.mask));
        CHECK(s1.nFlagged == s2.nFlagged);
        CHECK(s1.sumWeight == s2.sumWeight);
        // an output whose rows are not 16-byte aligned (odd width) and a strided output
        Owned<T> wide(IntBox(out.minX, out.minY, out.maxX + 1, out.maxY));
        MutablePlanes<T> view = wide.planes();
        view.bbox = out;
        view.image.width -= 1;
        view.mask.width -= 1;
        view.variance.width -= 1;
        stitch<T>(patches, input.cplanes().mask, view, op, kBad);
        for (std::int64_t y = out.minY; y <= out.maxY; ++y) {
            for (std::int64_t x = out.minX; x <= out.maxX; ++x) {
                T const a = wide.im(x, y), b = simd.im(x, y);
                CHECK(std::memcmp(&a, &b, sizeof(T)) == 0);
                CHECK(wide.ma(x, y) == simd.ma(x, y));
            }
        }
    }
}

}  // namespace

TEST_CASE("SSE2 and scalar kernels give bit-identical results") {
    checkSimdMatchesScalar<float>(IntBox(-7, 3, 150, 60), 11);
    checkSimdMatchesScalar<double>(IntBox(0, 0, 97, 40), 12);
    checkSimdMatchesScalar<float>(IntBox(0, 0, 2, 30), 13);  // narrower than one vector
    detail::setUseSimd(true);
}

namespace {

/// The semantics of stitch(), pixel by pixel, written as plainly as possible.
template <typename T>
void referenceStitch(std::vector<Owned<T>>& patches, Owned<T> const& input, Owned<T>& out, ReduceOperation op) {
    T const nan = std::numeric_limits<T>::quiet_NaN();
    for (std::int64_t y = out.bbox.minY; y <= out.bbox.maxY; ++y) {
        for (std::int64_t x = out.bbox.minX; x <= out.bbox.maxX; ++x) {
            double si = 0.0, sv = 0.0;
            T ci = nan, cv = nan;
            std::int32_t w = 0, m = const_cast<Owned<T>&>(input).ma(x, y);
            for (auto& p : patches) {
                if (x < p.bbox.minX || x > p.bbox.maxX || y < p.bbox.minY || y > p.bbox.maxY) continue;
                m |= p.ma(x, y);
                T const a = p.im(x, y), b = p.va(x, y);
                if (std::isnan(a * b)) continue;
                si += a;
                sv += b;
                ci = a;
                cv = b;
                ++w;
            }
            T img, var;
            bool bad;
            if (op == ReduceOperation::Copy) {
                img = ci;
                var = cv;
                bad = std::isnan(img * var);
            } else {
                img = static_cast<T>(si);
                var = static_cast<T>(sv);
                bad = std::isnan(img * var);
                if (op == ReduceOperation::Average) {
                    if (w == 0) {
                        img = var = nan;
                        bad = true;
                    } else {
                        img = static_cast<T>(si / w);
                        var = static_cast<T>(sv / w);
                    }
                }
            }
            out.im(x, y) = img;
            out.va(x, y) = var;
            out.ma(x, y) = m | (bad ? kBad : 0);
        }
    }
}

template <typename T>
void checkAgainstReference(IntBox const& out, int nPatches, unsigned seed) {
    auto owned = randomPatches<T>(out, nPatches, seed);
    setIf(owned[0].image, 0, std::numeric_limits<T>::infinity());
    setIf(owned[0].variance, 0, T(0));
    setIf(owned[1].image, 0, -std::numeric_limits<T>::infinity());
    setIf(owned[1].image, 1, T(-0.0));
    setIf(owned[2].image, 0, T(-0.0));
    setIf(owned[3].image, 2, std::numeric_limits<T>::max());
    std::vector<ConstPlanes<T>> patches;
    for (auto& p : owned) patches.push_back(p.cplanes());
    Owned<T> input(out, 0, 0, 1 << 12);
    input.ma(out.minX, out.minY) = 1 << 13;
    for (auto op : {ReduceOperation::Copy, ReduceOperation::Sum, ReduceOperation::Average}) {
        Owned<T> expected(out);
        referenceStitch(owned, input, expected, op);
        for (bool simd : {false, true}) {
            detail::setUseSimd(simd);
            Owned<T> got(out);
            stitch<T>(patches, input.cplanes().mask, got.planes(), op, kBad);
            CHECK(bitEqual(got.image, expected.image));
            CHECK(bitEqual(got.variance, expected.variance));
            CHECK(bitEqual(got.mask, expected.mask));
        }
    }
    detail::setUseSimd(true);
}

}  // namespace

TEST_CASE("stitch equals a pixel-by-pixel reference bit for bit (sparse and dense overlaps)") {
    checkAgainstReference<float>(IntBox(-3, 2, 120, 50), 60, 21);   // sparse: gaps, single coverage
    checkAgainstReference<float>(IntBox(0, 0, 60, 30), 300, 22);    // dense: many overlaps
    checkAgainstReference<double>(IntBox(5, 5, 80, 40), 80, 23);
    checkAgainstReference<double>(IntBox(0, 0, 3, 3), 10, 24);
}

namespace {

/// Cells of a regular grid with step `step` and size `size` (size > step: overlaps of size - step
/// columns/rows; size < step: gaps), in the map-reduce order (x outer, y inner), random pixels.
template <typename T>
std::vector<Owned<T>> gridPatches(IntBox const& out, std::int64_t step, std::int64_t size, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> g(0.0, 1.0);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<Owned<T>> ps;
    for (std::int64_t x0 = out.minX; x0 <= out.maxX; x0 += step) {
        for (std::int64_t y0 = out.minY; y0 <= out.maxY; y0 += step) {
            Owned<T> p(IntBox(x0, y0, std::min(out.maxX, x0 + size - 1), std::min(out.maxY, y0 + size - 1)));
            for (std::size_t k = 0; k < p.image.size(); ++k) {
                p.image[k] = static_cast<T>(g(rng) * 100.0);
                p.variance[k] = static_cast<T>(1.0 + u(rng));
                p.mask[k] = std::int32_t(1) << (k % 5);
                if (u(rng) < 0.03) p.variance[k] = std::numeric_limits<T>::quiet_NaN();
            }
            ps.push_back(std::move(p));
        }
    }
    return ps;
}

}  // namespace

TEST_CASE("grid-shaped stitches (one-pixel overlaps, wide overlaps, gaps) equal the pixel-by-pixel reference") {
    // The row sweep is planned once per change of the covering cells and reused for the rows
    // between; overlaps a few columns wide take the per-pixel narrow path, wider ones the
    // accumulators. Cells taller than a band of rows cross band boundaries.
    struct Case {
        IntBox out;
        std::int64_t step, size;
    };
    for (Case const& c : {Case{IntBox(0, 0, 200, 130), 39, 40}, Case{IntBox(-5, 7, 160, 90), 20, 29},
                          Case{IntBox(0, 0, 120, 100), 30, 27}, Case{IntBox(3, 3, 90, 200), 45, 60}}) {
        auto owned = gridPatches<float>(c.out, c.step, c.size, unsigned(c.step * 100 + c.size));
        std::vector<ConstPlanes<float>> patches;
        for (auto& p : owned) patches.push_back(p.cplanes());
        Owned<float> input(c.out, 0, 0, 1 << 12);
        for (auto op : {ReduceOperation::Copy, ReduceOperation::Sum, ReduceOperation::Average}) {
            Owned<float> expected(c.out);
            referenceStitch(owned, input, expected, op);
            for (bool simd : {false, true}) {
                detail::setUseSimd(simd);
                Owned<float> got(c.out);
                StitchStats const st = stitch<float>(patches, input.cplanes().mask, got.planes(), op, kBad);
                CHECK(bitEqual(got.image, expected.image));
                CHECK(bitEqual(got.variance, expected.variance));
                CHECK(bitEqual(got.mask, expected.mask));
                // every pixel is counted once, with its number of valid contributions
                std::int64_t sumWeight = 0, zero = 0;
                for (std::int64_t y = c.out.minY; y <= c.out.maxY; ++y) {
                    for (std::int64_t x = c.out.minX; x <= c.out.maxX; ++x) {
                        std::int32_t w = 0;
                        for (auto& p : owned) {
                            if (x < p.bbox.minX || x > p.bbox.maxX || y < p.bbox.minY || y > p.bbox.maxY) continue;
                            w += !std::isnan(p.im(x, y) * p.va(x, y));
                        }
                        sumWeight += w;
                        zero += (w == 0);
                    }
                }
                CHECK(st.nPixels == c.out.area());
                CHECK(st.sumWeight == sumWeight);
                CHECK(st.nZeroWeight == zero);
            }
        }
    }
    detail::setUseSimd(true);
}
