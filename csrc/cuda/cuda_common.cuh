// What the CUDA kernels share: widening loads and narrowing stores for float16/bfloat16, 16-byte packs,
// grid sizing, deterministic warp and block reductions, the per-row chunked sum that the per-sample losses
// are built on, and where a noise-drawing kernel finds its Philox stream. Torch-free (CUDA's headers and
// csrc/common only), so nvcc compiles it on machines whose torch has no CUDA headers (the CMake compile
// check).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/elementwise_math.h"
#include "../common/params.h"

namespace vaefast {
namespace cuda {

constexpr int kThreads = 256;  // threads per block of the memory-bound kernels
constexpr int kWarp = 32;

// (seed, offset) of a noise-drawing call: the values in the state, or, under CUDA-graph capture, read from
// the generator's device-side state as at::cuda::philox::unpack does.
__device__ __forceinline__ void philox_seed_offset(const PhiloxState& philox, uint64_t* seed, uint64_t* offset) {
  if (philox.seed_ptr != nullptr) {
    *seed = static_cast<uint64_t>(*philox.seed_ptr);
    *offset = static_cast<uint64_t>(*philox.offset_ptr) + philox.offset_intragraph;
  } else {
    *seed = philox.seed;
    *offset = philox.offset;
  }
}

// Every kernel launch goes through here: kernel<<<grid, block, shared_bytes, stream>>>(args...) under nvcc,
// and the CPU emulator's launch where csrc/tests/cuda_emulator stands in for CUDA's headers (it defines
// VAEFAST_CUDA_EMULATOR), so that the tests run these very sources on machines without a GPU.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   const Args&... args) {
#if defined(VAEFAST_CUDA_EMULATOR)
  ::vaefast::emulator::launch(kernel, grid, block, shared_bytes, stream, args...);
#else
  kernel<<<grid, block, shared_bytes, stream>>>(args...);
#endif
}

// The block's dynamic shared memory (launch_kernel's shared_bytes), 16-byte aligned. Behind a function
// because the emulator cannot give a block-scope `extern __shared__` array a per-launch address.
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
#if defined(VAEFAST_CUDA_EMULATOR)
  return ::vaefast::emulator::dynamic_shared_memory();
#else
  extern __shared__ __align__(16) unsigned char dynamic_shared[];
  return dynamic_shared;
#endif
}

// Widen to the accumulation type / narrow to storage (float16 and bfloat16 go through float).
template <typename acc, typename scalar_t>
__device__ __forceinline__ acc to_acc(scalar_t v) {
  return static_cast<acc>(v);
}
template <>
__device__ __forceinline__ float to_acc<float, __half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename scalar_t, typename acc>
__device__ __forceinline__ scalar_t from_acc(acc v) {
  return static_cast<scalar_t>(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// N consecutive elements moved as one aligned access (16 bytes, or 32 for four doubles, which the compiler
// splits into two 16-byte accesses).
template <typename scalar_t, int N>
struct alignas(sizeof(scalar_t) * N) Pack {
  static constexpr int size = N;
  scalar_t v[N];
};

// Elements per 16-byte access: 4 float, 2 double, 8 half/bfloat16.
template <typename scalar_t>
constexpr int kVecWidth = 16 / static_cast<int>(sizeof(scalar_t));

inline bool aligned_to(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// Blocks for a grid-stride loop over `work` items of one thread each: enough to fill every SM several
// times over (memory-bound kernels need many bytes in flight), no more (each thread then loops).
inline unsigned int grid_for(int64_t work, int threads = kThreads) {
  int device = 0;
  int sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) {
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  const int64_t wanted = (work + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(sms) * 16;
  return static_cast<unsigned int>(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
}

// Sum over the 32 lanes of a warp in a fixed butterfly order: every lane gets the same bits, every run.
template <typename acc>
__device__ __forceinline__ acc warp_sum(acc v) {
#pragma unroll
  for (int delta = kWarp / 2; delta > 0; delta /= 2) v += __shfl_xor_sync(0xffffffffu, v, delta);
  return v;
}

// Sum over a block of kThreads threads in a fixed order (warp butterflies, then warp 0 over the warp sums);
// the result is valid in thread 0. `shared` holds kThreads / 32 values. Ends with a barrier, so it can be
// called again on the same buffer.
template <typename acc>
__device__ __forceinline__ acc block_sum(acc v, acc* shared) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  acc total = 0;
  if (warp == 0) {
    total = lane < kThreads / kWarp ? shared[lane] : acc(0);
    total = warp_sum(total);
  }
  __syncthreads();
  return total;
}

// ---- Per-row sums of a [rows, cols] index space (the per-sample losses) -------------------------------
// A row is cut into fixed chunks of kRowChunk columns; one warp sums one (row, chunk) item: each lane adds
// its columns in order, then the warp butterfly. With one chunk per row the warp has the row's total; with
// more, each item's sum goes to partial[row * chunks + chunk] and finish_row_sums adds them in chunk order.
// The bits depend only on the sizes (never on timing or the GPU), and no floating-point atomics are used.
// A warp per item rather than a block per row: a [256, 64] latent is 256 items of 2 float4 per lane, and a
// [1, 64M] image is 32768 items spread over every SM, where a block per row would leave all but one idle.
constexpr int64_t kRowChunk = 2048;

__host__ __device__ inline int64_t row_chunks(int64_t cols) { return (cols + kRowChunk - 1) / kRowChunk; }

// term(row, col_begin, col_end, lane) returns one lane's in-order sum over its columns of [col_begin,
// col_end) and may write elementwise outputs on the way; done(row, total) receives each row's total when a
// row has one chunk (else the item's sum is stored in partial).
template <typename acc, typename Term, typename Done>
__global__ void __launch_bounds__(kThreads) row_chunk_sums_kernel(int64_t rows, int64_t cols, Term term, Done done,
                                                                  acc* partial) {
  const int64_t chunks = row_chunks(cols);
  const int64_t items = rows * chunks;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / kWarp);
  for (int64_t item = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / kWarp; item < items;
       item += warps) {
    const int64_t row = item / chunks;
    const int64_t chunk = item % chunks;
    const int64_t begin = chunk * kRowChunk;
    const int64_t end = begin + kRowChunk < cols ? begin + kRowChunk : cols;
    const acc total = warp_sum(term(row, begin, end, lane));
    if (lane == 0) {
      if (chunks == 1) {
        done(row, total);
      } else {
        partial[item] = total;
      }
    }
  }
}

// Adds each row's chunk sums in chunk order (lane l takes chunks l, l + 32, ...; then the warp butterfly).
template <typename acc, typename Done>
__global__ void __launch_bounds__(kThreads) finish_row_sums_kernel(int64_t rows, int64_t chunks,
                                                                   const acc* partial, Done done) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / kWarp);
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / kWarp; row < rows;
       row += warps) {
    acc total = 0;
    for (int64_t chunk = lane; chunk < chunks; chunk += kWarp) total += partial[row * chunks + chunk];
    total = warp_sum(total);
    if (lane == 0) done(row, total);
  }
}

// Bytes of partial sums run_row_sums needs for [rows, cols] (0 when every row is one chunk).
template <typename acc>
size_t row_sums_workspace_bytes(int64_t rows, int64_t cols) {
  const int64_t chunks = row_chunks(cols);
  return chunks > 1 ? static_cast<size_t>(rows * chunks) * sizeof(acc) : 0;
}

template <typename acc, typename Term, typename Done>
void run_row_sums(int64_t rows, int64_t cols, const Term& term, const Done& done, void* workspace,
                  cudaStream_t stream) {
  const int64_t chunks = row_chunks(cols);
  acc* partial = static_cast<acc*>(workspace);
  launch_kernel(row_chunk_sums_kernel<acc, Term, Done>, grid_for(rows * chunks * kWarp), kThreads, 0, stream, rows,
                cols, term, done, partial);
  if (chunks > 1) {
    launch_kernel(finish_row_sums_kernel<acc, Done>, grid_for(rows * kWarp), kThreads, 0, stream, rows, chunks,
                  partial, done);
  }
}

// One lane's in-order sum of f(j) over its columns of [begin, end) (lane, lane + 32, ...); with packs of
// N when `vectorised` (begin is then a multiple of N and the row start aligned), the tail element by element.
template <typename acc, int N, typename PackTerm, typename ScalarTerm>
__device__ __forceinline__ acc lane_sum(int64_t begin, int64_t end, int lane, bool vectorised,
                                        const PackTerm& pack_term, const ScalarTerm& scalar_term) {
  acc total = 0;
  int64_t j = begin;
  if (vectorised) {
    const int64_t vec_end = begin + (end - begin) / N * N;
    for (j = begin + static_cast<int64_t>(lane) * N; j < vec_end; j += kWarp * N) total += pack_term(j);
    j = vec_end;
  }
  for (j += lane; j < end; j += kWarp) total += scalar_term(j);
  return total;
}

}  // namespace cuda
}  // namespace vaefast
