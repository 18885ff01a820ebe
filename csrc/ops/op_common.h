// Helpers for the torch-facing glue of every op: argument checks whose messages name the argument, the
// [batch, features] view that "per sample" means, and the shape of a draw. The Python wrappers
// (vaefast/ops) validate first with the same wording; these checks guard what the kernels rely on, so a
// direct torch.ops.vaefast call with bad arguments raises instead of reading out of bounds.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
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

// The batch reduction of a per-sample loss op (gaussian_kl, gaussian_nll, reparameterize_kl): its [B] values
// as they are, or their sum or mean as a 0-dim tensor. Done inside the op, so that the usual loss (a batch
// mean) costs no second autograd node: an aten mean and its MeanBackward took ~45 us of a CPU training step
// each, for 64 numbers.
enum class Reduction { kNone, kSum, kMean };

inline Reduction parse_reduction(c10::string_view reduction) {
  if (reduction == "none") return Reduction::kNone;
  if (reduction == "sum") return Reduction::kSum;
  TORCH_CHECK(reduction == "mean", "reduction must be one of 'none', 'sum', 'mean'; got '", reduction, "'");
  return Reduction::kMean;
}

// [B] per-sample values -> themselves ("none") or their 0-dim sum or mean, in their dtype. On the CPU: a
// compensated (Neumaier) sum in double, in batch order: within about a double ulp of the exact sum whatever B,
// then rounded to the dtype (the mean of no samples is NaN, as torch's). On CUDA: torch's sum or mean (one
// reduction kernel).
inline at::Tensor reduce_batch(const at::Tensor& per_sample, Reduction reduction) {
  if (reduction == Reduction::kNone) return per_sample;
  if (!per_sample.device().is_cpu()) return reduction == Reduction::kSum ? per_sample.sum() : per_sample.mean();
  const at::Tensor values = per_sample.contiguous();
  at::Tensor result = at::empty({}, per_sample.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "vaefast::reduce_batch", [&] {
    const scalar_t* data = values.const_data_ptr<scalar_t>();
    const int64_t batch = values.numel();
    double sum = 0;
    double compensation = 0;  // the low-order bits each addition rounded away
    for (int64_t b = 0; b < batch; ++b) {
      const double value = static_cast<double>(data[b]);
      const double next = sum + value;
      compensation += std::abs(sum) >= std::abs(value) ? (sum - next) + value : (value - next) + sum;
      sum = next;
    }
    // An inf or NaN value makes the sum inf or NaN for good, and the compensation NaN: the sum is the answer.
    const double total = std::isfinite(sum) ? sum + compensation : sum;
    const double reduced = reduction == Reduction::kSum ? total : total / static_cast<double>(batch);
    *result.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(reduced);
  });
  return result;
}

// d loss / d per-sample value from the gradient of a reduced op's output: itself ("none"); the 0-dim gradient
// broadcast over the batch ("sum"), divided by B first ("mean"): the values autograd's SumBackward and
// MeanBackward would hand on. A broadcast view; the backward ops read it as a [B] tensor.
inline at::Tensor per_sample_grad(const at::Tensor& grad, int64_t batch, Reduction reduction) {
  if (reduction == Reduction::kNone || !grad.defined()) return grad;
  const at::Tensor scaled = reduction == Reduction::kMean ? grad / batch : grad;
  return scaled.expand({batch});
}

}  // namespace ops
}  // namespace vaefast
