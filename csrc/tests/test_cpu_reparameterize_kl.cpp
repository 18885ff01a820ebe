// Tests of the fused head's CPU kernels (cpu/reparameterize_kl_cpu.h) called directly on their params over
// std::vector data: the forward against reparameterize_forward and gaussian_kl_forward on the same inputs and
// Philox stream, bit for bit (z and the per-sample KL), with 1 to 3 samples, in double, float, half and
// bfloat16; the backward against long double; forward and backward bit for bit across thread counts.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cpu/gaussian_kl_cpu.h"
#include "cpu/reparameterize_cpu.h"
#include "cpu/reparameterize_kl_cpu.h"
#include "cpu_kernel_testing.h"
#include "test_main.h"

namespace {

using ld = long double;
using vaefast::acc_t;
using vaefast::PhiloxState;
using vaefast::testing::describe;
using vaefast::testing::first_bitwise_difference;
using vaefast::testing::RandomData;
using vaefast::testing::Shape;
using vaefast::testing::show;
using vaefast::testing::type_name;

// kernel_test_shapes() (vector tails, reduction chunks, empty), the training size, and shapes whose later
// samples start inside a 256-element noise tile and run past its end, so that both of
// reparameterize_forward's scalar tails occur in one sample: 3 x 37 = 111, 7 x 100, 1 x 300, 2 x 129.
std::vector<Shape> head_shapes() {
  std::vector<Shape> shapes = vaefast::testing::kernel_test_shapes();
  for (const Shape shape : {Shape{256, 64}, Shape{3, 37}, Shape{7, 100}, Shape{1, 300}, Shape{2, 129}}) {
    shapes.push_back(shape);
  }
  return shapes;
}

template <typename T>
struct HeadCase {
  Shape shape;
  int64_t num_samples;
  PhiloxState philox;
  std::vector<T> mu, logvar;  // [batch, features]
  int64_t numel() const { return shape.batch * shape.features; }
};

// The KL tests' ranges: double and float mu ~ N(0, 1.5^2), logvar over [-8, 8]; half and bfloat16 mu ~
// N(0, 0.5^2), logvar over [-2, 2] (per-sample sums of 50000 terms stay below half's largest value).
template <typename T>
HeadCase<T> make_case(RandomData& data, std::mt19937_64& rng, Shape shape, int64_t num_samples) {
  const int64_t n = shape.batch * shape.features;
  constexpr bool wide = std::is_same_v<T, acc_t<T>>;
  PhiloxState philox;
  philox.seed = rng();
  philox.offset = rng() >> 4;
  return {shape, num_samples, philox, data.normal<T>(n, wide ? 1.5 : 0.5),
          data.uniform<T>(n, wide ? -8 : -2, wide ? 8 : 2)};
}

template <typename T>
struct HeadOutputs {
  std::vector<T> z, per_sample;
};

template <typename T>
HeadOutputs<T> head_forward(const HeadCase<T>& c) {
  HeadOutputs<T> out{std::vector<T>(static_cast<size_t>(c.numel() * c.num_samples)),
                     std::vector<T>(static_cast<size_t>(c.shape.batch))};
  vaefast::ReparameterizeKlParams<T> p;
  p.mu = c.mu.data();
  p.logvar = c.logvar.data();
  p.z = out.z.data();
  p.per_sample = out.per_sample.data();
  p.batch = c.shape.batch;
  p.features = c.shape.features;
  p.num_samples = c.num_samples;
  p.philox = c.philox;
  vaefast::cpu::reparameterize_kl_forward(p);
  return out;
}

// What the two ops write for the same inputs and stream.
template <typename T>
HeadOutputs<T> separate_forward(const HeadCase<T>& c) {
  HeadOutputs<T> out{std::vector<T>(static_cast<size_t>(c.numel() * c.num_samples)),
                     std::vector<T>(static_cast<size_t>(c.shape.batch))};
  vaefast::ReparameterizeParams<T> r;
  r.mu = c.mu.data();
  r.logvar = c.logvar.data();
  r.z = out.z.data();
  r.numel = c.numel();
  r.num_samples = c.num_samples;
  r.philox = c.philox;
  vaefast::cpu::reparameterize_forward(r);
  vaefast::GaussianKlParams<T> k;
  k.mu = c.mu.data();
  k.logvar = c.logvar.data();
  k.per_sample = out.per_sample.data();
  k.batch = c.shape.batch;
  k.features = c.shape.features;
  vaefast::cpu::gaussian_kl_forward(k);
  return out;
}

template <typename T>
bool expect_same_bits(const std::vector<T>& actual, const std::vector<T>& expected, const std::string& what) {
  const int64_t at = first_bitwise_difference(actual, expected);
  const bool sizes_match = actual.size() == expected.size();
  return EXPECT_MSG(at < 0, what + " differs first at element " + show(at) + ": " +
                                (sizes_match ? show(static_cast<ld>(static_cast<acc_t<T>>(actual[at]))) + " vs " +
                                                   show(static_cast<ld>(static_cast<acc_t<T>>(expected[at])))
                                             : "sizes differ"));
}

// Several input sets per shape: an element whose path (Sleef or libm) is wrong shows only when the two round
// its exp differently, about 1 input in 10.
template <typename T>
void check_forward_is_the_two_kernels() {
  RandomData data(vaefast::testing::test_seed());
  std::mt19937_64 rng(vaefast::testing::test_seed() + 1);
  for (const Shape& shape : head_shapes()) {
    for (int64_t num_samples = 1; num_samples <= 3; ++num_samples) {
      for (int input_set = 0; input_set < 4; ++input_set) {
        const HeadCase<T> c = make_case<T>(data, rng, shape, num_samples);
        const HeadOutputs<T> head = head_forward(c);
        const HeadOutputs<T> separate = separate_forward(c);
        const std::string where = std::string("<") + type_name<T>() + "> " + describe(shape) + " x " +
                                  show(num_samples) + " samples";
        const bool same = expect_same_bits(head.z, separate.z, "z" + where) &
                          expect_same_bits(head.per_sample, separate.per_sample, "per_sample" + where);
        if (!same) return;
      }
    }
  }
}

template <typename T>
struct HeadGrads {
  std::vector<T> grad_mu, grad_logvar;
};

template <typename T>
HeadGrads<T> head_backward(const HeadCase<T>& c, const std::vector<T>& z, const std::vector<T>& grad_z,
                           const std::vector<T>& grad_kl) {
  HeadGrads<T> out{std::vector<T>(c.mu.size()), std::vector<T>(c.mu.size())};
  vaefast::ReparameterizeKlBackwardParams<T> p;
  p.grad_z = grad_z.data();
  p.grad_kl = grad_kl.data();
  p.z = z.data();
  p.mu = c.mu.data();
  p.logvar = c.logvar.data();
  p.grad_mu = out.grad_mu.data();
  p.grad_logvar = out.grad_logvar.data();
  p.batch = c.shape.batch;
  p.features = c.shape.features;
  p.num_samples = c.num_samples;
  vaefast::cpu::reparameterize_kl_backward(p);
  return out;
}

// grad_mu = sum_s g_s + g_kl mu and grad_logvar = sum_s 0.5 g_s (z_s - mu) + g_kl 0.5 expm1(lv) against long
// double on the same stored values. Each term is within 2.6 eps of its magnitude (z - mu and the products
// round once each; e^lv - 1 is within 2.1 eps, test_elementwise_math.cpp) and the S + 1 terms are added in
// order (S eps / 2 of the sum of magnitudes); the check allows twice that, plus the rounding to the storage
// type.
template <typename T>
void check_backward(const HeadCase<T>& c, RandomData& data) {
  using acc = acc_t<T>;
  const ld eps = std::numeric_limits<acc>::epsilon();
  const ld storage = vaefast::testing::storage_rounding<T>();
  const ld storage_absolute = 2 * vaefast::testing::storage_rounding_absolute<T>();
  const int64_t numel = c.numel();
  const std::vector<T> z = head_forward(c).z;
  const std::vector<T> grad_z = data.uniform<T>(numel * c.num_samples, -2, 2);
  const std::vector<T> grad_kl = data.uniform<T>(c.shape.batch, -2, 2);
  const HeadGrads<T> grads = head_backward(c, z, grad_z, grad_kl);
  const ld k = 2 * (2.6L + 0.5L * static_cast<ld>(c.num_samples));
  for (int64_t i = 0; i < numel; ++i) {
    const ld g = static_cast<acc>(grad_kl[i / c.shape.features]);
    const ld mu = static_cast<acc>(c.mu[i]);
    const ld kl_logvar = g * std::expm1(static_cast<ld>(static_cast<acc>(c.logvar[i]))) / 2;
    ld exact_mu = g * mu, magnitude_mu = std::fabs(g * mu);
    ld exact_logvar = kl_logvar, magnitude_logvar = std::fabs(kl_logvar);
    for (int64_t s = 0; s < c.num_samples; ++s) {
      const ld gz = static_cast<acc>(grad_z[s * numel + i]);
      const ld term = gz * (static_cast<acc>(z[s * numel + i]) - mu) / 2;
      exact_mu += gz;
      magnitude_mu += std::fabs(gz);
      exact_logvar += term;
      magnitude_logvar += std::fabs(term);
    }
    const ld actual_mu = static_cast<acc>(grads.grad_mu[i]);
    const ld actual_logvar = static_cast<acc>(grads.grad_logvar[i]);
    const bool ok_mu = std::fabs(actual_mu - exact_mu) <=
                       k * eps * magnitude_mu + 2 * storage * std::fabs(exact_mu) + storage_absolute;
    const bool ok_logvar = std::fabs(actual_logvar - exact_logvar) <=
                           k * eps * magnitude_logvar + 2 * storage * std::fabs(exact_logvar) + storage_absolute;
    if (!ok_mu || !ok_logvar) {
      EXPECT_MSG(false, std::string("reparameterize_kl_backward<") + type_name<T>() + "> " + describe(c.shape) +
                            " x " + show(c.num_samples) + " element " + show(i) + ": grad_mu " + show(actual_mu) +
                            " vs " + show(exact_mu) + ", grad_logvar " + show(actual_logvar) + " vs " +
                            show(exact_logvar));
      return;
    }
  }
  EXPECT_TRUE(true);
}

template <typename T>
void check_backward_against_long_double() {
  RandomData data(vaefast::testing::test_seed());
  std::mt19937_64 rng(vaefast::testing::test_seed() + 1);
  for (const Shape& shape : head_shapes()) {
    for (int64_t num_samples = 1; num_samples <= 3; ++num_samples) {
      check_backward(make_case<T>(data, rng, shape, num_samples), data);
    }
  }
}

// Forward and backward give the same bits with 1 and 2 threads: the rows a thread takes decide where its
// noise streams start, never which normals or which path an element gets. [600, 37]: short rows with
// vector tails, split between the threads mid-tile; [5, 16500]: rows of several reduction chunks.
template <typename T>
void check_determinism() {
  using vaefast::testing::NumThreads;
  const uint64_t seed = vaefast::testing::test_seed();
  for (const Shape shape : {vaefast::testing::parallel_shape(), Shape{600, 37}}) {
    std::vector<HeadOutputs<T>> forward[2];
    std::vector<HeadGrads<T>> backward[2];
    for (int threads = 1; threads <= 2; ++threads) {
      NumThreads scoped(threads);
      RandomData data(seed);
      std::mt19937_64 rng(seed + 1);
      for (int input_set = 0; input_set < 8; ++input_set) {
        const HeadCase<T> c = make_case<T>(data, rng, shape, 2);
        forward[threads - 1].push_back(head_forward(c));
        const std::vector<T> grad_z = data.uniform<T>(c.numel() * 2, -2, 2);
        const std::vector<T> grad_kl = data.uniform<T>(shape.batch, -2, 2);
        backward[threads - 1].push_back(head_backward(c, forward[threads - 1].back().z, grad_z, grad_kl));
      }
    }
    for (size_t input_set = 0; input_set < forward[0].size(); ++input_set) {
      const std::string where = std::string(" <") + type_name<T>() + "> " + describe(shape) +
                                " between 1 and 2 threads, input set " + show(input_set);
      const bool same = expect_same_bits(forward[1][input_set].z, forward[0][input_set].z, "z" + where) &
                        expect_same_bits(forward[1][input_set].per_sample, forward[0][input_set].per_sample,
                                         "per_sample" + where) &
                        expect_same_bits(backward[1][input_set].grad_mu, backward[0][input_set].grad_mu,
                                         "grad_mu" + where) &
                        expect_same_bits(backward[1][input_set].grad_logvar, backward[0][input_set].grad_logvar,
                                         "grad_logvar" + where);
      if (!same) return;
    }
  }
}

}  // namespace

VAEFAST_TEST(cpu_reparameterize_kl_forward_is_the_two_kernels_double) { check_forward_is_the_two_kernels<double>(); }
VAEFAST_TEST(cpu_reparameterize_kl_forward_is_the_two_kernels_float) { check_forward_is_the_two_kernels<float>(); }
VAEFAST_TEST(cpu_reparameterize_kl_forward_is_the_two_kernels_half) { check_forward_is_the_two_kernels<c10::Half>(); }
VAEFAST_TEST(cpu_reparameterize_kl_forward_is_the_two_kernels_bfloat16) {
  check_forward_is_the_two_kernels<c10::BFloat16>();
}

VAEFAST_TEST(cpu_reparameterize_kl_backward_double) { check_backward_against_long_double<double>(); }
VAEFAST_TEST(cpu_reparameterize_kl_backward_float) { check_backward_against_long_double<float>(); }
VAEFAST_TEST(cpu_reparameterize_kl_backward_half) { check_backward_against_long_double<c10::Half>(); }
VAEFAST_TEST(cpu_reparameterize_kl_backward_bfloat16) { check_backward_against_long_double<c10::BFloat16>(); }

VAEFAST_TEST(cpu_reparameterize_kl_deterministic_across_threads_double) { check_determinism<double>(); }
VAEFAST_TEST(cpu_reparameterize_kl_deterministic_across_threads_float) { check_determinism<float>(); }
