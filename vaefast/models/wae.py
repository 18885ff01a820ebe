"""WAE: the Wasserstein autoencoder with the MMD penalty (Tolstikhin et al., ICLR 2018).

A deterministic encoder; loss = sum over dimensions of (x - x_hat)^2 (batch mean) + lambda * MMD^2 between
the batch's latents and the prior N(0, sigma^2 I) (sigma = prior_std, 1 in the paper), the IMQ kernel over 7
scales with C_s = s * 2 * d * bandwidth^2 (the paper's C = 2 d sigma^2: bandwidth defaults to prior_std)
through vaefast.mmd_prior, whose prior samples come from vaefast's Philox stream.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

import vaefast

from .networks import ARCHITECTURES, build_decoder, build_encoder, evaluating
from .output import ModelOutput


@dataclass
class WAEConfig:
    data_shape: tuple[int, ...]  # one sample's shape: (C, H, W) images or (D,) vectors
    latent_dim: int = 64  # d
    architecture: str = "mlp"  # "mlp", "infogan" or "resnet" (as for the VAE)
    hidden_dims: tuple[int, ...] = (512, 256)  # dense widths of "mlp" (decoder mirrored)
    width: int = 64  # base channels of "infogan" and "resnet"
    mmd_weight: float = 10.0  # lambda
    kernel: str = "imq"  # the MMD kernel: "imq" (the paper's) or "rbf"
    prior_std: float = 1.0  # sigma of the prior N(0, sigma^2 I), which samples are drawn from
    bandwidth: Optional[float] = None  # the sigma in C = 2 d sigma^2; None: prior_std (the paper's choice)

    def __post_init__(self):
        self.data_shape = tuple(int(n) for n in self.data_shape)
        self.hidden_dims = tuple(int(n) for n in self.hidden_dims)
        if self.architecture not in ARCHITECTURES or self.architecture == "mlp-skip":
            raise ValueError(f"architecture must be 'mlp', 'infogan' or 'resnet'; got {self.architecture!r}")
        if self.kernel not in ("imq", "rbf"):
            raise ValueError(f"kernel must be 'imq' or 'rbf'; got {self.kernel!r}")
        for name in ("prior_std", "bandwidth"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive finite number; got {value!r}")


class WAE(nn.Module):
    """x [B, *data_shape] -> z = encoder(x) [B, latent_dim] -> x_hat = sigmoid(decoder(z)). Needs B >= 2
    (the unbiased MMD estimator)."""

    def __init__(self, config: WAEConfig):
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config.architecture, config.data_shape, config.latent_dim,
                                     config.hidden_dims, config.width)
        self.decoder = build_decoder(config.architecture, config.latent_dim, config.data_shape,
                                     config.hidden_dims, config.width)
        # Under DistributedDataParallel the training loop sets this to an all-gather that keeps gradients
        # ([B, d] -> [world * B, d]), so that the MMD is estimated on the global batch, not per rank.
        self.latent_gather = None

    @classmethod
    def from_config(cls, config: WAEConfig) -> "WAE":
        return cls(config)

    def encode(self, x: Tensor) -> Tensor:
        """x [B, *data_shape] -> z [B, latent_dim] (deterministic)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """z [B, latent_dim] -> x_hat [B, *data_shape] in (0, 1)."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> ModelOutput:
        """x [B, *data_shape] in [0, 1] -> ModelOutput with kl, mu, logvar and gamma None and
        extra={"mmd": MMD^2}. labels are ignored."""
        z = self.encode(x)
        x_hat = self.decode(z)
        squared_error = (x - x_hat).pow(2).reshape(x.shape[0], math.prod(x.shape[1:])).sum(dim=1).mean()
        latents = z if self.latent_gather is None else self.latent_gather(z)
        mmd = vaefast.mmd_prior(latents, kernel=self.config.kernel, bandwidth=self.config.bandwidth,
                                prior_std=self.config.prior_std)
        return ModelOutput(loss=squared_error + self.config.mmd_weight * mmd, nll=squared_error, kl=None,
                           x_hat=x_hat, z=z, mu=None, logvar=None, gamma=None, extra={"mmd": mmd})

    def sample(self, num_samples: int, *, generator: Optional[torch.Generator] = None) -> Tensor:
        """z ~ N(0, prior_std^2 I) -> decoder means [num_samples, *data_shape] (eval mode, no grad)."""
        reference = next(self.decoder.parameters())  # device and dtype of the networks
        with torch.no_grad(), evaluating(self):
            z = torch.randn(num_samples, self.config.latent_dim, generator=generator,
                            device=reference.device, dtype=reference.dtype)
            return self.decode(self.config.prior_std * z)
