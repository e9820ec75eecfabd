// Clipped statistics. The algorithm is the reference's (see statistics.hpp); the work plan is
// ours and reads a large image once:
//
//  1. A deterministic sample of about 65536 pixels (contiguous runs spread over the image)
//     estimates the quartiles. From it we plan one scan (candidate_scan.hpp) that gathers
//       - for each quartile, a narrow value bracket around the estimate: the number of
//         candidates below it and the candidates inside it;
//       - the moments of a "core" band that every clip window is expected to contain, and the
//         candidates in thin "edge" bands around it.
//  2. The exact quartiles come from nth_element on the brackets (numpy's "linear" percentile).
//  3. Each clipping pass takes the core moments and tests only the edge values exactly.
//
// Whenever the sample misled the plan (a bracket misses its rank, a window does not contain the
// core band or reaches past the edge bands), that step falls back to exact work on a compact copy
// of the candidates: radix selection, or a full pass. So every result is exact whatever the data:
// the kept set of each pass is {v : |v - centre| <= halfWidth}, evaluated in double as the
// reference does. Small images skip the sampling and use the compact copy directly.
//
// Floating-point sums run over fixed chunks combined in order: results do not depend on the
// thread count.
#include "diffcal/statistics.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bucket_statistics.hpp"
#include "candidate_scan.hpp"
#include "diffcal/parallel.hpp"

namespace diffcal {

namespace {

using detail::finishPass;
using detail::lerp;
using detail::Moments;

constexpr double kIqrToSigma = 0.741301109252802;  // 1 / (2 * 0.6744897501960817)
constexpr std::size_t kChunk = std::size_t(1) << 16;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr std::size_t kSampleRun = 64;                      // pixels per contiguous sample run
constexpr std::size_t kSampleSize = std::size_t(1) << 16;  // pixels sampled
constexpr std::size_t kDirectLimit = std::size_t(1) << 17;  // up to this many pixels: no sampling,
constexpr std::size_t kBucketMinimum = std::size_t(1) << 12;  // ... but a bucket sort from this many

/// Split [0, n) into nearly equal contiguous blocks, one per thread (for exact integer work).
struct Blocks {
    std::size_t n;
    std::size_t count;
    std::size_t begin(std::size_t i) const { return n * i / count; }
    std::size_t end(std::size_t i) const { return n * (i + 1) / count; }
};

Blocks threadBlocks(std::size_t n) {
    std::size_t const t = std::size_t(std::max(1, getNumThreads()));
    return Blocks{n, std::max<std::size_t>(1, std::min(t, n))};
}

bool isCandidate(double v, std::int32_t m, std::int32_t andMask) { return std::isfinite(v) && (m & andMask) == 0; }

// ----------------------------------------------------------------------------------------------
// Compact copy of the candidates (small images and fallbacks)

/// The finite values whose mask bits miss `andMask`, in row-major order. Small images are
/// copied on the calling thread: per-cell statistics run inside parallel cell mappers, where
/// spawning threads would only add overhead.
template <typename T>
std::vector<T> compactCandidates(ImageView<const T> values, ImageView<const std::int32_t> mask, std::int32_t andMask) {
    bool const useMask = mask.data != nullptr && andMask != 0;
    auto copyRows = [&](std::size_t y0, std::size_t y1, std::vector<T>& out) {
        for (std::size_t y = y0; y < y1; ++y) {
            T const* row = values.row(std::ptrdiff_t(y));
            std::int32_t const* mrow = useMask ? mask.row(std::ptrdiff_t(y)) : nullptr;
            for (std::ptrdiff_t x = 0; x < values.width; ++x) {
                T const v = row[x * values.colStride];
                if (std::isfinite(v) && (mrow == nullptr || (mrow[x * mask.colStride] & andMask) == 0)) out.push_back(v);
            }
        }
    };
    if (std::size_t(values.size()) <= kDirectLimit) {
        std::vector<T> out;
        out.reserve(std::size_t(values.size()));
        copyRows(0, std::size_t(values.height), out);
        return out;
    }
    Blocks const rows = threadBlocks(std::size_t(values.height));
    std::vector<std::vector<T>> partial(rows.count);
    parallelFor(std::ptrdiff_t(rows.count), [&](std::ptrdiff_t b) {
        copyRows(rows.begin(std::size_t(b)), rows.end(std::size_t(b)), partial[std::size_t(b)]);
    });
    std::vector<T> all;
    std::size_t n = 0;
    for (auto const& p : partial) n += p.size();
    all.reserve(n);
    for (auto const& p : partial) all.insert(all.end(), p.begin(), p.end());
    return all;
}

// ----------------------------------------------------------------------------------------------
// Exact order statistics

using detail::bucket::KeyOf;

/// Order-preserving map of a finite float to an unsigned integer.
template <typename T>
typename KeyOf<T>::type sortKey(T v) {
    return detail::bucket::keyOrAbsent(v, true);
}

/// Exact k-th smallest value by most-significant-digit radix selection (16 bits per round).
template <typename T>
T radixSelect(std::vector<T> const& values, std::size_t k) {
    using Key = typename KeyOf<T>::type;
    constexpr int kKeyBits = int(sizeof(Key) * 8);
    constexpr int kBits = 16;
    constexpr std::size_t kBuckets = std::size_t(1) << kBits;
    constexpr std::size_t kGatherLimit = std::size_t(1) << 18;
    if (values.size() <= kGatherLimit) {
        std::vector<T> copy = values;
        std::nth_element(copy.begin(), copy.begin() + std::ptrdiff_t(k), copy.end());
        return copy[k];
    }
    Key prefix = 0;
    int prefixBits = 0;
    auto matches = [&](Key key) { return prefixBits == 0 || (key >> (kKeyBits - prefixBits)) == prefix; };
    for (;;) {
        int const shift = kKeyBits - prefixBits - kBits;
        Blocks const blocks = threadBlocks(values.size());
        std::vector<std::vector<std::size_t>> partial(blocks.count);
        parallelFor(std::ptrdiff_t(blocks.count), [&](std::ptrdiff_t b) {
            std::vector<std::size_t> h(kBuckets, 0);
            for (std::size_t i = blocks.begin(std::size_t(b)); i < blocks.end(std::size_t(b)); ++i) {
                Key const key = sortKey(values[i]);
                if (matches(key)) ++h[std::size_t((key >> shift) & Key(kBuckets - 1))];
            }
            partial[std::size_t(b)] = std::move(h);
        });
        std::size_t bucket = 0, inBucket = 0;
        for (; bucket < kBuckets; ++bucket) {
            std::size_t n = 0;
            for (auto const& h : partial) n += h[bucket];
            if (k < n) {
                inBucket = n;
                break;
            }
            k -= n;
        }
        if (bucket == kBuckets) throw std::logic_error("radixSelect: rank out of range");
        prefix = Key((prefixBits == 0 ? Key(0) : Key(prefix << kBits)) | Key(bucket));
        prefixBits += kBits;
        if (inBucket <= kGatherLimit || prefixBits >= kKeyBits) {
            std::vector<T> sub;
            sub.reserve(inBucket);
            for (T v : values)
                if (matches(sortKey(v))) sub.push_back(v);
            std::nth_element(sub.begin(), sub.begin() + std::ptrdiff_t(k), sub.end());
            return sub[k];
        }
    }
}

/// Rank k and the interpolation weight of fraction f among n values.
std::pair<std::size_t, double> rankOf(double f, std::size_t n) {
    double const pos = f * double(n - 1);
    auto const k = std::size_t(std::floor(pos));
    return {k, pos - double(k)};
}

/// Exact quantile of a compact candidate copy (copies small inputs, radix-selects large ones).
template <typename T>
double compactQuantile(std::vector<T> const& cand, double f) {
    if (cand.empty()) return kNaN;
    auto const [k, t] = rankOf(f, cand.size());
    double const a = double(radixSelect(cand, k));
    if (t == 0.0 || k + 1 >= cand.size()) return a;
    return lerp(a, double(radixSelect(cand, k + 1)), t);
}

/// Exact quantiles at ascending fractions by successive partitions of `work` (reordered): each
/// nth_element runs on the part above the previous rank, so three quartiles cost about two
/// passes over the data.
template <typename T>
std::vector<double> quantilesInPlace(std::vector<T>& work, std::vector<double> const& ascendingFractions) {
    std::vector<double> out(ascendingFractions.size(), kNaN);
    std::size_t const n = work.size();
    if (n == 0) return out;
    auto from = work.begin();
    for (std::size_t i = 0; i < ascendingFractions.size(); ++i) {
        auto const [k, t] = rankOf(ascendingFractions[i], n);
        auto const kth = work.begin() + std::ptrdiff_t(k);
        if (kth >= from) std::nth_element(from, kth, work.end());
        double const a = double(*kth);
        double const b = k + 1 < n ? double(*std::min_element(kth + 1, work.end())) : a;
        out[i] = k + 1 < n ? lerp(a, b, t) : a;
        from = kth + 1;
    }
    return out;
}

/// Exact quartiles (fractions 0.25, 0.5, 0.75) of a compact copy from one branch-free pass.
///
/// A strided sample (1 value in kBracketStride, sorted) places a narrow value bracket around each
/// quartile; one pass counts the values below each bracket and copies the values inside it; three
/// small selections finish. About 20 % of the values land in brackets, so this costs one pass
/// plus a sort of 6 % of the data, where successive nth_element calls cost several passes with
/// unpredictable branches. Returns false when a bracket misses its ranks (heavily tied or
/// strongly ordered data): the caller then selects on the whole copy. Exact either way.
constexpr std::size_t kBracketStride = 16;
constexpr std::size_t kBracketMinimum = std::size_t(1) << 13;  // below this: plain selection

template <typename T>
bool bracketedQuartiles(std::vector<T> const& cand, double out[3]) {
    std::size_t const n = cand.size();
    std::size_t const m = n / kBracketStride;
    std::vector<T> sample(m);
    for (std::size_t i = 0; i < m; ++i) sample[i] = cand[i * kBracketStride + (i * 7) % kBracketStride];
    double const fractions[3] = {0.25, 0.5, 0.75};
    // +- about 4 standard deviations of a sample quantile's rank, in sample ranks
    double const margin = 2.0 * std::sqrt(double(m)) + 4.0;
    std::ptrdiff_t ra[3], rb[3];
    for (int q = 0; q < 3; ++q) {
        double const s = fractions[q] * double(m - 1);
        ra[q] = std::ptrdiff_t(std::floor(s - margin));
        rb[q] = std::ptrdiff_t(std::ceil(s + 1.0 + margin));
    }
    // the sample values at those ranks, by successive selections (cheaper than sorting)
    {
        std::ptrdiff_t ranks[6] = {ra[0], rb[0], ra[1], rb[1], ra[2], rb[2]};
        std::sort(ranks, ranks + 6);
        auto from = sample.begin();
        for (std::ptrdiff_t r : ranks) {
            if (r <= 0 || r >= std::ptrdiff_t(m)) continue;
            auto const kth = sample.begin() + r;
            if (kth >= from) std::nth_element(from, kth, sample.end());
            from = kth + 1;
        }
    }
    T lo[3], hi[3];
    std::size_t cap[3];
    for (int q = 0; q < 3; ++q) {
        std::ptrdiff_t const a = ra[q], b = rb[q];
        lo[q] = a > 0 ? sample[std::size_t(a)] : -std::numeric_limits<T>::infinity();
        hi[q] = b < std::ptrdiff_t(m) ? sample[std::size_t(b)] : std::numeric_limits<T>::infinity();
        if (!(lo[q] < hi[q])) return false;  // a tie spans the bracket
        std::size_t const width = std::size_t(std::max<std::ptrdiff_t>(0, std::min<std::ptrdiff_t>(b, m) -
                                                                           std::max<std::ptrdiff_t>(a, 0)));
        cap[q] = std::min(n, 2 * (width + 1) * kBracketStride + 64);
    }
    std::vector<T> buf(cap[0] + cap[1] + cap[2]);
    T* bq[3] = {buf.data(), buf.data() + cap[0], buf.data() + cap[0] + cap[1]};
    // Branch-free pass with every counter in a register: each value is stored at the current
    // end of each bracket buffer and kept only if it lies inside (the end advances).
    std::size_t b0 = 0, b1 = 0, b2 = 0, i0 = 0, i1 = 0, i2 = 0;
    T const lo0 = lo[0], lo1 = lo[1], lo2 = lo[2], hi0 = hi[0], hi1 = hi[1], hi2 = hi[2];
    T* const p0 = bq[0];
    T* const p1 = bq[1];
    T* const p2 = bq[2];
    std::size_t const c0 = cap[0] - 1, c1 = cap[1] - 1, c2 = cap[2] - 1;
    for (T const v : cand) {
        b0 += v < lo0;
        b1 += v < lo1;
        b2 += v < lo2;
        p0[std::min(i0, c0)] = v;
        p1[std::min(i1, c1)] = v;
        p2[std::min(i2, c2)] = v;
        i0 += (v >= lo0) & (v < hi0);
        i1 += (v >= lo1) & (v < hi1);
        i2 += (v >= lo2) & (v < hi2);
    }
    std::size_t const below[3] = {b0, b1, b2}, inside[3] = {i0, i1, i2};
    for (int q = 0; q < 3; ++q) {
        auto const [k, t] = rankOf(fractions[q], n);
        std::size_t const k1 = std::min(k + 1, n - 1);
        if (inside[q] > cap[q] || k < below[q] || k1 >= below[q] + inside[q]) return false;
        T* const first = bq[q];
        T* const last = first + inside[q];
        T* const kth = first + (k - below[q]);
        std::nth_element(first, kth, last);
        double const a = double(*kth);
        double const b = k1 == k ? a : double(*std::min_element(kth + 1, last));
        out[q] = lerp(a, b, t);
    }
    return true;
}

// ----------------------------------------------------------------------------------------------
// Clipping passes

/// Moments about `centre` of the values with |v - centre| <= halfWidth, over values[begin, end).
/// Several accumulators break the add dependency chain; they are combined in a fixed order.
template <typename T>
Moments windowMoments(T const* values, std::size_t begin, std::size_t end, double centre, double halfWidth) {
    constexpr std::size_t kLanes = 8;
    double cnt[kLanes] = {}, s1[kLanes] = {}, s2[kLanes] = {};
    std::size_t j = begin;
    for (; j + kLanes <= end; j += kLanes) {
        for (std::size_t l = 0; l < kLanes; ++l) {
            double const d = double(values[j + l]) - centre;
            double const keep = std::abs(d) <= halfWidth ? 1.0 : 0.0;
            double const dk = d * keep;
            cnt[l] += keep;
            s1[l] += dk;
            s2[l] += dk * dk;
        }
    }
    for (; j < end; ++j) {
        double const d = double(values[j]) - centre;
        double const keep = std::abs(d) <= halfWidth ? 1.0 : 0.0;
        double const dk = d * keep;
        cnt[0] += keep;
        s1[0] += dk;
        s2[0] += dk * dk;
    }
    Moments m;
    for (std::size_t l = 0; l < kLanes; ++l) {
        m.n += std::int64_t(cnt[l]);
        m.sum += s1[l];
        m.sumSq += s2[l];
    }
    return m;
}

/// A full clipping pass over a compact candidate copy (fixed chunks, ordered combination).
template <typename T>
Moments fullPass(std::vector<T> const& values, double centre, double halfWidth) {
    std::size_t const nChunks = std::max<std::size_t>(1, (values.size() + kChunk - 1) / kChunk);
    std::vector<Moments> partial(nChunks);
    parallelFor(std::ptrdiff_t(nChunks), [&](std::ptrdiff_t c) {
        std::size_t const begin = std::size_t(c) * kChunk;
        std::size_t const end = std::min(values.size(), begin + kChunk);
        partial[std::size_t(c)] = windowMoments(values.data(), begin, end, centre, halfWidth);
    });
    Moments total;
    for (auto const& m : partial) total += m;
    return total;
}

/// The reference's clipping passes, each a full pass over a compact candidate copy.
template <typename T>
void clipPasses(std::vector<T> const& cand, ClipControl const& control, ClippedStatistics& out) {
    double centre = out.median;
    double halfWidth = control.nSigma * kIqrToSigma * out.iqr;
    for (int pass = 0; pass < control.nIter; ++pass) {
        finishPass(fullPass(cand, centre, halfWidth), centre, out);
        centre = out.mean;
        halfWidth = control.nSigma * std::sqrt(out.variance);
    }
}

// ----------------------------------------------------------------------------------------------
// The planned single scan

/// Sample of candidates (unordered): kSampleSize pixels in contiguous runs spread over the image.
template <typename T>
std::vector<T> sampleCandidates(ImageView<const T> values, ImageView<const std::int32_t> mask, std::int32_t andMask) {
    std::size_t const npix = std::size_t(values.size());
    std::size_t const width = std::size_t(values.width);
    std::size_t const runs = kSampleSize / kSampleRun;
    bool const useMask = mask.data != nullptr && andMask != 0;
    std::vector<T> sample;
    sample.reserve(kSampleSize);
    for (std::size_t r = 0; r < runs; ++r) {
        std::size_t const start = r * (npix - kSampleRun) / (runs - 1);
        for (std::size_t p = start; p < start + kSampleRun; ++p) {
            auto const y = std::ptrdiff_t(p / width), x = std::ptrdiff_t(p % width);
            T const v = values(y, x);
            if (isCandidate(double(v), useMask ? mask(y, x) : 0, andMask)) sample.push_back(v);
        }
    }
    return sample;
}

/// The values of `sample` at the given ranks (of its sorted order), by successive partial
/// selections on the part above the previous rank (`sample` is reordered; no full sort).
template <typename T>
struct RankedSample {
    std::vector<std::size_t> ranks;  // ascending, distinct
    std::vector<T> values;

    RankedSample(std::vector<T>& sample, std::vector<std::size_t> wanted) {
        std::sort(wanted.begin(), wanted.end());
        wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
        auto from = sample.begin();
        for (std::size_t r : wanted) {
            auto const kth = sample.begin() + std::ptrdiff_t(r);
            if (kth >= from) std::nth_element(from, kth, sample.end());
            ranks.push_back(r);
            values.push_back(*kth);
            from = kth + 1;
        }
    }
    T at(std::size_t rank) const {
        auto const it = std::lower_bound(ranks.begin(), ranks.end(), rank);
        if (it == ranks.end() || *it != rank) throw std::logic_error("RankedSample: rank not selected");
        return values[std::size_t(it - ranks.begin())];
    }
};

/// Lowest value of T that is >= x (so [lo, ...) ranges built from doubles are conservative).
template <typename T>
T ceilTo(double x) {
    if (!(x > double(std::numeric_limits<T>::lowest()))) return std::numeric_limits<T>::lowest();
    if (!(x < double(std::numeric_limits<T>::max()))) return std::numeric_limits<T>::max();
    T v = T(x);
    if (double(v) < x) v = std::nextafter(v, std::numeric_limits<T>::infinity());
    return v;
}

/// `sample` (reordered here): candidates spread over the image (sampleCandidates).
template <typename T>
ClippedStatistics plannedStatistics(ImageView<const T> values, ImageView<const std::int32_t> mask,
                                    ClipControl const& control, std::vector<T>& sample) {
    using detail::ScanPlan;
    std::size_t const m = sample.size();
    double const fractions[3] = {0.25, 0.5, 0.75};

    // The sample ranks the plan needs: the bracket ends (the sample quantile +- about 6 sigma of
    // the sample's rank noise) and the sample quartiles.
    double const margin = 3.0 * std::sqrt(double(m)) + 16.0;
    std::ptrdiff_t lo[3], hi[3];
    std::vector<std::size_t> wanted;
    for (int q = 0; q < 3; ++q) {
        double const s = fractions[q] * double(m - 1);
        lo[q] = std::ptrdiff_t(std::floor(s - margin));
        hi[q] = std::ptrdiff_t(std::ceil(s + 1.0 + margin));
        if (lo[q] > 0) wanted.push_back(std::size_t(lo[q]));
        if (hi[q] < std::ptrdiff_t(m) - 1) wanted.push_back(std::size_t(hi[q]));
        auto const [k, t] = rankOf(fractions[q], m);
        wanted.push_back(k);
        wanted.push_back(std::min(k + 1, m - 1));
    }
    RankedSample<T> const ranked(sample, wanted);

    // Brackets: the sample quantile +- the margin (inclusive).
    ScanPlan<T> plan;
    for (int q = 0; q < 3; ++q) {
        bool const hasLo = lo[q] > 0, hasHi = hi[q] < std::ptrdiff_t(m) - 1;
        T const loV = hasLo ? ranked.at(std::size_t(lo[q])) : std::numeric_limits<T>::lowest();
        T const hiS = hasHi ? ranked.at(std::size_t(hi[q])) : T(0);
        T const hiV = hasHi ? std::nextafter(hiS, std::numeric_limits<T>::infinity()) : std::numeric_limits<T>::infinity();
        plan.bound[q] = loV;
        plan.rangeLo[q] = loV;
        plan.rangeHi[q] = hiV;
        // A bracket holding a single value (e.g. a constant plane) is counted, not collected.
        plan.collect[q] = !(hasLo && hasHi && loV == hiS);
    }
    plan.nBounds = 3;
    plan.nRanges = 3;

    // Bands around the expected clip windows (sample median +- nSigma sample sigma).
    auto sampleQuantile = [&](double f) {
        auto const [k, t] = rankOf(f, m);
        return lerp(double(ranked.at(k)), double(ranked.at(std::min(k + 1, m - 1))), t);
    };
    double const med = sampleQuantile(0.5);
    double const sigma = kIqrToSigma * (sampleQuantile(0.75) - sampleQuantile(0.25));
    double const hw = control.nSigma * sigma;
    bool const banded = sigma > 0.0 && std::isfinite(hw);
    if (banded) {
        T const outerLo = ceilTo<T>(med - hw - 0.8 * sigma), coreLo = ceilTo<T>(med - hw + 0.4 * sigma);
        T const coreHi = ceilTo<T>(med + hw - 0.4 * sigma), outerHi = ceilTo<T>(med + hw + 0.8 * sigma);
        plan.coreLo = coreLo;
        plan.coreHi = coreHi;
        plan.ref = med;
        plan.rangeLo[3] = outerLo;
        plan.rangeHi[3] = coreLo;
        plan.rangeLo[4] = coreHi;
        plan.rangeHi[4] = outerHi;
        plan.nRanges = 5;
    }

    detail::ScanResult<T> scan = detail::scanCandidates(values, mask, control.andMask, plan);
    ClippedStatistics out;
    out.nCandidates = scan.nCandidates;
    if (out.nCandidates == 0) {
        out.mean = out.variance = out.median = out.iqr = kNaN;
        return out;
    }
    auto const n = std::size_t(out.nCandidates);
    std::unique_ptr<std::vector<T>> compact;  // built only if the plan misses
    auto compactCopy = [&]() -> std::vector<T> const& {
        if (!compact) compact = std::make_unique<std::vector<T>>(compactCandidates(values, mask, control.andMask));
        return *compact;
    };

    // Exact quartiles.
    double quart[3];
    parallelFor(3, [&](std::ptrdiff_t q) {
        auto const [k, t] = rankOf(fractions[q], n);
        std::size_t const k1 = std::min(k + 1, n - 1);
        std::size_t const below = n - std::size_t(scan.atLeast[q]);
        std::vector<T>& inside = scan.range[q];
        if (!plan.collect[q]) {  // single-value bracket: every candidate in it equals rangeLo
            auto const count = std::size_t(scan.rangeCount[q]);
            quart[q] = (k >= below && k1 - below < count) ? double(plan.rangeLo[q]) : kNaN;
        } else if (k >= below && k1 - below < inside.size()) {
            auto const kth = inside.begin() + std::ptrdiff_t(k - below);
            std::nth_element(inside.begin(), kth, inside.end());
            T const next = k1 == k ? *kth : *std::min_element(kth + 1, inside.end());
            quart[q] = lerp(double(*kth), double(next), t);
        } else {
            quart[q] = kNaN;  // resolved below, outside the parallel region
        }
    });
    for (int q = 0; q < 3; ++q) {
        if (std::isnan(quart[q])) quart[q] = compactQuantile(compactCopy(), fractions[q]);
    }
    out.median = quart[1];
    out.iqr = quart[2] - quart[0];

    // Clipping passes: core moments + exact tests of the edge values, or a full pass.
    std::vector<T> edges;
    if (banded) {
        edges = std::move(scan.range[3]);
        edges.insert(edges.end(), scan.range[4].begin(), scan.range[4].end());
    }
    auto covered = [&](double centre, double halfWidth) {
        if (!banded) return false;
        double const lo = centre - halfWidth, hi = centre + halfWidth;
        double const slack = 1e-9 * (std::abs(centre) + std::abs(halfWidth) + std::abs(double(plan.rangeLo[3])) +
                                     std::abs(double(plan.rangeHi[4])));
        return lo < double(plan.coreLo) - slack && hi > double(plan.coreHi) + slack &&
               lo > double(plan.rangeLo[3]) + slack && hi < double(plan.rangeHi[4]) - slack;
    };
    double centre = out.median;
    double halfWidth = control.nSigma * kIqrToSigma * out.iqr;
    // A zero-width window keeps exactly the values equal to its centre: a single-value bracket
    // at that value already counted them.
    auto equalCount = [&](double value) -> std::int64_t {
        for (int q = 0; q < 3; ++q)
            if (!plan.collect[q] && double(plan.rangeLo[q]) == value) return scan.rangeCount[q];
        return -1;
    };
    for (int pass = 0; pass < control.nIter; ++pass) {
        Moments mo;
        std::int64_t const nEqual = halfWidth == 0.0 ? equalCount(centre) : -1;
        if (!(halfWidth >= 0.0)) {
            // NaN half-width: |v - centre| <= NaN keeps nothing (the reference's behaviour).
        } else if (nEqual >= 0) {
            mo.n = nEqual;
        } else if (covered(centre, halfWidth)) {
            mo = scan.core.recentred(plan.ref, centre);
            mo += windowMoments(edges.data(), 0, edges.size(), centre, halfWidth);
        } else {
            mo = fullPass(compactCopy(), centre, halfWidth);
        }
        finishPass(mo, centre, out);
        centre = out.mean;
        halfWidth = control.nSigma * std::sqrt(out.variance);
    }
    return out;
}

template <typename T>
ClippedStatistics directStatistics(std::vector<T> const& cand, ClipControl const& control) {
    ClippedStatistics out;
    out.nCandidates = std::int64_t(cand.size());
    if (cand.empty()) {
        out.mean = out.variance = out.median = out.iqr = kNaN;
        return out;
    }
    double q[3];
    if (!(cand.size() >= kBracketMinimum && bracketedQuartiles(cand, q))) {
        std::vector<T> work = cand;
        std::vector<double> const all = quantilesInPlace(work, {0.25, 0.5, 0.75});
        std::copy(all.begin(), all.end(), q);
    }
    out.median = q[1];
    out.iqr = q[2] - q[0];
    clipPasses(cand, control, out);
    return out;
}

void checkControl(ClipControl const& control) {
    if (!(control.nSigma > 0.0) || !std::isfinite(control.nSigma)) {
        throw std::invalid_argument("clippedStatistics: nSigma must be positive and finite, got " +
                                    std::to_string(control.nSigma));
    }
    if (control.nIter < 1) {
        throw std::invalid_argument("clippedStatistics: nIter must be >= 1, got " + std::to_string(control.nIter));
    }
}

}  // namespace

template <typename T>
ClippedStatistics clippedStatistics(ImageView<const T> values, ImageView<const std::int32_t> mask,
                                    ClipControl const& control) {
    checkControl(control);
    if (mask.data != nullptr) requireSameShape(values, mask, "values", "mask");
    std::size_t const npix = std::size_t(values.size());
    if (npix > kDirectLimit) {
        std::vector<T> sample = sampleCandidates(values, mask, control.andMask);
        if (sample.size() >= 1024) return plannedStatistics(values, mask, control, sample);
    } else if (npix >= kBucketMinimum) {
        // decorrelation cells (~5e4 pixels) land here
        return detail::bucket::bucketStatistics(values, mask, control, kIqrToSigma);
    }
    return directStatistics(compactCandidates(values, mask, control.andMask), control);
}

template <typename T>
double candidateQuantile(ImageView<const T> values, ImageView<const std::int32_t> mask, std::int32_t andMask,
                         double fraction) {
    if (!(fraction >= 0.0 && fraction <= 1.0)) {
        throw std::invalid_argument("candidateQuantile: fraction must be in [0, 1], got " + std::to_string(fraction));
    }
    if (mask.data != nullptr) requireSameShape(values, mask, "values", "mask");
    return compactQuantile(compactCandidates(values, mask, andMask), fraction);
}

template ClippedStatistics clippedStatistics<float>(ImageView<const float>, ImageView<const std::int32_t>,
                                                    ClipControl const&);
template ClippedStatistics clippedStatistics<double>(ImageView<const double>, ImageView<const std::int32_t>,
                                                     ClipControl const&);
template double candidateQuantile<float>(ImageView<const float>, ImageView<const std::int32_t>, std::int32_t,
                                         double);
template double candidateQuantile<double>(ImageView<const double>, ImageView<const std::int32_t>, std::int32_t,
                                          double);

}  // namespace diffcal
