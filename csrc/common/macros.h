// Portability macros shared by the CPU and CUDA code. This header (and every header in csrc/common)
// includes no torch header, so the same per-element math compiles in a torch-free C++ test program, in the
// CPU extension and, under nvcc, in CUDA kernels.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define VAEFAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define VAEFAST_HOST_DEVICE inline
#endif
