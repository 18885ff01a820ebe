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

#include <atomic>
#include <thread>
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

// Calls f(i, std::integral_constant<int, rows>) for the rows [row_begin, row_end) in groups of kPairRows,
// then singly for the remainder.
template <typename F>
inline void for_row_groups(int64_t row_begin, int64_t row_end, const F& f) {
  int64_t i = row_begin;
  for (; i + kPairRows <= row_end; i += kPairRows) f(i, std::integral_constant<int, kPairRows>{});
  for (; i < row_end; ++i) f(i, std::integral_constant<int, 1>{});
}

// ---- Tiles ----------------------------------------------------------------------------------------------
// All the work is done on tiles: kBlockRows rows of a (block I) against kBlockRows rows of b (block J, one
// or more whole panels). A tile yields the sum of its pair values and, when asked, its slopes
// w_ij = dk/d(statistic) in a [kBlockRows, kBlockRows] buffer that serves both sides' gradients:
//   grad_a[i] += sum_j w_ij (a_i - b_j)   (every tile)
//   grad_b[j] += sum_i w_ij (b_j - a_i)   (with_b_side: the same buffer read transposed)
// ("poly": w_ij b_j and w_ij a_i), the gradients kept in the accumulation type, [count, padded_dim].
static_assert(kBlockRows % panel_width<float>() == 0 && kBlockRows % panel_width<double>() == 0,
              "a block of b rows must be whole panels");

struct Tile {
  int64_t a_block;
  int64_t b_block;
};

template <typename acc>
using TileWeights = acc[kBlockRows][kBlockRows];

// T where a template argument must not be deduced (a nullptr weight below): C++20's std::type_identity,
// spelled out because torch 2.11 (the GPU machines') builds extensions as C++17.
template <typename T>
struct NonDeduced {
  using type = T;
};

// The sum of k over the tile's pairs, and with `weight` (else nullptr) their slopes. For a self sum a is b:
// an off-diagonal tile (I < J) stands for its pairs in both orders (twice its sum); the diagonal tile
// (I == J) adds each pair j > i twice and the pairs (i, i) once unless exclude_diagonal, while its slopes
// cover the whole square (0 on the diagonal when it is excluded), for a's side alone.
template <PairKernel kernel, typename acc>
double tile_values(const PackedOperand<acc>& a, const PackedOperand<acc>& b, Tile tile, bool self_pairs,
                   bool exclude_diagonal, const PairKernelConstants<acc>& constants,
                   typename NonDeduced<TileWeights<acc>>::type* weight) {
  constexpr int64_t width = panel_width<acc>();
  constexpr bool dot_product = uses_dot_product<kernel>();
  const int64_t a_begin = tile.a_block * kBlockRows;
  const int64_t a_count = std::min(kBlockRows, a.count - a_begin);
  const int64_t b_begin = tile.b_block * kBlockRows;
  const int64_t b_count = std::min(kBlockRows, b.count - b_begin);
  const bool diagonal = self_pairs && tile.a_block == tile.b_block;
  double row_totals[kBlockRows] = {};
  double diagonal_total = 0;
  for (int64_t p = b_begin / width; p * width < b_begin + b_count; ++p) {
    const int64_t column = p * width - b_begin;  // the tile column of the panel's first lane
    const int64_t lane_end = std::min(width, b_count - column);
    for_row_groups(0, a_count, [&](int64_t i, auto rows_tag) {
      constexpr int num_rows = decltype(rows_tag)::value;
      const acc* rows[num_rows];
      for (int r = 0; r < num_rows; ++r) rows[r] = a.row(a_begin + i + r);
      Vec<acc> statistic[num_rows][kPanelVecs];
      pair_statistics<dot_product>(rows, b.panel(p), a.d, statistic);
      for (int r = 0; r < num_rows; ++r) {
        const int64_t row = i + r;
        Vec<acc> values[kPanelVecs];
        for (int v = 0; v < kPanelVecs; ++v) {
          if (weight != nullptr) {
            Vec<acc> slope;
            pair_kernel_value_slope<kernel>(statistic[r][v], constants, &values[v], &slope);
            slope.store((*weight)[row] + column + v * Vec<acc>::size());
          } else {
            values[v] = pair_kernel_value<kernel>(statistic[r][v], constants);
          }
        }
        // The diagonal tile counts the pairs j > i of a row (lanes from row + 1 on) and its (i, i) apart.
        const int64_t lane_begin = diagonal ? std::clamp<int64_t>(row + 1 - column, 0, width) : 0;
        const bool holds_diagonal = diagonal && row >= column && row < column + width;
        acc total = 0;
        if (lane_begin == 0 && lane_end == width && !holds_diagonal) {
          total = lane_sum((values[0] + values[1]) + (values[2] + values[3]));
        } else {
          // Some lanes are padding or pairs counted elsewhere: add the valid ones only, so that a masked
          // lane can never bring a NaN in.
          alignas(64) acc lanes[width];
          for (int v = 0; v < kPanelVecs; ++v) values[v].store(lanes + v * Vec<acc>::size());
          for (int64_t lane = lane_begin; lane < lane_end; ++lane) total += lanes[lane];
          if (holds_diagonal && !exclude_diagonal) diagonal_total += static_cast<double>(lanes[row - column]);
        }
        row_totals[row] += static_cast<double>(total);
      }
    });
  }
  if (weight != nullptr && diagonal && exclude_diagonal) {
    for (int64_t r = 0; r < a_count; ++r) (*weight)[r][r] = 0;
  }
  double tile_total = 0;
  for (int64_t r = 0; r < a_count; ++r) tile_total += row_totals[r];
  // k is symmetric: each pair i < j of a self sum stands for (i, j) and (j, i).
  return self_pairs ? 2 * tile_total + diagonal_total : tile_total;
}

// Adds the tile's gradient terms (see the section comment) from its slopes.
template <bool dot_product, typename acc>
void tile_gradients(const PackedOperand<acc>& a, const PackedOperand<acc>& b, Tile tile, bool with_b_side,
                    const TileWeights<acc>& weight, acc* grad_a, acc* grad_b) {
  const int64_t a_begin = tile.a_block * kBlockRows;
  const int64_t a_count = std::min(kBlockRows, a.count - a_begin);
  const int64_t b_begin = tile.b_block * kBlockRows;
  const int64_t b_count = std::min(kBlockRows, b.count - b_begin);
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

// ---- Schedules ------------------------------------------------------------------------------------------
// Determinism: the sum is kept per block of a (block_totals[I], added in block order at the end), and every
// block total, like every gradient row, receives its tiles in one fixed order, the order of the rounds
// below, whatever the thread count and whether or not the gradient is computed: same bits either way.

// One slot of a round: the block of each side it touches (kNoBlock where that side has none: the slot then
// only moves the other side's block on to the next round) and the round it belongs to.
constexpr int64_t kNoBlock = -1;
struct Slot {
  int64_t round;
  Tile tile;
};

// Most slots a worker holds back while their blocks are busy (see run_rounds): a bound on its list, far
// more than the slots one descheduled thread can hold up before the others run out of independent work.
constexpr size_t kMaxDeferredSlots = 64;

// Runs a schedule of rounds in which every block of each side appears in exactly one slot per round, as if
// round after round, but without a barrier between rounds. Each block counts the rounds it has finished;
// a slot of round r runs once its blocks have finished round r - 1, then moves them on to round r + 1. So
// every block receives its tiles in round order (same bits at any thread count), while a thread that the
// OS deschedules holds up only the slots that need its blocks, not every other thread at the end of every
// round (an OpenMP region per round made forward+backward at n = m = 2048, d = 64 on 2 threads beside one
// busy process 4.6x slower than one thread: benchmarks/results/cpu_contention.md). Workers take slots in
// order from a shared counter; a slot whose blocks are busy is held back and retried, and the
// worker runs later, independent slots meanwhile. Progress: the earliest unfinished slot always has its
// blocks free, and the worker holding it runs it once scheduled.
// shared_blocks: both sides are one operand's blocks (the self sum), with one set of counters.
template <typename Schedule, typename RunTile>
void run_rounds(const Schedule& schedule, int64_t a_blocks, int64_t b_blocks, bool shared_blocks,
                const RunTile& run_tile) {
  const int64_t num_slots = schedule.num_slots();
  std::vector<std::atomic<int64_t>> a_rounds(a_blocks);
  std::vector<std::atomic<int64_t>> b_rounds(shared_blocks ? 0 : b_blocks);
  for (auto& finished : a_rounds) finished.store(0, std::memory_order_relaxed);
  for (auto& finished : b_rounds) finished.store(0, std::memory_order_relaxed);
  std::vector<std::atomic<int64_t>>& b_side = shared_blocks ? a_rounds : b_rounds;
  auto block_ready = [](const std::vector<std::atomic<int64_t>>& finished, int64_t block, int64_t round) {
    return block == kNoBlock || finished[block].load(std::memory_order_acquire) == round;
  };
  auto ready = [&](const Slot& slot) {
    return block_ready(a_rounds, slot.tile.a_block, slot.round) && block_ready(b_side, slot.tile.b_block, slot.round);
  };
  // Moves the slot's blocks on to the next round, making the tile's writes visible to the next slot.
  auto advance = [&](const Slot& slot) {
    const Tile& tile = slot.tile;
    if (tile.a_block != kNoBlock) a_rounds[tile.a_block].store(slot.round + 1, std::memory_order_release);
    const bool same_counter = shared_blocks && tile.a_block == tile.b_block;
    if (tile.b_block != kNoBlock && !same_counter) {
      b_side[tile.b_block].store(slot.round + 1, std::memory_order_release);
    }
  };
  std::atomic<int64_t> next_slot{0};
  // One worker per thread; a serial call (inside another parallel region, say) runs one worker, which
  // takes every slot in order, each ready when taken.
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    std::vector<Slot> deferred;  // claimed, in slot order, waiting for their blocks
    auto finish_slot = [&](const Slot& slot) {
      if (slot.tile.a_block != kNoBlock && slot.tile.b_block != kNoBlock) run_tile(slot.tile);
      advance(slot);
    };
    bool claimed_all = false;
    while (!claimed_all || !deferred.empty()) {
      bool progressed = false;
      for (size_t i = 0; i < deferred.size();) {
        if (ready(deferred[i])) {
          finish_slot(deferred[i]);
          deferred.erase(deferred.begin() + static_cast<std::ptrdiff_t>(i));
          progressed = true;
        } else {
          ++i;
        }
      }
      if (!claimed_all && deferred.size() < kMaxDeferredSlots) {
        const int64_t index = next_slot.fetch_add(1, std::memory_order_relaxed);
        if (index < num_slots) {
          const Slot slot = schedule.slot(index);
          if (ready(slot)) {
            finish_slot(slot);
          } else {
            deferred.push_back(slot);
          }
          continue;
        }
        claimed_all = true;
        continue;
      }
      // Every held slot waits on a block another thread is working on: give that thread the core.
      if (!progressed) std::this_thread::yield();
    }
  });
}

// The self sum's rounds: round 0 holds every block's diagonal tile; then a round-robin tournament (the
// circle method over an even number of players, the last a "bye" when the block count is odd) pairs every
// two blocks I < J once, each block in exactly one slot per round. Tile (I, J) counts towards block I.
struct SelfRounds {
  int64_t num_blocks;
  int64_t players;  // num_blocks rounded up to even
  explicit SelfRounds(int64_t count)
      : num_blocks((count + kBlockRows - 1) / kBlockRows), players(num_blocks + num_blocks % 2) {}
  int64_t num_slots() const { return num_blocks + (players - 1) * (players / 2); }
  // Slots 0 .. num_blocks - 1: round 0's diagonal tiles. Round r + 1 pairs player `ring` with r (its slot 0)
  // and (r + k) mod ring with (r - k) mod ring (slot k) for 0 < k < players / 2; a player past the last
  // block is the bye, and its partner's slot only moves that block on.
  Slot slot(int64_t index) const {
    if (index < num_blocks) return {0, {index, index}};
    const int64_t ring = players - 1;
    const int64_t r = (index - num_blocks) / (players / 2);
    const int64_t k = (index - num_blocks) % (players / 2);
    const int64_t first = k == 0 ? ring : (r + k) % ring;
    const int64_t second = k == 0 ? r : (r - k + ring) % ring;
    if (first >= num_blocks) return {r + 1, {second, kNoBlock}};
    if (second >= num_blocks) return {r + 1, {first, kNoBlock}};
    return {r + 1, {std::min(first, second), std::max(first, second)}};
  }
  // The round of tile (first, second), first < second: the pair sums to 2 r (mod ring), and ring is odd.
  int64_t round_of(int64_t first, int64_t second) const {
    const int64_t ring = players - 1;
    if (second == ring) return first + 1;
    return (first + second) * ((ring + 1) / 2) % ring + 1;
  }
};

// The cross sum's rounds: round r pairs block I of a with block (I + r) mod ring of b, ring = max(blocks):
// every pair of blocks once, each block of either side in exactly one slot per round (a slot whose partner
// does not exist only moves its block on). Block I's sum receives its tiles in that order.
struct CrossRounds {
  int64_t a_blocks;
  int64_t b_blocks;
  int64_t ring;
  CrossRounds(int64_t a_count, int64_t b_count)
      : a_blocks((a_count + kBlockRows - 1) / kBlockRows),
        b_blocks((b_count + kBlockRows - 1) / kBlockRows),
        ring(std::max(a_blocks, b_blocks)) {}
  int64_t num_slots() const { return ring * ring; }
  Slot slot(int64_t index) const {
    const int64_t round = index / ring;
    const int64_t a_block = index % ring;
    const int64_t b_block = (a_block + round) % ring;
    return {round, {a_block < a_blocks ? a_block : kNoBlock, b_block < b_blocks ? b_block : kNoBlock}};
  }
};

// Fewest blocks on the smaller side for which the cross sum's gradient runs as rounds of tiles: a round
// holds that many tiles, the parallel width. Below it each side is computed on its own (twice the pair
// statistics, but as wide as the larger side). A constant, never the thread count: same bits.
constexpr int64_t kMinTilesPerRound = 8;

// The sum over x's rows with themselves (self) or with y's, and with `gradient` d sum / d x (and d sum /
// d y into grad_y for the cross sum) without the statistic's constant factor, in the packed row layout.
template <PairKernel kernel, typename acc>
double self_sum(const PackedOperand<acc>& x, bool exclude_diagonal, const PairKernelConstants<acc>& constants,
                acc* gradient) {
  const SelfRounds rounds(x.count);
  const int64_t num_blocks = rounds.num_blocks;
  std::vector<double> block_totals(num_blocks, 0.0);
  if (gradient == nullptr) {
    // Each block's tiles in the order of the rounds, with no rounds to wait for. Block I holds about
    // num_blocks - I tiles: one task takes blocks t and num_blocks - 1 - t, so tasks have equal work.
    auto run_block = [&](int64_t block) {
      std::vector<std::pair<int64_t, int64_t>> partners;  // (round, other block)
      for (int64_t other = block + 1; other < num_blocks; ++other) {
        partners.emplace_back(rounds.round_of(block, other), other);
      }
      std::sort(partners.begin(), partners.end());
      block_totals[block] = tile_values<kernel>(x, x, {block, block}, true, exclude_diagonal, constants, nullptr);
      for (const auto& partner : partners) {
        block_totals[block] += tile_values<kernel>(x, x, {block, partner.second}, true, exclude_diagonal,
                                                   constants, nullptr);
      }
    };
    at::parallel_for(0, (num_blocks + 1) / 2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        run_block(task);
        if (num_blocks - 1 - task != task) run_block(num_blocks - 1 - task);
      }
    });
  } else {
    run_rounds(rounds, num_blocks, num_blocks, /*shared_blocks=*/true, [&](Tile tile) {
      alignas(64) TileWeights<acc> weight;
      const bool diagonal = tile.a_block == tile.b_block;
      const double value = tile_values<kernel>(x, x, tile, true, exclude_diagonal, constants, &weight);
      block_totals[tile.a_block] = diagonal ? value : block_totals[tile.a_block] + value;
      tile_gradients<uses_dot_product<kernel>()>(x, x, tile, !diagonal, weight, gradient, gradient);
    });
  }
  double total = 0;
  for (const double block_total : block_totals) total += block_total;
  return total;
}

// The pairs of a's and b's blocks in the order of CrossRounds.
template <PairKernel kernel, typename acc>
double cross_sum(const PackedOperand<acc>& a, const PackedOperand<acc>& b, const PairKernelConstants<acc>& constants,
                 acc* grad_a, acc* grad_b) {
  constexpr bool dot_product = uses_dot_product<kernel>();
  const CrossRounds rounds(a.count, b.count);
  const int64_t a_blocks = rounds.a_blocks;
  const int64_t b_blocks = rounds.b_blocks;
  const int64_t ring = rounds.ring;
  std::vector<double> block_totals(a_blocks, 0.0);
  // Rounds only when both sides take gradients: a's side alone runs block by block below, the same tiles
  // in the same order (the same bits) without a barrier per round.
  if (grad_a != nullptr && grad_b != nullptr && std::min(a_blocks, b_blocks) >= kMinTilesPerRound) {
    run_rounds(rounds, a_blocks, b_blocks, /*shared_blocks=*/false, [&](Tile tile) {
      alignas(64) TileWeights<acc> weight;
      block_totals[tile.a_block] += tile_values<kernel>(a, b, tile, false, false, constants, &weight);
      tile_gradients<dot_product>(a, b, tile, true, weight, grad_a, grad_b);
    });
  } else {
    // Each block of `left` against every block of `right` in round order; a's blocks give the sum (and
    // a's gradient), then, with the gradient, b's blocks give b's (the same tiles seen from b: k is
    // symmetric, so d k(a_i, b_j) / d b_j is the left-row gradient with the roles swapped).
    auto one_side = [&](const PackedOperand<acc>& left, const PackedOperand<acc>& right, acc* gradient,
                        double* totals) {
      const int64_t left_blocks = (left.count + kBlockRows - 1) / kBlockRows;
      const int64_t right_blocks = (right.count + kBlockRows - 1) / kBlockRows;
      at::parallel_for(0, left_blocks, 1, [&](int64_t begin, int64_t end) {
        alignas(64) TileWeights<acc> weight;
        for (int64_t block = begin; block < end; ++block) {
          for (int64_t round = 0; round < ring; ++round) {
            const Tile tile{block, (block + round) % ring};
            if (tile.b_block >= right_blocks) continue;
            const double value = tile_values<kernel>(left, right, tile, false, false, constants,
                                                     gradient != nullptr ? &weight : nullptr);
            if (totals != nullptr) totals[block] += value;
            if (gradient != nullptr) tile_gradients<dot_product>(left, right, tile, false, weight, gradient, gradient);
          }
        }
      });
    };
    one_side(a, b, grad_a, block_totals.data());
    if (grad_b != nullptr) one_side(b, a, grad_b, nullptr);
  }
  double total = 0;
  for (const double block_total : block_totals) total += block_total;
  return total;
}

// out = scale * gradient (kept [count, padded_dim] in the accumulation type), in out's layout and type.
template <typename acc, typename out_t>
void store_gradient(const std::vector<acc>& gradient, const PackedOperand<acc>& operand, acc scale, out_t* out) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, operand.d));
  at::parallel_for(0, operand.count, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const acc* row_gradient = gradient.data() + row * operand.padded_dim;
      for (int64_t k = 0; k < operand.d; ++k) out[row * operand.d + k] = static_cast<out_t>(scale * row_gradient[k]);
    }
  });
}

// The sum of KernelSumParams and, when grad_x is set, scale * d sum / d x into grad_x (and, for the cross
// sum, d sum / d y into grad_y unless it is null: y's side is then skipped), in out_t (scalar_t for the
// backward op, the accumulation type for the op that returns the gradient with the sum).
template <PairKernel kernel, typename scalar_t, typename out_t>
double pair_sum(const KernelSumParams<scalar_t>& p, acc_t<scalar_t> scale, out_t* grad_x, out_t* grad_y) {
  using acc = acc_t<scalar_t>;
  const auto constants = pair_kernel_constants<acc>(p.scale_constant, p.num_scales, p.d);
  const bool with_gradient = grad_x != nullptr;
  // d ||a - b||^2 / da = 2 (a - b), d a.b / da = b; the self sum has x on both sides of every pair: twice.
  const acc factor = (uses_dot_product<kernel>() ? acc(1) : acc(2)) * (p.self_pairs ? acc(2) : acc(1)) * scale;
  // Panels of x for the self sum, and for b's side of the cross sum's gradient tiles (x and y swapped).
  const PackedOperand<acc> x_packed = pack_operand<acc>(p.x, p.n, p.d, true, p.self_pairs || with_gradient);
  std::vector<acc> x_gradient(with_gradient ? x_packed.count * x_packed.padded_dim : 0, acc(0));
  acc* x_gradient_data = with_gradient ? x_gradient.data() : nullptr;
  double total;
  if (p.self_pairs) {
    total = self_sum<kernel>(x_packed, p.exclude_diagonal, constants, x_gradient_data);
  } else {
    const PackedOperand<acc> y_packed = pack_operand<acc>(p.y, p.m, p.d, with_gradient, true);
    const bool with_y_gradient = with_gradient && grad_y != nullptr;
    std::vector<acc> y_gradient(with_y_gradient ? y_packed.count * y_packed.padded_dim : 0, acc(0));
    total = cross_sum<kernel>(x_packed, y_packed, constants, x_gradient_data,
                              with_y_gradient ? y_gradient.data() : nullptr);
    if (with_y_gradient) store_gradient(y_gradient, y_packed, factor, grad_y);
  }
  if (with_gradient) store_gradient(x_gradient, x_packed, factor, grad_x);
  return total;
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
  dispatch_pair_kernel(p, [&](auto kernel) {
    p.out[0] = pair_sum<decltype(kernel)::value>(p, acc_t<scalar_t>(1), static_cast<scalar_t*>(nullptr),
                                                 static_cast<scalar_t*>(nullptr));
  });
}

// The sum into p.out and d sum / d x, d sum / d y (cross sum, unless grad_y is null) in the accumulation
// type, from one pass.
template <typename scalar_t>
void kernel_sum_with_grad(const KernelSumParams<scalar_t>& p, acc_t<scalar_t>* grad_x, acc_t<scalar_t>* grad_y) {
  dispatch_pair_kernel(p, [&](auto kernel) {
    p.out[0] = pair_sum<decltype(kernel)::value>(p, acc_t<scalar_t>(1), grad_x, grad_y);
  });
}

template <typename scalar_t>
void kernel_sum_backward(const KernelSumBackwardParams<scalar_t>& p) {
  KernelSumParams<scalar_t> sum;
  sum.x = p.x;
  sum.y = p.y;
  copy_pairs(sum, p);
  const auto grad = static_cast<acc_t<scalar_t>>(*p.grad);
  // The sum comes with the slopes at a few per cent of the pass; it is not needed here.
  dispatch_pair_kernel(p, [&](auto kernel) { pair_sum<decltype(kernel)::value>(sum, grad, p.grad_x, p.grad_y); });
}

}  // namespace cpu
}  // namespace vaefast
