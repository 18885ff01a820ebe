// Tests of common/elementwise_math.h, the per-element formulas every CPU and CUDA kernel shares:
//  1. each formula in float and double against an independent long double implementation, on random inputs
//     over wide ranges, with an error bound derived for each formula (below);
//  2. each derivative formula against a long double central difference of its value formula.
//
// Error bounds. With eps the machine epsilon of T (1 ulp of 1), each rounding contributes at most eps / 2
// relative, and glibc's exp/expm1 at most 1 ulp (<= eps relative). Summing first-order errors over the
// operands gives |computed - exact| <= k * eps * magnitude, where `magnitude` is the sum of the absolute
// values of the terms the formula adds (|exact| * the condition number of that sum: where terms cancel,
// the magnitude stays large and the bound honestly widens). The tolerance is twice each derived k, so the
// check catches a regression of a couple of ulps but not second-order terms. Inputs stay in ranges where
// no intermediate overflows; results too small for T's normal range are held to an absolute bound instead
// (ErrorBound::add).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>

#include "exact_math.h"

// long double overloads, declared before the header so that its templates also instantiate on long double:
// the finite-difference tests differentiate the header's own value formulas, not a transcription. The
// KL's two exponential parts are exact long double references here (the header's series is sized for
// float and double), so the long double formulas carry no cancellation into the differences.
namespace vaefast {
inline long double math_exp(long double v) { return std::exp(v); }
inline long double expm1_minus_identity(long double v) { return testing::exact_expm1_minus_identity(v); }
inline long double expm1_by_series(long double v) { return std::expm1(v); }
}  // namespace vaefast

#include "common/elementwise_math.h"
#include "test_main.h"

namespace {

using vaefast::testing::show;
using ld = long double;

const ld kHalfLog2PiLd = 0.5L * std::log(2.0L * std::acos(-1.0L));

// ---- Independent long double references: value and the magnitude of the terms it adds. ----------------
struct Exact {
  ld value;
  ld magnitude;
};

Exact ref_reparameterize_value(ld mu, ld logvar, ld eps) {
  const ld noise = std::exp(logvar / 2) * eps;
  return {mu + noise, std::fabs(mu) + std::fabs(noise)};
}
Exact ref_reparameterize_grad_logvar(ld grad_z, ld z, ld mu) {
  const ld v = grad_z * (z - mu) / 2;
  return {v, std::fabs(v)};
}
// e^v - 1 - v >= 0 and e^v - 1: each its own magnitude (the checks below are relative to the value).
Exact ref_expm1_minus_identity(ld v) {
  const ld value = vaefast::testing::exact_expm1_minus_identity(v);
  return {value, value};
}
Exact ref_expm1(ld v) { return {std::expm1(v), std::fabs(std::expm1(v))}; }
// Both parts are >= 0, so the magnitude is the value: the check is relative to the KL term itself.
Exact ref_gaussian_kl_term(ld mu, ld logvar) {
  const ld value = (mu * mu + vaefast::testing::exact_expm1_minus_identity(logvar)) / 2;
  return {value, value};
}
Exact ref_gaussian_kl_grad_logvar(ld logvar) {
  const ld v = std::expm1(logvar) / 2;
  return {v, std::fabs(v)};
}
Exact ref_inverse_variance(ld log_gamma) { return {std::exp(-2 * log_gamma), std::exp(-2 * log_gamma)}; }
Exact ref_gaussian_nll_residual_term(ld x, ld x_hat, ld inv_var) {
  const ld v = (x - x_hat) * (x - x_hat) * inv_var / 2;
  return {v, v};
}
Exact ref_gaussian_nll_constant_term(ld log_gamma) {
  return {log_gamma + kHalfLog2PiLd, std::fabs(log_gamma) + kHalfLog2PiLd};
}
Exact ref_gaussian_nll_term(ld x, ld x_hat, ld log_gamma) {
  const ld residual = (x - x_hat) * (x - x_hat) * std::exp(-2 * log_gamma) / 2;
  return {residual + log_gamma + kHalfLog2PiLd, residual + std::fabs(log_gamma) + kHalfLog2PiLd};
}
Exact ref_gaussian_nll_grad_x_hat(ld x, ld x_hat, ld inv_var) {
  const ld v = (x_hat - x) * inv_var;
  return {v, std::fabs(v)};
}
Exact ref_gaussian_nll_grad_log_gamma(ld x, ld x_hat, ld inv_var) {
  const ld scaled = (x - x_hat) * (x - x_hat) * inv_var;
  return {1 - scaled, 1 + scaled};
}

// ---- Random inputs ------------------------------------------------------------------------------------
// Ranges per type: logvar spans [-80, 80] in both (exp(80) = 5.5e34 < FLT_MAX); log_gamma spans [-80, 80]
// for double but [-15, 15] for float, where 1/gamma^2 = exp(-2 log_gamma) times a squared residual of up
// to 1e6 must stay below FLT_MAX (e^30 * 1e6 = 1e19).
template <typename T>
struct Ranges;
template <>
struct Ranges<double> {
  static constexpr ld logvar = 80, log_gamma = 80;
};
template <>
struct Ranges<float> {
  static constexpr ld logvar = 80, log_gamma = 15;
};

template <typename T>
class Inputs {
 public:
  explicit Inputs(uint64_t seed) : rng_(seed) {}

  // A signed value with magnitude log-uniform in [10^lo, 10^hi], rounded to T; sometimes exactly 0.
  T signed_log_uniform(double lo, double hi) {
    if (pick(0.02)) return T(0);
    const double magnitude = std::pow(10.0, std::uniform_real_distribution<double>(lo, hi)(rng_));
    return static_cast<T>(pick(0.5) ? magnitude : -magnitude);
  }
  // Half uniform over [-range, range], half log-uniform near 0 (where expm1 matters and sums cancel).
  T wide(ld range) {
    if (pick(0.5)) return static_cast<T>(std::uniform_real_distribution<double>(-range, range)(rng_));
    return signed_log_uniform(-30, std::log10(static_cast<double>(range)));
  }
  // logvar also often within 1/2 of +-1, where the KL's exp parts switch from their series to exp.
  T logvar() {
    if (pick(0.1)) return static_cast<T>((pick(0.5) ? 1 : -1) * (1 + signed_log_uniform(-8, std::log10(0.5))));
    return wide(Ranges<T>::logvar);
  }
  T log_gamma() { return wide(Ranges<T>::log_gamma); }
  // log_gamma often near log|residual|, where (x - x_hat)^2 / gamma^2 ~ 1 and 1 - that cancels.
  T log_gamma_near(T residual) {
    if (residual == T(0) || pick(0.5)) return log_gamma();
    const ld near = std::log(std::fabs(static_cast<ld>(residual))) + signed_log_uniform(-7, -1);
    return static_cast<T>(std::clamp(near, -Ranges<T>::log_gamma, Ranges<T>::log_gamma));
  }
  T x() { return signed_log_uniform(-3, 3); }
  // x_hat either unrelated to x or close to it (a small residual).
  T x_hat(T x) { return pick(0.5) ? this->x() : static_cast<T>(x + signed_log_uniform(-4, 0)); }
  bool pick(double probability) { return std::uniform_real_distribution<double>(0, 1)(rng_) < probability; }

 private:
  std::mt19937_64 rng_;
};

// ---- Error accounting ---------------------------------------------------------------------------------
// Tracks the worst error of one formula in units of eps * magnitude and checks it against the tolerance
// once at the end (one check per formula, with the worst input spelled out).
template <typename T>
class ErrorBound {
 public:
  ErrorBound(const char* formula, double derived_k) : formula_(formula), derived_k_(derived_k) {}

  // describe_inputs() is called only for a new worst case (formatting every sample would dominate the run).
  template <typename Describe>
  void add(T computed, const Exact& exact, const Describe& describe_inputs) {
    const ld error = std::fabs(static_cast<ld>(computed) - exact.value);
    // Plus the smallest normal T: a result below it (e^v - 1 - v ~ v^2/2 for |v| < 1e-19 in float) keeps
    // no relative precision, only gradual underflow's absolute one.
    const ld scale = std::numeric_limits<T>::epsilon() * exact.magnitude + std::numeric_limits<T>::min();
    // A zero magnitude (every term exactly 0) must give exactly 0; NaN counts as infinitely wrong.
    const ld in_eps = error == 0 ? 0 : (scale > 0 && !std::isnan(error) ? error / scale : INFINITY);
    if (in_eps > worst_ || !std::isfinite(static_cast<ld>(computed))) {
      worst_ = std::isfinite(static_cast<ld>(computed)) ? in_eps : INFINITY;
      worst_case_ = describe_inputs() + " -> " + show(computed) + ", exact " + show(exact.value);
    }
  }

  void check(const char* type) const {
    std::printf("  %-28s %-6s worst error %6.3f eps*magnitude (tolerance %4.1f)\n", formula_, type,
                static_cast<double>(worst_), 2 * derived_k_);
    EXPECT_MSG(worst_ <= 2 * derived_k_, std::string(formula_) + "<" + type + ">: worst error " + show(worst_) +
                                             " eps*magnitude > " + show(2 * derived_k_) + " at " + worst_case_);
  }

 private:
  const char* formula_;
  double derived_k_;
  ld worst_ = 0;
  std::string worst_case_ = "(no inputs)";
};

template <typename T>
std::string args(std::initializer_list<T> values) {
  std::string out = "(";
  for (const T v : values) out += (out.size() > 1 ? ", " : "") + show(v);
  return out + ")";
}

constexpr int kSamples = 1000000;

// ---- 1. Formulas against long double ------------------------------------------------------------------
template <typename T>
void check_formulas(const char* type) {
  Inputs<T> in(vaefast::testing::test_seed());

  // z = mu + exp(lv/2) eps: exp <= eps and the product eps/2 on the noise term, the sum eps/2 on
  // |z| <= magnitude: k = 2.
  ErrorBound<T> reparameterize_value("reparameterize_value", 2);
  // 0.5 g (z - mu): the difference and the product each eps/2 relative; 0.5 is exact: k = 1.
  ErrorBound<T> reparameterize_grad_logvar("reparameterize_grad_logvar", 1);
  // f(v) = e^v - 1 - v, relative to f. |v| < 1: v^2 P(v), P by Horner with fused multiply-adds. Each step
  // rounds eps/2 of its partial sum and later steps scale that error by |v|^j; the partial sums beyond the
  // last are <= 0.27 on the interval while P >= 0.37, so P is within eps/2 (1 + 0.27/0.37) = 0.87 eps, the
  // truncation adds < 0.1 eps, v^2 and the product eps/2 each: ~2 eps. |v| >= 1: (e^v - 1) - v: exp's
  // error eps e^v, the first difference eps/2 |e^v - 1|, the second eps/2 f; relative to f that is at most
  // (e^v + |e^v - 1|/2)/f + 1/2, largest at v = 1: (2.718 + 0.859) / 0.718 + 0.5 = 5.5: k = 5.5.
  ErrorBound<T> expm1_minus_identity("expm1_minus_identity", 5.5);
  // e^v - 1, relative. |v| < 1: v + v^2 P(v) in one fused multiply-add: v^2 P within ~2 eps of itself
  // and |v^2 P| <= 0.58 |e^v - 1| on the interval, plus the final rounding eps/2: ~1.7 eps. |v| >= 1:
  // exp's eps e^v and the difference's eps/2, relative to |e^v - 1|: largest at v = 1, 1.58 + 0.5: k = 2.1.
  ErrorBound<T> expm1_by_series("expm1_by_series", 2.1);
  // 0.5 (mu^2 + f(lv)), relative to the term (both parts >= 0): f 5.5 eps, mu^2 and the sum eps/2 each:
  // k = 6.5. (expm1(lv) - lv, the textbook form, cancels near lv = 0: a relative error ~eps/|lv|.)
  ErrorBound<T> gaussian_kl_term("gaussian_kl_term", 6.5);
  // 0.5 expm1_by_series(lv): k = 2.1.
  ErrorBound<T> gaussian_kl_grad_logvar("gaussian_kl_grad_logvar", 2.1);
  // exp(-2 lg): -2 lg exact, exp <= eps: k = 1.
  ErrorBound<T> inverse_variance("inverse_variance", 1);
  // 0.5 r r iv: r eps/2 (doubled by squaring), the square and the product eps/2 each: k = 2.
  ErrorBound<T> gaussian_nll_residual_term("gaussian_nll_residual_term", 2);
  // lg + T(0.5 log 2 pi): the constant's rounding and the sum, eps/2 each: k = 1.
  ErrorBound<T> gaussian_nll_constant_term("gaussian_nll_constant_term", 1);
  // residual term with iv from exp: 3 eps on it; the constant term eps; the final sum eps/2: k = 3.5.
  ErrorBound<T> gaussian_nll_term("gaussian_nll_term", 3.5);
  // (x_hat - x) iv: k = 1.
  ErrorBound<T> gaussian_nll_grad_x_hat("gaussian_nll_grad_x_hat", 1);
  // 1 - r r iv: 2 eps on r r iv, eps/2 on the difference: k = 2.5.
  ErrorBound<T> gaussian_nll_grad_log_gamma("gaussian_nll_grad_log_gamma", 2.5);

  for (int sample = 0; sample < kSamples; ++sample) {
    const T mu = in.signed_log_uniform(-4, 3);
    const T logvar = in.logvar();
    const T eps = in.signed_log_uniform(-3, 0.7);
    const T grad = in.signed_log_uniform(-3, 3);
    const T x = in.x();
    const T x_hat = in.x_hat(x);
    const T log_gamma = in.log_gamma_near(x - x_hat);
    const T inv_var = vaefast::inverse_variance(log_gamma);
    const T z = vaefast::reparameterize_value(mu, logvar, eps);

    reparameterize_value.add(z, ref_reparameterize_value(mu, logvar, eps), [&] { return args({mu, logvar, eps}); });
    reparameterize_grad_logvar.add(vaefast::reparameterize_grad_logvar(grad, z, mu),
                                   ref_reparameterize_grad_logvar(grad, z, mu), [&] { return args({grad, z, mu}); });
    expm1_minus_identity.add(vaefast::expm1_minus_identity(logvar), ref_expm1_minus_identity(logvar),
                             [&] { return args({logvar}); });
    expm1_by_series.add(vaefast::expm1_by_series(logvar), ref_expm1(logvar), [&] { return args({logvar}); });
    gaussian_kl_term.add(vaefast::gaussian_kl_term(mu, logvar), ref_gaussian_kl_term(mu, logvar),
                         [&] { return args({mu, logvar}); });
    gaussian_kl_grad_logvar.add(vaefast::gaussian_kl_grad_logvar(logvar), ref_gaussian_kl_grad_logvar(logvar),
                                [&] { return args({logvar}); });
    inverse_variance.add(inv_var, ref_inverse_variance(log_gamma), [&] { return args({log_gamma}); });
    gaussian_nll_residual_term.add(vaefast::gaussian_nll_residual_term(x, x_hat, inv_var),
                                   ref_gaussian_nll_residual_term(x, x_hat, inv_var), [&] { return args({x, x_hat, inv_var}); });
    gaussian_nll_constant_term.add(vaefast::gaussian_nll_constant_term(log_gamma),
                                   ref_gaussian_nll_constant_term(log_gamma), [&] { return args({log_gamma}); });
    gaussian_nll_term.add(vaefast::gaussian_nll_term(x, x_hat, log_gamma), ref_gaussian_nll_term(x, x_hat, log_gamma),
                          [&] { return args({x, x_hat, log_gamma}); });
    gaussian_nll_grad_x_hat.add(vaefast::gaussian_nll_grad_x_hat(x, x_hat, inv_var),
                                ref_gaussian_nll_grad_x_hat(x, x_hat, inv_var), [&] { return args({x, x_hat, inv_var}); });
    gaussian_nll_grad_log_gamma.add(vaefast::gaussian_nll_grad_log_gamma(x, x_hat, inv_var),
                                    ref_gaussian_nll_grad_log_gamma(x, x_hat, inv_var), [&] { return args({x, x_hat, inv_var}); });
  }
  reparameterize_value.check(type);
  reparameterize_grad_logvar.check(type);
  expm1_minus_identity.check(type);
  expm1_by_series.check(type);
  gaussian_kl_term.check(type);
  gaussian_kl_grad_logvar.check(type);
  inverse_variance.check(type);
  gaussian_nll_residual_term.check(type);
  gaussian_nll_constant_term.check(type);
  gaussian_nll_term.check(type);
  gaussian_nll_grad_x_hat.check(type);
  gaussian_nll_grad_log_gamma.check(type);
}

// ---- 2. Derivatives against central differences ------------------------------------------------------
// f'(v) ~ (f(v + h) - f(v - h)) / (2h) in long double (eps_ld = 1.1e-19). Truncation error h^2 |f'''| / 6
// relative to |f'|: the formulas are exponentials in v with rate <= 2, so <= 4 h^2 / 6; with
// h = 1e-6 max(1, |v|) and |v| <= 80 that is <= 3e-9. Rounding error <= 2 eps_ld magnitude(f) / h. The
// tolerance is 1e-8 of the derivative's magnitude plus 8 eps_ld magnitude(f) / h: a wrong factor or sign
// in a derivative formula is off by O(1).
template <typename F>
ld central_difference(const F& f, ld v, ld h) {
  return (f(v + h) - f(v - h)) / (2 * h);
}

bool check_derivative(const char* what, ld formula, ld formula_magnitude, ld difference, ld value_magnitude, ld h,
                      const std::string& inputs) {
  const ld tolerance = 1e-8L * formula_magnitude + 8 * std::numeric_limits<ld>::epsilon() * value_magnitude / h;
  const ld error = std::fabs(formula - difference);
  if (error <= tolerance) return true;
  return EXPECT_MSG(false, std::string(what) + " at " + inputs + ": formula " + show(formula) +
                               ", central difference " + show(difference) + ", tolerance " + show(tolerance));
}

ld step(ld v) { return 1e-6L * std::max<ld>(1, std::fabs(v)); }

}  // namespace

VAEFAST_TEST(elementwise_math_double_vs_long_double) { check_formulas<double>("double"); }
VAEFAST_TEST(elementwise_math_float_vs_long_double) { check_formulas<float>("float"); }

VAEFAST_TEST(elementwise_math_derivatives_vs_central_differences) {
  Inputs<double> in(vaefast::testing::test_seed());
  int failures = 0;
  for (int sample = 0; sample < 20000 && failures == 0; ++sample) {
    const ld mu = in.signed_log_uniform(-4, 3);
    const ld logvar = in.logvar();
    const ld eps = in.signed_log_uniform(-3, 0.7);
    const ld x = in.x();
    const ld x_hat = in.x_hat(static_cast<double>(x));
    const ld log_gamma = in.log_gamma_near(static_cast<double>(x - x_hat));
    const std::string inputs = args({mu, logvar, eps, x, x_hat, log_gamma});
    const ld inv_var = vaefast::inverse_variance(log_gamma);
    bool ok = true;

    // Reparameterisation: dz/dlogvar = 0.5 (z - mu) (the formula with grad_z = 1), dz/dmu = 1.
    const auto z_of_logvar = [&](ld v) { return vaefast::reparameterize_value(mu, v, eps); };
    const auto z_of_mu = [&](ld v) { return vaefast::reparameterize_value(v, logvar, eps); };
    const ld z = vaefast::reparameterize_value(mu, logvar, eps);
    const ld noise_magnitude = std::fabs(z - mu);
    ok &= check_derivative("reparameterize_grad_logvar", vaefast::reparameterize_grad_logvar(1.0L, z, mu),
                           noise_magnitude, central_difference(z_of_logvar, logvar, step(logvar)),
                           std::fabs(mu) + noise_magnitude, step(logvar), inputs);
    ok &= check_derivative("d reparameterize_value / d mu", 1, 1, central_difference(z_of_mu, mu, step(mu)),
                           std::fabs(mu) + noise_magnitude, step(mu), inputs);

    // KL term: d/dlogvar = gaussian_kl_grad_logvar, d/dmu = mu (documented in the header).
    const auto kl_of_logvar = [&](ld v) { return vaefast::gaussian_kl_term(mu, v); };
    const auto kl_of_mu = [&](ld v) { return vaefast::gaussian_kl_term(v, logvar); };
    const ld kl_magnitude = ref_gaussian_kl_term(mu, logvar).magnitude;
    ok &= check_derivative("gaussian_kl_grad_logvar", vaefast::gaussian_kl_grad_logvar(logvar),
                           (std::exp(logvar) + 1) / 2, central_difference(kl_of_logvar, logvar, step(logvar)),
                           kl_magnitude, step(logvar), inputs);
    ok &= check_derivative("d gaussian_kl_term / d mu", mu, std::fabs(mu), central_difference(kl_of_mu, mu, step(mu)),
                           kl_magnitude, step(mu), inputs);

    // NLL term: d/dx_hat = gaussian_nll_grad_x_hat, d/dx = its negative, d/dlog_gamma = ..._grad_log_gamma.
    const auto nll_of_x_hat = [&](ld v) { return vaefast::gaussian_nll_term(x, v, log_gamma); };
    const auto nll_of_x = [&](ld v) { return vaefast::gaussian_nll_term(v, x_hat, log_gamma); };
    const auto nll_of_log_gamma = [&](ld v) { return vaefast::gaussian_nll_term(x, x_hat, v); };
    const ld nll_magnitude = ref_gaussian_nll_term(x, x_hat, log_gamma).magnitude;
    const ld grad_x_hat = vaefast::gaussian_nll_grad_x_hat(x, x_hat, inv_var);
    // The term is quadratic in x and x_hat, so the central difference has no truncation error; the step
    // follows the residual so that rounding stays small against the derivative when x_hat ~ x.
    const ld h_x = 1e-6L * std::max<ld>(std::fabs(x - x_hat), 1e-3L * std::max<ld>(1, std::fabs(x_hat)));
    ok &= check_derivative("gaussian_nll_grad_x_hat", grad_x_hat, std::fabs(grad_x_hat),
                           central_difference(nll_of_x_hat, x_hat, h_x), nll_magnitude, h_x, inputs);
    ok &= check_derivative("d gaussian_nll_term / d x", -grad_x_hat, std::fabs(grad_x_hat),
                           central_difference(nll_of_x, x, h_x), nll_magnitude, h_x, inputs);
    ok &= check_derivative("gaussian_nll_grad_log_gamma", vaefast::gaussian_nll_grad_log_gamma(x, x_hat, inv_var),
                           ref_gaussian_nll_grad_log_gamma(x, x_hat, inv_var).magnitude,
                           central_difference(nll_of_log_gamma, log_gamma, step(log_gamma)), nll_magnitude,
                           step(log_gamma), inputs);
    failures += !ok;
  }
  EXPECT_EQ(failures, 0);
}
