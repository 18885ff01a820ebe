// What the tests of the emulated CUDA kernels share (test_emulated_*.cpp): the emulated device settings
// they sweep, buffers that place data at a chosen misalignment, the c10 <-> CUDA storage types, a guard
// that turns an emulator error into a failed check, and the error bounds of the CUDA kernels' summation
// order.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_kernel_testing.h"
#include "cuda/cuda_common.cuh"
#include "cuda/launchers.h"
#include "ops/cuda_scalar.h"
#include "test_main.h"

namespace vaefast {
namespace testing {

// The CUDA storage type of a test's element type: the glue's mapping (ops/cuda_scalar.h).
template <typename T>
using cuda_t = ops::cuda_scalar_t<T>;

template <typename T>
cuda_t<T>* cuda_pointer(T* p) {
  return reinterpret_cast<cuda_t<T>*>(p);
}
template <typename T>
const cuda_t<T>* cuda_pointer(const T* p) {
  return reinterpret_cast<const cuda_t<T>*>(p);
}

// An emulated device: SM count (1 and 2 make the grid-stride loops of every kernel run several rounds; 132
// is an H100) and the order in which a block's threads are resumed.
struct Device {
  int sms;
  emulator::Schedule schedule;
};
inline std::vector<Device> all_devices() {
  std::vector<Device> devices;
  for (const int sms : {1, 2, 7, 132}) {
    for (const auto order : {emulator::Schedule::kForward, emulator::Schedule::kReversed}) {
      devices.push_back({sms, order});
    }
  }
  return devices;
}
inline std::string describe(const Device& device) {
  return std::to_string(device.sms) + " SMs, " +
         (device.schedule == emulator::Schedule::kForward ? "forward" : "reversed") + " lanes";
}

// n elements of T starting `misalign` elements past an allocation's start (operator new aligns to 16 bytes,
// so misalign = 1 breaks every 16-byte pack), sized exactly, so that a sanitizer build sees overruns.
template <typename T>
class Buffer {
 public:
  Buffer(int64_t n, int64_t misalign = 0) : storage_(static_cast<size_t>(n + misalign)), offset_(misalign) {}
  Buffer(const std::vector<T>& values, int64_t misalign) : Buffer(static_cast<int64_t>(values.size()), misalign) {
    std::copy(values.begin(), values.end(), data());
  }
  T* data() { return storage_.data() + offset_; }
  const T* data() const { return storage_.data() + offset_; }
  std::vector<T> values() const { return std::vector<T>(data(), data() + size()); }
  int64_t size() const { return static_cast<int64_t>(storage_.size()) - offset_; }

 private:
  std::vector<T> storage_;
  int64_t offset_;
};

// Workspace bytes for a launcher, as the glue allocates them (nullptr when 0).
class Workspace {
 public:
  explicit Workspace(size_t bytes) : storage_((bytes + 15) / 16) {}
  void* data() { return storage_.empty() ? nullptr : storage_.data(); }

 private:
  struct alignas(16) Chunk {
    unsigned char bytes[16];
  };
  std::vector<Chunk> storage_;
};

// Runs f() on the emulated device; an emulator error (divergence, a refused launch, ...) fails the test
// with its message instead of ending the program. Returns whether f completed.
template <typename F>
bool on_device(const Device& device, const std::string& what, const F& f) {
  const emulator::DeviceSettings settings(device.sms, device.schedule);
  try {
    f();
    return true;
  } catch (const std::exception& error) {
    EXPECT_MSG(false, what + " on " + describe(device) + ": " + error.what());
    return false;
  }
}

template <typename T>
long double accumulation_eps() {
  return std::numeric_limits<acc_t<T>>::epsilon();
}

// Worst-case number of roundings along one path of cuda::run_row_sums over `cols` columns with packs of N:
// a lane adds its columns of a chunk in order (at most chunk / 32 on the scalar path; on the vector path
// fewer packs of N terms each, and at most one tail element), the warp butterfly adds 5 levels, and with
// several chunks a lane of finish_row_sums adds its chunks in order before 5 more levels. The summation
// error is then at most depth * (eps / 2) * sum |terms| (Higham's gamma_n to first order).
inline int64_t cuda_row_sum_depth(int64_t cols, int64_t N) {
  const int64_t chunk = std::min(cols, cuda::kRowChunk);
  const int64_t chunks = cuda::row_chunks(cols);
  return (chunk + 31) / 32 + N + 1 + 5 + (chunks > 1 ? (chunks + 31) / 32 + 5 : 0);
}

// Relative and absolute rounding of a result stored in T, doubled: the emulated and the reference result
// may round to neighbouring values of T.
template <typename T>
long double storage_tolerance(long double value) {
  return 2 * (storage_rounding<T>() * std::fabs(value) + storage_rounding_absolute<T>());
}

// |actual - expected| <= tolerance for every element; reports the first violation (index and values) and
// returns whether all passed.
inline bool expect_all_near(const std::string& what, const std::vector<long double>& actual,
                            const std::vector<long double>& expected, const std::vector<long double>& tolerance) {
  for (size_t i = 0; i < actual.size(); ++i) {
    if (!(std::fabs(actual[i] - expected[i]) <= tolerance[i])) {
      return EXPECT_MSG(false, what + " element " + show(i) + ": " + show(actual[i]) + " vs reference " +
                                   show(expected[i]) + ", error " + show(std::fabs(actual[i] - expected[i])) +
                                   " > tolerance " + show(tolerance[i]));
    }
  }
  return EXPECT_TRUE(true);
}

template <typename T>
std::vector<long double> widen(const std::vector<T>& values) {
  std::vector<long double> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = static_cast<long double>(static_cast<acc_t<T>>(values[i]));
  return out;
}
template <typename T>
std::vector<double> to_double(const std::vector<T>& values) {
  std::vector<double> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = static_cast<double>(static_cast<acc_t<T>>(values[i]));
  return out;
}

// Bitwise comparison of two runs' outputs, reporting the first difference.
template <typename T>
bool expect_same_bits(const std::string& what, const std::vector<T>& a, const std::vector<T>& b) {
  const int64_t first = first_bitwise_difference(a, b);
  if (first < 0) return EXPECT_TRUE(true);
  return EXPECT_MSG(false, what + ": bits differ first at element " + show(first));
}

}  // namespace testing
}  // namespace vaefast
