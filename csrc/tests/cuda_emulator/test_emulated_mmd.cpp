// The CUDA kernels of the MMD kernel sums (csrc/cuda/mmd_cuda.cu) run on the CPU emulator, against the CPU
// kernels (csrc/cpu/mmd_cpu.h) in double on the same inputs: the self sum (with and without the diagonal)
// and the cross sum, forward and backward (the row-gradient kernel with its opt-in dynamic shared memory
// above 48 KB), for the IMQ and RBF kernels with 1 to 7 scales and the polynomial kernel, in double, float,
// half and bfloat16; odd sizes (partial 64-row tiles), d above 32 and 64 (several staged feature chunks,
// several output chunks), and enough tiles that a forward block walks two column tiles; the same bits on
// every emulated device.
#include <random>
#include <string>
#include <vector>

#include "cpu/mmd_cpu.h"
#include "emulator_testing.h"

namespace {

using ld = long double;
using vaefast::acc_t;
using vaefast::PairKernel;
using namespace vaefast::testing;
namespace cuda = vaefast::cuda;

const char* kernel_name(PairKernel kernel) {
  return kernel == PairKernel::kImq ? "imq" : kernel == PairKernel::kRbf ? "rbf" : "poly";
}

struct Geometry {
  int64_t n, m, d;
};

template <typename T>
struct MmdCase {
  Geometry size;
  PairKernel kernel;
  bool self_pairs, exclude_diagonal;
  int num_scales;
  double scale_constant[vaefast::kMaxKernelScales];
  double grad;
  std::vector<T> x, y;  // [n, d], [m, d] (y unused by the self sum)
};

// x ~ N(0, 1), y ~ N(0.3, 1); the IMQ and RBF scales C_s = s * 2 d with s drawn from {0.1, ..., 10} (the
// glue's s * 2 d bandwidth^2 at bandwidth 1), 1 to 7 of them.
template <typename T>
MmdCase<T> make_case(RandomData& data, std::mt19937_64& rng, Geometry size, PairKernel kernel, bool self_pairs,
                     bool exclude_diagonal) {
  MmdCase<T> c{size, kernel, self_pairs, exclude_diagonal, 0, {}, 0, data.normal<T>(size.n * size.d, 1), {}};
  const std::vector<double> shifted = data.normal<double>(size.m * size.d, 1);
  c.y.resize(shifted.size());
  for (size_t i = 0; i < shifted.size(); ++i) c.y[i] = static_cast<T>(shifted[i] + 0.3);
  if (kernel != PairKernel::kPoly) {
    const double scales[] = {0.1, 0.2, 0.5, 1, 2, 5, 10};
    c.num_scales = 1 + static_cast<int>(rng() % 7);
    for (int s = 0; s < c.num_scales; ++s) c.scale_constant[s] = scales[(s + rng()) % 7] * 2 * size.d;
  }
  c.grad = std::uniform_real_distribution<double>(-2, 2)(rng);
  return c;
}

template <typename Params, typename T>
void fill_pairs(Params& p, const MmdCase<T>& c) {
  p.n = c.size.n;
  p.m = c.self_pairs ? c.size.n : c.size.m;
  p.d = c.size.d;
  p.kernel = c.kernel;
  p.num_scales = c.num_scales;
  for (int s = 0; s < vaefast::kMaxKernelScales; ++s) p.scale_constant[s] = c.scale_constant[s];
  p.self_pairs = c.self_pairs;
  p.exclude_diagonal = c.exclude_diagonal;
}

template <typename T>
struct MmdOutputs {
  double sum = 0;
  std::vector<T> grad_x, grad_y;
};

template <typename T>
MmdOutputs<T> emulate(const MmdCase<T>& c, bool with_backward) {
  using S = cuda_t<T>;
  Buffer<T> x(c.x, 0), y(c.y, 0);
  Buffer<double> out(1), grad(std::vector<double>{c.grad}, 0);
  vaefast::KernelSumParams<S> forward;
  fill_pairs(forward, c);
  forward.x = cuda_pointer(x.data());
  forward.y = c.self_pairs ? forward.x : cuda_pointer(y.data());
  forward.out = out.data();
  Workspace workspace(cuda::kernel_sum_workspace_bytes(forward));
  forward.workspace = workspace.data();
  cuda::launch_kernel_sum(forward, nullptr);
  MmdOutputs<T> result;
  result.sum = out.data()[0];
  if (!with_backward) return result;

  Buffer<T> grad_x(c.size.n * c.size.d), grad_y(c.self_pairs ? 0 : c.size.m * c.size.d);
  vaefast::KernelSumBackwardParams<S> backward;
  fill_pairs(backward, c);
  backward.grad = grad.data();
  backward.x = forward.x;
  backward.y = forward.y;
  backward.grad_x = cuda_pointer(grad_x.data());
  backward.grad_y = c.self_pairs ? nullptr : cuda_pointer(grad_y.data());
  cuda::launch_kernel_sum_backward(backward, nullptr);
  result.grad_x = grad_x.values();
  result.grad_y = grad_y.values();
  return result;
}

MmdOutputs<double> reference(const MmdCase<double>& c, bool with_backward) {
  MmdOutputs<double> result;
  vaefast::KernelSumParams<double> forward;
  fill_pairs(forward, c);
  forward.x = c.x.data();
  forward.y = c.self_pairs ? c.x.data() : c.y.data();
  forward.out = &result.sum;
  vaefast::cpu::kernel_sum_forward(forward);
  if (!with_backward) return result;
  result.grad_x.resize(c.x.size());
  result.grad_y.resize(c.self_pairs ? 0 : c.y.size());
  vaefast::KernelSumBackwardParams<double> backward;
  fill_pairs(backward, c);
  backward.grad = &c.grad;
  backward.x = forward.x;
  backward.y = forward.y;
  backward.grad_x = result.grad_x.data();
  backward.grad_y = c.self_pairs ? nullptr : result.grad_y.data();
  vaefast::cpu::kernel_sum_backward(backward);
  return result;
}

// The kernel value k, slope k' and curvature k'' at statistic s (D = ||a - b||^2 or a.b), in long double.
struct PairDerivatives {
  ld value = 0, slope = 0, curvature = 0;
};
template <typename T>
PairDerivatives derivatives(const MmdCase<T>& c, ld s) {
  PairDerivatives out;
  if (c.kernel == PairKernel::kPoly) {
    const ld base = s / c.size.d + 1;
    return {base * base * base, 3 * base * base / c.size.d, 6 * base / (static_cast<ld>(c.size.d) * c.size.d)};
  }
  for (int k = 0; k < c.num_scales; ++k) {
    const ld scale = c.scale_constant[k];
    if (c.kernel == PairKernel::kImq) {
      const ld ratio = scale / (scale + s);
      out.value += ratio;
      out.slope -= ratio * ratio / scale;
      out.curvature += 2 * ratio * ratio * ratio / (scale * scale);
    } else {
      const ld term = std::exp(-s / scale);
      out.value += term;
      out.slope -= term / scale;
      out.curvature += term / (scale * scale);
    }
  }
  return out;
}

// Error bounds (each doubled: the reference's own error for double; plus the storage rounding):
// - The statistic: sum_k (a_k - b_k)^2 in the accumulation type is within (d + 2) eps of itself (a rounded
//   difference squared, d fused adds of non-negative terms); a.b within (d + 1) eps of sum_k |a_k b_k|.
// - A pair's value: |k'| times that, plus (3 + 2 scales) eps of the value (a division or exp and a sum
//   per scale); the sum adds each thread's 16 weighted values of a tile in the accumulation type (16 eps
//   of their absolute sum), then doubles.
// - A gradient element factor * grad * sum_j k'(s_ij) v_ij (v = a_if - b_jf, or b_jf for "poly"):
//   per pair |k''| times the statistic's error plus (5 + 2 scales) eps of |k'|, times |v|, plus the
//   fused additions over the m pairs, (m / 2 + 2) eps of sum_j |k' v|.
template <typename T>
void check(const MmdCase<T>& c, const MmdOutputs<T>& actual, bool with_backward, const std::string& what) {
  const ld eps = accumulation_eps<T>();
  MmdCase<double> wide{c.size, c.kernel, c.self_pairs, c.exclude_diagonal, c.num_scales, {}, c.grad,
                       to_double(c.x), to_double(c.y)};
  std::copy(std::begin(c.scale_constant), std::end(c.scale_constant), std::begin(wide.scale_constant));
  const MmdOutputs<double> expected = reference(wide, with_backward);
  const int64_t n = c.size.n, d = c.size.d;
  const int64_t m = c.self_pairs ? n : c.size.m;
  const std::vector<double>& a = wide.x;
  const std::vector<double>& b = c.self_pairs ? wide.x : wide.y;
  const bool dot = c.kernel == PairKernel::kPoly;
  const ld value_rounding = (3 + 2 * c.num_scales) * eps;
  ld sum_tolerance = 0, magnitude = 0;
  // Per pair: the statistic's error and the derivatives, kept for the gradient bounds.
  std::vector<ld> statistic_error(static_cast<size_t>(n * m)), slope(statistic_error.size()),
      curvature(statistic_error.size());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      ld statistic = 0, absolute = 0;
      for (int64_t k = 0; k < d; ++k) {
        const ld u = a[i * d + k], v = b[j * d + k];
        statistic += dot ? u * v : (u - v) * (u - v);
        absolute += std::fabs(u * v);
      }
      const ld error = dot ? (d + 1) * eps * absolute : (d + 2) * eps * statistic;
      const PairDerivatives k = derivatives(c, statistic);
      statistic_error[i * m + j] = error;
      slope[i * m + j] = k.slope;
      curvature[i * m + j] = k.curvature;
      const bool counted = !(c.self_pairs && c.exclude_diagonal && i == j);
      if (!counted) continue;
      sum_tolerance += std::fabs(k.slope) * error + value_rounding * std::fabs(k.value);
      magnitude += std::fabs(k.value);
    }
  }
  sum_tolerance = 2 * (sum_tolerance + 16 * eps * magnitude) + 1e-12L * magnitude;
  EXPECT_MSG(std::fabs(actual.sum - expected.sum) <= sum_tolerance,
             what + " sum: " + show(actual.sum) + " vs reference " + show(expected.sum) + ", tolerance " +
                 show(sum_tolerance));
  if (!with_backward) return;

  // One side's gradient: rows of `left` against every row of `right` (pair statistics indexed [row, other]
  // for the x side, [other, row] for the y side).
  const auto check_side = [&](const std::vector<T>& got, const std::vector<double>& want,
                              const std::vector<double>& left, const std::vector<double>& right, int64_t rows,
                              int64_t others, bool y_side, const char* name) {
    const ld factor = (dot ? 1 : 2) * (c.self_pairs ? 2 : 1) * std::fabs(c.grad);
    std::vector<ld> tolerance(want.size());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t f = 0; f < d; ++f) {
        ld perturbation = 0, absolute = 0;
        for (int64_t o = 0; o < others; ++o) {
          if (c.self_pairs && c.exclude_diagonal && r == o) continue;
          const size_t pair = static_cast<size_t>(y_side ? o * m + r : r * m + o);
          const ld v = dot ? right[o * d + f] : left[r * d + f] - right[o * d + f];
          perturbation += (std::fabs(curvature[pair]) * statistic_error[pair] +
                           (5 + 2 * c.num_scales) * eps * std::fabs(slope[pair])) * std::fabs(v);
          absolute += std::fabs(slope[pair] * v);
        }
        const ld bound = factor * (perturbation + (others / 2.0L + 2) * eps * absolute);
        tolerance[r * d + f] = 2 * bound + storage_tolerance<T>(want[r * d + f]);
      }
    }
    expect_all_near(what + " " + name, widen(got), widen(want), tolerance);
  };
  check_side(actual.grad_x, expected.grad_x, a, b, n, m, false, "grad_x");
  if (!c.self_pairs) check_side(actual.grad_y, expected.grad_y, b, a, m, n, true, "grad_y");
}

// (n, m, d): single rows, partial tiles, d past one forward chunk (32) and one backward chunk (64).
std::vector<Geometry> geometries() { return {{1, 1, 1}, {3, 5, 2}, {65, 70, 3}, {70, 130, 33}, {67, 66, 100}}; }

template <typename T>
void check_all_geometries() {
  RandomData data(test_seed());
  std::mt19937_64 rng(test_seed() + 1);
  const std::vector<Device> devices = all_devices();
  size_t run = 0;
  for (const Geometry size : geometries()) {
    for (const PairKernel kernel : {PairKernel::kImq, PairKernel::kRbf, PairKernel::kPoly}) {
      for (const auto& [self_pairs, exclude_diagonal] : {std::pair{true, true}, {true, false}, {false, false}}) {
        const MmdCase<T> c = make_case<T>(data, rng, size, kernel, self_pairs, exclude_diagonal);
        const Device& device = devices[run++ % devices.size()];
        const std::string what = std::string("kernel_sum<") + type_name<T>() + "> " + kernel_name(kernel) + " " +
                                 std::to_string(c.num_scales) + " scales " +
                                 (self_pairs ? (exclude_diagonal ? "self without diagonal" : "self") : "cross") +
                                 " n " + show(size.n) + " m " + show(size.m) + " d " + show(size.d) + " on " +
                                 describe(device);
        MmdOutputs<T> actual;
        if (!on_device(device, what, [&] { actual = emulate(c, true); })) return;
        check(c, actual, true, what);
      }
    }
  }
}

VAEFAST_TEST(emulated_kernel_sum_double) { check_all_geometries<double>(); }
VAEFAST_TEST(emulated_kernel_sum_float) { check_all_geometries<float>(); }
VAEFAST_TEST(emulated_kernel_sum_half) { check_all_geometries<c10::Half>(); }
VAEFAST_TEST(emulated_kernel_sum_bfloat16) { check_all_geometries<c10::BFloat16>(); }

// 46 x 46 tiles of pairs (n = m = 2900): more than 2048, so that a forward block walks two column tiles
// (tiles_per_block), for the self and the cross sum; forward only (the backward's cost grows with d n^2
// and its tiling does not depend on the tile count).
VAEFAST_TEST(emulated_kernel_sum_many_tiles) {
  RandomData data(test_seed());
  std::mt19937_64 rng(test_seed() + 1);
  for (const bool self_pairs : {true, false}) {
    const MmdCase<float> c = make_case<float>(data, rng, {2900, 2900, 2}, PairKernel::kImq, self_pairs, true);
    const Device device{7, vaefast::emulator::Schedule::kForward};
    const std::string what = std::string("kernel_sum<float> imq ") + (self_pairs ? "self" : "cross") + " 2900 x 2900";
    MmdOutputs<float> actual;
    if (!on_device(device, what, [&] { actual = emulate(c, false); })) return;
    check(c, actual, false, what);
  }
}

template <typename T>
void check_deterministic() {
  RandomData data(test_seed());
  std::mt19937_64 rng(test_seed() + 1);
  for (const bool self_pairs : {true, false}) {
    const MmdCase<T> c = make_case<T>(data, rng, {70, 130, 33}, PairKernel::kImq, self_pairs, true);
    MmdOutputs<T> first;
    bool have_first = false;
    for (const Device& device : all_devices()) {
      const std::string what = std::string("kernel_sum<") + type_name<T>() + "> " + (self_pairs ? "self" : "cross") +
                               " on " + describe(device);
      MmdOutputs<T> run;
      if (!on_device(device, what, [&] { run = emulate(c, true); })) return;
      if (!have_first) {
        first = run;
        have_first = true;
        continue;
      }
      expect_same_bits(what + " sum", std::vector<double>{run.sum}, std::vector<double>{first.sum});
      expect_same_bits(what + " grad_x", run.grad_x, first.grad_x);
      expect_same_bits(what + " grad_y", run.grad_y, first.grad_y);
    }
  }
}

VAEFAST_TEST(emulated_kernel_sum_deterministic) {
  check_deterministic<double>();
  check_deterministic<float>();
  check_deterministic<c10::Half>();
  check_deterministic<c10::BFloat16>();
}

}  // namespace
