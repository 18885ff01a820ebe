// A minimal test harness for the C++ tests (no external framework: the CI machines have no network).
//
//   VAEFAST_TEST(philox_known_answers) { EXPECT_EQ(a, b); }
//
// Tests register themselves at static-initialisation time; test_main.cpp runs them all (or those whose
// name contains argv[1]), prints every failing check with file:line and the values involved, and ends with
// the line "N passed, N failed" (tests, not checks); the exit code is nonzero when any test failed.
//
// The checks are non-fatal (a test goes on after a failure) and return whether they passed, so a loop
// over many inputs can stop at its first failure instead of printing thousands of lines.
// They are named EXPECT_*, not CHECK*, because torch's c10/util/logging_is_not_google_glog.h defines
// CHECK and CHECK_EQ, and a torch header that includes it later would silently replace ours.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>

namespace vaefast {
namespace testing {

using TestFunction = void (*)();

// Adds a test to the registry; returns a dummy so it can initialise a static.
bool register_test(const char* name, TestFunction function);

// Records one check of the running test; prints `message` with file:line when it failed.
bool record_check(bool passed, const char* file, int line, const std::string& message);

// A seed for the running test's random inputs: VAEFAST_TEST_SEED when set (to replay a failure), else
// drawn from std::random_device. The seed is printed with every failing check of the test.
uint64_t test_seed();

// Values printed with all the digits needed to reproduce them (17 significant digits for a double).
template <typename T>
std::string show(const T& value) {
  std::ostringstream out;
  out.precision(21);
  if constexpr (std::is_floating_point_v<T>) {
    out << static_cast<long double>(value);
  } else if constexpr (std::is_unsigned_v<T> && sizeof(T) >= 4) {
    out << value << " (0x" << std::hex << static_cast<uint64_t>(value) << ")";
  } else {
    out << value;
  }
  return out.str();
}

template <typename A, typename B>
bool expect_eq(const A& a, const B& b, const char* a_text, const char* b_text, const char* file, int line) {
  const bool passed = a == b;
  if (passed) return record_check(true, file, line, "");
  return record_check(false, file, line,
                      std::string("EXPECT_EQ(") + a_text + ", " + b_text + "): " + show(a) + " != " + show(b));
}

// |actual - expected| <= tolerance, with the error also printed in units of the tolerance.
inline bool expect_near(long double actual, long double expected, long double tolerance, const char* a_text,
                        const char* e_text, const char* file, int line) {
  const long double error = actual > expected ? actual - expected : expected - actual;
  const bool passed = error <= tolerance;  // false for NaN
  if (passed) return record_check(true, file, line, "");
  return record_check(false, file, line,
                      std::string("EXPECT_NEAR(") + a_text + ", " + e_text + "): " + show(actual) + " vs " +
                          show(expected) + ", error " + show(error) + " > tolerance " + show(tolerance));
}

}  // namespace testing
}  // namespace vaefast

#define VAEFAST_TEST(name)                                                                            \
  static void vaefast_test_##name();                                                                  \
  [[maybe_unused]] static const bool vaefast_test_registered_##name =                                 \
      ::vaefast::testing::register_test(#name, &vaefast_test_##name);                                 \
  static void vaefast_test_##name()

// Each evaluates to true when the check passed.
#define EXPECT_TRUE(condition)                                                                            \
  ::vaefast::testing::record_check(static_cast<bool>(condition), __FILE__, __LINE__,                      \
                                   "EXPECT_TRUE(" #condition ") is false")
// EXPECT_TRUE with an explanation built only on failure: EXPECT_MSG(x > 0, "x = " + show(x)).
#define EXPECT_MSG(condition, message)                                                                    \
  ((condition) ? ::vaefast::testing::record_check(true, __FILE__, __LINE__, "")                          \
               : ::vaefast::testing::record_check(false, __FILE__, __LINE__,                             \
                                                  std::string("EXPECT(" #condition "): ") + (message)))
#define EXPECT_EQ(a, b) ::vaefast::testing::expect_eq((a), (b), #a, #b, __FILE__, __LINE__)
#define EXPECT_NEAR(actual, expected, tolerance)                                                          \
  ::vaefast::testing::expect_near((actual), (expected), (tolerance), #actual, #expected, __FILE__, __LINE__)
