"""vaefast's models: VAE, WAE-MMD, the Two-Stage VAE, a conditional VAE and the robust (per-pixel gamma) VAE,
each returning a ModelOutput, with the IWAE bound and Dai & Wipf's diagnostics. build / config_of turn a
model into (kind, config dict) and back, which is what a checkpoint stores next to the state_dict."""
import dataclasses

from torch import nn

from .cvae import CVAEConfig, ConditionalVAE
from .diagnostics import (active_dimensions, code_spectra, diagnostics, latent_codes, latent_mmd, latent_mmd_estimate,
                          latent_variances, prior_mmd_floor, singular_values)
from .iwae import iwae_bound
from .networks import (InfoGANDecoder, InfoGANEncoder, MLPDecoder, MLPEncoder, ResNetDecoder, ResNetEncoder,
                       Stage2Decoder, Stage2Encoder)
from .output import ModelOutput
from .robust_vae import RobustVAE, RobustVAEConfig
from .two_stage import TwoStageConfig, TwoStageVAE
from .vae import VAE, VAEConfig
from .wae import WAE, WAEConfig

# kind -> (model class, config class); checkpoints store the kind, so these names are a file format.
MODELS = {
    "vae": (VAE, VAEConfig),
    "wae": (WAE, WAEConfig),
    "two-stage": (TwoStageVAE, TwoStageConfig),
    "cvae": (ConditionalVAE, CVAEConfig),
    "robust-vae": (RobustVAE, RobustVAEConfig),
}


def build(kind: str, config_dict: dict) -> nn.Module:
    """A fresh model of `kind` ("vae", "wae", "two-stage", "cvae", "robust-vae") from its config as a dict."""
    if kind not in MODELS:
        raise ValueError(f"kind must be one of {sorted(MODELS)}; got {kind!r}")
    model_class, config_class = MODELS[kind]
    return model_class.from_config(config_class(**config_dict))


def config_of(model: nn.Module) -> tuple[str, dict]:
    """(kind, config dict) of a model, such that build(kind, config_dict) rebuilds the same architecture."""
    for kind, (model_class, _) in MODELS.items():
        if type(model) is model_class:  # exact: a ConditionalVAE is also a VAE
            return kind, dataclasses.asdict(model.config)
    raise TypeError(f"not a vaefast model: {type(model).__name__}")


__all__ = [
    "CVAEConfig", "ConditionalVAE", "code_spectra", "InfoGANDecoder", "InfoGANEncoder", "MLPDecoder", "MLPEncoder",
    "MODELS", "ModelOutput", "ResNetDecoder", "ResNetEncoder", "RobustVAE", "RobustVAEConfig", "Stage2Decoder",
    "Stage2Encoder", "TwoStageConfig",
    "TwoStageVAE", "VAE", "VAEConfig", "WAE", "WAEConfig", "active_dimensions", "build", "config_of",
    "diagnostics", "iwae_bound", "latent_codes", "latent_mmd", "latent_mmd_estimate", "latent_variances",
    "prior_mmd_floor", "singular_values",
]
