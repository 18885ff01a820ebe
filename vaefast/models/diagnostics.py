"""Diagnostics from Dai & Wipf's analysis: which latent dimensions are in use, how far the aggregate
latents are from N(0, I), and the decoder's gamma.

Superfluous latent dimensions are "switched off": their encoder variance sits near 1 (and mean near 0), while
useful ones have variance near 0. The MMD of the aggregate latents to N(0, I) measures the mismatch that
stage 2 is there to remove (the paper: MNIST 2.85 after stage 1 -> 0.43 after stage 2).

One MMD estimate on a few hundred codes cannot tell two such numbers apart (on the digits' 359 test codes
the two stages' estimates were within each other's noise), so latent_mmd_estimate averages the unbiased
estimate over disjoint blocks of the codes and reports its standard error, and prior_mmd_floor gives the
same estimator on two samples of the prior itself: what "no mismatch" measures at that size.
The singular values of the codes (singular_values) show the mismatch's shape: all near 1 for N(0, I),
a few large and many near 0 for codes on a low-dimensional manifold.
"""
import math
from typing import Optional

import torch
from torch import Tensor

import vaefast

from .cvae import ConditionalVAE
from .networks import evaluating
from .two_stage import TwoStageVAE
from .vae import VAE
from .wae import WAE

# Disjoint blocks the MMD estimate is averaged over: 10 gives a standard error from 9 degrees of freedom,
# and on the 10,000 MNIST test codes blocks of 1,000 (0.1 s each for d = 64 on one core).
MMD_BLOCKS = 10


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
def latent_mmd_estimate(z: Tensor, *, blocks: int = MMD_BLOCKS,
                        generator: Optional[torch.Generator] = None) -> tuple[float, float]:
    """(mean, standard error) of the squared MMD of codes z [n, d] to N(0, I): the unbiased IMQ estimate
    (latent_mmd) on `blocks` disjoint blocks of n // blocks rows in a random order, each against its own
    prior sample; the standard error is the blocks' standard deviation / sqrt(blocks). Each block is an
    unbiased estimate of the same MMD^2, so the mean is too, and it can be slightly negative."""
    size = z.shape[0] // blocks
    if blocks < 2 or size < 2:
        raise ValueError(f"latent_mmd_estimate needs blocks >= 2 of >= 2 rows; got blocks={blocks} for "
                         f"{z.shape[0]} codes")
    order = torch.randperm(z.shape[0], generator=generator, device=generator.device if generator else "cpu")
    values = torch.tensor([latent_mmd(z[order[i * size:(i + 1) * size].to(z.device)], generator=generator)
                           for i in range(blocks)], dtype=torch.float64)
    return float(values.mean()), float(values.std() / math.sqrt(blocks))


@torch.no_grad()
def prior_mmd_floor(num_codes: int, dim: int, *, blocks: int = MMD_BLOCKS,
                    generator: Optional[torch.Generator] = None, dtype=torch.float32,
                    device="cpu") -> tuple[float, float]:
    """latent_mmd_estimate of num_codes samples of N(0, I) in `dim` dimensions: what the estimator reads,
    mean and standard error, when there is no mismatch at all (its mean is 0; its spread is the noise)."""
    prior = torch.randn(num_codes, dim, generator=generator, dtype=dtype, device=device)
    return latent_mmd_estimate(prior, blocks=blocks, generator=generator)


def singular_values(z: Tensor) -> Tensor:
    """Singular values of codes z [n, d] / sqrt(n), descending, float64 [min(n, d)]: the square roots of the
    eigenvalues of the second moment z^T z / n, not centred (a shifted mean is a mismatch with N(0, I) too).
    N(0, I) gives values near 1 (spread about 1 +- sqrt(d / n) for finite n); codes on an r-dimensional
    manifold give r large values and the rest near 0."""
    z = z.detach().double()
    if not bool(torch.isfinite(z).all()):
        # A diverged model's codes: NaN values, as the other metrics report it (svdvals would raise instead).
        return torch.full((min(z.shape),), math.nan, dtype=torch.float64, device=z.device)
    return torch.linalg.svdvals(z / math.sqrt(z.shape[0]))


@torch.no_grad()
def latent_codes(model, x: Tensor, batch_size: int = 256, *, labels: Optional[Tensor] = None,
                 generator: Optional[torch.Generator] = None, with_stage2: bool = True) -> dict:
    """The codes the diagnostics look at, for data x [N, *data_shape] -> dict of [N, d] tensors:
    "mu" (encoder means; a WAE's deterministic codes), "z" (aggregate-posterior samples mu + sigma eps; the
    WAE's codes), and for a TwoStageVAE (unless with_stage2 is False) stage_two_codes' "u"; with the scalars
    "squared_error" (of the decoder mean at mu, summed) and "encoder_variance" ([d], mean over the data)."""
    if isinstance(model, WAE):
        latents, squared_error = [], x.new_zeros((), dtype=torch.float64)
        with evaluating(model):
            for batch in x.split(batch_size):
                latents.append(model.encode(batch))
                squared_error += (batch - model.decode(latents[-1])).double().pow(2).sum()
        z = torch.cat(latents)
        return {"mu": z, "z": z, "squared_error": squared_error}
    if (labels is not None) != isinstance(model, ConditionalVAE):
        raise ValueError("labels [N] are needed for a ConditionalVAE and only there")
    mu, logvar, squared_error = _encoder_statistics(_data_model(model), x, batch_size, labels)
    codes = {"mu": mu, "z": vaefast.reparameterize(mu, logvar, generator=generator),
             "squared_error": squared_error, "encoder_variance": logvar.exp().mean(dim=0)}
    if with_stage2 and isinstance(model, TwoStageVAE):
        codes.update(stage_two_codes(model, codes["z"], batch_size, generator=generator))
    return codes


@torch.no_grad()
def stage_two_codes(model: TwoStageVAE, z: Tensor, batch_size: int = 256, *,
                    generator: Optional[torch.Generator] = None) -> dict:
    """Stage 2's codes for stage-1 codes z [N, kappa]: "u" = mu_u + sigma_u eps [N, dim u] and
    "encoder_variance_stage2" ([dim u], mean over the codes)."""
    mu_u, logvar_u, _ = _encoder_statistics(model.stage2, z, batch_size, None)
    return {"u": vaefast.reparameterize(mu_u, logvar_u, generator=generator),
            "encoder_variance_stage2": logvar_u.exp().mean(dim=0)}


@torch.no_grad()
def code_spectra(model, x: Tensor, batch_size: int = 256, *, labels: Optional[Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> dict:
    """singular_values of the codes of data x [N, *data_shape] -> {label: [d] float64}: "stage 1: mu",
    "stage 1: z", "stage 2: u" for a TwoStageVAE (a WAE has only "stage 1: z"), and "prior sample" (as
    many N(0, I) draws as codes: the reference a matching code set would follow)."""
    codes = latent_codes(model, x, batch_size, labels=labels, generator=generator)
    spectra = {} if isinstance(model, WAE) else {"stage 1: mu": singular_values(codes["mu"])}
    spectra["stage 1: z"] = singular_values(codes["z"])
    if "u" in codes:
        spectra["stage 2: u"] = singular_values(codes["u"])
    prior = torch.randn(codes["z"].shape, generator=generator, dtype=codes["z"].dtype, device=codes["z"].device)
    spectra["prior sample"] = singular_values(prior)
    return spectra


@torch.no_grad()
def _optimal_gamma(vae: VAE, x: Tensor, z: Tensor, batch_size: int) -> float:
    """The gamma an "optimal"-gamma decoder uses: sqrt of the MSE over pixels of x [N, ...] against the
    decoder mean at the sampled codes z [N, d], as in training (there per batch, here over all of x),
    floored at gamma_min."""
    squared_error = 0.0
    with evaluating(vae):
        for start in range(0, x.shape[0], batch_size):
            squared_error += float((x[start:start + batch_size] - vae.decode(z[start:start + batch_size]))
                                   .double().pow(2).sum())
    gamma = math.sqrt(squared_error / x.numel())
    return gamma if vae.config.gamma_min is None else max(gamma, vae.config.gamma_min)


@torch.no_grad()
def diagnostics(model, x: Tensor, batch_size: int = 256, *, labels: Optional[Tensor] = None,
                mmd_blocks: int = MMD_BLOCKS, generator: Optional[torch.Generator] = None) -> dict:
    """A VAE, ConditionalVAE (labels [N]), TwoStageVAE or WAE on data x [N, *data_shape] -> dict of
    gamma (the decoder std in effect: learned, fixed, or for "optimal" sqrt of the MSE at sampled codes;
    None for bernoulli and the WAE), active_dimensions (None for the WAE), latent_mmd_stage1 and its
    standard error latent_mmd_stage1_se (latent_mmd_estimate over mmd_blocks blocks of the N aggregate
    latents z = mu + sigma eps, the WAE's deterministic z), latent_mmd_prior and latent_mmd_prior_se (the
    same estimator on as many prior samples: the noise floor), reconstruction_mse (decoder mean at z = mu,
    mean over pixels and samples); a TwoStageVAE adds gamma_z, active_dimensions_stage2 and
    latent_mmd_stage2 (with _se; on u = mu_u + sigma_u eps given those z).
    """
    # Stage 2's codes are drawn after stage 1's numbers, so that a TwoStageVAE reports for its stage 1
    # exactly what the same VAE alone reports under the same generator.
    codes = latent_codes(model, x, batch_size, labels=labels, generator=generator, with_stage2=False)
    z = codes["z"]
    mmd1, mmd1_se = latent_mmd_estimate(z, blocks=mmd_blocks, generator=generator)
    floor, floor_se = prior_mmd_floor(z.shape[0], z.shape[1], blocks=mmd_blocks, generator=generator,
                                      dtype=z.dtype, device=z.device)
    result = {"gamma": None, "active_dimensions": None}
    if not isinstance(model, WAE):
        vae = _data_model(model)
        gamma = vae.gamma
        if vae.config.likelihood == "gaussian" and vae.config.gamma == "optimal":
            gamma = _optimal_gamma(vae, x, z, batch_size)
        result = {"gamma": None if gamma is None else float(gamma),
                  "active_dimensions": active_dimensions(codes["encoder_variance"])}
    result.update(latent_mmd_stage1=mmd1, latent_mmd_stage1_se=mmd1_se, latent_mmd_prior=floor,
                  latent_mmd_prior_se=floor_se, reconstruction_mse=float(codes["squared_error"]) / x.numel())
    if isinstance(model, TwoStageVAE):
        codes.update(stage_two_codes(model, z, batch_size, generator=generator))
        mmd2, mmd2_se = latent_mmd_estimate(codes["u"], blocks=mmd_blocks, generator=generator)
        result.update(gamma_z=float(model.stage2.gamma),
                      active_dimensions_stage2=active_dimensions(codes["encoder_variance_stage2"]),
                      latent_mmd_stage2=mmd2, latent_mmd_stage2_se=mmd2_se)
    return result
