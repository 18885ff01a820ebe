"""vaefast.gaussian_nll: the learned-gamma Gaussian NLL of Dai & Wipf's Two-Stage VAE, fused."""
import torch

from .. import _backend
from . import checks, reference

if _backend._C is not None:

    @torch.library.register_fake("vaefast::gaussian_nll")
    def _(x, x_hat, log_gamma, reduction="none"):
        return x.new_empty((x.shape[0],) if reduction == "none" else ())

    @torch.library.register_fake("vaefast::gaussian_nll_backward")
    def _(grad, x, x_hat, log_gamma):
        return (
            torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(log_gamma, memory_format=torch.contiguous_format),
        )

    # Autograd: csrc/ops/autograd.cpp (saves x, x_hat, log_gamma; d/dx = -d/dx_hat when x needs it).


def gaussian_nll(x, x_hat, log_gamma, *, reduction="mean"):
    """-log N(x | x_hat, gamma^2 I) per sample, with gamma = exp(log_gamma) the decoder's standard deviation.

    x, x_hat: [B, ...] (same shape). Per sample, summed over every dimension but the first:
    ``sum_i (x_i - x_hat_i)^2 / (2 gamma^2) + log_gamma + 0.5 log(2 pi)``.
    log_gamma: a Python number or a tensor that broadcasts to x by numpy's rules: 0-dim (the Two-Stage
    VAE's shared scalar), [B, 1, ...] (one per sample), [D] or [1, C, H, W] or [C, 1, 1] (per feature or
    pixel), or x's own shape (per element, a heteroscedastic decoder). A 1-D log_gamma is per feature even
    when its length is B. A number becomes a 0-dim tensor of x's device and dtype (no gradient); a tensor's
    gradient comes back in its own shape.
    reduction: "none" -> [B]; "sum" or "mean" over the batch -> 0-dim, taken inside the op (no extra autograd
    node; on the CPU a compensated double sum of the per-sample values: their exact sum to a double ulp).
    Gradients flow to x_hat, log_gamma and x. Forward reads x and x_hat once; backward reads them again
    and writes grad_x_hat, reducing grad_log_gamma on the way.
    """
    checks.tensor(x, "x")
    checks.tensor(x_hat, "x_hat")
    log_gamma = checks.log_gamma_value(log_gamma, x)
    checks.reduction(reduction)
    checks.same_device({"x": x, "x_hat": x_hat, "log_gamma": log_gamma})
    checks.min_rank(x, "x", 1, "[B, ...]")
    checks.same_shape(x_hat, "x_hat", x, "x")
    checks.log_gamma_shape(log_gamma, x)
    x, x_hat, log_gamma = checks.promote(x, x_hat, log_gamma)
    if _backend.compiled("gaussian_nll", x.device):
        return torch.ops.vaefast.gaussian_nll(x, x_hat, log_gamma, reduction)
    return reference.gaussian_nll(x, x_hat, log_gamma, reduction=reduction)
