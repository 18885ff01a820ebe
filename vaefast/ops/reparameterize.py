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

    def _save_z(ctx, inputs, output):
        # Only z and mu are kept: z - mu = std * eps carries everything the backward needs.
        ctx.save_for_backward(output, inputs[0])
        ctx.has_sample_dim = output.dim() == inputs[0].dim() + 1

    def _grads(ctx, grad):
        z, mu = ctx.saved_tensors[:2]
        grad_mu = grad.sum(0) if ctx.has_sample_dim else grad
        grad_logvar = torch.ops.vaefast.reparameterize_backward(grad, z, mu) if ctx.needs_input_grad[1] else None
        return grad_mu, grad_logvar

    def _backward_drawn(ctx, grad):
        return (*_grads(ctx, grad), None, None)

    def _backward_philox(ctx, grad):
        return (*_grads(ctx, grad), None, None, None)

    def _save_with_eps(ctx, inputs, output):
        mu, logvar, eps = inputs
        # logvar is kept only in the rare case that eps needs a gradient (d z / d eps = std).
        ctx.save_for_backward(output, mu, logvar if eps.requires_grad else None)
        ctx.has_sample_dim = output.dim() == mu.dim() + 1

    def _backward_with_eps(ctx, grad):
        logvar = ctx.saved_tensors[2]
        grad_eps = grad * torch.exp(0.5 * logvar) if ctx.needs_input_grad[2] else None
        return (*_grads(ctx, grad), grad_eps)

    torch.library.register_autograd("vaefast::reparameterize", _backward_drawn, setup_context=_save_z)
    torch.library.register_autograd("vaefast::reparameterize_philox", _backward_philox, setup_context=_save_z)
    torch.library.register_autograd("vaefast::reparameterize_with_eps", _backward_with_eps,
                                    setup_context=_save_with_eps)


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
