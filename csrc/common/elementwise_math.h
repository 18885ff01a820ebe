// Per-element math of the memory-bound ops: the reparameterisation, the Gaussian KL to N(0, I) and the
// learned-gamma Gaussian NLL. One definition for the CPU kernels, the CUDA kernels and the C++ tests (which
// check every formula here against long double). T is the accumulation type (float or double): kernels
// load float16/bfloat16/float32 as float and float64 as double.
#pragma once

#include <cmath>

#include "macros.h"

namespace vaefast {

// Accumulation type of a storage type: double for double, float for everything else (float, half, bf16).
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

VAEFAST_HOST_DEVICE float math_exp(float v) { return ::expf(v); }
VAEFAST_HOST_DEVICE double math_exp(double v) { return ::exp(v); }
VAEFAST_HOST_DEVICE float math_expm1(float v) { return ::expm1f(v); }
VAEFAST_HOST_DEVICE double math_expm1(double v) { return ::expm1(v); }

constexpr double kHalfLog2Pi = 0.91893853320467274178032973640562;  // 0.5 * log(2 pi)

// z = mu + exp(logvar / 2) * eps
template <typename T>
VAEFAST_HOST_DEVICE T reparameterize_value(T mu, T logvar, T eps) {
  return mu + math_exp(T(0.5) * logvar) * eps;
}

// d loss / d logvar from the saved z: 0.5 * g * (z - mu) = 0.5 * g * std * eps (eps itself is not kept).
template <typename T>
VAEFAST_HOST_DEVICE T reparameterize_grad_logvar(T grad_z, T z, T mu) {
  return T(0.5) * grad_z * (z - mu);
}

// One term of KL(N(mu, exp(logvar)) || N(0, 1)) = 0.5 * (mu^2 + exp(logvar) - 1 - logvar).
// expm1 keeps exp(logvar) - 1 accurate for small logvar, where the naive form loses every digit.
template <typename T>
VAEFAST_HOST_DEVICE T gaussian_kl_term(T mu, T logvar) {
  return T(0.5) * (mu * mu + (math_expm1(logvar) - logvar));
}

// d term / d mu = mu;  d term / d logvar = 0.5 * (exp(logvar) - 1).
template <typename T>
VAEFAST_HOST_DEVICE T gaussian_kl_grad_logvar(T logvar) {
  return T(0.5) * math_expm1(logvar);
}

// 1 / gamma^2 = exp(-2 log_gamma), computed once per log_gamma value.
template <typename T>
VAEFAST_HOST_DEVICE T inverse_variance(T log_gamma) {
  return math_exp(T(-2) * log_gamma);
}

// The data-dependent part of one NLL term, (x - x_hat)^2 / (2 gamma^2). The constant part,
// log_gamma + 0.5 log(2 pi), is added per log_gamma value (once per sample for a scalar log_gamma).
template <typename T>
VAEFAST_HOST_DEVICE T gaussian_nll_residual_term(T x, T x_hat, T inv_var) {
  const T residual = x - x_hat;
  return T(0.5) * residual * residual * inv_var;
}

template <typename T>
VAEFAST_HOST_DEVICE T gaussian_nll_constant_term(T log_gamma) {
  return log_gamma + T(kHalfLog2Pi);
}

// One full NLL term: (x - x_hat)^2 / (2 gamma^2) + log_gamma + 0.5 log(2 pi).
template <typename T>
VAEFAST_HOST_DEVICE T gaussian_nll_term(T x, T x_hat, T log_gamma) {
  return gaussian_nll_residual_term(x, x_hat, inverse_variance(log_gamma)) +
         gaussian_nll_constant_term(log_gamma);
}

// d term / d x_hat = (x_hat - x) / gamma^2   (d term / d x is its negative).
template <typename T>
VAEFAST_HOST_DEVICE T gaussian_nll_grad_x_hat(T x, T x_hat, T inv_var) {
  return (x_hat - x) * inv_var;
}

// d term / d log_gamma = 1 - (x - x_hat)^2 / gamma^2.
template <typename T>
VAEFAST_HOST_DEVICE T gaussian_nll_grad_log_gamma(T x, T x_hat, T inv_var) {
  const T residual = x - x_hat;
  return T(1) - residual * residual * inv_var;
}

}  // namespace vaefast
