// Tests of common/philox.h: Philox4x32-10 against Random123's known-answer vectors, vaefast's counter layout,
// the (0, 1] uniform map, the Box-Muller normals (pointwise against long double, and their moments), and
// normals_at's partial blocks against normal_block.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "common/philox.h"
#include "test_main.h"

namespace {

using vaefast::Philox4;
using vaefast::testing::show;

bool same_block(const Philox4& a, const Philox4& b) {
  return a.x[0] == b.x[0] && a.x[1] == b.x[1] && a.x[2] == b.x[2] && a.x[3] == b.x[3];
}

void expect_block(const Philox4& actual, const Philox4& expected, const char* what) {
  EXPECT_MSG(same_block(actual, expected),
             std::string(what) + ": got " + show(actual.x[0]) + " " + show(actual.x[1]) + " " +
                 show(actual.x[2]) + " " + show(actual.x[3]) + ", expected " + show(expected.x[0]) + " " +
                 show(expected.x[1]) + " " + show(expected.x[2]) + " " + show(expected.x[3]));
}

}  // namespace

// REFERENCE.md section 2: Random123's kat_vectors for philox4x32_10, (counter; key) -> output.
VAEFAST_TEST(philox_known_answer_vectors) {
  expect_block(vaefast::philox4x32_10(Philox4{{0, 0, 0, 0}}, 0, 0),
               Philox4{{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}, "zero counter, zero key");
  expect_block(vaefast::philox4x32_10(Philox4{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
                                      0xffffffffu, 0xffffffffu),
               Philox4{{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}, "all-ones counter and key");
  expect_block(vaefast::philox4x32_10(Philox4{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
                                      0xa4093822u, 0x299f31d0u),
               Philox4{{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}, "digits of pi");
}

// philox_block(seed, offset, block) = philox4x32_10((lo(block), hi(block), lo(offset), hi(offset)),
// key (lo(seed), hi(seed))): the contract vaefast/ops/philox.py and the CUDA kernels share.
VAEFAST_TEST(philox_counter_layout) {
  const uint64_t seed = 0x0123456789abcdefull;
  const uint64_t offset = 0xfedcba9876543210ull;
  const uint64_t block = 0x1122334455667788ull;
  expect_block(vaefast::philox_block(seed, offset, block),
               vaefast::philox4x32_10(Philox4{{0x55667788u, 0x11223344u, 0x76543210u, 0xfedcba98u}},
                                      0x89abcdefu, 0x01234567u),
               "spelled-out layout");

  std::mt19937_64 rng(vaefast::testing::test_seed());
  int mismatches = 0;
  for (int trial = 0; trial < 10000 && mismatches == 0; ++trial) {
    const uint64_t s = rng(), o = rng(), b = rng();
    const Philox4 counter{{static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), static_cast<uint32_t>(o),
                           static_cast<uint32_t>(o >> 32)}};
    const Philox4 expected = vaefast::philox4x32_10(counter, static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32));
    if (!same_block(vaefast::philox_block(s, o, b), expected)) {
      ++mismatches;
      expect_block(vaefast::philox_block(s, o, b), expected,
                   ("seed " + show(s) + ", offset " + show(o) + ", block " + show(b)).c_str());
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// u = (bits + 1) / 2^32 lies in (0, 1]: 0 -> 2^-32, 0xffffffff -> 1, so log(u) is finite and <= 0.
VAEFAST_TEST(uniform_open_closed_range) {
  const double two_to_minus_32 = std::ldexp(1.0, -32);
  EXPECT_EQ(vaefast::uniform_open_closed<double>(0u), two_to_minus_32);
  EXPECT_EQ(vaefast::uniform_open_closed<double>(0xffffffffu), 1.0);
  EXPECT_EQ(vaefast::uniform_open_closed<float>(0u), static_cast<float>(two_to_minus_32));
  EXPECT_EQ(vaefast::uniform_open_closed<float>(0xffffffffu), 1.0f);
  // Exact in double: every 32-bit integer + 1 fits in the 53-bit mantissa.
  EXPECT_EQ(vaefast::uniform_open_closed<double>(12345u), 12346.0 * two_to_minus_32);

  // The map is monotone, so the endpoints bound it; the sweep (the 2^16 lowest and highest values and a
  // stride through the rest) guards the claim for float, whose rounding could in principle reach 0 or > 1.
  std::vector<uint32_t> sweep;
  for (uint32_t k = 0; k < 65536u; ++k) {
    sweep.push_back(k);
    sweep.push_back(0xffffffffu - k);
  }
  for (uint64_t k = 0; k <= 0xffffffffull; k += 65521) sweep.push_back(static_cast<uint32_t>(k));
  bool all_in_range = true;
  for (const uint32_t bits : sweep) {
    const float uf = vaefast::uniform_open_closed<float>(bits);
    const double ud = vaefast::uniform_open_closed<double>(bits);
    if (!(uf > 0.0f && uf <= 1.0f && ud > 0.0 && ud <= 1.0 && std::isfinite(std::log(uf)))) {
      all_in_range = EXPECT_MSG(false, "bits " + show(bits) + " -> float " + show(uf) + ", double " + show(ud));
      break;
    }
  }
  EXPECT_TRUE(all_in_range);
}

// Box-Muller against long double, given the same uniforms. Error of n = r cos(theta) in precision T:
// r = sqrt(-2 log u) has relative error <= eps (log <= 1 ulp, halved by the sqrt, + the sqrt's rounding);
// theta = 2 pi u has relative error <= eps (constant and product), so |d theta| <= 2 pi eps; cos adds one
// ulp. |n - exact| <= r (eps + 2 pi eps + eps) ~= 8.3 eps r; the check allows 10 eps * max(r, 1).
template <typename T>
void check_box_muller_pointwise() {
  std::mt19937_64 rng(vaefast::testing::test_seed());
  const long double two_pi = 2.0L * std::acos(-1.0L);
  const long double eps = std::numeric_limits<T>::epsilon();
  long double worst = 0;  // in units of the allowed error
  for (int trial = 0; trial < 200000; ++trial) {
    Philox4 bits{{static_cast<uint32_t>(rng()), static_cast<uint32_t>(rng()), static_cast<uint32_t>(rng()),
                  static_cast<uint32_t>(rng())}};
    if (trial < 4) bits.x[0] = trial == 0 ? 0u : trial == 1 ? 0xffffffffu : trial;  // extreme radii
    const vaefast::Normal4<T> normals = vaefast::box_muller4<T>(bits);
    for (int pair = 0; pair < 2; ++pair) {
      const long double u1 = vaefast::uniform_open_closed<T>(bits.x[2 * pair]);
      const long double u2 = vaefast::uniform_open_closed<T>(bits.x[2 * pair + 1]);
      const long double r = std::sqrt(-2.0L * std::log(u1));
      const long double expected[2] = {r * std::cos(two_pi * u2), r * std::sin(two_pi * u2)};
      for (int k = 0; k < 2; ++k) {
        const long double allowed = 10 * eps * std::max(r, 1.0L);
        const long double error = std::fabs(normals.n[2 * pair + k] - expected[k]);
        worst = std::max(worst, error / allowed);
        if (!(error <= allowed)) {
          EXPECT_NEAR(normals.n[2 * pair + k], expected[k], allowed);
          return;
        }
      }
    }
  }
  EXPECT_MSG(worst <= 1, "worst error " + show(worst) + " of the allowed");
}

VAEFAST_TEST(box_muller_pointwise_double) { check_box_muller_pointwise<double>(); }
VAEFAST_TEST(box_muller_pointwise_float) { check_box_muller_pointwise<float>(); }

// Sample moments of 2^22 normals from normal_block<T> against N(0, 1). For N iid standard normals the
// sampling standard errors are: mean 1/sqrt(N), variance sqrt(2/N), skewness sqrt(6/N), excess kurtosis
// sqrt(24/N), P(|n| < 1) sqrt(p (1 - p) / N), a correlation 1/sqrt(N). Every statistic must lie within
// 5 standard errors (a false alarm about once in 1.7 million checks; the seed is printed to replay it).
// Box-Muller from 32-bit uniforms truncates the tails at r = sqrt(64 ln 2) = 6.66, which moves the
// kurtosis by ~1e-9, far below its standard error (2.4e-3 here).
template <typename T>
void check_normal_moments() {
  const uint64_t seed = vaefast::testing::test_seed();
  const uint64_t offset = seed % 1000003 * vaefast::kPhiloxOffsetIncrement;
  constexpr int64_t kBlocks = int64_t(1) << 20;
  constexpr int64_t n = 4 * kBlocks;
  std::vector<double> values(n);
  for (int64_t block = 0; block < kBlocks; ++block) {
    const vaefast::Normal4<T> normals = vaefast::normal_block<T>(seed, offset, block);
    for (int lane = 0; lane < 4; ++lane) values[4 * block + lane] = normals.n[lane];
  }

  long double sum = 0;
  for (const double v : values) sum += v;
  const long double mean = sum / n;
  long double m2 = 0, m3 = 0, m4 = 0;
  int64_t inside_one = 0;
  bool all_finite = true;
  for (const double v : values) {
    const long double d = v - mean;
    m2 += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
    inside_one += std::fabs(v) < 1.0;
    all_finite = all_finite && std::isfinite(v);
  }
  m2 /= n;
  m3 /= n;
  m4 /= n;
  const long double variance = m2 * n / (n - 1);
  const long double skewness = m3 / std::pow(m2, 1.5L);
  const long double excess_kurtosis = m4 / (m2 * m2) - 3;
  const long double p_inside = 0.682689492137085897L;  // erf(1 / sqrt(2))
  const long double fraction_inside = static_cast<long double>(inside_one) / n;

  const long double sigmas = 5;
  EXPECT_TRUE(all_finite);
  EXPECT_NEAR(mean, 0.0L, sigmas * std::sqrt(1.0L / n));
  EXPECT_NEAR(variance, 1.0L, sigmas * std::sqrt(2.0L / n));
  EXPECT_NEAR(skewness, 0.0L, sigmas * std::sqrt(6.0L / n));
  EXPECT_NEAR(excess_kurtosis, 0.0L, sigmas * std::sqrt(24.0L / n));
  EXPECT_NEAR(fraction_inside, p_inside, sigmas * std::sqrt(p_inside * (1 - p_inside) / n));

  // Lanes must be uncorrelated: within a Box-Muller pair (0, 1), across pairs (0, 2), across blocks
  // (lane 3 of block g with lane 0 of block g + 1).
  const int64_t pairs = kBlocks - 1;
  for (const auto& [lane_a, lane_b, block_step] : {std::tuple{0, 1, 0}, std::tuple{0, 2, 0}, std::tuple{3, 0, 1}}) {
    long double cross = 0;
    for (int64_t block = 0; block < pairs; ++block) {
      cross += (values[4 * block + lane_a] - mean) * (values[4 * (block + block_step) + lane_b] - mean);
    }
    const long double correlation = cross / pairs / m2;
    EXPECT_MSG(std::fabs(correlation) <= sigmas / std::sqrt(static_cast<long double>(pairs)),
               "lanes " + show(lane_a) + ", " + show(lane_b) + " (block step " + show(block_step) +
                   "): correlation " + show(correlation));
  }
}

VAEFAST_TEST(normal_moments_double) { check_normal_moments<double>(); }
VAEFAST_TEST(normal_moments_float) { check_normal_moments<float>(); }

// Distinct (seed, offset) pairs give distinct streams: no 128-bit block repeats across the streams that
// differ in one half of the seed or the offset, nor within a stream. A collision by chance has probability
// about 2^-100 here.
VAEFAST_TEST(philox_streams_are_distinct) {
  const uint64_t seed = vaefast::testing::test_seed();
  const uint64_t offset = seed >> 7;
  const std::vector<std::pair<uint64_t, uint64_t>> streams = {
      {seed, offset},
      {seed, offset + vaefast::kPhiloxOffsetIncrement},  // the next call of an op
      {seed, offset ^ (uint64_t(1) << 32)},              // differs in hi(offset) only
      {seed ^ 1, offset},                                // differs in lo(seed) only
      {seed ^ (uint64_t(1) << 32), offset},              // differs in hi(seed) only
  };
  std::set<std::tuple<uint32_t, uint32_t, uint32_t, uint32_t>> seen;
  int64_t drawn = 0;
  for (const auto& [s, o] : streams) {
    // Block ranges that do not overlap; one crosses from lo(block) into hi(block).
    for (uint64_t block : {uint64_t(0), uint64_t(1000), (uint64_t(1) << 32) - 100, ~uint64_t(0) - 1000}) {
      for (uint64_t step = 0; step < 200; ++step) {
        const Philox4 bits = vaefast::philox_block(s, o, block + step);
        seen.insert({bits.x[0], bits.x[1], bits.x[2], bits.x[3]});
        ++drawn;
      }
    }
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), drawn);

  // The normals differ too (a stream difference that Box-Muller would erase would be a bug).
  const vaefast::Normal4<double> a = vaefast::normal_block<double>(seed, offset, 0);
  const vaefast::Normal4<double> b = vaefast::normal_block<double>(seed, offset + vaefast::kPhiloxOffsetIncrement, 0);
  EXPECT_TRUE(a.n[0] != b.n[0] && a.n[1] != b.n[1] && a.n[2] != b.n[2] && a.n[3] != b.n[3]);
}

// normals_at, the CUDA head's per-thread draw, gives the lanes of normal_block bit for bit: whole blocks, the
// one Box-Muller pair of an even element, and one element of either pair (both precisions).
template <typename T, int N>
bool normals_at_matches_blocks(uint64_t seed, uint64_t offset, uint64_t first) {
  T got[N];
  vaefast::normals_at<T, N>(seed, offset, first, got);
  for (int k = 0; k < N; ++k) {
    const uint64_t element = first + static_cast<uint64_t>(k);
    const T expected = vaefast::normal_block<T>(seed, offset, element / 4).n[element % 4];
    if (std::memcmp(&got[k], &expected, sizeof(T)) != 0) {
      return EXPECT_MSG(false, "normals_at<" + show(N) + "> element " + show(element) + ": " + show(got[k]) +
                                   " vs normal_block's " + show(expected));
    }
  }
  return true;
}

template <typename T>
void check_normals_at() {
  std::mt19937_64 rng(vaefast::testing::test_seed());
  for (int trial = 0; trial < 2000; ++trial) {
    const uint64_t seed = rng(), offset = rng() & ~uint64_t{3};
    const uint64_t element = rng() >> 2;  // any block, including counters past 2^32
    const bool ok = normals_at_matches_blocks<T, 1>(seed, offset, element) &&
                    normals_at_matches_blocks<T, 2>(seed, offset, element & ~uint64_t{1}) &&
                    normals_at_matches_blocks<T, 4>(seed, offset, element & ~uint64_t{3}) &&
                    normals_at_matches_blocks<T, 8>(seed, offset, element & ~uint64_t{7});
    if (!ok) return;
  }
  EXPECT_TRUE(true);
}

VAEFAST_TEST(normals_at_matches_normal_block_double) { check_normals_at<double>(); }
VAEFAST_TEST(normals_at_matches_normal_block_float) { check_normals_at<float>(); }
