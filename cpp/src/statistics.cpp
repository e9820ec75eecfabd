// Clipped statistics. The algorithm is the reference's (see statistics.hpp); the work plan is
// ours and keeps the number of passes over the pixels small:
//
//  1. a sorted deterministic sample of about 65536 pixels gives, for each wanted quartile, a
//     narrow value bracket that contains it with overwhelming probability;
//  2. one pass over the pixels copies the candidates (finite, unmasked) into a contiguous
//     buffer and, at the same time, counts the candidates below each bracket and collects those
//     inside it; nth_element on the small brackets gives the exact quartiles. A bracket that
//     misses its rank (adversarial data) is answered by an exact radix selection instead;
//  3. clipping: one pass over the candidates sums the moments of a "core" band that every
//     clip window is expected to contain and keeps the thin "edge" bands around it, which are
//     tested exactly in every pass. A pass whose window does not fit that picture falls back
//     to a full pass over all candidates. Either way the kept set of each pass is exactly
//     {v : |v - centre| <= halfWidth}, evaluated in double as the reference does.
//
// Floating-point sums run over fixed chunks combined in order, so results do not depend on the
// thread count.
#include "diffcal/statistics.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "diffcal/parallel.hpp"

namespace diffcal {

namespace {

constexpr double kIqrToSigma = 0.741301109252802;  // 1 / (2 * 0.6744897501960817)
constexpr std::size_t kChunk = std::size_t(1) << 16;  // fixed work split for float sums
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

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

/// Fixed chunks of kChunk elements: the split depends on n only, never on the thread count.
std::size_t chunkCount(std::size_t n) { return std::max<std::size_t>(1, (n + kChunk - 1) / kChunk); }

// ----------------------------------------------------------------------------------------------
// 1. Order-statistics helpers

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

/// Order-preserving map of a finite float to an unsigned integer.
template <typename T>
typename KeyOf<T>::type sortKey(T v) {
    using Key = typename KeyOf<T>::type;
    Key bits;
    std::memcpy(&bits, &v, sizeof(bits));
    constexpr Key sign = Key(1) << (sizeof(Key) * 8 - 1);
    return (bits & sign) ? Key(~bits) : Key(bits | sign);
}

/// Exact k-th smallest value by most-significant-digit radix selection (16 bits per round):
/// the fallback when a sample bracket misses. O(n) per round, no full copy of the data.
template <typename T>
T radixSelect(std::vector<T> const& values, std::size_t k) {
    using Key = typename KeyOf<T>::type;
    constexpr int kKeyBits = int(sizeof(Key) * 8);
    constexpr int kBits = 16;
    constexpr std::size_t kBuckets = std::size_t(1) << kBits;
    constexpr std::size_t kGatherLimit = std::size_t(1) << 18;
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

/// A value range [lo, hi] expected to hold the candidates of rank floor(f (n-1)) and the next,
/// with the number of candidates below it and the candidates inside it.
template <typename T>
struct Bracket {
    double fraction = 0.0;
    T lo = std::numeric_limits<T>::lowest();
    T hi = std::numeric_limits<T>::max();
    std::size_t below = 0;
    std::vector<T> inside;
};

/// Brackets for the given fractions from a deterministic sample of the candidates: about
/// 65536 evenly spaced pixels, sorted; each bracket spans the sample quantile +- 6 sigma of the
/// sample's rank noise. With too small a sample the bracket is the whole range (still exact).
template <typename T>
std::vector<Bracket<T>> sampleBrackets(ImageView<const T> values, ImageView<const std::int32_t> mask,
                                       std::int32_t andMask, std::vector<double> const& fractions) {
    std::size_t const npix = std::size_t(values.size());
    std::size_t const want = std::min<std::size_t>(npix, std::size_t(1) << 16);
    std::vector<T> sample;
    sample.reserve(want);
    bool const useMask = mask.data != nullptr && andMask != 0;
    for (std::size_t i = 0; i < want; ++i) {
        std::size_t const p = i * npix / want;
        auto const y = std::ptrdiff_t(p / std::size_t(values.width)), x = std::ptrdiff_t(p % std::size_t(values.width));
        T const v = values(y, x);
        if (std::isfinite(v) && (!useMask || (mask(y, x) & andMask) == 0)) sample.push_back(v);
    }
    std::sort(sample.begin(), sample.end());
    std::size_t const m = sample.size();
    std::vector<Bracket<T>> brackets(fractions.size());
    if (m < 256) return brackets;  // whole-range brackets
    double const margin = 3.0 * std::sqrt(double(m)) + 16.0;
    for (std::size_t r = 0; r < fractions.size(); ++r) {
        double const s = fractions[r] * double(m - 1);
        auto const lo = std::ptrdiff_t(std::floor(s - margin));
        auto const hi = std::ptrdiff_t(std::ceil(s + 1.0 + margin));
        brackets[r].fraction = fractions[r];
        if (lo > 0) brackets[r].lo = sample[std::size_t(lo)];
        if (hi < std::ptrdiff_t(m) - 1) brackets[r].hi = sample[std::size_t(hi)];
    }
    return brackets;
}

// ----------------------------------------------------------------------------------------------
// 2. One pass over the pixels: candidates and quantile brackets

/// Copy the finite values whose mask bits miss `andMask` into one buffer in row-major order (so
/// the sequence never depends on the thread count) and, in the same pass, fill the brackets.
/// The inner loop has no data-dependent branches: values are always written and cursors
/// advance only when they should; bracket hits go through a small local buffer.
template <typename T>
std::vector<T> compactCandidates(ImageView<const T> values, ImageView<const std::int32_t> mask,
                                 std::int32_t andMask, std::vector<Bracket<T>>& brackets) {
    constexpr std::size_t kMaxBrackets = 4;
    constexpr std::size_t kLocal = 1024;
    if (brackets.size() > kMaxBrackets) throw std::logic_error("compactCandidates: too many brackets");
    std::size_t const height = std::size_t(values.height);
    std::size_t const width = std::size_t(values.width);
    bool const useMask = mask.data != nullptr && andMask != 0;
    std::size_t const nb = brackets.size();
    T lo[kMaxBrackets], hi[kMaxBrackets];
    for (std::size_t r = 0; r < kMaxBrackets; ++r) {
        lo[r] = r < nb ? brackets[r].lo : std::numeric_limits<T>::max();
        hi[r] = r < nb ? brackets[r].hi : std::numeric_limits<T>::lowest();
    }
    std::vector<T> out(height * width);
    Blocks const rows = threadBlocks(height);
    std::vector<std::size_t> counts(rows.count, 0);
    std::vector<std::vector<Bracket<T>>> partial(rows.count, std::vector<Bracket<T>>(nb));
    parallelFor(std::ptrdiff_t(rows.count), [&](std::ptrdiff_t bi) {
        auto const b = std::size_t(bi);
        T* dst = out.data() + rows.begin(b) * width;
        std::size_t k = 0;
        std::size_t below[kMaxBrackets] = {0, 0, 0, 0};
        T local[kMaxBrackets][kLocal];
        std::size_t nLocal[kMaxBrackets] = {0, 0, 0, 0};
        auto flush = [&]() {
            for (std::size_t r = 0; r < nb; ++r) {
                auto& in = partial[b][r].inside;
                in.insert(in.end(), local[r], local[r] + nLocal[r]);
                nLocal[r] = 0;
            }
        };
        // The pixel loop, instantiated for unit and general column strides (unit strides let the
        // compiler drop the stride multiplications).
        auto scanRows = [&](auto vs, auto ms) {
            for (std::size_t y = rows.begin(b); y < rows.end(b); ++y) {
                T const* row = values.row(std::ptrdiff_t(y));
                std::int32_t const* mrow = useMask ? mask.row(std::ptrdiff_t(y)) : nullptr;
                for (std::size_t x0 = 0; x0 < width; x0 += kLocal) {
                    std::size_t const x1 = std::min(width, x0 + kLocal);
                    for (std::size_t x = x0; x < x1; ++x) {
                        T const v = row[std::ptrdiff_t(x) * vs];
                        bool keep = std::isfinite(v);
                        if (mrow != nullptr) keep &= (mrow[std::ptrdiff_t(x) * ms] & andMask) == 0;
                        dst[k] = v;
                        k += keep;
                        for (std::size_t r = 0; r < kMaxBrackets; ++r) {
                            below[r] += keep & (v < lo[r]);
                            local[r][nLocal[r]] = v;
                            nLocal[r] += keep & (v >= lo[r]) & (v <= hi[r]);
                        }
                    }
                    flush();
                }
            }
        };
        if (values.colStride == 1 && (!useMask || mask.colStride == 1)) {
            scanRows(std::integral_constant<std::ptrdiff_t, 1>{}, std::integral_constant<std::ptrdiff_t, 1>{});
        } else {
            scanRows(values.colStride, mask.colStride);
        }
        counts[b] = k;
        for (std::size_t r = 0; r < nb; ++r) partial[b][r].below = below[r];
    });
    // Close the gaps between blocks (blocks are in order, so moving left is safe).
    std::size_t total = counts[0];
    for (std::size_t b = 1; b < rows.count; ++b) {
        std::memmove(out.data() + total, out.data() + rows.begin(b) * width, counts[b] * sizeof(T));
        total += counts[b];
    }
    out.resize(total);
    for (std::size_t r = 0; r < nb; ++r) {
        for (auto const& p : partial) {
            brackets[r].below += p[r].below;
            brackets[r].inside.insert(brackets[r].inside.end(), p[r].inside.begin(), p[r].inside.end());
        }
    }
    return out;
}

/// numpy's "linear" percentile for each bracket's fraction, exact: nth_element inside the
/// bracket when it holds the wanted ranks, radix selection over all candidates otherwise.
template <typename T>
std::vector<double> bracketQuantiles(std::vector<T> const& cand, std::vector<Bracket<T>>& brackets) {
    std::size_t const n = cand.size();
    std::vector<double> out(brackets.size(), kNaN);
    if (n == 0) return out;
    parallelFor(std::ptrdiff_t(brackets.size()), [&](std::ptrdiff_t ri) {
        Bracket<T>& br = brackets[std::size_t(ri)];
        double const pos = br.fraction * double(n - 1);
        auto const k = std::size_t(std::floor(pos));
        std::size_t const k1 = std::min(k + 1, n - 1);
        T a, b;
        if (k >= br.below && k1 - br.below < br.inside.size()) {
            auto const kth = br.inside.begin() + std::ptrdiff_t(k - br.below);
            std::nth_element(br.inside.begin(), kth, br.inside.end());
            a = *kth;
            b = k1 == k ? a : *std::min_element(kth + 1, br.inside.end());
        } else {
            a = radixSelect(cand, k);
            b = radixSelect(cand, k1);
        }
        double const t = pos - double(k);
        double const diff = double(b) - double(a);
        out[std::size_t(ri)] = t == 0.0 ? double(a) : (t < 0.5 ? double(a) + diff * t : double(b) - diff * (1.0 - t));
    });
    return out;
}

/// Candidates and their quantiles at `fractions` (at most 4), in one pass over the pixels.
template <typename T>
std::vector<T> candidatesAndQuantiles(ImageView<const T> values, ImageView<const std::int32_t> mask,
                                      std::int32_t andMask, std::vector<double> const& fractions,
                                      std::vector<double>& quantilesOut) {
    if (mask.data != nullptr) requireSameShape(values, mask, "values", "mask");
    std::vector<Bracket<T>> brackets = sampleBrackets(values, mask, andMask, fractions);
    for (std::size_t r = 0; r < fractions.size(); ++r) brackets[r].fraction = fractions[r];
    std::vector<T> cand = compactCandidates(values, mask, andMask, brackets);
    quantilesOut = bracketQuantiles(cand, brackets);
    return cand;
}

// ----------------------------------------------------------------------------------------------
// 3. Clipping passes

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

/// Moments about `centre` of the values with |v - centre| <= halfWidth, over `values[begin,end)`.
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

/// A full clipping pass over every candidate (fixed chunks, ordered combination).
template <typename T>
Moments fullPass(std::vector<T> const& values, double centre, double halfWidth) {
    std::size_t const nChunks = chunkCount(values.size());
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

/// The candidates split by value into a core band [coreLo, coreHi] (moments about `ref` summed
/// once) and edge values in [outerLo, coreLo) U (coreHi, outerHi] kept for exact tests; values
/// outside [outerLo, outerHi] are only counted.
template <typename T>
struct Bands {
    double ref, coreLo, coreHi, outerLo, outerHi;
    Moments core;
    std::vector<T> edge;

    Bands(std::vector<T> const& values, double ref_, double coreLo_, double coreHi_, double outerLo_,
          double outerHi_)
        : ref(ref_), coreLo(coreLo_), coreHi(coreHi_), outerLo(outerLo_), outerHi(outerHi_) {
        std::size_t const nChunks = chunkCount(values.size());
        std::vector<Moments> partialCore(nChunks);
        std::vector<std::vector<T>> partialEdge(nChunks);
        parallelFor(std::ptrdiff_t(nChunks), [&](std::ptrdiff_t c) {
            std::size_t const begin = std::size_t(c) * kChunk;
            std::size_t const end = std::min(values.size(), begin + kChunk);
            double const half = 0.5 * (coreHi - coreLo), mid = 0.5 * (coreHi + coreLo);
            // Core moments use the same kernel as a clip pass: window = core band about mid.
            Moments m = windowMoments(values.data(), begin, end, mid, half);
            auto& edgeOut = partialEdge[std::size_t(c)];
            for (std::size_t j = begin; j < end; ++j) {
                double const v = double(values[j]);
                if (std::abs(v - mid) > half && v >= outerLo && v <= outerHi) edgeOut.push_back(values[j]);
            }
            partialCore[std::size_t(c)] = m.recentred(mid, ref);
        });
        for (auto const& m : partialCore) core += m;
        for (auto const& e : partialEdge) edge.insert(edge.end(), e.begin(), e.end());
    }

    /// True if the window [centre - halfWidth, centre + halfWidth] surely contains every core
    /// value and surely excludes every value outside the outer band, whatever the rounding.
    bool covers(double centre, double halfWidth) const {
        double const slack = 1e-9 * (std::abs(centre) + halfWidth + std::abs(outerLo) + std::abs(outerHi));
        double const lo = centre - halfWidth, hi = centre + halfWidth;
        return lo < coreLo - slack && hi > coreHi + slack && lo > outerLo + slack && hi < outerHi - slack;
    }

    /// Moments about `centre` of the window, when covers() holds.
    Moments window(double centre, double halfWidth) const {
        Moments m = core.recentred(ref, centre);
        m += windowMoments(edge.data(), 0, edge.size(), centre, halfWidth);
        return m;
    }
};

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
    std::vector<double> q;
    std::vector<T> const cand = candidatesAndQuantiles(values, mask, control.andMask, {0.25, 0.5, 0.75}, q);

    ClippedStatistics out;
    out.nCandidates = std::int64_t(cand.size());
    if (cand.empty()) {
        out.mean = out.variance = out.median = out.iqr = kNaN;
        return out;
    }
    out.median = q[1];
    out.iqr = q[2] - q[0];

    double centre = out.median;
    double halfWidth = control.nSigma * kIqrToSigma * out.iqr;
    // Later windows move by a fraction of sigma around the first one: sum the moments of the
    // values well inside it once, and re-test only the values near its edges in each pass.
    double const sigma = kIqrToSigma * out.iqr;
    bool const banded = control.nIter > 1 && sigma > 0.0 && std::isfinite(halfWidth);
    Bands<T> const* bands = nullptr;
    std::vector<Bands<T>> storage;
    if (banded) {
        double const inner = 0.3 * sigma, outer = 0.6 * sigma;
        storage.emplace_back(cand, centre, centre - halfWidth + inner, centre + halfWidth - inner,
                             centre - halfWidth - outer, centre + halfWidth + outer);
        bands = &storage.front();
    }
    for (int pass = 0; pass < control.nIter; ++pass) {
        Moments const m = (bands != nullptr && bands->covers(centre, halfWidth)) ? bands->window(centre, halfWidth)
                                                                               : fullPass(cand, centre, halfWidth);
        out.nUsed = m.n;
        if (m.n == 0) {
            out.mean = out.variance = kNaN;
        } else {
            out.mean = centre + m.sum / double(m.n);
            out.variance = m.n > 1 ? (m.sumSq - m.sum * m.sum / double(m.n)) / double(m.n - 1) : kNaN;
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
    std::vector<double> q;
    candidatesAndQuantiles(values, mask, andMask, {fraction}, q);
    return q[0];
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
