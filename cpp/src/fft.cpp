// Mixed-radix Stockham FFT, Bluestein for large prime factors, and the 2-D real transforms built
// on them. Written from the textbook algorithms (self-sorting Stockham decimation in frequency,
// the half-length complex trick for real sequences, Bluestein's chirp-z identity
// t k = (t^2 + k^2 - (k - t)^2) / 2); see fft.hpp for conventions.
#include "diffcal/fft.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "diffcal/parallel.hpp"

namespace diffcal::fft {

namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;
// Prime factors up to this size use the generic symmetric butterfly; larger ones make the
// whole length go through Bluestein (whose cost is ~2 smooth transforms of length >= 2n).
constexpr int kGenericLimit = 100;

// --- complex helpers (explicit arithmetic: no NaN-recovery calls of the library operator*) ---
inline Complex mul(Complex a, Complex b) {
    return {a.real() * b.real() - a.imag() * b.imag(), a.real() * b.imag() + a.imag() * b.real()};
}
inline Complex mulConj(Complex a, Complex b) {  // a * conj(b)
    return {a.real() * b.real() + a.imag() * b.imag(), a.imag() * b.real() - a.real() * b.imag()};
}
inline Complex timesI(Complex a) { return {-a.imag(), a.real()}; }        // i * a
inline Complex timesMinusI(Complex a) { return {a.imag(), -a.real()}; }   // -i * a
template <bool Inv>
inline Complex rotate(Complex a) {  // forward: -i * a, inverse: +i * a
    return Inv ? timesI(a) : timesMinusI(a);
}
template <bool Inv>
inline Complex twiddle(Complex a, Complex w) {
    return Inv ? mulConj(a, w) : mul(a, w);
}

/// exp(-2 pi i k / n) with the argument reduced exactly in integers.
Complex unitRoot(std::ptrdiff_t k, std::ptrdiff_t n) {
    k %= n;
    if (k < 0) k += n;
    double const a = kTwoPi * static_cast<double>(k) / static_cast<double>(n);
    return {std::cos(a), -std::sin(a)};
}

std::vector<int> primeFactors(std::ptrdiff_t n) {
    std::vector<int> f;
    for (std::ptrdiff_t p = 2; p * p <= n; ++p) {
        while (n % p == 0) {
            f.push_back(static_cast<int>(p));
            n /= p;
        }
    }
    if (n > 1) f.push_back(static_cast<int>(n));
    return f;
}

// --- Stockham stages ---------------------------------------------------------------------------
// Stage of radix p on a sequence of current length L = p * m, with s interleaved sub-sequences
// (s = batch * product of the previous radices): for p2 in [0, m), q in [0, s):
//   a_j = x[q + s (p2 + j m)],  b_c = sum_j a_j w_p^{j c},  y[q + s (p p2 + c)] = b_c w_L^{p2 c}.

template <bool Inv>
void stage2(Complex const* x, Complex* y, std::ptrdiff_t m, std::ptrdiff_t s, Complex const* tw) {
    for (std::ptrdiff_t p2 = 0; p2 < m; ++p2) {
        Complex const* x0 = x + s * p2;
        Complex const* x1 = x + s * (p2 + m);
        Complex* y0 = y + s * (2 * p2);
        Complex* y1 = y0 + s;
        if (p2 == 0) {
            for (std::ptrdiff_t q = 0; q < s; ++q) {
                Complex const a = x0[q], b = x1[q];
                y0[q] = a + b;
                y1[q] = a - b;
            }
        } else {
            Complex const w = tw[p2];
            for (std::ptrdiff_t q = 0; q < s; ++q) {
                Complex const a = x0[q], b = x1[q];
                y0[q] = a + b;
                y1[q] = twiddle<Inv>(a - b, w);
            }
        }
    }
}

template <bool Inv>
void stage4(Complex const* x, Complex* y, std::ptrdiff_t m, std::ptrdiff_t s, Complex const* tw) {
    for (std::ptrdiff_t p2 = 0; p2 < m; ++p2) {
        Complex const* x0 = x + s * p2;
        Complex const* x1 = x + s * (p2 + m);
        Complex const* x2 = x + s * (p2 + 2 * m);
        Complex const* x3 = x + s * (p2 + 3 * m);
        Complex* y0 = y + s * (4 * p2);
        Complex* y1 = y0 + s;
        Complex* y2 = y1 + s;
        Complex* y3 = y2 + s;
        if (p2 == 0) {
            for (std::ptrdiff_t q = 0; q < s; ++q) {
                Complex const t0 = x0[q] + x2[q], t1 = x0[q] - x2[q];
                Complex const t2 = x1[q] + x3[q], t3 = rotate<Inv>(x1[q] - x3[q]);
                y0[q] = t0 + t2;
                y1[q] = t1 + t3;
                y2[q] = t0 - t2;
                y3[q] = t1 - t3;
            }
        } else {
            Complex const w1 = tw[3 * p2], w2 = tw[3 * p2 + 1], w3 = tw[3 * p2 + 2];
            for (std::ptrdiff_t q = 0; q < s; ++q) {
                Complex const t0 = x0[q] + x2[q], t1 = x0[q] - x2[q];
                Complex const t2 = x1[q] + x3[q], t3 = rotate<Inv>(x1[q] - x3[q]);
                y0[q] = t0 + t2;
                y1[q] = twiddle<Inv>(t1 + t3, w1);
                y2[q] = twiddle<Inv>(t0 - t2, w2);
                y3[q] = twiddle<Inv>(t1 - t3, w3);
            }
        }
    }
}

template <bool Inv>
void stage3(Complex const* x, Complex* y, std::ptrdiff_t m, std::ptrdiff_t s, Complex const* tw) {
    constexpr double kS = 0.86602540378443864676372317075294;  // sin(2 pi / 3)
    for (std::ptrdiff_t p2 = 0; p2 < m; ++p2) {
        Complex const* x0 = x + s * p2;
        Complex const* x1 = x + s * (p2 + m);
        Complex const* x2 = x + s * (p2 + 2 * m);
        Complex* y0 = y + s * (3 * p2);
        Complex* y1 = y0 + s;
        Complex* y2 = y1 + s;
        Complex const w1 = p2 ? tw[2 * p2] : Complex(1.0, 0.0);
        Complex const w2 = p2 ? tw[2 * p2 + 1] : Complex(1.0, 0.0);
        for (std::ptrdiff_t q = 0; q < s; ++q) {
            Complex const a0 = x0[q];
            Complex const t1 = x1[q] + x2[q];
            Complex const t2 = x1[q] - x2[q];
            Complex const m1 = a0 - 0.5 * t1;
            Complex const m2 = rotate<Inv>(kS * t2);
            y0[q] = a0 + t1;
            if (p2 == 0) {
                y1[q] = m1 + m2;
                y2[q] = m1 - m2;
            } else {
                y1[q] = twiddle<Inv>(m1 + m2, w1);
                y2[q] = twiddle<Inv>(m1 - m2, w2);
            }
        }
    }
}

template <bool Inv>
void stage5(Complex const* x, Complex* y, std::ptrdiff_t m, std::ptrdiff_t s, Complex const* tw) {
    constexpr double c1 = 0.30901699437494742410229341718282;   // cos(2 pi / 5)
    constexpr double c2 = -0.80901699437494742410229341718282;  // cos(4 pi / 5)
    constexpr double s1 = 0.95105651629515357211643933337938;   // sin(2 pi / 5)
    constexpr double s2 = 0.58778525229247312916870595463907;   // sin(4 pi / 5)
    for (std::ptrdiff_t p2 = 0; p2 < m; ++p2) {
        Complex const* xs[5];
        for (int j = 0; j < 5; ++j) xs[j] = x + s * (p2 + j * m);
        Complex* y0 = y + s * (5 * p2);
        Complex w[5] = {1.0, 1.0, 1.0, 1.0, 1.0};
        if (p2) {
            for (int c = 1; c < 5; ++c) w[c] = tw[4 * p2 + c - 1];
        }
        for (std::ptrdiff_t q = 0; q < s; ++q) {
            Complex const a0 = xs[0][q];
            Complex const t1 = xs[1][q] + xs[4][q], t3 = xs[1][q] - xs[4][q];
            Complex const t2 = xs[2][q] + xs[3][q], t4 = xs[2][q] - xs[3][q];
            Complex const m1 = a0 + c1 * t1 + c2 * t2;
            Complex const m2 = a0 + c2 * t1 + c1 * t2;
            Complex const n1 = rotate<Inv>(s1 * t3 + s2 * t4);
            Complex const n2 = rotate<Inv>(s2 * t3 - s1 * t4);
            Complex b[5] = {a0 + t1 + t2, m1 + n1, m2 + n2, m2 - n2, m1 - n1};
            y0[q] = b[0];
            if (p2 == 0) {
                for (int c = 1; c < 5; ++c) y0[q + s * c] = b[c];
            } else {
                for (int c = 1; c < 5; ++c) y0[q + s * c] = twiddle<Inv>(b[c], w[c]);
            }
        }
    }
}

// Generic odd radix p with the symmetric pairing of j and p - j:
//   b_k = a_0 + sum_j cos(2 pi j k / p) (a_j + a_{p-j})  -/+  i sum_j sin(2 pi j k / p) (a_j - a_{p-j}).
// P > 0 fixes the radix at compile time (7, 11, 13: the loops unroll and the partial sums stay in
// registers; same operations in the same order as the run-time radix, so the same results).
template <bool Inv, int P>
void stageOdd(Complex const* x, Complex* y, std::ptrdiff_t m, std::ptrdiff_t s, int pRun, Complex const* tw,
              double const* cosT, double const* sinT) {
    int const p = P > 0 ? P : pRun;
    int const h = (p - 1) / 2;
    constexpr int kStack = P > 0 ? (P - 1) / 2 + 1 : 1;
    Complex sumS[kStack], difS[kStack], bS[P > 0 ? P : 1];
    std::vector<Complex> sumV, difV, bV;
    if (P == 0) {
        sumV.resize(static_cast<std::size_t>(h + 1));
        difV.resize(static_cast<std::size_t>(h + 1));
        bV.resize(static_cast<std::size_t>(p));
    }
    Complex* const sum = P > 0 ? sumS : sumV.data();
    Complex* const dif = P > 0 ? difS : difV.data();
    Complex* const b = P > 0 ? bS : bV.data();
    for (std::ptrdiff_t p2 = 0; p2 < m; ++p2) {
        Complex* y0 = y + s * (p * p2);
        for (std::ptrdiff_t q = 0; q < s; ++q) {
            Complex const a0 = x[q + s * p2];
            Complex b0 = a0;
            for (int j = 1; j <= h; ++j) {
                Complex const aj = x[q + s * (p2 + j * m)];
                Complex const ak = x[q + s * (p2 + (p - j) * m)];
                sum[j] = aj + ak;
                dif[j] = aj - ak;
                b0 += sum[j];
            }
            b[0] = b0;
            for (int k = 1; k <= h; ++k) {
                double ar = a0.real(), ai = a0.imag(), br = 0.0, bi = 0.0;
                double const* cr = cosT + (k - 1) * h;
                double const* sr = sinT + (k - 1) * h;
                for (int j = 1; j <= h; ++j) {
                    ar += cr[j - 1] * sum[j].real();
                    ai += cr[j - 1] * sum[j].imag();
                    br += sr[j - 1] * dif[j].real();
                    bi += sr[j - 1] * dif[j].imag();
                }
                Complex const A(ar, ai);
                Complex const B = rotate<Inv>(Complex(br, bi));  // forward: -i B
                b[k] = A + B;
                b[p - k] = A - B;
            }
            y0[q] = b[0];
            if (p2 == 0) {
                for (int c = 1; c < p; ++c) y0[q + s * c] = b[c];
            } else {
                Complex const* w = tw + (p - 1) * p2;
                for (int c = 1; c < p; ++c) y0[q + s * c] = twiddle<Inv>(b[c], w[c - 1]);
            }
        }
    }
}

template <bool Inv>
void stageGeneric(Complex const* x, Complex* y, std::ptrdiff_t m, std::ptrdiff_t s, int p, Complex const* tw,
                  double const* cosT, double const* sinT) {
    switch (p) {
        case 7: return stageOdd<Inv, 7>(x, y, m, s, p, tw, cosT, sinT);
        case 11: return stageOdd<Inv, 11>(x, y, m, s, p, tw, cosT, sinT);
        case 13: return stageOdd<Inv, 13>(x, y, m, s, p, tw, cosT, sinT);
        default: return stageOdd<Inv, 0>(x, y, m, s, p, tw, cosT, sinT);
    }
}

template <typename V>
std::shared_ptr<V const> cachedPlan(std::map<std::pair<std::ptrdiff_t, std::ptrdiff_t>, std::shared_ptr<V const>>& cache,
                                    std::mutex& mutex, std::pair<std::ptrdiff_t, std::ptrdiff_t> key,
                                    std::function<std::shared_ptr<V const>()> const& make) {
    {
        std::lock_guard<std::mutex> lock(mutex);
        auto it = cache.find(key);
        if (it != cache.end()) return it->second;
    }
    auto plan = make();  // built outside the lock (a Bluestein plan asks the cache for its inner plan)
    std::lock_guard<std::mutex> lock(mutex);
    if (cache.size() >= 256) cache.clear();  // bound memory for callers cycling through many sizes
    return cache.emplace(key, std::move(plan)).first->second;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// sizes
// ------------------------------------------------------------------------------------------------

bool isSmooth(std::ptrdiff_t n) {
    if (n < 1) return false;
    for (std::ptrdiff_t p : {2, 3, 5, 7}) {
        while (n % p == 0) n /= p;
    }
    return n == 1;
}

std::ptrdiff_t nextFastSize(std::ptrdiff_t n) {
    if (n < 0) throw std::invalid_argument("nextFastSize: n must be non-negative, got " + std::to_string(n));
    std::ptrdiff_t m = std::max<std::ptrdiff_t>(n, 2);
    if (m % 2) ++m;
    while (!isSmooth(m)) m += 2;
    return m;
}

std::ptrdiff_t cheapestFastSize(std::ptrdiff_t n) {
    std::ptrdiff_t const first = nextFastSize(n);
    auto cost = [](std::ptrdiff_t m) {
        int e[8] = {};
        std::ptrdiff_t r = m;
        for (int p : {2, 3, 5, 7}) {
            while (r % p == 0) {
                r /= p;
                ++e[p];
            }
        }
        double const penalty = 1.0 + 0.04 * e[3] + 0.09 * e[5] + 0.45 * e[7];
        return double(m) * std::log2(double(m)) * penalty;
    };
    std::ptrdiff_t best = first;
    double bestCost = cost(first);
    // at most 1/16 above the next smooth size (memory grows with the square), and a larger size costs at
    // least m log2 m: stop once that alone exceeds the best
    std::ptrdiff_t const limit = first + first / 16;
    for (std::ptrdiff_t m = first + 2; m <= limit && double(m) * std::log2(double(m)) < bestCost; m += 2) {
        if (!isSmooth(m)) continue;
        double const c = cost(m);
        if (c < bestCost) {
            best = m;
            bestCost = c;
        }
    }
    return best;
}

char const* backendName() { return "diffcal-stockham"; }

// ------------------------------------------------------------------------------------------------
// ComplexFft
// ------------------------------------------------------------------------------------------------

struct ComplexFft::Bluestein {
    std::ptrdiff_t m = 0;                       // smooth convolution length >= 2n - 1
    std::shared_ptr<ComplexFft const> inner;    // length m
    std::vector<Complex> chirp;                 // exp(-i pi k^2 / n), k < n
    std::vector<Complex> kernelSpectrum;        // FFT_m of conj(chirp) (wrapped), times 1/m
};

ComplexFft::ComplexFft(std::ptrdiff_t n) : n_(n) {
    if (n < 1) throw std::invalid_argument("ComplexFft: length must be >= 1, got " + std::to_string(n));
    std::vector<int> primes = primeFactors(n);
    if (!primes.empty() && primes.back() > kGenericLimit) {
        auto b = std::make_unique<Bluestein>();
        std::ptrdiff_t m = 2 * n - 1;
        while (!isSmooth(m)) ++m;
        b->m = m;
        b->inner = ComplexFft::get(m);
        b->chirp.resize(static_cast<std::size_t>(n));
        std::ptrdiff_t const twoN = 2 * n;
        for (std::ptrdiff_t k = 0; k < n; ++k) {
            // exp(-i pi k^2 / n) = exp(-2 pi i (k^2 mod 2n) / (2n)), reduced exactly
            std::ptrdiff_t const r = static_cast<std::ptrdiff_t>((static_cast<unsigned long long>(k) * k) %
                                                                 static_cast<unsigned long long>(twoN));
            b->chirp[static_cast<std::size_t>(k)] = unitRoot(r, twoN);
        }
        std::vector<Complex> kern(static_cast<std::size_t>(m), Complex(0.0, 0.0));
        for (std::ptrdiff_t k = 0; k < n; ++k) {
            Complex const c = std::conj(b->chirp[static_cast<std::size_t>(k)]);
            kern[static_cast<std::size_t>(k)] = c;
            if (k > 0) kern[static_cast<std::size_t>(m - k)] = c;
        }
        std::vector<Complex> work(static_cast<std::size_t>(b->inner->workSize(1)));
        b->inner->run(kern.data(), work.data(), 1, false);
        double const inv = 1.0 / static_cast<double>(m);
        for (auto& v : kern) v *= inv;
        b->kernelSpectrum = std::move(kern);
        bluestein_ = std::move(b);
        return;
    }
    // Radix order: 4s first, then a 2, then odd primes ascending.
    std::vector<int> radices;
    int twos = static_cast<int>(std::count(primes.begin(), primes.end(), 2));
    for (; twos >= 2; twos -= 2) radices.push_back(4);
    if (twos) radices.push_back(2);
    for (int p : primes) {
        if (p != 2) radices.push_back(p);
    }
    std::ptrdiff_t len = n;
    for (int p : radices) {
        Stage st;
        st.radix = p;
        st.m = len / p;
        st.twiddleOffset = static_cast<std::ptrdiff_t>(twiddles_.size());
        st.genericOffset = -1;
        for (std::ptrdiff_t p2 = 0; p2 < st.m; ++p2) {
            for (int c = 1; c < p; ++c) twiddles_.push_back(unitRoot(p2 * c, len));
        }
        if (p != 2 && p != 3 && p != 4 && p != 5) {
            int const h = (p - 1) / 2;
            st.genericOffset = static_cast<std::ptrdiff_t>(genericCos_.size());
            for (int k = 1; k <= h; ++k) {
                for (int j = 1; j <= h; ++j) {
                    Complex const w = unitRoot(static_cast<std::ptrdiff_t>(j) * k, p);
                    genericCos_.push_back(w.real());
                    genericSin_.push_back(-w.imag());  // sin(2 pi j k / p)
                }
            }
        }
        stages_.push_back(st);
        len = st.m;
    }
}

ComplexFft::~ComplexFft() = default;

std::shared_ptr<ComplexFft const> ComplexFft::get(std::ptrdiff_t n) {
    static std::mutex mutex;
    static std::map<std::pair<std::ptrdiff_t, std::ptrdiff_t>, std::shared_ptr<ComplexFft const>> cache;
    if (n < 1) throw std::invalid_argument("ComplexFft: length must be >= 1, got " + std::to_string(n));
    return cachedPlan<ComplexFft>(cache, mutex, {n, 0}, [n] { return std::make_shared<ComplexFft const>(n); });
}

std::ptrdiff_t ComplexFft::workSize(std::ptrdiff_t batch) const {
    if (bluestein_) return 2 * bluestein_->m * batch;
    return n_ * batch;
}

void ComplexFft::runStockham(Complex* data, Complex* work, std::ptrdiff_t batch, bool inverse) const {
    Complex* src = data;
    Complex* dst = work;
    std::ptrdiff_t s = batch;
    for (Stage const& st : stages_) {
        Complex const* tw = twiddles_.data() + st.twiddleOffset;
        switch (st.radix) {
            case 2:
                inverse ? stage2<true>(src, dst, st.m, s, tw) : stage2<false>(src, dst, st.m, s, tw);
                break;
            case 3:
                inverse ? stage3<true>(src, dst, st.m, s, tw) : stage3<false>(src, dst, st.m, s, tw);
                break;
            case 4:
                inverse ? stage4<true>(src, dst, st.m, s, tw) : stage4<false>(src, dst, st.m, s, tw);
                break;
            case 5:
                inverse ? stage5<true>(src, dst, st.m, s, tw) : stage5<false>(src, dst, st.m, s, tw);
                break;
            default: {
                double const* c = genericCos_.data() + st.genericOffset;
                double const* sn = genericSin_.data() + st.genericOffset;
                inverse ? stageGeneric<true>(src, dst, st.m, s, st.radix, tw, c, sn)
                        : stageGeneric<false>(src, dst, st.m, s, st.radix, tw, c, sn);
            }
        }
        s *= st.radix;
        std::swap(src, dst);
    }
    if (src != data) std::memcpy(static_cast<void*>(data), src, sizeof(Complex) * static_cast<std::size_t>(n_ * batch));
}

void ComplexFft::run(Complex* data, Complex* work, std::ptrdiff_t batch, bool inverse) const {
    if (batch < 1 || n_ == 1) return;
    if (!bluestein_) {
        runStockham(data, work, batch, inverse);
        return;
    }
    // Bluestein: X_k = c_k sum_t (x_t c_t) conj(c_{k-t}), c_k = exp(-i pi k^2 / n); the inverse
    // transform is conj(forward(conj(x))).
    Bluestein const& b = *bluestein_;
    Complex* a = work;
    Complex* w2 = work + b.m * batch;
    for (std::ptrdiff_t k = 0; k < n_; ++k) {
        Complex const c = b.chirp[static_cast<std::size_t>(k)];
        Complex const* xin = data + k * batch;
        Complex* ao = a + k * batch;
        for (std::ptrdiff_t q = 0; q < batch; ++q) ao[q] = inverse ? mul(std::conj(xin[q]), c) : mul(xin[q], c);
    }
    std::fill(a + n_ * batch, a + b.m * batch, Complex(0.0, 0.0));
    b.inner->run(a, w2, batch, false);
    for (std::ptrdiff_t k = 0; k < b.m; ++k) {
        Complex const f = b.kernelSpectrum[static_cast<std::size_t>(k)];
        Complex* ao = a + k * batch;
        for (std::ptrdiff_t q = 0; q < batch; ++q) ao[q] = mul(ao[q], f);
    }
    b.inner->run(a, w2, batch, true);
    for (std::ptrdiff_t k = 0; k < n_; ++k) {
        Complex const c = b.chirp[static_cast<std::size_t>(k)];
        Complex const* ai = a + k * batch;
        Complex* xo = data + k * batch;
        for (std::ptrdiff_t q = 0; q < batch; ++q) {
            Complex const v = mul(ai[q], c);
            xo[q] = inverse ? std::conj(v) : v;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// RealFft2d
// ------------------------------------------------------------------------------------------------

RealFft2d::RealFft2d(std::ptrdiff_t rows, std::ptrdiff_t cols) : rows_(rows), cols_(cols), ccols_(cols / 2 + 1) {
    if (rows < 1 || cols < 1) {
        throw std::invalid_argument("RealFft2d: dimensions must be >= 1, got " + std::to_string(rows) + " x " +
                                    std::to_string(cols));
    }
    colFft_ = ComplexFft::get(rows);
    if (cols % 2 == 0) {
        std::ptrdiff_t const h = cols / 2;
        rowFft_ = ComplexFft::get(h);
        rowTwiddles_.resize(static_cast<std::size_t>(h / 2 + 1));
        for (std::ptrdiff_t k = 0; k <= h / 2; ++k) rowTwiddles_[static_cast<std::size_t>(k)] = unitRoot(k, cols);
    } else {
        rowFft_ = ComplexFft::get(cols);
    }
}

std::shared_ptr<RealFft2d const> RealFft2d::get(std::ptrdiff_t rows, std::ptrdiff_t cols) {
    static std::mutex mutex;
    static std::map<std::pair<std::ptrdiff_t, std::ptrdiff_t>, std::shared_ptr<RealFft2d const>> cache;
    if (rows < 1 || cols < 1) {
        throw std::invalid_argument("RealFft2d: dimensions must be >= 1, got " + std::to_string(rows) + " x " +
                                    std::to_string(cols));
    }
    return cachedPlan<RealFft2d>(cache, mutex, {rows, cols},
                                 [rows, cols] { return std::make_shared<RealFft2d const>(rows, cols); });
}

std::ptrdiff_t RealFft2d::rowWorkSize() const { return rowFft_->workSize(1) + (cols_ % 2 ? cols_ : 0); }

void RealFft2d::rowForward(Complex* z, Complex* work) const {
    double const* r = reinterpret_cast<double const*>(z);
    bool zero = true;
    for (std::ptrdiff_t x = 0; x < cols_; ++x) {
        if (r[x] != 0.0) {
            zero = false;
            break;
        }
    }
    if (zero) {
        std::fill(z, z + ccols_, Complex(0.0, 0.0));
        return;
    }
    if (cols_ % 2) {
        Complex* tmp = work + rowFft_->workSize(1);
        for (std::ptrdiff_t x = 0; x < cols_; ++x) tmp[x] = Complex(r[x], 0.0);
        rowFft_->run(tmp, work, 1, false);
        std::copy(tmp, tmp + ccols_, z);
        return;
    }
    std::ptrdiff_t const h = cols_ / 2;
    rowFft_->run(z, work, 1, false);
    // Split Z = FFT_h(x_even + i x_odd) into X_k = E_k + w^k O_k, k = 0..h.
    Complex const z0 = z[0];
    z[0] = Complex(z0.real() + z0.imag(), 0.0);
    z[h] = Complex(z0.real() - z0.imag(), 0.0);
    for (std::ptrdiff_t k = 1; 2 * k <= h; ++k) {
        Complex const a = z[k], b = std::conj(z[h - k]);
        Complex const e = 0.5 * (a + b);
        Complex const o = timesMinusI(0.5 * (a - b));
        Complex const wo = mul(rowTwiddles_[static_cast<std::size_t>(k)], o);
        z[k] = e + wo;
        if (h - k != k) z[h - k] = std::conj(e - wo);
    }
}

void RealFft2d::rowsForward(Complex* buffer, bool parallel) const {
    std::ptrdiff_t const nTasks = taskCount(rows_, parallel);
    forTasks(nTasks, parallel, [&](std::ptrdiff_t task) {
        std::ptrdiff_t const y0 = rows_ * task / nTasks, y1 = rows_ * (task + 1) / nTasks;
        std::vector<Complex> work(static_cast<std::size_t>(rowWorkSize()));
        for (std::ptrdiff_t y = y0; y < y1; ++y) rowForward(buffer + y * ccols_, work.data());
    });
}

void RealFft2d::rowsInverse(Complex* buffer, bool parallel, std::ptrdiff_t rowBegin, std::ptrdiff_t rowEnd) const {
    if (rowEnd < 0) rowEnd = rows_;
    if (rowBegin < 0 || rowBegin > rowEnd || rowEnd > rows_) {
        throw std::invalid_argument("RealFft2d::rowsInverse: bad row range [" + std::to_string(rowBegin) + ", " +
                                    std::to_string(rowEnd) + ") for " + std::to_string(rows_) + " rows");
    }
    std::ptrdiff_t const nRows = rowEnd - rowBegin;
    if (nRows == 0) return;
    std::ptrdiff_t const nTasks = taskCount(nRows, parallel);
    bool const even = cols_ % 2 == 0;
    std::ptrdiff_t const h = cols_ / 2;
    double const scale = 1.0 / (static_cast<double>(rows_) * static_cast<double>(cols_));
    forTasks(nTasks, parallel, [&](std::ptrdiff_t task) {
        std::ptrdiff_t const y0 = rowBegin + nRows * task / nTasks, y1 = rowBegin + nRows * (task + 1) / nTasks;
        std::vector<Complex> work(static_cast<std::size_t>(rowFft_->workSize(1) + (even ? 0 : cols_)));
        for (std::ptrdiff_t y = y0; y < y1; ++y) {
            Complex* z = buffer + y * ccols_;
            if (!even) {
                Complex* tmp = work.data() + rowFft_->workSize(1);
                tmp[0] = Complex(z[0].real(), 0.0);
                for (std::ptrdiff_t k = 1; k < ccols_; ++k) {
                    tmp[k] = z[k];
                    tmp[cols_ - k] = std::conj(z[k]);
                }
                rowFft_->run(tmp, work.data(), 1, true);
                double* r = reinterpret_cast<double*>(z);
                for (std::ptrdiff_t x = 0; x < cols_; ++x) r[x] = tmp[x].real() * scale;
                continue;
            }
            // Rebuild Z_k = E_k + i O_k from the half spectrum, with the 1/(rows cols) scale.
            double const a0 = z[0].real(), ah = z[h].real();
            z[0] = Complex((a0 + ah) * scale, (a0 - ah) * scale);
            for (std::ptrdiff_t k = 1; 2 * k <= h; ++k) {
                Complex const a = z[k], b = std::conj(z[h - k]);
                Complex const w = rowTwiddles_[static_cast<std::size_t>(k)];
                Complex const sum = a + b, dif = a - b;
                z[k] = scale * (sum + timesI(mulConj(dif, w)));
                if (h - k != k) z[h - k] = scale * (std::conj(sum) + timesI(mul(w, std::conj(dif))));
            }
            rowFft_->run(z, work.data(), 1, true);
        }
    });
}

std::ptrdiff_t RealFft2d::columnWorkSize() const { return colFft_->workSize(kBlock); }

void RealFft2d::gatherBlock(Complex const* buffer, std::ptrdiff_t x0, std::ptrdiff_t bw, Complex* block) const {
    for (std::ptrdiff_t t = 0; t < rows_; ++t) {
        Complex const* src = buffer + t * ccols_ + x0;
        std::copy(src, src + bw, block + t * bw);
    }
}

void RealFft2d::scatterBlock(Complex const* block, std::ptrdiff_t x0, std::ptrdiff_t bw, Complex* buffer) const {
    for (std::ptrdiff_t t = 0; t < rows_; ++t) {
        Complex const* src = block + t * bw;
        std::copy(src, src + bw, buffer + t * ccols_ + x0);
    }
}

void RealFft2d::columnTransform(Complex* block, std::ptrdiff_t bw, bool inverse, Complex* work) const {
    colFft_->run(block, work, bw, inverse);
}

void RealFft2d::columns(Complex* buffer, bool inverse, bool parallel) const {
    if (rows_ == 1) return;
    std::ptrdiff_t const nBlocks = columnBlockCount();
    std::ptrdiff_t const nTasks = taskCount(nBlocks, parallel);
    forTasks(nTasks, parallel, [&](std::ptrdiff_t task) {
        std::ptrdiff_t const b0 = nBlocks * task / nTasks, b1 = nBlocks * (task + 1) / nTasks;
        std::vector<Complex> tmp(static_cast<std::size_t>(rows_ * kBlock));
        std::vector<Complex> work(static_cast<std::size_t>(columnWorkSize()));
        for (std::ptrdiff_t blk = b0; blk < b1; ++blk) {
            auto const [x0, bw] = columnBlock(blk);
            gatherBlock(buffer, x0, bw, tmp.data());
            columnTransform(tmp.data(), bw, inverse, work.data());
            scatterBlock(tmp.data(), x0, bw, buffer);
        }
    });
}

void RealFft2d::forwardInPlace(Complex* buffer, bool parallel) const {
    rowsForward(buffer, parallel);
    columns(buffer, false, parallel);
}

void RealFft2d::inverseInPlace(Complex* buffer, bool parallel, std::ptrdiff_t rowBegin, std::ptrdiff_t rowEnd) const {
    columns(buffer, true, parallel);
    rowsInverse(buffer, parallel, rowBegin, rowEnd);
}

void RealFft2d::forward(ImageView<const double> in, Complex* out, bool parallel) const {
    if (in.height != rows_ || in.width != cols_) {
        throw std::invalid_argument("RealFft2d::forward: input shape (" + std::to_string(in.height) + ", " +
                                    std::to_string(in.width) + ") differs from the plan (" + std::to_string(rows_) +
                                    ", " + std::to_string(cols_) + ")");
    }
    for (std::ptrdiff_t y = 0; y < rows_; ++y) {
        double* r = reinterpret_cast<double*>(out + y * ccols_);
        for (std::ptrdiff_t x = 0; x < cols_; ++x) r[x] = in(y, x);
    }
    forwardInPlace(out, parallel);
}

void RealFft2d::inverse(Complex* spectrum, ImageView<double> out, bool parallel) const {
    if (out.height != rows_ || out.width != cols_) {
        throw std::invalid_argument("RealFft2d::inverse: output shape (" + std::to_string(out.height) + ", " +
                                    std::to_string(out.width) + ") differs from the plan (" + std::to_string(rows_) +
                                    ", " + std::to_string(cols_) + ")");
    }
    inverseInPlace(spectrum, parallel);
    for (std::ptrdiff_t y = 0; y < rows_; ++y) {
        double const* r = reinterpret_cast<double const*>(spectrum + y * ccols_);
        for (std::ptrdiff_t x = 0; x < cols_; ++x) out(y, x) = r[x];
    }
}

}  // namespace diffcal::fft
