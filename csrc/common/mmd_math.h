// Per-pair math of the MMD kernel sums: the kernel value and its slope with respect to the pair statistic,
// for the IMQ, RBF and polynomial kernels. The statistic is the squared distance D = ||a - b||^2 for "imq"
// and "rbf" and the dot product a.b for "poly"; every scale of a multi-scale kernel is evaluated from the
// same statistic, so a pair costs one pass over the features whatever the number of scales.
//
// T is the arithmetic type: float or double here and in the CUDA kernels, at::vec::Vectorized<float|double>
// in the CPU kernels (whose math_exp overloads are declared before this header is included).
#pragma once

#include "elementwise_math.h"
#include "params.h"

namespace vaefast {

// The kernel's constants in the accumulation type, derived once per call from KernelSumParams.
template <typename acc>
struct PairKernelConstants {
  int num_scales = 0;
  acc scale_constant[kMaxKernelScales] = {};          // C_s = s * 2 * d * bandwidth^2
  acc inverse_scale_constant[kMaxKernelScales] = {};  // 1 / C_s
  acc inverse_dim = 0;                                // 1 / d, for "poly"
};

template <typename acc>
PairKernelConstants<acc> pair_kernel_constants(const double* scale_constant, int num_scales, int64_t d) {
  PairKernelConstants<acc> constants;
  constants.num_scales = num_scales;
  for (int s = 0; s < num_scales; ++s) {
    constants.scale_constant[s] = static_cast<acc>(scale_constant[s]);
    constants.inverse_scale_constant[s] = static_cast<acc>(1.0 / scale_constant[s]);
  }
  constants.inverse_dim = static_cast<acc>(1.0 / static_cast<double>(d));
  return constants;
}

// "imq": k = sum_s C_s / (C_s + D);  dk/dD = -sum_s C_s / (C_s + D)^2 = -sum_s r_s^2 / C_s with
// r_s = C_s / (C_s + D), so one division per scale serves both.
template <typename T, typename acc>
VAEFAST_HOST_DEVICE void imq_value_slope(T sq_dist, const PairKernelConstants<acc>& k, T* value, T* slope) {
  T total(acc(0));
  T total_slope(acc(0));
  for (int s = 0; s < k.num_scales; ++s) {
    const T c(k.scale_constant[s]);
    const T ratio = c / (c + sq_dist);
    total = total + ratio;
    total_slope = total_slope - ratio * ratio * T(k.inverse_scale_constant[s]);
  }
  *value = total;
  *slope = total_slope;
}

// "rbf": k = sum_s exp(-D / C_s);  dk/dD = -sum_s exp(-D / C_s) / C_s.
template <typename T, typename acc>
VAEFAST_HOST_DEVICE void rbf_value_slope(T sq_dist, const PairKernelConstants<acc>& k, T* value, T* slope) {
  T total(acc(0));
  T total_slope(acc(0));
  for (int s = 0; s < k.num_scales; ++s) {
    const T inverse_c(k.inverse_scale_constant[s]);
    const T term = math_exp(T(acc(0)) - sq_dist * inverse_c);
    total = total + term;
    total_slope = total_slope - term * inverse_c;
  }
  *value = total;
  *slope = total_slope;
}

// "poly" (KID's kernel): k = (a.b / d + 1)^3;  dk/d(a.b) = 3 (a.b / d + 1)^2 / d.
template <typename T, typename acc>
VAEFAST_HOST_DEVICE void poly_value_slope(T dot, const PairKernelConstants<acc>& k, T* value, T* slope) {
  const T inverse_dim(k.inverse_dim);
  const T base = dot * inverse_dim + T(acc(1));
  const T base_sq = base * base;
  *value = base_sq * base;
  *slope = T(acc(3)) * base_sq * inverse_dim;
}

// Kernel value and slope from the pair statistic; kernel is a template constant so the loops over pairs
// carry no branch.
template <PairKernel kernel, typename T, typename acc>
VAEFAST_HOST_DEVICE void pair_kernel_value_slope(T statistic, const PairKernelConstants<acc>& k, T* value,
                                                 T* slope) {
  if constexpr (kernel == PairKernel::kImq) {
    imq_value_slope(statistic, k, value, slope);
  } else if constexpr (kernel == PairKernel::kRbf) {
    rbf_value_slope(statistic, k, value, slope);
  } else {
    poly_value_slope(statistic, k, value, slope);
  }
}

template <PairKernel kernel, typename T, typename acc>
VAEFAST_HOST_DEVICE T pair_kernel_value(T statistic, const PairKernelConstants<acc>& k) {
  T value, slope;
  pair_kernel_value_slope<kernel>(statistic, k, &value, &slope);
  return value;
}

template <PairKernel kernel, typename T, typename acc>
VAEFAST_HOST_DEVICE T pair_kernel_slope(T statistic, const PairKernelConstants<acc>& k) {
  T value, slope;
  pair_kernel_value_slope<kernel>(statistic, k, &value, &slope);
  return slope;
}

// The "poly" kernel depends on a.b, the others on ||a - b||^2.
template <PairKernel kernel>
constexpr bool uses_dot_product() {
  return kernel == PairKernel::kPoly;
}

}  // namespace vaefast
