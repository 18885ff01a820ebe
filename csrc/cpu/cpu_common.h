// What the CPU kernels share: SIMD overloads of the shared math, loads and stores that widen float16 and
// bfloat16 to float, and a reduction whose bits do not depend on the number of threads.
//
// The per-element formulas in common/elementwise_math.h are templates over the arithmetic type; the
// overloads below (declared before that header is included, so its templates see them) let the CPU loops
// instantiate the very same formulas on at::vec::Vectorized<float|double>, with Sleef's 1-ulp exp/log/sin/
// cos. The CUDA kernels instantiate them on float/double.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <vector>

namespace vaefast {

template <typename T>
using Vec = at::vec::Vectorized<T>;

inline Vec<float> math_exp(const Vec<float>& v) { return v.exp(); }
inline Vec<double> math_exp(const Vec<double>& v) { return v.exp(); }
template <typename S>
inline Vec<S> math_abs(const Vec<S>& v) {
  return v.abs();
}
template <typename S>
inline Vec<S> math_fma(const Vec<S>& a, const Vec<S>& b, const Vec<S>& c) {
  return at::vec::fmadd(a, b, c);
}
// Lane-wise condition ? if_true : if_false, condition a comparison's all-ones/all-zeros lanes.
template <typename S>
inline Vec<S> math_select(const Vec<S>& condition, const Vec<S>& if_true, const Vec<S>& if_false) {
  return Vec<S>::blendv(if_false, if_true, condition);
}
inline Vec<float> math_log(const Vec<float>& v) { return v.log(); }
inline Vec<double> math_log(const Vec<double>& v) { return v.log(); }
inline Vec<float> math_sqrt(const Vec<float>& v) { return v.sqrt(); }
inline Vec<double> math_sqrt(const Vec<double>& v) { return v.sqrt(); }

// Sleef's joint sincos costs about one of sin or cos (measured: 2.0 ms against 4.2 ms for both, per 1M
// floats, AVX2), and Box-Muller needs both of every angle.
inline void math_sincos(const Vec<float>& v, Vec<float>* sine, Vec<float>* cosine) {
#if defined(CPU_CAPABILITY_AVX2)
  const Sleef___m256_2 both = Sleef_sincosf8_u10(v);
  *sine = both.x;
  *cosine = both.y;
#else
  *sine = v.sin();
  *cosine = v.cos();
#endif
}
inline void math_sincos(const Vec<double>& v, Vec<double>* sine, Vec<double>* cosine) {
#if defined(CPU_CAPABILITY_AVX2)
  const Sleef___m256d_2 both = Sleef_sincosd4_u10(v);
  *sine = both.x;
  *cosine = both.y;
#else
  *sine = v.sin();
  *cosine = v.cos();
#endif
}

}  // namespace vaefast

#include "../common/elementwise_math.h"
#include "../common/philox.h"

namespace vaefast {

template <typename S>
struct ScalarType<Vec<S>> {
  using type = S;
};
namespace cpu {

// Loads Vec<acc>::size() elements starting at p, widened to the accumulation type.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
inline Vec<acc> load_acc(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, acc>) {
    return Vec<acc>::loadu(p);
  } else {
    alignas(64) acc buffer[Vec<acc>::size()];
    for (int64_t k = 0; k < Vec<acc>::size(); ++k) buffer[k] = static_cast<acc>(p[k]);
    return Vec<acc>::loadu(buffer);
  }
}

template <typename scalar_t, typename acc>
inline void store_acc(scalar_t* p, const Vec<acc>& v) {
  if constexpr (std::is_same_v<scalar_t, acc>) {
    v.store(p);
  } else {
    alignas(64) acc buffer[Vec<acc>::size()];
    v.store(buffer);
    for (int64_t k = 0; k < Vec<acc>::size(); ++k) p[k] = static_cast<scalar_t>(buffer[k]);
  }
}

// Lane sum in lane order (fixed, so results are reproducible bit for bit).
template <typename acc>
inline acc lane_sum(const Vec<acc>& v) {
  alignas(64) acc buffer[Vec<acc>::size()];
  v.store(buffer);
  acc total = 0;
  for (int64_t k = 0; k < Vec<acc>::size(); ++k) total += buffer[k];
  return total;
}

// sum of term(j) over [begin, end): the vector body keeps four independent accumulators (each lane sums at
// most 1/32 of a chunk's float terms, and four adds are in flight), the scalar tail adds in order. vec_term(j)
// returns the Vec of terms j .. j + width - 1, scalar_term(j) term j; either may also write outputs for
// its elements. Which elements take which path depends only on [begin, end), never on the threads.
template <typename acc, typename VecTerm, typename ScalarTerm>
inline acc chunk_sum(int64_t begin, int64_t end, const VecTerm& vec_term, const ScalarTerm& scalar_term) {
  constexpr int64_t width = Vec<acc>::size();
  Vec<acc> sum0(acc(0)), sum1(acc(0)), sum2(acc(0)), sum3(acc(0));
  int64_t j = begin;
  for (; j + 4 * width <= end; j += 4 * width) {
    sum0 += vec_term(j);
    sum1 += vec_term(j + width);
    sum2 += vec_term(j + 2 * width);
    sum3 += vec_term(j + 3 * width);
  }
  for (; j + width <= end; j += width) sum0 += vec_term(j);
  acc total = lane_sum((sum0 + sum1) + (sum2 + sum3));
  for (; j < end; ++j) total += scalar_term(j);
  return total;
}

// Elements per reduction work item: large enough to amortise the task, small enough that a batch of one
// long row still spreads over every core. Fixed, so the summation order never depends on the threads.
constexpr int64_t kReduceChunk = 8192;
// Elements a thread should own at least (at::parallel_for's grain), about 64 KB of float32 input.
constexpr int64_t kGrainElements = 16384;
// The same for kernels that draw noise: Philox, log, sqrt and sincos cost ~12 ns an element on one core
// (about ten times a plain elementwise op's), so a second thread pays off ten times sooner. A VAE head of
// [64, 64] latents (4096 elements, ~50 us on one core) is two tasks instead of one.
constexpr int64_t kNoiseGrainElements = 2048;

// Columns at which parallel_row_segments may split a row: a multiple of every Vectorized width (at most 64
// lanes), so each element falls in a kernel's vector body or its scalar tail whatever the thread count.
// The two paths round differently (Sleef vs libm, 1 ulp apart for ~1 input in 10), so a split at an
// arbitrary column made an element's bits depend on the number of threads.
constexpr int64_t kSegmentAlign = 64;
static_assert(kSegmentAlign % Vec<float>::size() == 0 && kSegmentAlign % Vec<double>::size() == 0,
              "row segments must split at whole vectors");

// at::parallel_for over the flat range [0, total), split only at multiples of kSegmentAlign.
template <typename F>
void parallel_for_aligned(int64_t total, const F& f) {
  const int64_t blocks = (total + kSegmentAlign - 1) / kSegmentAlign;
  at::parallel_for(0, blocks, kGrainElements / kSegmentAlign, [&](int64_t begin, int64_t end) {
    f(begin * kSegmentAlign, std::min(total, end * kSegmentAlign));
  });
}

// Runs f(row, begin, end) over the [rows, cols] index space in parallel, split at row boundaries, so that
// elementwise kernels with a per-row scalar (the gradient of a per-sample loss) spread over every core
// even when there is a single long row. Within a row, segments start at multiples of kSegmentAlign.
template <typename F>
void parallel_row_segments(int64_t rows, int64_t cols, const F& f) {
  const int64_t blocks_per_row = (cols + kSegmentAlign - 1) / kSegmentAlign;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, std::min(cols, kSegmentAlign)));
  at::parallel_for(0, rows * blocks_per_row, grain, [&](int64_t begin, int64_t end) {
    while (begin < end) {
      const int64_t row = begin / blocks_per_row;
      const int64_t segment_end = std::min(end, (row + 1) * blocks_per_row);
      f(row, (begin - row * blocks_per_row) * kSegmentAlign,
        std::min(cols, (segment_end - row * blocks_per_row) * kSegmentAlign));
      begin = segment_end;
    }
  });
}

// Per-row sums of a [rows, cols] index space: chunk_sum(row, begin, end) is called exactly once for every
// row and every fixed chunk [begin, end) of the columns, in parallel; the partial sums are then added in
// chunk order. Same inputs, same bits, whatever the thread count. chunk_sum may also write elementwise
// outputs of its chunk (the backward kernels do), so every element is touched by one thread only.
//
// With state: make_chunk_sum() is called once for each contiguous range of items a thread takes, and the
// chunk_sum it returns is called on that range's items in order (row by row, and chunk by chunk within a
// row: consecutive flat elements), so it may carry state from one item into the next (the fused head's
// noise, drawn a tile at a time across short rows). The items, and so the bits, are those of the plain form.
template <typename acc, typename MakeChunkSum>
void deterministic_row_sums_with_state(int64_t rows, int64_t cols, const MakeChunkSum& make_chunk_sum,
                                       acc* row_totals, int64_t grain_elements = kGrainElements) {
  const int64_t chunks = std::max<int64_t>(1, (cols + kReduceChunk - 1) / kReduceChunk);
  const int64_t chunk_cols = std::max<int64_t>(1, std::min(cols, kReduceChunk));
  const int64_t grain = std::max<int64_t>(1, grain_elements / chunk_cols);
  std::vector<acc> partial(chunks > 1 ? rows * chunks : 0);
  acc* out = chunks > 1 ? partial.data() : row_totals;
  at::parallel_for(0, rows * chunks, grain, [&](int64_t begin, int64_t end) {
    auto chunk_sum = make_chunk_sum();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / chunks;
      const int64_t chunk = item % chunks;
      out[item] = chunk_sum(row, chunk * kReduceChunk, std::min(cols, (chunk + 1) * kReduceChunk));
    }
  });
  if (chunks > 1) {
    for (int64_t row = 0; row < rows; ++row) {
      acc total = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partial[row * chunks + chunk];
      row_totals[row] = total;
    }
  }
}

template <typename acc, typename ChunkSum>
void deterministic_row_sums(int64_t rows, int64_t cols, const ChunkSum& chunk_sum, acc* row_totals) {
  deterministic_row_sums_with_state<acc>(rows, cols, [&] { return std::cref(chunk_sum); }, row_totals);
}

}  // namespace cpu
}  // namespace vaefast
