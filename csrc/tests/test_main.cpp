// Runner of the C++ tests: `vaefast_cpp_tests [name-substring]` runs every registered test (or those whose
// name contains the argument) and ends with "N passed, N failed".
#include "test_main.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace vaefast {
namespace testing {
namespace {

struct TestCase {
  const char* name;
  TestFunction function;
};

// A function-local static, so registration from other translation units' static initialisers is safe
// whatever their order.
std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}

struct RunningTest {
  const char* name = "";
  int64_t checks = 0;
  int64_t failures = 0;
  bool has_seed = false;
  uint64_t seed = 0;
};
RunningTest running;

}  // namespace

bool register_test(const char* name, TestFunction function) {
  registry().push_back({name, function});
  return true;
}

bool record_check(bool passed, const char* file, int line, const std::string& message) {
  ++running.checks;
  if (passed) return true;
  ++running.failures;
  std::printf("%s:%d: FAILED in %s: %s", file, line, running.name, message.c_str());
  if (running.has_seed) {
    std::printf(" [seed %llu; replay with VAEFAST_TEST_SEED=%llu]", static_cast<unsigned long long>(running.seed),
                static_cast<unsigned long long>(running.seed));
  }
  std::printf("\n");
  std::fflush(stdout);
  return false;
}

uint64_t test_seed() {
  if (!running.has_seed) {
    const char* fixed = std::getenv("VAEFAST_TEST_SEED");
    if (fixed != nullptr && *fixed != '\0') {
      running.seed = std::strtoull(fixed, nullptr, 10);
    } else {
      std::random_device device;
      running.seed = (static_cast<uint64_t>(device()) << 32) | device();
    }
    running.has_seed = true;
  }
  return running.seed;
}

}  // namespace testing
}  // namespace vaefast

int main(int argc, char** argv) {
  using namespace vaefast::testing;
  const char* filter = argc > 1 ? argv[1] : "";
  int passed = 0;
  int failed = 0;
  for (const TestCase& test : registry()) {
    if (std::strstr(test.name, filter) == nullptr) continue;
    running = RunningTest{};
    running.name = test.name;
    const auto start = std::chrono::steady_clock::now();
    test.function();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const bool ok = running.failures == 0 && running.checks > 0;
    if (running.checks == 0) std::printf("FAILED %s: the test made no checks\n", test.name);
    std::printf("[%s] %s (%lld checks, %.2f s)\n", ok ? "  OK  " : "FAILED", test.name,
                static_cast<long long>(running.checks), seconds);
    std::fflush(stdout);
    (ok ? passed : failed) += 1;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 && passed > 0 ? 0 : 1;
}
