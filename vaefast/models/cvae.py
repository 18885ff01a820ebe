"""ConditionalVAE: a VAE whose encoder and decoder both see the class label, one-hot.

The one-hot label enters the encoder as extra input channels (extra features for vectors) and the decoder
concatenated to z; the loss is the VAE's, so every VAE option (gamma, likelihood, beta, warm-up) applies.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.nn.functional import one_hot

from vaefast import checks

from .output import ModelOutput
from .vae import VAE, VAEConfig


@dataclass
class CVAEConfig(VAEConfig):
    num_classes: int = 10  # labels are integer class ids in [0, num_classes)

    def __post_init__(self):
        super().__post_init__()
        self.num_classes = checks.integer("num_classes", self.num_classes)


class ConditionalVAE(VAE):
    """x [B, *data_shape], labels [B] (int) -> q(z|x, y), p(x|z, y); sampling draws labels uniformly
    unless given."""

    def _condition_dim(self) -> int:
        return self.config.num_classes

    def one_hot(self, labels: Tensor) -> Tensor:
        """labels [B] int -> [B, num_classes] in the networks' dtype."""
        dtype = next(self.decoder.parameters()).dtype
        return one_hot(labels.long(), self.config.num_classes).to(dtype)

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> ModelOutput:
        """x [B, *data_shape] in [0, 1], labels [B] int (required) -> ModelOutput."""
        if labels is None:
            raise ValueError("ConditionalVAE.forward needs labels [B] (integer class ids)")
        return self._elbo(x, self.one_hot(labels))

    def encode(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, *data_shape], labels [B] -> (mu, logvar), each [B, latent_dim]."""
        return self.posterior(x, self.one_hot(labels))

    def decode(self, z: Tensor, labels: Tensor) -> Tensor:
        """z [B, latent_dim], labels [B] -> x_hat [B, *data_shape]."""
        return self.mean(self.decoder_output(z, self.one_hot(labels)))

    def sample(self, num_samples: int, labels: Optional[Tensor] = None, *,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """[num_samples, *data_shape] decoder means for labels [num_samples] (drawn uniformly if None)."""
        num_samples = checks.integer("num_samples", num_samples)
        if labels is not None and tuple(labels.shape) != (num_samples,):
            raise ValueError(f"labels must have shape [{num_samples}] (num_samples); got {list(labels.shape)}")
        if labels is None:
            device = next(self.decoder.parameters()).device
            labels = torch.randint(self.config.num_classes, (num_samples,), generator=generator, device=device)
        return self._sample(num_samples, self.one_hot(labels), generator)
