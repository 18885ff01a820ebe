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

// gradient += sum_j w_j * (a - b_j) (distance kernels) or sum_j w_j * b_j ("poly"), with w_j =
// weight[j * weight_stride], over the features [0, num_vecs * W) of one chunk, with the chunk's totals held
// in registers across the j loop.
// Even and odd j go to two sets of totals, added at the end: num_vecs chains of fused multiply-adds alone
// would wait on the FMA latency (4 cycles, 2 units: 8 chains keep them busy).
constexpr int kChunkVecs = 4;

template <bool dot_product, int num_vecs, typename acc>
inline void accumulate_gradient_chunk(acc* gradient, const acc* a_row, const acc* b_rows, int64_t b_stride,
                                      const acc* weight, int64_t weight_stride, int64_t count) {
  constexpr int64_t width = Vec<acc>::size();
  Vec<acc> even[num_vecs];
  Vec<acc> odd[num_vecs];
  Vec<acc> a[num_vecs];
  // Unrolled before GCC can turn it into memcpy/memset of stack arrays, which kept the totals in memory
  // (a store and reload at every call; the call is per row and chunk, 16 iterations long).
#pragma GCC unroll 16
  for (int u = 0; u < num_vecs; ++u) {
    even[u] = Vec<acc>::loadu(gradient + u * width);
    odd[u] = Vec<acc>(acc(0));
    if constexpr (!dot_product) a[u] = Vec<acc>::loadu(a_row + u * width);
  }
  // (a - b_j) per pair rather than (sum_j w_j) a - sum_j w_j b_j: the latter cancels catastrophically when
  // the rows sit far from the origin compared with their spread.
  int64_t j = 0;
  for (; j + 2 <= count; j += 2) {
    const Vec<acc> w_even(weight[j * weight_stride]);
    const Vec<acc> w_odd(weight[(j + 1) * weight_stride]);
    const acc* b_even = b_rows + j * b_stride;
    const acc* b_odd = b_even + b_stride;
    for (int u = 0; u < num_vecs; ++u) {
      Vec<acc> term_even = Vec<acc>::loadu(b_even + u * width);
      Vec<acc> term_odd = Vec<acc>::loadu(b_odd + u * width);
      if constexpr (!dot_product) {
        term_even = a[u] - term_even;
        term_odd = a[u] - term_odd;
      }
      even[u] = at::vec::fmadd(w_even, term_even, even[u]);
      odd[u] = at::vec::fmadd(w_odd, term_odd, odd[u]);
    }
  }
  if (j < count) {
    const Vec<acc> w(weight[j * weight_stride]);
    for (int u = 0; u < num_vecs; ++u) {
      Vec<acc> term = Vec<acc>::loadu(b_rows + j * b_stride + u * width);
      if constexpr (!dot_product) term = a[u] - term;
      even[u] = at::vec::fmadd(w, term, even[u]);
    }
  }
  for (int u = 0; u < num_vecs; ++u) (even[u] + odd[u]).store(gradient + u * width);
}

// The gradient rows of a whole block, feature chunk by feature chunk: gradient[r] += sum_j w_rj (a_r - b_j)
// for r < a_count, j < b_count, where w_rj = weight[r * r_stride + j * j_stride] (the tile's slopes, read
// as they are or transposed); rows of a and b and of the gradient padded_dim apart. Chunks outermost keep
// a tile's working set in L1 (at d = 64 in float, all rows of a tile, its gradients and its weights take
// 40 KB; one chunk of 32 features, 20 KB).
template <bool dot_product, typename acc>
inline void accumulate_block_chunk(int64_t k, acc* gradient, const acc* a_rows, int64_t a_count, const acc* b_rows,
                                   int64_t b_count, int64_t padded_dim, const acc* weight, int64_t r_stride,
                                   int64_t j_stride) {
  constexpr int64_t width = Vec<acc>::size();
  for (int64_t r = 0; r < a_count; ++r) {
    const int64_t offset = r * padded_dim + k;
    const acc* row_weight = weight + r * r_stride;
    if (k + kChunkVecs * width <= padded_dim) {
      accumulate_gradient_chunk<dot_product, kChunkVecs>(gradient + offset, a_rows + offset, b_rows + k, padded_dim,
                                                         row_weight, j_stride, b_count);
    } else {
      for (int64_t u = 0; k + u * width < padded_dim; ++u) {
        accumulate_gradient_chunk<dot_product, 1>(gradient + offset + u * width, a_rows + offset + u * width,
                                                  b_rows + k + u * width, padded_dim, row_weight, j_stride, b_count);
      }
    }
  }
}

// Calls f(i, std::integral_constant<int, rows>) for the rows [row_begin, row_end) of a block in groups of
// kPairRows, then singly for the remainder.
template <typename F>
inline void for_row_groups(int64_t row_begin, int64_t row_end, const F& f) {
  int64_t i = row_begin;
  for (; i + kPairRows <= row_end; i += kPairRows) f(i, std::integral_constant<int, kPairRows>{});
  for (; i < row_end; ++i) f(i, std::integral_constant<int, 1>{});
}

// The backward works on tiles: kBlockRows rows of a (block I) against kBlockRows rows of b (block J, one or
// more whole panels). Per tile the slopes w_ij = dk/d(statistic) are computed once into a
// [kBlockRows, kBlockRows] buffer and serve both sides:
//   grad_a[i] += sum_j w_ij (a_i - b_j)   (every tile)
//   grad_b[j] += sum_i w_ij (b_j - a_i)   (with_b_side: the same buffer read transposed, the same accumulation)
// ("poly": w_ij b_j and w_ij a_i). The gradients are kept in the accumulation type, [count, padded_dim].
static_assert(kBlockRows % panel_width<float>() == 0 && kBlockRows % panel_width<double>() == 0,
              "a block of b rows must be whole panels");

struct Tile {
  int64_t a_block;
  int64_t b_block;
};

template <PairKernel kernel, typename acc>
void tile_gradients(const PackedOperand<acc>& a, const PackedOperand<acc>& b, Tile tile, bool with_b_side,
                    bool zero_diagonal, const PairKernelConstants<acc>& constants, acc* grad_a, acc* grad_b) {
  constexpr int64_t width = panel_width<acc>();
  constexpr bool dot_product = uses_dot_product<kernel>();
  const int64_t a_begin = tile.a_block * kBlockRows;
  const int64_t a_count = std::min(kBlockRows, a.count - a_begin);
  const int64_t b_begin = tile.b_block * kBlockRows;
  const int64_t b_count = std::min(kBlockRows, b.count - b_begin);
  alignas(64) acc weight[kBlockRows][kBlockRows];
  for (int64_t p = b_begin / width; p * width < b_begin + b_count; ++p) {
    const int64_t column = p * width - b_begin;
    for_row_groups(a_begin, a_begin + a_count, [&](int64_t i, auto rows_tag) {
      constexpr int num_rows = decltype(rows_tag)::value;
      const acc* rows[num_rows];
      for (int r = 0; r < num_rows; ++r) rows[r] = a.row(i + r);
      Vec<acc> statistic[num_rows][kPanelVecs];
      pair_statistics<dot_product>(rows, b.panel(p), a.d, statistic);
      for (int r = 0; r < num_rows; ++r) {
        acc* row_weight = weight[i + r - a_begin] + column;
        for (int v = 0; v < kPanelVecs; ++v) {
          pair_kernel_slope<kernel>(statistic[r][v], constants).store(row_weight + v * Vec<acc>::size());
        }
      }
    });
  }
  // Lanes past b_count hold the slopes of zero padding rows: the loops below stop at the counts.
  if (zero_diagonal) {
    for (int64_t r = 0; r < a_count; ++r) weight[r][r] = 0;
  }
  const acc* a_rows = a.row(a_begin);
  const acc* b_rows = b.row(b_begin);
  for (int64_t k = 0; k < a.padded_dim; k += kChunkVecs * Vec<acc>::size()) {
    accumulate_block_chunk<dot_product>(k, grad_a + a_begin * a.padded_dim, a_rows, a_count, b_rows, b_count,
                                        a.padded_dim, &weight[0][0], kBlockRows, 1);
    if (with_b_side) {
      // b's side reads the slopes transposed: w_ji = weight[i][j].
      accumulate_block_chunk<dot_product>(k, grad_b + b_begin * b.padded_dim, b_rows, b_count, a_rows, a_count,
                                          b.padded_dim, &weight[0][0], 1, kBlockRows);
    }
  }
}

// Runs the rounds' tiles, round after round (tiles(round, list) fills the round's list): within a round no
// two tiles touch the same block of rows, so the tiles of a round run in parallel without a race, and every
// block receives its contributions in round order whatever the thread count: same bits.
template <typename Tiles, typename RunTile>
void run_rounds(int64_t num_rounds, const Tiles& tiles, const RunTile& run_tile) {
  std::vector<Tile> round_tiles;
  for (int64_t round = 0; round < num_rounds; ++round) {
    round_tiles.clear();
    tiles(round, round_tiles);
    at::parallel_for(0, static_cast<int64_t>(round_tiles.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) run_tile(round_tiles[t]);
    });
  }
}

// The self sum's gradient in one pass over the triangle: round 0 holds every block's diagonal tile (both
// sides of its pairs inside the block, a side only); then a round-robin tournament (the circle method; a
// "bye" block when the count is odd) pairs every two blocks exactly once, each block in at most one tile
// per round.
template <PairKernel kernel, typename acc>
void self_gradients(const PackedOperand<acc>& x, bool exclude_diagonal, const PairKernelConstants<acc>& constants,
                    acc* gradient) {
  const int64_t num_blocks = (x.count + kBlockRows - 1) / kBlockRows;
  const int64_t players = num_blocks + num_blocks % 2;  // the last one is the bye when num_blocks is odd
  auto tiles = [&](int64_t round, std::vector<Tile>& list) {
    if (round == 0) {
      for (int64_t block = 0; block < num_blocks; ++block) list.push_back({block, block});
      return;
    }
    const int64_t ring = players - 1;  // players 0 .. ring - 1 rotate; player `ring` stays put
    const int64_t r = round - 1;
    auto add = [&](int64_t first, int64_t second) {
      if (first < num_blocks && second < num_blocks) list.push_back({std::min(first, second), std::max(first, second)});
    };
    add(ring, r);
    for (int64_t k = 1; k < players / 2; ++k) add((r + k) % ring, (r - k + ring) % ring);
  };
  run_rounds(players, tiles, [&](Tile tile) {
    const bool diagonal = tile.a_block == tile.b_block;
    tile_gradients<kernel>(x, x, tile, !diagonal, diagonal && exclude_diagonal, constants, gradient, gradient);
  });
}

// Fewest blocks on the smaller side for which the cross sum's gradient runs as rounds of tiles: a round
// holds that many tiles, the parallel width. Below it each side is computed on its own (twice the pair
// statistics, but as wide as the larger side). A constant, never the thread count: same bits.
constexpr int64_t kMinTilesPerRound = 8;

// The cross sum's gradients: in one pass when both sides have kMinTilesPerRound blocks or more (round r
// pairs block I of a with block (I + r) mod max(blocks) of b: every pair of blocks once, each block at most
// once per round); else per side, each side's blocks in parallel against every block of the other.
template <PairKernel kernel, typename acc>
void cross_gradients(const PackedOperand<acc>& a, const PackedOperand<acc>& b,
                     const PairKernelConstants<acc>& constants, acc* grad_a, acc* grad_b) {
  const int64_t a_blocks = (a.count + kBlockRows - 1) / kBlockRows;
  const int64_t b_blocks = (b.count + kBlockRows - 1) / kBlockRows;
  if (std::min(a_blocks, b_blocks) >= kMinTilesPerRound) {
    const int64_t ring = std::max(a_blocks, b_blocks);
    auto tiles = [&](int64_t round, std::vector<Tile>& list) {
      for (int64_t block = 0; block < ring; ++block) {
        const int64_t other = (block + round) % ring;
        if (block < a_blocks && other < b_blocks) list.push_back({block, other});
      }
    };
    run_rounds(ring, tiles, [&](Tile tile) {
      tile_gradients<kernel>(a, b, tile, true, false, constants, grad_a, grad_b);
    });
    return;
  }
  auto one_side = [&](const PackedOperand<acc>& left, const PackedOperand<acc>& right, int64_t left_blocks,
                      int64_t right_blocks, acc* gradient) {
    at::parallel_for(0, left_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        for (int64_t other = 0; other < right_blocks; ++other) {
          tile_gradients<kernel>(left, right, Tile{block, other}, false, false, constants, gradient,
                                 static_cast<acc*>(nullptr));
        }
      }
    });
  };
  one_side(a, b, a_blocks, b_blocks, grad_a);
  // k is symmetric, so d k(a_i, b_j) / d b_j is the left-row gradient with the roles swapped.
  one_side(b, a, b_blocks, a_blocks, grad_b);
}

// out = scale * gradient (kept [count, padded_dim] in the accumulation type), in out's layout and type.
template <typename acc, typename scalar_t>
void store_gradient(const std::vector<acc>& gradient, const PackedOperand<acc>& operand, acc scale, scalar_t* out) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, operand.d));
  at::parallel_for(0, operand.count, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const acc* row_gradient = gradient.data() + row * operand.padded_dim;
      for (int64_t k = 0; k < operand.d; ++k) out[row * operand.d + k] = static_cast<scalar_t>(scale * row_gradient[k]);
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
  std::vector<acc> grad_x(x_packed.count * x_packed.padded_dim, acc(0));
  if (p.self_pairs) {
    self_gradients<kernel>(x_packed, p.exclude_diagonal, constants, grad_x.data());
    store_gradient(grad_x, x_packed, 2 * statistic_factor * grad, p.grad_x);
    return;
  }
  const PackedOperand<acc> y_packed = pack_operand<acc>(p.y, p.m, p.d, true, true);
  std::vector<acc> grad_y(y_packed.count * y_packed.padded_dim, acc(0));
  cross_gradients<kernel>(x_packed, y_packed, constants, grad_x.data(), grad_y.data());
  store_gradient(grad_x, x_packed, statistic_factor * grad, p.grad_x);
  store_gradient(grad_y, y_packed, statistic_factor * grad, p.grad_y);
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
