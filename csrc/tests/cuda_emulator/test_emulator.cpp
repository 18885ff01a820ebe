// Tests of the CUDA emulator itself (cuda_emulator.h), on small kernels written here: the block reduction
// with its shuffle inside `if (warp == 0)`, divergence and other deadlocks reported with file and line,
// shared memory that starts as NaN in every block, the 48 KB dynamic shared memory limit and its opt-in,
// launch limits, thread coordinates, the two lane orders, the SM count, and __half / __nv_bfloat16
// conversions against c10's.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "emulator_testing.h"

namespace {

using namespace vaefast::testing;
using vaefast::emulator::Schedule;
namespace cuda = vaefast::cuda;
namespace emulator = vaefast::emulator;

// Runs launch() and returns the emulator's error message ("" when it completed).
template <typename F>
std::string error_of(const F& launch) {
  try {
    launch();
  } catch (const emulator::Error& error) {
    return error.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

__global__ void __launch_bounds__(cuda::kThreads) block_sum_kernel(float* block_totals, float* warp_totals) {
  __shared__ float shared[cuda::kThreads / cuda::kWarp];
  const float value = static_cast<float>(blockIdx.x * blockDim.x + threadIdx.x + 1);
  warp_totals[blockIdx.x * blockDim.x + threadIdx.x] = cuda::warp_sum(value);
  const float total = cuda::block_sum(value, shared);
  if (threadIdx.x == 0) block_totals[blockIdx.x] = total;
}

// Integers up to 768 and their sums (< 2^24) are exact in float: any lost, doubled or stale value shows.
VAEFAST_TEST(emulator_block_sum_with_shuffles_in_warp_zero) {
  for (const Schedule order : {Schedule::kForward, Schedule::kReversed}) {
    const emulator::DeviceSettings settings(7, order);
    std::vector<float> block_totals(3), warp_totals(3 * cuda::kThreads);
    const std::string error = error_of([&] {
      cuda::launch_kernel(block_sum_kernel, 3, cuda::kThreads, 0, nullptr, block_totals.data(), warp_totals.data());
    });
    EXPECT_MSG(error.empty(), error);
    for (int block = 0; block < 3; ++block) {
      const double first = block * 256.0;  // values first + 1 .. first + 256
      EXPECT_EQ(block_totals[block], static_cast<float>(256 * first + 256.0 * 257 / 2));
      for (int warp = 0; warp < 8; ++warp) {
        const double warp_first = first + 32 * warp;
        const float expected = static_cast<float>(32 * warp_first + 32.0 * 33 / 2);
        bool all = true;
        for (int lane = 0; lane < 32; ++lane) all = all && warp_totals[block * 256 + warp * 32 + lane] == expected;
        EXPECT_MSG(all, "warp " + show(warp) + " of block " + show(block) + ": lanes disagree with " + show(expected));
      }
    }
  }
}

__global__ void __launch_bounds__(cuda::kThreads) half_warp_shuffle_kernel(float* out) {
  float value = 1;
  if (threadIdx.x % cuda::kWarp < 16) value = cuda::warp_sum(value);
  out[threadIdx.x] = value;
}

__global__ void __launch_bounds__(cuda::kThreads) split_barrier_kernel(float* out) {
  if (threadIdx.x < 128) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void __launch_bounds__(cuda::kThreads) exited_lane_kernel(float* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = cuda::warp_sum(1.0f);
}

// Threads that exited do not hold up a __syncthreads of the others (as on Volta and later).
__global__ void __launch_bounds__(cuda::kThreads) early_exit_kernel(float* out) {
  __shared__ float shared[cuda::kThreads];
  if (threadIdx.x >= 128) return;
  shared[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = shared[127 - threadIdx.x];
}

VAEFAST_TEST(emulator_reports_divergence_with_file_and_line) {
  std::vector<float> out(cuda::kThreads);
  const std::string shuffle =
      error_of([&] { cuda::launch_kernel(half_warp_shuffle_kernel, 1, 256, 0, nullptr, out.data()); });
  EXPECT_MSG(contains(shuffle, "divergence") && contains(shuffle, "cuda_common.cuh:") &&
                 contains(shuffle, "__shfl_xor_sync at") && contains(shuffle, "thread 16"),
             "half a warp in warp_sum: '" + shuffle + "'");

  const std::string barriers =
      error_of([&] { cuda::launch_kernel(split_barrier_kernel, 1, 256, 0, nullptr, out.data()); });
  EXPECT_MSG(contains(barriers, "divergence") && contains(barriers, "test_emulator.cpp:") &&
                 contains(barriers, "thread 0 at __syncthreads") && contains(barriers, "thread 128 at __syncthreads"),
             "two __syncthreads: '" + barriers + "'");

  const std::string exited = error_of([&] { cuda::launch_kernel(exited_lane_kernel, 1, 256, 0, nullptr, out.data()); });
  EXPECT_MSG(contains(exited, "thread 5, which is exited"), "a shuffle naming an exited lane: '" + exited + "'");

  const std::string early = error_of([&] { cuda::launch_kernel(early_exit_kernel, 1, 256, 0, nullptr, out.data()); });
  EXPECT_MSG(early.empty(), "a barrier after half the block exited: '" + early + "'");
  bool reversed = true;
  for (int t = 0; t < 128; ++t) reversed = reversed && out[t] == static_cast<float>(127 - t);
  EXPECT_MSG(reversed, "the live half's exchange through shared memory");
}

__global__ void __launch_bounds__(cuda::kThreads) read_before_write_kernel(float* static_reads, double* dynamic_reads) {
  __shared__ float cell[1];
  double* dynamic = reinterpret_cast<double*>(cuda::dynamic_shared_memory());
  if (threadIdx.x == 0) {
    static_reads[blockIdx.x] = cell[0];
    dynamic_reads[blockIdx.x] = dynamic[blockIdx.x];
    cell[0] = 1;
    for (int k = 0; k < 4; ++k) dynamic[k] = 1;
  }
}

// Every block starts with its shared memory all 0xff bytes (NaN), whatever the previous block wrote.
VAEFAST_TEST(emulator_shared_memory_starts_as_nan_in_every_block) {
  std::vector<float> static_reads(4);
  std::vector<double> dynamic_reads(4);
  const std::string error = error_of([&] {
    cuda::launch_kernel(read_before_write_kernel, 4, 32, 4 * sizeof(double), nullptr, static_reads.data(),
                        dynamic_reads.data());
  });
  EXPECT_MSG(error.empty(), error);
  for (int block = 0; block < 4; ++block) {
    EXPECT_MSG(std::isnan(static_reads[block]),
               "static __shared__ in block " + show(block) + ": " + show(static_reads[block]));
    EXPECT_MSG(std::isnan(dynamic_reads[block]),
               "dynamic shared in block " + show(block) + ": " + show(dynamic_reads[block]));
  }
}

__global__ void __launch_bounds__(cuda::kThreads) touch_dynamic_kernel(int* out) {
  out[0] = cuda::dynamic_shared_memory()[0] == 0xff ? 1 : 0;
}
__global__ void __launch_bounds__(cuda::kThreads) opted_in_kernel(int* out) {
  out[0] = cuda::dynamic_shared_memory()[0] == 0xff ? 1 : 0;
}

// Above 48 KB of dynamic shared memory a launch needs cudaFuncSetAttribute first, and the opt-in stops at
// the A100's 163 KB.
VAEFAST_TEST(emulator_dynamic_shared_memory_limit) {
  int out = 0;
  const size_t over = 48 * 1024 + 16;
  const std::string refused = error_of([&] { cuda::launch_kernel(touch_dynamic_kernel, 1, 32, over, nullptr, &out); });
  EXPECT_MSG(contains(refused, "launch refused") && contains(refused, "49168 B"), "'" + refused + "'");
  const std::string at_limit =
      error_of([&] { cuda::launch_kernel(touch_dynamic_kernel, 1, 32, 48 * 1024, nullptr, &out); });
  EXPECT_MSG(at_limit.empty() && out == 1, "48 KB: '" + at_limit + "'");
  EXPECT_EQ(cudaFuncSetAttribute(opted_in_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 166912 + 1),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaFuncSetAttribute(opted_in_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024),
            cudaSuccess);
  out = 0;
  const std::string opted = error_of([&] { cuda::launch_kernel(opted_in_kernel, 1, 32, 100 * 1024, nullptr, &out); });
  EXPECT_MSG(opted.empty() && out == 1, "100 KB after the opt-in: '" + opted + "'");
  const std::string beyond =
      error_of([&] { cuda::launch_kernel(opted_in_kernel, 1, 32, 100 * 1024 + 1, nullptr, &out); });
  EXPECT_MSG(contains(beyond, "launch refused"), "past the opted-in size: '" + beyond + "'");
}

__global__ void __launch_bounds__(cuda::kThreads) coordinates_kernel(int* out) {
  const unsigned int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const unsigned int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  out[block * blockDim.x * blockDim.y * blockDim.z + thread] += static_cast<int>(block * 1000 + thread);
}

VAEFAST_TEST(emulator_launch_shapes) {
  const dim3 grid(3, 2, 2), block(8, 4, 2);
  std::vector<int> out(12 * 64, 0);
  const std::string error =
      error_of([&] { cuda::launch_kernel(coordinates_kernel, grid, block, 0, nullptr, out.data()); });
  EXPECT_MSG(error.empty(), error);
  bool all = true;
  for (int b = 0; b < 12; ++b) {
    for (int t = 0; t < 64; ++t) all = all && out[b * 64 + t] == b * 1000 + t;
  }
  EXPECT_MSG(all, "every thread of every block once, with its coordinates");
  for (const auto& [bad_grid, bad_block] : {std::pair{dim3(1), dim3(2048)}, std::pair{dim3(1), dim3(32, 32, 2)},
                                            std::pair{dim3(1, 70000), dim3(32)}, std::pair{dim3(0), dim3(32)}}) {
    const std::string refused =
        error_of([&] { cuda::launch_kernel(coordinates_kernel, bad_grid, bad_block, 0, nullptr, out.data()); });
    EXPECT_MSG(contains(refused, "launch refused"), "grid (" + show(bad_grid.x) + ", " + show(bad_grid.y) +
                                                        "), block (" + show(bad_block.x) + ", " + show(bad_block.y) +
                                                        ", " + show(bad_block.z) + "): '" + refused + "'");
  }
}

// A missing barrier: each thread reads its neighbour's slot without waiting for the write. The forward order
// runs thread t before t + 1 (it reads the NaN fill), the reversed order after it: the two orders expose
// such races to the kernel tests, which run both.
__global__ void __launch_bounds__(cuda::kThreads) racy_kernel(float* out) {
  __shared__ float slots[cuda::kThreads];
  slots[threadIdx.x] = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = slots[(threadIdx.x + 1) % cuda::kThreads];
}

VAEFAST_TEST(emulator_lane_orders_expose_a_missing_barrier) {
  std::vector<float> forward(cuda::kThreads), reversed(cuda::kThreads);
  {
    const emulator::DeviceSettings settings(1, Schedule::kForward);
    cuda::launch_kernel(racy_kernel, 1, cuda::kThreads, 0, nullptr, forward.data());
  }
  {
    const emulator::DeviceSettings settings(1, Schedule::kReversed);
    cuda::launch_kernel(racy_kernel, 1, cuda::kThreads, 0, nullptr, reversed.data());
  }
  EXPECT_MSG(std::isnan(forward[0]) && forward[255] == 0, "forward: " + show(forward[0]) + ", " + show(forward[255]));
  EXPECT_MSG(reversed[0] == 1 && std::isnan(reversed[255]),
             "reversed: " + show(reversed[0]) + ", " + show(reversed[255]));
}

// The SM count the tests set is what the kernels' grid sizing sees.
VAEFAST_TEST(emulator_sm_count_sizes_the_grids) {
  for (const int sms : {1, 2, 7, 132}) {
    const emulator::DeviceSettings settings(sms, Schedule::kForward);
    int device = -1, reported = 0;
    EXPECT_EQ(cudaGetDevice(&device), cudaSuccess);
    EXPECT_EQ(cudaDeviceGetAttribute(&reported, cudaDevAttrMultiProcessorCount, device), cudaSuccess);
    EXPECT_EQ(reported, sms);
    EXPECT_EQ(cuda::grid_for(int64_t{1} << 40), static_cast<unsigned int>(16 * sms));
    EXPECT_EQ(cuda::grid_for(1000), 4u);
  }
}

// float -> __half / __nv_bfloat16 rounds to nearest even exactly as c10's conversions do (2^22 random bit
// patterns and the boundaries: halfway cases, the largest finite values, subnormals, infinities); every
// __half and __nv_bfloat16 bit pattern widens to c10's float. NaN maps to NaN (payloads may differ).
VAEFAST_TEST(emulator_half_and_bfloat16_conversions_match_c10) {
  std::mt19937 rng(static_cast<uint32_t>(test_seed()));
  std::vector<float> values = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 6.0e-8f, 2.98e-8f, 2.9802322e-8f,
                               5.9604645e-8f, 6.1035156e-5f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048,
                               3.3895314e38f, std::numeric_limits<float>::infinity(),
                               std::numeric_limits<float>::denorm_min()};
  for (int k = 0; k < (1 << 22); ++k) {
    const uint32_t bits = rng();
    float v;
    std::memcpy(&v, &bits, sizeof(v));
    values.push_back(v);
    values.push_back(std::ldexp(static_cast<float>(rng() % 4096) + 0.5f, -34 + static_cast<int>(rng() % 40)));
  }
  bool half_ok = true, bfloat16_ok = true;
  for (const float v : values) {
    const unsigned short half = __float2half_rn(v).__x, bfloat16 = __float2bfloat16_rn(v).__x;
    const c10::Half c10_half(v);
    const c10::BFloat16 c10_bfloat16(v);
    if (std::isnan(v)) {
      half_ok = half_ok && std::isnan(__half2float(__half{half}));
      bfloat16_ok = bfloat16_ok && std::isnan(__bfloat162float(__nv_bfloat16{bfloat16}));
      continue;
    }
    if (half != c10_half.x) {
      half_ok = EXPECT_MSG(false, "half(" + show(v) + "): " + show(half) + " vs c10 " + show(c10_half.x));
    }
    if (bfloat16 != c10_bfloat16.x) {
      bfloat16_ok =
          EXPECT_MSG(false, "bfloat16(" + show(v) + "): " + show(bfloat16) + " vs c10 " + show(c10_bfloat16.x));
    }
    if (!half_ok || !bfloat16_ok) break;
  }
  for (uint32_t bits = 0; bits < 65536 && half_ok && bfloat16_ok; ++bits) {
    const unsigned short pattern = static_cast<unsigned short>(bits);
    const float half = __half2float(__half{pattern});
    const float c10_half = static_cast<float>(c10::Half(pattern, c10::Half::from_bits()));
    const float bfloat16 = __bfloat162float(__nv_bfloat16{pattern});
    const float c10_bfloat16 = static_cast<float>(c10::BFloat16(pattern, c10::BFloat16::from_bits()));
    half_ok = (std::isnan(half) && std::isnan(c10_half)) || std::memcmp(&half, &c10_half, sizeof(float)) == 0;
    bfloat16_ok = (std::isnan(bfloat16) && std::isnan(c10_bfloat16)) ||
                  std::memcmp(&bfloat16, &c10_bfloat16, sizeof(float)) == 0;
    if (!half_ok) EXPECT_MSG(false, "__half2float(" + show(bits) + ") = " + show(half) + " vs c10 " + show(c10_half));
    if (!bfloat16_ok) {
      EXPECT_MSG(false, "__bfloat162float(" + show(bits) + ") = " + show(bfloat16) + " vs c10 " + show(c10_bfloat16));
    }
  }
  EXPECT_TRUE(half_ok && bfloat16_ok);
}

}  // namespace
