"""TwoStageVAE: Dai & Wipf's Two-Stage VAE ("Diagnosing and Enhancing VAE Models", ICLR 2019), composed of
two VAEs.

Stage 1 is a VAE on the data (the paper: InfoGAN networks, learned gamma_x, latent kappa = 64). Stage 2 is
a VAE on stage 1's latents z: the skip MLPs ([input, last hidden] into the heads), a linear zhat and its
own learned gamma_z. They are trained separately, stage 1 first and then frozen: the training loop calls
forward (stage 1), then freeze_stage1, stage2_data once, and forward_stage2 on fresh z = mu_z + sigma_z eps
every epoch. Sampling: u ~ N(0, I) -> z = zhat(u) + gamma_z eps -> x = stage1.decode(z).
"""
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn

from vaefast import checks

from .networks import evaluating
from .output import ModelOutput
from .vae import VAE, VAEConfig


@dataclass
class TwoStageConfig:
    stage1: Union[VAEConfig, dict]  # the first stage on the data (a dict from a checkpoint becomes a VAEConfig)
    stage2_width: int = 1024  # width of the stage-2 dense layers (the paper's 1024)
    stage2_depth: int = 3  # number of stage-2 dense layers before the skip (the paper's 3)
    stage2_latent_dim: Optional[int] = None  # dim of u; None: stage 1's latent_dim, as in the paper

    def __post_init__(self):
        if isinstance(self.stage1, dict):
            self.stage1 = VAEConfig(**self.stage1)
        elif not isinstance(self.stage1, VAEConfig):
            raise ValueError(f"stage1 must be a VAEConfig or its dict; got {type(self.stage1).__name__}")
        self.stage2_width = checks.integer("stage2_width", self.stage2_width)
        self.stage2_depth = checks.integer("stage2_depth", self.stage2_depth)
        self.stage2_latent_dim = checks.optional_integer("stage2_latent_dim", self.stage2_latent_dim)

    def stage2_config(self) -> VAEConfig:
        """Stage 2: a learned-gamma Gaussian VAE on z [B, kappa] with the skip MLPs and a linear output."""
        kappa = self.stage1.latent_dim
        return VAEConfig(
            data_shape=(kappa,),
            latent_dim=kappa if self.stage2_latent_dim is None else self.stage2_latent_dim,
            architecture="mlp-skip",
            hidden_dims=(self.stage2_width,) * self.stage2_depth,
            likelihood="gaussian",
            gamma="learned",
            output_activation="linear",
        )


class TwoStageVAE(nn.Module):
    """stage1: VAE on x [B, *data_shape]; stage2: VAE on z [B, kappa]."""

    def __init__(self, config: TwoStageConfig):
        super().__init__()
        self.config = config
        self.stage1 = VAE(config.stage1)
        self.stage2 = VAE(config.stage2_config())

    @classmethod
    def from_config(cls, config: TwoStageConfig) -> "TwoStageVAE":
        return cls(config)

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> ModelOutput:
        """Stage-1 training: x [B, *data_shape] in [0, 1] -> stage 1's ModelOutput. labels are ignored."""
        return self.stage1(x)

    def freeze_stage1(self) -> None:
        """Stage 1 stops learning (requires_grad False) before stage 2 trains, as in the paper."""
        self.stage1.requires_grad_(False)

    @torch.no_grad()
    def stage2_data(self, x_all: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """One eval-mode pass of stage 1's encoder over x_all [N, *data_shape] -> (mu_z, sigma_z), each
        [N, kappa], without gradients: the statistics stage 2 draws z = mu_z + sigma_z eps from."""
        means, stds = [], []
        with evaluating(self.stage1):
            for batch in x_all.split(batch_size):
                mu, logvar = self.stage1.encode(batch)
                means.append(mu)
                stds.append(torch.exp(0.5 * logvar))
        return torch.cat(means), torch.cat(stds)

    def forward_stage2(self, z: Tensor) -> ModelOutput:
        """Stage-2 training: z [B, kappa] -> stage 2's ModelOutput (its x_hat is zhat [B, kappa])."""
        return self.stage2(z)

    def sample(self, num_samples: int, *, generator: Optional[torch.Generator] = None) -> Tensor:
        """u ~ N(0, I) [n, dim u] -> z = zhat(u) + gamma_z eps [n, kappa] -> x = stage 1's decoder mean
        [n, *data_shape] (eval mode, no grad)."""
        num_samples = checks.integer("num_samples", num_samples)
        reference = next(self.stage2.decoder.parameters())  # device and dtype of the networks
        with torch.no_grad(), evaluating(self):
            u = torch.randn(num_samples, self.stage2.config.latent_dim, generator=generator,
                            device=reference.device, dtype=reference.dtype)
            z_hat = self.stage2.decode(u)
            z = z_hat + self.stage2.gamma * torch.randn(z_hat.shape, generator=generator,
                                                        device=reference.device, dtype=reference.dtype)
            return self.stage1.decode(z)
