"""Diagnostics from Dai & Wipf's analysis: which latent dimensions are in use, how far the aggregate
latents are from N(0, I), and the decoder's gamma.

Superfluous latent dimensions are "switched off": their encoder variance sits near 1 (and mean near 0), while
useful ones have variance near 0. The MMD of the aggregate latents to N(0, I) measures the mismatch that
stage 2 is there to remove (the paper: MNIST 2.85 after stage 1 -> 0.43 after stage 2).
"""
from typing import Optional

import torch
from torch import Tensor

import vaefast

from .cvae import ConditionalVAE
from .networks import evaluating
from .two_stage import TwoStageVAE
from .vae import VAE
from .wae import WAE


def _data_model(model) -> VAE:
    """The VAE that sees the data: stage 1 of a TwoStageVAE, the model itself otherwise."""
    return model.stage1 if isinstance(model, TwoStageVAE) else model


@torch.no_grad()
def _encoder_statistics(vae: VAE, x: Tensor, batch_size: int,
                        labels: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Eval-mode pass over x [N, ...] -> (mu [N, d], logvar [N, d], squared error of decode(mu) summed [])."""
    means, logvars, squared_error = [], [], x.new_zeros((), dtype=torch.float64)
    with evaluating(vae):
        for start in range(0, x.shape[0], batch_size):
            batch = x[start:start + batch_size]
            condition = None if labels is None else vae.one_hot(labels[start:start + batch_size])
            mu, logvar = vae.posterior(batch, condition)
            x_hat = vae.mean(vae.decoder_output(mu, condition))
            squared_error += (batch - x_hat).double().pow(2).sum()
            means.append(mu)
            logvars.append(logvar)
    return torch.cat(means), torch.cat(logvars), squared_error


def latent_variances(model, x: Tensor, batch_size: int = 256, labels: Optional[Tensor] = None) -> Tensor:
    """Mean encoder variance per latent dimension over the data x [N, *data_shape] -> [latent_dim].

    model: a VAE, ConditionalVAE (with labels [N]) or TwoStageVAE (its stage 1). Eval mode, no grad.
    """
    _, logvar, _ = _encoder_statistics(_data_model(model), x, batch_size, labels)
    return logvar.exp().mean(dim=0)


def active_dimensions(variances: Tensor, threshold: float = 0.5) -> int:
    """Latent dimensions in use: those whose mean encoder variance ([latent_dim]) is below threshold."""
    return int((variances < threshold).sum())


def latent_mmd(z: Tensor, *, generator: Optional[torch.Generator] = None) -> float:
    """Squared MMD (IMQ, 7 scales, unbiased) of aggregate latents z [n, d] to N(0, I); O(n^2) pairs."""
    return float(vaefast.mmd_prior(z, kernel="imq", generator=generator))


@torch.no_grad()
def diagnostics(model, x: Tensor, batch_size: int = 256, *, labels: Optional[Tensor] = None,
                max_mmd_points: int = 2000, generator: Optional[torch.Generator] = None) -> dict:
    """A VAE, ConditionalVAE (labels [N]), TwoStageVAE or WAE on data x [N, *data_shape] -> dict of
    gamma (decoder std; None where there is no single learned or fixed one), active_dimensions (None for
    the WAE), latent_mmd_stage1 (on aggregate latents z = mu + sigma eps, the WAE's deterministic z),
    reconstruction_mse (decoder mean at z = mu, mean over pixels and samples); a TwoStageVAE adds gamma_z,
    active_dimensions_stage2 and latent_mmd_stage2 (on u = mu_u + sigma_u eps given those z).
    The MMD uses the first max_mmd_points rows: its cost grows as n^2.
    """
    if isinstance(model, WAE):
        latents, squared_error = [], x.new_zeros((), dtype=torch.float64)
        with evaluating(model):
            for batch in x.split(batch_size):
                latents.append(model.encode(batch))
                squared_error += (batch - model.decode(latents[-1])).double().pow(2).sum()
        return {"gamma": None, "active_dimensions": None,
                "latent_mmd_stage1": latent_mmd(torch.cat(latents)[:max_mmd_points], generator=generator),
                "reconstruction_mse": float(squared_error) / x.numel()}
    if (labels is not None) != isinstance(model, ConditionalVAE):
        raise ValueError("labels [N] are needed for a ConditionalVAE and only there")
    vae = _data_model(model)
    mu, logvar, squared_error = _encoder_statistics(vae, x, batch_size, labels)
    z = vaefast.reparameterize(mu[:max_mmd_points], logvar[:max_mmd_points], generator=generator)
    result = {
        "gamma": None if vae.gamma is None else float(vae.gamma),
        "active_dimensions": active_dimensions(logvar.exp().mean(dim=0)),
        "latent_mmd_stage1": latent_mmd(z, generator=generator),
        "reconstruction_mse": float(squared_error) / x.numel(),
    }
    if isinstance(model, TwoStageVAE):
        mu_u, logvar_u, _ = _encoder_statistics(model.stage2, z, batch_size, None)
        u = vaefast.reparameterize(mu_u, logvar_u, generator=generator)
        result.update({
            "gamma_z": float(model.stage2.gamma),
            "active_dimensions_stage2": active_dimensions(logvar_u.exp().mean(dim=0)),
            "latent_mmd_stage2": latent_mmd(u, generator=generator),
        })
    return result
