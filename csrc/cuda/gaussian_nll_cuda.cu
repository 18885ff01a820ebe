// CUDA kernels of vaefast::gaussian_nll, the learned-gamma Gaussian NLL. Forward reads x and x_hat once
// (8 bytes per float32 element, plus log_gamma when it is per feature or full); backward reads them once
// more and writes grad_x_hat, reducing grad_log_gamma on the way: per-row sums (scalar, per-sample
// log_gamma) by warp per (row, chunk), per-feature column sums over fixed blocks of 64 rows, added in
// block order. Deterministic throughout. Per-element math: common/elementwise_math.h.
#include "cuda_common.cuh"
#include "launchers.h"

namespace vaefast {
namespace cuda {
namespace {

// Rows per block of the per-feature gradient reduction (as the CPU kernel's kNllRowBlock).
constexpr int64_t kNllRowBlock = 64;

template <LogGammaLayout layout>
constexpr bool kPerRow = layout == LogGammaLayout::kScalar || layout == LogGammaLayout::kPerSample;

// Forward: one lane's sum over its columns of a row. Per-row layouts add only the residual terms (the
// row's log_gamma + 0.5 log 2 pi, times features, is added once in NllDone); per-feature and full
// log_gamma add whole terms.
template <typename scalar_t, LogGammaLayout layout>
struct NllTerm {
  const scalar_t* x;
  const scalar_t* x_hat;
  const scalar_t* log_gamma;
  int64_t features;
  bool vectorised;

  __device__ acc_t<scalar_t> operator()(int64_t row, int64_t begin, int64_t end, int lane) const {
    using acc = acc_t<scalar_t>;
    constexpr int N = kVecWidth<scalar_t>;
    using P = Pack<scalar_t, N>;
    const scalar_t* x_row = x + row * features;
    const scalar_t* x_hat_row = x_hat + row * features;
    const scalar_t* log_gamma_row = layout == LogGammaLayout::kFull ? log_gamma + row * features : log_gamma;
    acc inv_var_row = 0;
    if constexpr (kPerRow<layout>) {
      inv_var_row = inverse_variance(to_acc<acc>(log_gamma[layout == LogGammaLayout::kPerSample ? row : 0]));
    }
    // log_gamma_value is unused (0) for the per-row layouts. Passed by value: a pointer into a register
    // pack would force the pack into local memory.
    auto term = [&](acc xv, acc x_hat_v, acc log_gamma_value) {
      if constexpr (kPerRow<layout>) {
        return gaussian_nll_residual_term(xv, x_hat_v, inv_var_row);
      } else {
        return gaussian_nll_term(xv, x_hat_v, log_gamma_value);
      }
    };
    return lane_sum<acc, N>(
        begin, end, lane, vectorised,
        [&](int64_t j) {
          const P xp = *reinterpret_cast<const P*>(x_row + j);
          const P x_hat_p = *reinterpret_cast<const P*>(x_hat_row + j);
          P log_gamma_p{};
          if constexpr (!kPerRow<layout>) log_gamma_p = *reinterpret_cast<const P*>(log_gamma_row + j);
          acc total = 0;
#pragma unroll
          for (int k = 0; k < N; ++k) {
            total += term(to_acc<acc>(xp.v[k]), to_acc<acc>(x_hat_p.v[k]), to_acc<acc>(log_gamma_p.v[k]));
          }
          return total;
        },
        [&](int64_t j) {
          const acc log_gamma_value = kPerRow<layout> ? acc(0) : to_acc<acc>(log_gamma_row[j]);
          return term(to_acc<acc>(x_row[j]), to_acc<acc>(x_hat_row[j]), log_gamma_value);
        });
  }
};

template <typename scalar_t, LogGammaLayout layout>
struct NllDone {
  const scalar_t* log_gamma;
  scalar_t* per_sample;
  int64_t features;

  __device__ void operator()(int64_t row, acc_t<scalar_t> total) const {
    using acc = acc_t<scalar_t>;
    if constexpr (kPerRow<layout>) {
      const acc log_gamma_row = to_acc<acc>(log_gamma[layout == LogGammaLayout::kPerSample ? row : 0]);
      total += static_cast<acc>(features) * gaussian_nll_constant_term(log_gamma_row);
    }
    per_sample[row] = from_acc<scalar_t>(total);
  }
};

// Backward, per-row layouts: writes grad_x_hat over the lane's columns and returns its share of
// sum_j (x - x_hat)^2 / gamma^2 (the data part of d per_sample / d log_gamma).
template <typename scalar_t, LogGammaLayout layout>
struct NllBackwardTerm {
  GaussianNllBackwardParams<scalar_t> p;
  bool vectorised;

  __device__ acc_t<scalar_t> operator()(int64_t row, int64_t begin, int64_t end, int lane) const {
    using acc = acc_t<scalar_t>;
    constexpr int N = kVecWidth<scalar_t>;
    using P = Pack<scalar_t, N>;
    const int64_t base = row * p.features;
    const acc grad_row = to_acc<acc>(p.grad[row]);
    const acc inv_var = inverse_variance(to_acc<acc>(p.log_gamma[layout == LogGammaLayout::kPerSample ? row : 0]));
    return lane_sum<acc, N>(
        begin, end, lane, vectorised,
        [&](int64_t j) {
          const P xp = *reinterpret_cast<const P*>(p.x + base + j);
          const P x_hat_p = *reinterpret_cast<const P*>(p.x_hat + base + j);
          P grad_p;
          acc total = 0;
#pragma unroll
          for (int k = 0; k < N; ++k) {
            const acc xv = to_acc<acc>(xp.v[k]);
            const acc x_hat_v = to_acc<acc>(x_hat_p.v[k]);
            grad_p.v[k] = from_acc<scalar_t>(grad_row * gaussian_nll_grad_x_hat(xv, x_hat_v, inv_var));
            total += acc(2) * gaussian_nll_residual_term(xv, x_hat_v, inv_var);
          }
          *reinterpret_cast<P*>(p.grad_x_hat + base + j) = grad_p;
          return total;
        },
        [&](int64_t j) {
          const acc xv = to_acc<acc>(p.x[base + j]);
          const acc x_hat_v = to_acc<acc>(p.x_hat[base + j]);
          p.grad_x_hat[base + j] = from_acc<scalar_t>(grad_row * gaussian_nll_grad_x_hat(xv, x_hat_v, inv_var));
          return acc(2) * gaussian_nll_residual_term(xv, x_hat_v, inv_var);
        });
  }
};

// d per_sample[b] / d log_gamma = features - sum_j (x - x_hat)^2 / gamma^2, times grad[b]: stored per
// sample, or (scalar log_gamma) into row_values for the batch sum.
template <typename scalar_t, LogGammaLayout layout>
struct NllBackwardDone {
  const scalar_t* grad;
  scalar_t* grad_log_gamma;
  acc_t<scalar_t>* row_values;
  int64_t features;

  __device__ void operator()(int64_t row, acc_t<scalar_t> residuals) const {
    using acc = acc_t<scalar_t>;
    const acc value = to_acc<acc>(grad[row]) * (static_cast<acc>(features) - residuals);
    if constexpr (layout == LogGammaLayout::kPerSample) {
      grad_log_gamma[row] = from_acc<scalar_t>(value);
    } else {
      row_values[row] = value;
    }
  }
};

// grad_log_gamma[0] = sum over rows of row_values, in a fixed order (one block).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) sum_rows_kernel(const acc_t<scalar_t>* row_values, int64_t rows,
                                                            scalar_t* out) {
  using acc = acc_t<scalar_t>;
  __shared__ acc shared[kThreads / kWarp];
  acc total = 0;
  for (int64_t row = threadIdx.x; row < rows; row += kThreads) total += row_values[row];
  total = block_sum(total, shared);
  if (threadIdx.x == 0) out[0] = from_acc<scalar_t>(total);
}

// Per-feature log_gamma: item (row block rb, feature j) writes grad_x_hat for the block's rows of column j
// and its column sum of grad[b] * (1 - (x - x_hat)^2 / gamma_j^2), to partial[rb * features + j] (or
// straight to grad_log_gamma when there is one row block). Consecutive threads take consecutive j:
// coalesced.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) nll_backward_per_feature_kernel(GaussianNllBackwardParams<scalar_t> p,
                                                                            acc_t<scalar_t>* partial) {
  using acc = acc_t<scalar_t>;
  const int64_t row_blocks = (p.batch + kNllRowBlock - 1) / kNllRowBlock;
  const int64_t items = row_blocks * p.features;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < items; item += stride) {
    const int64_t block = item / p.features;
    const int64_t j = item % p.features;
    const acc inv_var = inverse_variance(to_acc<acc>(p.log_gamma[j]));
    const int64_t row_end = (block + 1) * kNllRowBlock < p.batch ? (block + 1) * kNllRowBlock : p.batch;
    acc column_sum = 0;
    for (int64_t row = block * kNllRowBlock; row < row_end; ++row) {
      const int64_t index = row * p.features + j;
      const acc grad_row = to_acc<acc>(p.grad[row]);
      const acc xv = to_acc<acc>(p.x[index]);
      const acc x_hat_v = to_acc<acc>(p.x_hat[index]);
      p.grad_x_hat[index] = from_acc<scalar_t>(grad_row * gaussian_nll_grad_x_hat(xv, x_hat_v, inv_var));
      column_sum += grad_row * gaussian_nll_grad_log_gamma(xv, x_hat_v, inv_var);
    }
    if (row_blocks == 1) {
      p.grad_log_gamma[j] = from_acc<scalar_t>(column_sum);
    } else {
      partial[item] = column_sum;
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) finish_columns_kernel(const acc_t<scalar_t>* partial, int64_t row_blocks,
                                                                  int64_t features, scalar_t* out) {
  using acc = acc_t<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < features; j += stride) {
    acc total = 0;
    for (int64_t block = 0; block < row_blocks; ++block) total += partial[block * features + j];
    out[j] = from_acc<scalar_t>(total);
  }
}

// Full log_gamma: both gradients are elementwise.
template <typename scalar_t, int N>
__global__ void __launch_bounds__(kThreads) nll_backward_full_kernel(GaussianNllBackwardParams<scalar_t> p) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t, N>;
  const int64_t packs = p.batch * p.features / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < packs; v += stride) {
    const int64_t i = v * N;
    const acc grad_row = to_acc<acc>(p.grad[i / p.features]);
    const P xp = *reinterpret_cast<const P*>(p.x + i);
    const P x_hat_p = *reinterpret_cast<const P*>(p.x_hat + i);
    const P log_gamma_p = *reinterpret_cast<const P*>(p.log_gamma + i);
    P grad_x_hat, grad_log_gamma;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const acc inv_var = inverse_variance(to_acc<acc>(log_gamma_p.v[k]));
      const acc xv = to_acc<acc>(xp.v[k]);
      const acc x_hat_v = to_acc<acc>(x_hat_p.v[k]);
      grad_x_hat.v[k] = from_acc<scalar_t>(grad_row * gaussian_nll_grad_x_hat(xv, x_hat_v, inv_var));
      grad_log_gamma.v[k] = from_acc<scalar_t>(grad_row * gaussian_nll_grad_log_gamma(xv, x_hat_v, inv_var));
    }
    *reinterpret_cast<P*>(p.grad_x_hat + i) = grad_x_hat;
    *reinterpret_cast<P*>(p.grad_log_gamma + i) = grad_log_gamma;
  }
}

// True when x, x_hat (and the other pointers given) allow packs of N along rows of `features`.
template <typename scalar_t>
bool packs_fit(int64_t features, std::initializer_list<const void*> pointers) {
  constexpr int N = kVecWidth<scalar_t>;
  if (features % N != 0) return false;
  for (const void* pointer : pointers) {
    if (!aligned_to(pointer, N * static_cast<int64_t>(sizeof(scalar_t)))) return false;
  }
  return true;
}

template <typename scalar_t, LogGammaLayout layout>
void launch_forward(const GaussianNllParams<scalar_t>& p, cudaStream_t stream) {
  const bool vectorised = kPerRow<layout> ? packs_fit<scalar_t>(p.features, {p.x, p.x_hat})
                                          : packs_fit<scalar_t>(p.features, {p.x, p.x_hat, p.log_gamma});
  run_row_sums<acc_t<scalar_t>>(p.batch, p.features,
                                NllTerm<scalar_t, layout>{p.x, p.x_hat, p.log_gamma, p.features, vectorised},
                                NllDone<scalar_t, layout>{p.log_gamma, p.per_sample, p.features}, p.workspace,
                                stream);
}

template <typename scalar_t, LogGammaLayout layout>
void launch_backward_per_row(const GaussianNllBackwardParams<scalar_t>& p, cudaStream_t stream) {
  using acc = acc_t<scalar_t>;
  // workspace: [the row sums' partials][row_values: batch] (row_values only for a scalar log_gamma)
  char* workspace = static_cast<char*>(p.workspace);
  const size_t partial_bytes = row_sums_workspace_bytes<acc>(p.batch, p.features);
  acc* row_values = reinterpret_cast<acc*>(workspace + partial_bytes);
  const bool vectorised = packs_fit<scalar_t>(p.features, {p.x, p.x_hat, p.grad_x_hat});
  run_row_sums<acc>(p.batch, p.features, NllBackwardTerm<scalar_t, layout>{p, vectorised},
                    NllBackwardDone<scalar_t, layout>{p.grad, p.grad_log_gamma, row_values, p.features}, workspace,
                    stream);
  if constexpr (layout == LogGammaLayout::kScalar) {
    launch_kernel(sum_rows_kernel<scalar_t>, 1, kThreads, 0, stream, row_values, p.batch, p.grad_log_gamma);
  }
}

}  // namespace

template <typename scalar_t>
size_t gaussian_nll_workspace_bytes(const GaussianNllParams<scalar_t>& p) {
  return row_sums_workspace_bytes<acc_t<scalar_t>>(p.batch, p.features);
}

template <typename scalar_t>
void launch_gaussian_nll(const GaussianNllParams<scalar_t>& p, cudaStream_t stream) {
  switch (p.layout) {
    case LogGammaLayout::kScalar:
      launch_forward<scalar_t, LogGammaLayout::kScalar>(p, stream);
      break;
    case LogGammaLayout::kPerSample:
      launch_forward<scalar_t, LogGammaLayout::kPerSample>(p, stream);
      break;
    case LogGammaLayout::kPerFeature:
      launch_forward<scalar_t, LogGammaLayout::kPerFeature>(p, stream);
      break;
    case LogGammaLayout::kFull:
      launch_forward<scalar_t, LogGammaLayout::kFull>(p, stream);
      break;
  }
}

template <typename scalar_t>
size_t gaussian_nll_backward_workspace_bytes(const GaussianNllBackwardParams<scalar_t>& p) {
  using acc = acc_t<scalar_t>;
  switch (p.layout) {
    case LogGammaLayout::kScalar:
      return row_sums_workspace_bytes<acc>(p.batch, p.features) + static_cast<size_t>(p.batch) * sizeof(acc);
    case LogGammaLayout::kPerSample:
      return row_sums_workspace_bytes<acc>(p.batch, p.features);
    case LogGammaLayout::kPerFeature: {
      const int64_t row_blocks = (p.batch + kNllRowBlock - 1) / kNllRowBlock;
      return row_blocks > 1 ? static_cast<size_t>(row_blocks * p.features) * sizeof(acc) : 0;
    }
    case LogGammaLayout::kFull:
      return 0;
  }
  return 0;
}

template <typename scalar_t>
void launch_gaussian_nll_backward(const GaussianNllBackwardParams<scalar_t>& p, cudaStream_t stream) {
  using acc = acc_t<scalar_t>;
  constexpr int N = kVecWidth<scalar_t>;
  switch (p.layout) {
    case LogGammaLayout::kScalar:
      launch_backward_per_row<scalar_t, LogGammaLayout::kScalar>(p, stream);
      break;
    case LogGammaLayout::kPerSample:
      launch_backward_per_row<scalar_t, LogGammaLayout::kPerSample>(p, stream);
      break;
    case LogGammaLayout::kPerFeature: {
      const int64_t row_blocks = (p.batch + kNllRowBlock - 1) / kNllRowBlock;
      acc* partial = static_cast<acc*>(p.workspace);
      launch_kernel(nll_backward_per_feature_kernel<scalar_t>, grid_for(row_blocks * p.features), kThreads, 0, stream,
                    p, partial);
      if (row_blocks > 1) {
        launch_kernel(finish_columns_kernel<scalar_t>, grid_for(p.features), kThreads, 0, stream, partial, row_blocks,
                      p.features, p.grad_log_gamma);
      }
      break;
    }
    case LogGammaLayout::kFull: {
      const int64_t numel = p.batch * p.features;
      if (packs_fit<scalar_t>(p.features, {p.x, p.x_hat, p.log_gamma, p.grad_x_hat, p.grad_log_gamma})) {
        launch_kernel(nll_backward_full_kernel<scalar_t, N>, grid_for(numel / N), kThreads, 0, stream, p);
      } else {
        launch_kernel(nll_backward_full_kernel<scalar_t, 1>, grid_for(numel), kThreads, 0, stream, p);
      }
      break;
    }
  }
}

#define VAEFAST_INSTANTIATE(scalar_t)                                                                          \
  template size_t gaussian_nll_workspace_bytes<scalar_t>(const GaussianNllParams<scalar_t>&);                  \
  template void launch_gaussian_nll<scalar_t>(const GaussianNllParams<scalar_t>&, cudaStream_t);               \
  template size_t gaussian_nll_backward_workspace_bytes<scalar_t>(const GaussianNllBackwardParams<scalar_t>&); \
  template void launch_gaussian_nll_backward<scalar_t>(const GaussianNllBackwardParams<scalar_t>&, cudaStream_t);
VAEFAST_FOR_EACH_CUDA_DTYPE(VAEFAST_INSTANTIATE)
#undef VAEFAST_INSTANTIATE

}  // namespace cuda
}  // namespace vaefast
