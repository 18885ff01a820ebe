// CUDA kernels of vaefast::reparameterize_kl, the fused VAE head. Forward: one warp per (row, chunk) item
// sums the per-sample KL with gaussian_kl's code (gaussian_kl_cuda.cuh: the same lanes, order and bits) and
// writes z for every sample from the same loads, the noise drawn in registers in reparameterize's Philox
// layout (the same bits as its kernel for the same generator state): 12 bytes per float32 element with one
// sample, against the two ops' 20. Backward: both gradients in one elementwise pass, 24 bytes against the
// two ops' 56 (their backwards, then autograd's sums). Per-element math: common/elementwise_math.h.
#include <type_traits>

#include "../common/philox.h"
#include "cuda_common.cuh"
#include "gaussian_kl_cuda.cuh"
#include "launchers.h"

namespace vaefast {
namespace cuda {
namespace {

// The row-sum term of the forward: gaussian_kl's lane sum, whose hook writes z[s] for every pack it loads.
// A vectorised pack of N = kVecWidth elements starts at a multiple of N in every sample (features % N == 0),
// so its noise is whole Philox blocks (float, half, bfloat16) or one Box-Muller pair (double); on the
// scalar path each element computes its own pair (about three times reparameterize's noise work there).
template <typename scalar_t>
struct HeadTerm {
  ReparameterizeKlParams<scalar_t> p;
  bool vectorised;  // gaussian_kl's condition, so that the KL takes its path
  bool z_aligned;   // z takes Pack stores (always: z is a fresh allocation)

  __device__ acc_t<scalar_t> operator()(int64_t row, int64_t begin, int64_t end, int lane) const {
    using acc = acc_t<scalar_t>;
    uint64_t seed = 0, offset = 0;
    philox_seed_offset(p.philox, &seed, &offset);
    const int64_t numel = p.batch * p.features;
    const auto write_z = [&](int64_t i, const auto& mu, const auto& logvar) {
      constexpr int N = std::decay_t<decltype(mu)>::size;
      for (int64_t s = 0; s < p.num_samples; ++s) {
        const int64_t t = s * numel + i;
        acc eps[N];
        normals_at<acc, N>(seed, offset, static_cast<uint64_t>(t), eps);
        Pack<scalar_t, N> z;
#pragma unroll
        for (int k = 0; k < N; ++k) {
          z.v[k] = from_acc<scalar_t>(reparameterize_value(to_acc<acc>(mu.v[k]), to_acc<acc>(logvar.v[k]), eps[k]));
        }
        if (z_aligned) {
          *reinterpret_cast<Pack<scalar_t, N>*>(p.z + t) = z;
        } else {
#pragma unroll
          for (int k = 0; k < N; ++k) p.z[t + k] = z.v[k];
        }
      }
    };
    return kl_lane_sum(p.mu, p.logvar, p.features, vectorised, row, begin, end, lane, write_z);
  }
};

// grad_mu = sum_s grad_z + grad_kl[row] * mu, grad_logvar = sum_s 0.5 grad_z (z - mu) + grad_kl[row] * 0.5
// expm1(logvar); packs of N never straddle rows or samples (features % N == 0 on this path).
template <typename scalar_t, int N>
__global__ void __launch_bounds__(kThreads) reparameterize_kl_backward_kernel(
    ReparameterizeKlBackwardParams<scalar_t> p) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t, N>;
  const int64_t numel = p.batch * p.features;
  const int64_t packs = numel / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < packs; v += stride) {
    const int64_t i = v * N;
    const acc grad_kl = to_acc<acc>(p.grad_kl[i / p.features]);
    const P m = *reinterpret_cast<const P*>(p.mu + i);
    const P l = *reinterpret_cast<const P*>(p.logvar + i);
    acc grad_mu[N], grad_logvar[N];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      grad_mu[k] = grad_kl * to_acc<acc>(m.v[k]);
      grad_logvar[k] = grad_kl * gaussian_kl_grad_logvar(to_acc<acc>(l.v[k]));
    }
    for (int64_t s = 0; s < p.num_samples; ++s) {
      const P grad_z = *reinterpret_cast<const P*>(p.grad_z + s * numel + i);
      const P z = *reinterpret_cast<const P*>(p.z + s * numel + i);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const acc g = to_acc<acc>(grad_z.v[k]);
        grad_mu[k] += g;
        grad_logvar[k] += reparameterize_grad_logvar(g, to_acc<acc>(z.v[k]), to_acc<acc>(m.v[k]));
      }
    }
    P out_mu, out_logvar;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      out_mu.v[k] = from_acc<scalar_t>(grad_mu[k]);
      out_logvar.v[k] = from_acc<scalar_t>(grad_logvar[k]);
    }
    *reinterpret_cast<P*>(p.grad_mu + i) = out_mu;
    *reinterpret_cast<P*>(p.grad_logvar + i) = out_logvar;
  }
}

}  // namespace

template <typename scalar_t>
size_t reparameterize_kl_workspace_bytes(const ReparameterizeKlParams<scalar_t>& p) {
  return row_sums_workspace_bytes<acc_t<scalar_t>>(p.batch, p.features);
}

template <typename scalar_t>
void launch_reparameterize_kl(const ReparameterizeKlParams<scalar_t>& p, cudaStream_t stream) {
  constexpr int N = kVecWidth<scalar_t>;
  const int64_t pack_bytes = N * static_cast<int64_t>(sizeof(scalar_t));
  const bool vectorised = p.features % N == 0 && aligned_to(p.mu, pack_bytes) && aligned_to(p.logvar, pack_bytes);
  run_row_sums<acc_t<scalar_t>>(p.batch, p.features, HeadTerm<scalar_t>{p, vectorised, aligned_to(p.z, pack_bytes)},
                                StoreRow<scalar_t>{p.per_sample}, p.workspace, stream);
}

template <typename scalar_t>
void launch_reparameterize_kl_backward(const ReparameterizeKlBackwardParams<scalar_t>& p, cudaStream_t stream) {
  constexpr int N = kVecWidth<scalar_t>;
  const int64_t pack_bytes = N * static_cast<int64_t>(sizeof(scalar_t));
  const bool vectorised = p.features % N == 0 && aligned_to(p.grad_z, pack_bytes) && aligned_to(p.z, pack_bytes) &&
                          aligned_to(p.mu, pack_bytes) && aligned_to(p.logvar, pack_bytes) &&
                          aligned_to(p.grad_mu, pack_bytes) && aligned_to(p.grad_logvar, pack_bytes);
  const int64_t numel = p.batch * p.features;
  if (vectorised) {
    launch_kernel(reparameterize_kl_backward_kernel<scalar_t, N>, grid_for(numel / N), kThreads, 0, stream, p);
  } else {
    launch_kernel(reparameterize_kl_backward_kernel<scalar_t, 1>, grid_for(numel), kThreads, 0, stream, p);
  }
}

#define VAEFAST_INSTANTIATE(scalar_t)                                                                           \
  template size_t reparameterize_kl_workspace_bytes<scalar_t>(const ReparameterizeKlParams<scalar_t>&);         \
  template void launch_reparameterize_kl<scalar_t>(const ReparameterizeKlParams<scalar_t>&, cudaStream_t);      \
  template void launch_reparameterize_kl_backward<scalar_t>(const ReparameterizeKlBackwardParams<scalar_t>&,    \
                                                            cudaStream_t);
VAEFAST_FOR_EACH_CUDA_DTYPE(VAEFAST_INSTANTIATE)
#undef VAEFAST_INSTANTIATE

}  // namespace cuda
}  // namespace vaefast
