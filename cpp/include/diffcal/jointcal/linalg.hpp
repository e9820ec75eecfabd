// Dense linear algebra for the Schur-complement solver.
#pragma once

#include <Eigen/Core>
#include <cstddef>

namespace diffcal::jointcal {

/// In-place blocked Cholesky factorisation A = L L^T of the lower triangle of a column-major n x n matrix.
///
/// Only the lower triangle is read and overwritten with L (the strict upper triangle is left untouched).
/// The trailing updates run in parallel on fixed tiles, each tile computed by exactly one task, so the result
/// is bit-identical for any thread count. Returns -1 on success, else the index of the first column whose
/// pivot is not positive (or not finite).
std::ptrdiff_t denseCholeskyInPlace(Eigen::Ref<Eigen::MatrixXd> A, std::ptrdiff_t blockSize = 128);

/// Solve L L^T x = b in place given the factor from denseCholeskyInPlace (blocked and parallel for n >= 1024,
/// with a fixed work split: bit-identical for any thread count).
void denseCholeskySolveInPlace(Eigen::Ref<Eigen::MatrixXd const> L, Eigen::Ref<Eigen::VectorXd> b);

}  // namespace diffcal::jointcal
