"""Benchmark cases for vaefast.reparameterize_kl, the fused VAE head: (z, batch-mean KL) from mu and logvar.

Providers: "vaefast" (the fused op), "separate" (vaefast.reparameterize then vaefast.gaussian_kl: what a model
runs without the head), "eager" (the reference composition with torch.randn_like noise: what a user writes)
and "compile" (torch.compile of eager, added by run.py).

Bytes per float32 element with one sample (the [B] KL is under 0.1% of the traffic and not counted):
  forward:  fused: read mu, logvar; write z                                     -> 3 * 4 = 12 bytes
            separate: reparameterize's 12, then gaussian_kl reads mu and logvar again (8)    -> 20 bytes
  backward: fused: read grad_z, z, mu, logvar; write grad_mu, grad_logvar       -> 6 * 4 = 24 bytes
            separate: reparameterize's 16 (grad_z, z, mu -> grad_logvar; grad_mu is grad_z itself),
            gaussian_kl's 16, and autograd's sums of the two grad_mu and the two grad_logvar (12 each)
                                                                                -> 56 bytes
The rows' GB/s count the fused op's bytes, the least any implementation must move. Expected gain of fused
over separate where memory decides (the large size, 16 MiB per tensor): up to 20/12 = 1.7x forward,
56/24 = 2.3x backward, 76/36 = 2.1x both. On a CPU the forward is bound by drawing the noise (Philox
rounds, log, sqrt and sincos per pair of elements), which fusion does not reduce, so its gain is smaller; at
training size ([256, 64], 64 KiB per tensor, all in cache) the saving is one op call, one parallel region
and one autograd node each way.
"""
import torch

import vaefast
from vaefast.ops import reference

from . import reparameterize
from .harness import FLOAT32_BYTES, Case, elementwise_bytes, elementwise_sizes

FORWARD_BYTES = 3 * FLOAT32_BYTES
BACKWARD_BYTES = 6 * FLOAT32_BYTES


def separate(mu, logvar):
    return vaefast.reparameterize(mu, logvar), vaefast.gaussian_kl(mu, logvar)


def eager(mu, logvar):
    return reparameterize.eager(mu, logvar), reference.gaussian_kl(mu, logvar)


def case(label, batch, features, large, device):
    mu = torch.randn(batch, features, device=device, requires_grad=True)
    logvar = (0.5 * torch.randn(batch, features, device=device)).requires_grad_()
    elements = batch * features
    return Case(
        name=f"reparameterize_kl {label}",
        op="reparameterize_kl",
        shape=f"[{batch}, {features}]",
        inputs={"mu": mu, "logvar": logvar},
        providers={"vaefast": vaefast.reparameterize_kl, "separate": separate, "eager": eager},
        grad_inputs=("mu", "logvar"),
        # z is a tensor (a fixed random gradient); the batch-mean KL a scalar (None: a gradient of one)
        upstream=(torch.randn(batch, features, device=device), None),
        bytes_moved=elementwise_bytes(FORWARD_BYTES, BACKWARD_BYTES, elements),
        large=large,
    )


def cases(device="cpu"):
    return [case(label, batch, features, large, device)
            for label, batch, features, large in elementwise_sizes(device, training_features=64)]
