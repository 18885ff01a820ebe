// The CUDA kernels of vaefast::gaussian_nll (csrc/cuda/gaussian_nll_cuda.cu) run on the CPU emulator, against
// the CPU kernels (csrc/cpu/gaussian_nll_cpu.h) in double on the same inputs, for every log_gamma layout
// (scalar, per sample, per feature, full) in double, float, half and bfloat16: vector and scalar paths,
// one chunk and many, one and several 64-row blocks of the per-feature gradient, grid-stride loops; and the
// same bits on every emulated device.
#include <string>
#include <vector>

#include "cpu/gaussian_nll_cpu.h"
#include "emulator_testing.h"

namespace {

using ld = long double;
using vaefast::acc_t;
using vaefast::LogGammaLayout;
using namespace vaefast::testing;
namespace cuda = vaefast::cuda;

const LogGammaLayout kLayouts[] = {LogGammaLayout::kScalar, LogGammaLayout::kPerSample, LogGammaLayout::kPerFeature,
                                   LogGammaLayout::kFull};
const char* layout_name(LogGammaLayout layout) {
  switch (layout) {
    case LogGammaLayout::kScalar:
      return "scalar";
    case LogGammaLayout::kPerSample:
      return "per-sample";
    case LogGammaLayout::kPerFeature:
      return "per-feature";
    case LogGammaLayout::kFull:
      return "full";
  }
  return "?";
}

int64_t log_gamma_size(LogGammaLayout layout, Shape shape) {
  switch (layout) {
    case LogGammaLayout::kScalar:
      return 1;
    case LogGammaLayout::kPerSample:
      return shape.batch;
    case LogGammaLayout::kPerFeature:
      return shape.features;
    case LogGammaLayout::kFull:
      return shape.batch * shape.features;
  }
  return 0;
}

// x in [0, 1] (pixels), x_hat = x + N(0, 0.2^2), log_gamma in [-1.5, 1] (gamma from 0.22 to 2.7), grad in
// [-2, 2]. A row of 5000 terms stays below 65504 in half (each term at most ~20 * 0.04 + 2).
template <typename T>
struct NllCase {
  Shape shape;
  LogGammaLayout layout;
  std::vector<T> x, x_hat, log_gamma, grad;
  int64_t numel() const { return shape.batch * shape.features; }
  // log_gamma's value for element (b, j).
  int64_t log_gamma_index(int64_t b, int64_t j) const {
    switch (layout) {
      case LogGammaLayout::kScalar:
        return 0;
      case LogGammaLayout::kPerSample:
        return b;
      case LogGammaLayout::kPerFeature:
        return j;
      case LogGammaLayout::kFull:
        return b * shape.features + j;
    }
    return 0;
  }
};

template <typename T>
NllCase<T> make_case(RandomData& data, Shape shape, LogGammaLayout layout) {
  NllCase<T> c{shape, layout, data.uniform<T>(shape.batch * shape.features, 0, 1), {},
               data.uniform<T>(log_gamma_size(layout, shape), -1.5, 1), data.uniform<T>(shape.batch, -2, 2)};
  const std::vector<double> noise = data.normal<double>(c.numel(), 0.2);
  c.x_hat.resize(c.x.size());
  for (size_t i = 0; i < c.x.size(); ++i) {
    c.x_hat[i] = static_cast<T>(static_cast<double>(static_cast<acc_t<T>>(c.x[i])) + noise[i]);
  }
  return c;
}

template <typename T>
struct NllOutputs {
  std::vector<T> per_sample, grad_x_hat, grad_log_gamma;
};

template <typename Params, typename T>
void fill(Params& p, const NllCase<T>& c) {
  p.batch = c.shape.batch;
  p.features = c.shape.features;
  p.layout = c.layout;
}

template <typename T>
NllOutputs<T> emulate(const NllCase<T>& c, int64_t misalign) {
  using S = cuda_t<T>;
  Buffer<T> x(c.x, misalign), x_hat(c.x_hat, misalign), log_gamma(c.log_gamma, misalign), grad(c.grad, misalign);
  Buffer<T> per_sample(c.shape.batch, misalign), grad_x_hat(c.numel(), misalign);
  Buffer<T> grad_log_gamma(static_cast<int64_t>(c.log_gamma.size()), misalign);
  vaefast::GaussianNllParams<S> forward;
  fill(forward, c);
  forward.x = cuda_pointer(x.data());
  forward.x_hat = cuda_pointer(x_hat.data());
  forward.log_gamma = cuda_pointer(log_gamma.data());
  forward.per_sample = cuda_pointer(per_sample.data());
  Workspace forward_workspace(cuda::gaussian_nll_workspace_bytes(forward));
  forward.workspace = forward_workspace.data();
  cuda::launch_gaussian_nll(forward, nullptr);

  vaefast::GaussianNllBackwardParams<S> backward;
  fill(backward, c);
  backward.grad = cuda_pointer(grad.data());
  backward.x = forward.x;
  backward.x_hat = forward.x_hat;
  backward.log_gamma = forward.log_gamma;
  backward.grad_x_hat = cuda_pointer(grad_x_hat.data());
  backward.grad_log_gamma = cuda_pointer(grad_log_gamma.data());
  Workspace backward_workspace(cuda::gaussian_nll_backward_workspace_bytes(backward));
  backward.workspace = backward_workspace.data();
  cuda::launch_gaussian_nll_backward(backward, nullptr);
  return {per_sample.values(), grad_x_hat.values(), grad_log_gamma.values()};
}

NllOutputs<double> reference(const NllCase<double>& c) {
  NllOutputs<double> out{std::vector<double>(c.shape.batch), std::vector<double>(c.x.size()),
                         std::vector<double>(c.log_gamma.size())};
  vaefast::GaussianNllParams<double> forward;
  fill(forward, c);
  forward.x = c.x.data();
  forward.x_hat = c.x_hat.data();
  forward.log_gamma = c.log_gamma.data();
  forward.per_sample = out.per_sample.data();
  vaefast::cpu::gaussian_nll_forward(forward);
  vaefast::GaussianNllBackwardParams<double> backward;
  fill(backward, c);
  backward.grad = c.grad.data();
  backward.x = c.x.data();
  backward.x_hat = c.x_hat.data();
  backward.log_gamma = c.log_gamma.data();
  backward.grad_x_hat = out.grad_x_hat.data();
  backward.grad_log_gamma = out.grad_log_gamma.data();
  vaefast::cpu::gaussian_nll_backward(backward);
  return out;
}

// Error bounds, each doubled (the reference's own error, for double) plus the storage rounding:
// - per_sample: a term (x - x_hat)^2 / (2 gamma^2) + log_gamma + 0.5 log 2 pi is within 5 eps of the sum
//   of its parts' magnitudes (exp 1 ulp, the difference, square, products and sum half an ulp each), and
//   the row sum adds depth / 2 eps of the terms' absolute sum (the per-row layouts add features times the
//   constant once: within the same bound).
// - grad_x_hat = g (x_hat - x) / gamma^2: 3 eps of itself.
// - grad_log_gamma sums g (1 - (x - x_hat)^2 / gamma^2) over the elements sharing a log_gamma value:
//   (4 + depth / 2) eps of the sum of g (1 + (x - x_hat)^2 / gamma^2), depth the longest addition chain:
//   the row sums' (per-row layouts; the scalar one then adds its rows: rows / 256 per thread and 8 levels
//   of block_sum), 64 rows per block and the blocks in order (per feature), none (full).
template <typename T>
void check(const NllCase<T>& c, const NllOutputs<T>& actual, const std::string& what) {
  const ld eps = accumulation_eps<T>();
  const NllCase<double> wide{c.shape, c.layout, to_double(c.x), to_double(c.x_hat), to_double(c.log_gamma),
                             to_double(c.grad)};
  const NllOutputs<double> expected = reference(wide);
  const int64_t B = c.shape.batch, F = c.shape.features;
  const ld row_depth = cuda_row_sum_depth(F, cuda::kVecWidth<cuda_t<T>>) +
                       (std::is_same_v<T, double> ? summation_depth<double>(F) : 0);
  std::vector<ld> per_sample_tolerance(B), grad_x_hat_tolerance(c.x.size());
  std::vector<ld> grad_magnitude(c.log_gamma.size(), 0);
  const ld half_log_2pi = 0.5L * std::log(2 * std::acos(-1.0L));
  for (int64_t b = 0; b < B; ++b) {
    ld magnitude = 0;
    for (int64_t j = 0; j < F; ++j) {
      const int64_t i = b * F + j;
      const ld log_gamma = wide.log_gamma[c.log_gamma_index(b, j)];
      const ld residual = wide.x[i] - wide.x_hat[i];
      const ld scaled = residual * residual * std::exp(-2 * log_gamma);
      magnitude += scaled / 2 + std::fabs(log_gamma + half_log_2pi);
      grad_x_hat_tolerance[i] = 2 * 3 * eps * std::fabs(expected.grad_x_hat[i]) +
                                storage_tolerance<T>(expected.grad_x_hat[i]);
      grad_magnitude[c.log_gamma_index(b, j)] += std::fabs(wide.grad[b]) * (1 + scaled);
    }
    per_sample_tolerance[b] = 2 * (5 + row_depth / 2) * eps * magnitude + storage_tolerance<T>(expected.per_sample[b]);
  }
  ld gradient_depth = 0;
  switch (c.layout) {
    case LogGammaLayout::kScalar:
      gradient_depth = row_depth + (B + 255) / 256 + 8;
      break;
    case LogGammaLayout::kPerSample:
      gradient_depth = row_depth;
      break;
    case LogGammaLayout::kPerFeature:
      gradient_depth = 64 + (B + 63) / 64 + (std::is_same_v<T, double> ? B : 0);
      break;
    case LogGammaLayout::kFull:
      gradient_depth = 1;
      break;
  }
  std::vector<ld> grad_log_gamma_tolerance(grad_magnitude.size());
  for (size_t k = 0; k < grad_magnitude.size(); ++k) {
    grad_log_gamma_tolerance[k] = 2 * (4 + gradient_depth / 2) * eps * grad_magnitude[k] +
                                  storage_tolerance<T>(expected.grad_log_gamma[k]);
  }
  expect_all_near(what + " per_sample", widen(actual.per_sample), widen(expected.per_sample), per_sample_tolerance);
  expect_all_near(what + " grad_x_hat", widen(actual.grad_x_hat), widen(expected.grad_x_hat), grad_x_hat_tolerance);
  expect_all_near(what + " grad_log_gamma", widen(actual.grad_log_gamma), widen(expected.grad_log_gamma),
                  grad_log_gamma_tolerance);
}

// Sizes around the pack widths; 130 and 300 rows (three and five 64-row blocks of the per-feature
// gradient; 300 one-chunk rows outnumber the warps of a 1- or 2-SM grid); 5000 columns (three chunks);
// 130 x 2000 (6000 per-feature items: a grid-stride loop on 1 SM).
std::vector<Shape> shapes() { return {{1, 1}, {1, 3}, {3, 13}, {4, 64}, {2, 5000}, {130, 37}, {300, 40}, {130, 2000}}; }

template <typename T>
void check_all_shapes() {
  RandomData data(test_seed());
  const std::vector<Device> devices = all_devices();
  size_t run = 0;
  for (const Shape shape : shapes()) {
    for (const LogGammaLayout layout : kLayouts) {
      const NllCase<T> c = make_case<T>(data, shape, layout);
      for (const int64_t misalign : {0, 1}) {
        const Device& device = devices[run++ % devices.size()];
        const std::string what = std::string("gaussian_nll<") + type_name<T>() + "> " + describe(shape) + " " +
                                 layout_name(layout) + (misalign != 0 ? " misaligned" : "") + " on " +
                                 describe(device);
        NllOutputs<T> actual;
        if (!on_device(device, what, [&] { actual = emulate(c, misalign); })) return;
        check(c, actual, what);
      }
    }
  }
}

VAEFAST_TEST(emulated_gaussian_nll_double) { check_all_shapes<double>(); }
VAEFAST_TEST(emulated_gaussian_nll_float) { check_all_shapes<float>(); }
VAEFAST_TEST(emulated_gaussian_nll_half) { check_all_shapes<c10::Half>(); }
VAEFAST_TEST(emulated_gaussian_nll_bfloat16) { check_all_shapes<c10::BFloat16>(); }

template <typename T>
void check_deterministic() {
  RandomData data(test_seed());
  for (const LogGammaLayout layout : kLayouts) {
    const NllCase<T> c = make_case<T>(data, {300, 40}, layout);
    NllOutputs<T> first;
    bool have_first = false;
    for (const Device& device : all_devices()) {
      const std::string what = std::string("gaussian_nll<") + type_name<T>() + "> " + layout_name(layout) + " on " +
                               describe(device);
      NllOutputs<T> run;
      if (!on_device(device, what, [&] { run = emulate(c, 0); })) return;
      if (!have_first) {
        first = run;
        have_first = true;
        continue;
      }
      expect_same_bits(what + " per_sample", run.per_sample, first.per_sample);
      expect_same_bits(what + " grad_x_hat", run.grad_x_hat, first.grad_x_hat);
      expect_same_bits(what + " grad_log_gamma", run.grad_log_gamma, first.grad_log_gamma);
    }
  }
}

VAEFAST_TEST(emulated_gaussian_nll_deterministic) {
  check_deterministic<double>();
  check_deterministic<float>();
  check_deterministic<c10::Half>();
  check_deterministic<c10::BFloat16>();
}

}  // namespace
