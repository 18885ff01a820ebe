// Counter-based Philox4x32-10 (Salmon et al., SC'11) and the Box-Muller transform, shared by the CPU and CUDA
// kernels. Everything here is a pure function of (counter, key): no state, so any thread can draw any
// element's noise, the same numbers come out on CPU and GPU, and CUDA-graph replays need only a new offset.
//
// Layout of vaefast's normal noise (the contract the CPU and CUDA kernels and vaefast/ops/philox.py share):
//   element i of a flat output draws from block g = i / 4, lane i % 4;
//   counter = (lo(g), hi(g), lo(offset), hi(offset)), key = (lo(seed), hi(seed));
//   lanes (0, 1) and (2, 3) are Box-Muller pairs: n0 = r cos(theta), n1 = r sin(theta).
// One call of an op advances the generator's offset by kPhiloxOffsetIncrement: the block index lives in
// the counter's low half, so distinct offsets never share a counter.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace vaefast {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kPhiloxRounds = 10;
// 32-bit randoms one block consumes (a multiple of 4, as torch's CUDA generator expects).
constexpr uint64_t kPhiloxOffsetIncrement = 4;

struct Philox4 {
  uint32_t x[4];
};

VAEFAST_HOST_DEVICE uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

// One round on a counter held as four words: the form that a SIMD loop over independent blocks vectorises
// (the CPU kernel runs it across 64 blocks at a time).
VAEFAST_HOST_DEVICE void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t key0,
                                      uint32_t key1) {
  uint32_t hi0, hi1;
  const uint32_t lo0 = mulhilo32(kPhiloxM0, c0, &hi0);
  const uint32_t lo1 = mulhilo32(kPhiloxM1, c2, &hi1);
  c0 = hi1 ^ c1 ^ key0;
  c1 = lo1;
  c2 = hi0 ^ c3 ^ key1;
  c3 = lo0;
}

VAEFAST_HOST_DEVICE Philox4 philox4x32_10(Philox4 counter, uint32_t key0, uint32_t key1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    philox_round(counter.x[0], counter.x[1], counter.x[2], counter.x[3], key0, key1);
    key0 += kPhiloxW0;
    key1 += kPhiloxW1;
  }
  return counter;
}

// The four 32-bit randoms of block `block` for stream (seed, offset).
VAEFAST_HOST_DEVICE Philox4 philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  const Philox4 counter{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                         static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)}};
  return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Maps a 32-bit integer to (0, 1]: u = (bits + 1) / 2^32, so log(u) is always finite. Exact in double;
// in float the top values round to 1.0, which only makes log(u) = 0 (r = 0), never infinite.
template <typename T>
VAEFAST_HOST_DEVICE T uniform_open_closed(uint32_t bits) {
  return (static_cast<T>(bits) + T(1)) * T(2.3283064365386962890625e-10);  // 2^-32
}

VAEFAST_HOST_DEVICE float math_log(float v) { return ::logf(v); }
VAEFAST_HOST_DEVICE double math_log(double v) { return ::log(v); }
VAEFAST_HOST_DEVICE float math_sqrt(float v) { return ::sqrtf(v); }
VAEFAST_HOST_DEVICE double math_sqrt(double v) { return ::sqrt(v); }
// sin and cos of one angle; one call where the platform has a joint routine (CUDA's sincos, Sleef's on
// CPU: half the cost of two calls).
VAEFAST_HOST_DEVICE void math_sincos(float v, float* sine, float* cosine) {
#if defined(__CUDA_ARCH__)
  ::sincosf(v, sine, cosine);
#else
  *sine = ::sinf(v);
  *cosine = ::cosf(v);
#endif
}
VAEFAST_HOST_DEVICE void math_sincos(double v, double* sine, double* cosine) {
#if defined(__CUDA_ARCH__)
  ::sincos(v, sine, cosine);
#else
  *sine = ::sin(v);
  *cosine = ::cos(v);
#endif
}

// Box-Muller: (r cos theta, r sin theta) with r = sqrt(-2 log u1), theta = 2 pi u2. Templates on the
// arithmetic type, so the CPU kernels run them on SIMD vectors and the CUDA kernels on float/double.
template <typename T>
VAEFAST_HOST_DEVICE T box_muller_radius(T u1) {
  return math_sqrt(T(-2) * math_log(u1));
}

template <typename T>
VAEFAST_HOST_DEVICE T box_muller_angle(T u2) {
  return T(6.283185307179586476925286766559) * u2;
}

// Four standard normals from one Philox block, computed in precision T (float or double).
template <typename T>
struct Normal4 {
  T n[4];
};

// One Box-Muller pair from two 32-bit words: (r cos theta, r sin theta). A kernel that needs only half a
// block (two float64 elements, or a single element) computes just its pair, with box_muller4's bits.
template <typename T>
VAEFAST_HOST_DEVICE void box_muller_pair(uint32_t radius_bits, uint32_t angle_bits, T* first, T* second) {
  const T radius = box_muller_radius(uniform_open_closed<T>(radius_bits));
  const T theta = box_muller_angle(uniform_open_closed<T>(angle_bits));
  T sine, cosine;
  math_sincos(theta, &sine, &cosine);
  *first = radius * cosine;
  *second = radius * sine;
}

template <typename T>
VAEFAST_HOST_DEVICE Normal4<T> box_muller4(Philox4 bits) {
  Normal4<T> out;
  box_muller_pair(bits.x[0], bits.x[1], &out.n[0], &out.n[1]);
  box_muller_pair(bits.x[2], bits.x[3], &out.n[2], &out.n[3]);
  return out;
}

template <typename T>
VAEFAST_HOST_DEVICE Normal4<T> normal_block(uint64_t seed, uint64_t offset, uint64_t block) {
  return box_muller4<T>(philox_block(seed, offset, block));
}

// The normals of the N flat elements [first, first + N), computing only the Box-Muller pairs they use: whole
// blocks when N is a multiple of 4 (first too), the one pair of elements (first, first + 1) when N = 2 (first
// even), one lane of its pair when N = 1. The same bits as normal_block's lanes; for kernels whose threads
// own fewer than four elements (the fused head's float64 packs and scalar path on CUDA).
template <typename T, int N>
VAEFAST_HOST_DEVICE void normals_at(uint64_t seed, uint64_t offset, uint64_t first, T (&out)[N]) {
  static_assert(N == 1 || N == 2 || N % 4 == 0, "whole blocks, one Box-Muller pair or one element");
  if constexpr (N % 4 == 0) {
    for (int b = 0; b < N / 4; ++b) {
      const Normal4<T> normals = normal_block<T>(seed, offset, first / 4 + b);
      for (int k = 0; k < 4; ++k) out[4 * b + k] = normals.n[k];
    }
  } else {
    const Philox4 bits = philox_block(seed, offset, first / 4);
    const bool second_pair = first % 4 >= 2;  // lanes (2, 3) rather than (0, 1)
    T pair[2];
    box_muller_pair(second_pair ? bits.x[2] : bits.x[0], second_pair ? bits.x[3] : bits.x[1], &pair[0], &pair[1]);
    if constexpr (N == 2) {
      out[0] = pair[0];
      out[1] = pair[1];
    } else {
      out[0] = first % 2 == 0 ? pair[0] : pair[1];  // a select, not a dynamic index (local memory on CUDA)
    }
  }
}

}  // namespace vaefast
