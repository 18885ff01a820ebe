"""vaefast.gaussian_kl: the Gaussian KL to N(0, I), fused into one pass over mu and logvar."""
import torch

from .. import _backend
from . import checks, reference

if _backend._C is not None:

    @torch.library.register_fake("vaefast::gaussian_kl")
    def _(mu, logvar, reduction="none"):
        return mu.new_empty((mu.shape[0],) if reduction == "none" else ())

    @torch.library.register_fake("vaefast::gaussian_kl_backward")
    def _(grad, mu, logvar):
        return torch.empty_like(mu, memory_format=torch.contiguous_format), torch.empty_like(
            logvar, memory_format=torch.contiguous_format
        )

    # Autograd: csrc/ops/autograd.cpp (saves mu and logvar, calls vaefast::gaussian_kl_backward).


def gaussian_kl(mu, logvar, *, reduction="mean"):
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per sample.

    mu, logvar: [B, ...] (same shape); the KL of a sample sums over every dimension but the first:
    ``0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)``.
    reduction: "none" -> [B]; "sum" or "mean" over the batch -> 0-dim, taken inside the op (no extra autograd
    node; on the CPU a compensated double sum of the per-sample values: their exact sum to a double ulp).
    Gradients flow to mu and logvar. One read of mu and logvar forward, one read and one write of each
    gradient backward (eager PyTorch makes about six passes each way). Accurate relative to each term at every
    logvar: exp(logvar) - 1 - logvar comes from its Taylor series where |logvar| < 1, so it does not cancel
    near 0 as exp(logvar) - 1 - logvar or expm1(logvar) - logvar do in floating point.
    """
    checks.tensor(mu, "mu")
    checks.tensor(logvar, "logvar")
    checks.reduction(reduction)
    checks.same_device({"mu": mu, "logvar": logvar})
    checks.min_rank(mu, "mu", 1, "[B, ...]")
    checks.same_shape(logvar, "logvar", mu, "mu")
    mu, logvar = checks.promote(mu, logvar)
    if _backend.compiled("gaussian_kl", mu.device):
        return torch.ops.vaefast.gaussian_kl(mu, logvar, reduction)
    return reference.gaussian_kl(mu, logvar, reduction=reduction)
