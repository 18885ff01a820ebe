"""ModelOutput: the one type every vaefast model's forward returns (the loss plus its named terms)."""
from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor


@dataclass
class ModelOutput:
    """What a forward pass hands the training loop. B is the batch size, d the latent dimension."""

    loss: Tensor  # 0-dim: what the optimiser minimises
    nll: Tensor  # 0-dim: batch mean of the per-sample reconstruction term (summed over dimensions)
    kl: Optional[Tensor]  # 0-dim batch mean of KL(q(z|x) || N(0, I)); None for the WAE
    x_hat: Tensor  # [B, *data_shape]: decoder means (sigmoid of the logits for bernoulli)
    z: Tensor  # [B, d]: the latents the decoder saw
    mu: Optional[Tensor]  # [B, d] encoder mean; None for the WAE's deterministic encoder
    logvar: Optional[Tensor]  # [B, d] encoder log-variance; None for the WAE
    gamma: Optional[Tensor]  # 0-dim decoder standard deviation, detached; None for bernoulli and the WAE
    extra: dict[str, Tensor] = field(default_factory=dict)  # further named terms, e.g. {"mmd": ...}
