// torch's element types as the CUDA launchers take them: c10::Half and c10::BFloat16 have the bit layout,
// size and alignment of __half and __nv_bfloat16 (see cuda/launchers.h). Torch-light (c10's header-only
// types), so the CUDA emulator's tests (csrc/tests/cuda_emulator) share it with the CUDA glue.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace vaefast {
namespace ops {

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

}  // namespace ops
}  // namespace vaefast
