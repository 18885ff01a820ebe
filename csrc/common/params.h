// Plain parameter structs: everything a kernel needs, filled once by the torch-facing glue (csrc/ops) and
// passed by value to the CPU loops (csrc/cpu) and the CUDA launchers (csrc/cuda). No torch types: pointers,
// sizes in elements, scalars. Every tensor behind a pointer is contiguous (the glue makes it so).
#pragma once

#include <cstdint>

namespace vaefast {

// The Philox stream (common/philox.h) a noise-drawing kernel reads: (seed, offset).
struct PhiloxState {
  uint64_t seed = 0;
  uint64_t offset = 0;
  // CUDA only, mirroring at::PhiloxCudaState for CUDA-graph capture: when seed_ptr is set, the kernel reads
  // seed = *seed_ptr and offset = *offset_ptr + offset_intragraph on the device (the generator's graph-safe
  // state, refreshed before each replay) instead of the two values above. The CPU kernels ignore them.
  const int64_t* seed_ptr = nullptr;
  const int64_t* offset_ptr = nullptr;
  uint64_t offset_intragraph = 0;
};

// z[s, i] = mu[i] + exp(logvar[i] / 2) * eps[s, i] for s < num_samples, i < numel.
template <typename scalar_t>
struct ReparameterizeParams {
  const scalar_t* mu = nullptr;      // [numel]
  const scalar_t* logvar = nullptr;  // [numel]
  const scalar_t* eps = nullptr;     // [num_samples, numel], or nullptr: draw from Philox(philox)
  scalar_t* z = nullptr;             // [num_samples, numel]
  int64_t numel = 0;
  int64_t num_samples = 1;
  PhiloxState philox;
};

// grad_logvar[i] = sum_s 0.5 * grad_z[s, i] * (z[s, i] - mu[i]). (grad_mu = sum_s grad_z[s, i] needs no
// kernel: it is grad_z itself for one sample, a plain sum over samples otherwise.)
template <typename scalar_t>
struct ReparameterizeBackwardParams {
  const scalar_t* grad_z = nullptr;  // [num_samples, numel]
  const scalar_t* z = nullptr;       // [num_samples, numel]
  const scalar_t* mu = nullptr;      // [numel]
  scalar_t* grad_logvar = nullptr;   // [numel]
  int64_t numel = 0;
  int64_t num_samples = 1;
};

// per_sample[b] = sum_j 0.5 * (mu[b, j]^2 + exp(logvar[b, j]) - 1 - logvar[b, j]).
template <typename scalar_t>
struct GaussianKlParams {
  const scalar_t* mu = nullptr;      // [batch, features]
  const scalar_t* logvar = nullptr;  // [batch, features]
  scalar_t* per_sample = nullptr;    // [batch]
  int64_t batch = 0;
  int64_t features = 0;
  // CUDA only: scratch of cuda::gaussian_kl_workspace_bytes(params) bytes for the per-chunk partial sums.
  void* workspace = nullptr;
};

// grad_mu[b, j] = grad[b] * mu[b, j];  grad_logvar[b, j] = grad[b] * 0.5 * (exp(logvar[b, j]) - 1).
template <typename scalar_t>
struct GaussianKlBackwardParams {
  const scalar_t* grad = nullptr;    // [batch], d loss / d per_sample
  const scalar_t* mu = nullptr;      // [batch, features]
  const scalar_t* logvar = nullptr;  // [batch, features]
  scalar_t* grad_mu = nullptr;       // [batch, features]
  scalar_t* grad_logvar = nullptr;   // [batch, features]
  int64_t batch = 0;
  int64_t features = 0;
};

// The fused VAE head: ReparameterizeParams' z with Philox noise and GaussianKlParams' per_sample, from one
// read of mu and logvar. z[s, b, j] = mu[b, j] + exp(logvar[b, j] / 2) * eps[s, b, j];
// per_sample[b] = sum_j 0.5 * (mu[b, j]^2 + exp(logvar[b, j]) - 1 - logvar[b, j]).
template <typename scalar_t>
struct ReparameterizeKlParams {
  const scalar_t* mu = nullptr;      // [batch, features]
  const scalar_t* logvar = nullptr;  // [batch, features]
  scalar_t* z = nullptr;             // [num_samples, batch, features]
  scalar_t* per_sample = nullptr;    // [batch]
  int64_t batch = 0;
  int64_t features = 0;
  int64_t num_samples = 1;
  PhiloxState philox;
  // CUDA only: scratch of cuda::reparameterize_kl_workspace_bytes(params) bytes (per-chunk partial sums).
  void* workspace = nullptr;
};

// Both gradients of the head in one pass (grad_kl[b] = d loss / d per_sample[b]):
// grad_mu[b, j] = sum_s grad_z[s, b, j] + grad_kl[b] * mu[b, j];
// grad_logvar[b, j] = sum_s 0.5 * grad_z[s, b, j] * (z[s, b, j] - mu[b, j]) + grad_kl[b] * 0.5 * expm1(logvar[b, j]).
template <typename scalar_t>
struct ReparameterizeKlBackwardParams {
  const scalar_t* grad_z = nullptr;   // [num_samples, batch, features]
  const scalar_t* grad_kl = nullptr;  // [batch]
  const scalar_t* z = nullptr;        // [num_samples, batch, features]
  const scalar_t* mu = nullptr;       // [batch, features]
  const scalar_t* logvar = nullptr;   // [batch, features]
  scalar_t* grad_mu = nullptr;        // [batch, features]
  scalar_t* grad_logvar = nullptr;    // [batch, features]
  int64_t batch = 0;
  int64_t features = 0;
  int64_t num_samples = 1;
};

// How log_gamma is laid out against x viewed as [batch, features]. The glue maps every shape that
// broadcasts to x (numpy rules) onto one of these: one value for all is kScalar; one value per sample
// ([B, 1, ...]) is kPerSample; anything that does not vary along the batch is kPerFeature (expanded to
// [features]); the rest is kFull (expanded to [batch, features]).
enum class LogGammaLayout : int { kScalar = 0, kPerSample = 1, kPerFeature = 2, kFull = 3 };

// per_sample[b] = sum_j (x - x_hat)^2 / (2 gamma^2) + log_gamma + 0.5 log(2 pi), gamma = exp(log_gamma).
template <typename scalar_t>
struct GaussianNllParams {
  const scalar_t* x = nullptr;          // [batch, features]
  const scalar_t* x_hat = nullptr;      // [batch, features]
  const scalar_t* log_gamma = nullptr;  // [1], [batch], [features] or [batch, features] (see layout)
  scalar_t* per_sample = nullptr;       // [batch]
  int64_t batch = 0;
  int64_t features = 0;
  LogGammaLayout layout = LogGammaLayout::kScalar;
  // CUDA only: scratch of cuda::gaussian_nll_workspace_bytes(params) bytes for the per-chunk partial sums.
  void* workspace = nullptr;
};

// grad_x_hat[b, j] = grad[b] * (x_hat - x) / gamma^2; grad_log_gamma in log_gamma's layout, summed over
// the elements that share each log_gamma value of grad[b] * (1 - (x - x_hat)^2 / gamma^2).
template <typename scalar_t>
struct GaussianNllBackwardParams {
  const scalar_t* grad = nullptr;       // [batch]
  const scalar_t* x = nullptr;          // [batch, features]
  const scalar_t* x_hat = nullptr;      // [batch, features]
  const scalar_t* log_gamma = nullptr;  // layout-shaped, as in GaussianNllParams
  scalar_t* grad_x_hat = nullptr;       // [batch, features]
  scalar_t* grad_log_gamma = nullptr;   // layout-shaped
  int64_t batch = 0;
  int64_t features = 0;
  LogGammaLayout layout = LogGammaLayout::kScalar;
  // CUDA only: scratch of cuda::gaussian_nll_backward_workspace_bytes(params) bytes (partial sums).
  void* workspace = nullptr;
};

// Which pairwise kernel a kernel sum evaluates (the per-pair math is in mmd_math.h).
enum class PairKernel : int { kImq = 0, kRbf = 1, kPoly = 2 };

// A multi-scale kernel sums at most this many scales; fixed so the constants travel inside the params
// struct by value (no device allocation on the CUDA path).
constexpr int kMaxKernelScales = 16;

// out[0] = sum over pairs (i, j) of k(x_i, y_j). The self sum (self_pairs, y == x) runs over the ordered
// pairs, without i == j when exclude_diagonal; the cross sum over all n * m pairs. The sum is written in
// double whatever the input dtype: the partial sums are added in double, 7 n^2 IMQ values overflow float16
// from n ~ 100, and the estimator Kxx + Kyy - 2 Kxy cancels its O(1) terms down to a small difference, so
// rounding the sums to float32 first would cost more than the kernels' own error.
// k is "imq" sum_s C_s / (C_s + D), "rbf" sum_s exp(-D / C_s) with D = ||a - b||^2, or "poly"
// (a.b / d + 1)^3 (no scales); C_s = s * 2 * d * bandwidth^2 (scale_constant, filled by the glue).
template <typename scalar_t>
struct KernelSumParams {
  const scalar_t* x = nullptr;  // [n, d]
  const scalar_t* y = nullptr;  // [m, d]; x itself for the self sum
  double* out = nullptr;        // [1]
  int64_t n = 0;
  int64_t m = 0;
  int64_t d = 0;
  PairKernel kernel = PairKernel::kImq;
  int num_scales = 0;
  double scale_constant[kMaxKernelScales] = {};
  bool self_pairs = false;
  bool exclude_diagonal = false;
  // CUDA only: scratch of cuda::kernel_sum_workspace_bytes(params) bytes (one double per thread block).
  void* workspace = nullptr;
};

// grad_x[i] = grad * d out / d x_i and grad_y[j] = grad * d out / d y_j for the sum of KernelSumParams;
// the self sum has grad_x only (x is on both sides of every pair).
template <typename scalar_t>
struct KernelSumBackwardParams {
  const double* grad = nullptr;    // [1], d loss / d out (read in the kernel: no host synchronisation)
  const scalar_t* x = nullptr;     // [n, d]
  const scalar_t* y = nullptr;     // [m, d]; x itself for the self sum
  scalar_t* grad_x = nullptr;      // [n, d]
  scalar_t* grad_y = nullptr;      // [m, d]; nullptr for the self sum
  int64_t n = 0;
  int64_t m = 0;
  int64_t d = 0;
  PairKernel kernel = PairKernel::kImq;
  int num_scales = 0;
  double scale_constant[kMaxKernelScales] = {};
  bool self_pairs = false;
  bool exclude_diagonal = false;
};

// Copies the pair geometry and kernel constants every kernel-sum params struct shares, between the forward
// and the backward struct.
template <typename Dst, typename Src>
void copy_pairs(Dst& dst, const Src& src) {
  dst.n = src.n;
  dst.m = src.m;
  dst.d = src.d;
  dst.kernel = src.kernel;
  dst.num_scales = src.num_scales;
  for (int s = 0; s < kMaxKernelScales; ++s) dst.scale_constant[s] = src.scale_constant[s];
  dst.self_pairs = src.self_pairs;
  dst.exclude_diagonal = src.exclude_diagonal;
}

}  // namespace vaefast
