"""VAE: a variational autoencoder with a Gaussian decoder (learned, fixed or sigma-VAE optimal gamma) or a
Bernoulli one, its loss head on vaefast's fused ops (reparameterize_kl, gaussian_nll).

The Gaussian decoder follows Dai & Wipf's convention: gamma = exp(log_gamma) is the decoder's standard
deviation, one scalar shared by every pixel; the NLL sums over dimensions and averages over the batch.
"""
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits

import vaefast
from vaefast import checks
from vaefast.ops.reference import reduce_per_sample

from .networks import ARCHITECTURES, build_decoder, build_encoder, concat_condition, evaluating, split_gaussian
from .output import ModelOutput


@dataclass
class VAEConfig:
    data_shape: tuple[int, ...]  # one sample's shape: (C, H, W) images or (D,) vectors
    latent_dim: int = 64  # kappa; the paper uses 64 for every data set
    architecture: str = "mlp"  # "mlp" (any shape), "infogan" (28x28, 32x32), "resnet" (32x32 and up), "mlp-skip" (stage 2)
    hidden_dims: tuple[int, ...] = (512, 256)  # dense widths of "mlp" (decoder mirrored) and "mlp-skip" (all equal)
    width: int = 64  # base channels of "infogan" (64 is the paper's: FC 1024) and "resnet"
    likelihood: str = "gaussian"  # "gaussian" or "bernoulli" (cross-entropy; data in [0, 1])
    gamma: Union[str, float] = "learned"  # gaussian decoder std: "learned", "optimal" (gamma^2 = batch MSE) or fixed
    gamma_min: Optional[float] = None  # floor on a learned or optimal gamma (sigma-VAE clips at e^-6); None: none
    output_activation: str = "sigmoid"  # decoder mean: "sigmoid" for data in [0, 1], "linear" for unbounded data
    beta: float = 1.0  # weight of the KL term
    kl_warmup_steps: int = 0  # the KL weight rises linearly from 0 to beta over this many training steps

    def __post_init__(self):
        # Lists come back from JSON checkpoints; the networks and equality checks want tuples.
        self.data_shape = checks.sizes("data_shape", self.data_shape)
        self.hidden_dims = checks.sizes("hidden_dims", self.hidden_dims, allow_empty=True)
        self.latent_dim = checks.integer("latent_dim", self.latent_dim)
        self.width = checks.integer("width", self.width)
        self.beta = checks.number("beta", self.beta, inclusive=True)
        self.gamma_min = checks.optional_number("gamma_min", self.gamma_min)
        self.kl_warmup_steps = checks.integer("kl_warmup_steps", self.kl_warmup_steps, minimum=0)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {self.architecture!r}")
        if self.architecture == "mlp-skip" and (not self.hidden_dims or len(set(self.hidden_dims)) != 1):
            raise ValueError(f"mlp-skip needs equal hidden widths (width x depth); got {self.hidden_dims}")
        if self.likelihood not in ("gaussian", "bernoulli"):
            raise ValueError(f"likelihood must be 'gaussian' or 'bernoulli'; got {self.likelihood!r}")
        if self.likelihood == "bernoulli" and self.output_activation != "sigmoid":
            raise ValueError("a bernoulli decoder's mean is sigmoid(logits): output_activation must be 'sigmoid'")
        if self.output_activation not in ("sigmoid", "linear"):
            raise ValueError(f"output_activation must be 'sigmoid' or 'linear'; got {self.output_activation!r}")
        if checks.is_number(self.gamma, minimum=0.0):
            self.gamma = float(self.gamma)
        elif self.gamma not in ("learned", "optimal"):
            raise ValueError(f"gamma must be 'learned', 'optimal' or a positive float; got {self.gamma!r}")


class VAE(nn.Module):
    """x [B, *data_shape] -> q(z|x) = N(mu, diag exp(logvar)), z [B, latent_dim] -> p(x|z).

    loss = NLL + beta_t * KL, both batch means of per-sample sums. Conditioning (the ConditionalVAE) enters
    as an optional condition [B, K] concatenated to the encoder's input channels and to z.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        condition_dim = self._condition_dim()
        encoder_shape = (config.data_shape[0] + condition_dim, *config.data_shape[1:])
        self.encoder = build_encoder(config.architecture, encoder_shape, 2 * config.latent_dim,
                                     config.hidden_dims, config.width)
        self.decoder = build_decoder(config.architecture, config.latent_dim + condition_dim, config.data_shape,
                                     config.hidden_dims, config.width)
        if config.likelihood == "gaussian" and config.gamma == "learned":
            self.log_gamma = nn.Parameter(torch.zeros(()))  # the official code's init: gamma = 1
        else:
            # A fixed gamma is made in the data's dtype when used (a stored float32 copy would round it);
            # the optimal one comes from each batch; bernoulli has none.
            self.log_gamma = None
        # Counts training forwards for the KL warm-up; a tensor so that checkpoints resume the schedule.
        self.register_buffer("training_steps", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, config: VAEConfig) -> "VAE":
        return cls(config)

    def _condition_dim(self) -> int:
        return 0

    def posterior(self, x: Tensor, condition: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """x [B, *data_shape] (condition [B, K]) -> (mu, logvar), each [B, latent_dim]."""
        encoder_input = x if condition is None else concat_condition(x, condition)
        return split_gaussian(self.encoder(encoder_input), self.encoder.std_activation)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, *data_shape] -> (mu, logvar), each [B, latent_dim]."""
        return self.posterior(x)

    def decoder_output(self, z: Tensor, condition: Optional[Tensor] = None) -> Tensor:
        """z [B, latent_dim] (condition [B, K]) -> raw decoder output [B, *data_shape] (logits or linear)."""
        return self.decoder(z if condition is None else torch.cat([z, condition.to(z.dtype)], dim=1))

    def mean(self, raw: Tensor) -> Tensor:
        """Raw decoder output -> the decoder's mean x_hat (same shape)."""
        return torch.sigmoid(raw) if self.config.output_activation == "sigmoid" else raw

    def decode(self, z: Tensor) -> Tensor:
        """z [B, latent_dim] -> x_hat [B, *data_shape], the decoder mean."""
        return self.mean(self.decoder_output(z))

    def current_log_gamma(self, x: Tensor, x_hat: Tensor) -> Optional[Tensor]:
        """The 0-dim log gamma the Gaussian NLL uses for this batch (x, x_hat [B, *data_shape]); None for
        bernoulli. "optimal": 0.5 log MSE over pixels and batch, detached (sigma-VAE's closed form)."""
        if self.config.likelihood == "bernoulli":
            return None
        if self.config.gamma == "optimal":
            log_gamma = 0.5 * torch.log((x - x_hat.detach()).pow(2).mean())
        elif self.config.gamma == "learned":
            log_gamma = self.log_gamma
        else:
            log_gamma = x_hat.new_tensor(math.log(self.config.gamma))
        if self.config.gamma_min is not None:
            log_gamma = log_gamma.clamp(min=math.log(self.config.gamma_min))
        return log_gamma

    @property
    def gamma(self) -> Optional[Tensor]:
        """0-dim decoder std (learned or fixed, floored), detached; None for optimal gamma and bernoulli."""
        if self.config.likelihood == "bernoulli" or self.config.gamma == "optimal":
            return None
        if self.config.gamma != "learned":
            return next(self.decoder.parameters()).new_tensor(self.config.gamma)
        log_gamma = self.log_gamma.detach()
        if self.config.gamma_min is not None:
            log_gamma = log_gamma.clamp(min=math.log(self.config.gamma_min))
        return log_gamma.exp()

    def reconstruction(self, x: Tensor, z: Tensor, condition: Optional[Tensor] = None,
                       reduction: str = "none") -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """-log p(x|z). x [N, *data_shape], z [N, latent_dim] -> (nll: [N] per sample for reduction "none",
        their 0-dim "sum" or "mean"; x_hat [N, *data_shape]; log_gamma 0-dim or None)."""
        if reduction not in ("none", "sum", "mean"):
            raise ValueError(f"reduction must be 'none', 'sum' or 'mean'; got {reduction!r}")
        raw = self.decoder_output(z, condition)
        x_hat = self.mean(raw)
        if self.config.likelihood == "bernoulli":
            per_sample = binary_cross_entropy_with_logits(raw, x, reduction="none").flatten(1).sum(dim=1)
            return reduce_per_sample(per_sample, reduction), x_hat, None
        log_gamma = self.current_log_gamma(x, x_hat)
        # A batch reduction is taken inside the op: no separate mean node (csrc/ops/op_common.h).
        return vaefast.gaussian_nll(x, x_hat, log_gamma, reduction=reduction), x_hat, log_gamma

    def kl_weight(self) -> Union[float, Tensor]:
        """beta * min(1, t / kl_warmup_steps) after t training steps. Without warm-up, beta itself (a Python
        float: multiplying by it costs no tensor op to build it); with warm-up, a 0-dim float64 tensor (no host
        sync; float64 so that a float64 model's loss is not rounded through float32)."""
        if self.config.kl_warmup_steps == 0:
            return float(self.config.beta)
        beta = torch.full((), self.config.beta, dtype=torch.float64, device=self.training_steps.device)
        return beta * (self.training_steps.double() / self.config.kl_warmup_steps).clamp(max=1.0)

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> ModelOutput:
        """x [B, *data_shape] in [0, 1] -> ModelOutput. labels are ignored (the model is unconditional);
        the argument is there so that every model has one signature."""
        return self._elbo(x, None)

    def _elbo(self, x: Tensor, condition: Optional[Tensor]) -> ModelOutput:
        mu, logvar = self.posterior(x, condition)
        # The fused head: reparameterize's z and gaussian_kl's batch mean bit for bit, from one read of mu and
        # logvar and with one backward (the loss head's forward+backward 12-16% faster on CPU at [256, 64]
        # latents; benchmarks/results/SUMMARY.md).
        z, kl = vaefast.reparameterize_kl(mu, logvar)
        nll, x_hat, log_gamma = self.reconstruction(x, z, condition, reduction="mean")
        weight = self.kl_weight()
        if isinstance(weight, Tensor):
            kl_term = weight.to(kl.dtype) * kl
        else:  # beta = 1 (the ELBO, the default) adds kl as it is: the bits of 1.0 * kl, one op fewer
            kl_term = kl if weight == 1.0 else weight * kl
        loss = nll + kl_term
        if self.training:
            self.training_steps += 1
        gamma = None if log_gamma is None else log_gamma.detach().exp()
        return ModelOutput(loss=loss, nll=nll, kl=kl, x_hat=x_hat, z=z, mu=mu, logvar=logvar, gamma=gamma)

    def sample(self, num_samples: int, *, generator: Optional[torch.Generator] = None) -> Tensor:
        """z ~ N(0, I) -> decoder means [num_samples, *data_shape] (eval mode, no grad)."""
        return self._sample(num_samples, None, generator)

    def _sample(self, num_samples: int, condition: Optional[Tensor],
                generator: Optional[torch.Generator]) -> Tensor:
        num_samples = checks.integer("num_samples", num_samples)
        reference = next(self.decoder.parameters())  # device and dtype of the networks
        with torch.no_grad(), evaluating(self):
            z = torch.randn(num_samples, self.config.latent_dim, generator=generator,
                            device=reference.device, dtype=reference.dtype)
            return self.mean(self.decoder_output(z, condition))
