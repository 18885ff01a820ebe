"""Pure-PyTorch reference implementations of every vaefast op: the code a user would write in eager mode.

They are the baseline that the tests and the benchmarks import (so the two can never drift apart), and the
fallback path when the compiled extension is missing or VAEFAST_BACKEND=reference. They take the same
arguments as the public ops, after validation (vaefast.ops.checks), and use plain autograd.
"""
import math

import torch

from . import philox

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
DEFAULT_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def reduce_per_sample(per_sample, reduction):
    """[B] -> [B] ("none"), sum or mean over the batch."""
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.mean()


def sum_per_sample(values):
    """[B, ...] -> [B]: sum over every dimension but the first."""
    # math.prod, not -1: with B = 0 the -1 would be ambiguous (reshape refuses [0, -1]).
    return values.reshape(values.shape[0], math.prod(values.shape[1:])).sum(dim=1)


def reparameterize(mu, logvar, *, num_samples=None, generator=None, eps=None):
    """z = mu + exp(logvar / 2) * eps; eps from vaefast's Philox stream unless given."""
    shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
    if eps is None:
        seed = philox.draw_seed(generator, mu.device)
        eps = philox.normal(math.prod(shape), seed, 0, mu.dtype, mu.device).reshape(shape)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu, logvar, *, reduction="mean"):
    """Per-sample KL(N(mu, diag exp(logvar)) || N(0, I))."""
    per_sample = sum_per_sample(0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar))
    return reduce_per_sample(per_sample, reduction)


def reparameterize_kl(mu, logvar, *, num_samples=None, generator=None, reduction="mean"):
    """The fused VAE head as the two ops it fuses, on the same mu and logvar: (z, KL)."""
    return (
        reparameterize(mu, logvar, num_samples=num_samples, generator=generator),
        gaussian_kl(mu, logvar, reduction=reduction),
    )


def gaussian_nll(x, x_hat, log_gamma, *, reduction="mean"):
    """Per-sample -log N(x | x_hat, exp(log_gamma)^2 I); log_gamma broadcasts against x (numpy rules)."""
    terms = (x - x_hat).pow(2) / (2 * torch.exp(2 * log_gamma)) + log_gamma + HALF_LOG_2PI
    return reduce_per_sample(sum_per_sample(terms.expand(x.shape)), reduction)


def kernel_matrix(a, b, kernel="imq", scales=DEFAULT_SCALES, bandwidth=1.0):
    """[n, d], [m, d] -> [n, m] kernel values, materialised (what eager code does)."""
    dim = a.shape[1]
    if kernel == "poly":
        return (a @ b.T / dim + 1) ** 3
    if a.dtype in (torch.float16, torch.bfloat16):
        # CPU cdist has no half-precision kernel for small inputs (it raises below ~25 rows): distances in
        # float32, rounded back, which is what a user's code would have to do too.
        sq_dist = torch.cdist(a.float(), b.float()).pow(2).to(a.dtype)
    else:
        sq_dist = torch.cdist(a, b).pow(2)
    total = torch.zeros_like(sq_dist)
    for scale in scales:
        c = scale * 2 * dim * bandwidth**2
        total = total + (c / (c + sq_dist) if kernel == "imq" else torch.exp(-sq_dist / c))
    return total


def mean_kernel(a, b, kernel, scales, bandwidth, exclude_diagonal):
    """Mean of k(a_i, b_j) over all pairs, or over i != j when exclude_diagonal (a is b)."""
    k = kernel_matrix(a, b, kernel, scales, bandwidth)
    n = a.shape[0]
    if exclude_diagonal:
        return (k.sum() - k.diagonal().sum()) / (n * (n - 1))
    return k.sum() / (a.shape[0] * b.shape[0])


def mmd(x, y, *, kernel="imq", scales=DEFAULT_SCALES, bandwidth=1.0, unbiased=True):
    """Squared MMD between the rows of x [n, d] and y [m, d]."""
    return (
        mean_kernel(x, x, kernel, scales, bandwidth, unbiased)
        + mean_kernel(y, y, kernel, scales, bandwidth, unbiased)
        - 2 * mean_kernel(x, y, kernel, scales, bandwidth, False)
    )


def rbf_prior_terms(z, scales, bandwidth, prior_std=1.0):
    """Closed-form prior terms of the RBF MMD to N(0, prior_std^2 I): (mean_i E_y k(z_i, y), E_{y,y'} k(y, y')).

    With s^2 = C_s / 2 and p^2 = prior_std^2: y - z_i ~ N(-z_i, p^2 I) gives E_y k(z_i, y) =
    (s^2 / (s^2 + p^2))^(d/2) exp(-||z_i||^2 / (2 (s^2 + p^2))), and y - y' ~ N(0, 2 p^2 I) gives
    E k(y, y') = (s^2 / (s^2 + 2 p^2))^(d/2)."""
    dim = z.shape[1]
    sq_norm = z.pow(2).sum(dim=1)
    prior_variance = prior_std**2
    cross = torch.zeros((), dtype=z.dtype, device=z.device)
    prior = 0.0
    for scale in scales:
        variance = scale * dim * bandwidth**2  # s^2 = C_s / 2
        cross = cross + (variance / (variance + prior_variance)) ** (dim / 2) * torch.exp(
            -sq_norm / (2 * (variance + prior_variance))
        ).mean()
        prior += (variance / (variance + 2 * prior_variance)) ** (dim / 2)
    return cross, prior


def mmd_prior(z, *, kernel="imq", scales=DEFAULT_SCALES, bandwidth=1.0, unbiased=True, prior_std=1.0,
              num_prior_samples=None, generator=None):
    """Squared MMD between the rows of z [n, d] and N(0, prior_std^2 I)."""
    if kernel == "rbf":
        cross, prior = rbf_prior_terms(z, scales, bandwidth, prior_std)
        return mean_kernel(z, z, kernel, scales, bandwidth, unbiased) + prior - 2 * cross
    rows = z.shape[0] if num_prior_samples is None else num_prior_samples
    seed = philox.draw_seed(generator, z.device)
    prior_samples = philox.normal(rows * z.shape[1], seed, 0, z.dtype, z.device).reshape(rows, -1)
    if prior_std != 1.0:
        prior_samples = prior_samples * prior_std
    return mmd(z, prior_samples, kernel=kernel, scales=scales, bandwidth=bandwidth, unbiased=unbiased)
