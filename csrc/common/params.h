// Plain parameter structs: everything a kernel needs, filled once by the torch-facing glue (csrc/ops) and
// passed by value to the CPU loops (csrc/cpu) and, later, the CUDA launchers. No torch types: pointers,
// sizes in elements, scalars. Every tensor behind a pointer is contiguous (the glue makes it so).
#pragma once

#include <cstdint>

namespace vaefast {

// z[s, i] = mu[i] + exp(logvar[i] / 2) * eps[s, i] for s < num_samples, i < numel.
template <typename scalar_t>
struct ReparameterizeParams {
  const scalar_t* mu = nullptr;      // [numel]
  const scalar_t* logvar = nullptr;  // [numel]
  const scalar_t* eps = nullptr;     // [num_samples, numel], or nullptr: draw from Philox(seed, offset)
  scalar_t* z = nullptr;             // [num_samples, numel]
  int64_t numel = 0;
  int64_t num_samples = 1;
  uint64_t seed = 0;
  uint64_t offset = 0;
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

// How log_gamma is laid out against x viewed as [batch, features]. The glue maps every accepted shape onto
// one of these: a 0-dim or one-element tensor is kScalar; a [B] tensor is kPerSample; anything
// broadcastable to x that does not vary along the batch is kPerFeature (expanded to [features]); the rest
// is kFull (expanded to [batch, features]).
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
};

}  // namespace vaefast
