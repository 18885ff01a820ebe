// CPU kernels of vaefast::reparameterize_kl, the fused VAE head: z = mu + exp(logvar / 2) * eps and the
// per-sample KL(N(mu, diag exp(logvar)) || N(0, I)) from one read of mu and logvar, and both gradients in one
// pass. Bytes per float32 element with one sample: forward reads mu and logvar and writes z, 12 (the two ops
// read mu and logvar twice: 20); backward reads grad_z, z, mu and logvar and writes grad_mu and grad_logvar,
// 24 (the two ops' backwards, then autograd's sums of their gradients: 56).
//
// Bit for bit the two ops' results: the KL runs gaussian_kl_forward's reduction (the same items, chunk_sum
// and order), and every element of z comes from draw_normals' noise on the path reparameterize_forward
// takes for it (vectors, or libm in its scalar tails; see reparameterize_scalar_tails).
//
// On a CPU these kernels are bound by arithmetic (Philox, log, sqrt, sincos and exp for z, exp and a series
// for the KL), not bytes, so the forward saves nothing there: at [4096, 1024] it measures 10-20% slower
// than the two ops' forwards, on 1 thread as on 2 (cause not isolated: a variant computing z and then the
// KL in two passes over each cached chunk measured the same). The gain is the backward (one pass, no
// autograd sums) and one op call instead of two. The elements of a row's
// last partial vector (all of them when features < 8 floats or 4 doubles) each take a broadcast vector for
// z (Sleef works lane by lane, so the element keeps the vector path's bits): measured on one thread at
// 1.3-1.6x the two ops' forward time for 1-D mu and [4096, 4], about 1.1x for [512, 37]. One zero-padded
// vector per row tail was slower still (the scalar stores it is built from stall the vector loads).
#pragma once

#include <vector>

#include "../common/params.h"
#include "cpu_common.h"
#include "reparameterize_cpu.h"

namespace vaefast {
namespace cpu {

// The normals of one sample's flat elements, drawn a tile at a time as the fused loop walks forward through
// them. Box-Muller runs lane by lane, so a tile that starts at any Philox block gives each element the bits
// reparameterize_forward's tiles give it.
template <typename acc>
class NoiseStream {
 public:
  NoiseStream(const PhiloxState& philox, int64_t sample_end)
      : seed_(philox.seed), offset_(philox.offset), sample_end_(sample_end) {}

  // The normals of flat elements [t, t + count) of this sample; count <= kNoiseTile - 3.
  const acc* at(int64_t t, int64_t count) {
    if (t < first_ || t + count > first_ + drawn_) {
      first_ = t - t % 4;  // a tile starts on a Philox block
      drawn_ = std::min(kNoiseTile, sample_end_ - first_);
      draw_normals(seed_, offset_, first_, drawn_, tile_);
    }
    return tile_ + (t - first_);
  }

 private:
  uint64_t seed_;
  uint64_t offset_;
  int64_t sample_end_;  // no normals are drawn past the sample (the next one has its own stream)
  int64_t first_ = 0;
  int64_t drawn_ = 0;
  acc tile_[kNoiseTile];
};

template <typename acc>
acc first_lane(const Vec<acc>& v) {
  alignas(64) acc lanes[Vec<acc>::size()];
  v.store(lanes);
  return lanes[0];
}

// z for the `count` consecutive elements of sample 0 from flat index i, in every sample: count is the vector
// width, or 1 with the element in lane 0 of broadcast vectors (the vector path's bits for one element). The
// elements that reparameterize_forward computes in its scalar tails are then redone as it computes them.
template <int64_t count, typename scalar_t, typename acc>
void write_head_z(const ReparameterizeKlParams<scalar_t>& p, const std::vector<ScalarTails>& tails,
                  std::vector<NoiseStream<acc>>& noise, int64_t i, const Vec<acc>& mu, const Vec<acc>& logvar) {
  static_assert(count == Vec<acc>::size() || count == 1, "a whole vector or one element");
  const int64_t numel = p.batch * p.features;
  for (int64_t s = 0; s < p.num_samples; ++s) {
    const int64_t t = s * numel + i;
    const acc* eps = noise[s].at(t, count);
    if constexpr (count == 1) {
      p.z[t] = static_cast<scalar_t>(first_lane(reparameterize_value(mu, logvar, Vec<acc>(eps[0]))));
    } else {
      store_acc(p.z + t, reparameterize_value(mu, logvar, Vec<acc>::loadu(eps)));
    }
    for (int k = 0; k < 2; ++k) {
      const int64_t tail_end = std::min(t + count, tails[s].end[k]);
      for (int64_t u = std::max(t, tails[s].begin[k]); u < tail_end; ++u) {
        const int64_t e = u - s * numel;
        p.z[u] = static_cast<scalar_t>(reparameterize_value(static_cast<acc>(p.mu[e]),
                                                            static_cast<acc>(p.logvar[e]), eps[u - t]));
      }
    }
  }
}

template <typename scalar_t>
void reparameterize_kl_forward(const ReparameterizeKlParams<scalar_t>& p) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t width = Vec<acc>::size();
  const int64_t numel = p.batch * p.features;
  std::vector<ScalarTails> tails(p.num_samples);
  for (int64_t s = 0; s < p.num_samples; ++s) tails[s] = reparameterize_scalar_tails<acc>(numel, s);
  std::vector<acc> totals(p.batch);
  // A thread's items are consecutive (row, chunk) pieces of mu, so one noise stream per sample runs on
  // from one row into the next: [256, 64] rows draw whole 256-normal tiles, not a quarter of one per row.
  const auto make_chunk_sum = [&] {
    std::vector<NoiseStream<acc>> noise;
    noise.reserve(p.num_samples);
    for (int64_t s = 0; s < p.num_samples; ++s) noise.emplace_back(p.philox, (s + 1) * numel);
    return [&p, &tails, noise = std::move(noise)](int64_t row, int64_t begin, int64_t end) mutable {
      const int64_t base = row * p.features;
      const scalar_t* mu = p.mu + base;
      const scalar_t* logvar = p.logvar + base;
      // gaussian_kl_forward's terms, with z written from the values already loaded.
      return chunk_sum<acc>(
          begin, end,
          [&](int64_t j) {
            const Vec<acc> m = load_acc(mu + j);
            const Vec<acc> l = load_acc(logvar + j);
            write_head_z<width>(p, tails, noise, base + j, m, l);
            return gaussian_kl_term(m, l);
          },
          [&](int64_t j) {
            const acc m = static_cast<acc>(mu[j]);
            const acc l = static_cast<acc>(logvar[j]);
            write_head_z<1>(p, tails, noise, base + j, Vec<acc>(m), Vec<acc>(l));
            return gaussian_kl_term(m, l);
          });
    };
  };
  deterministic_row_sums_with_state<acc>(p.batch, p.features, make_chunk_sum, totals.data(), kNoiseGrainElements);
  for (int64_t b = 0; b < p.batch; ++b) p.per_sample[b] = static_cast<scalar_t>(totals[b]);
}

template <typename scalar_t>
void reparameterize_kl_backward(const ReparameterizeKlBackwardParams<scalar_t>& p) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t width = Vec<acc>::size();
  const int64_t numel = p.batch * p.features;
  parallel_row_segments(p.batch, p.features, [&](int64_t row, int64_t begin, int64_t end) {
    const int64_t base = row * p.features;
    const acc grad_kl = static_cast<acc>(p.grad_kl[row]);
    const Vec<acc> grad_kl_v(grad_kl);
    int64_t i = base + begin;
    for (; i + width <= base + end; i += width) {
      const Vec<acc> mu = load_acc(p.mu + i);
      Vec<acc> grad_mu = grad_kl_v * mu;
      Vec<acc> grad_logvar = grad_kl_v * gaussian_kl_grad_logvar(load_acc(p.logvar + i));
      for (int64_t s = 0; s < p.num_samples; ++s) {
        const int64_t t = s * numel + i;
        const Vec<acc> grad_z = load_acc(p.grad_z + t);
        grad_mu += grad_z;
        grad_logvar += reparameterize_grad_logvar(grad_z, load_acc(p.z + t), mu);
      }
      store_acc(p.grad_mu + i, grad_mu);
      store_acc(p.grad_logvar + i, grad_logvar);
    }
    for (; i < base + end; ++i) {
      const acc mu = static_cast<acc>(p.mu[i]);
      acc grad_mu = grad_kl * mu;
      acc grad_logvar = grad_kl * gaussian_kl_grad_logvar(static_cast<acc>(p.logvar[i]));
      for (int64_t s = 0; s < p.num_samples; ++s) {
        const int64_t t = s * numel + i;
        const acc grad_z = static_cast<acc>(p.grad_z[t]);
        grad_mu += grad_z;
        grad_logvar += reparameterize_grad_logvar(grad_z, static_cast<acc>(p.z[t]), mu);
      }
      p.grad_mu[i] = static_cast<scalar_t>(grad_mu);
      p.grad_logvar[i] = static_cast<scalar_t>(grad_logvar);
    }
  });
}

}  // namespace cpu
}  // namespace vaefast
