"""vaefast.reparameterize_kl: the fused VAE head, z and the per-sample KL from one read of mu and logvar."""
import torch

from .. import _backend
from . import checks, reference

if _backend._C is not None:

    @torch.library.register_fake("vaefast::reparameterize_kl")
    def _(mu, logvar, num_samples=None, generator=None, reduction="none"):
        z_shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
        return mu.new_empty(z_shape), mu.new_empty((mu.shape[0],) if reduction == "none" else ())

    @torch.library.register_fake("vaefast::reparameterize_kl_backward")
    def _(grad_z, grad_kl, z, mu, logvar):
        return torch.empty_like(mu, memory_format=torch.contiguous_format), torch.empty_like(
            logvar, memory_format=torch.contiguous_format
        )

    # Autograd: csrc/ops/autograd.cpp (saves z, mu and logvar; an unused output's half of the backward is
    # skipped).


def reparameterize_kl(mu, logvar, *, num_samples=None, generator=None, reduction="mean"):
    """The VAE head ``(reparameterize(mu, logvar), gaussian_kl(mu, logvar))`` in one pass.

    mu, logvar: [B, ...] (same shape). Returns ``(z, kl)``:
    z: ``mu + exp(0.5 * logvar) * eps``, [B, ...] or [num_samples, B, ...], bit for bit what
    ``vaefast.reparameterize(mu, logvar, num_samples=num_samples, generator=generator)`` draws from the same
    generator state (one seed draw per call, the same in-kernel Philox stream);
    kl: ``0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)`` per sample, bit for bit
    ``vaefast.gaussian_kl(mu, logvar, reduction=reduction)``: [B] for "none", 0-dim for "sum" or "mean".
    Backward, in one pass: d/dmu = sum_s g_z + g_kl * mu, d/dlogvar = sum_s 0.5 * g_z * (z - mu)
    + g_kl * 0.5 * (exp(logvar) - 1). With only one of the outputs used, only its op's backward runs.
    Memory traffic per float32 element with one sample: 12 bytes forward and 24 backward, against 20 and 56
    for the two ops apart (their backwards and autograd's sums of their gradients).
    """
    checks.tensor(mu, "mu")
    checks.tensor(logvar, "logvar")
    checks.reduction(reduction)
    checks.same_device({"mu": mu, "logvar": logvar})
    checks.min_rank(mu, "mu", 1, "[B, ...]")
    checks.same_shape(logvar, "logvar", mu, "mu")
    if num_samples is not None:
        checks.positive_int(num_samples, "num_samples")
    checks.generator(generator, mu.device)
    mu, logvar = checks.promote(mu, logvar)
    if _backend.compiled("reparameterize_kl", mu.device):
        return torch.ops.vaefast.reparameterize_kl(mu, logvar, num_samples, generator, reduction)
    return reference.reparameterize_kl(mu, logvar, num_samples=num_samples, generator=generator, reduction=reduction)
