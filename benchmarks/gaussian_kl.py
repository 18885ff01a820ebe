"""Benchmark cases for vaefast.gaussian_kl: KL(N(mu, diag exp(logvar)) || N(0, I)), batch mean.

Bytes per float32 element (the [B] per-sample output, under 0.1% of the traffic, is not counted):
  forward:  read mu, logvar                             -> 2 * 4 = 8 bytes
  backward: read mu, logvar; write grad_mu, grad_logvar -> 4 * 4 = 16 bytes
"""
import torch

import vaefast
from vaefast.ops import reference

from .harness import FLOAT32_BYTES, Case, elementwise_bytes, elementwise_sizes

FORWARD_BYTES = 2 * FLOAT32_BYTES
BACKWARD_BYTES = 4 * FLOAT32_BYTES


def case(label, batch, features, large, device):
    mu = torch.randn(batch, features, device=device, requires_grad=True)
    logvar = (0.5 * torch.randn(batch, features, device=device)).requires_grad_()
    elements = batch * features
    return Case(
        name=f"gaussian_kl {label}",
        op="kl",
        shape=f"[{batch}, {features}]",
        inputs={"mu": mu, "logvar": logvar},
        providers={"vaefast": vaefast.gaussian_kl, "eager": reference.gaussian_kl},
        grad_inputs=("mu", "logvar"),
        bytes_moved=elementwise_bytes(FORWARD_BYTES, BACKWARD_BYTES, elements),
        large=large,
    )


def cases(device="cpu"):
    return [case(label, batch, features, large, device)
            for label, batch, features, large in elementwise_sizes(device, training_features=64)]
