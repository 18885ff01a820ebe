// The torch side of the CUDA launchers, shared by the ops' CUDA branches (compiled only with
// VAEFAST_WITH_CUDA, i.e. in a CUDA build of the extension: the CPU torch wheel lacks these headers).
// It converts a params struct filled for torch's element types to CUDA's, runs a launcher under a device
// guard on the current stream and checks the launch, and hands out workspace from torch's caching allocator
// (graph-capture safe, no sync).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <type_traits>

#include "../cuda/launchers.h"
#include "cuda_scalar.h"

namespace vaefast {
namespace ops {

// A params struct filled once for torch's element type (what the CPU kernels take), as the CUDA launchers
// take it: the same struct template on the CUDA element type. The two instantiations differ only in the
// pointee type of their element pointers (and elements of the same bit layout), so the struct is copied byte
// for byte, every field at once: a field added to a params struct needs no edit here or in the glue.
template <template <typename> class Params, typename T>
Params<cuda_scalar_t<T>> as_cuda(const Params<T>& params) {
  using CudaParams = Params<cuda_scalar_t<T>>;
  static_assert(sizeof(T) == sizeof(cuda_scalar_t<T>) && alignof(T) == alignof(cuda_scalar_t<T>),
                "torch's and CUDA's element types must share one layout");
  static_assert(sizeof(Params<T>) == sizeof(CudaParams) && alignof(Params<T>) == alignof(CudaParams),
                "a params struct must have one layout for torch's and CUDA's element types");
  static_assert(std::is_trivially_copyable_v<Params<T>> && std::is_trivially_copyable_v<CudaParams>,
                "params structs hold plain pointers, sizes and scalars only");
  CudaParams converted;
  // (void*: the structs' default member initializers make GCC's -Wclass-memaccess call them non-trivial,
  // though they are trivially copyable, as asserted above.)
  std::memcpy(static_cast<void*>(&converted), &params, sizeof(CudaParams));
  return converted;
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
