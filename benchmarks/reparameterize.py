"""Benchmark cases for vaefast.reparameterize: z = mu + exp(logvar / 2) * eps.

Bytes per float32 element (the least any implementation must move; the noise is drawn in registers by the
fused kernel, so eps's write and re-read in eager code count as overhead, not as work):
  forward:  read mu, logvar; write z                    -> 3 * 4 = 12 bytes
  backward: read grad_z, z, mu; write grad_logvar       -> 4 * 4 = 16 bytes (grad_mu is grad_z itself)
"""
import torch

import vaefast
from vaefast.ops import reference

from .harness import FLOAT32_BYTES, Case, elementwise_bytes, elementwise_sizes

FORWARD_BYTES = 3 * FLOAT32_BYTES
BACKWARD_BYTES = 4 * FLOAT32_BYTES


def eager(mu, logvar):
    """What a user writes: torch's own generator for eps, then the reference formula. (The reference's
    Philox path reproduces the kernel's stream bit for bit; it is a correctness twin, not a baseline.)"""
    return reference.reparameterize(mu, logvar, eps=torch.randn_like(mu))


def case(label, batch, features, large, device):
    mu = torch.randn(batch, features, device=device, requires_grad=True)
    logvar = (0.5 * torch.randn(batch, features, device=device)).requires_grad_()
    elements = batch * features
    return Case(
        name=f"reparameterize {label}",
        op="reparameterize",
        shape=f"[{batch}, {features}]",
        inputs={"mu": mu, "logvar": logvar},
        providers={"vaefast": vaefast.reparameterize, "eager": eager},
        grad_inputs=("mu", "logvar"),
        # z is a tensor: a fixed random gradient, not sum()'s ones
        upstream=torch.randn(batch, features, device=device),
        bytes_moved=elementwise_bytes(FORWARD_BYTES, BACKWARD_BYTES, elements),
        large=large,
    )


def cases(device="cpu"):
    return [case(label, batch, features, large, device)
            for label, batch, features, large in elementwise_sizes(device, training_features=64)]
