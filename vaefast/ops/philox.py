"""Philox4x32-10 and Box-Muller in plain PyTorch integer ops: the reference for the in-kernel generator.

It follows the layout documented in csrc/common/philox.h (element i of a flat output uses block i // 4,
lane i % 4; counter = (lo(block), hi(block), lo(offset), hi(offset)); key = (lo(seed), hi(seed))), so the
pure-PyTorch path draws exactly the numbers the kernels draw, up to the rounding of log/sqrt/sin/cos.
The arithmetic is on int64 tensors holding 32-bit values: a 32x32-bit product wraps in int64 but keeps
its low 64 bits, which is all mulhilo needs.
"""
import math

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10


def philox4x32_10(counter, key):
    """counter: int64 [..., 4] of 32-bit words; key: two ints or int64 tensors. Returns int64 [..., 4]."""
    c0, c1, c2, c3 = counter.unbind(-1)
    k0 = key[0] & MASK32
    k1 = key[1] & MASK32
    for _ in range(PHILOX_ROUNDS):
        product0 = c0 * PHILOX_M0
        product1 = c2 * PHILOX_M1
        hi0, lo0 = (product0 >> 32) & MASK32, product0 & MASK32
        hi1, lo1 = (product1 >> 32) & MASK32, product1 & MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return torch.stack((c0, c1, c2, c3), dim=-1)


def normal(numel, seed, offset, dtype=torch.float32, device="cpu"):
    """numel standard normals of vaefast's stream (seed, offset); computed in float64 for float64 output and
    in float32 otherwise, as the kernels do. seed and offset: ints or 0-dim int64 tensors (63-bit)."""
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    blocks = (numel + 3) // 4
    block = torch.arange(blocks, dtype=torch.int64, device=device)
    offset = torch.as_tensor(offset, dtype=torch.int64, device=device)
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device)
    counter = torch.stack(
        (
            block & MASK32,
            (block >> 32) & MASK32,
            (offset & MASK32).expand(blocks),
            ((offset >> 32) & MASK32).expand(blocks),
        ),
        dim=-1,
    )
    bits = philox4x32_10(counter, (seed, seed >> 32))  # [blocks, 4]
    uniform = (bits.to(compute_dtype) + 1) * 2.0**-32  # (0, 1]
    radius = torch.sqrt(-2 * torch.log(uniform[:, 0::2]))  # [blocks, 2]
    theta = (2 * math.pi) * uniform[:, 1::2]
    pairs = torch.stack((radius * torch.cos(theta), radius * torch.sin(theta)), dim=-1)  # [blocks, 2, 2]
    return pairs.reshape(-1)[:numel].to(dtype)


def draw_seed(generator=None, device="cpu"):
    """The seed one op call takes from a torch generator: a 63-bit integer drawn with torch.randint, so that
    torch.manual_seed and get/set_rng_state govern it. Returns a 0-dim int64 tensor on the generator's
    device. The compiled CPU kernels draw it with the same call, hence the same numbers on both paths."""
    if generator is not None:
        device = generator.device
    return torch.randint(0, 2**63 - 1, (), generator=generator, dtype=torch.int64, device=device)
