// vaefast::reparameterize: z = mu + exp(logvar / 2) * eps, with eps drawn in-kernel from Philox or given.
#include "../cpu/reparameterize_cpu.h"
#include "op_common.h"
#include "philox_state.h"

#include <ATen/Dispatch.h>

#ifdef VAEFAST_WITH_CUDA
#include "cuda_glue.h"
#endif

namespace vaefast {
namespace ops {
namespace {

void check_mu_logvar(const at::Tensor& mu, const at::Tensor& logvar) {
  check_floating(mu, "mu");
  check_like(logvar, "logvar", mu, "mu");
}

// eps == nullopt: noise drawn from the Philox stream `philox`.
at::Tensor launch_forward(const at::Tensor& mu, const at::Tensor& logvar, std::optional<int64_t> num_samples,
                          const std::optional<at::Tensor>& eps, const PhiloxState& philox) {
  TORCH_CHECK(has_kernel(mu), "vaefast::reparameterize: no kernel for device ", mu.device());
  at::Tensor z = at::empty(sample_shape(mu, num_samples), mu.options());
  if (z.numel() == 0) return z;
  const at::Tensor mu_c = mu.contiguous();
  const at::Tensor logvar_c = logvar.contiguous();
  const at::Tensor eps_c = eps.has_value() ? eps->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "vaefast::reparameterize", [&] {
    ReparameterizeParams<scalar_t> params;
    params.mu = mu_c.const_data_ptr<scalar_t>();
    params.logvar = logvar_c.const_data_ptr<scalar_t>();
    params.eps = eps_c.defined() ? eps_c.const_data_ptr<scalar_t>() : nullptr;
    params.z = z.mutable_data_ptr<scalar_t>();
    params.numel = mu.numel();
    params.num_samples = num_samples.value_or(1);
    params.philox = philox;
#ifdef VAEFAST_WITH_CUDA
    if (mu.is_cuda()) {
      run_on_cuda(mu, [&](cudaStream_t stream) { cuda::launch_reparameterize(as_cuda(params), stream); });
      return;
    }
#endif
    cpu::reparameterize_forward(params);
  });
  return z;
}

// Draws the stream from `generator` (or the default generator of mu's device): philox_state.h.
at::Tensor reparameterize(const at::Tensor& mu, const at::Tensor& logvar, std::optional<int64_t> num_samples,
                          std::optional<at::Generator> generator) {
  check_mu_logvar(mu, logvar);
  return launch_forward(mu, logvar, num_samples, std::nullopt, next_philox_state(mu, std::move(generator)));
}

// An explicit stream, for reproducing draws across devices and for tests.
at::Tensor reparameterize_philox(const at::Tensor& mu, const at::Tensor& logvar,
                                 std::optional<int64_t> num_samples, int64_t seed, int64_t offset) {
  check_mu_logvar(mu, logvar);
  PhiloxState philox;
  philox.seed = static_cast<uint64_t>(seed);
  philox.offset = static_cast<uint64_t>(offset);
  return launch_forward(mu, logvar, num_samples, std::nullopt, philox);
}

// eps: mu's shape, or [num_samples, *mu.shape].
at::Tensor reparameterize_with_eps(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& eps) {
  check_mu_logvar(mu, logvar);
  TORCH_CHECK(eps.device() == mu.device() && eps.scalar_type() == mu.scalar_type(),
              "eps must have mu's device and dtype (", mu.device(), ", ", mu.scalar_type(), "); got ",
              eps.device(), ", ", eps.scalar_type());
  std::optional<int64_t> num_samples;
  if (eps.dim() == mu.dim() + 1) num_samples = eps.size(0);
  TORCH_CHECK(eps.sizes() == at::IntArrayRef(sample_shape(mu, num_samples)),
              "eps must have the shape of mu ", mu.sizes(), " or [num_samples, *mu.shape]; got ", eps.sizes());
  return launch_forward(mu, logvar, num_samples, eps, PhiloxState{});
}

// grad_z, z: [num_samples, *mu.shape] or mu's shape -> grad_logvar shaped like mu.
at::Tensor reparameterize_backward(const at::Tensor& grad_z, const at::Tensor& z, const at::Tensor& mu) {
  check_floating(mu, "mu");
  check_like(grad_z, "grad_z", z, "z");
  TORCH_CHECK(z.device() == mu.device() && z.scalar_type() == mu.scalar_type(),
              "z must have mu's device and dtype");
  TORCH_CHECK(has_kernel(mu), "vaefast::reparameterize_backward: no kernel for device ", mu.device());
  const bool has_sample_dim = z.dim() == mu.dim() + 1;
  TORCH_CHECK((has_sample_dim ? z.sizes().slice(1) : z.sizes()) == mu.sizes(),
              "z must have the shape of mu ", mu.sizes(), " or [num_samples, *mu.shape]; got ", z.sizes());
  at::Tensor grad_logvar = at::empty_like(mu, at::MemoryFormat::Contiguous);
  if (mu.numel() == 0) return grad_logvar;
  const int64_t num_samples = has_sample_dim ? z.size(0) : 1;
  if (num_samples == 0) return grad_logvar.zero_();
  const at::Tensor grad_c = grad_z.contiguous();
  const at::Tensor z_c = z.contiguous();
  const at::Tensor mu_c = mu.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "vaefast::reparameterize_backward",
                                  [&] {
    ReparameterizeBackwardParams<scalar_t> params;
    params.grad_z = grad_c.const_data_ptr<scalar_t>();
    params.z = z_c.const_data_ptr<scalar_t>();
    params.mu = mu_c.const_data_ptr<scalar_t>();
    params.grad_logvar = grad_logvar.mutable_data_ptr<scalar_t>();
    params.numel = mu.numel();
    params.num_samples = num_samples;
#ifdef VAEFAST_WITH_CUDA
    if (mu.is_cuda()) {
      run_on_cuda(mu, [&](cudaStream_t stream) { cuda::launch_reparameterize_backward(as_cuda(params), stream); });
      return;
    }
#endif
    cpu::reparameterize_backward(params);
  });
  return grad_logvar;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vaefast, m) {
  // Draws fresh noise on every call: tagged so that torch.compile never merges or recomputes it.
  m.def("reparameterize(Tensor mu, Tensor logvar, int? num_samples=None, Generator? generator=None) -> Tensor",
        {at::Tag::nondeterministic_seeded});
  m.def("reparameterize_philox(Tensor mu, Tensor logvar, int? num_samples, int seed, int offset) -> Tensor");
  m.def("reparameterize_with_eps(Tensor mu, Tensor logvar, Tensor eps) -> Tensor");
  m.def("reparameterize_backward(Tensor grad_z, Tensor z, Tensor mu) -> Tensor");
}

TORCH_LIBRARY_IMPL(vaefast, CPU, m) {
  m.impl("reparameterize", &reparameterize);
  m.impl("reparameterize_philox", &reparameterize_philox);
  m.impl("reparameterize_with_eps", &reparameterize_with_eps);
  m.impl("reparameterize_backward", &reparameterize_backward);
}

#ifdef VAEFAST_WITH_CUDA
// The same functions: each branches on the device after the shared validation.
TORCH_LIBRARY_IMPL(vaefast, CUDA, m) {
  m.impl("reparameterize", &reparameterize);
  m.impl("reparameterize_philox", &reparameterize_philox);
  m.impl("reparameterize_with_eps", &reparameterize_with_eps);
  m.impl("reparameterize_backward", &reparameterize_backward);
}
#endif

}  // namespace ops
}  // namespace vaefast
