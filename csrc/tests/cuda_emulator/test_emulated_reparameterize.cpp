// The CUDA kernels of vaefast::reparameterize and of the fused head vaefast::reparameterize_kl
// (csrc/cuda/reparameterize_cuda.cu, reparameterize_kl_cuda.cu) run on the CPU emulator, in double, float,
// half and bfloat16:
// - reparameterize with eps given, against the CPU kernel in double; with Philox noise, against a long
//   double Box-Muller of the same Philox words and against the CPU kernel in the same dtype; the seed and
//   offset read through device pointers (the CUDA-graph path) give the same bits as passed by value;
// - the head's z and per-sample KL bit for bit those of the emulated reparameterize and gaussian_kl (the
//   launchers' promise), its backward against the CPU kernel in double;
// - vector and scalar paths (sizes a multiple of the group or not, pointers aligned or one element off),
//   1 to 3 samples, grid-stride loops, and the same bits on every emulated device.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cpu/reparameterize_cpu.h"
#include "cpu/reparameterize_kl_cpu.h"
#include "emulator_testing.h"

namespace {

using ld = long double;
using vaefast::acc_t;
using vaefast::PhiloxState;
using namespace vaefast::testing;
namespace cuda = vaefast::cuda;

// mu, logvar [batch, features] (reparameterize sees them flat), grad_z [samples, batch, features], grad_kl
// [batch], and a Philox stream. The KL tests' ranges: half and bfloat16 narrower.
template <typename T>
struct HeadCase {
  Shape shape;
  int64_t num_samples;
  PhiloxState philox;
  std::vector<T> mu, logvar, eps, grad_z, grad_kl;
  int64_t numel() const { return shape.batch * shape.features; }
  int64_t total() const { return numel() * num_samples; }
};

template <typename T>
HeadCase<T> make_case(RandomData& data, std::mt19937_64& rng, Shape shape, int64_t num_samples) {
  const int64_t n = shape.batch * shape.features;
  constexpr bool wide = std::is_same_v<T, acc_t<T>>;
  PhiloxState philox;
  philox.seed = rng();
  philox.offset = 8 + (rng() >> 4) * vaefast::kPhiloxOffsetIncrement;
  return {shape,
          num_samples,
          philox,
          data.normal<T>(n, wide ? 1.5 : 0.5),
          data.uniform<T>(n, wide ? -8 : -2, wide ? 8 : 2),
          data.normal<T>(n * num_samples, 1),
          data.uniform<T>(n * num_samples, -2, 2),
          data.uniform<T>(shape.batch, -2, 2)};
}

enum class Noise { kGiven, kPhilox, kPhiloxThroughPointers };

template <typename T>
struct Outputs {
  std::vector<T> z, grad_logvar;                                 // reparameterize
  std::vector<T> head_z, per_sample, head_grad_mu, head_grad_logvar;  // reparameterize_kl
  std::vector<T> kl_per_sample;                                  // gaussian_kl on the same mu, logvar
};

// Every launcher of the two ops (and gaussian_kl's forward, for the head's promise) on the emulated device.
template <typename T>
Outputs<T> emulate(const HeadCase<T>& c, Noise noise, int64_t misalign) {
  using S = cuda_t<T>;
  Buffer<T> mu(c.mu, misalign), logvar(c.logvar, misalign), eps(c.eps, misalign), grad_z(c.grad_z, misalign);
  Buffer<T> grad_kl(c.grad_kl, misalign), z(c.total(), misalign), grad_logvar(c.numel(), misalign);
  // The generator's device-side state under graph capture: seed and offset read at run time.
  const int64_t intragraph = 8;
  const int64_t seed_value = static_cast<int64_t>(c.philox.seed);
  const int64_t offset_value = static_cast<int64_t>(c.philox.offset) - intragraph;
  PhiloxState philox = c.philox;
  if (noise == Noise::kPhiloxThroughPointers) {
    philox = PhiloxState{};
    philox.seed_ptr = &seed_value;
    philox.offset_ptr = &offset_value;
    philox.offset_intragraph = intragraph;
  }

  vaefast::ReparameterizeParams<S> forward;
  forward.mu = cuda_pointer(mu.data());
  forward.logvar = cuda_pointer(logvar.data());
  forward.eps = noise == Noise::kGiven ? cuda_pointer(eps.data()) : nullptr;
  forward.z = cuda_pointer(z.data());
  forward.numel = c.numel();
  forward.num_samples = c.num_samples;
  forward.philox = philox;
  cuda::launch_reparameterize(forward, nullptr);

  vaefast::ReparameterizeBackwardParams<S> backward;
  backward.grad_z = cuda_pointer(grad_z.data());
  backward.z = forward.z;
  backward.mu = forward.mu;
  backward.grad_logvar = cuda_pointer(grad_logvar.data());
  backward.numel = c.numel();
  backward.num_samples = c.num_samples;
  cuda::launch_reparameterize_backward(backward, nullptr);
  Outputs<T> out;
  out.z = z.values();
  out.grad_logvar = grad_logvar.values();
  if (noise == Noise::kGiven) return out;

  Buffer<T> head_z(c.total(), misalign), per_sample(c.shape.batch, misalign), kl_per_sample(c.shape.batch, misalign);
  Buffer<T> head_grad_mu(c.numel(), misalign), head_grad_logvar(c.numel(), misalign);
  vaefast::ReparameterizeKlParams<S> head;
  head.mu = forward.mu;
  head.logvar = forward.logvar;
  head.z = cuda_pointer(head_z.data());
  head.per_sample = cuda_pointer(per_sample.data());
  head.batch = c.shape.batch;
  head.features = c.shape.features;
  head.num_samples = c.num_samples;
  head.philox = philox;
  Workspace head_workspace(cuda::reparameterize_kl_workspace_bytes(head));
  head.workspace = head_workspace.data();
  cuda::launch_reparameterize_kl(head, nullptr);

  vaefast::GaussianKlParams<S> kl;
  kl.mu = forward.mu;
  kl.logvar = forward.logvar;
  kl.per_sample = cuda_pointer(kl_per_sample.data());
  kl.batch = c.shape.batch;
  kl.features = c.shape.features;
  Workspace kl_workspace(cuda::gaussian_kl_workspace_bytes(kl));
  kl.workspace = kl_workspace.data();
  cuda::launch_gaussian_kl(kl, nullptr);

  vaefast::ReparameterizeKlBackwardParams<S> head_backward;
  head_backward.grad_z = backward.grad_z;
  head_backward.grad_kl = cuda_pointer(grad_kl.data());
  head_backward.z = head.z;
  head_backward.mu = forward.mu;
  head_backward.logvar = forward.logvar;
  head_backward.grad_mu = cuda_pointer(head_grad_mu.data());
  head_backward.grad_logvar = cuda_pointer(head_grad_logvar.data());
  head_backward.batch = c.shape.batch;
  head_backward.features = c.shape.features;
  head_backward.num_samples = c.num_samples;
  cuda::launch_reparameterize_kl_backward(head_backward, nullptr);
  out.head_z = head_z.values();
  out.per_sample = per_sample.values();
  out.kl_per_sample = kl_per_sample.values();
  out.head_grad_mu = head_grad_mu.values();
  out.head_grad_logvar = head_grad_logvar.values();
  return out;
}

// z with eps given, against the CPU kernel in double: z = mu + exp(lv / 2) eps is exp (1 ulp), two products
// and a sum, at most 3 eps of |mu| + |std eps|; doubled, plus the storage rounding.
template <typename T>
void check_given_noise(const HeadCase<T>& c, const std::vector<T>& z, const std::string& what) {
  const std::vector<double> mu = to_double(c.mu), logvar = to_double(c.logvar), eps = to_double(c.eps);
  std::vector<double> expected(static_cast<size_t>(c.total()));
  vaefast::ReparameterizeParams<double> p;
  p.mu = mu.data();
  p.logvar = logvar.data();
  p.eps = eps.data();
  p.z = expected.data();
  p.numel = c.numel();
  p.num_samples = c.num_samples;
  vaefast::cpu::reparameterize_forward(p);
  std::vector<ld> tolerance(expected.size());
  for (int64_t t = 0; t < c.total(); ++t) {
    const int64_t i = t % c.numel();
    const ld magnitude = std::fabs(mu[i]) + std::fabs(std::exp(logvar[i] / 2) * eps[t]);
    tolerance[t] = 2 * 3 * accumulation_eps<T>() * magnitude + storage_tolerance<T>(expected[t]);
  }
  expect_all_near(what + " z (eps given)", widen(z), widen(expected), tolerance);
}

// z with Philox noise. The reference draws element t's normal in long double from the same Philox words and
// the uniforms in the kernels' precision (the noise contract, common/philox.h): n = r cos(2 pi u2) or
// r sin(2 pi u2), r = sqrt(-2 log u1), which the kernels compute within 10 eps max(r, 1) (test_philox.cpp's
// derivation); z adds std times that to the 3 eps of |mu| + |std n| above; doubled, plus the storage
// rounding. The CPU kernel in the same dtype (Sleef's log and sincos where the emulated kernel has libm's)
// must lie within the same bound of the reference, so within twice it of the emulated z.
template <typename T>
void check_philox_noise(const HeadCase<T>& c, const std::vector<T>& z, const std::string& what) {
  using acc = acc_t<T>;
  const ld eps = accumulation_eps<T>();
  const ld two_pi = 2 * std::acos(-1.0L);
  std::vector<ld> expected(z.size()), tolerance(z.size());
  for (int64_t t = 0; t < c.total(); ++t) {
    const int64_t i = t % c.numel();
    const vaefast::Philox4 bits = vaefast::philox_block(c.philox.seed, c.philox.offset, static_cast<uint64_t>(t / 4));
    const int pair = static_cast<int>(t % 4) / 2;
    const ld u1 = vaefast::uniform_open_closed<acc>(bits.x[2 * pair]);
    const ld u2 = vaefast::uniform_open_closed<acc>(bits.x[2 * pair + 1]);
    const ld r = std::sqrt(-2 * std::log(u1));
    const ld normal = t % 2 == 0 ? r * std::cos(two_pi * u2) : r * std::sin(two_pi * u2);
    const ld mu = static_cast<acc>(c.mu[i]);
    const ld std_dev = std::exp(static_cast<ld>(static_cast<acc>(c.logvar[i])) / 2);
    expected[t] = mu + std_dev * normal;
    const ld noise_error = std_dev * 10 * eps * std::max(r, 1.0L);
    tolerance[t] = 2 * (noise_error + 3 * eps * (std::fabs(mu) + std::fabs(std_dev * normal))) +
                   storage_tolerance<T>(expected[t]);
  }
  expect_all_near(what + " z (Philox) vs long double", widen(z), expected, tolerance);

  std::vector<T> cpu_z(z.size());
  vaefast::ReparameterizeParams<T> p;
  p.mu = c.mu.data();
  p.logvar = c.logvar.data();
  p.z = cpu_z.data();
  p.numel = c.numel();
  p.num_samples = c.num_samples;
  p.philox = c.philox;
  vaefast::cpu::reparameterize_forward(p);
  for (ld& bound : tolerance) bound *= 2;
  expect_all_near(what + " z (Philox) vs the CPU kernel", widen(z), widen(cpu_z), tolerance);
}

// grad_logvar = sum_s 0.5 g_s (z_s - mu), from the emulated z, against the CPU kernel in double: each term
// within 2 eps of itself, the samples added in order; (2 + samples) eps of the terms' absolute sum, doubled,
// plus the storage rounding.
template <typename T>
void check_reparameterize_backward(const HeadCase<T>& c, const Outputs<T>& out, const std::string& what) {
  const std::vector<double> grad_z = to_double(c.grad_z), z = to_double(out.z), mu = to_double(c.mu);
  std::vector<double> expected(static_cast<size_t>(c.numel()));
  vaefast::ReparameterizeBackwardParams<double> p;
  p.grad_z = grad_z.data();
  p.z = z.data();
  p.mu = mu.data();
  p.grad_logvar = expected.data();
  p.numel = c.numel();
  p.num_samples = c.num_samples;
  vaefast::cpu::reparameterize_backward(p);
  std::vector<ld> tolerance(expected.size());
  for (int64_t i = 0; i < c.numel(); ++i) {
    ld magnitude = 0;
    for (int64_t s = 0; s < c.num_samples; ++s) {
      magnitude += std::fabs(0.5L * grad_z[s * c.numel() + i] * (z[s * c.numel() + i] - mu[i]));
    }
    tolerance[i] = 2 * (2 + c.num_samples) * accumulation_eps<T>() * magnitude + storage_tolerance<T>(expected[i]);
  }
  expect_all_near(what + " grad_logvar", widen(out.grad_logvar), widen(expected), tolerance);
}

// The head's backward against the CPU kernel in double: grad_mu = sum_s g_s + g_kl mu, grad_logvar = sum_s
// 0.5 g_s (z_s - mu) + g_kl 0.5 expm1(lv); each term within 3 eps of itself (expm1_by_series 2.1), added in
// order: (3 + samples) eps of the terms' absolute sum, doubled, plus the storage rounding.
template <typename T>
void check_head_backward(const HeadCase<T>& c, const Outputs<T>& out, const std::string& what) {
  const std::vector<double> grad_z = to_double(c.grad_z), grad_kl = to_double(c.grad_kl), z = to_double(out.head_z);
  const std::vector<double> mu = to_double(c.mu), logvar = to_double(c.logvar);
  std::vector<double> grad_mu(static_cast<size_t>(c.numel())), grad_logvar(grad_mu.size());
  vaefast::ReparameterizeKlBackwardParams<double> p;
  p.grad_z = grad_z.data();
  p.grad_kl = grad_kl.data();
  p.z = z.data();
  p.mu = mu.data();
  p.logvar = logvar.data();
  p.grad_mu = grad_mu.data();
  p.grad_logvar = grad_logvar.data();
  p.batch = c.shape.batch;
  p.features = c.shape.features;
  p.num_samples = c.num_samples;
  vaefast::cpu::reparameterize_kl_backward(p);
  std::vector<ld> mu_tolerance(grad_mu.size()), logvar_tolerance(grad_mu.size());
  const ld k = 2 * (3 + c.num_samples) * accumulation_eps<T>();
  for (int64_t i = 0; i < c.numel(); ++i) {
    const ld g = grad_kl[i / c.shape.features];
    ld mu_magnitude = std::fabs(g * mu[i]);
    ld logvar_magnitude = std::fabs(g * 0.5L * std::expm1(static_cast<ld>(logvar[i])));
    for (int64_t s = 0; s < c.num_samples; ++s) {
      const int64_t t = s * c.numel() + i;
      mu_magnitude += std::fabs(grad_z[t]);
      logvar_magnitude += std::fabs(0.5L * grad_z[t] * (z[t] - mu[i]));
    }
    mu_tolerance[i] = k * mu_magnitude + storage_tolerance<T>(grad_mu[i]);
    logvar_tolerance[i] = k * logvar_magnitude + storage_tolerance<T>(grad_logvar[i]);
  }
  expect_all_near(what + " head grad_mu", widen(out.head_grad_mu), widen(grad_mu), mu_tolerance);
  expect_all_near(what + " head grad_logvar", widen(out.head_grad_logvar), widen(grad_logvar), logvar_tolerance);
}

// Sizes around the group widths (4 float and double, 8 half and bfloat16) and the head's pack widths (4
// float, 2 double, 8 half), a training head [256, 64], and 20000 elements (a grid-stride loop on 1 SM).
std::vector<Shape> shapes() {
  return {{1, 1}, {1, 3}, {2, 4}, {3, 13}, {4, 64}, {3, 37}, {2, 129}, {256, 64}, {5, 4000}};
}

template <typename T>
void check_all_shapes() {
  RandomData data(test_seed());
  std::mt19937_64 rng(test_seed() + 1);
  const std::vector<Device> devices = all_devices();
  size_t run = 0;
  for (const Shape shape : shapes()) {
    for (const int64_t samples : {1, 3}) {
      const HeadCase<T> c = make_case<T>(data, rng, shape, samples);
      for (const int64_t misalign : {0, 1}) {
        const Device& device = devices[run++ % devices.size()];
        const std::string what = std::string("<") + type_name<T>() + "> " + describe(shape) + " x " +
                                 std::to_string(samples) + (misalign != 0 ? " misaligned" : "") + " on " +
                                 describe(device);
        Outputs<T> given, philox, through_pointers;
        if (!on_device(device, what, [&] {
              given = emulate(c, Noise::kGiven, misalign);
              philox = emulate(c, Noise::kPhilox, misalign);
              through_pointers = emulate(c, Noise::kPhiloxThroughPointers, misalign);
            })) {
          return;
        }
        check_given_noise(c, given.z, what);
        check_reparameterize_backward(c, given, what);
        check_philox_noise(c, philox.z, what);
        expect_same_bits(what + " z through seed_ptr/offset_ptr", through_pointers.z, philox.z);
        expect_same_bits(what + " head z through seed_ptr/offset_ptr", through_pointers.head_z, philox.head_z);
        expect_same_bits(what + " head z vs reparameterize's", philox.head_z, philox.z);
        expect_same_bits(what + " head per_sample vs gaussian_kl's", philox.per_sample, philox.kl_per_sample);
        check_head_backward(c, philox, what);
      }
    }
  }
}

VAEFAST_TEST(emulated_reparameterize_double) { check_all_shapes<double>(); }
VAEFAST_TEST(emulated_reparameterize_float) { check_all_shapes<float>(); }
VAEFAST_TEST(emulated_reparameterize_half) { check_all_shapes<c10::Half>(); }
VAEFAST_TEST(emulated_reparameterize_bfloat16) { check_all_shapes<c10::BFloat16>(); }

template <typename T>
void check_deterministic() {
  RandomData data(test_seed());
  std::mt19937_64 rng(test_seed() + 1);
  for (const Shape shape : {Shape{5, 4000}, Shape{3, 37}}) {
    const HeadCase<T> c = make_case<T>(data, rng, shape, 2);
    Outputs<T> first;
    bool have_first = false;
    for (const Device& device : all_devices()) {
      const std::string what = std::string("reparameterize<") + type_name<T>() + "> " + describe(shape) + " on " +
                               describe(device);
      Outputs<T> run;
      if (!on_device(device, what, [&] { run = emulate(c, Noise::kPhilox, 0); })) return;
      if (!have_first) {
        first = run;
        have_first = true;
        continue;
      }
      expect_same_bits(what + " z", run.z, first.z);
      expect_same_bits(what + " grad_logvar", run.grad_logvar, first.grad_logvar);
      expect_same_bits(what + " head z", run.head_z, first.head_z);
      expect_same_bits(what + " head per_sample", run.per_sample, first.per_sample);
      expect_same_bits(what + " head grad_mu", run.head_grad_mu, first.head_grad_mu);
      expect_same_bits(what + " head grad_logvar", run.head_grad_logvar, first.head_grad_logvar);
    }
  }
}

VAEFAST_TEST(emulated_reparameterize_deterministic) {
  check_deterministic<double>();
  check_deterministic<float>();
  check_deterministic<c10::Half>();
  check_deterministic<c10::BFloat16>();
}

}  // namespace
