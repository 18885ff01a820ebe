// CPU kernels of vaefast::gaussian_nll, the learned-gamma Gaussian NLL of the Two-Stage VAE. Forward reads
// x and x_hat once (8 bytes per float32 element); backward reads them once more and writes grad_x_hat,
// reducing grad_log_gamma on the way (no [B, D] temporary unless log_gamma itself is [B, D]).
#pragma once

#include "../common/params.h"
#include "cpu_common.h"

namespace vaefast {
namespace cpu {

// Rows per block of the per-feature gradient reduction: partial column sums of 64 rows each, added in
// block order afterwards (deterministic, and 1/64 of grad_x_hat's size in scratch).
constexpr int64_t kNllRowBlock = 64;

// sum_j of 0.5 * (x - x_hat)^2 * inv_var over [begin, end) of one row, with inv_var either one value
// (inv_var_row) or one per feature (inv_var_features != nullptr). Each term is scaled before it is summed:
// summing raw squares first would overflow float32 for residuals near 1e19 even where gamma is large
// enough for the scaled terms to be finite.
template <typename scalar_t, typename acc>
acc residual_sum(const scalar_t* x, const scalar_t* x_hat, acc inv_var_row, const acc* inv_var_features,
                 int64_t begin, int64_t end) {
  if (inv_var_features == nullptr) {
    const Vec<acc> inv_var(inv_var_row);
    return chunk_sum<acc>(
        begin, end, [&](int64_t j) { return gaussian_nll_residual_term(load_acc(x + j), load_acc(x_hat + j), inv_var); },
        [&](int64_t j) {
          return gaussian_nll_residual_term(static_cast<acc>(x[j]), static_cast<acc>(x_hat[j]), inv_var_row);
        });
  }
  return chunk_sum<acc>(
      begin, end,
      [&](int64_t j) {
        return gaussian_nll_residual_term(load_acc(x + j), load_acc(x_hat + j), Vec<acc>::loadu(inv_var_features + j));
      },
      [&](int64_t j) {
        return gaussian_nll_residual_term(static_cast<acc>(x[j]), static_cast<acc>(x_hat[j]), inv_var_features[j]);
      });
}

// log_gamma per feature, widened, with 1 / gamma^2 per feature and sum_j (log_gamma_j + 0.5 log 2 pi).
template <typename scalar_t, typename acc = acc_t<scalar_t>>
struct FeatureLogGamma {
  std::vector<acc> inv_var;
  acc constant_sum = 0;
  FeatureLogGamma(const scalar_t* log_gamma, int64_t features) : inv_var(features) {
    // Summed once per call, in double: a running float32 sum over 1e5 pixels would lose ~1e-3 relative,
    // far more than the per-sample sums around it.
    double constants = 0;
    for (int64_t j = 0; j < features; ++j) {
      const acc value = static_cast<acc>(log_gamma[j]);
      inv_var[j] = inverse_variance(value);
      constants += static_cast<double>(gaussian_nll_constant_term(value));
    }
    constant_sum = static_cast<acc>(constants);
  }
};

template <typename scalar_t>
void gaussian_nll_forward(const GaussianNllParams<scalar_t>& p) {
  using acc = acc_t<scalar_t>;
  const acc features = static_cast<acc>(p.features);
  std::vector<acc> totals(p.batch);
  switch (p.layout) {
    case LogGammaLayout::kScalar:
    case LogGammaLayout::kPerSample: {
      const bool per_sample = p.layout == LogGammaLayout::kPerSample;
      auto row_chunk_sum = [&](int64_t row, int64_t begin, int64_t end) {
        const acc inv_var = inverse_variance(static_cast<acc>(p.log_gamma[per_sample ? row : 0]));
        return residual_sum<scalar_t, acc>(p.x + row * p.features, p.x_hat + row * p.features, inv_var, nullptr,
                                           begin, end);
      };
      deterministic_row_sums<acc>(p.batch, p.features, row_chunk_sum, totals.data());
      for (int64_t b = 0; b < p.batch; ++b) {
        const acc log_gamma = static_cast<acc>(p.log_gamma[per_sample ? b : 0]);
        totals[b] += features * gaussian_nll_constant_term(log_gamma);
      }
      break;
    }
    case LogGammaLayout::kPerFeature: {
      const FeatureLogGamma<scalar_t> feature(p.log_gamma, p.features);
      auto row_chunk_sum = [&](int64_t row, int64_t begin, int64_t end) {
        return residual_sum<scalar_t, acc>(p.x + row * p.features, p.x_hat + row * p.features, acc(0),
                                           feature.inv_var.data(), begin, end);
      };
      deterministic_row_sums<acc>(p.batch, p.features, row_chunk_sum, totals.data());
      for (int64_t b = 0; b < p.batch; ++b) totals[b] += feature.constant_sum;
      break;
    }
    case LogGammaLayout::kFull: {
      auto chunk_sum_full = [&](int64_t row, int64_t begin, int64_t end) {
        const int64_t base = row * p.features;
        return chunk_sum<acc>(
            base + begin, base + end,
            [&](int64_t j) {
              return gaussian_nll_term(load_acc(p.x + j), load_acc(p.x_hat + j), load_acc(p.log_gamma + j));
            },
            [&](int64_t j) {
              return gaussian_nll_term(static_cast<acc>(p.x[j]), static_cast<acc>(p.x_hat[j]),
                                       static_cast<acc>(p.log_gamma[j]));
            });
      };
      deterministic_row_sums<acc>(p.batch, p.features, chunk_sum_full, totals.data());
      break;
    }
  }
  for (int64_t b = 0; b < p.batch; ++b) p.per_sample[b] = static_cast<scalar_t>(totals[b]);
}

// Writes grad_x_hat = grad_row * (x_hat - x) * inv_var over [begin, end) of one row and returns
// sum_j (x - x_hat)^2 * inv_var there (the data part of d/d log_gamma).
template <typename scalar_t, typename acc>
acc grad_x_hat_and_residuals(const scalar_t* x, const scalar_t* x_hat, scalar_t* grad_x_hat, acc grad_row,
                             acc inv_var, int64_t begin, int64_t end) {
  const Vec<acc> grad_v(grad_row);
  const Vec<acc> inv_var_v(inv_var);
  return chunk_sum<acc>(
      begin, end,
      [&](int64_t j) {
        const Vec<acc> xj = load_acc(x + j);
        const Vec<acc> x_hat_j = load_acc(x_hat + j);
        store_acc(grad_x_hat + j, grad_v * gaussian_nll_grad_x_hat(xj, x_hat_j, inv_var_v));
        return Vec<acc>(acc(2)) * gaussian_nll_residual_term(xj, x_hat_j, inv_var_v);
      },
      [&](int64_t j) {
        const acc xj = static_cast<acc>(x[j]);
        const acc x_hat_j = static_cast<acc>(x_hat[j]);
        grad_x_hat[j] = static_cast<scalar_t>(grad_row * gaussian_nll_grad_x_hat(xj, x_hat_j, inv_var));
        return acc(2) * gaussian_nll_residual_term(xj, x_hat_j, inv_var);
      });
}

template <typename scalar_t>
void gaussian_nll_backward(const GaussianNllBackwardParams<scalar_t>& p) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t width = Vec<acc>::size();
  const acc features = static_cast<acc>(p.features);
  switch (p.layout) {
    case LogGammaLayout::kScalar:
    case LogGammaLayout::kPerSample: {
      // d per_sample[b] / d log_gamma = D - sum_j (x - x_hat)^2 / gamma^2 (REFERENCE.md section 1).
      const bool per_sample = p.layout == LogGammaLayout::kPerSample;
      std::vector<acc> residuals(p.batch);
      auto row_chunk_sum = [&](int64_t row, int64_t begin, int64_t end) {
        const int64_t base = row * p.features;
        const acc inv_var = inverse_variance(static_cast<acc>(p.log_gamma[per_sample ? row : 0]));
        return grad_x_hat_and_residuals<scalar_t, acc>(p.x + base, p.x_hat + base, p.grad_x_hat + base,
                                                       static_cast<acc>(p.grad[row]), inv_var, begin, end);
      };
      deterministic_row_sums<acc>(p.batch, p.features, row_chunk_sum, residuals.data());
      acc scalar_total = 0;
      for (int64_t b = 0; b < p.batch; ++b) {
        const acc grad_log_gamma = static_cast<acc>(p.grad[b]) * (features - residuals[b]);
        if (per_sample) {
          p.grad_log_gamma[b] = static_cast<scalar_t>(grad_log_gamma);
        } else {
          scalar_total += grad_log_gamma;
        }
      }
      if (!per_sample) p.grad_log_gamma[0] = static_cast<scalar_t>(scalar_total);
      break;
    }
    case LogGammaLayout::kPerFeature: {
      // grad_log_gamma[j] = sum_b grad[b] * (1 - (x - x_hat)^2 / gamma_j^2): partial column sums per block
      // of kNllRowBlock rows, added in block order.
      const FeatureLogGamma<scalar_t> feature(p.log_gamma, p.features);
      const int64_t row_blocks = (p.batch + kNllRowBlock - 1) / kNllRowBlock;
      const int64_t col_chunks = (p.features + kReduceChunk - 1) / kReduceChunk;
      std::vector<acc> partial(row_blocks * p.features, acc(0));
      at::parallel_for(0, row_blocks * col_chunks, 1, [&](int64_t item_begin, int64_t item_end) {
        for (int64_t item = item_begin; item < item_end; ++item) {
          const int64_t block = item / col_chunks;
          const int64_t col_begin = (item % col_chunks) * kReduceChunk;
          const int64_t col_end = std::min(p.features, col_begin + kReduceChunk);
          acc* column_sums = partial.data() + block * p.features;
          for (int64_t row = block * kNllRowBlock; row < std::min(p.batch, (block + 1) * kNllRowBlock); ++row) {
            const int64_t base = row * p.features;
            const acc grad_row = static_cast<acc>(p.grad[row]);
            const Vec<acc> grad_v(grad_row);
            int64_t j = col_begin;
            for (; j + width <= col_end; j += width) {
              const Vec<acc> inv_var = Vec<acc>::loadu(feature.inv_var.data() + j);
              const Vec<acc> xj = load_acc(p.x + base + j);
              const Vec<acc> x_hat_j = load_acc(p.x_hat + base + j);
              store_acc(p.grad_x_hat + base + j, grad_v * gaussian_nll_grad_x_hat(xj, x_hat_j, inv_var));
              (Vec<acc>::loadu(column_sums + j) + grad_v * gaussian_nll_grad_log_gamma(xj, x_hat_j, inv_var))
                  .store(column_sums + j);
            }
            for (; j < col_end; ++j) {
              const acc xj = static_cast<acc>(p.x[base + j]);
              const acc x_hat_j = static_cast<acc>(p.x_hat[base + j]);
              p.grad_x_hat[base + j] =
                  static_cast<scalar_t>(grad_row * gaussian_nll_grad_x_hat(xj, x_hat_j, feature.inv_var[j]));
              column_sums[j] += grad_row * gaussian_nll_grad_log_gamma(xj, x_hat_j, feature.inv_var[j]);
            }
          }
        }
      });
      at::parallel_for(0, p.features, kGrainElements, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          acc total = 0;
          for (int64_t block = 0; block < row_blocks; ++block) total += partial[block * p.features + j];
          p.grad_log_gamma[j] = static_cast<scalar_t>(total);
        }
      });
      break;
    }
    case LogGammaLayout::kFull: {
      parallel_row_segments(p.batch, p.features, [&](int64_t row, int64_t begin, int64_t end) {
        const int64_t base = row * p.features;
        const acc grad_row = static_cast<acc>(p.grad[row]);
        const Vec<acc> grad_v(grad_row);
        int64_t j = base + begin;
        for (; j + width <= base + end; j += width) {
          const Vec<acc> inv_var = inverse_variance(load_acc(p.log_gamma + j));
          const Vec<acc> xj = load_acc(p.x + j);
          const Vec<acc> x_hat_j = load_acc(p.x_hat + j);
          store_acc(p.grad_x_hat + j, grad_v * gaussian_nll_grad_x_hat(xj, x_hat_j, inv_var));
          store_acc(p.grad_log_gamma + j, grad_v * gaussian_nll_grad_log_gamma(xj, x_hat_j, inv_var));
        }
        for (; j < base + end; ++j) {
          const acc inv_var = inverse_variance(static_cast<acc>(p.log_gamma[j]));
          const acc xj = static_cast<acc>(p.x[j]);
          const acc x_hat_j = static_cast<acc>(p.x_hat[j]);
          p.grad_x_hat[j] = static_cast<scalar_t>(grad_row * gaussian_nll_grad_x_hat(xj, x_hat_j, inv_var));
          p.grad_log_gamma[j] = static_cast<scalar_t>(grad_row * gaussian_nll_grad_log_gamma(xj, x_hat_j, inv_var));
        }
      });
      break;
    }
  }
}

}  // namespace cpu
}  // namespace vaefast
