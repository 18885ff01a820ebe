// vaefast::reparameterize_kl, the fused VAE head: z = mu + exp(logvar / 2) * eps (reparameterize's noise for
// the same generator state) and the per-sample KL(N(mu, diag exp(logvar)) || N(0, I)) (gaussian_kl's sums)
// from one read of mu and logvar; its backward writes both gradients in one pass.
#include "../cpu/reparameterize_kl_cpu.h"
#include "op_common.h"
#include "philox_state.h"

#include <ATen/Dispatch.h>

#ifdef VAEFAST_WITH_CUDA
#include "cuda_glue.h"
#endif

namespace vaefast {
namespace ops {
namespace {

void check_head_inputs(const at::Tensor& mu, const at::Tensor& logvar) {
  check_min_rank(mu, "mu", 1, "[B, ...]");
  check_floating(mu, "mu");
  check_like(logvar, "logvar", mu, "mu");
}

// [B, ...] x2 -> (z [*mu.shape] or [num_samples, *mu.shape], per-sample KL [B])
std::tuple<at::Tensor, at::Tensor> reparameterize_kl_per_sample(const at::Tensor& mu, const at::Tensor& logvar,
                                                                std::optional<int64_t> num_samples,
                                                                std::optional<at::Generator> generator) {
  check_head_inputs(mu, logvar);
  TORCH_CHECK(has_kernel(mu), "vaefast::reparameterize_kl: no kernel for device ", mu.device());
  // One draw per call, as vaefast::reparameterize makes: the same generator state, the same stream.
  const PhiloxState philox = next_philox_state(mu, std::move(generator));
  at::Tensor z = at::empty(sample_shape(mu, num_samples), mu.options());
  const BatchView view = batch_view(mu);
  at::Tensor per_sample = at::empty({view.batch}, mu.options());
  if (z.numel() == 0) return {z, per_sample.zero_()};  // no features: a KL of zero per sample
  const at::Tensor mu_c = mu.contiguous();
  const at::Tensor logvar_c = logvar.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "vaefast::reparameterize_kl", [&] {
    ReparameterizeKlParams<scalar_t> params;
    params.mu = mu_c.const_data_ptr<scalar_t>();
    params.logvar = logvar_c.const_data_ptr<scalar_t>();
    params.z = z.mutable_data_ptr<scalar_t>();
    params.per_sample = per_sample.mutable_data_ptr<scalar_t>();
    params.batch = view.batch;
    params.features = view.features;
    params.num_samples = num_samples.value_or(1);
    params.philox = philox;
#ifdef VAEFAST_WITH_CUDA
    if (mu.is_cuda()) {
      auto cuda_params = as_cuda(params);
      const Workspace workspace = cuda_workspace(cuda::reparameterize_kl_workspace_bytes(cuda_params), mu);
      cuda_params.workspace = workspace.data();
      run_on_cuda(mu, [&](cudaStream_t stream) { cuda::launch_reparameterize_kl(cuda_params, stream); });
      return;
    }
#endif
    cpu::reparameterize_kl_forward(params);
  });
  return {z, per_sample};
}

// -> (z, KL [B] for "none", 0-dim for "sum" or "mean")
std::tuple<at::Tensor, at::Tensor> reparameterize_kl(const at::Tensor& mu, const at::Tensor& logvar,
                                                     std::optional<int64_t> num_samples,
                                                     std::optional<at::Generator> generator,
                                                     c10::string_view reduction) {
  const Reduction how = parse_reduction(reduction);
  auto [z, per_sample] = reparameterize_kl_per_sample(mu, logvar, num_samples, std::move(generator));
  return {z, reduce_batch(per_sample, how)};
}

// grad_z, z: mu's shape or [num_samples, *mu.shape]; grad_kl [B] -> (grad_mu, grad_logvar), shaped like mu.
// Both incoming gradients must be defined: when only z or only the KL is used, the autograd function calls
// reparameterize_backward or gaussian_kl_backward instead (csrc/ops/autograd.cpp).
std::tuple<at::Tensor, at::Tensor> reparameterize_kl_backward(const at::Tensor& grad_z, const at::Tensor& grad_kl,
                                                              const at::Tensor& z, const at::Tensor& mu,
                                                              const at::Tensor& logvar) {
  check_head_inputs(mu, logvar);
  TORCH_CHECK(grad_z.defined() && grad_kl.defined(),
              "vaefast::reparameterize_kl_backward needs both grad_z and grad_kl; with one of them, call "
              "reparameterize_backward or gaussian_kl_backward");
  check_like(grad_z, "grad_z", z, "z");
  TORCH_CHECK(z.device() == mu.device() && z.scalar_type() == mu.scalar_type(), "z must have mu's device and dtype (",
              mu.device(), ", ", mu.scalar_type(), "); got ", z.device(), ", ", z.scalar_type());
  TORCH_CHECK(has_kernel(mu), "vaefast::reparameterize_kl_backward: no kernel for device ", mu.device());
  const bool has_sample_dim = z.dim() == mu.dim() + 1;
  TORCH_CHECK((has_sample_dim ? z.sizes().slice(1) : z.sizes()) == mu.sizes(), "z must have the shape of mu ",
              mu.sizes(), " or [num_samples, *mu.shape]; got ", z.sizes());
  const BatchView view = batch_view(mu);
  TORCH_CHECK(grad_kl.dim() == 1 && grad_kl.size(0) == view.batch, "grad_kl must have shape [", view.batch,
              "] (one value per sample); got ", grad_kl.sizes());
  TORCH_CHECK(grad_kl.device() == mu.device(), "grad_kl is on ", grad_kl.device(), " but mu is on ", mu.device(),
              "; move both to one device");
  at::Tensor grad_mu = at::empty_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor grad_logvar = at::empty_like(logvar, at::MemoryFormat::Contiguous);
  if (mu.numel() == 0) return {grad_mu, grad_logvar};
  // With no sample (z [0, *mu.shape]) the sums over samples are empty: the KL's gradients alone.
  const int64_t num_samples = has_sample_dim ? z.size(0) : 1;
  const at::Tensor grad_z_c = grad_z.contiguous();
  const at::Tensor grad_kl_c = grad_kl.to(mu.scalar_type()).contiguous();
  const at::Tensor z_c = z.contiguous();
  const at::Tensor mu_c = mu.contiguous();
  const at::Tensor logvar_c = logvar.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "vaefast::reparameterize_kl_backward",
                                  [&] {
    ReparameterizeKlBackwardParams<scalar_t> params;
    params.grad_z = grad_z_c.const_data_ptr<scalar_t>();
    params.grad_kl = grad_kl_c.const_data_ptr<scalar_t>();
    params.z = z_c.const_data_ptr<scalar_t>();
    params.mu = mu_c.const_data_ptr<scalar_t>();
    params.logvar = logvar_c.const_data_ptr<scalar_t>();
    params.grad_mu = grad_mu.mutable_data_ptr<scalar_t>();
    params.grad_logvar = grad_logvar.mutable_data_ptr<scalar_t>();
    params.batch = view.batch;
    params.features = view.features;
    params.num_samples = num_samples;
#ifdef VAEFAST_WITH_CUDA
    if (mu.is_cuda()) {
      run_on_cuda(mu, [&](cudaStream_t stream) { cuda::launch_reparameterize_kl_backward(as_cuda(params), stream); });
      return;
    }
#endif
    cpu::reparameterize_kl_backward(params);
  });
  return {grad_mu, grad_logvar};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vaefast, m) {
  // Draws fresh noise on every call, like reparameterize: tagged so that torch.compile never merges or
  // recomputes it.
  m.def("reparameterize_kl(Tensor mu, Tensor logvar, int? num_samples=None, Generator? generator=None, "
        "str reduction=\"none\") -> (Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  m.def("reparameterize_kl_backward(Tensor grad_z, Tensor grad_kl, Tensor z, Tensor mu, Tensor logvar) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vaefast, CPU, m) {
  m.impl("reparameterize_kl", &reparameterize_kl);
  m.impl("reparameterize_kl_backward", &reparameterize_kl_backward);
}

#ifdef VAEFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(vaefast, CUDA, m) {
  m.impl("reparameterize_kl", &reparameterize_kl);
  m.impl("reparameterize_kl_backward", &reparameterize_kl_backward);
}
#endif

}  // namespace ops
}  // namespace vaefast
