"""The importance-weighted bound (Burda et al., 2016) for test-set log-likelihood estimates.

log p(x) >= log (1/k) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x); k = 1 is the ELBO in expectation and
the bound tightens as k grows.
"""
import math
from typing import Optional

import torch
from torch import Tensor
from torch.distributions import Normal

import vaefast

from .vae import VAE


def iwae_bound(model: VAE, x: Tensor, num_samples: int, labels: Optional[Tensor] = None) -> Tensor:
    """x [B, *data_shape] -> the bound per sample [B] (nats) with k = num_samples draws from q(z|x).

    model: a VAE or ConditionalVAE (labels [B] for the latter); for a TwoStageVAE pass its stage1. Put the
    model in eval mode for test-set estimates (BatchNorm would otherwise use the k * B batch's statistics)
    and wrap the call in torch.no_grad unless the bound is being trained on. A batch-wise "optimal" gamma
    is taken over all k * B reconstructions.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"iwae_bound needs a VAE or ConditionalVAE (a TwoStageVAE's stage1); got {type(model).__name__}")
    condition = None if labels is None else model.one_hot(labels)
    mu, logvar = model.posterior(x, condition)  # [B, d] each
    z = vaefast.reparameterize(mu, logvar, num_samples=num_samples)  # [k, B, d]
    batch = x.shape[0]
    x_repeated = x.expand(num_samples, *x.shape).reshape(num_samples * batch, *x.shape[1:])  # [k * B, ...]
    condition_repeated = None if condition is None else condition.repeat(num_samples, 1)  # [k * B, K]
    nll, _, _ = model.reconstruction(x_repeated, z.reshape(num_samples * batch, -1), condition_repeated)
    log_likelihood = -nll.reshape(num_samples, batch)  # [k, B]
    log_prior = Normal(0.0, 1.0).log_prob(z).sum(dim=-1)  # [k, B]
    log_posterior = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(dim=-1)  # [k, B]
    log_weights = log_likelihood + log_prior - log_posterior
    return torch.logsumexp(log_weights, dim=0) - math.log(num_samples)
