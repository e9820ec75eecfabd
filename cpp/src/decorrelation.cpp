// Non-spatial Alard-Lupton decorrelation (spec §2.4-2.8); see decorrelation.hpp.
#include "diffcal/decorrelation.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <complex>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include "diffcal/fft.hpp"
#include "diffcal/parallel.hpp"

namespace diffcal::decorrelation {

namespace {

using fft::Complex;
using fft::RealFft2d;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

/// An rfft buffer whose memory is not zeroed on allocation (every user writes all of it first;
/// the first touch then happens in parallel inside the fill). Buffers up to kPooledBytes are kept
/// by the thread for its next cell (the spatial decorrelation runs hundreds of cells per thread:
/// fresh allocations of this size come from new pages, which the kernel zero-fills every time).
class Buffer {
public:
    explicit Buffer(std::ptrdiff_t n) : n_(static_cast<std::size_t>(n)) {
        auto& pool = threadPool();
        for (auto it = pool.items.begin(); it != pool.items.end(); ++it) {
            if (it->n == n_) {
                p_ = it->p;
                pool.items.erase(it);
                return;
            }
        }
        p_ = static_cast<Complex*>(::operator new[](sizeof(Complex) * n_));
    }
    Buffer(Buffer const&) = delete;
    Buffer& operator=(Buffer const&) = delete;
    ~Buffer() { reset(); }
    Complex* data() const { return p_; }
    Complex& operator[](std::size_t i) const { return p_[i]; }
    void reset() {
        if (!p_) return;
        auto& pool = threadPool();
        if (n_ * sizeof(Complex) <= kPooledBytes && pool.items.size() < kPooledBuffers) {
            pool.items.push_back({n_, p_});
        } else {
            ::operator delete[](p_);
        }
        p_ = nullptr;
    }

private:
    static constexpr std::size_t kPooledBytes = std::size_t(4) << 20;
    static constexpr std::size_t kPooledBuffers = 4;
    struct Item {
        std::size_t n;
        Complex* p;
    };
    struct Pool {
        std::vector<Item> items;
        ~Pool() {
            for (auto const& i : items) ::operator delete[](i.p);
        }
    };
    static Pool& threadPool() {
        thread_local Pool pool;
        return pool;
    }
    std::size_t n_;
    Complex* p_ = nullptr;
};

/// Run body(y0, y1) over a fixed split of [0, rows) into at most kMaxSplitTasks contiguous ranges.
void forRowRanges(std::ptrdiff_t rows, bool parallel, std::function<void(std::ptrdiff_t, std::ptrdiff_t)> const& body) {
    std::ptrdiff_t const nTasks = taskCount(rows, parallel);
    forTasks(nTasks, parallel, [&](std::ptrdiff_t t) { body(rows * t / nTasks, rows * (t + 1) / nTasks); });
}

std::string shapeStr(std::ptrdiff_t rows, std::ptrdiff_t cols) {
    return "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
}

template <typename V>
std::string shapeOf(ImageView<V> const& v) {
    return shapeStr(v.height, v.width);
}

std::ptrdiff_t wrapIndex(std::ptrdiff_t i, std::ptrdiff_t n) {
    i %= n;
    return i < 0 ? i + n : i;
}

/// Zero an rfft buffer and place `k` origin-centred (padCenterOrigin) into its real layout.
void placeCentred(ImageView<const double> k, RealFft2d const& plan, Complex* buffer, bool parallel) {
    std::ptrdiff_t const cc = plan.spectrumCols();
    forRowRanges(plan.rows(), parallel, [&](std::ptrdiff_t y0, std::ptrdiff_t y1) {
        std::fill(buffer + y0 * cc, buffer + y1 * cc, Complex(0.0, 0.0));
    });
    std::ptrdiff_t const stride = 2 * plan.spectrumCols();
    double* d = reinterpret_cast<double*>(buffer);
    for (std::ptrdiff_t y = 0; y < k.height; ++y) {
        std::ptrdiff_t const ty = wrapIndex(y - k.height / 2, plan.rows());
        for (std::ptrdiff_t x = 0; x < k.width; ++x) {
            d[ty * stride + wrapIndex(x - k.width / 2, plan.cols())] = k(y, x);
        }
    }
}

/// Copy a plane into an rfft buffer at the origin, replacing NaN/Inf by `fill`, zeros elsewhere.
template <typename T>
void placePlane(ImageView<const T> plane, double fill, RealFft2d const& plan, Complex* buffer, bool parallel) {
    std::ptrdiff_t const stride = 2 * plan.spectrumCols();
    double* d = reinterpret_cast<double*>(buffer);
    forRowRanges(plan.rows(), parallel, [&](std::ptrdiff_t y0, std::ptrdiff_t y1) {
        for (std::ptrdiff_t y = y0; y < y1; ++y) {
            double* row = d + y * stride;
            std::ptrdiff_t x = 0;
            if (y < plane.height) {
                for (; x < plane.width; ++x) {
                    double const v = static_cast<double>(plane(y, x));
                    row[x] = std::isfinite(v) ? v : fill;
                }
            }
            std::fill(row + x, row + stride, 0.0);
        }
    });
}

/// placePlane of the difference image with the mean of its finite values as the fill, in one pass
/// over the image: the finite values are placed and summed, the rest set after (only if any).
/// Returns the fill (row sums added in row order) and the count of non-finite values.
template <typename T>
std::pair<double, std::int64_t> placeFilledWithMean(ImageView<const T> plane, RealFft2d const& plan, Complex* buffer,
                                                    bool parallel) {
    std::ptrdiff_t const stride = 2 * plan.spectrumCols();
    double* d = reinterpret_cast<double*>(buffer);
    std::vector<double> sums(static_cast<std::size_t>(plane.height), 0.0);
    std::vector<std::int64_t> counts(static_cast<std::size_t>(plane.height), 0);
    forRowRanges(plan.rows(), parallel, [&](std::ptrdiff_t y0, std::ptrdiff_t y1) {
        for (std::ptrdiff_t y = y0; y < y1; ++y) {
            double* row = d + y * stride;
            std::ptrdiff_t x = 0;
            if (y < plane.height) {
                plane.prefetchRow(y + 4);  // a few rows ahead
                double s = 0.0;
                std::int64_t c = 0;
                for (; x < plane.width; ++x) {
                    double const v = static_cast<double>(plane(y, x));
                    bool const finite = std::isfinite(v);
                    row[x] = finite ? v : 0.0;
                    if (finite) {
                        s += v;
                        ++c;
                    }
                }
                sums[static_cast<std::size_t>(y)] = s;
                counts[static_cast<std::size_t>(y)] = c;
            }
            std::fill(row + x, row + stride, 0.0);
        }
    });
    double s = 0.0;
    std::int64_t c = 0;
    for (std::size_t y = 0; y < sums.size(); ++y) {
        s += sums[y];
        c += counts[y];
    }
    std::int64_t const nonFinite = static_cast<std::int64_t>(plane.height * plane.width) - c;
    double const fill = c > 0 ? s / static_cast<double>(c) : kNaN;
    if (nonFinite > 0) {
        forRowRanges(plane.height, parallel, [&](std::ptrdiff_t y0, std::ptrdiff_t y1) {
            for (std::ptrdiff_t y = y0; y < y1; ++y) {
                if (counts[static_cast<std::size_t>(y)] == plane.width) continue;
                double* row = d + y * stride;
                for (std::ptrdiff_t x = 0; x < plane.width; ++x)
                    if (!std::isfinite(static_cast<double>(plane(y, x)))) row[x] = fill;
            }
        });
    }
    return {fill, nonFinite};
}

void checkScalars(double v, double vt) {
    if (!std::isfinite(v) || v <= 0.0) {
        throw std::invalid_argument("decorrelation: the mean variance v of the unconvolved image must be positive "
                                    "and finite, got " + std::to_string(v));
    }
    if (!std::isfinite(vt) || vt < 0.0) {
        throw std::invalid_argument("decorrelation: the mean variance vt of the convolved image must be "
                                    "non-negative and finite, got " + std::to_string(vt));
    }
}

void checkKernel(ImageView<const double> k, char const* name, Shape2 limit, char const* limitName) {
    if (k.empty()) throw std::invalid_argument(std::string("decorrelation: ") + name + " is empty");
    if (k.height > limit.rows || k.width > limit.cols) {
        throw std::invalid_argument(std::string("decorrelation: ") + name + " shape " + shapeOf(k) +
                                    " is larger than the " + limitName + " " + shapeStr(limit.rows, limit.cols));
    }
    for (std::ptrdiff_t y = 0; y < k.height; ++y) {
        for (std::ptrdiff_t x = 0; x < k.width; ++x) {
            if (!std::isfinite(k(y, x))) {
                throw std::invalid_argument(std::string("decorrelation: ") + name + " contains non-finite values");
            }
        }
    }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// geometry
// ------------------------------------------------------------------------------------------------

Shape2 computeCommonShape(std::vector<Shape2> const& shapes) {
    if (shapes.empty()) throw std::invalid_argument("computeCommonShape: no shapes given");
    auto axis = [&](bool rows) {
        std::vector<std::ptrdiff_t> n;
        for (auto const& s : shapes) {
            std::ptrdiff_t const v = rows ? s.rows : s.cols;
            if (v < 1) throw std::invalid_argument("computeCommonShape: shapes must be positive, got " + shapeStr(s.rows, s.cols));
            n.push_back(v);
        }
        std::sort(n.begin(), n.end(), std::greater<>());
        std::ptrdiff_t m = n.size() > 1 ? n[0] + n[1] - 1 : n[0];
        if (m % 2) ++m;
        return m;
    };
    return Shape2{axis(true), axis(false)};
}

Shape2 fftShape(Shape2 exact, FftShapeMode mode) {
    if (mode == FftShapeMode::Exact) return exact;
    return Shape2{fft::cheapestFastSize(exact.rows), fft::cheapestFastSize(exact.cols)};
}

void padCenterOrigin(ImageView<const double> in, ImageView<double> out) {
    if (in.height > out.height || in.width > out.width) {
        throw std::invalid_argument("padCenterOrigin: input " + shapeOf(in) + " larger than output " + shapeOf(out));
    }
    for (std::ptrdiff_t y = 0; y < out.height; ++y) {
        for (std::ptrdiff_t x = 0; x < out.width; ++x) out(y, x) = 0.0;
    }
    for (std::ptrdiff_t y = 0; y < in.height; ++y) {
        std::ptrdiff_t const ty = wrapIndex(y - in.height / 2, out.height);
        for (std::ptrdiff_t x = 0; x < in.width; ++x) out(ty, wrapIndex(x - in.width / 2, out.width)) = in(y, x);
    }
}

void unpadCenterOrigin(ImageView<const double> in, ImageView<double> out) {
    if (out.height > in.height || out.width > in.width) {
        throw std::invalid_argument("unpadCenterOrigin: output " + shapeOf(out) + " larger than input " + shapeOf(in));
    }
    for (std::ptrdiff_t y = 0; y < out.height; ++y) {
        std::ptrdiff_t const sy = wrapIndex(y - out.height / 2, in.height);
        for (std::ptrdiff_t x = 0; x < out.width; ++x) out(y, x) = in(sy, wrapIndex(x - out.width / 2, in.width));
    }
}

// ------------------------------------------------------------------------------------------------
// filters
// ------------------------------------------------------------------------------------------------

namespace {

/// Row spectra of a small array placed origin-centred (padCenterOrigin) on the grid: only its
/// rows are non-zero, so the 2-D transform needs no full-size buffer.
struct SparseRows {
    std::vector<std::ptrdiff_t> gridRow;  // grid row of each kernel row
    std::vector<Complex> spectra;         // row spectra, kernel rows x spectrumCols
};

SparseRows sparseRowSpectra(ImageView<const double> k, RealFft2d const& plan) {
    SparseRows out;
    std::ptrdiff_t const cc = plan.spectrumCols();
    out.spectra.assign(static_cast<std::size_t>(k.height * cc), Complex(0.0, 0.0));
    std::vector<Complex> work(static_cast<std::size_t>(plan.rowWorkSize()));
    for (std::ptrdiff_t y = 0; y < k.height; ++y) {
        out.gridRow.push_back(wrapIndex(y - k.height / 2, plan.rows()));
        Complex* row = out.spectra.data() + y * cc;
        double* r = reinterpret_cast<double*>(row);
        for (std::ptrdiff_t x = 0; x < k.width; ++x) r[wrapIndex(x - k.width / 2, plan.cols())] = k(y, x);
        plan.rowForward(row, work.data());
    }
    return out;
}

/// Column-transform the sparse rows of one column block into `block` (rows x bw interleaved).
void sparseBlockSpectrum(SparseRows const& s, RealFft2d const& plan, std::ptrdiff_t x0, std::ptrdiff_t bw,
                         Complex* block, Complex* work) {
    std::ptrdiff_t const cc = plan.spectrumCols();
    std::fill(block, block + plan.rows() * bw, Complex(0.0, 0.0));
    for (std::size_t r = 0; r < s.gridRow.size(); ++r) {
        Complex const* src = s.spectra.data() + static_cast<std::ptrdiff_t>(r) * cc + x0;
        std::copy(src, src + bw, block + s.gridRow[r] * bw);
    }
    plan.columnTransform(block, bw, false, work);
}

/// |FFT(kernel)|^2 on one grid (rows x spectrumCols), for the last kernel seen by this thread.
struct KernelPowerCache {
    std::vector<double> kernel;
    std::ptrdiff_t kh = 0, kw = 0;
    Shape2 shape{0, 0};
    std::vector<double> power;
    bool matches(ImageView<const double> k, Shape2 s) const {
        if (!(s == shape) || k.height != kh || k.width != kw) return false;
        for (std::ptrdiff_t y = 0; y < kh; ++y)
            for (std::ptrdiff_t x = 0; x < kw; ++x)
                if (!(k(y, x) == kernel[std::size_t(y * kw + x)])) return false;
        return true;
    }
    void reset(ImageView<const double> k, Shape2 s, std::size_t n) {
        kh = k.height;
        kw = k.width;
        shape = s;
        kernel.resize(std::size_t(kh * kw));
        for (std::ptrdiff_t y = 0; y < kh; ++y)
            for (std::ptrdiff_t x = 0; x < kw; ++x) kernel[std::size_t(y * kw + x)] = k(y, x);
        power.assign(n, 0.0);
    }
};

constexpr std::ptrdiff_t kMaxCachedPower = std::ptrdiff_t(1) << 19;  // 4 MiB of doubles

KernelPowerCache& kernelPowerCache() {
    thread_local KernelPowerCache cache;
    return cache;
}

/// Run body(x0, bw, blockScratch, work) for every column block, on a fixed split into tasks.
void forColumnBlocks(RealFft2d const& plan, bool parallel, int nScratch,
                     std::function<void(std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t, Complex**, Complex*)> const& body) {
    std::ptrdiff_t const nBlocks = plan.columnBlockCount();
    std::ptrdiff_t const nTasks = taskCount(nBlocks, parallel);
    std::ptrdiff_t const blockSize = plan.rows() * RealFft2d::maxBlockWidth();
    forTasks(nTasks, parallel, [&](std::ptrdiff_t task) {
        std::vector<Complex> scratch(static_cast<std::size_t>(nScratch * blockSize + plan.columnWorkSize()));
        Complex* blocks[2] = {scratch.data(), scratch.data() + blockSize};
        Complex* work = scratch.data() + nScratch * blockSize;
        for (std::ptrdiff_t blk = nBlocks * task / nTasks; blk < nBlocks * (task + 1) / nTasks; ++blk) {
            auto const [x0, bw] = plan.columnBlock(blk);
            body(blk, x0, bw, blocks, work);
        }
    });
}

/// Multiply the 2-D spectrum of an rfft buffer (real samples in, filtered samples out) by a real
/// half-spectrum filter: rows forward, then per column block forward, multiply, inverse (one
/// pass over the data instead of three), then rows inverse (of the rows [rowBegin, rowEnd) only).
void filterInPlace(RealFft2d const& plan, Complex* buf, std::vector<double> const& filter, bool parallel,
                   std::ptrdiff_t rowBegin, std::ptrdiff_t rowEnd) {
    std::ptrdiff_t const cc = plan.spectrumCols();
    plan.rowsForward(buf, parallel);
    forColumnBlocks(plan, parallel, 1, [&](std::ptrdiff_t, std::ptrdiff_t x0, std::ptrdiff_t bw, Complex** blocks,
                                           Complex* work) {
        Complex* b = blocks[0];
        plan.gatherBlock(buf, x0, bw, b);
        plan.columnTransform(b, bw, false, work);
        for (std::ptrdiff_t t = 0; t < plan.rows(); ++t) {
            double const* f = filter.data() + t * cc + x0;
            Complex* row = b + t * bw;
            for (std::ptrdiff_t q = 0; q < bw; ++q) row[q] *= f[q];
        }
        plan.columnTransform(b, bw, true, work);
        plan.scatterBlock(b, x0, bw, buf);
    });
    plan.rowsInverse(buf, parallel, rowBegin, rowEnd);
}

}  // namespace

CorrectionFilter computeCorrectionFilter(ImageView<const double> kernel, ImageView<const double> preConvKernel,
                                         double v, double vt, Shape2 shape, bool parallel) {
    checkScalars(v, vt);
    if (shape.rows < 1 || shape.cols < 1) {
        throw std::invalid_argument("computeCorrectionFilter: bad FFT shape " + shapeStr(shape.rows, shape.cols));
    }
    checkKernel(kernel, "kernel", shape, "FFT grid");
    bool const score = !preConvKernel.empty();
    if (score) checkKernel(preConvKernel, "preConvKernel", shape, "FFT grid");

    auto const plan = RealFft2d::get(shape.rows, shape.cols);
    std::ptrdiff_t const cc = plan->spectrumCols();
    CorrectionFilter f;
    f.shape = shape;
    f.spectrumCols = cc;
    f.score = score;
    for (std::ptrdiff_t y = 0; y < kernel.height; ++y) {
        for (std::ptrdiff_t x = 0; x < kernel.width; ++x) f.kSum += kernel(y, x);
    }
    // |K|^2 on the grid, remembered per thread for the last kernel and grid: the cells of a spatial
    // decorrelation with a fixed kernel share it (same values, no transforms)
    // (small grids only: a whole-image grid would keep tens of MB per thread)
    KernelPowerCache& cache = kernelPowerCache();
    bool const useCache = !score && plan->bufferSize() <= kMaxCachedPower;
    bool const cached = useCache && cache.matches(kernel, shape);
    if (useCache && !cached) cache.reset(kernel, shape, std::size_t(plan->bufferSize()));
    SparseRows kRows, pRows;
    if (!cached) kRows = sparseRowSpectra(kernel, *plan);
    if (score) pRows = sparseRowSpectra(preConvKernel, *plan);

    f.corr.resize(static_cast<std::size_t>(plan->bufferSize()));
    double const numer = v + vt * f.kSum * f.kSum;
    double const pFloor = 1000.0 * DBL_MIN;
    bool const evenCols = shape.cols % 2 == 0;
    std::ptrdiff_t const nBlocks = plan->columnBlockCount();
    std::vector<double> blkW1(static_cast<std::size_t>(nBlocks)), blkW2(blkW1.size()), blkMax(blkW1.size());
    forColumnBlocks(*plan, parallel, score ? 2 : 1, [&](std::ptrdiff_t blk, std::ptrdiff_t x0, std::ptrdiff_t bw,
                                                        Complex** blocks, Complex* work) {
        Complex* K = blocks[0];
        Complex* P = blocks[1];
        double* power = useCache ? cache.power.data() : nullptr;
        if (!cached) {
            sparseBlockSpectrum(kRows, *plan, x0, bw, K, work);
            if (power)
                for (std::ptrdiff_t t = 0; t < shape.rows; ++t)
                    for (std::ptrdiff_t q = 0; q < bw; ++q) power[t * cc + x0 + q] = std::norm(K[t * bw + q]);
        }
        if (score) sparseBlockSpectrum(pRows, *plan, x0, bw, P, work);
        double s1 = 0.0, s2 = 0.0, mx = 0.0;
        for (std::ptrdiff_t t = 0; t < shape.rows; ++t) {
            for (std::ptrdiff_t q = 0; q < bw; ++q) {
                std::ptrdiff_t const x = x0 + q;
                double const k2 = power ? power[t * cc + x] : std::norm(K[t * bw + q]);
                double c, cn2;
                if (score) {
                    double const p2raw = std::norm(P[t * bw + q]);
                    double const p2 = std::max(p2raw, pFloor);
                    c = numer / (v + vt * k2 / p2);
                    cn2 = p2raw * c * c;
                } else {
                    c = std::sqrt(numer / (v + vt * k2));
                    cn2 = c * c;
                }
                f.corr[static_cast<std::size_t>(t * cc + x)] = c;
                double const w = (x == 0 || (evenCols && x == cc - 1)) ? 1.0 : 2.0;
                s1 += w * cn2;
                s2 += w * k2 * c * c;
                mx = std::max(mx, c);
            }
        }
        blkW1[static_cast<std::size_t>(blk)] = s1;
        blkW2[static_cast<std::size_t>(blk)] = s2;
        blkMax[static_cast<std::size_t>(blk)] = mx;
    });
    double s1 = 0.0, s2 = 0.0;
    for (std::size_t b = 0; b < blkW1.size(); ++b) {
        s1 += blkW1[b];
        s2 += blkW2[b];
        f.maxCorr = std::max(f.maxCorr, blkMax[b]);
    }
    double const nPix = static_cast<double>(shape.rows) * static_cast<double>(shape.cols);
    f.w1 = s1 / nPix;
    f.w2 = s2 / nPix;
    return f;
}

// ------------------------------------------------------------------------------------------------
// full variance propagation helpers
// ------------------------------------------------------------------------------------------------

namespace {

/// Spectrum S = FFT(D^2) of the squared real-space overall kernel D = IFFT(c) into `buf`, where
/// c = cn (which == 0) or cr (which == 1) of the filter.
void squaredKernelSpectrum(CorrectionFilter const& f, int which, ImageView<const double> kernel,
                           ImageView<const double> preConvKernel, RealFft2d const& plan, Complex* buf, bool parallel) {
    std::ptrdiff_t const n = plan.bufferSize();
    if (which == 0 && !f.score) {
        for (std::ptrdiff_t i = 0; i < n; ++i) buf[i] = Complex(f.corr[static_cast<std::size_t>(i)], 0.0);
    } else {
        // cr = K corr, or cn = conj(Phat) corr (score mode)
        placeCentred(which == 0 ? preConvKernel : kernel, plan, buf, parallel);
        plan.forwardInPlace(buf, parallel);
        for (std::ptrdiff_t i = 0; i < n; ++i) {
            double const c = f.corr[static_cast<std::size_t>(i)];
            buf[i] = which == 0 ? std::conj(buf[i]) * c : buf[i] * c;
        }
    }
    plan.inverseInPlace(buf, parallel);
    std::ptrdiff_t const stride = 2 * plan.spectrumCols();
    double* d = reinterpret_cast<double*>(buf);
    forRowRanges(plan.rows(), parallel, [&](std::ptrdiff_t y0, std::ptrdiff_t y1) {
        for (std::ptrdiff_t y = y0; y < y1; ++y) {
            double* row = d + y * stride;
            for (std::ptrdiff_t x = 0; x < plan.cols(); ++x) row[x] *= row[x];
        }
    });
    plan.forwardInPlace(buf, parallel);
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// decorrelateImage
// ------------------------------------------------------------------------------------------------

template <typename T>
DecorrelationResult decorrelateImage(DecorrelationInputs<T> const& in, DecorrelationOptions const& opt,
                                     ImageView<T> outImage, ImageView<T> outVariance, std::ptrdiff_t outRow0,
                                     std::ptrdiff_t outCol0) {
    ImageView<const T> const& img = in.image;
    if (img.empty()) throw std::invalid_argument("decorrelateImage: the difference image is empty");
    requireSameShape(img, in.variance, "difference image", "variance (V)");
    requireSameShape(img, in.templateVariance, "difference image", "template variance (Vt)");
    requireSameShape(outImage, outVariance, "output image", "output variance");
    if (outRow0 < 0 && outCol0 < 0) {  // no window: the outputs cover the image
        requireSameShape(img, outImage, "difference image", "output image");
        outRow0 = outCol0 = 0;
    }
    if (outRow0 < 0 || outCol0 < 0 || outRow0 + outImage.height > img.height || outCol0 + outImage.width > img.width) {
        throw std::invalid_argument("decorrelateImage: the output window " + shapeOf(outImage) + " at (" +
                                    std::to_string(outRow0) + ", " + std::to_string(outCol0) +
                                    ") is not inside the difference image " + shapeOf(img));
    }
    bool const window = outRow0 != 0 || outCol0 != 0 || outImage.height != img.height || outImage.width != img.width;
    if (window && outImage.data == img.data) {
        throw std::invalid_argument("decorrelateImage: a windowed output must not alias the difference image");
    }
    std::ptrdiff_t const oh = outImage.height, ow = outImage.width;
    auto sameData = [](void const* a, void const* b) { return a == b; };
    if (sameData(outVariance.data, in.variance.data) || sameData(outVariance.data, in.templateVariance.data) ||
        sameData(outImage.data, in.variance.data) || sameData(outImage.data, in.templateVariance.data)) {
        throw std::invalid_argument("decorrelateImage: the outputs must not alias the variance planes V or Vt");
    }
    checkScalars(in.v, in.vt);
    Shape2 const imgShape{img.height, img.width};
    checkKernel(in.kernel, "kernel", imgShape, "image");
    bool const score = !in.preConvKernel.empty();
    if (score) checkKernel(in.preConvKernel, "preConvKernel", imgShape, "image");

    std::vector<Shape2> shapes;
    if (score) shapes.push_back({in.preConvKernel.height, in.preConvKernel.width});
    shapes.push_back({in.kernel.height, in.kernel.width});
    for (auto const& s : opt.extraShapes) {
        if (s.rows > 0 && s.cols > 0) shapes.push_back(s);
    }
    shapes.push_back(imgShape);
    Shape2 const shape = fftShape(computeCommonShape(shapes), opt.shapeMode);

    bool const parallel = opt.parallel;
    auto const plan = RealFft2d::get(shape.rows, shape.cols);
    std::ptrdiff_t const nBuf = plan->bufferSize();
    CorrectionFilter const filter = computeCorrectionFilter(in.kernel, in.preConvKernel, in.v, in.vt, shape, parallel);
    Buffer buf(nBuf);
    std::ptrdiff_t const stride = 2 * plan->spectrumCols();

    DecorrelationResult res;
    res.fftShape = shape;
    res.kSum = filter.kSum;
    res.w1 = filter.w1;
    res.w2 = filter.w2;
    res.maxCorr = filter.maxCorr;
    // --- corrected image ---
    {
        auto const [fill, nonFinite] = placeFilledWithMean(img, *plan, buf.data(), parallel);
        res.fillValue = fill;
        res.nNonFinite = nonFinite;
        filterInPlace(*plan, buf.data(), filter.corr, parallel, outRow0, outRow0 + oh);
        double const* d = reinterpret_cast<double const*>(buf.data());
        forRowRanges(oh, parallel, [&](std::ptrdiff_t y0, std::ptrdiff_t y1) {
            for (std::ptrdiff_t y = y0; y < y1; ++y) {
                double const* row = d + (outRow0 + y) * stride + outCol0;
                for (std::ptrdiff_t x = 0; x < ow; ++x) {
                    double const v = static_cast<double>(img(outRow0 + y, outCol0 + x));
                    double const out = std::isnan(v) ? kNaN : (std::isinf(v) ? kInf : row[x]);
                    outImage(y, x) = static_cast<T>(out);
                }
            }
        });
    }

    // --- variance ---
    double const varScale = opt.templateMatched ? 1.0 : 1.0 / (filter.kSum * filter.kSum);
    if (!opt.completeVarPlanePropagation) {
        double const w1 = filter.w1, w2 = filter.w2;
        forRowRanges(oh, parallel, [&](std::ptrdiff_t y0, std::ptrdiff_t y1) {
            for (std::ptrdiff_t y = y0; y < y1; ++y) {
                for (std::ptrdiff_t x = 0; x < ow; ++x) {
                    double out = static_cast<double>(in.variance(outRow0 + y, outCol0 + x)) * w1 +
                                 static_cast<double>(in.templateVariance(outRow0 + y, outCol0 + x)) * w2;
                    if (!opt.templateMatched) out *= varScale;
                    outVariance(y, x) = static_cast<T>(out);
                }
            }
        });
        return res;
    }

    // complete propagation: Vout = crop(IFFT(FFT(V~) S_n + FFT(Vt~) S_r)), restored NaN/Inf
    Buffer sBuf(nBuf);
    Buffer& acc = buf;
    squaredKernelSpectrum(filter, 0, in.kernel, in.preConvKernel, *plan, sBuf.data(), parallel);
    placePlane(in.variance, in.v, *plan, acc.data(), parallel);
    plan->forwardInPlace(acc.data(), parallel);
    for (std::ptrdiff_t i = 0; i < nBuf; ++i) acc[static_cast<std::size_t>(i)] *= sBuf[static_cast<std::size_t>(i)];
    squaredKernelSpectrum(filter, 1, in.kernel, in.preConvKernel, *plan, sBuf.data(), parallel);
    {
        Buffer tBuf(nBuf);
        placePlane(in.templateVariance, in.vt, *plan, tBuf.data(), parallel);
        plan->forwardInPlace(tBuf.data(), parallel);
        forRowRanges(shape.rows, parallel, [&](std::ptrdiff_t y0, std::ptrdiff_t y1) {
            for (std::ptrdiff_t i = y0 * filter.spectrumCols; i < y1 * filter.spectrumCols; ++i) {
                std::size_t const k = static_cast<std::size_t>(i);
                Complex const a = tBuf[k], b = sBuf[k];
                acc[k] += Complex(a.real() * b.real() - a.imag() * b.imag(), a.real() * b.imag() + a.imag() * b.real());
            }
        });
    }
    sBuf.reset();
    plan->inverseInPlace(acc.data(), parallel, outRow0, outRow0 + oh);
    double const* d = reinterpret_cast<double const*>(acc.data());
    forRowRanges(oh, parallel, [&](std::ptrdiff_t y0, std::ptrdiff_t y1) {
        for (std::ptrdiff_t y = y0; y < y1; ++y) {
            double const* row = d + (outRow0 + y) * stride + outCol0;
            for (std::ptrdiff_t x = 0; x < ow; ++x) {
                double const a = static_cast<double>(in.variance(outRow0 + y, outCol0 + x));
                double const b = static_cast<double>(in.templateVariance(outRow0 + y, outCol0 + x));
                double out;
                if (std::isnan(a) || std::isnan(b)) {
                    out = kNaN;
                } else if (std::isinf(a) || std::isinf(b)) {
                    out = kInf;
                } else {
                    out = row[x] * varScale;
                }
                outVariance(y, x) = static_cast<T>(out);
            }
        }
    });
    return res;
}

template DecorrelationResult decorrelateImage<float>(DecorrelationInputs<float> const&, DecorrelationOptions const&,
                                                     ImageView<float>, ImageView<float>, std::ptrdiff_t, std::ptrdiff_t);
template DecorrelationResult decorrelateImage<double>(DecorrelationInputs<double> const&, DecorrelationOptions const&,
                                                      ImageView<double>, ImageView<double>, std::ptrdiff_t,
                                                      std::ptrdiff_t);

}  // namespace diffcal::decorrelation
