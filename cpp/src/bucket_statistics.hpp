// Internal to statistics.cpp: exact clipped statistics of a small image (up to ~1e5 pixels, e.g.
// the expanded cells of the spatial decorrelation, which need two per cell) by a bucket sort of
// the candidates' order-preserving integer keys:
//
//  1. one pass copies the candidates' keys (finite, unmasked) and finds their range;
//  2. a histogram of kBins buckets over that range, then a stable scatter into bucket order;
//  3. the exact quartiles are selections inside the (small) buckets holding their ranks;
//  4. per-bucket moments about the median, then every clipping pass adds the moments of the
//     buckets entirely inside its window and tests the values of the (at most two) buckets that
//     straddle an end of the window one by one.
//
// About 4 passes over the pixels in all, against a compact copy, several selection passes and
// one full pass per clipping iteration. Exact: the kept set of each pass is
// {v : |double(v) - centre| <= halfWidth} (rounding of v - centre is monotone in v, so a bucket
// whose two end values pass holds only values that pass). Serial: it runs on the calling thread
// (per-cell statistics run inside parallel cell mappers).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "candidate_scan.hpp"
#include "diffcal/image_view.hpp"
#include "diffcal/statistics.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace diffcal::detail::bucket {

template <typename T>
struct KeyOf;
template <>
struct KeyOf<float> {
    using type = std::uint32_t;
};
template <>
struct KeyOf<double> {
    using type = std::uint64_t;
};

/// Inverse of the order-preserving key of keyOrAbsent (finite values; -0 sorts below +0).
template <typename T>
inline T fromKey(typename KeyOf<T>::type key) {
    using Key = typename KeyOf<T>::type;
    constexpr Key sign = Key(1) << (sizeof(Key) * 8 - 1);
    Key const bits = (key & sign) ? Key(key & ~sign) : Key(~key);
    T v;
    std::memcpy(&v, &bits, sizeof(v));
    return v;
}

/// The key of v if it is a finite candidate (`unmasked`), else the largest key (no float has it).
template <typename T>
inline typename KeyOf<T>::type keyOrAbsent(T v, bool unmasked) {
    using Key = typename KeyOf<T>::type;
    using SKey = std::make_signed_t<Key>;
    constexpr int kBitsM1 = int(sizeof(Key) * 8) - 1;
    constexpr Key sign = Key(1) << kBitsM1;
    constexpr Key expMask = std::is_same_v<T, float> ? Key(0x7f800000u) : Key(0x7ff0000000000000ull);
    Key bits;
    std::memcpy(&bits, &v, sizeof(bits));
    Key const key = bits ^ (Key(SKey(bits) >> kBitsM1) | sign);
    bool const ok = ((bits & expMask) != expMask) & unmasked;
    return ok ? key : std::numeric_limits<Key>::max();
}

#if defined(__SSE2__)
/// keyOrAbsent of a contiguous float32 row (mask row contiguous or null), 4 pixels at a time;
/// adds the candidates to `count` and their key range to [lo, hi]. Returns the pixels done.
inline std::ptrdiff_t sse2Keys(float const* row, std::int32_t const* mrow, std::int32_t andMask, std::ptrdiff_t width,
                               std::uint32_t* out, std::size_t& count, std::uint32_t& lo, std::uint32_t& hi) {
    __m128i const expMask = _mm_set1_epi32(0x7f800000);
    __m128i const sign = _mm_set1_epi32(std::int32_t(0x80000000u));
    __m128i const andv = _mm_set1_epi32(andMask);
    __m128i const zero = _mm_setzero_si128();
    __m128i const ones = _mm_set1_epi32(-1);
    // the key range in signed order (key ^ sign): absent pixels count as the largest value for
    // the minimum and the smallest for the maximum
    __m128i sLo = _mm_set1_epi32(0x7fffffff), sHi = _mm_set1_epi32(std::int32_t(0x80000000u));
    __m128i cnt = zero;
    std::ptrdiff_t x = 0;
    for (; x + 4 <= width; x += 4) {
        __m128i const bits = _mm_loadu_si128(reinterpret_cast<__m128i const*>(row + x));
        __m128i ok = _mm_xor_si128(_mm_cmpeq_epi32(_mm_and_si128(bits, expMask), expMask), ones);  // finite
        if (mrow != nullptr) {
            __m128i const m = _mm_loadu_si128(reinterpret_cast<__m128i const*>(mrow + x));
            ok = _mm_and_si128(ok, _mm_cmpeq_epi32(_mm_and_si128(m, andv), zero));
        }
        __m128i const key = _mm_xor_si128(bits, _mm_or_si128(_mm_srai_epi32(bits, 31), sign));
        __m128i const stored = _mm_or_si128(_mm_and_si128(ok, key), _mm_andnot_si128(ok, ones));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + x), stored);
        cnt = _mm_sub_epi32(cnt, ok);
        __m128i const sKey = _mm_xor_si128(key, sign);
        __m128i const forLo = _mm_or_si128(_mm_and_si128(ok, sKey), _mm_andnot_si128(ok, _mm_set1_epi32(0x7fffffff)));
        __m128i const forHi = _mm_or_si128(_mm_and_si128(ok, sKey), _mm_andnot_si128(ok, sign));
        __m128i const lt = _mm_cmplt_epi32(forLo, sLo);
        sLo = _mm_or_si128(_mm_and_si128(lt, forLo), _mm_andnot_si128(lt, sLo));
        __m128i const gt = _mm_cmpgt_epi32(forHi, sHi);
        sHi = _mm_or_si128(_mm_and_si128(gt, forHi), _mm_andnot_si128(gt, sHi));
    }
    alignas(16) std::int32_t l[4], h[4], c[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(l), sLo);
    _mm_store_si128(reinterpret_cast<__m128i*>(h), sHi);
    _mm_store_si128(reinterpret_cast<__m128i*>(c), cnt);
    for (int i = 0; i < 4; ++i) {
        count += std::size_t(c[i]);
        if (c[i] == 0) continue;  // no candidate in this lane: its range is empty
        lo = std::min(lo, std::uint32_t(l[i]) ^ 0x80000000u);
        hi = std::max(hi, std::uint32_t(h[i]) ^ 0x80000000u);
    }
    return x;
}
#endif

constexpr std::ptrdiff_t kPrefetchRows = 4;  // rows read ahead (ImageView::prefetchRow)

constexpr std::size_t kBins = 2048;

/// Scratch kept by each thread between calls (a cell mapper thread computes hundreds).
template <typename Key>
struct Scratch {
    std::vector<Key> keys, sorted;
    std::vector<std::uint32_t> count, start;
    std::vector<double> sum, sumSq;
};

template <typename Key>
Scratch<Key>& scratch() {
    thread_local Scratch<Key> s;
    return s;
}

/// Statistics of `values` (see statistics.hpp) by the bucket plan above. kIqrToSigma as there.
template <typename T>
ClippedStatistics bucketStatistics(ImageView<const T> values, ImageView<const std::int32_t> mask,
                                   ClipControl const& control, double iqrToSigma) {
    using Key = typename KeyOf<T>::type;
    constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
    Scratch<Key>& s = scratch<Key>();
    std::size_t const npix = std::size_t(values.size());
    if (s.keys.size() < npix) {
        s.keys.resize(npix);
        s.sorted.resize(npix);
    }

    // 1. keys of all pixels, non-candidates (NaN, Inf, masked) as kAbsent, which sorts above
    // every candidate; branch-free, so the contiguous case vectorises
    constexpr Key kAbsent = std::numeric_limits<Key>::max();
    bool const useMask = mask.data != nullptr && control.andMask != 0;
    std::int32_t const andMask = control.andMask;
    Key* const keys = s.keys.data();
    std::size_t n = 0;
    Key lo = kAbsent, hi = 0;
    for (std::ptrdiff_t y = 0; y < values.height; ++y) {
        T const* row = values.row(y);
        std::int32_t const* mrow = useMask ? mask.row(y) : nullptr;
        Key* const out = keys + y * values.width;
        if (values.colStride == 1 && (mrow == nullptr || mask.colStride == 1)) {
            values.prefetchRow(y + kPrefetchRows);
            if (mrow != nullptr) mask.prefetchRow(y + kPrefetchRows);
            std::size_t cnt = 0;
            Key rowLo = kAbsent, rowHi = 0;
            std::ptrdiff_t x0 = 0;
#if defined(__SSE2__)
            if constexpr (std::is_same_v<T, float>) x0 = sse2Keys(row, mrow, andMask, values.width, out, cnt, rowLo, rowHi);
#endif
            for (std::ptrdiff_t x = x0; x < values.width; ++x) {
                Key const k = keyOrAbsent(row[x], mrow == nullptr || (mrow[x] & andMask) == 0);
                out[x] = k;
                cnt += k != kAbsent;
                rowLo = std::min(rowLo, k);
                rowHi = std::max(rowHi, k == kAbsent ? Key(0) : k);
            }
            n += cnt;
            lo = std::min(lo, rowLo);
            hi = std::max(hi, rowHi);
        } else {
            for (std::ptrdiff_t x = 0; x < values.width; ++x) {
                Key const k = keyOrAbsent(row[x * values.colStride],
                                          mrow == nullptr || (mrow[x * mask.colStride] & andMask) == 0);
                out[x] = k;
                n += k != kAbsent;
                lo = std::min(lo, k);
                hi = std::max(hi, k == kAbsent ? Key(0) : k);
            }
        }
    }
    ClippedStatistics out;
    out.nCandidates = std::int64_t(n);
    if (n == 0) {
        out.mean = out.variance = out.median = out.iqr = kNaN;
        return out;
    }

    // 2. histogram and stable scatter into bucket order (bucket nb: the absent pixels)
    int shift = 0;
    while (((hi - lo) >> shift) >= Key(kBins)) ++shift;
    std::size_t const nb = std::size_t((hi - lo) >> shift) + 1;
    auto bucket = [&](Key k) { return std::min(std::size_t((k - lo) >> shift), nb); };
    s.count.assign(2 * (nb + 1), 0);
    std::uint32_t* const c0 = s.count.data();
    std::uint32_t* const c1 = c0 + nb + 1;  // a second histogram for odd positions: shorter store chains
    std::size_t i = 0;
    for (; i + 2 <= npix; i += 2) {
        ++c0[bucket(keys[i])];
        ++c1[bucket(keys[i + 1])];
    }
    if (i < npix) ++c0[bucket(keys[i])];
    s.start.resize(nb + 2);
    std::uint32_t* const start = s.start.data();
    start[0] = 0;
    for (std::size_t b = 0; b <= nb; ++b) start[b + 1] = start[b] + c0[b] + c1[b];
    std::uint32_t* const pos = c0;  // reused as the scatter cursors
    for (std::size_t b = 0; b <= nb; ++b) pos[b] = start[b];
    Key* const sorted = s.sorted.data();
    for (std::size_t j = 0; j < npix; ++j) {
        Key const k = keys[j];
        sorted[pos[bucket(k)]++] = k;
    }
    auto bucketOf = [&](std::size_t rank) {
        return std::size_t(std::upper_bound(start, start + nb + 1, std::uint32_t(rank)) - start) - 1;
    };

    // 3. exact quartiles (numpy's "linear" interpolation between ranks k and k + 1)
    auto valueAt = [&](std::size_t rank) {
        std::size_t const b = bucketOf(rank);
        Key* const first = sorted + start[b];
        Key* const last = sorted + start[b + 1];
        std::nth_element(first, sorted + rank, last);
        return double(fromKey<T>(sorted[rank]));
    };
    auto nextAbove = [&](std::size_t rank) {  // value at rank + 1, after valueAt(rank)
        std::size_t const b = bucketOf(rank + 1);
        Key* const last = sorted + start[b + 1];
        if (b == bucketOf(rank)) return double(fromKey<T>(*std::min_element(sorted + rank + 1, last)));
        return double(fromKey<T>(*std::min_element(sorted + start[b], last)));
    };
    double quart[3];
    double const fractions[3] = {0.25, 0.5, 0.75};
    for (int q = 0; q < 3; ++q) {
        double const p = fractions[q] * double(n - 1);
        auto const k = std::size_t(std::floor(p));
        double const t = p - double(k);
        double const a = valueAt(k);
        quart[q] = (k + 1 < n) ? lerp(a, nextAbove(k), t) : a;
    }
    out.median = quart[1];
    out.iqr = quart[2] - quart[0];

    // 4. per-bucket moments about the median, then the clipping passes
    double const ref = out.median;
    s.sum.assign(nb, 0.0);
    s.sumSq.assign(nb, 0.0);
    for (std::size_t b = 0; b < nb; ++b) {
        double s1 = 0.0, s2 = 0.0;
        for (std::uint32_t j = start[b]; j < start[b + 1]; ++j) {
            double const d = double(fromKey<T>(sorted[j])) - ref;
            s1 += d;
            s2 += d * d;
        }
        s.sum[b] = s1;
        s.sumSq[b] = s2;
    }
    // the lowest and highest value a bucket can hold (its key range clipped to [lo, hi])
    auto bucketLow = [&](std::size_t b) { return double(fromKey<T>(Key(lo + (Key(b) << shift)))); };
    auto bucketHigh = [&](std::size_t b) {
        Key const top = Key(lo + (Key(b) << shift) + ((Key(1) << shift) - 1));
        return double(fromKey<T>(b + 1 == nb || top > hi ? hi : top));
    };

    double centre = out.median;
    double halfWidth = control.nSigma * iqrToSigma * out.iqr;
    for (int pass = 0; pass < control.nIter; ++pass) {
        Moments mo;  // about ref
        if (halfWidth >= 0.0) {  // a NaN half-width keeps nothing (the reference's behaviour)
            auto keep = [&](double v) { return std::abs(v - centre) <= halfWidth; };
            for (std::size_t b = 0; b < nb; ++b) {
                std::uint32_t const cnt = start[b + 1] - start[b];
                if (cnt == 0) continue;
                bool const lowIn = keep(bucketLow(b)), highIn = keep(bucketHigh(b));
                if (lowIn && highIn) {
                    mo.n += cnt;
                    mo.sum += s.sum[b];
                    mo.sumSq += s.sumSq[b];
                } else if (lowIn || highIn || (bucketLow(b) < centre && bucketHigh(b) > centre)) {
                    for (std::uint32_t j = start[b]; j < start[b + 1]; ++j) {
                        double const v = double(fromKey<T>(sorted[j]));
                        if (keep(v)) {
                            double const d = v - ref;
                            ++mo.n;
                            mo.sum += d;
                            mo.sumSq += d * d;
                        }
                    }
                }
            }
        }
        finishPass(mo.recentred(ref, centre), centre, out);
        centre = out.mean;
        halfWidth = control.nSigma * std::sqrt(out.variance);
    }
    return out;
}

}  // namespace diffcal::detail::bucket
