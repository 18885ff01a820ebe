"""Benchmark case for the whole VAE loss head at training size: reparameterize, a stand-in decoder, the KL
and the learned-gamma NLL, as one training step runs them. The decoder is a fixed function of z
(sigmoid(z @ W), W [64, 784]) that every provider shares, so the difference is the loss ops: "vaefast" with
the fused head (reparameterize_kl, as vaefast's models run it), "separate" with reparameterize and
gaussian_kl apart, "eager" with the reference. No byte or FLOP count: the matmul dominates neither, and the
point is the end-to-end time a user sees.
"""
import torch

import vaefast
from vaefast.ops import reference

from . import reparameterize
from .harness import Case

BATCH, LATENT, PIXELS = 256, 64, 784


def make_head(reparameterize_op, kl_op, nll_op):
    def loss_head(mu, logvar, x, log_gamma, weight):
        z = reparameterize_op(mu, logvar)  # [B, LATENT]
        x_hat = torch.sigmoid(z @ weight)  # [B, PIXELS]
        return kl_op(mu, logvar) + nll_op(x, x_hat, log_gamma)
    return loss_head


def make_fused_head(head_op, nll_op):
    def loss_head(mu, logvar, x, log_gamma, weight):
        z, kl = head_op(mu, logvar)  # [B, LATENT], batch-mean KL
        x_hat = torch.sigmoid(z @ weight)  # [B, PIXELS]
        return kl + nll_op(x, x_hat, log_gamma)
    return loss_head


def cases(device="cpu"):
    inputs = {
        "mu": torch.randn(BATCH, LATENT, device=device, requires_grad=True),
        "logvar": (0.5 * torch.randn(BATCH, LATENT, device=device)).requires_grad_(),
        "x": torch.rand(BATCH, PIXELS, device=device),
        "log_gamma": torch.zeros((), device=device, requires_grad=True),
        "weight": torch.randn(LATENT, PIXELS, device=device) / LATENT**0.5,
    }
    return [Case(
        name="loss head training",
        op="loss_head",
        shape=f"mu [{BATCH}, {LATENT}], x [{BATCH}, {PIXELS}], W [{LATENT}, {PIXELS}]",
        inputs=inputs,
        providers={
            "vaefast": make_fused_head(vaefast.reparameterize_kl, vaefast.gaussian_nll),
            "separate": make_head(vaefast.reparameterize, vaefast.gaussian_kl, vaefast.gaussian_nll),
            "eager": make_head(reparameterize.eager, reference.gaussian_kl, reference.gaussian_nll),
        },
        grad_inputs=("mu", "logvar", "log_gamma"),
    )]
