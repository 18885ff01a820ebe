// CPU kernels of vaefast::kernel_sum_self and vaefast::kernel_sum_cross: sums of a pairwise kernel over the
// rows of x [n, d] and y [m, d], and their gradients, without ever forming the [n, m] kernel matrix.
//
// Tiling. Both operands are first packed into the accumulation type (O((n + m) d) extra memory):
//   rows:   [count, padded_dim], zero-padded to whole vectors (the gradient loops run over features);
//   panels: [num_panels, d, kPanelWidth], kPanelWidth rows stored feature-major, so that one vector load
//           holds one feature of kPanelWidth rows and the distance loop needs no horizontal sums.
// A work item is a block of kBlockRows rows of the left operand against every panel of the right one; a
// panel (d * kPanelWidth values, 8 KB for d = 64) and the block's rows stay in L1 while kPairRows rows are
// paired with the panel at once (each panel load serves two rows, each broadcast four vectors).
//
// Determinism: the work items are fixed row blocks, each writes its own slot (a double partial sum, or its
// rows of the gradient), and the slots are added in block order: same bits whatever the thread count.
#pragma once

#include "../common/params.h"
#include "cpu_common.h"
// After cpu_common.h: the RBF's math_exp must see the Vec overloads declared there.
#include "../common/mmd_math.h"

namespace vaefast {
namespace cpu {

constexpr int kPanelVecs = 4;
constexpr int kPairRows = 2;
constexpr int64_t kBlockRows = 32;

template <typename acc>
constexpr int64_t panel_width() {
  return kPanelVecs * Vec<acc>::size();
}

// One operand in the two layouts the pair loops read (see the header comment); either may be left empty.
template <typename acc>
struct PackedOperand {
  std::vector<acc> rows;    // [count, padded_dim]
  std::vector<acc> panels;  // [num_panels, d, panel_width]
  int64_t count = 0;
  int64_t d = 0;
  int64_t padded_dim = 0;
  int64_t num_panels = 0;

  const acc* row(int64_t i) const { return rows.data() + i * padded_dim; }
  const acc* panel(int64_t p) const { return panels.data() + p * d * panel_width<acc>(); }
};

template <typename acc, typename scalar_t>
PackedOperand<acc> pack_operand(const scalar_t* data, int64_t count, int64_t d, bool with_rows,
                                bool with_panels) {
  constexpr int64_t width = panel_width<acc>();
  PackedOperand<acc> packed;
  packed.count = count;
  packed.d = d;
  packed.padded_dim = (d + Vec<acc>::size() - 1) / Vec<acc>::size() * Vec<acc>::size();
  packed.num_panels = (count + width - 1) / width;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, d));
  if (with_rows) {
    packed.rows.assign(count * packed.padded_dim, acc(0));
    at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t k = 0; k < d; ++k) packed.rows[i * packed.padded_dim + k] = static_cast<acc>(data[i * d + k]);
      }
    });
  }
  if (with_panels) {
    // Rows past `count` in the last panel are zeros: finite, so their (masked) lanes never make a NaN.
    packed.panels.assign(packed.num_panels * d * width, acc(0));
    at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc* panel = packed.panels.data() + (i / width) * d * width + i % width;
        for (int64_t k = 0; k < d; ++k) panel[k * width] = static_cast<acc>(data[i * d + k]);
      }
    });
  }
  return packed;
}

// statistic[r][v] = the pair statistic of left row rows[r] with the panel's rows v * W .. v * W + W - 1:
// ||a - b||^2, computed as sum_k (a_k - b_k)^2 (exact up to rounding, no cancellation of norms), or a.b.
template <bool dot_product, int num_rows, typename acc>
inline void pair_statistics(const acc* const* rows, const acc* panel, int64_t d,
                            Vec<acc> (&statistic)[num_rows][kPanelVecs]) {
  constexpr int64_t width = Vec<acc>::size();
  for (int r = 0; r < num_rows; ++r) {
    for (int v = 0; v < kPanelVecs; ++v) statistic[r][v] = Vec<acc>(acc(0));
  }
  for (int64_t k = 0; k < d; ++k) {
    Vec<acc> column[kPanelVecs];
    for (int v = 0; v < kPanelVecs; ++v) column[v] = Vec<acc>::loadu(panel + (k * kPanelVecs + v) * width);
    for (int r = 0; r < num_rows; ++r) {
      const Vec<acc> a_k(rows[r][k]);
      for (int v = 0; v < kPanelVecs; ++v) {
        if constexpr (dot_product) {
          statistic[r][v] = at::vec::fmadd(a_k, column[v], statistic[r][v]);
        } else {
          const Vec<acc> diff = column[v] - a_k;
          statistic[r][v] = at::vec::fmadd(diff, diff, statistic[r][v]);
        }
      }
    }
  }
}

// Sum of k(a_i, b_j) over the pairs of left rows [row_begin, row_end): all j for the cross sum; for the
// self sum (a is b) 2 * sum_{j > i} plus the diagonal when it is included.
template <PairKernel kernel, typename acc>
double block_kernel_sum(const PackedOperand<acc>& a, const PackedOperand<acc>& b, int64_t row_begin,
                        int64_t row_end, bool self_pairs, bool exclude_diagonal,
                        const PairKernelConstants<acc>& constants) {
  constexpr int64_t width = panel_width<acc>();
  constexpr bool dot_product = uses_dot_product<kernel>();
  double row_totals[kBlockRows] = {};
  // The self sum visits j > i only: panels before the block's first row hold no such pair.
  const int64_t first_panel = self_pairs ? row_begin / width : 0;
  for (int64_t p = first_panel; p < b.num_panels; ++p) {
    const int64_t panel_begin = p * width;
    const bool partial_panel = panel_begin + width > b.count;
    auto pair_rows = [&](int64_t i, auto rows_tag) {
      constexpr int num_rows = decltype(rows_tag)::value;
      const acc* rows[num_rows];
      for (int r = 0; r < num_rows; ++r) rows[r] = a.row(i + r);
      Vec<acc> statistic[num_rows][kPanelVecs];
      pair_statistics<dot_product>(rows, b.panel(p), a.d, statistic);
      for (int r = 0; r < num_rows; ++r) {
        Vec<acc> values[kPanelVecs];
        for (int v = 0; v < kPanelVecs; ++v) values[v] = pair_kernel_value<kernel>(statistic[r][v], constants);
        const int64_t row = i + r;
        acc total = 0;
        if (!partial_panel && !(self_pairs && panel_begin <= row)) {
          total = lane_sum((values[0] + values[1]) + (values[2] + values[3]));
        } else {
          // Some lanes are padding or (self sum) pairs j <= i: add the valid ones only, so that a masked
          // lane can never bring a NaN in.
          alignas(64) acc lanes[width];
          for (int v = 0; v < kPanelVecs; ++v) values[v].store(lanes + v * Vec<acc>::size());
          const int64_t lane_end = std::min(width, b.count - panel_begin);
          const int64_t lane_begin = self_pairs ? std::max<int64_t>(0, row + 1 - panel_begin) : 0;
          for (int64_t lane = lane_begin; lane < lane_end; ++lane) total += lanes[lane];
        }
        row_totals[row - row_begin] += static_cast<double>(total);
      }
    };
    int64_t i = row_begin;
    for (; i + kPairRows <= row_end; i += kPairRows) pair_rows(i, std::integral_constant<int, kPairRows>{});
    for (; i < row_end; ++i) pair_rows(i, std::integral_constant<int, 1>{});
  }
  double block_total = 0;
  for (int64_t row = row_begin; row < row_end; ++row) {
    double row_total = row_totals[row - row_begin];
    if (self_pairs) {
      row_total *= 2;  // k is symmetric: each i < j pair stands for (i, j) and (j, i)
      if (!exclude_diagonal) {
        const acc* a_row = a.row(row);
        acc statistic = 0;
        for (int64_t k = 0; k < a.d; ++k) {
          // (a_k - a_k)^2 rather than a constant 0, so that a NaN or infinite row yields a NaN like the pairs do.
          statistic += dot_product ? a_row[k] * a_row[k] : (a_row[k] - a_row[k]) * (a_row[k] - a_row[k]);
        }
        row_total += static_cast<double>(pair_kernel_value<kernel>(statistic, constants));
      }
    }
    block_total += row_total;
  }
  return block_total;
}

template <PairKernel kernel, typename scalar_t>
void kernel_sum_forward_impl(const KernelSumParams<scalar_t>& p) {
  using acc = acc_t<scalar_t>;
  const auto constants = pair_kernel_constants<acc>(p.scale_constant, p.num_scales, p.d);
  const PackedOperand<acc> x_packed = pack_operand<acc>(p.x, p.n, p.d, true, p.self_pairs);
  const PackedOperand<acc> y_packed =
      p.self_pairs ? PackedOperand<acc>{} : pack_operand<acc>(p.y, p.m, p.d, false, true);
  const PackedOperand<acc>& right = p.self_pairs ? x_packed : y_packed;
  const int64_t num_blocks = (p.n + kBlockRows - 1) / kBlockRows;
  std::vector<double> block_totals(num_blocks);
  auto run_block = [&](int64_t block) {
    block_totals[block] = block_kernel_sum<kernel>(x_packed, right, block * kBlockRows,
                                                   std::min(p.n, (block + 1) * kBlockRows), p.self_pairs,
                                                   p.exclude_diagonal, constants);
  };
  if (p.self_pairs) {
    // Block b of the triangle holds about n - b * kBlockRows pairs per row: one task takes blocks t and
    // num_blocks - 1 - t, so that every task (and every thread's contiguous range of tasks) has equal work.
    at::parallel_for(0, (num_blocks + 1) / 2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        run_block(task);
        if (num_blocks - 1 - task != task) run_block(num_blocks - 1 - task);
      }
    });
  } else {
    at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) run_block(block);
    });
  }
  double total = 0;
  for (const double block_total : block_totals) total += block_total;
  p.out[0] = total;
}

// gradient += sum_j weight[j] * (a - b_j) (distance kernels) or sum_j weight[j] * b_j ("poly") over the
// features [0, num_vecs * W) of one chunk, with the chunk's totals held in registers across the j loop.
template <bool dot_product, int num_vecs, typename acc>
inline void accumulate_gradient_chunk(acc* gradient, const acc* a_row, const acc* b_rows, int64_t b_stride,
                                      const acc* weight, int64_t count) {
  constexpr int64_t width = Vec<acc>::size();
  Vec<acc> total[num_vecs];
  Vec<acc> a[num_vecs];
  for (int u = 0; u < num_vecs; ++u) {
    total[u] = Vec<acc>::loadu(gradient + u * width);
    if constexpr (!dot_product) a[u] = Vec<acc>::loadu(a_row + u * width);
  }
  for (int64_t j = 0; j < count; ++j) {
    const Vec<acc> w(weight[j]);
    const acc* b = b_rows + j * b_stride;
    for (int u = 0; u < num_vecs; ++u) {
      // (a - b_j) per pair rather than (sum_j w_j) a - sum_j w_j b_j: the latter cancels catastrophically
      // when the rows sit far from the origin compared with their spread.
      const Vec<acc> term = dot_product ? Vec<acc>::loadu(b + u * width) : a[u] - Vec<acc>::loadu(b + u * width);
      total[u] = at::vec::fmadd(w, term, total[u]);
    }
  }
  for (int u = 0; u < num_vecs; ++u) total[u].store(gradient + u * width);
}

template <bool dot_product, typename acc>
inline void accumulate_gradient(acc* gradient, const acc* a_row, const acc* b_rows, int64_t padded_dim,
                                const acc* weight, int64_t count) {
  constexpr int64_t width = Vec<acc>::size();
  constexpr int chunk_vecs = 4;
  int64_t k = 0;
  for (; k + chunk_vecs * width <= padded_dim; k += chunk_vecs * width) {
    accumulate_gradient_chunk<dot_product, chunk_vecs>(gradient + k, a_row + k, b_rows + k, padded_dim, weight, count);
  }
  for (; k < padded_dim; k += width) {
    accumulate_gradient_chunk<dot_product, 1>(gradient + k, a_row + k, b_rows + k, padded_dim, weight, count);
  }
}

// out[i] = scale * sum_j dk(a_i, b_j) / dk(statistic) * d statistic / d a_i without the constant factor of
// the statistic's derivative (2 for ||a - b||^2), which the caller folds into scale; j runs over every row
// of b (self: a is b, without j == i when exclude_diagonal). One work item per block of rows of a.
template <PairKernel kernel, typename acc, typename scalar_t>
void row_gradients(const PackedOperand<acc>& a, const PackedOperand<acc>& b, bool self_pairs,
                   bool exclude_diagonal, acc scale, const PairKernelConstants<acc>& constants, scalar_t* out) {
  constexpr int64_t width = panel_width<acc>();
  constexpr bool dot_product = uses_dot_product<kernel>();
  const int64_t num_blocks = (a.count + kBlockRows - 1) / kBlockRows;
  at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    std::vector<acc> gradient(kBlockRows * a.padded_dim);
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t row_begin = block * kBlockRows;
      const int64_t row_end = std::min(a.count, row_begin + kBlockRows);
      std::fill(gradient.begin(), gradient.end(), acc(0));
      for (int64_t p = 0; p < b.num_panels; ++p) {
        const int64_t panel_begin = p * width;
        const int64_t count = std::min(width, b.count - panel_begin);
        auto pair_rows = [&](int64_t i, auto rows_tag) {
          constexpr int num_rows = decltype(rows_tag)::value;
          const acc* rows[num_rows];
          for (int r = 0; r < num_rows; ++r) rows[r] = a.row(i + r);
          Vec<acc> statistic[num_rows][kPanelVecs];
          pair_statistics<dot_product>(rows, b.panel(p), a.d, statistic);
          for (int r = 0; r < num_rows; ++r) {
            alignas(64) acc weight[width];
            for (int v = 0; v < kPanelVecs; ++v) {
              pair_kernel_slope<kernel>(statistic[r][v], constants).store(weight + v * Vec<acc>::size());
            }
            const int64_t row = i + r;
            if (self_pairs && exclude_diagonal && row >= panel_begin && row < panel_begin + count) {
              weight[row - panel_begin] = 0;
            }
            accumulate_gradient<dot_product>(gradient.data() + (row - row_begin) * a.padded_dim, rows[r],
                                             b.row(panel_begin), a.padded_dim, weight, count);
          }
        };
        int64_t i = row_begin;
        for (; i + kPairRows <= row_end; i += kPairRows) pair_rows(i, std::integral_constant<int, kPairRows>{});
        for (; i < row_end; ++i) pair_rows(i, std::integral_constant<int, 1>{});
      }
      for (int64_t row = row_begin; row < row_end; ++row) {
        const acc* row_gradient = gradient.data() + (row - row_begin) * a.padded_dim;
        for (int64_t k = 0; k < a.d; ++k) out[row * a.d + k] = static_cast<scalar_t>(scale * row_gradient[k]);
      }
    }
  });
}

template <PairKernel kernel, typename scalar_t>
void kernel_sum_backward_impl(const KernelSumBackwardParams<scalar_t>& p) {
  using acc = acc_t<scalar_t>;
  const auto constants = pair_kernel_constants<acc>(p.scale_constant, p.num_scales, p.d);
  // d ||a - b||^2 / da = 2 (a - b), d a.b / da = b; the self sum has x on both sides of every pair: twice.
  const acc statistic_factor = uses_dot_product<kernel>() ? acc(1) : acc(2);
  const acc grad = static_cast<acc>(*p.grad);
  const PackedOperand<acc> x_packed = pack_operand<acc>(p.x, p.n, p.d, true, true);
  if (p.self_pairs) {
    row_gradients<kernel>(x_packed, x_packed, true, p.exclude_diagonal, 2 * statistic_factor * grad, constants,
                          p.grad_x);
    return;
  }
  const PackedOperand<acc> y_packed = pack_operand<acc>(p.y, p.m, p.d, true, true);
  row_gradients<kernel>(x_packed, y_packed, false, false, statistic_factor * grad, constants, p.grad_x);
  // k is symmetric, so d k(x_i, y_j) / d y_j is the left-row gradient with the roles swapped.
  row_gradients<kernel>(y_packed, x_packed, false, false, statistic_factor * grad, constants, p.grad_y);
}

template <typename Params, typename Run>
void dispatch_pair_kernel(const Params& p, const Run& run) {
  switch (p.kernel) {
    case PairKernel::kImq:
      run(std::integral_constant<PairKernel, PairKernel::kImq>{});
      break;
    case PairKernel::kRbf:
      run(std::integral_constant<PairKernel, PairKernel::kRbf>{});
      break;
    case PairKernel::kPoly:
      run(std::integral_constant<PairKernel, PairKernel::kPoly>{});
      break;
  }
}

template <typename scalar_t>
void kernel_sum_forward(const KernelSumParams<scalar_t>& p) {
  dispatch_pair_kernel(p, [&](auto kernel) { kernel_sum_forward_impl<decltype(kernel)::value>(p); });
}

template <typename scalar_t>
void kernel_sum_backward(const KernelSumBackwardParams<scalar_t>& p) {
  dispatch_pair_kernel(p, [&](auto kernel) { kernel_sum_backward_impl<decltype(kernel)::value>(p); });
}

}  // namespace cpu
}  // namespace vaefast
