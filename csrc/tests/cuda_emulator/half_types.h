// The CUDA emulator's __half and __nv_bfloat16 (cuda_fp16.h / cuda_bf16.h of csrc/tests/cuda_emulator): the
// storage types with CUDA's layout (two bytes, the IEEE binary16 bits; the top half of a float32's bits) and
// the four conversions csrc/cuda uses, rounding to nearest even as __float2half_rn and __float2bfloat16_rn
// do. No arithmetic and no implicit conversions, as under the __CUDA_NO_HALF_*__ defines that setup.py's
// CUDA build passes (code that leans on them would not compile there either).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
  unsigned short __x;
};
struct __nv_bfloat16 {
  unsigned short __x;
};
static_assert(sizeof(__half) == 2 && alignof(__half) == 2, "__half must have CUDA's layout");
static_assert(sizeof(__nv_bfloat16) == 2 && alignof(__nv_bfloat16) == 2, "__nv_bfloat16 must have CUDA's layout");

namespace vaefast {
namespace emulator {

inline uint32_t float_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}
inline float bits_float(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// binary32 -> binary16, round to nearest even; overflow to inf, NaN stays a (quiet) NaN.
inline unsigned short float_to_half_bits(float v) {
  const uint32_t bits = float_bits(v);
  const unsigned short sign = static_cast<unsigned short>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) return sign | (magnitude > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520: rounds past 65504, the largest half
  if (magnitude < 0x38800000u) {
    // Below 2^-14, the smallest normal half: a multiple of the subnormal spacing 2^-24. The scaling by 2^24
    // is exact and nearbyint rounds to nearest even (the default rounding mode); 1024 is 2^-14 itself.
    return sign | static_cast<unsigned short>(std::nearbyint(bits_float(magnitude) * 16777216.0f));
  }
  // Normal: rebias the exponent (127 -> 15), keep 10 of 23 mantissa bits, round the 13 dropped ones to
  // nearest even; a carry out of the mantissa moves into the exponent, which is the right result.
  uint32_t half = ((magnitude >> 23) - 112u) << 10 | ((magnitude >> 13) & 0x3ffu);
  const uint32_t dropped = magnitude & 0x1fffu;
  if (dropped > 0x1000u || (dropped == 0x1000u && (half & 1u) != 0)) ++half;
  return sign | static_cast<unsigned short>(half);
}

inline float half_bits_to_float(unsigned short h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign != 0 ? -magnitude : magnitude;
  }
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// binary32 -> bfloat16 (the top 16 bits), round to nearest even; NaN stays a (quiet) NaN.
inline unsigned short float_to_bfloat16_bits(float v) {
  const uint32_t bits = float_bits(v);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((bits >> 16) | 0x40u);
  return static_cast<unsigned short>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace emulator
}  // namespace vaefast

inline float __half2float(__half h) { return vaefast::emulator::half_bits_to_float(h.__x); }
inline __half __float2half_rn(float v) { return __half{vaefast::emulator::float_to_half_bits(v)}; }
inline float __bfloat162float(__nv_bfloat16 h) {
  return vaefast::emulator::bits_float(static_cast<uint32_t>(h.__x) << 16);
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  return __nv_bfloat16{vaefast::emulator::float_to_bfloat16_bits(v)};
}
