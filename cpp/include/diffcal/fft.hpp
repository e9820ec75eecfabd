// Fast Fourier transforms for the decorrelation filters: 2-D real-to-complex (forward) and
// complex-to-real (inverse) transforms of row-major double arrays, plus the 1-D complex engine
// they are built on.
//
// Conventions (identical to numpy.fft.rfft2 / irfft2 on a C-ordered [rows, cols] array):
//   forward   X[ky, kx] = sum_{y, x} x[y, x] exp(-2 pi i (ky y / rows + kx x / cols)),
//             kx = 0 .. cols/2 (the "half spectrum", spectrumCols() = cols/2 + 1 columns);
//   inverse   x[y, x]   = 1/(rows*cols) sum over the full Hermitian spectrum (normalised),
//             imaginary parts of the self-conjugate bins are ignored, as numpy does.
//
// Implementation: our own mixed-radix Stockham (self-sorting) FFT with radix-4/2/3/5 butterflies,
// a symmetric generic butterfly for other small primes and Bluestein's chirp-z algorithm for
// lengths with a large prime factor, so every length is O(n log n). Real rows use the
// half-length complex transform; columns are transformed in interleaved blocks (several columns
// per Stockham pass) for cache locality and vectorisation. See bench/FFT_CHOICE.md for the
// measurements behind this choice (against Eigen's unsupported FFT module, FFTW3 and numpy).
//
// Threading: plans are immutable after construction and cached per size (RealFft2d::get), so
// any number of threads may use the same plan at once; every call allocates its own scratch.
// With `parallel = true` a call splits rows/column blocks over diffcal::parallelFor; the split is
// fixed and independent of the thread count and every row/column is transformed by the same
// code path, so results are bit-identical for any number of threads. Pass `parallel = false`
// when calling from inside an already parallel loop (e.g. one decorrelation per cell).
#pragma once

#include <complex>
#include <cstddef>
#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "diffcal/image_view.hpp"

namespace diffcal::fft {

using Complex = std::complex<double>;

/// Smallest even integer >= max(n, 2) whose prime factors are all 2, 3, 5 or 7.
std::ptrdiff_t nextFastSize(std::ptrdiff_t n);

/// The even 2/3/5/7-smooth size >= max(n, 2) with the lowest modelled cost of this FFT,
/// m log2(m) (1 + 0.04 e3 + 0.09 e5 + 0.45 e7) for m = 2^e2 3^e3 5^e5 7^e7: the per-point costs of
/// transform pairs measured on the project's machine (e.g. 256: 8.6 ns, 240: 9.8 ns, 250: 11.1 ns,
/// 252: 13.2 ns per point), so a slightly larger power of two beats a size with a factor 7. At most
/// nextFastSize(n) * 17 / 16.
std::ptrdiff_t cheapestFastSize(std::ptrdiff_t n);

/// True if n >= 1 has no prime factor larger than 7.
bool isSmooth(std::ptrdiff_t n);

/// Name of the FFT implementation compiled in ("diffcal-stockham").
char const* backendName();

/// 1-D complex FFT of a fixed length (immutable, thread-safe). Operates on `batch` interleaved
/// sequences: element t of sequence b is data[t * batch + b].
class ComplexFft {
public:
    explicit ComplexFft(std::ptrdiff_t n);
    ~ComplexFft();
    ComplexFft(ComplexFft const&) = delete;
    ComplexFft& operator=(ComplexFft const&) = delete;

    /// Cached plan for length n (shared by all callers).
    static std::shared_ptr<ComplexFft const> get(std::ptrdiff_t n);

    std::ptrdiff_t size() const { return n_; }
    /// Whether this length uses Bluestein's algorithm (has a prime factor > the generic limit).
    bool usesBluestein() const { return static_cast<bool>(bluestein_); }

    /// Number of Complex elements of scratch `run` needs for `batch` interleaved sequences.
    std::ptrdiff_t workSize(std::ptrdiff_t batch) const;

    /// In-place unnormalised transform of `batch` interleaved sequences (forward: exp(-2 pi i ..),
    /// inverse: exp(+2 pi i ..), no 1/n factor). `work` must hold workSize(batch) elements.
    void run(Complex* data, Complex* work, std::ptrdiff_t batch, bool inverse) const;

private:
    struct Stage {
        int radix;
        std::ptrdiff_t m;              // length of the sub-transforms after this stage
        std::ptrdiff_t twiddleOffset;  // into twiddles_: (radix - 1) * m values
        std::ptrdiff_t genericOffset;  // into genericCos_/genericSin_ (generic radices only)
    };
    struct Bluestein;

    void runStockham(Complex* data, Complex* work, std::ptrdiff_t batch, bool inverse) const;

    std::ptrdiff_t n_;
    std::vector<Stage> stages_;
    std::vector<Complex> twiddles_;
    std::vector<double> genericCos_, genericSin_;
    std::unique_ptr<Bluestein> bluestein_;
};

/// 2-D real FFT plan for a rows x cols grid (immutable, thread-safe, cached by RealFft2d::get).
///
/// The in-place layout ("rfft buffer") is a row-major array of rows x spectrumCols() Complex
/// values, i.e. rows x 2*spectrumCols() doubles: before a forward transform (and after an
/// inverse one) the real samples occupy the first cols doubles of each row of 2*spectrumCols()
/// doubles; after a forward transform the buffer holds the half spectrum.
class RealFft2d {
public:
    RealFft2d(std::ptrdiff_t rows, std::ptrdiff_t cols);

    /// Cached plan for this size (one per size, shared by all threads).
    static std::shared_ptr<RealFft2d const> get(std::ptrdiff_t rows, std::ptrdiff_t cols);

    std::ptrdiff_t rows() const { return rows_; }
    std::ptrdiff_t cols() const { return cols_; }
    /// Number of complex columns of the half spectrum, cols/2 + 1.
    std::ptrdiff_t spectrumCols() const { return ccols_; }
    /// Complex elements of an rfft buffer: rows * spectrumCols().
    std::ptrdiff_t bufferSize() const { return rows_ * ccols_; }

    /// Forward transform in place (real samples -> half spectrum). Rows that are entirely zero
    /// are detected and skipped (a padded kernel costs little more than its own rows).
    void forwardInPlace(Complex* buffer, bool parallel = true) const;
    /// Normalised inverse transform in place (half spectrum -> real samples), numpy irfft2. With a row
    /// range [rowBegin, rowEnd) only those output rows are computed (the others are left as scratch).
    void inverseInPlace(Complex* buffer, bool parallel = true, std::ptrdiff_t rowBegin = 0,
                        std::ptrdiff_t rowEnd = -1) const;

    /// Out-of-place forward: `in` (rows x cols, any strides) -> `out` rfft buffer.
    void forward(ImageView<const double> in, Complex* out, bool parallel = true) const;
    /// Out-of-place inverse: `spectrum` (rfft buffer, overwritten as scratch) -> `out`.
    void inverse(Complex* spectrum, ImageView<double> out, bool parallel = true) const;

    // --- building blocks for fused passes (e.g. filtering without a second full-size pass) ---
    // A forward 2-D transform is rowsForward, then for every column block: gatherBlock,
    // columnTransform(forward), scatterBlock. Blocks are a fixed partition of the
    // spectrumCols() columns (independent of threads); block i covers columns
    // [columnBlock(i).first, + columnBlock(i).second).

    /// Real-to-half-spectrum transform of every row, in place (zero rows skipped).
    void rowsForward(Complex* buffer, bool parallel = true) const;
    /// Inverse row transforms including the 1/(rows*cols) normalisation, in place, of rows
    /// [rowBegin, rowEnd) (rowEnd < 0: to the last row).
    void rowsInverse(Complex* buffer, bool parallel = true, std::ptrdiff_t rowBegin = 0, std::ptrdiff_t rowEnd = -1) const;
    /// Forward real transform of one row: `row` holds cols doubles on input and spectrumCols()
    /// values on output (room for 2*spectrumCols() doubles); `work` has rowWorkSize() elements.
    void rowForward(Complex* row, Complex* work) const;
    std::ptrdiff_t rowWorkSize() const;
    std::ptrdiff_t columnBlockCount() const { return (ccols_ + kBlock - 1) / kBlock; }
    std::pair<std::ptrdiff_t, std::ptrdiff_t> columnBlock(std::ptrdiff_t i) const {
        std::ptrdiff_t const x0 = i * kBlock;
        return {x0, std::min(kBlock, ccols_ - x0)};
    }
    /// Largest block width (scratch for a block: rows() * maxBlockWidth() Complex values).
    static constexpr std::ptrdiff_t maxBlockWidth() { return kBlock; }
    /// Copy columns [x0, x0 + bw) of an rfft buffer into block[t * bw + b] (and back).
    void gatherBlock(Complex const* buffer, std::ptrdiff_t x0, std::ptrdiff_t bw, Complex* block) const;
    void scatterBlock(Complex const* block, std::ptrdiff_t x0, std::ptrdiff_t bw, Complex* buffer) const;
    /// Unnormalised column transform of a gathered block; `work` has columnWorkSize() elements.
    void columnTransform(Complex* block, std::ptrdiff_t bw, bool inverse, Complex* work) const;
    std::ptrdiff_t columnWorkSize() const;

private:
    static constexpr std::ptrdiff_t kBlock = 8;  // columns per interleaved column pass
    void columns(Complex* buffer, bool inverse, bool parallel) const;

    std::ptrdiff_t rows_, cols_, ccols_;
    std::shared_ptr<ComplexFft const> rowFft_;  // length cols/2 (even cols) or cols (odd)
    std::shared_ptr<ComplexFft const> colFft_;  // length rows
    std::vector<Complex> rowTwiddles_;          // exp(-2 pi i k / cols), k = 0 .. cols/4 (even cols)
};

}  // namespace diffcal::fft
