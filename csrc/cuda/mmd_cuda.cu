// CUDA kernels of vaefast::kernel_sum_self / kernel_sum_cross and their backward: sums of a pairwise kernel
// over the rows of x [n, d] and y [m, d] that never form the [n, m] kernel matrix.
//
// Tiling: a block of 256 threads (16 x 16) owns a 64 x 64 tile of pairs, 4 x 4 pairs per thread, with
// rows i = ty + 16 r and columns j = tx + 16 c (so shared-memory reads are broadcasts or consecutive
// words: conflict-free). Feature chunks of both tiles are staged in shared memory feature-major, padded to
// 65 words per feature so that the transposing stores are conflict-free too. The pair statistic is
// sum_k (a_k - b_k)^2 on CUDA cores (exact up to rounding: no ||a||^2 + ||b||^2 - 2 a.b cancellation; no
// tensor-core path yet) or a.b for "poly"; every scale of the kernel is evaluated from that one statistic
// (common/mmd_math.h).
//
// Forward: a block walks a fixed run of column tiles for one row tile, adds its pairs' kernel values (per
// tile in the accumulation type, across tiles in double) and writes one double partial; a one-block kernel
// adds the partials in index order. The self sum visits column tiles >= the row tile only and weights
// pairs j > i by 2 (k is symmetric), the diagonal by 1 unless excluded. Run sizes depend on n and m only,
// so the bits never depend on timing or on the GPU model. No atomics.
//
// Backward: grad_a[i, :] = scale * sum_j k'(s_ij) (a_i - b_j) (distance kernels) or scale * sum_j k'(s_ij)
// b_j ("poly"). A block owns a 64-row tile and a 64-feature chunk of grad_a in registers and walks every
// column tile: pass 1 computes the tile's statistics over all features, the slopes go to shared memory,
// pass 2 accumulates (a_i - b_j) per pair (not (sum_j w) a_i - sum_j w b_j, which cancels). For d > 64
// the statistics are recomputed per feature chunk (d / 64 times): the cost of keeping the output in
// registers without a [n, m] buffer. Each output element is written by one thread: deterministic.
#include <atomic>

#include "../common/mmd_math.h"
#include "cuda_common.cuh"
#include "launchers.h"

namespace vaefast {
namespace cuda {
namespace {

constexpr int kTile = 64;           // rows and columns of a pair tile
constexpr int kSide = 16;           // threads per tile side (16 x 16 = kThreads)
constexpr int kPer = kTile / kSide;  // pairs per thread per side
constexpr int kPad = kTile + 1;     // shared-memory row length (conflict-free transposed stores)
constexpr int kForwardChunk = 32;   // features staged per step in the forward kernel
constexpr int kBackwardChunk = 64;  // features staged per step, and per output chunk, in the backward kernel
static_assert(kSide * kSide == kThreads, "one thread per 4 x 4 pairs of a tile");

template <PairKernel kernel>
constexpr bool kDotProduct = kernel == PairKernel::kPoly;

__host__ __device__ inline int64_t tiles(int64_t rows) { return (rows + kTile - 1) / kTile; }

// Column tiles per forward block: enough blocks (about 2048) to fill any GPU, from the sizes alone.
inline int64_t tiles_per_block(int64_t row_tiles, int64_t col_tiles) {
  const int64_t per_block = (row_tiles * col_tiles + 2047) / 2048;
  return per_block < 1 ? 1 : (per_block > col_tiles ? col_tiles : per_block);
}

// Stages rows [row0, row0 + 64) x features [k0, k0 + chunk) of src [rows, d] into tile[k][row] (zeros
// outside): consecutive threads read consecutive features of a row (coalesced).
template <int chunk, typename acc, typename scalar_t>
__device__ __forceinline__ void stage_tile(acc (*tile)[kPad], const scalar_t* src, int64_t rows, int64_t d,
                                           int64_t row0, int64_t k0) {
  for (int e = threadIdx.x; e < kTile * chunk; e += kThreads) {
    const int row = e / chunk;
    const int k = e % chunk;
    const int64_t r = row0 + row;
    const int64_t f = k0 + k;
    tile[k][row] = (r < rows && f < d) ? to_acc<acc>(src[r * d + f]) : acc(0);
  }
}

// statistic[r][c] += over the staged features: (a - b)^2, or a * b for "poly".
template <bool dot_product, int chunk, typename acc>
__device__ __forceinline__ void accumulate_statistics(const acc (*a_tile)[kPad], const acc (*b_tile)[kPad],
                                                      acc (&statistic)[kPer][kPer]) {
  const int tx = threadIdx.x % kSide;
  const int ty = threadIdx.x / kSide;
#pragma unroll 8
  for (int k = 0; k < chunk; ++k) {
    acc a[kPer], b[kPer];
#pragma unroll
    for (int r = 0; r < kPer; ++r) a[r] = a_tile[k][ty + kSide * r];
#pragma unroll
    for (int c = 0; c < kPer; ++c) b[c] = b_tile[k][tx + kSide * c];
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        if (dot_product) {
          statistic[r][c] = fma(a[r], b[c], statistic[r][c]);
        } else {
          const acc diff = a[r] - b[c];
          statistic[r][c] = fma(diff, diff, statistic[r][c]);
        }
      }
    }
  }
}

template <typename scalar_t, PairKernel kernel>
__global__ void __launch_bounds__(kThreads) kernel_sum_kernel(KernelSumParams<scalar_t> p,
                                                              PairKernelConstants<acc_t<scalar_t>> constants,
                                                              int64_t col_tiles_per_block, double* partial) {
  using acc = acc_t<scalar_t>;
  __shared__ acc x_tile[kForwardChunk][kPad];
  __shared__ acc y_tile[kForwardChunk][kPad];
  __shared__ double warp_sums[kThreads / kWarp];
  const int tx = threadIdx.x % kSide;
  const int ty = threadIdx.x / kSide;
  const int64_t row_tile = blockIdx.x;
  const int64_t i0 = row_tile * kTile;
  const int64_t col_tiles = tiles(p.m);
  const int64_t first = static_cast<int64_t>(blockIdx.y) * col_tiles_per_block;
  const int64_t last = first + col_tiles_per_block < col_tiles ? first + col_tiles_per_block : col_tiles;
  double thread_total = 0;
  for (int64_t col_tile = first; col_tile < last; ++col_tile) {
    if (p.self_pairs && col_tile < row_tile) continue;  // uniform over the block: the lower triangle
    const int64_t j0 = col_tile * kTile;
    acc statistic[kPer][kPer] = {};
    for (int64_t k0 = 0; k0 < p.d; k0 += kForwardChunk) {
      __syncthreads();
      stage_tile<kForwardChunk>(x_tile, p.x, p.n, p.d, i0, k0);
      stage_tile<kForwardChunk>(y_tile, p.y, p.m, p.d, j0, k0);
      __syncthreads();
      accumulate_statistics<kDotProduct<kernel>, kForwardChunk>(x_tile, y_tile, statistic);
    }
    acc tile_total = 0;
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        const int64_t i = i0 + ty + kSide * r;
        const int64_t j = j0 + tx + kSide * c;
        int weight = i < p.n && j < p.m ? 1 : 0;
        if (p.self_pairs) weight = j > i ? 2 * weight : (j == i && !p.exclude_diagonal ? weight : 0);
        // Only valid pairs are added (a masked pair's value is never multiplied in: it could be NaN).
        if (weight != 0) tile_total += acc(weight) * pair_kernel_value<kernel>(statistic[r][c], constants);
      }
    }
    thread_total += static_cast<double>(tile_total);
  }
  const double block_total = block_sum(thread_total, warp_sums);
  if (threadIdx.x == 0) partial[static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x] = block_total;
}

// out[0] = the partials added in index order, in double (one block).
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const double* partial, int64_t count, double* out) {
  __shared__ double warp_sums[kThreads / kWarp];
  double total = 0;
  for (int64_t k = threadIdx.x; k < count; k += kThreads) total += partial[k];
  total = block_sum(total, warp_sums);
  if (threadIdx.x == 0) out[0] = total;
}

// One side of the backward: gradients of the rows of a against every row of b.
template <typename scalar_t>
struct RowGradients {
  const scalar_t* a;  // [rows_a, d]
  const scalar_t* b;  // [rows_b, d]
  scalar_t* out;      // [rows_a, d]
  int64_t rows_a;
  int64_t rows_b;
  int64_t d;
  bool skip_diagonal;   // self sum without i == j
  const double* grad;   // d loss / d sum
  double factor;        // the statistic's derivative factor (2 or 1), doubled for the self sum
};

template <typename acc>
constexpr size_t kBackwardSharedBytes = 3 * kTile * kPad * sizeof(acc);

template <typename scalar_t, PairKernel kernel>
__global__ void __launch_bounds__(kThreads) row_gradients_kernel(RowGradients<scalar_t> g,
                                                                 PairKernelConstants<acc_t<scalar_t>> constants) {
  using acc = acc_t<scalar_t>;
  constexpr bool dot_product = kDotProduct<kernel>;
  acc (*a_tile)[kPad] = reinterpret_cast<acc (*)[kPad]>(dynamic_shared_memory());
  acc (*b_tile)[kPad] = a_tile + kTile;
  acc (*weights)[kPad] = b_tile + kTile;  // weights[i][j]
  const int tx = threadIdx.x % kSide;
  const int ty = threadIdx.x / kSide;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t f0 = static_cast<int64_t>(blockIdx.y) * kBackwardChunk;  // this block's output features
  const bool one_chunk = g.d <= kBackwardChunk;
  // This thread's outputs: rows i0 + ty + 16 r, features f0 + tx + 16 c; a's values there stay in registers.
  acc a_own[kPer][kPer];
  acc gradient[kPer][kPer] = {};
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int64_t i = i0 + ty + kSide * r;
      const int64_t f = f0 + tx + kSide * c;
      a_own[r][c] = i < g.rows_a && f < g.d ? to_acc<acc>(g.a[i * g.d + f]) : acc(0);
    }
  }
  const int64_t col_tiles = tiles(g.rows_b);
  for (int64_t col_tile = 0; col_tile < col_tiles; ++col_tile) {
    const int64_t j0 = col_tile * kTile;
    // Pass 1: the statistics of the 64 x 64 pairs over all features.
    acc statistic[kPer][kPer] = {};
    for (int64_t k0 = 0; k0 < g.d; k0 += kBackwardChunk) {
      __syncthreads();
      stage_tile<kBackwardChunk>(a_tile, g.a, g.rows_a, g.d, i0, k0);
      stage_tile<kBackwardChunk>(b_tile, g.b, g.rows_b, g.d, j0, k0);
      __syncthreads();
      accumulate_statistics<dot_product, kBackwardChunk>(a_tile, b_tile, statistic);
    }
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        const int64_t i = i0 + ty + kSide * r;
        const int64_t j = j0 + tx + kSide * c;
        const bool valid = i < g.rows_a && j < g.rows_b && !(g.skip_diagonal && i == j);
        weights[ty + kSide * r][tx + kSide * c] = valid ? pair_kernel_slope<kernel>(statistic[r][c], constants) : acc(0);
      }
    }
    __syncthreads();
    if (!one_chunk) {  // b_tile holds the last feature chunk; pass 2 needs this block's chunk
      stage_tile<kBackwardChunk>(b_tile, g.b, g.rows_b, g.d, j0, f0);
      __syncthreads();
    }
    // Pass 2: gradient[r][c] += sum_j w_ij (a_if - b_jf), or w_ij b_jf for "poly".
#pragma unroll 4
    for (int jj = 0; jj < kTile; ++jj) {
      acc w[kPer], b[kPer];
#pragma unroll
      for (int r = 0; r < kPer; ++r) w[r] = weights[ty + kSide * r][jj];
#pragma unroll
      for (int c = 0; c < kPer; ++c) b[c] = b_tile[tx + kSide * c][jj];
#pragma unroll
      for (int r = 0; r < kPer; ++r) {
#pragma unroll
        for (int c = 0; c < kPer; ++c) {
          gradient[r][c] = fma(w[r], dot_product ? b[c] : a_own[r][c] - b[c], gradient[r][c]);
        }
      }
    }
  }
  const acc scale = static_cast<acc>(g.factor) * static_cast<acc>(*g.grad);
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int64_t i = i0 + ty + kSide * r;
      const int64_t f = f0 + tx + kSide * c;
      if (i < g.rows_a && f < g.d) g.out[i * g.d + f] = from_acc<scalar_t>(scale * gradient[r][c]);
    }
  }
}

template <typename scalar_t, PairKernel kernel>
void launch_row_gradients(const RowGradients<scalar_t>& g, const PairKernelConstants<acc_t<scalar_t>>& constants,
                          cudaStream_t stream) {
  using acc = acc_t<scalar_t>;
  constexpr size_t shared = kBackwardSharedBytes<acc>;  // 50 KB (float) / 100 KB (double): opt-in above 48 KB
  // Set once per device (the first 64; later ones on every call), so that later calls, such as those under
  // CUDA-graph capture after a warm-up, do nothing but launch.
  static std::atomic<uint64_t> opted_in{0};
  int device = 0;
  cudaGetDevice(&device);
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit == 0 || (opted_in.load() & bit) == 0) {
    cudaFuncSetAttribute(row_gradients_kernel<scalar_t, kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(shared));
    opted_in.fetch_or(bit);
  }
  const dim3 grid(static_cast<unsigned int>(tiles(g.rows_a)),
                  static_cast<unsigned int>((g.d + kBackwardChunk - 1) / kBackwardChunk));
  launch_kernel(row_gradients_kernel<scalar_t, kernel>, grid, kThreads, shared, stream, g, constants);
}

template <typename scalar_t, PairKernel kernel>
void launch_forward(const KernelSumParams<scalar_t>& p, cudaStream_t stream) {
  using acc = acc_t<scalar_t>;
  const auto constants = pair_kernel_constants<acc>(p.scale_constant, p.num_scales, p.d);
  const int64_t row_tiles = tiles(p.n);
  const int64_t col_tiles = tiles(p.m);
  const int64_t per_block = tiles_per_block(row_tiles, col_tiles);
  const dim3 grid(static_cast<unsigned int>(row_tiles),
                  static_cast<unsigned int>((col_tiles + per_block - 1) / per_block));
  double* partial = static_cast<double*>(p.workspace);
  launch_kernel(kernel_sum_kernel<scalar_t, kernel>, grid, kThreads, 0, stream, p, constants, per_block, partial);
  launch_kernel(sum_partials_kernel, 1, kThreads, 0, stream, partial, static_cast<int64_t>(grid.x) * grid.y, p.out);
}

template <typename scalar_t, PairKernel kernel>
void launch_backward(const KernelSumBackwardParams<scalar_t>& p, cudaStream_t stream) {
  using acc = acc_t<scalar_t>;
  const auto constants = pair_kernel_constants<acc>(p.scale_constant, p.num_scales, p.d);
  // d ||a - b||^2 / da = 2 (a - b), d a.b / da = b; the self sum has x on both sides of every pair: twice.
  const double factor = kernel == PairKernel::kPoly ? 1.0 : 2.0;
  if (p.self_pairs) {
    launch_row_gradients<scalar_t, kernel>({p.x, p.x, p.grad_x, p.n, p.n, p.d, p.exclude_diagonal, p.grad, 2 * factor},
                                           constants, stream);
    return;
  }
  launch_row_gradients<scalar_t, kernel>({p.x, p.y, p.grad_x, p.n, p.m, p.d, false, p.grad, factor}, constants, stream);
  // k is symmetric, so d k(x_i, y_j) / d y_j is the left-row gradient with the roles swapped.
  launch_row_gradients<scalar_t, kernel>({p.y, p.x, p.grad_y, p.m, p.n, p.d, false, p.grad, factor}, constants, stream);
}

}  // namespace

template <typename scalar_t>
size_t kernel_sum_workspace_bytes(const KernelSumParams<scalar_t>& p) {
  const int64_t row_tiles = tiles(p.n);
  const int64_t col_tiles = tiles(p.m);
  const int64_t per_block = tiles_per_block(row_tiles, col_tiles);
  return static_cast<size_t>(row_tiles * ((col_tiles + per_block - 1) / per_block)) * sizeof(double);
}

template <typename scalar_t>
void launch_kernel_sum(const KernelSumParams<scalar_t>& p, cudaStream_t stream) {
  switch (p.kernel) {
    case PairKernel::kImq:
      launch_forward<scalar_t, PairKernel::kImq>(p, stream);
      break;
    case PairKernel::kRbf:
      launch_forward<scalar_t, PairKernel::kRbf>(p, stream);
      break;
    case PairKernel::kPoly:
      launch_forward<scalar_t, PairKernel::kPoly>(p, stream);
      break;
  }
}

template <typename scalar_t>
void launch_kernel_sum_backward(const KernelSumBackwardParams<scalar_t>& p, cudaStream_t stream) {
  switch (p.kernel) {
    case PairKernel::kImq:
      launch_backward<scalar_t, PairKernel::kImq>(p, stream);
      break;
    case PairKernel::kRbf:
      launch_backward<scalar_t, PairKernel::kRbf>(p, stream);
      break;
    case PairKernel::kPoly:
      launch_backward<scalar_t, PairKernel::kPoly>(p, stream);
      break;
  }
}

#define VAEFAST_INSTANTIATE(scalar_t)                                                                  \
  template size_t kernel_sum_workspace_bytes<scalar_t>(const KernelSumParams<scalar_t>&);              \
  template void launch_kernel_sum<scalar_t>(const KernelSumParams<scalar_t>&, cudaStream_t);          \
  template void launch_kernel_sum_backward<scalar_t>(const KernelSumBackwardParams<scalar_t>&, cudaStream_t);
VAEFAST_FOR_EACH_CUDA_DTYPE(VAEFAST_INSTANTIATE)
#undef VAEFAST_INSTANTIATE

}  // namespace cuda
}  // namespace vaefast
