// The torch side of the CUDA launchers, shared by the ops' CUDA branches (compiled only with
// VAEFAST_WITH_CUDA, i.e. in a CUDA build of the extension: the CPU torch wheel lacks these headers).
// It maps torch's half types onto CUDA's, runs a launcher under a device guard on the current stream and
// checks the launch, and hands out workspace from torch's caching allocator (graph-capture safe, no sync).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../cuda/launchers.h"

namespace vaefast {
namespace ops {

// The CUDA type the launchers are instantiated for: c10::Half and c10::BFloat16 have the bit layout, size
// and alignment of __half and __nv_bfloat16 (see cuda/launchers.h), so their pointers are reinterpreted.
template <typename T>
struct CudaScalar {
  using type = T;
};
template <>
struct CudaScalar<c10::Half> {
  using type = __half;
};
template <>
struct CudaScalar<c10::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
using cuda_scalar_t = typename CudaScalar<T>::type;

template <typename T>
const cuda_scalar_t<T>* cuda_data(const at::Tensor& t) {
  return reinterpret_cast<const cuda_scalar_t<T>*>(t.const_data_ptr<T>());
}

template <typename T>
cuda_scalar_t<T>* cuda_mutable_data(const at::Tensor& t) {
  return reinterpret_cast<cuda_scalar_t<T>*>(t.mutable_data_ptr<T>());
}

// Scratch for a launcher on `like`'s device (nullptr when none is needed). The tensor must outlive the
// launch on the stream: the caching allocator keeps stream order, so holding it until the op returns is
// enough.
struct Workspace {
  at::Tensor buffer;
  void* data() const { return buffer.defined() ? buffer.data_ptr() : nullptr; }
};

inline Workspace cuda_workspace(size_t bytes, const at::Tensor& like) {
  if (bytes == 0) return {};
  return {at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte))};
}

// Runs launch(stream) for a tensor on a CUDA device: device guard, current stream, launch check.
template <typename Launch>
void run_on_cuda(const at::Tensor& on, const Launch& launch) {
  const c10::cuda::CUDAGuard guard(on.device());
  launch(c10::cuda::getCurrentCUDAStream(on.device().index()).stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ops
}  // namespace vaefast
