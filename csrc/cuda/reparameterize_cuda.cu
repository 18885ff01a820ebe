// CUDA kernels of vaefast::reparameterize. Forward reads mu and logvar and writes z, with eps drawn in
// registers from Philox (8 bytes read + 4 written per float32 element when eps is drawn; no eps tensor ever
// exists); backward reads grad_z, z and mu and writes grad_logvar (12 + 4 bytes per float32 element).
// The noise follows common/philox.h's layout exactly, so CPU and CUDA draw the same eps for the same
// (seed, offset), up to the rounding of log/sqrt/sincos.
#include "../common/philox.h"
#include "cuda_common.cuh"
#include "launchers.h"

namespace vaefast {
namespace cuda {
namespace {

// Elements per thread on the vector path: whole Philox blocks (4 normals) and at least 16 bytes, i.e.
// 4 float (16 B), 4 double (32 B: two 16-byte accesses), 8 half/bfloat16 (16 B, two blocks).
template <typename scalar_t>
constexpr int kGroup = kVecWidth<scalar_t> > 4 ? kVecWidth<scalar_t> : 4;

// Vector path: numel % N == 0 (a group never straddles two samples) and every pointer N-element aligned.
template <typename scalar_t, int N, bool draw>
__global__ void __launch_bounds__(kThreads) reparameterize_kernel(ReparameterizeParams<scalar_t> p) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t, N>;
  static_assert(N % 4 == 0, "a group holds whole Philox blocks");
  uint64_t seed = 0, offset = 0;
  if (draw) philox_seed_offset(p.philox, &seed, &offset);
  const int64_t groups = p.numel * p.num_samples / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const int64_t t = g * N;
    const int64_t i = t % p.numel;
    const P mu = *reinterpret_cast<const P*>(p.mu + i);
    const P logvar = *reinterpret_cast<const P*>(p.logvar + i);
    acc eps[N];
    if (draw) {
#pragma unroll
      for (int b = 0; b < N / 4; ++b) {
        const Normal4<acc> normals = normal_block<acc>(seed, offset, static_cast<uint64_t>(t / 4 + b));
#pragma unroll
        for (int k = 0; k < 4; ++k) eps[4 * b + k] = normals.n[k];
      }
    } else {
      const P given = *reinterpret_cast<const P*>(p.eps + t);
#pragma unroll
      for (int k = 0; k < N; ++k) eps[k] = to_acc<acc>(given.v[k]);
    }
    P z;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      z.v[k] = from_acc<scalar_t>(reparameterize_value(to_acc<acc>(mu.v[k]), to_acc<acc>(logvar.v[k]), eps[k]));
    }
    *reinterpret_cast<P*>(p.z + t) = z;
  }
}

// Any size and alignment: one Philox block (4 consecutive flat elements) per thread, element by element.
template <typename scalar_t, bool draw>
__global__ void __launch_bounds__(kThreads) reparameterize_scalar_kernel(ReparameterizeParams<scalar_t> p) {
  using acc = acc_t<scalar_t>;
  uint64_t seed = 0, offset = 0;
  if (draw) philox_seed_offset(p.philox, &seed, &offset);
  const int64_t total = p.numel * p.num_samples;
  const int64_t blocks = (total + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks; b += stride) {
    Normal4<acc> normals{};
    if (draw) normals = normal_block<acc>(seed, offset, static_cast<uint64_t>(b));
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t t = 4 * b + k;
      if (t < total) {
        const int64_t i = t % p.numel;
        const acc eps = draw ? normals.n[k] : to_acc<acc>(p.eps[t]);
        p.z[t] = from_acc<scalar_t>(reparameterize_value(to_acc<acc>(p.mu[i]), to_acc<acc>(p.logvar[i]), eps));
      }
    }
  }
}

// grad_logvar[i] = sum_s 0.5 * grad_z[s, i] * (z[s, i] - mu[i]), samples added in order.
template <typename scalar_t, int N>
__global__ void __launch_bounds__(kThreads) reparameterize_backward_kernel(ReparameterizeBackwardParams<scalar_t> p) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t, N>;
  const int64_t packs = p.numel / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < packs; v += stride) {
    const int64_t i = v * N;
    const P mu = *reinterpret_cast<const P*>(p.mu + i);
    acc grad_logvar[N] = {};
    for (int64_t s = 0; s < p.num_samples; ++s) {
      const P grad_z = *reinterpret_cast<const P*>(p.grad_z + s * p.numel + i);
      const P z = *reinterpret_cast<const P*>(p.z + s * p.numel + i);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        grad_logvar[k] += reparameterize_grad_logvar(to_acc<acc>(grad_z.v[k]), to_acc<acc>(z.v[k]), to_acc<acc>(mu.v[k]));
      }
    }
    P out;
#pragma unroll
    for (int k = 0; k < N; ++k) out.v[k] = from_acc<scalar_t>(grad_logvar[k]);
    *reinterpret_cast<P*>(p.grad_logvar + i) = out;
  }
}

}  // namespace

template <typename scalar_t>
void launch_reparameterize(const ReparameterizeParams<scalar_t>& p, cudaStream_t stream) {
  constexpr int N = kGroup<scalar_t>;
  const int64_t pack_bytes = N * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t total = p.numel * p.num_samples;
  const bool draw = p.eps == nullptr;
  const bool vectorised = p.numel % N == 0 && aligned_to(p.mu, pack_bytes) && aligned_to(p.logvar, pack_bytes) &&
                          aligned_to(p.z, pack_bytes) && (draw || aligned_to(p.eps, pack_bytes));
  if (vectorised) {
    const unsigned int grid = grid_for(total / N);
    if (draw) {
      launch_kernel(reparameterize_kernel<scalar_t, N, true>, grid, kThreads, 0, stream, p);
    } else {
      launch_kernel(reparameterize_kernel<scalar_t, N, false>, grid, kThreads, 0, stream, p);
    }
  } else {
    const unsigned int grid = grid_for((total + 3) / 4);
    if (draw) {
      launch_kernel(reparameterize_scalar_kernel<scalar_t, true>, grid, kThreads, 0, stream, p);
    } else {
      launch_kernel(reparameterize_scalar_kernel<scalar_t, false>, grid, kThreads, 0, stream, p);
    }
  }
}

template <typename scalar_t>
void launch_reparameterize_backward(const ReparameterizeBackwardParams<scalar_t>& p, cudaStream_t stream) {
  constexpr int N = kVecWidth<scalar_t>;
  const int64_t pack_bytes = N * static_cast<int64_t>(sizeof(scalar_t));
  const bool vectorised = p.numel % N == 0 && aligned_to(p.grad_z, pack_bytes) && aligned_to(p.z, pack_bytes) &&
                          aligned_to(p.mu, pack_bytes) && aligned_to(p.grad_logvar, pack_bytes);
  if (vectorised) {
    launch_kernel(reparameterize_backward_kernel<scalar_t, N>, grid_for(p.numel / N), kThreads, 0, stream, p);
  } else {
    launch_kernel(reparameterize_backward_kernel<scalar_t, 1>, grid_for(p.numel), kThreads, 0, stream, p);
  }
}

#define VAEFAST_INSTANTIATE(scalar_t)                                                                      \
  template void launch_reparameterize<scalar_t>(const ReparameterizeParams<scalar_t>&, cudaStream_t); \
  template void launch_reparameterize_backward<scalar_t>(const ReparameterizeBackwardParams<scalar_t>&, cudaStream_t);
VAEFAST_FOR_EACH_CUDA_DTYPE(VAEFAST_INSTANTIATE)
#undef VAEFAST_INSTANTIATE

}  // namespace cuda
}  // namespace vaefast
