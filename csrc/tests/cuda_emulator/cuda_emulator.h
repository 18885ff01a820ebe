// vaefast's CUDA emulator: the part of CUDA that csrc/cuda uses, on the CPU, so that the kernels run in the
// C++ tests of machines without a GPU. The .cu files are compiled unchanged by the host compiler with
// csrc/tests/cuda_emulator/include ahead on the include path, whose cuda_runtime.h, cuda_runtime_api.h,
// cuda_fp16.h and cuda_bf16.h all resolve to this header. It is test infrastructure, not a CUDA
// implementation: it covers what csrc/cuda needs (read from every .cu/.cuh and launchers.h) and refuses
// the rest loudly.
//
// What it models:
// - A launch (cuda_common.cuh's launch_kernel, which is <<<>>> under nvcc) runs the blocks one after
//   another on a worker thread; every thread of a block is a fiber (ucontext) that runs until it waits at
//   a barrier or exits, in a lane order the tests choose (forward or reversed), so that a missing barrier
//   shows as a different result in one of the orders.
// - __syncthreads waits for every live thread of the block; __shfl_xor_sync exchanges values among the
//   lanes its mask names once all of them have arrived (so a shuffle inside `if (warp == 0)` works while
//   the other warps wait elsewhere). Threads that wait at different barriers (divergence), a shuffle that
//   names an exited lane, and any other state that could never progress are reported with file and line;
//   nothing hangs.
// - __shared__ variables are block-scope `static thread_local`: one copy for the worker thread, which
//   runs one block at a time, filled with 0xff bytes (a NaN in float and double) before every block, as
//   is the dynamic shared memory, so that a read before the block's own write shows. The dynamic part is
//   limited to 48 KB unless cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) raised it,
//   to at most the A100's 163 KB opt-in (sm_80, the smaller of the two architectures setup.py builds).
// - Grid and block sizes are checked against the device's limits (1024 threads per block, grid.y/z <=
//   65535). __launch_bounds__ is accepted but not checked: its value cannot be read back from an unchanged
//   kernel declaration on the host (every kernel here is bounded by, and launched with, kThreads).
// - cudaGetDevice (device 0), cudaDeviceGetAttribute (the SM count the tests set: it sizes the grids),
//   cudaFuncSetAttribute.
// - Every launch or execution error throws vaefast::emulator::Error, where a GPU would report it through
//   cudaGetLastError or not at all.
//
// __half and __nv_bfloat16: half_types.h.
#pragma once

#include <math.h>  // the float overloads of fma & co. in the global namespace, as CUDA's math headers have

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "half_types.h"

// cuda_common.cuh routes kernel launches and dynamic shared memory to this emulator when it is defined.
#define VAEFAST_CUDA_EMULATOR 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static thread_local
#define __syncthreads() ::vaefast::emulator::sync_threads(__FILE__, __LINE__)
#define __shfl_xor_sync(...) ::vaefast::emulator::shuffle_xor(__FILE__, __LINE__, __VA_ARGS__)

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
// The running thread's coordinates: set by the scheduler before it resumes a thread's fiber.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaDeviceAttr { cudaDevAttrMaxThreadsPerBlock = 1, cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);

namespace vaefast {
namespace emulator {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kDefaultDynamicSharedBytes = 48 * 1024;
constexpr size_t kMaxDynamicSharedBytes = 166912;  // A100's opt-in limit (sm_80); H100 allows 232448

// The order in which the scheduler resumes a block's runnable threads.
enum class Schedule { kForward, kReversed };

// The emulated device: its SM count and the lane schedule. Tests set them for a scope (DeviceSettings).
void set_sm_count(int sms);
int sm_count();
void set_schedule(Schedule schedule);
Schedule schedule();

class DeviceSettings {
 public:
  DeviceSettings(int sms, Schedule order) : sms_(sm_count()), order_(schedule()) {
    set_sm_count(sms);
    set_schedule(order);
  }
  ~DeviceSettings() {
    set_sm_count(sms_);
    set_schedule(order_);
  }
  DeviceSettings(const DeviceSettings&) = delete;
  DeviceSettings& operator=(const DeviceSettings&) = delete;

 private:
  int sms_;
  Schedule order_;
};

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);

// Device side: called from a kernel's fiber.
void sync_threads(const char* file, int line);
// Waits until every lane named in mask has arrived at this shuffle, then returns lane (lane ^ lane_mask)'s
// value bytes in out.
void exchange_xor(const char* file, int line, unsigned int mask, const void* value, size_t size, int lane_mask,
                  void* out);
unsigned char* dynamic_shared_memory();

template <typename T>
T shuffle_xor(const char* file, int line, unsigned int mask, T value, int lane_mask, int width = warpSize) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move 4- or 8-byte values");
  if (width != warpSize) throw Error(std::string(file) + ":" + std::to_string(line) + ": shuffle width != 32");
  T result;
  exchange_xor(file, line, mask, &value, sizeof(T), lane_mask, &result);
  return result;
}

// Host side: runs body(closure) as every thread of every block of the grid.
struct LaunchShape {
  const void* kernel;
  dim3 grid;
  dim3 block;
  size_t dynamic_shared_bytes;
};
void run_grid(const LaunchShape& shape, void (*body)(void*), void* closure);

// The emulator's <<<grid, block, shared_bytes, stream>>>(args...): arguments converted to the kernel's
// parameter types once, as the launch copies them; each thread calls the kernel on those values.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t /*stream*/,
            const Args&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "a kernel launch needs one argument per parameter");
  std::tuple<std::decay_t<Params>...> parameters(static_cast<std::decay_t<Params>>(args)...);
  auto body = [&] { std::apply(kernel, parameters); };
  run_grid({reinterpret_cast<const void*>(kernel), grid, block, shared_bytes},
           [](void* closure) { (*static_cast<decltype(body)*>(closure))(); }, &body);
}

}  // namespace emulator
}  // namespace vaefast

template <typename Function>
cudaError_t cudaFuncSetAttribute(Function* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return vaefast::emulator::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}
