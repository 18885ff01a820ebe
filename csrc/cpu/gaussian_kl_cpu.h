// CPU kernels of vaefast::gaussian_kl: one read of mu and logvar forward (per-sample sums, no temporaries),
// one read of mu and logvar and one write of each gradient backward.
#pragma once

#include "../common/params.h"
#include "cpu_common.h"

namespace vaefast {
namespace cpu {

template <typename scalar_t>
void gaussian_kl_forward(const GaussianKlParams<scalar_t>& p) {
  using acc = acc_t<scalar_t>;
  std::vector<acc> totals(p.batch);
  auto row_chunk_sum = [&](int64_t row, int64_t begin, int64_t end) {
    const scalar_t* mu = p.mu + row * p.features;
    const scalar_t* logvar = p.logvar + row * p.features;
    return chunk_sum<acc>(
        begin, end, [&](int64_t j) { return gaussian_kl_term(load_acc(mu + j), load_acc(logvar + j)); },
        [&](int64_t j) { return gaussian_kl_term(static_cast<acc>(mu[j]), static_cast<acc>(logvar[j])); });
  };
  deterministic_row_sums<acc>(p.batch, p.features, row_chunk_sum, totals.data());
  for (int64_t b = 0; b < p.batch; ++b) p.per_sample[b] = static_cast<scalar_t>(totals[b]);
}

template <typename scalar_t>
void gaussian_kl_backward(const GaussianKlBackwardParams<scalar_t>& p) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t width = Vec<acc>::size();
  parallel_row_segments(p.batch, p.features, [&](int64_t row, int64_t begin, int64_t end) {
    const int64_t base = row * p.features;
    const acc grad = static_cast<acc>(p.grad[row]);
    const Vec<acc> grad_v(grad);
    int64_t j = base + begin;
    for (; j + width <= base + end; j += width) {
      store_acc(p.grad_mu + j, grad_v * load_acc(p.mu + j));
      store_acc(p.grad_logvar + j, grad_v * gaussian_kl_grad_logvar(load_acc(p.logvar + j)));
    }
    for (; j < base + end; ++j) {
      p.grad_mu[j] = static_cast<scalar_t>(grad * static_cast<acc>(p.mu[j]));
      p.grad_logvar[j] = static_cast<scalar_t>(grad * gaussian_kl_grad_logvar(static_cast<acc>(p.logvar[j])));
    }
  });
}

}  // namespace cpu
}  // namespace vaefast
