// Long double references the C++ tests share for formulas whose textbook long double form would cancel.
// Torch-free, like common/: test_elementwise_math.cpp includes it ahead of the header under test.
#pragma once

#include <cmath>

namespace vaefast {
namespace testing {

// e^v - 1 - v to long double precision: the Taylor series v^2/2! + v^3/3! + ... on |v| < 1/2 (summed until
// a term no longer changes the sum: at most ~20 terms), expm1(v) - v elsewhere, where the result is at least
// 0.1 of the operands and the subtraction costs at most ~10 long double ulps (1e-18 relative). expm1(v) - v
// near 0 would lose all but ~log2(1/|v|) bits.
inline long double exact_expm1_minus_identity(long double v) {
  if (std::fabs(v) >= 0.5L) return std::expm1(v) - v;
  long double sum = 0, term = v * v / 2;
  for (int k = 3; sum + term != sum; ++k) {
    sum += term;
    term *= v / k;
  }
  return sum;
}

}  // namespace testing
}  // namespace vaefast
