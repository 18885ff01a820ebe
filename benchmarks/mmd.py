"""Benchmark cases for vaefast.mmd: the unbiased squared MMD with WAE-MMD's 7-scale IMQ kernel.

The eager reference materialises every [n, n], [m, m] and [n, m] kernel matrix (several per scale, and
autograd keeps them for the backward); the fused op never does, so besides time the peak extra memory of
each provider is measured.

Nominal FLOPs, the same count for every provider (cdist's matmul trick does other arithmetic, but the
figure is work done per second, not a tally of instructions). The fused kernel evaluates each unordered pair
once: n(n-1)/2 + m(m-1)/2 + n*m pairs forward. Per pair, with d dimensions and S scales:
  forward:  squared distance 3d (sub, mul, add per dimension) + kernel 3S (add C_s, divide, accumulate)
  backward: only pairs that involve x (y, the prior sample, needs no gradient): n(n-1)/2 + n*m pairs, each
            3d (recompute the distance) + 4S (dk/dr = -C_s / (C_s + r)^2: add, square, divide, accumulate)
            + 3d (scale the difference, add it to grad x_i, subtract it from grad x_j or drop it for y_j)
"""
import torch

import vaefast
from vaefast.ops import reference

from .harness import Case

SCALES = reference.DEFAULT_SCALES  # s in {0.1, ..., 10}, C_s = s * 2 * d * bandwidth^2


def eager(x, y):
    return reference.mmd(x, y, kernel="imq", scales=SCALES, bandwidth=1.0, unbiased=True)


def fused(x, y):
    return vaefast.mmd(x, y, kernel="imq", scales=SCALES, bandwidth=1.0, unbiased=True)


def nominal_flops(n, m, d, scales):
    forward_pairs = n * (n - 1) // 2 + m * (m - 1) // 2 + n * m
    backward_pairs = n * (n - 1) // 2 + n * m
    forward = forward_pairs * (3 * d + 3 * scales)
    return {"forward": forward, "forward+backward": forward + backward_pairs * (6 * d + 4 * scales)}


def case(label, n, m, d, large):
    providers = {"eager": eager}
    notes = []
    # vaefast.mmd is being written on another branch; until it lands the eager and compile rows still run.
    if hasattr(vaefast, "mmd"):
        providers = {"vaefast": fused, **providers}
    else:
        notes.append("vaefast.mmd not available in this build: eager and compile only")
    return Case(
        name=f"mmd imq {label}",
        op="mmd",
        shape=f"n = m = {n}, d = {d}, {len(SCALES)} scales" if n == m else f"n = {n}, m = {m}, d = {d}",
        inputs={"x": torch.randn(n, d, requires_grad=True), "y": torch.randn(m, d)},
        providers=providers,
        grad_inputs=("x",),
        flops=nominal_flops(n, m, d, len(SCALES)),
        measure_memory=True,
        large=large,
        notes=notes,
    )


def cases():
    return [case("training", 256, 256, 64, large=False), case("large", 2048, 2048, 64, large=True)]
