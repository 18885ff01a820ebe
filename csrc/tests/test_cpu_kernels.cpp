// Tests of the CPU gaussian_kl kernels (cpu/gaussian_kl_cpu.h) called directly on GaussianKlParams over
// std::vector data: against long double loops for every shape of kernel_test_shapes() in double, float,
// half and bfloat16 storage, and bit-for-bit determinism across thread counts. The other ops' CPU kernels
// get their own test_cpu_<op>.cpp beside this one, on the helpers of cpu_kernel_testing.h.
#include <algorithm>
#include <cmath>
#include <mutex>
#include <set>
#include <vector>

#include "cpu/gaussian_kl_cpu.h"
#include "cpu_kernel_testing.h"
#include "exact_math.h"
#include "test_main.h"

namespace {

using ld = long double;
using vaefast::acc_t;
using vaefast::GaussianKlBackwardParams;
using vaefast::GaussianKlParams;
using vaefast::testing::describe;
using vaefast::testing::RandomData;
using vaefast::testing::Shape;
using vaefast::testing::show;
using vaefast::testing::type_name;

template <typename T>
struct KlCase {
  Shape shape;
  std::vector<T> mu, logvar, grad;  // [batch, features], [batch, features], [batch]
};

// Double and float: mu ~ N(0, 1.5^2), logvar over [-8, 8] (posterior variances from 3e-4 to 3e3). Half and
// bfloat16: mu ~ N(0, 0.5^2), logvar over [-2, 2], about 0.5 per KL term, so that a row of 50000 features
// sums to ~27000, below half's largest finite value 65504 (the wider inputs overflow the stored sum to
// inf, as any half reduction would).
template <typename T>
KlCase<T> make_case(RandomData& data, Shape shape) {
  const int64_t n = shape.batch * shape.features;
  constexpr bool wide = std::is_same_v<T, acc_t<T>>;
  return {shape, data.normal<T>(n, wide ? 1.5 : 0.5), data.uniform<T>(n, wide ? -8 : -2, wide ? 8 : 2),
          data.uniform<T>(shape.batch, -2, 2)};
}

template <typename T>
std::vector<T> kl_forward(const KlCase<T>& c) {
  std::vector<T> per_sample(static_cast<size_t>(c.shape.batch));
  GaussianKlParams<T> p;
  p.mu = c.mu.data();
  p.logvar = c.logvar.data();
  p.per_sample = per_sample.data();
  p.batch = c.shape.batch;
  p.features = c.shape.features;
  vaefast::cpu::gaussian_kl_forward(p);
  return per_sample;
}

template <typename T>
std::pair<std::vector<T>, std::vector<T>> kl_backward(const KlCase<T>& c) {
  std::vector<T> grad_mu(c.mu.size()), grad_logvar(c.mu.size());
  GaussianKlBackwardParams<T> p;
  p.grad = c.grad.data();
  p.mu = c.mu.data();
  p.logvar = c.logvar.data();
  p.grad_mu = grad_mu.data();
  p.grad_logvar = grad_logvar.data();
  p.batch = c.shape.batch;
  p.features = c.shape.features;
  vaefast::cpu::gaussian_kl_backward(p);
  return {grad_mu, grad_logvar};
}

// Forward: per_sample[b] = sum_j 0.5 (mu^2 + (e^lv - 1 - lv)) against long double. Every term is >= 0 and
// within 6.5 eps of itself (Sleef's exp is 1-ulp like glibc's; the derivation is in
// test_elementwise_math.cpp); the sum adds depth * eps/2 * the sum of the terms. Tolerance: twice that,
// relative to the exact sum, plus the final rounding to the storage type.
template <typename T>
void check_forward(const KlCase<T>& c) {
  using acc = acc_t<T>;
  const ld eps = std::numeric_limits<acc>::epsilon();
  const ld k = 2 * (6.5 + 0.5L * vaefast::testing::summation_depth<acc>(c.shape.features));
  const std::vector<T> per_sample = kl_forward(c);
  for (int64_t b = 0; b < c.shape.batch; ++b) {
    ld exact = 0, magnitude = 0;
    for (int64_t j = 0; j < c.shape.features; ++j) {
      const ld mu = static_cast<acc>(c.mu[b * c.shape.features + j]);
      const ld logvar = static_cast<acc>(c.logvar[b * c.shape.features + j]);
      exact += (mu * mu + vaefast::testing::exact_expm1_minus_identity(logvar)) / 2;
      magnitude = exact;  // every term >= 0
    }
    const ld tolerance = k * eps * magnitude + 2 * vaefast::testing::storage_rounding<T>() * std::fabs(exact);
    const ld actual = static_cast<acc>(per_sample[b]);
    if (!(std::fabs(actual - exact) <= tolerance)) {
      EXPECT_MSG(false, std::string("gaussian_kl_forward<") + type_name<T>() + "> " + describe(c.shape) + " row " +
                            show(b) + ": " + show(actual) + " vs exact " + show(exact) + ", tolerance " +
                            show(tolerance));
      return;
    }
  }
  EXPECT_TRUE(true);
}

// Backward: grad_mu = g mu (one rounding, eps/2) and grad_logvar = g * 0.5 (e^lv - 1) (expm1_by_series
// 2.1 eps, the product eps/2), elementwise against long double; tolerance twice those, plus the storage rounding
// (relative, and absolute for results that are subnormal in half or bfloat16).
template <typename T>
void check_backward(const KlCase<T>& c) {
  using acc = acc_t<T>;
  const ld eps = std::numeric_limits<acc>::epsilon();
  const ld storage = vaefast::testing::storage_rounding<T>();
  const ld storage_absolute = 2 * vaefast::testing::storage_rounding_absolute<T>();
  const auto [grad_mu, grad_logvar] = kl_backward(c);
  for (int64_t i = 0; i < c.shape.batch * c.shape.features; ++i) {
    const ld g = static_cast<acc>(c.grad[i / c.shape.features]);
    const ld expected_mu = g * static_cast<acc>(c.mu[i]);
    const ld expected_logvar = g * std::expm1(static_cast<ld>(static_cast<acc>(c.logvar[i]))) / 2;
    const ld actual_mu = static_cast<acc>(grad_mu[i]);
    const ld actual_logvar = static_cast<acc>(grad_logvar[i]);
    const bool ok_mu =
        std::fabs(actual_mu - expected_mu) <= (eps + 2 * storage) * std::fabs(expected_mu) + storage_absolute;
    const bool ok_logvar = std::fabs(actual_logvar - expected_logvar) <=
                           (2 * 2.6L * eps + 2 * storage) * std::fabs(expected_logvar) + storage_absolute;
    if (!ok_mu || !ok_logvar) {
      EXPECT_MSG(false, std::string("gaussian_kl_backward<") + type_name<T>() + "> " + describe(c.shape) +
                            " element " + show(i) + ": grad_mu " + show(actual_mu) + " vs " + show(expected_mu) +
                            ", grad_logvar " + show(actual_logvar) + " vs " + show(expected_logvar));
      return;
    }
  }
  EXPECT_TRUE(true);
}

template <typename T>
void check_against_long_double() {
  RandomData data(vaefast::testing::test_seed());
  for (const Shape& shape : vaefast::testing::kernel_test_shapes()) {
    const KlCase<T> c = make_case<T>(data, shape);
    check_forward(c);
    check_backward(c);
  }
}

// The same inputs give the same bits with 1 and 2 threads, and again on repeated runs with 2 threads: the
// reduction is split at fixed chunks and added in chunk order, and each gradient element has one writer
// and must take the same code path (vector body or scalar tail, which round differently: Sleef vs libm)
// wherever the threads split the rows. A split that moves an element between the paths changes its bits
// only when the two happen to round differently (for the exp that |lv| >= 1 takes: Sleef's and libm's differ on some inputs), and a split touches
// only a few elements, so the check runs on many input sets.
template <typename T>
bool expect_same_bits(const std::vector<T>& actual, const std::vector<T>& serial, const char* what, int input_set) {
  const int64_t at = vaefast::testing::first_bitwise_difference(actual, serial);
  const bool sizes_match = actual.size() == serial.size();
  return EXPECT_MSG(at < 0, std::string(type_name<T>()) + " " + what + " differs between 1 and 2 threads (input set " +
                                show(input_set) + ") first at element " + show(at) + ": " +
                                (sizes_match ? show(actual[at]) + " vs " + show(serial[at]) : "sizes differ"));
}

template <typename T>
struct KlOutputs {
  std::vector<T> per_sample, grad_mu, grad_logvar;
};

template <typename T>
KlOutputs<T> kl_outputs(const KlCase<T>& c) {
  KlOutputs<T> out{kl_forward(c), {}, {}};
  std::tie(out.grad_mu, out.grad_logvar) = kl_backward(c);
  return out;
}

// All serial runs first, then all 2-thread runs: switching the OpenMP thread count per input set costs
// more than the kernels. The second pass regenerates the same inputs from the same seed.
template <typename T>
void check_determinism() {
  using vaefast::testing::NumThreads;
  constexpr int kInputSets = 40;
  const uint64_t seed = vaefast::testing::test_seed();
  std::vector<KlOutputs<T>> serial;
  {
    NumThreads threads(1);
    RandomData data(seed);
    for (int input_set = 0; input_set < kInputSets; ++input_set) {
      serial.push_back(kl_outputs(make_case<T>(data, vaefast::testing::parallel_shape())));
    }
  }
  NumThreads threads(2);
  RandomData data(seed);
  for (int input_set = 0; input_set < kInputSets; ++input_set) {
    const KlCase<T> c = make_case<T>(data, vaefast::testing::parallel_shape());
    for (int repeat = 0; repeat < (input_set == 0 ? 3 : 1); ++repeat) {
      const KlOutputs<T> parallel = kl_outputs(c);
      const KlOutputs<T>& expected = serial[input_set];
      // & rather than &&: all three report.
      const bool same =
          expect_same_bits(parallel.per_sample, expected.per_sample, "gaussian_kl_forward per_sample", input_set) &
          expect_same_bits(parallel.grad_mu, expected.grad_mu, "gaussian_kl_backward grad_mu", input_set) &
          expect_same_bits(parallel.grad_logvar, expected.grad_logvar, "gaussian_kl_backward grad_logvar", input_set);
      if (!same) return;
    }
  }
}

}  // namespace

VAEFAST_TEST(cpu_gaussian_kl_double) { check_against_long_double<double>(); }
VAEFAST_TEST(cpu_gaussian_kl_float) { check_against_long_double<float>(); }
VAEFAST_TEST(cpu_gaussian_kl_half) { check_against_long_double<c10::Half>(); }
VAEFAST_TEST(cpu_gaussian_kl_bfloat16) { check_against_long_double<c10::BFloat16>(); }

// The determinism test means something only if 2 threads really share the work: the reduction items of
// parallel_shape() must be spread over more than one thread.
VAEFAST_TEST(cpu_parallel_shape_uses_two_threads) {
  vaefast::testing::NumThreads threads(2);
  EXPECT_EQ(at::get_num_threads(), 2);
  const Shape shape = vaefast::testing::parallel_shape();
  std::vector<int> thread_of_item(static_cast<size_t>(shape.batch) * 3, -1);
  std::vector<double> totals(static_cast<size_t>(shape.batch));
  vaefast::cpu::deterministic_row_sums<double>(
      shape.batch, shape.features,
      [&](int64_t row, int64_t begin, int64_t) {
        thread_of_item[row * 3 + begin / vaefast::cpu::kReduceChunk] = at::get_thread_num();
        return 0.0;
      },
      totals.data());
  const std::set<int> threads_used(thread_of_item.begin(), thread_of_item.end());
  EXPECT_MSG(threads_used.count(-1) == 0, "a reduction item was never visited");
  EXPECT_MSG(threads_used.size() >= 2, "all reduction items ran on one thread");
}

VAEFAST_TEST(cpu_gaussian_kl_deterministic_across_threads_double) { check_determinism<double>(); }
VAEFAST_TEST(cpu_gaussian_kl_deterministic_across_threads_float) { check_determinism<float>(); }

// The invariant behind the backward kernels' determinism: parallel_row_segments visits every element
// once, and with 2 threads splits rows only at multiples of kSegmentAlign columns (so no element moves
// between a kernel's vector body and its scalar tail), while still using both threads on one long row.
VAEFAST_TEST(cpu_parallel_row_segments_split_at_whole_vectors) {
  vaefast::testing::NumThreads threads(2);
  for (const Shape shape : {vaefast::testing::parallel_shape(), Shape{1, 50001}, Shape{7, 3000}, Shape{900, 37}}) {
    std::vector<int> visits(static_cast<size_t>(shape.batch * shape.features), 0);
    std::vector<int> thread_of_segment;
    bool aligned = true;
    std::mutex mutex;
    vaefast::cpu::parallel_row_segments(shape.batch, shape.features, [&](int64_t row, int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) ++visits[row * shape.features + j];
      std::lock_guard<std::mutex> lock(mutex);
      aligned = aligned && begin % vaefast::cpu::kSegmentAlign == 0 && end > begin;
      thread_of_segment.push_back(at::get_thread_num());
    });
    EXPECT_MSG(std::all_of(visits.begin(), visits.end(), [](int v) { return v == 1; }),
               describe(shape) + ": some element was not visited exactly once");
    EXPECT_MSG(aligned, describe(shape) + ": a segment starts inside a vector or is empty");
    const std::set<int> threads_used(thread_of_segment.begin(), thread_of_segment.end());
    EXPECT_MSG(threads_used.size() >= 2, describe(shape) + ": all segments ran on one thread");
  }
}
