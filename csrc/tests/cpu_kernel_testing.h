// What every CPU-kernel test shares (test_cpu_kernels.cpp for gaussian_kl; the reparameterize,
// gaussian_nll and mmd kernel tests go beside it in their own files and include this): the shapes that
// exercise the vector tails and the fixed reduction chunks, random inputs in any storage type, the error
// bound of the kernels' summation order, a scoped thread count, and bitwise comparison.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/cpu_common.h"
#include "test_main.h"

namespace vaefast {
namespace testing {

template <typename T>
const char* type_name() {
  if constexpr (std::is_same_v<T, double>) return "double";
  if constexpr (std::is_same_v<T, float>) return "float";
  if constexpr (std::is_same_v<T, c10::Half>) return "half";
  if constexpr (std::is_same_v<T, c10::BFloat16>) return "bfloat16";
  return "?";
}

// Rounding of a result stored in T when T is narrower than its accumulation type (0 when it is not):
// relative half an ulp (2^-11 for half, 2^-8 for bfloat16), and, below the smallest normal, an absolute
// half of the subnormal spacing.
template <typename T>
long double storage_rounding() {
  if constexpr (std::is_same_v<T, acc_t<T>>) return 0;
  return std::ldexp(1.0L, -std::numeric_limits<T>::digits);
}
template <typename T>
long double storage_rounding_absolute() {
  if constexpr (std::is_same_v<T, acc_t<T>>) return 0;
  return static_cast<long double>(static_cast<float>(std::numeric_limits<T>::denorm_min())) / 2;
}

struct Shape {
  int64_t batch;
  int64_t features;
};

// (A stream, not "[" + std::to_string(...): g++ 12 -O3 gives a false -Wrestrict for the latter, GCC PR105329.)
inline std::string describe(const Shape& shape) {
  std::ostringstream out;
  out << "[" << shape.batch << ", " << shape.features << "]";
  return out.str();
}

// A batch of one; features below, at and not a multiple of the vector width (8 floats, 4 doubles with
// AVX2); exactly one and just over one reduction chunk (cpu::kReduceChunk = 8192); several chunks with
// one and several rows; many short rows; and the empty cases.
inline std::vector<Shape> kernel_test_shapes() {
  return {{1, 1},     {1, 3},     {1, 8},     {1, 13},   {3, 13},   {4, 64},    {1, 8192}, {1, 8193},
          {2, 20001}, {1, 50000}, {5, 16500}, {33, 257}, {200, 37}, {2, 0},     {0, 5}};
}

// The shape of the determinism tests: enough rows and chunks (5 x 3 reduction items, 82500 elements) that
// at::parallel_for splits the work across threads forward and backward.
inline Shape parallel_shape() { return {5, 16500}; }

// Random inputs rounded to the storage type T.
class RandomData {
 public:
  explicit RandomData(uint64_t seed) : rng_(seed) {}

  template <typename T>
  std::vector<T> uniform(int64_t n, double lo, double hi) {
    std::uniform_real_distribution<double> dist(lo, hi);
    std::vector<T> out(static_cast<size_t>(n));
    for (T& v : out) v = static_cast<T>(dist(rng_));
    return out;
  }
  template <typename T>
  std::vector<T> normal(int64_t n, double stddev) {
    std::normal_distribution<double> dist(0, stddev);
    std::vector<T> out(static_cast<size_t>(n));
    for (T& v : out) v = static_cast<T>(dist(rng_));
    return out;
  }

 private:
  std::mt19937_64 rng_;
};

// Worst-case number of roundings along one path of cpu::deterministic_row_sums over `cols` columns:
// a vector lane accumulates chunk/width terms, lane_sum adds the width lanes, the scalar tail adds
// < width terms, and the chunk partial sums are added in order. The summation error is then at most
// depth * (eps / 2) * sum |terms| (Higham's gamma_n to first order).
template <typename acc>
int64_t summation_depth(int64_t cols) {
  const int64_t width = Vec<acc>::size();
  const int64_t chunk = std::min(cols, cpu::kReduceChunk);
  const int64_t chunks = std::max<int64_t>(1, (cols + cpu::kReduceChunk - 1) / cpu::kReduceChunk);
  return chunk / width + 2 * width + chunks;
}

// Sets the number of intra-op threads for a scope and restores the previous number.
class NumThreads {
 public:
  explicit NumThreads(int threads) : previous_(at::get_num_threads()) { at::set_num_threads(threads); }
  ~NumThreads() { at::set_num_threads(previous_); }
  NumThreads(const NumThreads&) = delete;
  NumThreads& operator=(const NumThreads&) = delete;

 private:
  int previous_;
};

// Index of the first element whose bits differ (or the shorter size), -1 when a and b are identical.
template <typename T>
int64_t first_bitwise_difference(const std::vector<T>& a, const std::vector<T>& b) {
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return static_cast<int64_t>(i);
  }
  return a.size() == b.size() ? -1 : static_cast<int64_t>(n);
}

}  // namespace testing
}  // namespace vaefast
