// Host-side entry points of vaefast's CUDA kernels: one launcher per op and direction, taking the op's
// plain params struct (common/params.h) and the stream to launch on. Torch-free: the .cu files that define
// these include only CUDA's headers and csrc/common, so nvcc compiles them on machines whose torch wheel
// has no CUDA headers; the torch-facing glue (csrc/ops/*.cpp, under VAEFAST_WITH_CUDA) includes this header
// and passes at::cuda::getCurrentCUDAStream().
//
// Contract for callers:
// - Every pointer is device memory of the current device; every tensor is contiguous (the glue makes it so).
// - scalar_t is float, double, __half or __nv_bfloat16 (explicitly instantiated for those four). The glue
//   dispatches on c10::Half / c10::BFloat16 and passes their data pointers reinterpret_cast to __half* /
//   __nv_bfloat16*: the types have the same size, alignment and bit layout (IEEE binary16; bfloat16 as the
//   top half of a float32).
// - Launchers only enqueue work: no allocation, no host synchronisation, so they are safe under CUDA-graph
//   capture. Scratch memory comes from the caller in params.workspace, sized by the *_workspace_bytes
//   function of the op (0 means none is needed and workspace may be nullptr).
// - Empty inputs must not reach a launcher (the glue returns early); a launch error is left for the caller's
//   launch check (C10_CUDA_KERNEL_LAUNCH_CHECK()).
// - Results are deterministic: the same inputs on the same GPU give the same bits (fixed reduction orders,
//   no floating-point atomics).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>

#include "../common/params.h"

// X(float) X(double) X(__half) X(__nv_bfloat16): the dtypes every launcher is instantiated for.
#define VAEFAST_FOR_EACH_CUDA_DTYPE(X) X(float) X(double) X(__half) X(__nv_bfloat16)

namespace vaefast {
namespace cuda {

// z = mu + exp(logvar / 2) * eps; eps from params.eps or drawn in-kernel from Philox (params.philox: seed and
// offset, or the graph-safe seed_ptr/offset_ptr/offset_intragraph), element for element the CPU kernel's
// stream up to the rounding of log/sqrt/sincos.
template <typename scalar_t>
void launch_reparameterize(const ReparameterizeParams<scalar_t>& params, cudaStream_t stream);
template <typename scalar_t>
void launch_reparameterize_backward(const ReparameterizeBackwardParams<scalar_t>& params, cudaStream_t stream);

// The fused VAE head: z exactly as launch_reparameterize draws it from the same params.philox, per_sample
// exactly as launch_gaussian_kl sums it, from one read of mu and logvar; the backward writes both gradients.
template <typename scalar_t>
size_t reparameterize_kl_workspace_bytes(const ReparameterizeKlParams<scalar_t>& params);
template <typename scalar_t>
void launch_reparameterize_kl(const ReparameterizeKlParams<scalar_t>& params, cudaStream_t stream);
template <typename scalar_t>
void launch_reparameterize_kl_backward(const ReparameterizeKlBackwardParams<scalar_t>& params, cudaStream_t stream);

template <typename scalar_t>
size_t gaussian_kl_workspace_bytes(const GaussianKlParams<scalar_t>& params);
template <typename scalar_t>
void launch_gaussian_kl(const GaussianKlParams<scalar_t>& params, cudaStream_t stream);
template <typename scalar_t>
void launch_gaussian_kl_backward(const GaussianKlBackwardParams<scalar_t>& params, cudaStream_t stream);

template <typename scalar_t>
size_t gaussian_nll_workspace_bytes(const GaussianNllParams<scalar_t>& params);
template <typename scalar_t>
void launch_gaussian_nll(const GaussianNllParams<scalar_t>& params, cudaStream_t stream);
template <typename scalar_t>
size_t gaussian_nll_backward_workspace_bytes(const GaussianNllBackwardParams<scalar_t>& params);
template <typename scalar_t>
void launch_gaussian_nll_backward(const GaussianNllBackwardParams<scalar_t>& params, cudaStream_t stream);

// Kernel sums write params.out[0] (double) without host synchronisation; the backward reads *params.grad
// on the device. The backward launcher may call cudaFuncSetAttribute (opt-in shared memory above 48 KB).
template <typename scalar_t>
size_t kernel_sum_workspace_bytes(const KernelSumParams<scalar_t>& params);
template <typename scalar_t>
void launch_kernel_sum(const KernelSumParams<scalar_t>& params, cudaStream_t stream);
template <typename scalar_t>
void launch_kernel_sum_backward(const KernelSumBackwardParams<scalar_t>& params, cudaStream_t stream);

}  // namespace cuda
}  // namespace vaefast
