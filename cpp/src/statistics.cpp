#include "diffcal/statistics.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "diffcal/parallel.hpp"

namespace diffcal {

namespace {

constexpr double kIqrToSigma = 0.741301109252802;  // 1 / (2 * 0.6744897501960817)
constexpr int kRadixBits = 16;                     // bits resolved per radix-selection round
constexpr std::size_t kBuckets = std::size_t(1) << kRadixBits;
constexpr std::int64_t kGatherLimit = std::int64_t(1) << 20;  // gather a bucket once it is this small
constexpr std::ptrdiff_t kPixelsPerTask = 1 << 16;            // fixed work split for float sums

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

/// Order-preserving map of a finite float to an unsigned integer (radix selection key).
template <typename T>
typename KeyOf<T>::type sortKey(T v) {
    using Key = typename KeyOf<T>::type;
    Key bits;
    std::memcpy(&bits, &v, sizeof(bits));
    constexpr Key sign = Key(1) << (sizeof(Key) * 8 - 1);
    return (bits & sign) ? Key(~bits) : Key(bits | sign);
}

/// The candidate pixels of a (values, mask) pair: finite and unmasked.
template <typename T>
struct Candidates {
    ImageView<const T> values;
    ImageView<const std::int32_t> mask;
    std::int32_t andMask = 0;

    /// Call f(v) for every candidate value in rows [y0, y1).
    template <typename F>
    void forEach(std::ptrdiff_t y0, std::ptrdiff_t y1, F&& f) const {
        bool const useMask = mask.data != nullptr && andMask != 0;
        for (std::ptrdiff_t y = y0; y < y1; ++y) {
            T const* row = values.row(y);
            std::int32_t const* mrow = useMask ? mask.row(y) : nullptr;
            for (std::ptrdiff_t x = 0; x < values.width; ++x) {
                T const v = row[x * values.colStride];
                if (!std::isfinite(v)) continue;
                if (mrow != nullptr && (mrow[x * mask.colStride] & andMask) != 0) continue;
                f(v);
            }
        }
    }
};

/// Row ranges [begin, end) splitting `height` rows into `nBlocks` nearly equal blocks.
struct RowBlocks {
    std::ptrdiff_t height;
    std::ptrdiff_t nBlocks;
    std::ptrdiff_t begin(std::ptrdiff_t i) const { return height * i / nBlocks; }
    std::ptrdiff_t end(std::ptrdiff_t i) const { return height * (i + 1) / nBlocks; }
};

/// Blocks for integer work (counts, histograms): one per thread, since any split is exact.
RowBlocks threadBlocks(std::ptrdiff_t height) {
    return RowBlocks{height, std::max<std::ptrdiff_t>(1, std::min<std::ptrdiff_t>(getNumThreads(), height))};
}

/// Bucket (top kRadixBits bits) of a key below a prefix of `prefixBits` bits.
template <typename Key>
std::size_t bucketOf(Key key, int shift) {
    return std::size_t((key >> shift) & Key(kBuckets - 1));
}

/// The candidates copied into one contiguous buffer (row-major order, so the sequence does not
/// depend on the thread count), plus the histogram of their top key bits, built in the same
/// two passes over the image. Every later pass reads 4 or 8 bytes per candidate instead of
/// value + mask, and vectorises.
template <typename T>
struct CompactCandidates {
    using Key = typename KeyOf<T>::type;
    static constexpr int kKeyBits = int(sizeof(Key) * 8);

    std::vector<T> values;
    std::vector<std::uint64_t> topHistogram;  // kBuckets counts of the top key bits

    explicit CompactCandidates(Candidates<T> const& c) : topHistogram(kBuckets, 0) {
        RowBlocks const blocks = threadBlocks(c.values.height);
        std::vector<std::size_t> counts(std::size_t(blocks.nBlocks), 0);
        std::vector<std::vector<std::uint32_t>> hist(std::size_t(blocks.nBlocks));
        parallelFor(blocks.nBlocks, [&](std::ptrdiff_t i) {
            std::vector<std::uint32_t> h(kBuckets, 0);
            std::size_t n = 0;
            c.forEach(blocks.begin(i), blocks.end(i), [&](T v) {
                ++h[bucketOf(sortKey(v), kKeyBits - kRadixBits)];
                ++n;
            });
            counts[std::size_t(i)] = n;
            hist[std::size_t(i)] = std::move(h);
        });
        std::vector<std::size_t> offsets(counts.size() + 1, 0);
        for (std::size_t i = 0; i < counts.size(); ++i) offsets[i + 1] = offsets[i] + counts[i];
        for (auto const& h : hist)
            for (std::size_t b = 0; b < kBuckets; ++b) topHistogram[b] += h[b];
        values.resize(offsets.back());
        parallelFor(blocks.nBlocks, [&](std::ptrdiff_t i) {
            T* out = values.data() + offsets[std::size_t(i)];
            c.forEach(blocks.begin(i), blocks.end(i), [&](T v) { *out++ = v; });
        });
    }
};

/// Split [0, n) into chunks of a fixed size: the split depends on n only, never on threads.
std::ptrdiff_t fixedChunkCount(std::size_t n) {
    return std::max<std::ptrdiff_t>(1, std::ptrdiff_t((n + kPixelsPerTask - 1) / kPixelsPerTask));
}

/// Exact k-th smallest candidate by most-significant-digit radix selection: find the bucket
/// of the top 16 key bits holding rank k, descend while it is large, then nth_element on it.
/// Small top-level buckets wanted by several ranks are gathered together in a single pass.
template <typename T>
class RankSelector {
public:
    using Key = typename KeyOf<T>::type;
    static constexpr int kKeyBits = int(sizeof(Key) * 8);

    explicit RankSelector(CompactCandidates<T> const& c) : c_(c) {}

    std::int64_t count() const { return std::int64_t(c_.values.size()); }

    /// Gather, in one pass, the top-level buckets holding these ranks (when small enough).
    void prefetch(std::vector<std::int64_t> const& ranks) {
        std::vector<std::size_t> wanted;
        for (auto r : ranks) {
            if (r < 0 || r >= count()) continue;
            std::size_t b = locate(c_.topHistogram, r);
            if (std::int64_t(c_.topHistogram[b]) <= kGatherLimit && cache_.count(b) == 0 &&
                std::find(wanted.begin(), wanted.end(), b) == wanted.end()) {
                wanted.push_back(b);
            }
        }
        if (wanted.empty()) return;
        std::vector<std::int32_t> slot(kBuckets, -1);
        for (std::size_t i = 0; i < wanted.size(); ++i) slot[wanted[i]] = std::int32_t(i);
        RowBlocks const blocks = threadBlocks(std::ptrdiff_t(c_.values.size()));
        std::vector<std::vector<std::vector<T>>> partial(std::size_t(blocks.nBlocks));
        parallelFor(blocks.nBlocks, [&](std::ptrdiff_t i) {
            std::vector<std::vector<T>> out(wanted.size());
            for (std::ptrdiff_t j = blocks.begin(i); j < blocks.end(i); ++j) {
                T const v = c_.values[std::size_t(j)];
                std::int32_t const s = slot[bucketOf(sortKey(v), kKeyBits - kRadixBits)];
                if (s >= 0) out[std::size_t(s)].push_back(v);
            }
            partial[std::size_t(i)] = std::move(out);
        });
        for (std::size_t w = 0; w < wanted.size(); ++w) {
            std::vector<T> all;
            for (auto const& p : partial) all.insert(all.end(), p[w].begin(), p[w].end());
            cache_[wanted[w]] = std::move(all);
        }
    }

    /// Value of 0-based rank r. If `next` is given and rank r + 1 lies in the same final
    /// bucket, *next receives it and *haveNext is set.
    T select(std::int64_t r, T* next = nullptr, bool* haveNext = nullptr) {
        if (haveNext) *haveNext = false;
        std::size_t const top = locate(c_.topHistogram, r);
        r -= below(c_.topHistogram, top);
        auto cached = cache_.find(top);
        if (cached != cache_.end()) return pick(cached->second, r, next, haveNext);
        Key prefix = Key(top);
        int prefixBits = kRadixBits;
        std::int64_t inBucket = std::int64_t(c_.topHistogram[top]);
        while (inBucket > kGatherLimit && prefixBits < kKeyBits) {
            std::vector<std::uint64_t> const hist = histogram(prefix, prefixBits);
            std::size_t const b = locate(hist, r);
            r -= below(hist, b);
            inBucket = std::int64_t(hist[b]);
            prefix = Key((prefix << kRadixBits) | Key(b));
            prefixBits += kRadixBits;
        }
        std::vector<T> bucket = gather(prefix, prefixBits);
        return pick(bucket, r, next, haveNext);
    }

private:
    static std::size_t locate(std::vector<std::uint64_t> const& hist, std::int64_t r) {
        for (std::size_t b = 0; b < hist.size(); ++b) {
            if (r < std::int64_t(hist[b])) return b;
            r -= std::int64_t(hist[b]);
        }
        throw std::logic_error("RankSelector: rank out of range");
    }

    static std::int64_t below(std::vector<std::uint64_t> const& hist, std::size_t b) {
        std::int64_t n = 0;
        for (std::size_t i = 0; i < b; ++i) n += std::int64_t(hist[i]);
        return n;
    }

    static T pick(std::vector<T>& bucket, std::int64_t r, T* next, bool* haveNext) {
        auto const kth = bucket.begin() + r;
        std::nth_element(bucket.begin(), kth, bucket.end());
        if (next != nullptr && kth + 1 != bucket.end()) {
            *next = *std::min_element(kth + 1, bucket.end());
            if (haveNext) *haveNext = true;
        }
        return *kth;
    }

    bool matches(Key key, Key prefix, int prefixBits) const { return (key >> (kKeyBits - prefixBits)) == prefix; }

    /// Histogram of the 16 key bits below `prefixBits` among candidates matching `prefix`.
    std::vector<std::uint64_t> histogram(Key prefix, int prefixBits) const {
        RowBlocks const blocks = threadBlocks(std::ptrdiff_t(c_.values.size()));
        std::vector<std::vector<std::uint64_t>> partial(std::size_t(blocks.nBlocks));
        int const shift = kKeyBits - prefixBits - kRadixBits;
        parallelFor(blocks.nBlocks, [&](std::ptrdiff_t i) {
            std::vector<std::uint64_t> h(kBuckets, 0);
            for (std::ptrdiff_t j = blocks.begin(i); j < blocks.end(i); ++j) {
                Key const key = sortKey(c_.values[std::size_t(j)]);
                if (matches(key, prefix, prefixBits)) ++h[bucketOf(key, shift)];
            }
            partial[std::size_t(i)] = std::move(h);
        });
        std::vector<std::uint64_t> hist(kBuckets, 0);
        for (auto const& h : partial)
            for (std::size_t b = 0; b < kBuckets; ++b) hist[b] += h[b];
        return hist;
    }

    /// Every candidate whose key starts with `prefix` (prefixBits long).
    std::vector<T> gather(Key prefix, int prefixBits) const {
        std::vector<T> out;
        for (T v : c_.values)
            if (matches(sortKey(v), prefix, prefixBits)) out.push_back(v);
        return out;
    }

    CompactCandidates<T> const& c_;
    std::map<std::size_t, std::vector<T>> cache_;
};

/// numpy's "linear" percentile: interpolate between ranks floor(p) and floor(p) + 1.
template <typename T>
double quantile(RankSelector<T>& selector, double fraction) {
    std::int64_t const n = selector.count();
    if (n == 0) return std::numeric_limits<double>::quiet_NaN();
    double const pos = fraction * double(n - 1);
    auto const k = std::int64_t(std::floor(pos));
    double const t = pos - double(k);
    T next{};
    bool haveNext = false;
    double const a = double(selector.select(k, &next, &haveNext));
    if (t == 0.0 || k + 1 >= n) return a;
    double const b = haveNext ? double(next) : double(selector.select(k + 1));
    double const diff = b - a;
    return t < 0.5 ? a + diff * t : b - diff * (1.0 - t);
}

/// Ranks that quantile(fraction) will ask for, for RankSelector::prefetch.
void addQuantileRanks(std::vector<std::int64_t>& ranks, std::int64_t n, double fraction) {
    if (n == 0) return;
    auto const k = std::int64_t(std::floor(fraction * double(n - 1)));
    ranks.push_back(k);
    ranks.push_back(k + 1);
}

struct Moments {
    std::int64_t n = 0;
    double sum = 0.0;    // sum of (v - centre)
    double sumSq = 0.0;  // sum of (v - centre)^2
};

/// One clipping pass: moments of values with |v - centre| <= halfWidth, summed over fixed
/// chunks and combined in chunk order (bit-identical for any thread count).
template <typename T>
Moments clippedMoments(std::vector<T> const& values, double centre, double halfWidth) {
    std::ptrdiff_t const nChunks = fixedChunkCount(values.size());
    std::vector<Moments> partial(static_cast<std::size_t>(nChunks));
    parallelFor(nChunks, [&](std::ptrdiff_t i) {
        std::size_t const begin = std::size_t(i) * std::size_t(kPixelsPerTask);
        std::size_t const end = std::min(values.size(), begin + std::size_t(kPixelsPerTask));
        // kLanes independent accumulators break the floating-point add dependency chain so the
        // loop vectorises; lanes are combined in a fixed order, so the result stays exact.
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
        partial[std::size_t(i)] = m;
    });
    Moments total;
    for (auto const& m : partial) {
        total.n += m.n;
        total.sum += m.sum;
        total.sumSq += m.sumSq;
    }
    return total;
}

template <typename T>
Candidates<T> makeCandidates(ImageView<const T> values, ImageView<const std::int32_t> mask, std::int32_t andMask) {
    if (mask.data != nullptr) requireSameShape(values, mask, "values", "mask");
    return Candidates<T>{values, mask, andMask};
}

}  // namespace

template <typename T>
ClippedStatistics clippedStatistics(ImageView<const T> values, ImageView<const std::int32_t> mask,
                                    ClipControl const& control) {
    if (!(control.nSigma > 0.0) || !std::isfinite(control.nSigma)) {
        throw std::invalid_argument("clippedStatistics: nSigma must be positive and finite, got " +
                                    std::to_string(control.nSigma));
    }
    if (control.nIter < 1) {
        throw std::invalid_argument("clippedStatistics: nIter must be >= 1, got " + std::to_string(control.nIter));
    }
    CompactCandidates<T> const c(makeCandidates(values, mask, control.andMask));
    double const nan = std::numeric_limits<double>::quiet_NaN();
    ClippedStatistics out;
    RankSelector<T> selector(c);
    out.nCandidates = selector.count();
    if (out.nCandidates == 0) {
        out.mean = out.variance = out.median = out.iqr = nan;
        return out;
    }
    std::vector<std::int64_t> ranks;
    for (double f : {0.25, 0.5, 0.75}) addQuantileRanks(ranks, out.nCandidates, f);
    selector.prefetch(ranks);
    double const q1 = quantile(selector, 0.25);
    out.median = quantile(selector, 0.5);
    double const q3 = quantile(selector, 0.75);
    out.iqr = q3 - q1;

    double centre = out.median;
    double halfWidth = control.nSigma * kIqrToSigma * out.iqr;
    for (int pass = 0; pass < control.nIter; ++pass) {
        Moments const m = clippedMoments(c.values, centre, halfWidth);
        out.nUsed = m.n;
        if (m.n == 0) {
            out.mean = out.variance = nan;
        } else {
            out.mean = centre + m.sum / double(m.n);
            out.variance = m.n > 1 ? (m.sumSq - m.sum * m.sum / double(m.n)) / double(m.n - 1) : nan;
        }
        centre = out.mean;
        halfWidth = control.nSigma * std::sqrt(out.variance);
    }
    return out;
}

template <typename T>
double candidateQuantile(ImageView<const T> values, ImageView<const std::int32_t> mask, std::int32_t andMask,
                         double fraction) {
    if (!(fraction >= 0.0 && fraction <= 1.0)) {
        throw std::invalid_argument("candidateQuantile: fraction must be in [0, 1], got " + std::to_string(fraction));
    }
    CompactCandidates<T> const c(makeCandidates(values, mask, andMask));
    RankSelector<T> selector(c);
    return quantile(selector, fraction);
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
