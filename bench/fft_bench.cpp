// FFT implementation comparison behind bench/FFT_CHOICE.md: one 2-D real forward + inverse pair
// (numpy rfft2 + irfft2 semantics) per size with
//   * diffcal's own Stockham transforms (cpp/src/fft.cpp), 1 thread and all threads;
//   * Eigen's unsupported FFT module (kissfft backend; rows with the half-spectrum real transform,
//     columns gathered one at a time - the module's own 2-D entry point is a no-op for kissfft);
//   * FFTW3 (only when built with -DWITH_FFTW: FFTW_ESTIMATE and FFTW_MEASURE plans, 1 thread).
// Build (from the repository root; the FFTW part needs Debian's libfftw3-dev):
//   g++ -O3 -std=c++17 -Icpp/include -I$(python -m cmeel cmake)/include/eigen3 -DWITH_FFTW \
//       bench/fft_bench.cpp cpp/src/fft.cpp cpp/src/parallel.cpp -lfftw3 -lpthread -o /tmp/fft_bench
// Run: /tmp/fft_bench [repeats]   (prints the median time per forward+inverse pair)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <complex>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include <unsupported/Eigen/FFT>

#include "diffcal/fft.hpp"
#include "diffcal/parallel.hpp"

#ifdef WITH_FFTW
#include <fftw3.h>
#endif

using Complex = std::complex<double>;

namespace {

double medianSeconds(std::function<void()> const& fn, int repeats) {
    fn();  // warm-up (plans, page faults)
    std::vector<double> t;
    for (int i = 0; i < repeats; ++i) {
        auto a = std::chrono::steady_clock::now();
        fn();
        auto b = std::chrono::steady_clock::now();
        t.push_back(std::chrono::duration<double>(b - a).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

struct EigenRfft2 {
    std::ptrdiff_t rows, cols, cc;
    Eigen::FFT<double> rowFft, colFft;
    std::vector<Complex> col, colOut;
    std::vector<double> rowReal;
    EigenRfft2(std::ptrdiff_t r, std::ptrdiff_t c) : rows(r), cols(c), cc(c / 2 + 1), col(r), colOut(r), rowReal(c) {
        rowFft.SetFlag(Eigen::FFT<double>::HalfSpectrum);
        rowFft.SetFlag(Eigen::FFT<double>::Unscaled);
        colFft.SetFlag(Eigen::FFT<double>::Unscaled);
    }
    void forward(double const* in, Complex* out) {
        for (std::ptrdiff_t y = 0; y < rows; ++y) rowFft.fwd(out + y * cc, in + y * cols, static_cast<int>(cols));
        for (std::ptrdiff_t x = 0; x < cc; ++x) {
            for (std::ptrdiff_t y = 0; y < rows; ++y) col[y] = out[y * cc + x];
            colFft.fwd(colOut.data(), col.data(), static_cast<int>(rows));
            for (std::ptrdiff_t y = 0; y < rows; ++y) out[y * cc + x] = colOut[y];
        }
    }
    void inverse(Complex* spec, double* out) {
        for (std::ptrdiff_t x = 0; x < cc; ++x) {
            for (std::ptrdiff_t y = 0; y < rows; ++y) col[y] = spec[y * cc + x];
            colFft.inv(colOut.data(), col.data(), static_cast<int>(rows));
            for (std::ptrdiff_t y = 0; y < rows; ++y) spec[y * cc + x] = colOut[y];
        }
        double const s = 1.0 / (double(rows) * double(cols));
        for (std::ptrdiff_t y = 0; y < rows; ++y) {
            rowFft.inv(out + y * cols, spec + y * cc, static_cast<int>(cols));
            for (std::ptrdiff_t x = 0; x < cols; ++x) out[y * cols + x] *= s;
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    int const repeats = argc > 1 ? std::atoi(argv[1]) : 5;
    struct Size {
        std::ptrdiff_t rows, cols;
        char const* what;
    };
    std::vector<Size> sizes = {
        {220, 220, "cell (~200 px expanded box + kernel)"},
        {224, 224, "cell, fast size"},
        {288, 288, "unit-test grid (256 + 32 - 1 -> even)"},
        {4128, 4168, "exact grid of a 4096x4136 image, 33-px kernel"},
        {4200, 4200, "fast size for it"},
        {4032, 4104, "exact grid of the 4000x4072 benchmark, 33-px kernel"},
        {4032, 4116, "fast size for it"},
        {4096, 4096, "power of two"},
    };
    std::printf("%-11s %-52s %10s %10s %10s %10s %10s\n", "size", "what", "ours1[s]", "oursN[s]", "eigen[s]",
                "fftwE[s]", "fftwM[s]");
    std::mt19937_64 rng(1);
    std::normal_distribution<double> g;
    for (auto const& sz : sizes) {
        std::ptrdiff_t const R = sz.rows, C = sz.cols, cc = C / 2 + 1;
        std::vector<double> img(static_cast<std::size_t>(R * C));
        for (auto& v : img) v = g(rng);
        auto plan = diffcal::fft::RealFft2d::get(R, C);
        std::vector<Complex> buf(static_cast<std::size_t>(plan->bufferSize()));
        std::vector<double> out(img.size());
        auto oursPair = [&](bool parallel) {
            auto in = diffcal::ImageView<const double>::contiguous(img.data(), R, C);
            plan->forward(in, buf.data(), parallel);
            plan->inverse(buf.data(), diffcal::ImageView<double>::contiguous(out.data(), R, C), parallel);
        };
        int const nThreads = diffcal::getNumThreads();
        double const ours1 = medianSeconds([&] { oursPair(false); }, repeats);
        double const oursN = nThreads > 1 ? medianSeconds([&] { oursPair(true); }, repeats) : ours1;
        double err = 0;
        for (std::size_t i = 0; i < img.size(); ++i) err = std::max(err, std::abs(out[i] - img[i]));

        EigenRfft2 eig(R, C);
        std::vector<Complex> ebuf(static_cast<std::size_t>(R * cc));
        std::vector<double> eout(img.size());
        double const eigenT = (R * C > 5000000 && repeats > 3)
                                  ? medianSeconds([&] { eig.forward(img.data(), ebuf.data()); eig.inverse(ebuf.data(), eout.data()); }, 3)
                                  : medianSeconds([&] { eig.forward(img.data(), ebuf.data()); eig.inverse(ebuf.data(), eout.data()); }, repeats);
        double eerr = 0;
        for (std::size_t i = 0; i < img.size(); ++i) eerr = std::max(eerr, std::abs(eout[i] - img[i]));
        double fftwE = NAN, fftwM = NAN;
#ifdef WITH_FFTW
        for (unsigned flag : {unsigned(FFTW_ESTIMATE), unsigned(FFTW_MEASURE)}) {
            double* fin = fftw_alloc_real(static_cast<std::size_t>(R * C));
            fftw_complex* fout = fftw_alloc_complex(static_cast<std::size_t>(R * cc));
            fftw_plan pf = fftw_plan_dft_r2c_2d(int(R), int(C), fin, fout, flag);
            fftw_plan pi = fftw_plan_dft_c2r_2d(int(R), int(C), fout, fin, flag);
            double const t = medianSeconds(
                [&] {
                    std::copy(img.begin(), img.end(), fin);
                    fftw_execute(pf);
                    fftw_execute(pi);
                },
                repeats);
            (flag == FFTW_ESTIMATE ? fftwE : fftwM) = t;
            fftw_destroy_plan(pf);
            fftw_destroy_plan(pi);
            fftw_free(fin);
            fftw_free(fout);
        }
#endif
        std::printf("%5tdx%-5td %-52s %10.4f %10.4f %10.4f %10.4f %10.4f   (round-trip err ours %.1e, eigen %.1e)\n",
                    R, C, sz.what, ours1, oursN, eigenT, fftwE, fftwM, err, eerr);
        std::fflush(stdout);
    }
    return 0;
}
