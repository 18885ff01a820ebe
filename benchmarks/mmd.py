"""Benchmark cases for vaefast.mmd: the unbiased squared MMD with WAE-MMD's 7-scale IMQ kernel.

The eager reference materialises every [n, n], [m, m] and [n, m] kernel matrix (several per scale, and
autograd keeps them for the backward); the fused op never does, so besides time the peak extra memory of
each provider is measured.

Peers (benchmarks/peers.py): "pythae" (WAE_MMD.loss_function, an [n, n, d] tensor per scale) and "keops"
(pykeops LazyTensor reductions; on CUDA its GPU backend, where pykeops found CUDA), each when its package
imports; pythae, and eager at the CUDA-only n = 65536, are skipped where their memory would exceed
MEMORY_LIMIT_BYTES, with the bytes they would need in the notes.

Sizes: training n = m = 256 and large n = m = 2048 on every device; on CUDA also the CUDA issue's
n = m = 4096 and n = m = 65536.

Nominal FLOPs, the same count for every provider (cdist's matmul trick does other arithmetic, but the
figure is work done per second, not a tally of instructions). The fused kernel evaluates each unordered pair
once: n(n-1)/2 + m(m-1)/2 + n*m pairs forward. Per pair, with d dimensions and S scales:
  forward:  squared distance 3d (sub, mul, add per dimension) + kernel 3S (add C_s, divide, accumulate)
  backward: only pairs that involve x (y, the prior sample, needs no gradient): n(n-1)/2 + n*m pairs, each
            3d (recompute the distance) + 4S (dk/dr = -C_s / (C_s + r)^2: add, square, divide, accumulate)
            + 3d (scale the difference, add it to grad x_i, subtract it from grad x_j or drop it for y_j)
  forward+backward: the sum of the two.
"""
import torch

import vaefast
from vaefast.ops import reference

from . import peers
from .harness import Case

SCALES = reference.DEFAULT_SCALES  # s in {0.1, ..., 10}, C_s = s * 2 * d * bandwidth^2


def eager(x, y):
    return reference.mmd(x, y, kernel="imq", scales=SCALES, bandwidth=1.0, unbiased=True)


def fused(x, y):
    return vaefast.mmd(x, y, kernel="imq", scales=SCALES, bandwidth=1.0, unbiased=True)


MEMORY_LIMIT_BYTES = 4 * 2**30  # a provider that would hold more than this is skipped (the CPU machine has 24 GB)


def eager_bytes(n, m):
    """Bytes the eager reference holds at its peak, forward+backward: about 7 float32 matrices of each of
    its three kernel sums' shapes ([n, n], [m, m], [n, m]), the 7 scales' terms autograd keeps (320 MiB
    measured at n = m = 2048 on CPU, cpu_ops.md, against 336 MiB by this count)."""
    return 7 * (n * n + m * m + n * m) * 4


def peer_providers(n, m, d, device):
    """{"pythae": fn, "keops": fn} for the peers that import, fit in memory at this size and run on the
    device, and the notes saying why any is missing."""
    providers, notes = {}, []
    if peers.PYTHAE_ERROR is not None:
        notes.append(f"pythae skipped: {peers.PYTHAE_ERROR}")
    elif peers.pythae_bytes(n, m, d) > MEMORY_LIMIT_BYTES:
        notes.append(f"pythae skipped: would need {peers.pythae_bytes(n, m, d) / 1e9:.1f} GB "
                     f"(S * (n^2 + nm) * d * 4 bytes of [n, n, d] differences kept for the backward)")
    else:
        providers["pythae"] = peers.pythae_mmd
    keops_error = peers.keops_error(device)
    if keops_error is not None:
        notes.append(f"keops skipped: {keops_error}")
    else:
        providers["keops"] = peers.keops_mmd
    return providers, notes


def nominal_flops(n, m, d, scales):
    forward_pairs = n * (n - 1) // 2 + m * (m - 1) // 2 + n * m
    backward_pairs = n * (n - 1) // 2 + n * m
    forward = forward_pairs * (3 * d + 3 * scales)
    backward = backward_pairs * (6 * d + 4 * scales)
    return {"forward": forward, "backward": backward, "forward+backward": forward + backward}


def case(label, n, m, d, large, device):
    providers, notes = {}, []
    if eager_bytes(n, m) > MEMORY_LIMIT_BYTES:
        notes.append(f"eager skipped: would need about {eager_bytes(n, m) / 1e9:.0f} GB (7 float32 [n, m]-sized "
                     "matrices per kernel sum kept for the backward); no x eager column for this case")
    else:
        providers["eager"] = eager
    # vaefast.mmd is being written on another branch; until it lands the eager and compile rows still run.
    if hasattr(vaefast, "mmd"):
        providers = {"vaefast": fused, **providers}
    else:
        notes.append("vaefast.mmd not available in this build: eager and compile only")
    peer_fns, peer_notes = peer_providers(n, m, d, device)
    providers.update(peer_fns)
    notes += peer_notes
    return Case(
        name=f"mmd imq {label}",
        op="mmd",
        shape=f"n = m = {n}, d = {d}, {len(SCALES)} scales" if n == m else f"n = {n}, m = {m}, d = {d}",
        inputs={"x": torch.randn(n, d, device=device, requires_grad=True),
                "y": torch.randn(m, d, device=device)},
        providers=providers,
        grad_inputs=("x",),
        flops=nominal_flops(n, m, d, len(SCALES)),
        measure_memory=True,
        large=large,
        notes=notes,
    )


def cases(device="cpu"):
    sizes = [("training", 256, False), ("large", 2048, True)]
    if torch.device(device).type == "cuda":  # the CUDA issue's sizes, forward+backward
        sizes += [("4096", 4096, True), ("65536", 65536, True)]
    return [case(label, n, n, 64, large, device) for label, n, large in sizes]
