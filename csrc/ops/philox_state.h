// How an op that draws noise takes its Philox stream from a torch generator. vaefast::reparameterize and the
// fused head vaefast::reparameterize_kl both call next_philox_state, so the same generator state gives them
// the same stream, hence the same noise.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/Generator.h>

#include <limits>
#include <optional>

#include "../common/params.h"
#include "../common/philox.h"

#ifdef VAEFAST_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <mutex>
#endif

namespace vaefast {
namespace ops {

// The stream of one call for a tensor on `like`'s device, from `generator` or the device's default one.
// CPU: the seed is one torch.randint draw, the same call vaefast/ops/philox.py's draw_seed makes, so
// torch.manual_seed and get/set_rng_state govern it and the compiled and reference paths draw identical
// noise; the offset is 0.
// CUDA: a randint(...).item() seed would synchronise the host; the generator's Philox state instead stays
// on the device under graph capture (unpacked in the kernel) and costs nothing otherwise. Each call
// advances the offset by kPhiloxOffsetIncrement: the element's block index lives in the counter's low half,
// so one increment covers any number of elements (common/philox.h).
inline PhiloxState next_philox_state(const at::Tensor& like, std::optional<at::Generator> generator) {
  PhiloxState philox;
#ifdef VAEFAST_WITH_CUDA
  if (like.is_cuda()) {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        generator, at::cuda::detail::getDefaultCUDAGenerator(like.device().index()));
    at::PhiloxCudaState state;
    {
      std::lock_guard<std::mutex> lock(gen->mutex_);
      state = gen->philox_cuda_state(kPhiloxOffsetIncrement);
    }
    if (state.captured_) {
      philox.seed_ptr = state.seed_.ptr;
      philox.offset_ptr = state.offset_.ptr;
      philox.offset_intragraph = state.offset_intragraph_;
    } else {
      philox.seed = state.seed_.val;
      philox.offset = state.offset_.val;
    }
    return philox;
  }
#endif
  const int64_t seed = at::randint(0, std::numeric_limits<int64_t>::max(), {}, generator,
                                   like.options().dtype(at::kLong)).item<int64_t>();
  philox.seed = static_cast<uint64_t>(seed);
  return philox;
}

}  // namespace ops
}  // namespace vaefast
