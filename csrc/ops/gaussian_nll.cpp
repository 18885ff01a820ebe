// vaefast::gaussian_nll: per-sample -log N(x | x_hat, gamma^2 I), gamma = exp(log_gamma), and its backward.
#include "../cpu/gaussian_nll_cpu.h"
#include "op_common.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <string>

#ifdef VAEFAST_WITH_CUDA
#include "cuda_glue.h"
#endif

namespace vaefast {
namespace ops {
namespace {

// log_gamma mapped onto the kernel's layout: the tensor the kernel reads, and how to bring its gradient
// back to log_gamma's own shape.
struct LogGammaPlan {
  LogGammaLayout layout;
  at::Tensor values;  // [1], [B], [features] or [B, features], contiguous
};

// True when a tensor of shape `shape` broadcasts to `target` without changing it (numpy rules).
bool broadcasts_to(at::IntArrayRef shape, at::IntArrayRef target) {
  if (shape.size() > target.size()) return false;
  const size_t lead = target.size() - shape.size();
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] != 1 && shape[d] != target[lead + d]) return false;
  }
  return true;
}

// "[B, 1, 1]" for a rank-3 x: the per-sample shape, for error messages.
std::string per_sample_shape(const at::Tensor& x) {
  std::string shape = "[" + std::to_string(x.size(0));
  for (int64_t d = 1; d < x.dim(); ++d) shape += ", 1";
  return shape + "]";
}

// log_gamma broadcasts against x by numpy's rules, nothing else: [D] is per feature even when D == B (a
// per-sample log_gamma is [B, 1, ...]), so the meaning of a shape never depends on the batch size.
LogGammaPlan plan_log_gamma(const at::Tensor& log_gamma, const at::Tensor& x) {
  if (!broadcasts_to(log_gamma.sizes(), x.sizes())) {
    // A [B] log_gamma is the one shape ported code gets wrong (it used to mean per sample): say how to write it.
    const bool per_sample_intent = log_gamma.dim() == 1 && x.dim() > 1 && log_gamma.size(0) == x.size(0);
    TORCH_CHECK(false, "log_gamma must broadcast to x ", x.sizes(), " (a scalar, per feature e.g. ",
                x.sizes().slice(1), ", per sample ", per_sample_shape(x), ", or x's shape); got ", log_gamma.sizes(),
                per_sample_intent ? "; for one value per sample write log_gamma.reshape(" + per_sample_shape(x) +
                                        ") (a [D] log_gamma is per feature)"
                                  : "");
  }
  // Left-pad to x's rank; a leading size of 1 means the same values for every sample.
  std::vector<int64_t> padded(x.dim() - log_gamma.dim(), 1);
  padded.insert(padded.end(), log_gamma.sizes().begin(), log_gamma.sizes().end());
  const bool constant_per_sample = std::all_of(padded.begin() + 1, padded.end(), [](int64_t s) { return s == 1; });
  if (constant_per_sample) {
    return padded[0] == 1 ? LogGammaPlan{LogGammaLayout::kScalar, log_gamma.reshape({1}).contiguous()}
                          : LogGammaPlan{LogGammaLayout::kPerSample, log_gamma.reshape({x.size(0)}).contiguous()};
  }
  const at::Tensor aligned = log_gamma.reshape(padded);
  if (padded[0] == 1) {
    return {LogGammaLayout::kPerFeature, aligned.select(0, 0).expand(x.sizes().slice(1)).contiguous().reshape(-1)};
  }
  return {LogGammaLayout::kFull, aligned.expand(x.sizes()).contiguous()};
}

void check_nll_inputs(const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& log_gamma) {
  check_min_rank(x, "x", 1, "[B, ...]");
  check_floating(x, "x");
  check_like(x_hat, "x_hat", x, "x");
  TORCH_CHECK(log_gamma.device() == x.device() && log_gamma.scalar_type() == x.scalar_type(),
              "log_gamma must have x's device and dtype (", x.device(), ", ", x.scalar_type(), "); got ",
              log_gamma.device(), ", ", log_gamma.scalar_type());
  TORCH_CHECK(has_kernel(x), "vaefast::gaussian_nll: no kernel for device ", x.device());
}

// x, x_hat [B, ...]; log_gamma broadcastable to x -> [B]
at::Tensor gaussian_nll_per_sample(const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& log_gamma) {
  check_nll_inputs(x, x_hat, log_gamma);
  const LogGammaPlan plan = plan_log_gamma(log_gamma, x);
  const BatchView view = batch_view(x);
  at::Tensor per_sample = at::zeros({view.batch}, x.options());
  if (view.batch == 0 || view.features == 0) return per_sample;
  const at::Tensor x_c = x.contiguous();
  const at::Tensor x_hat_c = x_hat.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vaefast::gaussian_nll", [&] {
    GaussianNllParams<scalar_t> params;
    params.x = x_c.const_data_ptr<scalar_t>();
    params.x_hat = x_hat_c.const_data_ptr<scalar_t>();
    params.log_gamma = plan.values.const_data_ptr<scalar_t>();
    params.per_sample = per_sample.mutable_data_ptr<scalar_t>();
    params.batch = view.batch;
    params.features = view.features;
    params.layout = plan.layout;
#ifdef VAEFAST_WITH_CUDA
    if (x.is_cuda()) {
      auto cuda_params = as_cuda(params);
      const Workspace workspace = cuda_workspace(cuda::gaussian_nll_workspace_bytes(cuda_params), x);
      cuda_params.workspace = workspace.data();
      run_on_cuda(x, [&](cudaStream_t stream) { cuda::launch_gaussian_nll(cuda_params, stream); });
      return;
    }
#endif
    cpu::gaussian_nll_forward(params);
  });
  return per_sample;
}

// -> [B] ("none") or 0-dim ("sum", "mean")
at::Tensor gaussian_nll(const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& log_gamma,
                        c10::string_view reduction) {
  const Reduction how = parse_reduction(reduction);
  return reduce_batch(gaussian_nll_per_sample(x, x_hat, log_gamma), how);
}

// grad [B] -> (grad_x_hat shaped like x, grad_log_gamma shaped like log_gamma). grad_x = -grad_x_hat.
std::tuple<at::Tensor, at::Tensor> gaussian_nll_backward(const at::Tensor& grad, const at::Tensor& x,
                                                         const at::Tensor& x_hat, const at::Tensor& log_gamma) {
  check_nll_inputs(x, x_hat, log_gamma);
  const LogGammaPlan plan = plan_log_gamma(log_gamma, x);
  const BatchView view = batch_view(x);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == view.batch, "grad must have shape [", view.batch,
              "] (one value per sample); got ", grad.sizes());
  at::Tensor grad_x_hat = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_values = at::zeros_like(plan.values);
  if (view.batch > 0 && view.features > 0) {
    const at::Tensor grad_c = grad.to(x.scalar_type()).contiguous();
    const at::Tensor x_c = x.contiguous();
    const at::Tensor x_hat_c = x_hat.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vaefast::gaussian_nll_backward",
                                    [&] {
      GaussianNllBackwardParams<scalar_t> params;
      params.grad = grad_c.const_data_ptr<scalar_t>();
      params.x = x_c.const_data_ptr<scalar_t>();
      params.x_hat = x_hat_c.const_data_ptr<scalar_t>();
      params.log_gamma = plan.values.const_data_ptr<scalar_t>();
      params.grad_x_hat = grad_x_hat.mutable_data_ptr<scalar_t>();
      params.grad_log_gamma = grad_values.mutable_data_ptr<scalar_t>();
      params.batch = view.batch;
      params.features = view.features;
      params.layout = plan.layout;
#ifdef VAEFAST_WITH_CUDA
      if (x.is_cuda()) {
        auto cuda_params = as_cuda(params);
        const Workspace workspace = cuda_workspace(cuda::gaussian_nll_backward_workspace_bytes(cuda_params), x);
        cuda_params.workspace = workspace.data();
        run_on_cuda(x, [&](cudaStream_t stream) { cuda::launch_gaussian_nll_backward(cuda_params, stream); });
        return;
      }
#endif
      cpu::gaussian_nll_backward(params);
    });
  }
  at::Tensor grad_log_gamma;
  switch (plan.layout) {
    case LogGammaLayout::kScalar:
    case LogGammaLayout::kPerSample:
      grad_log_gamma = grad_values.reshape(log_gamma.sizes());
      break;
    case LogGammaLayout::kPerFeature: {
      std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
      shape[0] = 1;
      grad_log_gamma = grad_values.reshape(shape).sum_to_size(log_gamma.sizes()).contiguous();
      break;
    }
    case LogGammaLayout::kFull:
      grad_log_gamma = grad_values.sum_to_size(log_gamma.sizes()).contiguous();
      break;
  }
  return {grad_x_hat, grad_log_gamma};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vaefast, m) {
  m.def("gaussian_nll(Tensor x, Tensor x_hat, Tensor log_gamma, str reduction=\"none\") -> Tensor");
  m.def("gaussian_nll_backward(Tensor grad, Tensor x, Tensor x_hat, Tensor log_gamma) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vaefast, CPU, m) {
  m.impl("gaussian_nll", &gaussian_nll);
  m.impl("gaussian_nll_backward", &gaussian_nll_backward);
}

#ifdef VAEFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(vaefast, CUDA, m) {
  m.impl("gaussian_nll", &gaussian_nll);
  m.impl("gaussian_nll_backward", &gaussian_nll_backward);
}
#endif

}  // namespace ops
}  // namespace vaefast
