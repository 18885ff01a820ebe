"""RobustVAE: a VAE whose Gaussian decoder outputs a per-pixel log gamma beside the mean (heteroscedastic),
the robust, nonlinear PCA of Part III of Wipf's tutorial "Deep Generative Models for Signal Processing and
Beyond" (Dai, Wang, Aston, Hua & Wipf, "Hidden Talents of the Variational Autoencoder").

Data X = L + E: L near a low-dimensional subspace or manifold (inliers), E sparse with large entries
(outliers). The decoder's mean mu_x(z) models L; its standard deviation gamma(z), one per pixel, absorbs E:
minimising the NLL over gamma turns the data term into sum_ij log|e_ij|, a smooth stand-in for ||E||_0, so a
pixel the mean cannot explain costs a log, not a square. With an affine mean W z + b and dim z >= rank(L),
every global optimum recovers L; unneeded latent dimensions are switched off (encoder variance -> 1). In
practice (docs/results/robust_synthetic) the spare dimensions stay on and carry each sample's outlier pattern
to the gamma head, which is a finite network of z: dim z well above the rank is what made recovery work.

The NLL is vaefast.gaussian_nll with a log_gamma of x's full shape [B, *data_shape]: one fused forward and
backward, gradients to both decoder heads. Options: an affine decoder mean (the RPCA correspondence), a
floor on gamma, and the "induced autoencoder" (encoder variance fixed at 0: z = mu and no KL) that the
tutorial compares against. Networks are MLPs (any data shape, flattened).
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

import vaefast

from .networks import MLPDecoder, MLPEncoder, evaluating, split_gaussian
from .output import ModelOutput

DECODER_MEANS = ("mlp", "affine")
ENCODER_VARIANCES = ("learned", "zero")


@dataclass
class RobustVAEConfig:
    data_shape: tuple[int, ...]  # one sample's shape: (C, H, W) images or (D,) vectors
    latent_dim: int = 16  # dim z; >= the inlier dimension (rank of L), better well above it (module docstring)
    hidden_dims: tuple[int, ...] = (512, 256)  # encoder widths; the decoder mirrors them
    decoder_mean: str = "mlp"  # "mlp": mean and log gamma heads on one MLP body; "affine": mean W z + b
    output_activation: str = "sigmoid"  # the mlp mean: "sigmoid" (data in [0, 1]) or "linear"; affine: linear
    gamma_min: Optional[float] = 1e-3  # soft floor: log gamma = log gamma_min + softplus(raw - log gamma_min)
    gamma_init: Optional[float] = None  # every pixel's initial gamma; None: the head's default init (gamma ~ 1)
    encoder_variance: str = "learned"  # "learned" (the VAE) or "zero" (the induced autoencoder: z = mu, no KL)
    beta: float = 1.0  # weight of the KL term

    def __post_init__(self):
        # Lists come back from JSON checkpoints; the networks and equality checks want tuples.
        self.data_shape = tuple(int(n) for n in self.data_shape)
        self.hidden_dims = tuple(int(n) for n in self.hidden_dims)
        if not self.data_shape or min(self.data_shape) < 1:
            raise ValueError(f"data_shape must be a non-empty tuple of positive sizes; got {self.data_shape}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1; got {self.latent_dim}")
        if min(self.hidden_dims, default=1) < 1:
            raise ValueError(f"hidden_dims must be positive widths; got {self.hidden_dims}")
        if self.decoder_mean not in DECODER_MEANS:
            raise ValueError(f"decoder_mean must be one of {DECODER_MEANS}; got {self.decoder_mean!r}")
        if self.output_activation not in ("sigmoid", "linear"):
            raise ValueError(f"output_activation must be 'sigmoid' or 'linear'; got {self.output_activation!r}")
        if self.decoder_mean == "affine" and self.output_activation != "linear":
            raise ValueError("an affine decoder mean is W z + b: output_activation must be 'linear'")
        if self.gamma_min is not None and not self.gamma_min > 0:
            raise ValueError(f"gamma_min must be positive or None; got {self.gamma_min}")
        if self.gamma_init is not None and not self.gamma_init > (self.gamma_min or 0.0):
            raise ValueError(f"gamma_init must be above gamma_min ({self.gamma_min}); got {self.gamma_init}")
        if self.encoder_variance not in ENCODER_VARIANCES:
            raise ValueError(f"encoder_variance must be one of {ENCODER_VARIANCES}; got {self.encoder_variance!r}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0; got {self.beta}")


class RobustVAE(nn.Module):
    """x [B, *data_shape] -> q(z|x) = N(mu, diag exp(logvar)), z [B, latent_dim] -> p(x|z) =
    N(mu_x(z), diag gamma(z)^2), gamma per pixel.

    loss = NLL + beta * KL, batch means of per-sample sums (the induced autoencoder: the NLL at z = mu).
    """

    def __init__(self, config: RobustVAEConfig):
        super().__init__()
        self.config = config
        variational = config.encoder_variance == "learned"
        self.encoder = MLPEncoder(config.data_shape, (2 if variational else 1) * config.latent_dim,
                                  config.hidden_dims)
        decoder_dims = tuple(reversed(config.hidden_dims))
        if config.decoder_mean == "mlp":
            # One body, two heads: [B, 2, *data_shape] raw outputs, the mean's and log gamma's. The decoder is
            # then the size of a scalar-gamma VAE's plus one output layer.
            self.decoder = MLPDecoder(config.latent_dim, (2, *config.data_shape), decoder_dims)
            self.affine_mean = None
        else:
            # The RPCA correspondence: mean W z + b; gamma(z) stays a free (MLP) function of z.
            self.decoder = MLPDecoder(config.latent_dim, config.data_shape, decoder_dims)
            self.affine_mean = nn.Linear(config.latent_dim, math.prod(config.data_shape))
        if config.gamma_init is not None:
            # The log-gamma head's bias starts every pixel at gamma_init (gamma = gamma_min + exp(raw)). Adam
            # moves each parameter by about lr a step: a learned scalar log gamma starting at 0 is at best at
            # -0.9 (gamma 0.41) after 900 steps at lr 1e-3, and the head's bias, the per-pixel gammas' shared
            # offset, is as slow. Starting near the data's noise scale saves a short run that distance.
            with torch.no_grad():
                log_gamma_bias = self.decoder.head.bias.view(-1, math.prod(config.data_shape))[-1]
                log_gamma_bias.fill_(math.log(config.gamma_init - (config.gamma_min or 0.0)))

    @classmethod
    def from_config(cls, config: RobustVAEConfig) -> "RobustVAE":
        return cls(config)

    def encode(self, x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """x [B, *data_shape] -> (mu [B, latent_dim], logvar [B, latent_dim]; None for the induced
        autoencoder, whose encoder variance is 0)."""
        if x.dim() != len(self.config.data_shape) + 1 or tuple(x.shape[1:]) != self.config.data_shape:
            raise ValueError(f"x must be [B, {', '.join(map(str, self.config.data_shape))}]; got "
                             f"{list(x.shape)}")
        raw = self.encoder(x)
        if self.config.encoder_variance == "zero":
            return raw, None
        return split_gaussian(raw, self.encoder.std_activation)

    def decode_heads(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, latent_dim] -> (x_hat, log_gamma), each [B, *data_shape]: the decoder's mean and its
        per-pixel log standard deviation, floored."""
        if self.affine_mean is None:
            raw_mean, raw_log_gamma = self.decoder(z).unbind(1)
            x_hat = torch.sigmoid(raw_mean) if self.config.output_activation == "sigmoid" else raw_mean
        else:
            x_hat = self.affine_mean(z).reshape(z.shape[0], *self.config.data_shape)
            raw_log_gamma = self.decoder(z)
        return x_hat, self._floored(raw_log_gamma)

    def _floored(self, raw: Tensor) -> Tensor:
        """log gamma = f + softplus(raw - f), f = log gamma_min, which is gamma = gamma_min + exp(raw): above
        the floor everywhere, equal to exp(raw) once that is well above it, and with gradient
        d log gamma / d raw = exp(raw) / gamma > 0 below it. A clamp would zero the gradient of every pixel
        under the floor, and a pixel pushed there early (an inlier the mean already fits) could not come back
        up when the mean moves."""
        if self.config.gamma_min is None:
            return raw
        floor = math.log(self.config.gamma_min)
        return floor + softplus(raw - floor)

    def decode(self, z: Tensor) -> Tensor:
        """z [B, latent_dim] -> x_hat [B, *data_shape], the decoder mean."""
        return self.decode_heads(z)[0]

    def reconstruction(self, x: Tensor, z: Tensor, reduction: str = "none") -> tuple[Tensor, Tensor, Tensor]:
        """-log p(x|z). x [N, *data_shape], z [N, latent_dim] -> (nll: [N] per sample for "none", their
        0-dim "sum" or "mean"; x_hat and log_gamma [N, *data_shape])."""
        x_hat, log_gamma = self.decode_heads(z)
        # log_gamma has x's full shape: per sample and pixel under any broadcasting rule gaussian_nll reads.
        return vaefast.gaussian_nll(x, x_hat, log_gamma, reduction=reduction), x_hat, log_gamma

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> ModelOutput:
        """x [B, *data_shape] -> ModelOutput; its gamma is the geometric mean of the per-pixel gammas over
        the batch (0-dim, for logging), extra["log_gamma"] the map [B, *data_shape], detached. labels are
        ignored (the model is unconditional)."""
        mu, logvar = self.encode(x)
        if logvar is None:
            # Induced autoencoder: with the encoder variance at 0 the KL is an infinite constant (-log 0) plus
            # ||mu||^2 / 2, which rescaling z against the decoder's first layer drives to 0 without changing
            # any reconstruction, so it does not move the optimum: the loss is the NLL alone.
            z, kl = mu, None
        else:
            z, kl = vaefast.reparameterize_kl(mu, logvar)
        nll, x_hat, log_gamma = self.reconstruction(x, z, reduction="mean")
        if kl is None:
            loss = nll
        else:
            loss = nll + (kl if self.config.beta == 1.0 else self.config.beta * kl)
        log_gamma = log_gamma.detach()
        return ModelOutput(loss=loss, nll=nll, kl=kl, x_hat=x_hat, z=z, mu=mu, logvar=logvar,
                           gamma=log_gamma.mean().exp(), extra={"log_gamma": log_gamma})

    @torch.no_grad()
    def clean(self, x: Tensor) -> Tensor:
        """The cleaned reconstruction: the decoder mean at the posterior mean, x [B, *data_shape] -> the
        inlier estimate [B, *data_shape] (eval mode, no grad)."""
        with evaluating(self):
            return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def gamma_map(self, x: Tensor) -> Tensor:
        """The per-pixel decoder standard deviation at the posterior mean, [B, *data_shape]: the outlier
        score (large where the mean does not explain the pixel). Eval mode, no grad."""
        with evaluating(self):
            return self.decode_heads(self.encode(x)[0])[1].exp()

    def sample(self, num_samples: int, *, generator: Optional[torch.Generator] = None) -> Tensor:
        """z ~ N(0, I) -> decoder means [num_samples, *data_shape] (eval mode, no grad)."""
        reference = next(self.decoder.parameters())  # device and dtype of the networks
        with torch.no_grad(), evaluating(self):
            z = torch.randn(num_samples, self.config.latent_dim, generator=generator,
                            device=reference.device, dtype=reference.dtype)
            return self.decode(z)
