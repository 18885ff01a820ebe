// The Autograd-key kernels of every differentiable op: what each op saves and which backward op it calls.
//
// Why in C++: a torch.library.register_autograd formula runs Python twice per op (setting up the context in
// the forward, the formula in the backward), about 40 us a call each way on a CPU core; at training sizes
// ([256, 64] latents) that is more than the kernels take, on CPU and on a GPU alike. Here the forward saves
// its tensors and the autograd engine calls the backward op without entering Python.
//
// Each forward redispatches below autograd to the device kernel (or, under torch.compile, to the fake
// kernels registered in vaefast/ops), so torch.compile and AOTAutograd trace through these as through
// torch's own functions. The backward ops are not differentiable again: a double backward through them
// (create_graph=True) is an error naming the op, not a gradient silently missing a term (once_differentiable).
#include "op_common.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace vaefast {
namespace ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed handle of vaefast::<name>, looked up once per signature.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// torch::autograd::set_history takes the node in the pointer type this torch holds autograd nodes in:
// std::shared_ptr in torch 2.11 (the GPU machines' torch), c10::intrusive_ptr in torch 2.13 and 2.14.
template <typename NodePtr, typename = void>
struct HoldsNodesIn : std::false_type {};
template <typename NodePtr>
struct HoldsNodesIn<NodePtr, std::void_t<decltype(torch::autograd::set_history(std::declval<at::Tensor&>(),
                                                                               std::declval<const NodePtr&>()))>>
    : std::true_type {};

// A new autograd node, in the pointer type set_history takes (only the matching branch is instantiated).
template <typename Node, typename... Args>
auto make_node(Args&&... args) {
  if constexpr (HoldsNodesIn<std::shared_ptr<torch::autograd::Node>>::value) {
    return std::shared_ptr<torch::autograd::Node>(std::make_shared<Node>(std::forward<Args>(args)...));
  } else {
    return c10::intrusive_ptr<torch::autograd::Node>(c10::make_intrusive<Node>(std::forward<Args>(args)...));
  }
}

// Runs a backward formula made of non-differentiable ops, like torch.autograd.function.once_differentiable
// but connected: under create_graph=True, when the incoming gradients or the saved inputs require grad, the
// results get a grad_fn that raises on a double backward, naming the op, and whose edges lead to those
// inputs, so that differentiating the results reaches it. (once_differentiable hangs its error node on
// detached copies and looks at the incoming gradients only: d/dmu of a KL gradient would come back as "not
// used in the graph", or zero with allow_unused.)
template <typename Formula>
variable_list once_differentiable(const char* op, AutogradContext* ctx, const variable_list& grads,
                                  Formula formula) {
  const bool create_graph = at::GradMode::is_enabled();
  variable_list outputs;
  {
    at::NoGradGuard no_grad;
    outputs = formula();
  }
  if (!create_graph) return outputs;
  variable_list depends_on;
  for (const variable_list& tensors : {grads, ctx->get_saved_variables()}) {
    for (const at::Tensor& t : tensors) {
      if (t.defined() && t.requires_grad()) depends_on.push_back(t);
    }
  }
  if (depends_on.empty()) return outputs;
  const auto error = make_node<torch::autograd::Error>(
      std::string(op) + ": double backward is not supported (its backward is not differentiable); compute "
      "this gradient without create_graph=True, or use VAEFAST_BACKEND=reference for higher-order gradients",
      torch::autograd::collect_next_edges(depends_on));
  for (at::Tensor& output : outputs) {
    // A shallow copy: an output may be an incoming gradient itself (d/dmu = g), whose history stays its own.
    if (output.defined()) output = output.tensor_data();
    torch::autograd::set_history(output, error);
  }
  return outputs;
}

bool needs(AutogradContext* ctx, size_t input) { return ctx->needs_input_grad(input); }

// The batch reduction a loss op's forward applied, kept for its backward (op_common.h: per_sample_grad).
void save_reduction(AutogradContext* ctx, c10::string_view reduction) {
  ctx->saved_data["reduction"] = static_cast<int64_t>(parse_reduction(reduction));
}

// The gradient per sample from the gradient of the op's (possibly reduced) output; input [B, ...] gives B.
at::Tensor grad_per_sample(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& input) {
  return per_sample_grad(grad, input.size(0), static_cast<Reduction>(ctx->saved_data["reduction"].toInt()));
}

// ---- reparameterize, reparameterize_philox, reparameterize_with_eps --------------------------------------
// Saved: z and mu (z - mu = std * eps is all the logvar gradient needs); d/dmu sums over a sample dimension.

using ReparameterizeBackward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);

std::tuple<at::Tensor, at::Tensor> reparameterize_grads(AutogradContext* ctx, const at::Tensor& grad) {
  static const auto backward_op = op_handle<ReparameterizeBackward>("vaefast::reparameterize_backward");
  const auto saved = ctx->get_saved_variables();
  const at::Tensor& z = saved[0];
  const at::Tensor& mu = saved[1];
  at::Tensor grad_mu;
  if (needs(ctx, 0)) grad_mu = z.dim() == mu.dim() + 1 ? grad.sum(0) : grad;
  at::Tensor grad_logvar;
  if (needs(ctx, 1)) grad_logvar = backward_op.call(grad, z, mu);
  return {grad_mu, grad_logvar};
}

struct Reparameterize : public torch::autograd::Function<Reparameterize> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                            std::optional<int64_t> num_samples, std::optional<at::Generator> generator) {
    static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, std::optional<int64_t>,
                                                std::optional<at::Generator>)>("vaefast::reparameterize");
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor z = op.call(mu, logvar, num_samples, std::move(generator));
    ctx->save_for_backward({z, mu});
    return z;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return once_differentiable("vaefast::reparameterize", ctx, grads, [&]() -> variable_list {
      auto [grad_mu, grad_logvar] = reparameterize_grads(ctx, grads[0]);
      return {grad_mu, grad_logvar, at::Tensor(), at::Tensor()};
    });
  }
};

struct ReparameterizePhilox : public torch::autograd::Function<ReparameterizePhilox> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                            std::optional<int64_t> num_samples, int64_t seed, int64_t offset) {
    static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, std::optional<int64_t>,
                                                int64_t, int64_t)>("vaefast::reparameterize_philox");
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor z = op.call(mu, logvar, num_samples, seed, offset);
    ctx->save_for_backward({z, mu});
    return z;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return once_differentiable("vaefast::reparameterize_philox", ctx, grads, [&]() -> variable_list {
      auto [grad_mu, grad_logvar] = reparameterize_grads(ctx, grads[0]);
      return {grad_mu, grad_logvar, at::Tensor(), at::Tensor(), at::Tensor()};
    });
  }
};

struct ReparameterizeWithEps : public torch::autograd::Function<ReparameterizeWithEps> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                            const at::Tensor& eps) {
    static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
        "vaefast::reparameterize_with_eps");
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor z = op.call(mu, logvar, eps);
    // logvar is kept only in the rare case that eps needs a gradient (d z / d eps = std).
    ctx->save_for_backward({z, mu, eps.requires_grad() ? logvar : at::Tensor()});
    return z;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return once_differentiable("vaefast::reparameterize_with_eps", ctx, grads, [&]() -> variable_list {
      auto [grad_mu, grad_logvar] = reparameterize_grads(ctx, grads[0]);
      at::Tensor grad_eps;
      if (needs(ctx, 2)) grad_eps = grads[0] * at::exp(0.5 * ctx->get_saved_variables()[2]);
      return {grad_mu, grad_logvar, grad_eps};
    });
  }
};

// ---- reparameterize_kl (the fused head) -------------------------------------------------------------------
// Saved: z, mu and logvar; z and mu first, as reparameterize saves them, so that reparameterize_grads serves
// the backward when only z is used. Gradients are not materialised: an unused output's gradient stays
// undefined and that output's half of the backward is skipped (only z used: reparameterize's backward; only
// the KL: gaussian_kl's), rather than run on a tensor of zeros.

using KlBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&);

struct ReparameterizeKl : public torch::autograd::Function<ReparameterizeKl> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                               std::optional<int64_t> num_samples, std::optional<at::Generator> generator,
                               c10::string_view reduction) {
    static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, std::optional<int64_t>, std::optional<at::Generator>,
        c10::string_view)>("vaefast::reparameterize_kl");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [z, kl] = op.call(mu, logvar, num_samples, std::move(generator), reduction);
    ctx->save_for_backward({z, mu, logvar});
    save_reduction(ctx, reduction);
    ctx->set_materialize_grads(false);
    return {z, kl};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op_handle<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
        "vaefast::reparameterize_kl_backward");
    static const auto kl_backward_op = op_handle<KlBackward>("vaefast::gaussian_kl_backward");
    return once_differentiable("vaefast::reparameterize_kl", ctx, grads, [&]() -> variable_list {
      const at::Tensor& grad_z = grads[0];
      const auto saved = ctx->get_saved_variables();
      const at::Tensor grad_kl = grad_per_sample(ctx, grads[1], saved[1]);
      at::Tensor grad_mu, grad_logvar;
      if (grad_z.defined() && grad_kl.defined()) {
        std::tie(grad_mu, grad_logvar) = backward_op.call(grad_z, grad_kl, saved[0], saved[1], saved[2]);
      } else if (grad_z.defined()) {
        std::tie(grad_mu, grad_logvar) = reparameterize_grads(ctx, grad_z);
      } else if (grad_kl.defined()) {
        std::tie(grad_mu, grad_logvar) = kl_backward_op.call(grad_kl, saved[1], saved[2]);
      }
      return {grad_mu, grad_logvar, at::Tensor(), at::Tensor(), at::Tensor()};
    });
  }
};

// ---- gaussian_kl ------------------------------------------------------------------------------------------

struct GaussianKl : public torch::autograd::Function<GaussianKl> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                            c10::string_view reduction) {
    static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>(
        "vaefast::gaussian_kl");
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({mu, logvar});
    save_reduction(ctx, reduction);
    return op.call(mu, logvar, reduction);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op_handle<KlBackward>("vaefast::gaussian_kl_backward");
    return once_differentiable("vaefast::gaussian_kl", ctx, grads, [&]() -> variable_list {
      const auto saved = ctx->get_saved_variables();
      auto [grad_mu, grad_logvar] = backward_op.call(grad_per_sample(ctx, grads[0], saved[0]), saved[0], saved[1]);
      return {grad_mu, grad_logvar, at::Tensor()};
    });
  }
};

// ---- gaussian_nll -----------------------------------------------------------------------------------------

struct GaussianNll : public torch::autograd::Function<GaussianNll> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& x_hat,
                            const at::Tensor& log_gamma, c10::string_view reduction) {
    static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                c10::string_view)>("vaefast::gaussian_nll");
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({x, x_hat, log_gamma});
    save_reduction(ctx, reduction);
    return op.call(x, x_hat, log_gamma, reduction);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op_handle<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>("vaefast::gaussian_nll_backward");
    return once_differentiable("vaefast::gaussian_nll", ctx, grads, [&]() -> variable_list {
      const auto saved = ctx->get_saved_variables();
      const at::Tensor grad = grad_per_sample(ctx, grads[0], saved[0]);
      auto [grad_x_hat, grad_log_gamma] = backward_op.call(grad, saved[0], saved[1], saved[2]);
      at::Tensor grad_x;
      if (needs(ctx, 0)) grad_x = -grad_x_hat;  // d/dx = -d/dx_hat, only when asked
      return {grad_x, grad_x_hat, grad_log_gamma, at::Tensor()};
    });
  }
};

// ---- kernel_sum_self, kernel_sum_cross (MMD) --------------------------------------------------------------
// When an input requires grad, the forward runs the *_with_grad op: the sum and d sum / d inputs from one
// pass over the pairs (the backward would otherwise recompute every pair statistic and kernel division), and
// saves those gradients; the backward scales them by the incoming gradient. The inputs are saved too, for
// once_differentiable's double-backward error only. Without grad, the plain sum (same bits).

at::Tensor scaled_grad(const at::Tensor& unit_grad, const at::Tensor& grad, const at::Tensor& input) {
  return (unit_grad * grad).to(input.scalar_type());
}

struct KernelSumSelf : public torch::autograd::Function<KernelSumSelf> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, c10::string_view kernel,
                            at::ArrayRef<double> scales, double bandwidth, bool exclude_diagonal) {
    static const auto op = op_handle<at::Tensor(const at::Tensor&, c10::string_view, at::ArrayRef<double>, double,
                                                bool)>("vaefast::kernel_sum_self");
    static const auto with_grad_op = op_handle<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, c10::string_view, at::ArrayRef<double>, double, bool)>("vaefast::kernel_sum_self_with_grad");
    at::AutoDispatchBelowADInplaceOrView below;
    if (!x.requires_grad()) return op.call(x, kernel, scales, bandwidth, exclude_diagonal);
    auto [total, unit_grad_x] = with_grad_op.call(x, kernel, scales, bandwidth, exclude_diagonal);
    ctx->save_for_backward({unit_grad_x, x});
    return total;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return once_differentiable("vaefast::kernel_sum_self", ctx, grads, [&]() -> variable_list {
      const auto saved = ctx->get_saved_variables();
      return {scaled_grad(saved[0], grads[0], saved[1]), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    });
  }
};

struct KernelSumCross : public torch::autograd::Function<KernelSumCross> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y, c10::string_view kernel,
                            at::ArrayRef<double> scales, double bandwidth) {
    static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view,
                                                at::ArrayRef<double>, double)>("vaefast::kernel_sum_cross");
    static const auto with_grad_op = op_handle<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, c10::string_view, at::ArrayRef<double>, double, bool)>(
        "vaefast::kernel_sum_cross_with_grad");
    at::AutoDispatchBelowADInplaceOrView below;
    if (!x.requires_grad() && !y.requires_grad()) return op.call(x, y, kernel, scales, bandwidth);
    // y's side only when y takes a gradient (x's is always computed: the pass is built around it).
    auto [total, unit_grad_x, unit_grad_y] = with_grad_op.call(x, y, kernel, scales, bandwidth, y.requires_grad());
    ctx->save_for_backward({unit_grad_x, unit_grad_y, x, y});
    return total;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return once_differentiable("vaefast::kernel_sum_cross", ctx, grads, [&]() -> variable_list {
      const auto saved = ctx->get_saved_variables();
      at::Tensor grad_x, grad_y;
      if (needs(ctx, 0)) grad_x = scaled_grad(saved[0], grads[0], saved[2]);
      if (needs(ctx, 1)) grad_y = scaled_grad(saved[1], grads[0], saved[3]);
      return {grad_x, grad_y, at::Tensor(), at::Tensor(), at::Tensor()};
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(vaefast, Autograd, m) {
  m.impl("reparameterize", [](const at::Tensor& mu, const at::Tensor& logvar, std::optional<int64_t> num_samples,
                              std::optional<at::Generator> generator) {
    return Reparameterize::apply(mu, logvar, num_samples, std::move(generator));
  });
  m.impl("reparameterize_philox", [](const at::Tensor& mu, const at::Tensor& logvar,
                                     std::optional<int64_t> num_samples, int64_t seed, int64_t offset) {
    return ReparameterizePhilox::apply(mu, logvar, num_samples, seed, offset);
  });
  m.impl("reparameterize_with_eps", [](const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& eps) {
    return ReparameterizeWithEps::apply(mu, logvar, eps);
  });
  m.impl("reparameterize_kl", [](const at::Tensor& mu, const at::Tensor& logvar, std::optional<int64_t> num_samples,
                                 std::optional<at::Generator> generator, c10::string_view reduction) {
    const variable_list outputs = ReparameterizeKl::apply(mu, logvar, num_samples, std::move(generator), reduction);
    return std::make_tuple(outputs[0], outputs[1]);
  });
  m.impl("gaussian_kl", [](const at::Tensor& mu, const at::Tensor& logvar, c10::string_view reduction) {
    return GaussianKl::apply(mu, logvar, reduction);
  });
  m.impl("gaussian_nll", [](const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& log_gamma,
                            c10::string_view reduction) {
    return GaussianNll::apply(x, x_hat, log_gamma, reduction);
  });
  m.impl("kernel_sum_self", [](const at::Tensor& x, c10::string_view kernel, at::ArrayRef<double> scales,
                               double bandwidth, bool exclude_diagonal) {
    return KernelSumSelf::apply(x, kernel, scales, bandwidth, exclude_diagonal);
  });
  m.impl("kernel_sum_cross", [](const at::Tensor& x, const at::Tensor& y, c10::string_view kernel,
                                at::ArrayRef<double> scales, double bandwidth) {
    return KernelSumCross::apply(x, y, kernel, scales, bandwidth);
  });
}

}  // namespace ops
}  // namespace vaefast
