// Stand-in for CUDA's <cuda_fp16.h> in the CPU emulator's builds (csrc/tests/cuda_emulator): the whole emulated
// CUDA surface is one header.
#pragma once

#include "../cuda_emulator.h"
