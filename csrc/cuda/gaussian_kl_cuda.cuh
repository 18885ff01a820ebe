// The per-sample KL sum of the CUDA kernels, shared by vaefast::gaussian_kl and the fused head
// vaefast::reparameterize_kl so that their per-sample KL agree bit for bit: one lane's share of a (row,
// chunk) item of run_row_sums (cuda_common.cuh), with a hook that sees the values the lane loads, and the
// store of each row's total.
#pragma once

#include "cuda_common.cuh"

namespace vaefast {
namespace cuda {

// One lane's in-order sum of KL terms over its columns of [begin, end) in `row` of mu and logvar [rows,
// features]: packs of N = kVecWidth when `vectorised` (features % N == 0 and mu and logvar N-aligned), else
// element by element. visit(i, mu_pack, logvar_pack) is called on every Pack<scalar_t, N> (or, on the
// scalar path, Pack<scalar_t, 1>) the lane loads, i its flat index in mu; it may write outputs (the fused
// head writes z) and does not change the sum.
template <typename scalar_t, typename Visit>
__device__ __forceinline__ acc_t<scalar_t> kl_lane_sum(const scalar_t* mu, const scalar_t* logvar, int64_t features,
                                                       bool vectorised, int64_t row, int64_t begin, int64_t end,
                                                       int lane, const Visit& visit) {
  using acc = acc_t<scalar_t>;
  constexpr int N = kVecWidth<scalar_t>;
  const int64_t base = row * features;
  return lane_sum<acc, N>(
      begin, end, lane, vectorised,
      [&](int64_t j) {
        const Pack<scalar_t, N> m = *reinterpret_cast<const Pack<scalar_t, N>*>(mu + base + j);
        const Pack<scalar_t, N> l = *reinterpret_cast<const Pack<scalar_t, N>*>(logvar + base + j);
        visit(base + j, m, l);
        acc total = 0;
#pragma unroll
        for (int k = 0; k < N; ++k) total += gaussian_kl_term(to_acc<acc>(m.v[k]), to_acc<acc>(l.v[k]));
        return total;
      },
      [&](int64_t j) {
        const Pack<scalar_t, 1> m{{mu[base + j]}};
        const Pack<scalar_t, 1> l{{logvar[base + j]}};
        visit(base + j, m, l);
        return gaussian_kl_term(to_acc<acc>(m.v[0]), to_acc<acc>(l.v[0]));
      });
}

// run_row_sums' done: a row's total, rounded to the storage type, into per_sample[row].
template <typename scalar_t>
struct StoreRow {
  scalar_t* out;
  __device__ void operator()(int64_t row, acc_t<scalar_t> total) const { out[row] = from_acc<scalar_t>(total); }
};

}  // namespace cuda
}  // namespace vaefast
