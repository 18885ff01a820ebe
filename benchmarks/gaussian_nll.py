"""Benchmark cases for vaefast.gaussian_nll with the Two-Stage VAE's scalar log_gamma, batch mean.

Bytes per float32 element (the [B] output and the scalar log_gamma and its gradient are not counted):
  forward:  read x, x_hat                               -> 2 * 4 = 8 bytes
  backward: read x, x_hat; write grad_x_hat             -> 3 * 4 = 12 bytes (x needs no gradient)
"""
import torch

import vaefast
from vaefast.ops import reference

from .harness import FLOAT32_BYTES, Case, elementwise_bytes, elementwise_sizes

FORWARD_BYTES = 2 * FLOAT32_BYTES
BACKWARD_BYTES = 3 * FLOAT32_BYTES


def case(label, batch, features, large, device):
    x = torch.rand(batch, features, device=device)  # pixels in [0, 1]
    x_hat = torch.sigmoid(torch.randn(batch, features, device=device)).requires_grad_()
    log_gamma = torch.zeros((), device=device, requires_grad=True)  # the official code's initial value
    elements = batch * features
    return Case(
        name=f"gaussian_nll {label}",
        op="nll",
        shape=f"[{batch}, {features}], scalar log_gamma",
        inputs={"x": x, "x_hat": x_hat, "log_gamma": log_gamma},
        providers={"vaefast": vaefast.gaussian_nll, "eager": reference.gaussian_nll},
        grad_inputs=("x_hat", "log_gamma"),
        bytes_moved=elementwise_bytes(FORWARD_BYTES, BACKWARD_BYTES, elements),
        large=large,
    )


def cases(device="cpu"):
    return [case(label, batch, features, large, device)
            for label, batch, features, large in elementwise_sizes(device, training_features=784)]
