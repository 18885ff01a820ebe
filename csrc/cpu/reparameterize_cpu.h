// CPU kernels of vaefast::reparameterize. Forward reads mu and logvar and writes z, drawing eps in
// registers from Philox (nothing else touches memory); backward reads grad_z, z and mu and writes
// grad_logvar (12 + 4 bytes per float32 element instead of eager autograd's ~5 passes).
#pragma once

#include "../common/params.h"
#include "cpu_common.h"

namespace vaefast {
namespace cpu {

// Output elements one task draws at a time: 64 Philox blocks, whose normals stay in an L1-resident buffer
// between the Box-Muller pass and the z pass.
constexpr int64_t kNoiseTile = 256;

// Standard normals for flat output elements [first, first + count) of stream (seed, offset), into eps.
// first is a multiple of 4 (tiles are), so the tile starts on a Philox block. The 64 blocks of a tile are
// kept as four word arrays so that the compiler vectorises the rounds across blocks (32x32->64-bit
// multiplies map onto vpmuludq), and Box-Muller runs on SIMD vectors of blocks.
template <typename acc>
void draw_normals(uint64_t seed, uint64_t offset, int64_t first, int64_t count, acc* eps) {
  constexpr int64_t kBlocks = kNoiseTile / 4;
  constexpr int64_t width = Vec<acc>::size();
  static_assert(kBlocks % width == 0, "the block arrays are processed in whole vectors");
  alignas(64) uint32_t c0[kBlocks], c1[kBlocks], c2[kBlocks], c3[kBlocks];
  const uint64_t first_block = static_cast<uint64_t>(first / 4);
  for (int64_t k = 0; k < kBlocks; ++k) {
    c0[k] = static_cast<uint32_t>(first_block + k);
    c1[k] = static_cast<uint32_t>((first_block + k) >> 32);
    c2[k] = static_cast<uint32_t>(offset);
    c3[k] = static_cast<uint32_t>(offset >> 32);
  }
  uint32_t key0 = static_cast<uint32_t>(seed);
  uint32_t key1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    for (int64_t k = 0; k < kBlocks; ++k) philox_round(c0[k], c1[k], c2[k], c3[k], key0, key1);
    key0 += kPhiloxW0;
    key1 += kPhiloxW1;
  }
  // Lanes (0, 1) and (2, 3) of every block are Box-Muller pairs.
  alignas(64) acc u[4][kBlocks];
  for (int64_t k = 0; k < kBlocks; ++k) {
    u[0][k] = uniform_open_closed<acc>(c0[k]);
    u[1][k] = uniform_open_closed<acc>(c1[k]);
    u[2][k] = uniform_open_closed<acc>(c2[k]);
    u[3][k] = uniform_open_closed<acc>(c3[k]);
  }
  const int64_t blocks = (count + 3) / 4;
  for (int64_t k = 0; k < blocks; k += width) {
    alignas(64) acc normals[4][width];
    for (int pair = 0; pair < 2; ++pair) {
      const Vec<acc> radius = box_muller_radius(Vec<acc>::loadu(u[2 * pair] + k));
      const Vec<acc> theta = box_muller_angle(Vec<acc>::loadu(u[2 * pair + 1] + k));
      Vec<acc> sine, cosine;
      math_sincos(theta, &sine, &cosine);
      (radius * cosine).store(normals[2 * pair]);
      (radius * sine).store(normals[2 * pair + 1]);
    }
    for (int64_t lane = 0; lane < width && k + lane < blocks; ++lane) {
      for (int word = 0; word < 4; ++word) eps[4 * (k + lane) + word] = normals[word][lane];
    }
  }
}

// The flat elements of z that reparameterize_forward computes in write_z's scalar tail (libm's exp) rather
// than on vectors (Sleef's; the two differ in the last bit for about 1 input in 10), with the noise drawn.
// write_z runs whole vectors from the start of every piece of a noise tile that lies in one sample, so the
// tails are at most two runs of fewer than `width` elements per sample: before the first tile boundary
// inside the sample (when the sample starts inside a tile and goes past it) and at the sample's end. The
// fused head asks this to give every element of z reparameterize's bits.
struct ScalarTails {
  int64_t begin[2] = {0, 0};  // flat runs [begin[k], end[k]); empty when begin[k] == end[k]
  int64_t end[2] = {0, 0};
};

template <typename acc>
ScalarTails reparameterize_scalar_tails(int64_t numel, int64_t sample) {
  constexpr int64_t width = Vec<acc>::size();
  const int64_t first = sample * numel;
  const int64_t last = first + numel;
  ScalarTails tails;
  const int64_t boundary = (first / kNoiseTile + 1) * kNoiseTile;  // the first tile boundary after `first`
  if (first % kNoiseTile != 0 && boundary < last) {
    tails.begin[0] = boundary - (boundary - first) % width;
    tails.end[0] = boundary;
  }
  const int64_t last_piece = std::max(first, (last - 1) / kNoiseTile * kNoiseTile);
  tails.begin[1] = last - (last - last_piece) % width;
  tails.end[1] = last;
  return tails;
}

template <typename scalar_t>
void reparameterize_forward(const ReparameterizeParams<scalar_t>& p) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t width = Vec<acc>::size();
  const int64_t total = p.numel * p.num_samples;
  // z[t] for flat t in [begin, end), where eps_at(t) yields eps[t] as a Vec or a scalar.
  auto write_z = [&](int64_t begin, int64_t end, auto&& eps_vec, auto&& eps_scalar) {
    while (begin < end) {  // split at sample boundaries: mu and logvar repeat for every sample
      const int64_t i0 = begin % p.numel;
      const int64_t segment_end = std::min(end, begin - i0 + p.numel);
      int64_t t = begin;
      for (; t + width <= segment_end; t += width) {
        const int64_t i = i0 + (t - begin);
        store_acc(p.z + t, reparameterize_value(load_acc(p.mu + i), load_acc(p.logvar + i), eps_vec(t)));
      }
      for (; t < segment_end; ++t) {
        const int64_t i = i0 + (t - begin);
        p.z[t] = static_cast<scalar_t>(reparameterize_value(static_cast<acc>(p.mu[i]),
                                                            static_cast<acc>(p.logvar[i]), eps_scalar(t)));
      }
      begin = segment_end;
    }
  };
  if (p.eps != nullptr) {
    parallel_for_aligned(total, [&](int64_t begin, int64_t end) {
      write_z(begin, end, [&](int64_t t) { return load_acc(p.eps + t); },
              [&](int64_t t) { return static_cast<acc>(p.eps[t]); });
    });
    return;
  }
  const int64_t tiles = (total + kNoiseTile - 1) / kNoiseTile;
  at::parallel_for(0, tiles, std::max<int64_t>(1, kNoiseGrainElements / kNoiseTile), [&](int64_t tile_begin,
                                                                                  int64_t tile_end) {
    alignas(64) acc eps[kNoiseTile];
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t first = tile * kNoiseTile;
      const int64_t count = std::min(kNoiseTile, total - first);
      draw_normals(p.philox.seed, p.philox.offset, first, count, eps);
      write_z(first, first + count, [&](int64_t t) { return Vec<acc>::loadu(eps + (t - first)); },
              [&](int64_t t) { return eps[t - first]; });
    }
  });
}

template <typename scalar_t>
void reparameterize_backward(const ReparameterizeBackwardParams<scalar_t>& p) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t width = Vec<acc>::size();
  parallel_for_aligned(p.numel, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + width <= end; i += width) {
      const Vec<acc> mu = load_acc(p.mu + i);
      Vec<acc> grad_logvar(acc(0));
      for (int64_t s = 0; s < p.num_samples; ++s) {
        const int64_t t = s * p.numel + i;
        grad_logvar += reparameterize_grad_logvar(load_acc(p.grad_z + t), load_acc(p.z + t), mu);
      }
      store_acc(p.grad_logvar + i, grad_logvar);
    }
    for (; i < end; ++i) {
      const acc mu = static_cast<acc>(p.mu[i]);
      acc grad_logvar = 0;
      for (int64_t s = 0; s < p.num_samples; ++s) {
        const int64_t t = s * p.numel + i;
        grad_logvar += reparameterize_grad_logvar(static_cast<acc>(p.grad_z[t]), static_cast<acc>(p.z[t]), mu);
      }
      p.grad_logvar[i] = static_cast<scalar_t>(grad_logvar);
    }
  });
}

}  // namespace cpu
}  // namespace vaefast
