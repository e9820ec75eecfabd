// Internal to statistics.cpp: one pass over an image that gathers, for its candidate pixels
// (finite, unmasked), everything the clipped statistics need when the pass is planned from a
// sample: counts above a few bounds, the moments of a value band, and the values of a few
// narrow value ranges. SSE2 is used for contiguous float32 rows; everything else takes the
// scalar path, which computes the same quantities (sums may differ in the last bits, since
// they are added in another order; results never depend on the thread count).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "diffcal/image_view.hpp"
#include "diffcal/statistics.hpp"
#include "diffcal/parallel.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace diffcal::detail {

/// Count, sum and sum of squares of deviations from a reference value.
struct Moments {
    std::int64_t n = 0;
    double sum = 0.0;    // sum of (v - reference)
    double sumSq = 0.0;  // sum of (v - reference)^2

    Moments& operator+=(Moments const& o) {
        n += o.n;
        sum += o.sum;
        sumSq += o.sumSq;
        return *this;
    }

    /// The same moments taken about `newRef` instead of `ref` (parallel-axis theorem).
    Moments recentred(double ref, double newRef) const {
        double const delta = ref - newRef;
        return Moments{n, sum + double(n) * delta, sumSq + 2.0 * delta * sum + double(n) * delta * delta};
    }
};

/// numpy's "linear" interpolation between the values a (rank k) and b (rank k + 1).
inline double lerp(double a, double b, double t) {
    if (t == 0.0) return a;
    double const diff = b - a;
    return t < 0.5 ? a + diff * t : b - diff * (1.0 - t);
}

/// Mean and unbiased variance of a pass from its moments about `centre`.
inline void finishPass(Moments const& m, double centre, ClippedStatistics& out) {
    out.nUsed = m.n;
    if (m.n == 0) {
        out.mean = out.variance = std::numeric_limits<double>::quiet_NaN();
        return;
    }
    out.mean = centre + m.sum / double(m.n);
    out.variance = m.n > 1 ? (m.sumSq - m.sum * m.sum / double(m.n)) / double(m.n - 1) : std::numeric_limits<double>::quiet_NaN();
}

constexpr int kMaxBounds = 3;
constexpr int kMaxRanges = 5;

/// What one scan gathers. Ranges and the core band are half-open [lo, hi).
template <typename T>
struct ScanPlan {
    int nBounds = 0;
    T bound[kMaxBounds] = {};  // count candidates with v >= bound[i]
    T coreLo = T(1), coreHi = T(0);  // empty unless coreLo < coreHi
    double ref = 0.0;                // moments of the core band are taken about ref
    int nRanges = 0;
    T rangeLo[kMaxRanges] = {}, rangeHi[kMaxRanges] = {};  // count candidates in these ranges
    bool collect[kMaxRanges] = {true, true, true, true, true};  // ... and keep their values
};

template <typename T>
struct ScanResult {
    std::int64_t nCandidates = 0;
    std::int64_t atLeast[kMaxBounds] = {};
    Moments core;
    std::int64_t rangeCount[kMaxRanges] = {};
    std::vector<T> range[kMaxRanges];  // values, for ranges with plan.collect set
};

/// Force the scalar path (tests compare it with the SIMD path).
inline bool& forceScalarScan() {
    static bool force = false;
    return force;
}

namespace scan {

template <typename T>
inline void scalarOne(T v, ScanPlan<T> const& plan, ScanResult<T>& out) {
    ++out.nCandidates;
    for (int b = 0; b < plan.nBounds; ++b) out.atLeast[b] += v >= plan.bound[b];
    if (v >= plan.coreLo && v < plan.coreHi) {
        double const d = double(v) - plan.ref;
        ++out.core.n;
        out.core.sum += d;
        out.core.sumSq += d * d;
    }
    for (int r = 0; r < plan.nRanges; ++r) {
        if (v >= plan.rangeLo[r] && v < plan.rangeHi[r]) {
            ++out.rangeCount[r];
            if (plan.collect[r]) out.range[r].push_back(v);
        }
    }
}

/// Scalar scan of pixels [x0, x1) of one row.
template <typename T>
void scalarRow(T const* row, std::ptrdiff_t vs, std::int32_t const* mrow, std::ptrdiff_t ms, std::int32_t andMask,
               std::ptrdiff_t x0, std::ptrdiff_t x1, ScanPlan<T> const& plan, ScanResult<T>& out) {
    for (std::ptrdiff_t x = x0; x < x1; ++x) {
        T const v = row[x * vs];
        if (!std::isfinite(v)) continue;
        if (mrow != nullptr && (mrow[x * ms] & andMask) != 0) continue;
        scalarOne(v, plan, out);
    }
}

#if defined(__SSE2__)
/// SSE2 scan of a contiguous float32 row (mask row contiguous too, or null). Non-candidates are
/// replaced by NaN, which fails every comparison, so one code path serves all pixels.
inline std::ptrdiff_t sse2Row(float const* row, std::int32_t const* mrow, std::int32_t andMask, std::ptrdiff_t width,
                              ScanPlan<float> const& plan, ScanResult<float>& out) {
    __m128 const inf = _mm_set1_ps(std::numeric_limits<float>::infinity());
    __m128 const nan = _mm_set1_ps(std::numeric_limits<float>::quiet_NaN());
    __m128 const absMask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    __m128i const andv = _mm_set1_epi32(andMask);
    __m128i const zero = _mm_setzero_si128();
    __m128 bound[kMaxBounds];
    for (int b = 0; b < kMaxBounds; ++b) bound[b] = _mm_set1_ps(b < plan.nBounds ? plan.bound[b] : std::numeric_limits<float>::infinity());
    __m128 const coreLo = _mm_set1_ps(plan.coreLo), coreHi = _mm_set1_ps(plan.coreHi);
    __m128d const ref = _mm_set1_pd(plan.ref);
    __m128 rLo[kMaxRanges], rHi[kMaxRanges];
    for (int r = 0; r < plan.nRanges; ++r) {
        rLo[r] = _mm_set1_ps(plan.rangeLo[r]);
        rHi[r] = _mm_set1_ps(plan.rangeHi[r]);
    }
    __m128i cnt = zero, coreCnt = zero, atLeast[kMaxBounds] = {zero, zero, zero};
    __m128i rangeCnt[kMaxRanges] = {zero, zero, zero, zero, zero};
    __m128d s1a = _mm_setzero_pd(), s1b = s1a, s2a = s1a, s2b = s1a;
    std::ptrdiff_t x = 0;
    for (; x + 4 <= width; x += 4) {
        __m128 const f = _mm_loadu_ps(row + x);
        __m128 ok = _mm_cmplt_ps(_mm_and_ps(f, absMask), inf);  // finite
        if (mrow != nullptr) {
            __m128i const m = _mm_loadu_si128(reinterpret_cast<__m128i const*>(mrow + x));
            ok = _mm_and_ps(ok, _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(m, andv), zero)));
        }
        __m128 const v = _mm_or_ps(_mm_and_ps(ok, f), _mm_andnot_ps(ok, nan));
        cnt = _mm_sub_epi32(cnt, _mm_castps_si128(ok));
        for (int b = 0; b < kMaxBounds; ++b)
            atLeast[b] = _mm_sub_epi32(atLeast[b], _mm_castps_si128(_mm_cmpge_ps(v, bound[b])));
        __m128 const inCore = _mm_and_ps(_mm_cmpge_ps(v, coreLo), _mm_cmplt_ps(v, coreHi));
        coreCnt = _mm_sub_epi32(coreCnt, _mm_castps_si128(inCore));
        __m128d const d0 = _mm_and_pd(_mm_sub_pd(_mm_cvtps_pd(v), ref), _mm_castps_pd(_mm_unpacklo_ps(inCore, inCore)));
        __m128d const d1 = _mm_and_pd(_mm_sub_pd(_mm_cvtps_pd(_mm_movehl_ps(v, v)), ref),
                                      _mm_castps_pd(_mm_unpackhi_ps(inCore, inCore)));
        s1a = _mm_add_pd(s1a, d0);
        s1b = _mm_add_pd(s1b, d1);
        s2a = _mm_add_pd(s2a, _mm_mul_pd(d0, d0));
        s2b = _mm_add_pd(s2b, _mm_mul_pd(d1, d1));
        __m128 any = _mm_setzero_ps();  // lanes with a value to keep
        for (int r = 0; r < plan.nRanges; ++r) {
            __m128 const in = _mm_and_ps(_mm_cmpge_ps(v, rLo[r]), _mm_cmplt_ps(v, rHi[r]));
            rangeCnt[r] = _mm_sub_epi32(rangeCnt[r], _mm_castps_si128(in));
            if (plan.collect[r]) any = _mm_or_ps(any, in);
        }
        int const hits = _mm_movemask_ps(any);
        if (hits != 0) {
            alignas(16) float lanes[4];
            _mm_store_ps(lanes, v);
            for (int l = 0; l < 4; ++l) {
                if ((hits >> l & 1) == 0) continue;
                for (int r = 0; r < plan.nRanges; ++r)
                    if (plan.collect[r] && lanes[l] >= plan.rangeLo[r] && lanes[l] < plan.rangeHi[r])
                        out.range[r].push_back(lanes[l]);
            }
        }
    }
    alignas(16) std::int32_t lanes[4];
    auto laneSum = [&](__m128i v) {
        _mm_store_si128(reinterpret_cast<__m128i*>(lanes), v);
        return std::int64_t(lanes[0]) + lanes[1] + lanes[2] + lanes[3];
    };
    out.nCandidates += laneSum(cnt);
    for (int b = 0; b < plan.nBounds; ++b) out.atLeast[b] += laneSum(atLeast[b]);
    out.core.n += laneSum(coreCnt);
    for (int r = 0; r < plan.nRanges; ++r) out.rangeCount[r] += laneSum(rangeCnt[r]);
    alignas(16) double a[2], c[2];
    _mm_store_pd(a, s1a);
    _mm_store_pd(c, s1b);
    out.core.sum += (a[0] + a[1]) + (c[0] + c[1]);
    _mm_store_pd(a, s2a);
    _mm_store_pd(c, s2b);
    out.core.sumSq += (a[0] + a[1]) + (c[0] + c[1]);
    return x;
}
#endif

/// Scan rows [y0, y1).
template <typename T>
void rows(ImageView<const T> values, ImageView<const std::int32_t> mask, std::int32_t andMask, std::ptrdiff_t y0,
          std::ptrdiff_t y1, ScanPlan<T> const& plan, ScanResult<T>& out) {
    bool const useMask = mask.data != nullptr && andMask != 0;
    for (std::ptrdiff_t y = y0; y < y1; ++y) {
        T const* row = values.row(y);
        std::int32_t const* mrow = useMask ? mask.row(y) : nullptr;
        std::ptrdiff_t x = 0;
#if defined(__SSE2__)
        if constexpr (std::is_same_v<T, float>) {
            if (!forceScalarScan() && values.colStride == 1 && (mrow == nullptr || mask.colStride == 1)) {
                x = sse2Row(row, mrow, andMask, values.width, plan, out);
            }
        }
#endif
        scalarRow(row, values.colStride, mrow, mask.colStride, andMask, x, values.width, plan, out);
    }
}

}  // namespace scan

/// Run `plan` over the image. Rows are split into fixed chunks (about 64k pixels, independent of
/// the thread count) scanned in parallel and combined in order, so the result is deterministic.
template <typename T>
ScanResult<T> scanCandidates(ImageView<const T> values, ImageView<const std::int32_t> mask, std::int32_t andMask,
                             ScanPlan<T> const& plan) {
    std::ptrdiff_t const rowsPerChunk = std::max<std::ptrdiff_t>(1, (std::ptrdiff_t(1) << 16) / std::max<std::ptrdiff_t>(1, values.width));
    std::ptrdiff_t const nChunks = std::max<std::ptrdiff_t>(1, (values.height + rowsPerChunk - 1) / rowsPerChunk);
    std::vector<ScanResult<T>> partial(static_cast<std::size_t>(nChunks));
    parallelFor(nChunks, [&](std::ptrdiff_t c) {
        std::ptrdiff_t const y0 = c * rowsPerChunk;
        std::ptrdiff_t const y1 = std::min(values.height, y0 + rowsPerChunk);
        scan::rows(values, mask, andMask, y0, y1, plan, partial[std::size_t(c)]);
    });
    ScanResult<T> total;
    for (auto& p : partial) {
        total.nCandidates += p.nCandidates;
        for (int b = 0; b < kMaxBounds; ++b) total.atLeast[b] += p.atLeast[b];
        total.core += p.core;
        for (int r = 0; r < plan.nRanges; ++r) {
            total.rangeCount[r] += p.rangeCount[r];
            total.range[r].insert(total.range[r].end(), p.range[r].begin(), p.range[r].end());
        }
    }
    return total;
}

}  // namespace diffcal::detail
