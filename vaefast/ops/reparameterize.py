"""vaefast.reparameterize: z = mu + exp(logvar / 2) * eps with the noise drawn inside the kernel."""
import torch

from .. import _backend
from . import checks, philox, reference

if _backend._C is not None:

    def _sample_shape(mu, num_samples):
        return mu.shape if num_samples is None else (num_samples, *mu.shape)

    @torch.library.register_fake("vaefast::reparameterize")
    def _(mu, logvar, num_samples=None, generator=None):
        return mu.new_empty(_sample_shape(mu, num_samples))

    @torch.library.register_fake("vaefast::reparameterize_philox")
    def _(mu, logvar, num_samples, seed, offset):
        return mu.new_empty(_sample_shape(mu, num_samples))

    @torch.library.register_fake("vaefast::reparameterize_with_eps")
    def _(mu, logvar, eps):
        return torch.empty_like(eps, memory_format=torch.contiguous_format)

    @torch.library.register_fake("vaefast::reparameterize_backward")
    def _(grad_z, z, mu):
        return torch.empty_like(mu, memory_format=torch.contiguous_format)

    # Autograd: csrc/ops/autograd.cpp (saves z and mu; d/dlogvar = 0.5 * g * (z - mu)).


def reparameterize(mu, logvar, *, num_samples=None, generator=None, eps=None):
    """z = mu + exp(0.5 * logvar) * eps, the reparameterisation of N(mu, diag exp(logvar)).

    mu, logvar: same shape [*S] (any rank >= 1). Returns z [*S], or [num_samples, *S] for num_samples=k
    independent draws (importance-weighted bounds).
    Without eps the noise is drawn inside the kernel by counter-based Philox4x32-10 from a stream that
    `generator` (or the default generator of mu's device) hands out: torch.manual_seed makes it
    reproducible, every call draws fresh noise. With eps ([*S] or [num_samples, *S]) that noise is used
    and no generator is touched.
    Backward: d/dmu = g (summed over samples), d/dlogvar = 0.5 * g * (z - mu); z is saved, not eps.
    """
    checks.tensor(mu, "mu")
    checks.tensor(logvar, "logvar")
    tensors = {"mu": mu, "logvar": logvar}
    if eps is not None:
        checks.tensor(eps, "eps")
        tensors["eps"] = eps
    checks.same_device(tensors)
    checks.min_rank(mu, "mu", 1, "[B, ...]")
    checks.same_shape(logvar, "logvar", mu, "mu")
    if num_samples is not None:
        checks.positive_int(num_samples, "num_samples")
    checks.generator(generator, mu.device)
    if eps is not None:
        if generator is not None:
            raise ValueError("pass either eps or generator, not both: with eps no noise is drawn")
        expected = mu.shape if num_samples is None else (num_samples, *mu.shape)
        if eps.shape != expected:
            raise ValueError(f"eps must have shape {list(expected)} (mu's shape"
                             f"{', with num_samples first' if num_samples is not None else ''}); got {list(eps.shape)}")
        mu, logvar, eps = checks.promote(mu, logvar, eps)
        if _backend.compiled("reparameterize_with_eps", mu.device):
            return torch.ops.vaefast.reparameterize_with_eps(mu, logvar, eps)
        return reference.reparameterize(mu, logvar, eps=eps)
    mu, logvar = checks.promote(mu, logvar)
    if _backend.compiled("reparameterize", mu.device):
        return torch.ops.vaefast.reparameterize(mu, logvar, num_samples, generator)
    return reference.reparameterize(mu, logvar, num_samples=num_samples, generator=generator)


def reparameterize_philox(mu, logvar, seed, offset=0, *, num_samples=None):
    """reparameterize with an explicit Philox stream (seed, offset): the same numbers on every device and
    on the reference path. For reproducing a draw exactly, and for tests."""
    checks.tensor(mu, "mu")
    checks.tensor(logvar, "logvar")
    checks.same_device({"mu": mu, "logvar": logvar})
    checks.min_rank(mu, "mu", 1, "[B, ...]")
    checks.same_shape(logvar, "logvar", mu, "mu")
    if num_samples is not None:
        checks.positive_int(num_samples, "num_samples")
    checks.positive_int(seed, "seed", minimum=0)
    checks.positive_int(offset, "offset", minimum=0)
    if seed >= 2**63 or offset >= 2**63:
        raise ValueError(f"seed and offset must be below 2**63; got seed={seed}, offset={offset}")
    mu, logvar = checks.promote(mu, logvar)
    if _backend.compiled("reparameterize_philox", mu.device):
        return torch.ops.vaefast.reparameterize_philox(mu, logvar, num_samples, seed, offset)
    shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
    eps = philox.normal(mu.new_empty(shape).numel(), seed, offset, mu.dtype, mu.device).reshape(shape)
    return reference.reparameterize(mu, logvar, eps=eps)
