// Helpers for the torch-facing glue of every op: argument checks whose messages name the argument, the
// [batch, features] view that "per sample" means, and the shape of a draw. The Python wrappers
// (vaefast/ops) validate first with the same wording; these checks guard what the kernels rely on, so a
// direct torch.ops.vaefast call with bad arguments raises instead of reading out of bounds.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace vaefast {
namespace ops {

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name,
              " must be a floating-point tensor (float16, bfloat16, float32 or float64); got ",
              t.scalar_type());
}

// Same device, dtype and shape as a reference argument.
inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device(), "; move both to one device");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but ",
              ref_name, " has dtype ", ref.scalar_type());
  TORCH_CHECK(t.sizes() == ref.sizes(), name, " must have the shape of ", ref_name, " ", ref.sizes(),
              "; got ", t.sizes());
}

inline void check_min_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  TORCH_CHECK(t.dim() >= rank, name, " must have at least ", rank, " dimension(s) (", layout, "); got shape ",
              t.sizes());
}

// True on the devices this build has kernels for: the CPU, and CUDA devices in a CUDA build.
inline bool has_kernel(const at::Tensor& t) {
#ifdef VAEFAST_WITH_CUDA
  if (t.is_cuda()) return true;
#endif
  return t.device().is_cpu();
}

// "Per sample" = summed over every dimension but the first: a [B, ...] tensor viewed as [B, features].
struct BatchView {
  int64_t batch;
  int64_t features;
};

inline BatchView batch_view(const at::Tensor& t) {
  const int64_t batch = t.size(0);
  int64_t features = 1;
  for (int64_t d = 1; d < t.dim(); ++d) features *= t.size(d);
  return {batch, features};
}

// The shape of z drawn from mu: mu's, with num_samples first when it is given (k draws for importance-weighted
// bounds).
inline std::vector<int64_t> sample_shape(const at::Tensor& mu, std::optional<int64_t> num_samples) {
  std::vector<int64_t> shape(mu.sizes().begin(), mu.sizes().end());
  if (num_samples.has_value()) {
    TORCH_CHECK(*num_samples >= 1, "num_samples must be >= 1; got ", *num_samples);
    shape.insert(shape.begin(), *num_samples);
  }
  return shape;
}

}  // namespace ops
}  // namespace vaefast
