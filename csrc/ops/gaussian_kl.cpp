// vaefast::gaussian_kl: per-sample KL(N(mu, diag exp(logvar)) || N(0, I)) and its backward.
#include "../cpu/gaussian_kl_cpu.h"
#include "op_common.h"

#include <ATen/Dispatch.h>

#ifdef VAEFAST_WITH_CUDA
#include "cuda_glue.h"
#endif

namespace vaefast {
namespace ops {
namespace {

void check_kl_inputs(const at::Tensor& mu, const at::Tensor& logvar) {
  check_min_rank(mu, "mu", 1, "[B, ...]");
  check_floating(mu, "mu");
  check_like(logvar, "logvar", mu, "mu");
}

// [B, ...] x2 -> [B]
at::Tensor gaussian_kl_per_sample(const at::Tensor& mu, const at::Tensor& logvar) {
  check_kl_inputs(mu, logvar);
  TORCH_CHECK(has_kernel(mu), "vaefast::gaussian_kl: no kernel for device ", mu.device());
  const BatchView view = batch_view(mu);
  at::Tensor per_sample = at::zeros({view.batch}, mu.options());
  if (view.batch == 0 || view.features == 0) return per_sample;
  const at::Tensor mu_c = mu.contiguous();
  const at::Tensor logvar_c = logvar.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "vaefast::gaussian_kl", [&] {
    GaussianKlParams<scalar_t> params;
    params.mu = mu_c.const_data_ptr<scalar_t>();
    params.logvar = logvar_c.const_data_ptr<scalar_t>();
    params.per_sample = per_sample.mutable_data_ptr<scalar_t>();
    params.batch = view.batch;
    params.features = view.features;
#ifdef VAEFAST_WITH_CUDA
    if (mu.is_cuda()) {
      auto cuda_params = as_cuda(params);
      const Workspace workspace = cuda_workspace(cuda::gaussian_kl_workspace_bytes(cuda_params), mu);
      cuda_params.workspace = workspace.data();
      run_on_cuda(mu, [&](cudaStream_t stream) { cuda::launch_gaussian_kl(cuda_params, stream); });
      return;
    }
#endif
    cpu::gaussian_kl_forward(params);
  });
  return per_sample;
}

// [B, ...] x2 -> [B] ("none") or 0-dim ("sum", "mean")
at::Tensor gaussian_kl(const at::Tensor& mu, const at::Tensor& logvar, c10::string_view reduction) {
  const Reduction how = parse_reduction(reduction);
  return reduce_batch(gaussian_kl_per_sample(mu, logvar), how);
}

// grad [B] -> (grad_mu, grad_logvar), each shaped like mu
std::tuple<at::Tensor, at::Tensor> gaussian_kl_backward(const at::Tensor& grad, const at::Tensor& mu,
                                                        const at::Tensor& logvar) {
  check_kl_inputs(mu, logvar);
  TORCH_CHECK(has_kernel(mu), "vaefast::gaussian_kl_backward: no kernel for device ", mu.device());
  const BatchView view = batch_view(mu);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == view.batch, "grad must have shape [", view.batch,
              "] (one value per sample); got ", grad.sizes());
  at::Tensor grad_mu = at::empty_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor grad_logvar = at::empty_like(logvar, at::MemoryFormat::Contiguous);
  if (mu.numel() == 0) return {grad_mu, grad_logvar};
  const at::Tensor grad_c = grad.to(mu.scalar_type()).contiguous();
  const at::Tensor mu_c = mu.contiguous();
  const at::Tensor logvar_c = logvar.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "vaefast::gaussian_kl_backward", [&] {
    GaussianKlBackwardParams<scalar_t> params;
    params.grad = grad_c.const_data_ptr<scalar_t>();
    params.mu = mu_c.const_data_ptr<scalar_t>();
    params.logvar = logvar_c.const_data_ptr<scalar_t>();
    params.grad_mu = grad_mu.mutable_data_ptr<scalar_t>();
    params.grad_logvar = grad_logvar.mutable_data_ptr<scalar_t>();
    params.batch = view.batch;
    params.features = view.features;
#ifdef VAEFAST_WITH_CUDA
    if (mu.is_cuda()) {
      run_on_cuda(mu, [&](cudaStream_t stream) { cuda::launch_gaussian_kl_backward(as_cuda(params), stream); });
      return;
    }
#endif
    cpu::gaussian_kl_backward(params);
  });
  return {grad_mu, grad_logvar};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vaefast, m) {
  m.def("gaussian_kl(Tensor mu, Tensor logvar, str reduction=\"none\") -> Tensor");
  m.def("gaussian_kl_backward(Tensor grad, Tensor mu, Tensor logvar) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vaefast, CPU, m) {
  m.impl("gaussian_kl", &gaussian_kl);
  m.impl("gaussian_kl_backward", &gaussian_kl_backward);
}

#ifdef VAEFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(vaefast, CUDA, m) {
  m.impl("gaussian_kl", &gaussian_kl);
  m.impl("gaussian_kl_backward", &gaussian_kl_backward);
}
#endif

}  // namespace ops
}  // namespace vaefast
