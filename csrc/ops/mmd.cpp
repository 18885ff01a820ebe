// vaefast::kernel_sum_self and vaefast::kernel_sum_cross: the pairwise kernel sums that the MMD estimators
// (vaefast/ops/mmd.py) are composed of; their *_with_grad variants, which return d sum / d inputs with the
// sum (what autograd runs when an input requires grad: on the CPU one pass computes the pair statistics
// and kernel divisions once for both); and their backward ops (the gradients at a given incoming gradient,
// without the sum: part of the op set for users of the raw ops; autograd runs *_with_grad).
#include "../cpu/mmd_cpu.h"
#include "op_common.h"

#include <ATen/Dispatch.h>

#ifdef VAEFAST_WITH_CUDA
#include "cuda_glue.h"
#endif

#include <cmath>

namespace vaefast {
namespace ops {
namespace {

void check_rows(const at::Tensor& t, const char* name) {
  check_floating(t, name);
  TORCH_CHECK(t.dim() == 2, name, " must be a 2-D tensor [n, d] (one sample per row); got shape ", t.sizes());
  TORCH_CHECK(t.size(1) >= 1, name, " must have at least one column (d >= 1); got shape ", t.sizes());
}

void check_rows_like(const at::Tensor& y, const at::Tensor& x) {
  check_rows(y, "y");
  TORCH_CHECK(y.device() == x.device(), "y is on ", y.device(), " but x is on ", x.device(),
              "; move both to one device");
  TORCH_CHECK(y.scalar_type() == x.scalar_type(), "y has dtype ", y.scalar_type(), " but x has dtype ",
              x.scalar_type());
  TORCH_CHECK(y.size(1) == x.size(1), "y must have d = ", x.size(1), " columns like x [n, d] = ", x.sizes(),
              "; got ", y.sizes());
}

PairKernel parse_kernel(c10::string_view kernel) {
  if (kernel == "imq") return PairKernel::kImq;
  if (kernel == "rbf") return PairKernel::kRbf;
  if (kernel == "poly") return PairKernel::kPoly;
  TORCH_CHECK(false, "kernel must be one of 'imq', 'rbf', 'poly'; got '", std::string(kernel), "'");
}

// The kernel's constants C_s = s * 2 * d * bandwidth^2, validated, in the fields every params struct shares.
template <typename Params>
void fill_kernel(Params& params, c10::string_view kernel, at::ArrayRef<double> scales, double bandwidth,
                 int64_t d) {
  params.kernel = parse_kernel(kernel);
  TORCH_CHECK(bandwidth > 0 && std::isfinite(bandwidth), "bandwidth must be positive and finite; got ", bandwidth);
  if (params.kernel == PairKernel::kPoly) return;  // (a.b / d + 1)^3 has no scales
  TORCH_CHECK(!scales.empty() && static_cast<int64_t>(scales.size()) <= kMaxKernelScales,
              "scales must hold 1 to ", kMaxKernelScales, " positive numbers; got ", scales.size());
  params.num_scales = static_cast<int>(scales.size());
  for (int s = 0; s < params.num_scales; ++s) {
    TORCH_CHECK(scales[s] > 0 && std::isfinite(scales[s]), "scales[", s, "] must be positive and finite; got ",
                scales[s]);
    params.scale_constant[s] = scales[s] * 2.0 * static_cast<double>(d) * bandwidth * bandwidth;
  }
}

// The pair geometry and kernel constants every kernel-sum params struct shares: the pairs of x's rows with
// themselves (y == nullptr) or with y's rows.
template <typename Params>
void fill_pairs(Params& params, const at::Tensor& x, const at::Tensor* y, c10::string_view kernel,
                at::ArrayRef<double> scales, double bandwidth, bool exclude_diagonal) {
  fill_kernel(params, kernel, scales, bandwidth, x.size(1));
  params.n = x.size(0);
  params.m = y != nullptr ? y->size(0) : x.size(0);
  params.d = x.size(1);
  params.self_pairs = y == nullptr;
  params.exclude_diagonal = exclude_diagonal;
}

void check_device(const at::Tensor& x, const char* op) {
  TORCH_CHECK(has_kernel(x), "vaefast::", op, ": no kernel for device ", x.device());
}

// Runs the forward kernel sum on x's device (params filled for the CPU type scalar_t).
template <typename scalar_t>
void run_kernel_sum(const KernelSumParams<scalar_t>& params, const at::Tensor& x) {
#ifdef VAEFAST_WITH_CUDA
  if (x.is_cuda()) {
    auto cuda_params = as_cuda(params);
    const Workspace workspace = cuda_workspace(cuda::kernel_sum_workspace_bytes(cuda_params), x);
    cuda_params.workspace = workspace.data();
    run_on_cuda(x, [&](cudaStream_t stream) { cuda::launch_kernel_sum(cuda_params, stream); });
    return;
  }
#endif
  (void)x;
  cpu::kernel_sum_forward(params);
}

template <typename scalar_t>
void run_kernel_sum_backward(const KernelSumBackwardParams<scalar_t>& params, const at::Tensor& x) {
#ifdef VAEFAST_WITH_CUDA
  if (x.is_cuda()) {
    run_on_cuda(x, [&](cudaStream_t stream) { cuda::launch_kernel_sum_backward(as_cuda(params), stream); });
    return;
  }
#endif
  (void)x;
  cpu::kernel_sum_backward(params);
}

void check_grad(const at::Tensor& grad) {
  TORCH_CHECK(grad.numel() == 1, "grad must hold one value (the gradient of the 0-dim sum); got shape ",
              grad.sizes());
}

// [n, d] -> 0-dim float64: sum over ordered pairs i != j (or all i, j) of k(x_i, x_j)
at::Tensor kernel_sum_self(const at::Tensor& x, c10::string_view kernel, at::ArrayRef<double> scales,
                           double bandwidth, bool exclude_diagonal) {
  check_rows(x, "x");
  check_device(x, "kernel_sum_self");
  // float64 whatever x's dtype: see KernelSumParams::out
  at::Tensor total = at::zeros({}, x.options().dtype(at::kDouble));
  if (x.size(0) == 0) return total;
  const at::Tensor x_c = x.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vaefast::kernel_sum_self", [&] {
    KernelSumParams<scalar_t> params;
    fill_pairs(params, x, nullptr, kernel, scales, bandwidth, exclude_diagonal);
    params.x = x_c.const_data_ptr<scalar_t>();
    params.y = params.x;
    params.out = total.mutable_data_ptr<double>();
    run_kernel_sum(params, x);
  });
  return total;
}

// grad (0-dim), x [n, d] -> grad_x [n, d]
at::Tensor kernel_sum_self_backward(const at::Tensor& grad, const at::Tensor& x, c10::string_view kernel,
                                    at::ArrayRef<double> scales, double bandwidth, bool exclude_diagonal) {
  check_rows(x, "x");
  check_device(x, "kernel_sum_self_backward");
  check_grad(grad);
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  if (x.size(0) == 0) return grad_x;
  const at::Tensor grad_c = grad.to(at::kDouble).contiguous();
  const at::Tensor x_c = x.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vaefast::kernel_sum_self_backward", [&] {
    KernelSumBackwardParams<scalar_t> params;
    fill_pairs(params, x, nullptr, kernel, scales, bandwidth, exclude_diagonal);
    params.grad = grad_c.const_data_ptr<double>();
    params.x = x_c.const_data_ptr<scalar_t>();
    params.y = params.x;
    params.grad_x = grad_x.mutable_data_ptr<scalar_t>();
    run_kernel_sum_backward(params, x);
  });
  return grad_x;
}

// The dtype of the *_with_grad ops' gradients: the accumulation type, so that autograd's scaling by the
// incoming gradient rounds once into half or bfloat16, not twice.
at::ScalarType unit_grad_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The sum and, for x (and y unless self), d sum / d input in unit_grad_dtype: one pass on the CPU; on CUDA
// the forward kernel and then the backward kernels at an incoming gradient of 1.
template <typename scalar_t>
void run_kernel_sum_with_grad(const KernelSumParams<scalar_t>& params, const at::Tensor& x, const at::Tensor* y,
                              at::Tensor& grad_x, at::Tensor* grad_y) {
  using acc = acc_t<scalar_t>;
#ifdef VAEFAST_WITH_CUDA
  if (x.is_cuda()) {
    run_kernel_sum(params, x);
    const at::Tensor one = at::ones({}, x.options().dtype(at::kDouble));
    KernelSumBackwardParams<scalar_t> backward;
    backward.grad = one.const_data_ptr<double>();
    backward.x = params.x;
    backward.y = params.y;
    copy_pairs(backward, params);
    const at::Tensor grad_x_typed = at::empty(x.sizes(), x.options());
    backward.grad_x = grad_x_typed.mutable_data_ptr<scalar_t>();
    // The backward kernels compute both sides of a cross sum; y's is dropped when not asked for.
    at::Tensor grad_y_typed;
    if (y != nullptr) {
      grad_y_typed = at::empty(y->sizes(), y->options());
      backward.grad_y = grad_y_typed.mutable_data_ptr<scalar_t>();
    }
    run_kernel_sum_backward(backward, x);
    grad_x.copy_(grad_x_typed);
    if (grad_y != nullptr) grad_y->copy_(grad_y_typed);
    return;
  }
#endif
  (void)y;
  cpu::kernel_sum_with_grad(params, grad_x.mutable_data_ptr<acc>(),
                            grad_y != nullptr ? grad_y->mutable_data_ptr<acc>() : nullptr);
}

// [n, d] -> (0-dim float64 sum as kernel_sum_self, d sum / d x [n, d] in float32, float64 for float64 x)
std::tuple<at::Tensor, at::Tensor> kernel_sum_self_with_grad(const at::Tensor& x, c10::string_view kernel,
                                                             at::ArrayRef<double> scales, double bandwidth,
                                                             bool exclude_diagonal) {
  check_rows(x, "x");
  check_device(x, "kernel_sum_self_with_grad");
  at::Tensor total = at::zeros({}, x.options().dtype(at::kDouble));
  at::Tensor grad_x = at::zeros(x.sizes(), x.options().dtype(unit_grad_dtype(x)));
  if (x.size(0) == 0) return {total, grad_x};
  const at::Tensor x_c = x.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vaefast::kernel_sum_self_with_grad", [&] {
    KernelSumParams<scalar_t> params;
    fill_pairs(params, x, nullptr, kernel, scales, bandwidth, exclude_diagonal);
    params.x = x_c.const_data_ptr<scalar_t>();
    params.y = params.x;
    params.out = total.mutable_data_ptr<double>();
    run_kernel_sum_with_grad(params, x, nullptr, grad_x, nullptr);
  });
  return {total, grad_x};
}

// [n, d], [m, d] -> (0-dim float64 sum as kernel_sum_cross, d sum / d x [n, d], d sum / d y [m, d]), the
// gradients in float32 (float64 for float64 inputs). with_grad_y=false skips y's side (an empty [0] tensor
// in its place): mmd_prior's prior samples take no gradient, and y's side is about a third of the pass.
std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_sum_cross_with_grad(const at::Tensor& x, const at::Tensor& y,
                                                                          c10::string_view kernel,
                                                                          at::ArrayRef<double> scales,
                                                                          double bandwidth, bool with_grad_y) {
  check_rows(x, "x");
  check_rows_like(y, x);
  check_device(x, "kernel_sum_cross_with_grad");
  at::Tensor total = at::zeros({}, x.options().dtype(at::kDouble));
  at::Tensor grad_x = at::zeros(x.sizes(), x.options().dtype(unit_grad_dtype(x)));
  at::Tensor grad_y = with_grad_y ? at::zeros(y.sizes(), y.options().dtype(unit_grad_dtype(x)))
                                  : at::empty({0}, y.options().dtype(unit_grad_dtype(x)));
  if (x.size(0) == 0 || y.size(0) == 0) return {total, grad_x, grad_y};
  const at::Tensor x_c = x.contiguous();
  const at::Tensor y_c = y.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vaefast::kernel_sum_cross_with_grad", [&] {
    KernelSumParams<scalar_t> params;
    fill_pairs(params, x, &y, kernel, scales, bandwidth, /*exclude_diagonal=*/false);
    params.x = x_c.const_data_ptr<scalar_t>();
    params.y = y_c.const_data_ptr<scalar_t>();
    params.out = total.mutable_data_ptr<double>();
    run_kernel_sum_with_grad(params, x, &y, grad_x, with_grad_y ? &grad_y : nullptr);
  });
  return {total, grad_x, grad_y};
}

// [n, d], [m, d] -> 0-dim float64: sum over all n * m pairs of k(x_i, y_j)
at::Tensor kernel_sum_cross(const at::Tensor& x, const at::Tensor& y, c10::string_view kernel,
                            at::ArrayRef<double> scales, double bandwidth) {
  check_rows(x, "x");
  check_rows_like(y, x);
  check_device(x, "kernel_sum_cross");
  // float64 whatever x's dtype: see KernelSumParams::out
  at::Tensor total = at::zeros({}, x.options().dtype(at::kDouble));
  if (x.size(0) == 0 || y.size(0) == 0) return total;
  const at::Tensor x_c = x.contiguous();
  const at::Tensor y_c = y.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vaefast::kernel_sum_cross", [&] {
    KernelSumParams<scalar_t> params;
    fill_pairs(params, x, &y, kernel, scales, bandwidth, /*exclude_diagonal=*/false);
    params.x = x_c.const_data_ptr<scalar_t>();
    params.y = y_c.const_data_ptr<scalar_t>();
    params.out = total.mutable_data_ptr<double>();
    run_kernel_sum(params, x);
  });
  return total;
}

// grad (0-dim), x [n, d], y [m, d] -> (grad_x [n, d], grad_y [m, d])
std::tuple<at::Tensor, at::Tensor> kernel_sum_cross_backward(const at::Tensor& grad, const at::Tensor& x,
                                                             const at::Tensor& y, c10::string_view kernel,
                                                             at::ArrayRef<double> scales, double bandwidth) {
  check_rows(x, "x");
  check_rows_like(y, x);
  check_device(x, "kernel_sum_cross_backward");
  check_grad(grad);
  at::Tensor grad_x = at::zeros(x.sizes(), x.options());
  at::Tensor grad_y = at::zeros(y.sizes(), y.options());
  if (x.size(0) == 0 || y.size(0) == 0) return {grad_x, grad_y};
  const at::Tensor grad_c = grad.to(at::kDouble).contiguous();
  const at::Tensor x_c = x.contiguous();
  const at::Tensor y_c = y.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vaefast::kernel_sum_cross_backward", [&] {
    KernelSumBackwardParams<scalar_t> params;
    fill_pairs(params, x, &y, kernel, scales, bandwidth, /*exclude_diagonal=*/false);
    params.grad = grad_c.const_data_ptr<double>();
    params.x = x_c.const_data_ptr<scalar_t>();
    params.y = y_c.const_data_ptr<scalar_t>();
    params.grad_x = grad_x.mutable_data_ptr<scalar_t>();
    params.grad_y = grad_y.mutable_data_ptr<scalar_t>();
    run_kernel_sum_backward(params, x);
  });
  return {grad_x, grad_y};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vaefast, m) {
  m.def("kernel_sum_self(Tensor x, str kernel, float[] scales, float bandwidth, bool exclude_diagonal) -> Tensor");
  m.def(
      "kernel_sum_self_backward(Tensor grad, Tensor x, str kernel, float[] scales, float bandwidth, "
      "bool exclude_diagonal) -> Tensor");
  m.def(
      "kernel_sum_self_with_grad(Tensor x, str kernel, float[] scales, float bandwidth, bool exclude_diagonal) "
      "-> (Tensor, Tensor)");
  m.def("kernel_sum_cross(Tensor x, Tensor y, str kernel, float[] scales, float bandwidth) -> Tensor");
  m.def(
      "kernel_sum_cross_with_grad(Tensor x, Tensor y, str kernel, float[] scales, float bandwidth, "
      "bool with_grad_y=True) -> (Tensor, Tensor, Tensor)");
  m.def(
      "kernel_sum_cross_backward(Tensor grad, Tensor x, Tensor y, str kernel, float[] scales, float bandwidth) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vaefast, CPU, m) {
  m.impl("kernel_sum_self", &kernel_sum_self);
  m.impl("kernel_sum_self_backward", &kernel_sum_self_backward);
  m.impl("kernel_sum_self_with_grad", &kernel_sum_self_with_grad);
  m.impl("kernel_sum_cross", &kernel_sum_cross);
  m.impl("kernel_sum_cross_backward", &kernel_sum_cross_backward);
  m.impl("kernel_sum_cross_with_grad", &kernel_sum_cross_with_grad);
}

#ifdef VAEFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(vaefast, CUDA, m) {
  m.impl("kernel_sum_self", &kernel_sum_self);
  m.impl("kernel_sum_self_backward", &kernel_sum_self_backward);
  m.impl("kernel_sum_self_with_grad", &kernel_sum_self_with_grad);
  m.impl("kernel_sum_cross", &kernel_sum_cross);
  m.impl("kernel_sum_cross_backward", &kernel_sum_cross_backward);
  m.impl("kernel_sum_cross_with_grad", &kernel_sum_cross_with_grad);
}
#endif

}  // namespace ops
}  // namespace vaefast
