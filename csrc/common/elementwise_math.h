// Per-element math of the memory-bound ops: the reparameterisation, the Gaussian KL to N(0, I) and the
// learned-gamma Gaussian NLL. One definition for the CPU kernels, the CUDA kernels and the C++ tests (which
// check every formula here against long double). T is the accumulation type (float or double): kernels
// load float16/bfloat16/float32 as float and float64 as double.
#pragma once

#include <cmath>
#include <type_traits>

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

// The scalar type of an arithmetic type: itself here; cpu_common.h adds at::vec::Vectorized<S> -> S.
template <typename T>
struct ScalarType {
  using type = T;
};
template <typename T>
using scalar_of = typename ScalarType<T>::type;

VAEFAST_HOST_DEVICE float math_exp(float v) { return ::expf(v); }
VAEFAST_HOST_DEVICE double math_exp(double v) { return ::exp(v); }
VAEFAST_HOST_DEVICE float math_abs(float v) { return ::fabsf(v); }
VAEFAST_HOST_DEVICE double math_abs(double v) { return ::fabs(v); }
VAEFAST_HOST_DEVICE float math_fma(float a, float b, float c) { return ::fmaf(a, b, c); }
VAEFAST_HOST_DEVICE double math_fma(double a, double b, double c) { return ::fma(a, b, c); }
// Both arguments are computed: the SIMD overload (cpu_common.h) blends lanes, and a branch would not be
// cheaper on a GPU either.
template <typename T>
VAEFAST_HOST_DEVICE T math_select(bool condition, T if_true, T if_false) {
  return condition ? if_true : if_false;
}

// Horner's rule from an accumulated top: acc -> acc * v + c for each coefficient c in turn (highest degree
// first), one fused multiply-add each.
template <typename T>
VAEFAST_HOST_DEVICE T horner_from(T acc, T /*v*/) {
  return acc;
}
template <typename T, typename S, typename... Rest>
VAEFAST_HOST_DEVICE T horner_from(T acc, T v, S c, Rest... rest) {
  return horner_from(math_fma(acc, v, T(c)), v, rest...);
}

// (e^v - 1 - v) / v^2 = sum_k v^k / (k + 2)! on |v| < 1: 1/2! to 1/11! for float, 1/2! to 1/18! for double.
// The first term left out is below a tenth of an ulp of the sum's smallest value on the interval (e^-1 =
// 0.37 at v = -1): 1/12! = 2.1e-9 against float's 0.1 * 0.37 * 1.2e-7 = 4.4e-9; 1/19! = 8.2e-18 against
// double's 0.1 * 0.37 * 2.2e-16 = 8.2e-18. Coefficients 1/k! to 22 digits (each rounds once to T).
template <typename T>
VAEFAST_HOST_DEVICE T expm1_series(T v) {
  using S = scalar_of<T>;
  T top = T(S(2.505210838544171877505e-8));  // 1/11!, float's last term
  if constexpr (std::is_same_v<S, double>) {
    top = horner_from(T(S(1.561920696858622646222e-16)), v,                                          // 1/18!
                      S(2.811457254345520763199e-15), S(4.779477332387385297438e-14),               // 1/17!, 1/16!
                      S(7.647163731819816475901e-13), S(1.147074559772972471385e-11),               // 1/15!, 1/14!
                      S(1.605904383682161459939e-10), S(2.087675698786809897921e-9),                // 1/13!, 1/12!
                      S(2.505210838544171877505e-8));                                               // 1/11!
  }
  return horner_from(top, v, S(2.755731922398589065256e-7), S(2.755731922398589065256e-6),  // 1/10!, 1/9!
                     S(2.480158730158730158730e-5), S(1.984126984126984126984e-4),          // 1/8!, 1/7!
                     S(1.388888888888888888889e-3), S(8.333333333333333333333e-3),          // 1/6!, 1/5!
                     S(4.166666666666666666667e-2), S(1.666666666666666666667e-1),          // 1/4!, 1/3!
                     S(0.5));                                                               // 1/2!
}

// e^v - 1 - v, the KL's logvar part. expm1(v) - v would cancel near 0 (both ~v, the result ~v^2/2: a
// relative error of ~eps/|v|); here |v| < 1 takes v^2 times the series (a few ulps relative), and
// |v| >= 1 takes (e^v - 1) - v, where e^v - 1 is no smaller than 0.63 in magnitude and the result no
// smaller than 0.37: at most ~5.5 ulps relative (at v = 1; derivation in csrc/tests/test_elementwise_math.cpp).
// exp plus a polynomial is also cheaper than a SIMD expm1 (Sleef's expm1 is several times its exp).
template <typename T>
VAEFAST_HOST_DEVICE T expm1_minus_identity(T v) {
  return math_select(math_abs(v) < T(1), (v * v) * expm1_series(v), (math_exp(v) - T(1)) - v);
}

// e^v - 1 (the KL's gradient with respect to logvar, halved): v + v^2 times the series on |v| < 1,
// e^v - 1 elsewhere; within ~2 ulps relative either way.
template <typename T>
VAEFAST_HOST_DEVICE T expm1_by_series(T v) {
  return math_select(math_abs(v) < T(1), math_fma(v * v, expm1_series(v), v), math_exp(v) - T(1));
}

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

// One term of KL(N(mu, exp(logvar)) || N(0, 1)) = 0.5 * (mu^2 + exp(logvar) - 1 - logvar), both parts
// non-negative; exp(logvar) - 1 - logvar without cancellation (expm1_minus_identity), so the term is
// accurate relative to itself even where it is ~logvar^2 / 4.
template <typename T>
VAEFAST_HOST_DEVICE T gaussian_kl_term(T mu, T logvar) {
  return T(0.5) * (mu * mu + expm1_minus_identity(logvar));
}

// d term / d mu = mu;  d term / d logvar = 0.5 * (exp(logvar) - 1).
template <typename T>
VAEFAST_HOST_DEVICE T gaussian_kl_grad_logvar(T logvar) {
  return T(0.5) * expm1_by_series(logvar);
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
