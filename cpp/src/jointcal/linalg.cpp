#include "diffcal/jointcal/linalg.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "diffcal/parallel.hpp"

namespace diffcal::jointcal {

namespace {

/// Unblocked left-looking Cholesky of the kb x kb diagonal block starting at (k0, k0).
std::ptrdiff_t factorDiagonalBlock(Eigen::Ref<Eigen::MatrixXd>& A, std::ptrdiff_t k0, std::ptrdiff_t kb) {
    for (std::ptrdiff_t j = k0; j < k0 + kb; ++j) {
        double d = A(j, j);
        for (std::ptrdiff_t l = k0; l < j; ++l) d -= A(j, l) * A(j, l);
        if (!(d > 0.0) || !std::isfinite(d)) return j;
        double const ljj = std::sqrt(d);
        A(j, j) = ljj;
        double const inv = 1.0 / ljj;
        for (std::ptrdiff_t i = j + 1; i < k0 + kb; ++i) {
            double s = A(i, j);
            for (std::ptrdiff_t l = k0; l < j; ++l) s -= A(i, l) * A(j, l);
            A(i, j) = s * inv;
        }
    }
    return -1;
}

}  // namespace

std::ptrdiff_t denseCholeskyInPlace(Eigen::Ref<Eigen::MatrixXd> A, std::ptrdiff_t nb) {
    std::ptrdiff_t const n = A.rows();
    if (A.cols() != n) return 0;
    nb = std::max<std::ptrdiff_t>(nb, 8);
    for (std::ptrdiff_t k0 = 0; k0 < n; k0 += nb) {
        std::ptrdiff_t const kb = std::min(nb, n - k0);
        std::ptrdiff_t const fail = factorDiagonalBlock(A, k0, kb);
        if (fail >= 0) return fail;
        std::ptrdiff_t const r0 = k0 + kb;
        if (r0 >= n) break;
        // panel: A[r0:n, k0:k0+kb] <- A[r0:n, k0:k0+kb] * L_kk^-T, in row chunks of nb
        std::ptrdiff_t const nChunks = (n - r0 + nb - 1) / nb;
        auto const Lkk = A.block(k0, k0, kb, kb);
        std::vector<std::uint8_t> zero(std::size_t(nChunks), 0);
        parallelFor(nChunks, [&](std::ptrdiff_t t) {
            std::ptrdiff_t const i0 = r0 + t * nb, ib = std::min(nb, n - i0);
            auto P = A.block(i0, k0, ib, kb);
            // an all-zero panel block stays zero and contributes nothing to the trailing update
            if ((P.array() == 0.0).all()) {
                zero[std::size_t(t)] = 1;
                return;
            }
            Lkk.transpose().triangularView<Eigen::Upper>().solveInPlace<Eigen::OnTheRight>(P);
        });
        // trailing update of the lower tiles: A[i, j] -= P_i P_j^T for j <= i (skipping zero panels, which
        // makes block-diagonal and arrow-shaped matrices cheap)
        std::vector<std::pair<std::ptrdiff_t, std::ptrdiff_t>> tiles;
        for (std::ptrdiff_t ti = 0; ti < nChunks; ++ti) {
            if (zero[std::size_t(ti)]) continue;
            for (std::ptrdiff_t tj = 0; tj <= ti; ++tj)
                if (!zero[std::size_t(tj)]) tiles.emplace_back(ti, tj);
        }
        parallelFor(std::ptrdiff_t(tiles.size()), [&](std::ptrdiff_t t) {
            auto const [ti, tj] = tiles[std::size_t(t)];
            std::ptrdiff_t const i0 = r0 + ti * nb, ib = std::min(nb, n - i0);
            std::ptrdiff_t const j0 = r0 + tj * nb, jb = std::min(nb, n - j0);
            auto const Pi = A.block(i0, k0, ib, kb);
            auto const Pj = A.block(j0, k0, jb, kb);
            if (ti == tj) {
                Eigen::MatrixXd prod = Pi * Pi.transpose();
                for (std::ptrdiff_t c = 0; c < jb; ++c)
                    for (std::ptrdiff_t r = c; r < ib; ++r) A(i0 + r, j0 + c) -= prod(r, c);
            } else {
                A.block(i0, j0, ib, jb).noalias() -= Pi * Pj.transpose();
            }
        });
    }
    return -1;
}

void denseCholeskySolveInPlace(Eigen::Ref<Eigen::MatrixXd const> L, Eigen::Ref<Eigen::VectorXd> b) {
    std::ptrdiff_t const n = L.rows();
    std::ptrdiff_t const nb = 256;
    if (n < 4 * nb) {
        L.triangularView<Eigen::Lower>().solveInPlace(b);
        L.transpose().triangularView<Eigen::Upper>().solveInPlace(b);
        return;
    }
    // Blocked substitutions; the panel products run in parallel on fixed row blocks, each written by one task
    // (forward) or reduced in block order (backward): bit-identical for any thread count.
    std::ptrdiff_t const nBlocks = (n + nb - 1) / nb;
    for (std::ptrdiff_t k = 0; k < nBlocks; ++k) {
        std::ptrdiff_t const k0 = k * nb, kb = std::min(nb, n - k0);
        L.block(k0, k0, kb, kb).triangularView<Eigen::Lower>().solveInPlace(b.segment(k0, kb));
        std::ptrdiff_t const rest = nBlocks - k - 1;
        if (rest == 0) break;
        parallelFor(rest, [&](std::ptrdiff_t t) {
            std::ptrdiff_t const i0 = (k + 1 + t) * nb, ib = std::min(nb, n - i0);
            b.segment(i0, ib).noalias() -= L.block(i0, k0, ib, kb) * b.segment(k0, kb);
        });
    }
    Eigen::MatrixXd partial(nb, nBlocks);
    for (std::ptrdiff_t k = nBlocks - 1; k >= 0; --k) {
        std::ptrdiff_t const k0 = k * nb, kb = std::min(nb, n - k0);
        std::ptrdiff_t const r0 = k0 + kb;
        std::ptrdiff_t const nChunks = (n - r0 + nb - 1) / nb;
        if (nChunks > 0) {
            parallelFor(nChunks, [&](std::ptrdiff_t t) {
                std::ptrdiff_t const c0 = r0 + t * nb, cb = std::min(nb, n - c0);
                partial.col(t).head(kb).noalias() = L.block(c0, k0, cb, kb).transpose() * b.segment(c0, cb);
            });
            for (std::ptrdiff_t t = 0; t < nChunks; ++t) b.segment(k0, kb) -= partial.col(t).head(kb);
        }
        L.block(k0, k0, kb, kb).transpose().triangularView<Eigen::Upper>().solveInPlace(b.segment(k0, kb));
    }
}

}  // namespace diffcal::jointcal
