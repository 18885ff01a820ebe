// CUDA kernels of vaefast::gaussian_kl. Forward: one read of mu and logvar (8 bytes per float32 element),
// per-sample sums by warp per (row, chunk) (cuda_common.cuh; the terms in gaussian_kl_cuda.cuh); backward:
// one read of mu and logvar and one write of each gradient (16 bytes per float32 element). Per-element
// math: common/elementwise_math.h.
#include "cuda_common.cuh"
#include "gaussian_kl_cuda.cuh"
#include "launchers.h"

namespace vaefast {
namespace cuda {
namespace {

template <typename scalar_t>
struct KlTerm {
  const scalar_t* mu;
  const scalar_t* logvar;
  int64_t features;
  bool vectorised;

  __device__ acc_t<scalar_t> operator()(int64_t row, int64_t begin, int64_t end, int lane) const {
    return kl_lane_sum(mu, logvar, features, vectorised, row, begin, end, lane,
                       [](int64_t, const auto&, const auto&) {});
  }
};

// grad_mu = grad[row] * mu, grad_logvar = grad[row] * 0.5 * expm1(logvar); packs of N never straddle rows
// (features % N == 0 on this path).
template <typename scalar_t, int N>
__global__ void __launch_bounds__(kThreads) gaussian_kl_backward_kernel(GaussianKlBackwardParams<scalar_t> p) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t, N>;
  const int64_t packs = p.batch * p.features / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < packs; v += stride) {
    const int64_t i = v * N;
    const acc grad = to_acc<acc>(p.grad[i / p.features]);
    const P m = *reinterpret_cast<const P*>(p.mu + i);
    const P l = *reinterpret_cast<const P*>(p.logvar + i);
    P grad_mu, grad_logvar;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      grad_mu.v[k] = from_acc<scalar_t>(grad * to_acc<acc>(m.v[k]));
      grad_logvar.v[k] = from_acc<scalar_t>(grad * gaussian_kl_grad_logvar(to_acc<acc>(l.v[k])));
    }
    *reinterpret_cast<P*>(p.grad_mu + i) = grad_mu;
    *reinterpret_cast<P*>(p.grad_logvar + i) = grad_logvar;
  }
}

}  // namespace

template <typename scalar_t>
size_t gaussian_kl_workspace_bytes(const GaussianKlParams<scalar_t>& p) {
  return row_sums_workspace_bytes<acc_t<scalar_t>>(p.batch, p.features);
}

template <typename scalar_t>
void launch_gaussian_kl(const GaussianKlParams<scalar_t>& p, cudaStream_t stream) {
  constexpr int N = kVecWidth<scalar_t>;
  const int64_t pack_bytes = N * static_cast<int64_t>(sizeof(scalar_t));
  const bool vectorised = p.features % N == 0 && aligned_to(p.mu, pack_bytes) && aligned_to(p.logvar, pack_bytes);
  run_row_sums<acc_t<scalar_t>>(p.batch, p.features, KlTerm<scalar_t>{p.mu, p.logvar, p.features, vectorised},
                                StoreRow<scalar_t>{p.per_sample}, p.workspace, stream);
}

template <typename scalar_t>
void launch_gaussian_kl_backward(const GaussianKlBackwardParams<scalar_t>& p, cudaStream_t stream) {
  constexpr int N = kVecWidth<scalar_t>;
  const int64_t pack_bytes = N * static_cast<int64_t>(sizeof(scalar_t));
  const bool vectorised = p.features % N == 0 && aligned_to(p.mu, pack_bytes) && aligned_to(p.logvar, pack_bytes) &&
                          aligned_to(p.grad_mu, pack_bytes) && aligned_to(p.grad_logvar, pack_bytes);
  const int64_t numel = p.batch * p.features;
  if (vectorised) {
    launch_kernel(gaussian_kl_backward_kernel<scalar_t, N>, grid_for(numel / N), kThreads, 0, stream, p);
  } else {
    launch_kernel(gaussian_kl_backward_kernel<scalar_t, 1>, grid_for(numel), kThreads, 0, stream, p);
  }
}

#define VAEFAST_INSTANTIATE(scalar_t)                                                                       \
  template size_t gaussian_kl_workspace_bytes<scalar_t>(const GaussianKlParams<scalar_t>&);                 \
  template void launch_gaussian_kl<scalar_t>(const GaussianKlParams<scalar_t>&, cudaStream_t);              \
  template void launch_gaussian_kl_backward<scalar_t>(const GaussianKlBackwardParams<scalar_t>&, cudaStream_t);
VAEFAST_FOR_EACH_CUDA_DTYPE(VAEFAST_INSTANTIATE)
#undef VAEFAST_INSTANTIATE

}  // namespace cuda
}  // namespace vaefast
