#include "diffcal/stitch.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <utility>

#include "diffcal/parallel.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#define DIFFCAL_STITCH_SSE2 1
#else
#define DIFFCAL_STITCH_SSE2 0
#endif

namespace diffcal {

ReduceOperation parseReduceOperation(std::string const& name) {
    if (name == "copy") return ReduceOperation::Copy;
    if (name == "sum") return ReduceOperation::Sum;
    if (name == "average") return ReduceOperation::Average;
    throw std::invalid_argument("reduce operation must be 'copy', 'sum' or 'average' to stitch an image, got '" +
                                name + "'");
}

void StitchStats::merge(StitchStats const& o) {
    if (o.nPixels > 0) {
        if (nPixels == 0) {
            maxWeight = o.maxWeight;
            minWeight = o.minWeight;
        } else {
            maxWeight = std::max(maxWeight, o.maxWeight);
            minWeight = std::min(minWeight, o.minWeight);
        }
    }
    nPixels += o.nPixels;
    nFlagged += o.nFlagged;
    nZeroWeight += o.nZeroWeight;
    sumWeight += o.sumWeight;
}

namespace {

template <typename V>
void requireBoxShape(ImageView<V> const& v, IntBox const& bbox, std::string const& what, char const* plane) {
    if (v.height != bbox.height() || v.width != bbox.width()) {
        throw std::invalid_argument(what + ": " + plane + " plane shape (" + std::to_string(v.height) + ", " +
                                    std::to_string(v.width) + ") does not match its box " + bbox.str() + " (" +
                                    std::to_string(bbox.height()) + " rows x " + std::to_string(bbox.width()) +
                                    " columns)");
    }
}

}  // namespace

template <typename T>
void ConstPlanes<T>::validate(std::string const& what) const {
    requireBoxShape(image, bbox, what, "image");
    requireBoxShape(mask, bbox, what, "mask");
    requireBoxShape(variance, bbox, what, "variance");
}

template <typename T>
void MutablePlanes<T>::validate(std::string const& what) const {
    requireBoxShape(image, bbox, what, "image");
    requireBoxShape(mask, bbox, what, "mask");
    requireBoxShape(variance, bbox, what, "variance");
}

namespace detail {

/// A boundary of a patch's column range in the current row (sweep event).
struct Event {
    std::int64_t x;    // output column (0-based in the row)
    std::int32_t k;    // index of the patch in the row's patch list (patch order)
    bool start;
};

/// The patches covering one segment: indices into the band's patch list, ascending (= patch order).
struct PatchSpan {
    std::int32_t const* first;
    std::int32_t count;
    std::int32_t const* begin() const { return first; }
    std::int32_t const* end() const { return first + count; }
};

/// A column range [xs, xe) of a row over which the set of covering patches is constant, those
/// patches being planPatches[first, first + count) (count 0: uncovered).
struct Segment {
    std::int64_t xs, xe;
    std::int32_t first, count;
};

/// Per-task scratch: accumulators of one output row for the columns covered by several patches
/// (or none), and the row's patch list and sweep state. Not initialised here: every segment
/// starts by filling what it uses.
template <typename T>
struct RowScratch {
    template <typename V>
    struct Buffer {
        std::unique_ptr<V[]> p;
        explicit Buffer(std::int64_t n) : p(new V[static_cast<std::size_t>(n)]) {}
        V* data() const { return p.get(); }
    };
    Buffer<std::int32_t> mask, weight;
    Buffer<double> sumImage, sumVariance;
    Buffer<T> copyImage, copyVariance;
    std::vector<ConstPlanes<T> const*> rowPatches;  // the band's patches, in patch order
    std::vector<Event> bandEvents;                  // their column ranges, sorted by column
    std::vector<Event> events;                      // bandEvents of the patches covering one row
    std::vector<std::int32_t> active;  // indices into rowPatches, ascending (= patch order)
    // The segments of the current row, reused by the following rows until the set of patches
    // covering the row changes (a patch starts or ends): sweeping the band's events for every
    // row would cost more than stitching the row's pixels.
    std::vector<Segment> plan;
    std::vector<std::int32_t> planPatches;
    std::vector<std::int64_t> changeRows;  // rows (ascending) where some band patch starts or ends
    explicit RowScratch(std::int64_t width)
        : mask(width),
          weight(width),
          sumImage(width),
          sumVariance(width),
          copyImage(width),
          copyVariance(width) {}
};

namespace {

std::atomic<bool> gUseSimd{true};


constexpr std::int64_t kBandRows = 16;  // rows per parallel task (fixed: results do not depend on it)

template <typename T>
inline bool isValid(T a, T b) {
    T const p = a * b;
    return p == p;  // !isnan(a * b) in the pixel type
}


/// Column range [x0, x1) of one output row and where its pixels go.
template <typename T>
struct RowOut {
    T* oi;
    T* ov;
    std::int32_t* om;
    std::ptrdiff_t ics, vcs, mcs;
    std::int32_t const* im;  // input mask row, or nullptr (zeros)
    std::ptrdiff_t ims;
    bool unit() const { return ics == 1 && vcs == 1 && mcs == 1 && (im == nullptr || ims == 1); }
};

struct SegmentStats {
    std::int32_t wmax = std::numeric_limits<std::int32_t>::min();
    std::int32_t wmin = std::numeric_limits<std::int32_t>::max();
    std::int64_t wsum = 0, nzero = 0, nflag = 0, npix = 0;
    void addCounts(std::int64_t n, std::int64_t nValid) {  // n pixels with weight 0 or 1
        if (n == 0) return;
        npix += n;
        wsum += nValid;
        nzero += n - nValid;
        if (nValid > 0) wmax = std::max(wmax, 1);
        if (nValid < n) wmin = std::min(wmin, 0);
        if (nValid == n) wmin = std::min(wmin, 1);
        if (nValid == 0) wmax = std::max(wmax, 0);
    }
};

// ------------------------------------------------------------------------------------------------
// Single-coverage segments: output = f(patch pixel) directly, no accumulators. Bit-identical to the
// accumulator path with one contribution: 0.0 + a == a + 0 (turns -0 into +0), a / 1 == a.
// ------------------------------------------------------------------------------------------------

/// Returns the number of valid pixels; writes image, variance, mask and adds the flagged count.
template <typename T>
std::int64_t directScalar(T const* pi, std::ptrdiff_t pics, T const* pv, std::ptrdiff_t pvcs, std::int32_t const* pm,
                          std::ptrdiff_t pmcs, std::int64_t n, RowOut<T> const& o, std::int64_t x0, ReduceOperation op,
                          std::int32_t badBits, std::int64_t& nflag) {
    T const nan = std::numeric_limits<T>::quiet_NaN();
    std::int64_t nValid = 0;
    for (std::int64_t k = 0; k < n; ++k) {
        std::int64_t const x = x0 + k;
        T const a = pi[k * pics], b = pv[k * pvcs];
        bool const ok = isValid(a, b);
        T img, var;
        bool bad;
        if (op == ReduceOperation::Copy) {
            img = ok ? a : nan;
            var = ok ? b : nan;
            bad = !ok;
        } else if (op == ReduceOperation::Sum) {
            img = ok ? a + T(0) : T(0);
            var = ok ? b + T(0) : T(0);
            bad = false;
        } else {
            img = ok ? a + T(0) : nan;
            var = ok ? b + T(0) : nan;
            bad = !ok;
        }
        o.oi[x * o.ics] = img;
        o.ov[x * o.vcs] = var;
        std::int32_t const in = o.im != nullptr ? o.im[x * o.ims] : 0;
        o.om[x * o.mcs] = in | pm[k * pmcs] | (bad ? badBits : 0);
        nValid += ok;
        nflag += bad;
    }
    return nValid;
}

// ------------------------------------------------------------------------------------------------
// Multiple (or no) coverage: accumulators. These scalar kernels define the semantics.
// ------------------------------------------------------------------------------------------------

template <typename T>
void addSumsScalar(T const* pi, std::ptrdiff_t pics, T const* pv, std::ptrdiff_t pvcs, std::int64_t begin,
                   std::int64_t end, double* si, double* sv, std::int32_t* wt) {
    for (std::int64_t x = begin; x < end; ++x) {
        T const a = pi[x * pics], b = pv[x * pvcs];
        if (isValid(a, b)) {
            si[x] += static_cast<double>(a);
            sv[x] += static_cast<double>(b);
            wt[x] += 1;
        }
    }
}

template <typename T>
void addCopyScalar(T const* pi, std::ptrdiff_t pics, T const* pv, std::ptrdiff_t pvcs, std::int64_t begin,
                   std::int64_t end, T* ci, T* cv, std::int32_t* wt) {
    for (std::int64_t x = begin; x < end; ++x) {
        T const a = pi[x * pics], b = pv[x * pvcs];
        if (isValid(a, b)) {
            ci[x] = a;
            cv[x] = b;
            wt[x] += 1;
        }
    }
}

/// Output values of a pixel whose valid contributions were copied (Copy: the last one wins, NaN if
/// none): returns true when it gets the bad bits.
template <typename T>
inline bool finalCopy(T copiedImage, T copiedVariance, T& img, T& var) {
    img = copiedImage;
    var = copiedVariance;
    return !isValid(img, var);
}

/// Output values of a pixel from the double sums of its `w` valid contributions (Sum, Average):
/// returns true when it gets the bad bits.
template <typename T>
inline bool finalSums(ReduceOperation op, double a, double b, std::int32_t w, T& img, T& var) {
    bool const bad = !isValid(static_cast<T>(a), static_cast<T>(b));  // step 4: NaN products of the sums
    if (op == ReduceOperation::Sum) {
        img = static_cast<T>(a);
        var = static_cast<T>(b);
        return bad;
    }
    if (w == 0) {  // step 5: no valid contribution
        img = var = std::numeric_limits<T>::quiet_NaN();
        return true;
    }
    img = static_cast<T>(a / static_cast<double>(w));
    var = static_cast<T>(b / static_cast<double>(w));
    return bad;
}

/// Output pixel x from the row accumulators: returns true when it gets the bad bits.
template <typename T>
inline bool finalPixel(RowScratch<T> const& s, std::int64_t x, ReduceOperation op, T& img, T& var) {
    if (op == ReduceOperation::Copy) return finalCopy(s.copyImage.data()[x], s.copyVariance.data()[x], img, var);
    return finalSums(op, s.sumImage.data()[x], s.sumVariance.data()[x], s.weight.data()[x], img, var);
}

template <typename T>
std::int64_t finalizeScalar(RowScratch<T> const& s, std::int64_t begin, std::int64_t end, ReduceOperation op,
                            std::int32_t badBits, RowOut<T> const& o) {
    std::int64_t nflag = 0;
    for (std::int64_t x = begin; x < end; ++x) {
        T img, var;
        bool const bad = finalPixel(s, x, op, img, var);
        o.oi[x * o.ics] = img;
        o.ov[x * o.vcs] = var;
        o.om[x * o.mcs] = s.mask.data()[x] | (bad ? badBits : 0);
        nflag += bad;
    }
    return nflag;
}

// ------------------------------------------------------------------------------------------------
// SSE2 kernels: the same operations lane by lane (IEEE float->double conversion, double adds in
// patch order, correctly rounded division and double->float conversion), hence bit-identical.
// ------------------------------------------------------------------------------------------------

#if DIFFCAL_STITCH_SSE2

inline __m128d selPd(__m128d m, __m128d a, __m128d b) { return _mm_or_pd(_mm_and_pd(m, a), _mm_andnot_pd(m, b)); }
inline __m128 selPs(__m128 m, __m128 a, __m128 b) { return _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b)); }
inline int popcount4(int bits) { return (bits & 1) + ((bits >> 1) & 1) + ((bits >> 2) & 1) + ((bits >> 3) & 1); }
inline __m128i loadSi(std::int32_t const* p) { return _mm_loadu_si128(reinterpret_cast<__m128i const*>(p)); }
inline void storeSi(std::int32_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

/// Single-coverage segment, unit strides, of the operation `Op` (hoisted out of the loop), with or
/// without an input mask row `im`: 4 pixels per step from 0, and when n >= 4 a last step over the
/// final 4 pixels, whose lanes already done rewrite the same values and are not counted again (the
/// outputs depend only on the patch pixels, which never alias them). Returns the first pixel not
/// processed (n when n >= 4); adds the valid and flagged counts.
template <ReduceOperation Op, bool WithInputMask>
std::int64_t directSimdOp(float const* pi, float const* pv, std::int32_t const* pm, std::int64_t n, float* oi,
                          float* ov, std::int32_t* om, std::int32_t const* im, std::int32_t badBits,
                          std::int64_t& nValid, std::int64_t& nflag) {
    __m128 const zero = _mm_setzero_ps();
    __m128 const nan = _mm_set1_ps(std::numeric_limits<float>::quiet_NaN());
    __m128i const bb = _mm_set1_epi32(badBits);
    __m128i validLanes = _mm_setzero_si128(), flagLanes = _mm_setzero_si128();  // per-lane counts
    auto step = [&](std::int64_t k, __m128i counted) {
        __m128 const a = _mm_loadu_ps(pi + k), b = _mm_loadu_ps(pv + k);
        __m128 const p = _mm_mul_ps(a, b);
        __m128 const ok = _mm_cmpord_ps(p, p);
        __m128 img, var, bad;
        if constexpr (Op == ReduceOperation::Copy) {
            img = selPs(ok, a, nan);
            var = selPs(ok, b, nan);
            bad = _mm_cmpunord_ps(p, p);
        } else if constexpr (Op == ReduceOperation::Sum) {
            img = _mm_and_ps(ok, _mm_add_ps(a, zero));
            var = _mm_and_ps(ok, _mm_add_ps(b, zero));
            bad = zero;
        } else {
            img = selPs(ok, _mm_add_ps(a, zero), nan);
            var = selPs(ok, _mm_add_ps(b, zero), nan);
            bad = _mm_cmpunord_ps(p, p);
        }
        __m128i m = loadSi(pm + k);
        if constexpr (WithInputMask) m = _mm_or_si128(m, loadSi(im + k));
        _mm_storeu_ps(oi + k, img);
        _mm_storeu_ps(ov + k, var);
        storeSi(om + k, _mm_or_si128(m, _mm_and_si128(_mm_castps_si128(bad), bb)));
        // true lanes are -1
        validLanes = _mm_sub_epi32(validLanes, _mm_and_si128(counted, _mm_castps_si128(ok)));
        flagLanes = _mm_sub_epi32(flagLanes, _mm_and_si128(counted, _mm_castps_si128(bad)));
    };
    __m128i const all = _mm_set1_epi32(-1);
    std::int64_t k = 0;
    for (; k + 4 <= n; k += 4) step(k, all);
    if (k < n && n >= 4) {
        std::int64_t const last = n - 4;
        __m128i const lane = _mm_set_epi32(3, 2, 1, 0);
        step(last, _mm_cmpgt_epi32(lane, _mm_set1_epi32(static_cast<int>(k - last) - 1)));  // lanes >= k - last
        k = n;
    }
    alignas(16) std::int32_t lanes[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(lanes), validLanes);
    nValid += std::int64_t(lanes[0]) + lanes[1] + lanes[2] + lanes[3];
    _mm_store_si128(reinterpret_cast<__m128i*>(lanes), flagLanes);
    nflag += std::int64_t(lanes[0]) + lanes[1] + lanes[2] + lanes[3];
    return k;
}

template <ReduceOperation Op>
std::int64_t directSimdMask(float const* pi, float const* pv, std::int32_t const* pm, std::int64_t n,
                            RowOut<float> const& o, std::int64_t x0, std::int32_t badBits, std::int64_t& nValid,
                            std::int64_t& nflag) {
    if (o.im != nullptr) {
        return directSimdOp<Op, true>(pi, pv, pm, n, o.oi + x0, o.ov + x0, o.om + x0, o.im + x0, badBits, nValid,
                                      nflag);
    }
    return directSimdOp<Op, false>(pi, pv, pm, n, o.oi + x0, o.ov + x0, o.om + x0, nullptr, badBits, nValid, nflag);
}

std::int64_t directSimd(float const* pi, float const* pv, std::int32_t const* pm, std::int64_t n, RowOut<float> const& o,
                        std::int64_t x0, ReduceOperation op, std::int32_t badBits, std::int64_t& nValid,
                        std::int64_t& nflag) {
    switch (op) {
        case ReduceOperation::Copy:
            return directSimdMask<ReduceOperation::Copy>(pi, pv, pm, n, o, x0, badBits, nValid, nflag);
        case ReduceOperation::Sum:
            return directSimdMask<ReduceOperation::Sum>(pi, pv, pm, n, o, x0, badBits, nValid, nflag);
        case ReduceOperation::Average:
            break;
    }
    return directSimdMask<ReduceOperation::Average>(pi, pv, pm, n, o, x0, badBits, nValid, nflag);
}

std::int64_t directSimd(double const* pi, double const* pv, std::int32_t const* pm, std::int64_t n,
                        RowOut<double> const& o, std::int64_t x0, ReduceOperation op, std::int32_t badBits,
                        std::int64_t& nValid, std::int64_t& nflag) {
    __m128d const zero = _mm_setzero_pd();
    __m128d const nan = _mm_set1_pd(std::numeric_limits<double>::quiet_NaN());
    __m128i const bb = _mm_set1_epi32(badBits);
    double* const oi = o.oi + x0;
    double* const ov = o.ov + x0;
    std::int32_t* const om = o.om + x0;
    std::int32_t const* const im = o.im != nullptr ? o.im + x0 : nullptr;
    std::int64_t k = 0;
    for (; k + 2 <= n; k += 2) {
        __m128d const a = _mm_loadu_pd(pi + k), b = _mm_loadu_pd(pv + k);
        __m128d const p = _mm_mul_pd(a, b);
        __m128d const ok = _mm_cmpord_pd(p, p);
        __m128d img, var, bad;
        if (op == ReduceOperation::Copy) {
            img = selPd(ok, a, nan);
            var = selPd(ok, b, nan);
            bad = _mm_cmpunord_pd(p, p);
        } else if (op == ReduceOperation::Sum) {
            img = _mm_and_pd(ok, _mm_add_pd(a, zero));
            var = _mm_and_pd(ok, _mm_add_pd(b, zero));
            bad = zero;
        } else {
            img = selPd(ok, _mm_add_pd(a, zero), nan);
            var = selPd(ok, _mm_add_pd(b, zero), nan);
            bad = _mm_cmpunord_pd(p, p);
        }
        _mm_storeu_pd(oi + k, img);
        _mm_storeu_pd(ov + k, var);
        __m128i const bad32 = _mm_shuffle_epi32(_mm_castpd_si128(bad), _MM_SHUFFLE(2, 0, 2, 0));
        __m128i m = _mm_loadl_epi64(reinterpret_cast<__m128i const*>(pm + k));
        if (im != nullptr) m = _mm_or_si128(m, _mm_loadl_epi64(reinterpret_cast<__m128i const*>(im + k)));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(om + k), _mm_or_si128(m, _mm_and_si128(bad32, bb)));
        int const okBits = _mm_movemask_pd(ok), badBitsMask = _mm_movemask_pd(bad);
        nValid += (okBits & 1) + (okBits >> 1);
        nflag += (badBitsMask & 1) + (badBitsMask >> 1);
    }
    return k;
}

/// Accumulate a patch segment into the sums; 4 (float) or 2 (double) pixels per step from 0.
std::int64_t addSumsSimd(float const* pi, float const* pv, std::int64_t n, double* si, double* sv, std::int32_t* wt) {
    std::int64_t x = 0;
    for (; x + 4 <= n; x += 4) {
        __m128 const a = _mm_loadu_ps(pi + x), b = _mm_loadu_ps(pv + x);
        __m128 const p = _mm_mul_ps(a, b);
        __m128 const ok = _mm_cmpord_ps(p, p);
        __m128d const okLo = _mm_castps_pd(_mm_unpacklo_ps(ok, ok)), okHi = _mm_castps_pd(_mm_unpackhi_ps(ok, ok));
        __m128d const aLo = _mm_cvtps_pd(a), aHi = _mm_cvtps_pd(_mm_movehl_ps(a, a));
        __m128d const bLo = _mm_cvtps_pd(b), bHi = _mm_cvtps_pd(_mm_movehl_ps(b, b));
        __m128d const s0 = _mm_loadu_pd(si + x), s1 = _mm_loadu_pd(si + x + 2);
        __m128d const v0 = _mm_loadu_pd(sv + x), v1 = _mm_loadu_pd(sv + x + 2);
        _mm_storeu_pd(si + x, selPd(okLo, _mm_add_pd(s0, aLo), s0));
        _mm_storeu_pd(si + x + 2, selPd(okHi, _mm_add_pd(s1, aHi), s1));
        _mm_storeu_pd(sv + x, selPd(okLo, _mm_add_pd(v0, bLo), v0));
        _mm_storeu_pd(sv + x + 2, selPd(okHi, _mm_add_pd(v1, bHi), v1));
        storeSi(wt + x, _mm_sub_epi32(loadSi(wt + x), _mm_castps_si128(ok)));  // ok lanes are -1
    }
    return x;
}

std::int64_t addSumsSimd(double const* pi, double const* pv, std::int64_t n, double* si, double* sv, std::int32_t* wt) {
    std::int64_t x = 0;
    for (; x + 2 <= n; x += 2) {
        __m128d const a = _mm_loadu_pd(pi + x), b = _mm_loadu_pd(pv + x);
        __m128d const p = _mm_mul_pd(a, b);
        __m128d const ok = _mm_cmpord_pd(p, p);
        __m128d const s0 = _mm_loadu_pd(si + x), v0 = _mm_loadu_pd(sv + x);
        _mm_storeu_pd(si + x, selPd(ok, _mm_add_pd(s0, a), s0));
        _mm_storeu_pd(sv + x, selPd(ok, _mm_add_pd(v0, b), v0));
        __m128i const ok32 = _mm_shuffle_epi32(_mm_castpd_si128(ok), _MM_SHUFFLE(2, 0, 2, 0));
        __m128i* const wp = reinterpret_cast<__m128i*>(wt + x);
        _mm_storel_epi64(wp, _mm_sub_epi32(_mm_loadl_epi64(wp), ok32));
    }
    return x;
}

std::int64_t addCopySimd(float const* pi, float const* pv, std::int64_t n, float* ci, float* cv, std::int32_t* wt) {
    std::int64_t x = 0;
    for (; x + 4 <= n; x += 4) {
        __m128 const a = _mm_loadu_ps(pi + x), b = _mm_loadu_ps(pv + x);
        __m128 const p = _mm_mul_ps(a, b);
        __m128 const ok = _mm_cmpord_ps(p, p);
        _mm_storeu_ps(ci + x, selPs(ok, a, _mm_loadu_ps(ci + x)));
        _mm_storeu_ps(cv + x, selPs(ok, b, _mm_loadu_ps(cv + x)));
        storeSi(wt + x, _mm_sub_epi32(loadSi(wt + x), _mm_castps_si128(ok)));
    }
    return x;
}

std::int64_t addCopySimd(double const* pi, double const* pv, std::int64_t n, double* ci, double* cv,
                         std::int32_t* wt) {
    std::int64_t x = 0;
    for (; x + 2 <= n; x += 2) {
        __m128d const a = _mm_loadu_pd(pi + x), b = _mm_loadu_pd(pv + x);
        __m128d const p = _mm_mul_pd(a, b);
        __m128d const ok = _mm_cmpord_pd(p, p);
        _mm_storeu_pd(ci + x, selPd(ok, a, _mm_loadu_pd(ci + x)));
        _mm_storeu_pd(cv + x, selPd(ok, b, _mm_loadu_pd(cv + x)));
        __m128i const ok32 = _mm_shuffle_epi32(_mm_castpd_si128(ok), _MM_SHUFFLE(2, 0, 2, 0));
        __m128i* const wp = reinterpret_cast<__m128i*>(wt + x);
        _mm_storel_epi64(wp, _mm_sub_epi32(_mm_loadl_epi64(wp), ok32));
    }
    return x;
}

/// Accumulators -> output for x in [begin, end) with unit strides, 4 pixels per step. Returns the
/// first pixel not done; adds the flagged count.
std::int64_t finalizeSimd(RowScratch<float> const& s, std::int64_t begin, std::int64_t end, ReduceOperation op,
                          std::int32_t badBits, RowOut<float> const& o, std::int64_t& nflag) {
    __m128i const bb = _mm_set1_epi32(badBits);
    __m128 const nan = _mm_set1_ps(std::numeric_limits<float>::quiet_NaN());
    std::int64_t x = begin;
    for (; x + 4 <= end; x += 4) {
        __m128 img, var, bad;
        if (op == ReduceOperation::Copy) {
            img = _mm_loadu_ps(s.copyImage.data() + x);
            var = _mm_loadu_ps(s.copyVariance.data() + x);
            __m128 const p = _mm_mul_ps(img, var);
            bad = _mm_cmpunord_ps(p, p);
        } else {
            __m128d const a0 = _mm_loadu_pd(s.sumImage.data() + x), a1 = _mm_loadu_pd(s.sumImage.data() + x + 2);
            __m128d const b0 = _mm_loadu_pd(s.sumVariance.data() + x), b1 = _mm_loadu_pd(s.sumVariance.data() + x + 2);
            __m128 const fa = _mm_movelh_ps(_mm_cvtpd_ps(a0), _mm_cvtpd_ps(a1));
            __m128 const fb = _mm_movelh_ps(_mm_cvtpd_ps(b0), _mm_cvtpd_ps(b1));
            __m128 const p = _mm_mul_ps(fa, fb);
            bad = _mm_cmpunord_ps(p, p);
            if (op == ReduceOperation::Sum) {
                img = fa;
                var = fb;
            } else {
                __m128i const w = loadSi(s.weight.data() + x);
                __m128i const zero = _mm_cmpeq_epi32(w, _mm_setzero_si128());
                __m128i const n = _mm_sub_epi32(w, zero);  // w, or 1 where w == 0
                __m128d const n0 = _mm_cvtepi32_pd(n), n1 = _mm_cvtepi32_pd(_mm_shuffle_epi32(n, _MM_SHUFFLE(3, 2, 3, 2)));
                __m128 const zf = _mm_castsi128_ps(zero);
                img = selPs(zf, nan, _mm_movelh_ps(_mm_cvtpd_ps(_mm_div_pd(a0, n0)), _mm_cvtpd_ps(_mm_div_pd(a1, n1))));
                var = selPs(zf, nan, _mm_movelh_ps(_mm_cvtpd_ps(_mm_div_pd(b0, n0)), _mm_cvtpd_ps(_mm_div_pd(b1, n1))));
                bad = _mm_or_ps(bad, zf);
            }
        }
        _mm_storeu_ps(o.oi + x, img);
        _mm_storeu_ps(o.ov + x, var);
        storeSi(o.om + x, _mm_or_si128(loadSi(s.mask.data() + x), _mm_and_si128(_mm_castps_si128(bad), bb)));
        nflag += popcount4(_mm_movemask_ps(bad));
    }
    return x;
}

std::int64_t finalizeSimd(RowScratch<double> const& s, std::int64_t begin, std::int64_t end, ReduceOperation op,
                          std::int32_t badBits, RowOut<double> const& o, std::int64_t& nflag) {
    __m128i const bb = _mm_set1_epi32(badBits);
    __m128d const nan = _mm_set1_pd(std::numeric_limits<double>::quiet_NaN());
    std::int64_t x = begin;
    for (; x + 2 <= end; x += 2) {
        __m128d img, var;
        if (op == ReduceOperation::Copy) {
            img = _mm_loadu_pd(s.copyImage.data() + x);
            var = _mm_loadu_pd(s.copyVariance.data() + x);
        } else {
            img = _mm_loadu_pd(s.sumImage.data() + x);
            var = _mm_loadu_pd(s.sumVariance.data() + x);
        }
        __m128d const p = _mm_mul_pd(img, var);
        __m128d bad = _mm_cmpunord_pd(p, p);
        if (op == ReduceOperation::Average) {
            __m128i const w = _mm_loadl_epi64(reinterpret_cast<__m128i const*>(s.weight.data() + x));
            __m128i const zero = _mm_cmpeq_epi32(w, _mm_setzero_si128());
            __m128d const n = _mm_cvtepi32_pd(_mm_sub_epi32(w, zero));
            __m128d const z = _mm_castsi128_pd(_mm_unpacklo_epi32(zero, zero));
            img = selPd(z, nan, _mm_div_pd(img, n));
            var = selPd(z, nan, _mm_div_pd(var, n));
            bad = _mm_or_pd(bad, z);
        }
        _mm_storeu_pd(o.oi + x, img);
        _mm_storeu_pd(o.ov + x, var);
        __m128i const bad32 = _mm_shuffle_epi32(_mm_castpd_si128(bad), _MM_SHUFFLE(2, 0, 2, 0));
        __m128i const m = _mm_loadl_epi64(reinterpret_cast<__m128i const*>(s.mask.data() + x));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(o.om + x), _mm_or_si128(m, _mm_and_si128(bad32, bb)));
        int const badMask = _mm_movemask_pd(bad);
        nflag += (badMask & 1) + (badMask >> 1);
    }
    return x;
}

#endif  // DIFFCAL_STITCH_SSE2

// ------------------------------------------------------------------------------------------------
// Segments and rows
// ------------------------------------------------------------------------------------------------

/// Columns [xs, xe) covered by exactly the patches `active` (ascending = patch order), none or
/// several: accumulate in the scratch row, then write the output.
template <typename T>
void accumulatedSegment(std::int64_t xs, std::int64_t xe, std::int64_t outMinX,
                        PatchSpan active, RowScratch<T>& s, RowOut<T> const& o,
                        ReduceOperation op, std::int32_t badBits, bool simd, std::int64_t y, SegmentStats& st) {
    std::int32_t* const sm = s.mask.data();
    std::int32_t* const wt = s.weight.data();
    for (std::int64_t x = xs; x < xe; ++x) sm[x] = o.im != nullptr ? o.im[x * o.ims] : 0;
    std::fill(wt + xs, wt + xe, 0);
    if (op == ReduceOperation::Copy) {
        std::fill(s.copyImage.data() + xs, s.copyImage.data() + xe, std::numeric_limits<T>::quiet_NaN());
        std::fill(s.copyVariance.data() + xs, s.copyVariance.data() + xe, std::numeric_limits<T>::quiet_NaN());
    } else {
        std::fill(s.sumImage.data() + xs, s.sumImage.data() + xe, 0.0);
        std::fill(s.sumVariance.data() + xs, s.sumVariance.data() + xe, 0.0);
    }
    std::int64_t const n = xe - xs;
    for (std::int32_t k : active) {
        ConstPlanes<T> const& p = *s.rowPatches[static_cast<std::size_t>(k)];
        std::int64_t const pr = y - p.bbox.minY;
        std::int64_t const off = xs - (p.bbox.minX - outMinX);  // first column of the segment in the patch
        std::ptrdiff_t const pics = p.image.colStride, pvcs = p.variance.colStride, pmcs = p.mask.colStride;
        T const* pi = p.image.row(pr) + off * pics;
        T const* pv = p.variance.row(pr) + off * pvcs;
        std::int32_t const* pm = p.mask.row(pr) + off * pmcs;
        for (std::int64_t x = 0; x < n; ++x) sm[xs + x] |= pm[x * pmcs];
        std::int64_t done = 0;
        if (op == ReduceOperation::Copy) {
#if DIFFCAL_STITCH_SSE2
            if (simd && pics == 1 && pvcs == 1) {
                done = addCopySimd(pi, pv, n, s.copyImage.data() + xs, s.copyVariance.data() + xs, wt + xs);
            }
#endif
            addCopyScalar(pi, pics, pv, pvcs, done, n, s.copyImage.data() + xs, s.copyVariance.data() + xs, wt + xs);
        } else {
#if DIFFCAL_STITCH_SSE2
            if (simd && pics == 1 && pvcs == 1) {
                done = addSumsSimd(pi, pv, n, s.sumImage.data() + xs, s.sumVariance.data() + xs, wt + xs);
            }
#endif
            addSumsScalar(pi, pics, pv, pvcs, done, n, s.sumImage.data() + xs, s.sumVariance.data() + xs, wt + xs);
        }
    }
    for (std::int64_t x = xs; x < xe; ++x) {
        std::int32_t const w = wt[x];
        st.wmax = std::max(st.wmax, w);
        st.wmin = std::min(st.wmin, w);
        st.wsum += w;
        st.nzero += (w == 0);
    }
    st.npix += n;
    std::int64_t x = xs;
#if DIFFCAL_STITCH_SSE2
    if (simd && o.ics == 1 && o.vcs == 1 && o.mcs == 1) x = finalizeSimd(s, xs, xe, op, badBits, o, st.nflag);
#endif
    st.nflag += finalizeScalar(s, x, xe, op, badBits, o);
}

/// Segments at most this wide that several patches (or none) cover go pixel by pixel through
/// registers instead of the row accumulators: the one-column overlaps of neighbouring grid cells,
/// one per cell in every row, where filling and finishing accumulators would cost more than the
/// pixel itself. Only speed depends on it.
constexpr std::int64_t kNarrowColumns = 8;

/// Columns [xs, xe) (a narrow segment) covered by exactly the patches `active`, none or several:
/// the operations of accumulatedSegment, in the same order, one pixel at a time.
template <typename T>
void narrowSegment(std::int64_t xs, std::int64_t xe, std::int64_t outMinX, PatchSpan active,
                   RowScratch<T> const& s, RowOut<T> const& o, ReduceOperation op, std::int32_t badBits,
                   std::int64_t y, SegmentStats& st) {
    T const nan = std::numeric_limits<T>::quiet_NaN();
    for (std::int64_t x = xs; x < xe; ++x) {
        std::int32_t mask = o.im != nullptr ? o.im[x * o.ims] : 0;
        std::int32_t w = 0;
        double sumImage = 0.0, sumVariance = 0.0;
        T copyImage = nan, copyVariance = nan;
        for (std::int32_t k : active) {
            ConstPlanes<T> const& p = *s.rowPatches[static_cast<std::size_t>(k)];
            std::int64_t const pr = y - p.bbox.minY;
            std::int64_t const col = x - (p.bbox.minX - outMinX);
            T const a = p.image.row(pr)[col * p.image.colStride], b = p.variance.row(pr)[col * p.variance.colStride];
            mask |= p.mask.row(pr)[col * p.mask.colStride];
            if (isValid(a, b)) {
                if (op == ReduceOperation::Copy) {
                    copyImage = a;
                    copyVariance = b;
                } else {
                    sumImage += static_cast<double>(a);
                    sumVariance += static_cast<double>(b);
                }
                ++w;
            }
        }
        st.wmax = std::max(st.wmax, w);
        st.wmin = std::min(st.wmin, w);
        st.wsum += w;
        st.nzero += (w == 0);
        T img, var;
        bool const bad = op == ReduceOperation::Copy ? finalCopy(copyImage, copyVariance, img, var)
                                                     : finalSums(op, sumImage, sumVariance, w, img, var);
        o.oi[x * o.ics] = img;
        o.ov[x * o.vcs] = var;
        o.om[x * o.mcs] = mask | (bad ? badBits : 0);
        st.nflag += bad;
    }
    st.npix += xe - xs;
}

/// Columns [xs, xe) covered by exactly one patch: straight from the patch to the output.
template <typename T>
void directSegment(std::int64_t xs, std::int64_t xe, std::int64_t outMinX, ConstPlanes<T> const& p, RowOut<T> const& o,
                   ReduceOperation op, std::int32_t badBits, bool simd, std::int64_t y, SegmentStats& st) {
    std::int64_t const n = xe - xs;
    std::int64_t const pr = y - p.bbox.minY;
    std::int64_t const off = xs - (p.bbox.minX - outMinX);
    std::ptrdiff_t const pics = p.image.colStride, pvcs = p.variance.colStride, pmcs = p.mask.colStride;
    T const* pi = p.image.row(pr) + off * pics;
    T const* pv = p.variance.row(pr) + off * pvcs;
    std::int32_t const* pm = p.mask.row(pr) + off * pmcs;
    std::int64_t nValid = 0, done = 0;
#if DIFFCAL_STITCH_SSE2
    if (simd && pics == 1 && pvcs == 1 && pmcs == 1 && o.unit()) {
        done = directSimd(pi, pv, pm, n, o, xs, op, badBits, nValid, st.nflag);
    }
#endif
    nValid += directScalar(pi + done * pics, pics, pv + done * pvcs, pvcs, pm + done * pmcs, pmcs, n - done, o,
                           xs + done, op, badBits, st.nflag);
    st.addCounts(n, nValid);
}

/// Rebuild s.plan for row y from the band's events: between consecutive event columns the set of
/// covering patches is constant.
template <typename T>
void planRow(std::int64_t y, std::int64_t W, RowScratch<T>& s) {
    s.events.clear();
    for (Event const& ev : s.bandEvents) {
        ConstPlanes<T> const* p = s.rowPatches[static_cast<std::size_t>(ev.k)];
        if (y >= p->bbox.minY && y <= p->bbox.maxY) s.events.push_back(ev);
    }
    s.plan.clear();
    s.planPatches.clear();
    s.active.clear();
    std::int64_t x = 0;
    std::size_t e = 0;
    while (x < W) {
        std::int64_t const next = e < s.events.size() ? std::min(s.events[e].x, W) : W;
        if (next > x) {
            s.plan.push_back(Segment{x, next, static_cast<std::int32_t>(s.planPatches.size()),
                                     static_cast<std::int32_t>(s.active.size())});
            s.planPatches.insert(s.planPatches.end(), s.active.begin(), s.active.end());
            x = next;
        }
        for (; e < s.events.size() && s.events[e].x <= x; ++e) {
            Event const& ev = s.events[e];
            if (ev.start) {
                s.active.insert(std::upper_bound(s.active.begin(), s.active.end(), ev.k), ev.k);
            } else {
                s.active.erase(std::lower_bound(s.active.begin(), s.active.end(), ev.k));
            }
        }
    }
}

template <typename T>
void stitchOneRow(std::int64_t y, ImageView<const std::int32_t> const& inputMask, MutablePlanes<T> const& out, ReduceOperation op,
                  std::int32_t badBits, bool simd, RowScratch<T>& s, StitchStats& st) {
    std::int64_t const r = y - out.bbox.minY;
    RowOut<T> const o{out.image.row(r),
                out.variance.row(r),
                out.mask.row(r),
                out.image.colStride,
                out.variance.colStride,
                out.mask.colStride,
                inputMask.data != nullptr ? inputMask.row(r) : nullptr,
                inputMask.colStride};
    SegmentStats seg;
    for (Segment const& sg : s.plan) {
        PatchSpan const active{s.planPatches.data() + sg.first, sg.count};
        if (sg.count == 1) {
            directSegment(sg.xs, sg.xe, out.bbox.minX, *s.rowPatches[static_cast<std::size_t>(active.first[0])], o, op,
                          badBits, simd, y, seg);
        } else if (sg.xe - sg.xs <= kNarrowColumns) {
            narrowSegment(sg.xs, sg.xe, out.bbox.minX, active, s, o, op, badBits, y, seg);
        } else {
            accumulatedSegment(sg.xs, sg.xe, out.bbox.minX, active, s, o, op, badBits, simd, y, seg);
        }
    }

    StitchStats rowStats;
    rowStats.nPixels = seg.npix;
    rowStats.maxWeight = seg.npix > 0 ? seg.wmax : 0;
    rowStats.minWeight = seg.npix > 0 ? seg.wmin : 0;
    rowStats.sumWeight = seg.wsum;
    rowStats.nZeroWeight = seg.nzero;
    rowStats.nFlagged = seg.nflag;
    st.merge(rowStats);
}

}  // namespace

void setUseSimd(bool enabled) { gUseSimd.store(enabled); }
bool useSimd() { return DIFFCAL_STITCH_SSE2 && gUseSimd.load(); }

template <typename T>
RowStitcher<T>::RowStitcher(std::int64_t y0, std::int64_t y1, std::vector<ConstPlanes<T> const*> const& patches,
                            ImageView<const std::int32_t> inputMask, MutablePlanes<T> const& output,
                            ReduceOperation op, std::int32_t badBits)
    : _y0(y0),
      _y1(y1),
      _inputMask(inputMask),
      _output(output),
      _op(op),
      _badBits(badBits),
      _simd(useSimd()) {
    if (y1 < y0 || output.bbox.width() == 0) return;
    std::int64_t const nBands = (y1 - y0) / kBandRows + 1;
    _buckets.resize(static_cast<std::size_t>(nBands));
    _partial.resize(static_cast<std::size_t>(nBands));
    for (ConstPlanes<T> const* p : patches) {
        if (p->bbox.empty()) continue;
        std::int64_t const lo = std::max(p->bbox.minY, y0), hi = std::min(p->bbox.maxY, y1);
        if (hi < lo) continue;
        for (std::int64_t b = (lo - y0) / kBandRows; b <= (hi - y0) / kBandRows; ++b) {
            _buckets[static_cast<std::size_t>(b)].push_back(p);
        }
    }
}

template <typename T>
RowStitcher<T>::~RowStitcher() = default;

template <typename T>
void RowStitcher<T>::runBand(std::int64_t band) {
    std::unique_ptr<RowScratch<T>> held;
    {
        std::lock_guard<std::mutex> lock(_scratchLock);
        if (!_idleScratch.empty()) {
            held = std::move(_idleScratch.back());
            _idleScratch.pop_back();
        }
    }
    if (!held) held = std::make_unique<RowScratch<T>>(_output.bbox.width());
    RowScratch<T>& scratch = *held;
    std::int64_t const ya = _y0 + band * kBandRows;
    std::int64_t const yb = std::min(ya + kBandRows - 1, _y1);
    auto const& bucket = _buckets[static_cast<std::size_t>(band)];
    auto& stats = _partial[static_cast<std::size_t>(band)];
    // Sort the band's column events once: rows then only drop the patches that miss them.
    scratch.rowPatches = bucket;
    scratch.bandEvents.clear();
    for (std::size_t i = 0; i < bucket.size(); ++i) {
        auto const k = static_cast<std::int32_t>(i);
        scratch.bandEvents.push_back(Event{bucket[i]->bbox.minX - _output.bbox.minX, k, true});
        scratch.bandEvents.push_back(Event{bucket[i]->bbox.maxX + 1 - _output.bbox.minX, k, false});
    }
    std::sort(scratch.bandEvents.begin(), scratch.bandEvents.end(),
              [](Event const& a, Event const& b) { return a.x < b.x; });
    // rows where the set of covering patches can change: the plan is rebuilt there only
    scratch.changeRows.clear();
    for (ConstPlanes<T> const* p : bucket) {
        if (p->bbox.minY > ya && p->bbox.minY <= yb) scratch.changeRows.push_back(p->bbox.minY);
        if (p->bbox.maxY >= ya && p->bbox.maxY < yb) scratch.changeRows.push_back(p->bbox.maxY + 1);
    }
    std::sort(scratch.changeRows.begin(), scratch.changeRows.end());
    auto nextChange = scratch.changeRows.begin();
    std::int64_t const width = _output.bbox.width();
    for (std::int64_t y = ya; y <= yb; ++y) {
        bool const changed = nextChange != scratch.changeRows.end() && *nextChange == y;
        while (nextChange != scratch.changeRows.end() && *nextChange <= y) ++nextChange;
        if (y == ya || changed) planRow<T>(y, width, scratch);
        stitchOneRow<T>(y, _inputMask, _output, _op, _badBits, _simd, scratch, stats);
    }
    std::lock_guard<std::mutex> lock(_scratchLock);
    _idleScratch.push_back(std::move(held));
}

template <typename T>
StitchStats RowStitcher<T>::stats() const {
    StitchStats total;
    for (auto const& p : _partial) total.merge(p);
    return total;
}

template class RowStitcher<float>;
template class RowStitcher<double>;

template <typename T>
StitchStats stitchRows(std::int64_t y0, std::int64_t y1, std::vector<ConstPlanes<T> const*> const& patches,
                       ImageView<const std::int32_t> inputMask, MutablePlanes<T> const& output, ReduceOperation op,
                       std::int32_t badBits) {
    RowStitcher<T> rs(y0, y1, patches, inputMask, output, op, badBits);
    parallelFor(rs.nBands(), [&](std::ptrdiff_t b) { rs.runBand(b); });
    return rs.stats();
}

template StitchStats stitchRows<float>(std::int64_t, std::int64_t, std::vector<ConstPlanes<float> const*> const&,
                                       ImageView<const std::int32_t>, MutablePlanes<float> const&, ReduceOperation,
                                       std::int32_t);
template StitchStats stitchRows<double>(std::int64_t, std::int64_t, std::vector<ConstPlanes<double> const*> const&,
                                        ImageView<const std::int32_t>, MutablePlanes<double> const&, ReduceOperation,
                                        std::int32_t);

}  // namespace detail

template <typename T>
StitchStats stitch(std::vector<ConstPlanes<T>> const& patches, ImageView<const std::int32_t> inputMask,
                   MutablePlanes<T> const& output, ReduceOperation op, std::int32_t badBits) {
    output.validate("output");
    if (inputMask.data != nullptr) requireBoxShape(inputMask, output.bbox, "input", "mask");
    std::vector<ConstPlanes<T> const*> ptrs;
    ptrs.reserve(patches.size());
    for (std::size_t i = 0; i < patches.size(); ++i) {
        ConstPlanes<T> const& p = patches[i];
        auto const fits = [&](auto const& v) { return v.height == p.bbox.height() && v.width == p.bbox.width(); };
        if (!output.bbox.contains(p.bbox) || !fits(p.image) || !fits(p.mask) || !fits(p.variance)) {
            std::string const what = "mapper result " + std::to_string(i);  // (only for the message)
            if (!output.bbox.contains(p.bbox)) {
                throw std::invalid_argument(what + ": its box " + p.bbox.str() + " is not inside the exposure bbox " +
                                            output.bbox.str());
            }
            p.validate(what);
        }
        ptrs.push_back(&p);
    }
    StitchStats st = detail::stitchRows<T>(output.bbox.minY, output.bbox.maxY, ptrs, inputMask, output, op, badBits);
    st.nPatches = static_cast<std::int64_t>(patches.size());
    return st;
}

template struct ConstPlanes<float>;
template struct ConstPlanes<double>;
template struct MutablePlanes<float>;
template struct MutablePlanes<double>;
template StitchStats stitch<float>(std::vector<ConstPlanes<float>> const&, ImageView<const std::int32_t>,
                                   MutablePlanes<float> const&, ReduceOperation, std::int32_t);
template StitchStats stitch<double>(std::vector<ConstPlanes<double>> const&, ImageView<const std::int32_t>,
                                    MutablePlanes<double> const&, ReduceOperation, std::int32_t);

}  // namespace diffcal
