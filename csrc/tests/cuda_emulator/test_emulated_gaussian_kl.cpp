// The CUDA kernels of vaefast::gaussian_kl (csrc/cuda/gaussian_kl_cuda.cu) run on the CPU emulator, against
// the CPU kernels (csrc/cpu/gaussian_kl_cpu.h) in double on the same inputs, in double, float, half and
// bfloat16: the vector and scalar paths (features a multiple of the pack width or not, pointers aligned or
// one element off), one chunk and many, more items than the grid has warps; and the same bits on every
// emulated device.
#include <string>
#include <vector>

#include "cpu/gaussian_kl_cpu.h"
#include "emulator_testing.h"

namespace {

using ld = long double;
using vaefast::acc_t;
using vaefast::GaussianKlBackwardParams;
using vaefast::GaussianKlParams;
using namespace vaefast::testing;

template <typename T>
struct KlCase {
  Shape shape;
  std::vector<T> mu, logvar, grad;  // [batch, features], [batch, features], [batch]
  int64_t numel() const { return shape.batch * shape.features; }
};

// The CPU tests' ranges (test_cpu_kernels.cpp): half and bfloat16 keep a 50000-term row below 65504.
template <typename T>
KlCase<T> make_case(RandomData& data, Shape shape) {
  const int64_t n = shape.batch * shape.features;
  constexpr bool wide = std::is_same_v<T, acc_t<T>>;
  return {shape, data.normal<T>(n, wide ? 1.5 : 0.5), data.uniform<T>(n, wide ? -8 : -2, wide ? 8 : 2),
          data.uniform<T>(shape.batch, -2, 2)};
}

template <typename T>
struct KlOutputs {
  std::vector<T> per_sample, grad_mu, grad_logvar;
};

// Forward and backward on the emulated device, every tensor `misalign` elements off a 16-byte boundary.
template <typename T>
KlOutputs<T> emulate(const KlCase<T>& c, int64_t misalign) {
  using S = cuda_t<T>;
  Buffer<T> mu(c.mu, misalign), logvar(c.logvar, misalign), grad(c.grad, misalign);
  Buffer<T> per_sample(c.shape.batch, misalign), grad_mu(c.numel(), misalign), grad_logvar(c.numel(), misalign);
  GaussianKlParams<S> forward;
  forward.mu = cuda_pointer(mu.data());
  forward.logvar = cuda_pointer(logvar.data());
  forward.per_sample = cuda_pointer(per_sample.data());
  forward.batch = c.shape.batch;
  forward.features = c.shape.features;
  Workspace workspace(vaefast::cuda::gaussian_kl_workspace_bytes(forward));
  forward.workspace = workspace.data();
  vaefast::cuda::launch_gaussian_kl(forward, nullptr);

  GaussianKlBackwardParams<S> backward;
  backward.grad = cuda_pointer(grad.data());
  backward.mu = forward.mu;
  backward.logvar = forward.logvar;
  backward.grad_mu = cuda_pointer(grad_mu.data());
  backward.grad_logvar = cuda_pointer(grad_logvar.data());
  backward.batch = c.shape.batch;
  backward.features = c.shape.features;
  vaefast::cuda::launch_gaussian_kl_backward(backward, nullptr);
  return {per_sample.values(), grad_mu.values(), grad_logvar.values()};
}

// The reference: the CPU kernels in double on the same values (exact widenings of T).
KlOutputs<double> reference(const KlCase<double>& c) {
  KlOutputs<double> out{std::vector<double>(c.shape.batch), std::vector<double>(c.mu.size()),
                        std::vector<double>(c.mu.size())};
  GaussianKlParams<double> forward;
  forward.mu = c.mu.data();
  forward.logvar = c.logvar.data();
  forward.per_sample = out.per_sample.data();
  forward.batch = c.shape.batch;
  forward.features = c.shape.features;
  vaefast::cpu::gaussian_kl_forward(forward);
  GaussianKlBackwardParams<double> backward;
  backward.grad = c.grad.data();
  backward.mu = c.mu.data();
  backward.logvar = c.logvar.data();
  backward.grad_mu = out.grad_mu.data();
  backward.grad_logvar = out.grad_logvar.data();
  backward.batch = c.shape.batch;
  backward.features = c.shape.features;
  vaefast::cpu::gaussian_kl_backward(backward);
  return out;
}

// Forward: every KL term is >= 0 and within 6.5 eps of itself (test_elementwise_math.cpp), so the sum's
// magnitude is the sum itself and the error at most (6.5 + depth / 2) eps times it, depth that of the CUDA
// order (cuda_row_sum_depth) plus, for double, that of the CPU reference's (summation_depth); doubled,
// plus the storage rounding. Backward: grad_mu = g mu is one rounding, grad_logvar = g 0.5 expm1(lv) at
// most 2.1 + 1 eps; 3 eps doubled, plus the storage rounding.
template <typename T>
void check(const KlCase<T>& c, const KlOutputs<T>& actual, const std::string& what) {
  const ld eps = accumulation_eps<T>();
  const KlOutputs<double> expected = reference({c.shape, to_double(c.mu), to_double(c.logvar), to_double(c.grad)});
  const ld depth = cuda_row_sum_depth(c.shape.features, vaefast::cuda::kVecWidth<vaefast::testing::cuda_t<T>>) +
                   (std::is_same_v<T, double> ? summation_depth<double>(c.shape.features) : 0);
  std::vector<ld> tolerance(expected.per_sample.size());
  for (size_t b = 0; b < tolerance.size(); ++b) {
    tolerance[b] = 2 * (6.5L + depth / 2) * eps * expected.per_sample[b] + storage_tolerance<T>(expected.per_sample[b]);
  }
  expect_all_near(what + " per_sample", widen(actual.per_sample), widen(expected.per_sample), tolerance);
  for (const auto& [name, got, want] : {std::tuple{"grad_mu", &actual.grad_mu, &expected.grad_mu},
                                        std::tuple{"grad_logvar", &actual.grad_logvar, &expected.grad_logvar}}) {
    std::vector<ld> elementwise(want->size());
    for (size_t i = 0; i < elementwise.size(); ++i) {
      elementwise[i] = 2 * 3 * eps * std::fabs((*want)[i]) + storage_tolerance<T>((*want)[i]);
    }
    expect_all_near(what + " " + name, widen(*got), widen(*want), elementwise);
  }
}

// kernel_test_shapes() without the empty ones (the glue never launches those), plus 300 rows of one
// chunk (more warp items than the grid has warps on 1 and 2 SMs: the grid-stride loop) and a row of 35
// chunks (finish_row_sums' lanes take two chunks each).
std::vector<Shape> shapes() {
  std::vector<Shape> out;
  for (const Shape shape : kernel_test_shapes()) {
    if (shape.batch > 0 && shape.features > 0) out.push_back(shape);
  }
  out.push_back({300, 40});
  out.push_back({1, 70000});
  return out;
}

template <typename T>
void check_all_shapes() {
  RandomData data(test_seed());
  const std::vector<Device> devices = all_devices();
  size_t run = 0;
  for (const Shape shape : shapes()) {
    const KlCase<T> c = make_case<T>(data, shape);
    for (const int64_t misalign : {0, 1}) {
      const Device& device = devices[run++ % devices.size()];
      const std::string what = std::string("gaussian_kl<") + type_name<T>() + "> " + describe(shape) +
                               (misalign != 0 ? " misaligned" : "");
      KlOutputs<T> actual;
      if (!on_device(device, what, [&] { actual = emulate(c, misalign); })) return;
      check(c, actual, what + " on " + describe(device));
    }
  }
}

VAEFAST_TEST(emulated_gaussian_kl_double) { check_all_shapes<double>(); }
VAEFAST_TEST(emulated_gaussian_kl_float) { check_all_shapes<float>(); }
VAEFAST_TEST(emulated_gaussian_kl_half) { check_all_shapes<c10::Half>(); }
VAEFAST_TEST(emulated_gaussian_kl_bfloat16) { check_all_shapes<c10::BFloat16>(); }

// The same bits on every emulated device: SM counts 1, 2, 7, 132 (grids of different sizes, the
// grid-stride loops taking different numbers of rounds) and both lane orders.
template <typename T>
void check_deterministic() {
  RandomData data(test_seed());
  for (const Shape shape : {Shape{300, 40}, Shape{5, 16500}, Shape{3, 13}}) {
    const KlCase<T> c = make_case<T>(data, shape);
    KlOutputs<T> first;
    bool have_first = false;
    for (const Device& device : all_devices()) {
      const std::string what = std::string("gaussian_kl<") + type_name<T>() + "> " + describe(shape);
      KlOutputs<T> run;
      if (!on_device(device, what, [&] { run = emulate(c, 0); })) return;
      if (!have_first) {
        first = run;
        have_first = true;
        continue;
      }
      const std::string against = what + " on " + describe(device) + " vs " + describe(all_devices()[0]);
      expect_same_bits(against + " per_sample", run.per_sample, first.per_sample);
      expect_same_bits(against + " grad_mu", run.grad_mu, first.grad_mu);
      expect_same_bits(against + " grad_logvar", run.grad_logvar, first.grad_logvar);
    }
  }
}

VAEFAST_TEST(emulated_gaussian_kl_deterministic) {
  check_deterministic<double>();
  check_deterministic<float>();
  check_deterministic<c10::Half>();
  check_deterministic<c10::BFloat16>();
}

}  // namespace
