"""Encoder and decoder networks for vaefast's models.

Every encoder maps x [B, *input_shape] -> [B, out_features] (raw head outputs: the model decides what they
mean, e.g. mu and a log-variance, or a deterministic z) and names in `std_activation` how its second half
becomes a standard deviation, following the code each architecture comes from. Every decoder maps
z [B, in_features] -> [B, *output_shape] raw outputs (logits or linear means); the model applies the
output activation. Nothing here computes a loss.
"""
import contextlib
import math

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus
from torch.nn.utils.parametrizations import spectral_norm

ARCHITECTURES = ("mlp", "infogan", "resnet", "mlp-skip")
# The official Two-Stage VAE code: std = 1e-6 + softplus(.) in stage 1; the floor keeps log std finite.
SOFTPLUS_STD_FLOOR = 1e-6
# ResNet pair: three halvings, so 32x32 ends at 4x4 and 64x64 at 8x8 before the dense head.
RESNET_LEVELS = 3


def split_gaussian(raw: Tensor, std_activation: str) -> tuple[Tensor, Tensor]:
    """[B, 2d] encoder output -> (mu [B, d], logvar [B, d]).

    std_activation: "logvar" (the second half is log sigma^2), "log_std" (log sigma, the official stage-2
    code) or "softplus" (sigma = 1e-6 + softplus(.), the official stage-1 InfoGAN code).
    """
    mu, second = raw.chunk(2, dim=1)
    if std_activation == "logvar":
        return mu, second
    if std_activation == "log_std":
        return mu, 2 * second
    return mu, 2 * torch.log(SOFTPLUS_STD_FLOOR + softplus(second))


def concat_condition(x: Tensor, condition: Tensor) -> Tensor:
    """x [B, C, *rest] and condition [B, K] -> [B, C + K, *rest]: the condition broadcast over the trailing
    dimensions as extra channels (extra features for flat data [B, D])."""
    trailing = x.shape[2:]
    condition = condition.to(x.dtype).reshape(*condition.shape, *([1] * len(trailing)))
    return torch.cat([x, condition.expand(*condition.shape[:2], *trailing)], dim=1)


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """Runs the block with every submodule in eval mode, then restores each one's own mode (a frozen stage
    inside a training model stays as it was)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def _dense_stack(in_features: int, hidden_dims: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    """Linear + ReLU layers of the given widths; returns them and the width of the last one."""
    layers = []
    for width in hidden_dims:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers), in_features


class MLPEncoder(nn.Module):
    """x [B, *input_shape] (any shape, flattened) -> hidden ReLU layers -> [B, out_features]."""

    std_activation = "logvar"

    def __init__(self, input_shape: tuple[int, ...], out_features: int, hidden_dims: tuple[int, ...]):
        super().__init__()
        self.body, last = _dense_stack(math.prod(input_shape), hidden_dims)
        self.head = nn.Linear(last, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x.flatten(1)))


class MLPDecoder(nn.Module):
    """z [B, in_features] -> hidden ReLU layers -> [B, *output_shape] raw outputs."""

    def __init__(self, in_features: int, output_shape: tuple[int, ...], hidden_dims: tuple[int, ...]):
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.body, last = _dense_stack(in_features, hidden_dims)
        self.head = nn.Linear(last, math.prod(output_shape))

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.body(z)).reshape(z.shape[0], *self.output_shape)


class InfoGANEncoder(nn.Module):
    """The Two-Stage VAE paper's stage-1 encoder for 28x28 and 32x32 images, spectral norm as in its code.

    x [B, C, H, W] -> conv w 4x4 s2 (SN), lReLU 0.2 -> [B, w, H/2, W/2] -> conv 2w 4x4 s2 (SN), BN, lReLU
    -> [B, 2w, H/4, W/4] -> FC 16w (SN), BN, lReLU -> FC out_features (SN). w = 64 is the paper's (FC 1024).
    """

    std_activation = "softplus"

    def __init__(self, input_shape: tuple[int, int, int], out_features: int, width: int = 64):
        super().__init__()
        channels, height, width_px = _checked_image(input_shape, 4, "infogan")
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(channels, width, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            spectral_norm(nn.Linear(2 * width * (height // 4) * (width_px // 4), 16 * width)),
            nn.BatchNorm1d(16 * width),
            nn.LeakyReLU(0.2),
        )
        self.head = spectral_norm(nn.Linear(16 * width, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class InfoGANDecoder(nn.Module):
    """The paper's stage-1 decoder: z [B, in_features] -> FC 16w, BN, ReLU -> FC 2w (H/4)(W/4), BN, ReLU
    -> [B, 2w, H/4, W/4] -> deconv w 4x4 s2, BN, ReLU -> [B, w, H/2, W/2] -> deconv C 4x4 s2 -> [B, C, H, W]
    (raw; the model applies the sigmoid). w = 64 is the paper's (FC 1024, then 128 * 7 * 7 for 28x28)."""

    def __init__(self, in_features: int, output_shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        channels, height, width_px = _checked_image(output_shape, 4, "infogan")
        self.body = nn.Sequential(
            nn.Linear(in_features, 16 * width),
            nn.BatchNorm1d(16 * width),
            nn.ReLU(),
            nn.Linear(16 * width, 2 * width * (height // 4) * (width_px // 4)),
            nn.BatchNorm1d(2 * width * (height // 4) * (width_px // 4)),
            nn.ReLU(),
            nn.Unflatten(1, (2 * width, height // 4, width_px // 4)),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


class ResidualBlock(nn.Module):
    """[B, c, h, w] -> [B, c, h, w]: x + conv3x3(ReLU(BN(conv3x3(ReLU(BN(x))))))  (pre-activation)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetEncoder(nn.Module):
    """A small ResNet for images of 32x32 and larger (H and W divisible by 8).

    x [B, C, H, W] -> conv3x3 w -> 3 x (residual block, conv 4x4 s2 doubling the channels)
    -> [B, 8w, H/8, W/8] -> BN, ReLU, flatten -> FC out_features.
    """

    std_activation = "logvar"

    def __init__(self, input_shape: tuple[int, int, int], out_features: int, width: int = 32):
        super().__init__()
        channels, height, width_px = _checked_image(input_shape, 2**RESNET_LEVELS, "resnet")
        layers = [nn.Conv2d(channels, width, 3, padding=1)]
        for level in range(RESNET_LEVELS):
            c = width * 2**level
            layers += [ResidualBlock(c), nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)]
        top = width * 2**RESNET_LEVELS
        layers += [nn.BatchNorm2d(top), nn.ReLU(), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(top * (height // 2**RESNET_LEVELS) * (width_px // 2**RESNET_LEVELS), out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class ResNetDecoder(nn.Module):
    """The mirror of ResNetEncoder: z [B, in_features] -> FC -> [B, 8w, H/8, W/8] -> 3 x (nearest 2x
    upsampling, conv3x3 halving the channels, residual block) -> [B, w, H, W] -> BN, ReLU, conv3x3 C
    -> [B, C, H, W] raw."""

    def __init__(self, in_features: int, output_shape: tuple[int, int, int], width: int = 32):
        super().__init__()
        channels, height, width_px = _checked_image(output_shape, 2**RESNET_LEVELS, "resnet")
        top = width * 2**RESNET_LEVELS
        size = (height // 2**RESNET_LEVELS, width_px // 2**RESNET_LEVELS)
        layers = [nn.Linear(in_features, top * size[0] * size[1]), nn.Unflatten(1, (top, *size))]
        for level in reversed(range(RESNET_LEVELS)):
            c = width * 2**level
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(2 * c, c, 3, padding=1), ResidualBlock(c)]
        layers += [nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


class Stage2Encoder(nn.Module):
    """The Two-Stage VAE's second-stage encoder: z [B, in_features] -> depth x (dense width, ReLU) -> h;
    the head sees [z, h] [B, in_features + width] -> [B, out_features] (mu_u and log sigma_u, as in the
    official code)."""

    std_activation = "log_std"

    def __init__(self, in_features: int, out_features: int, width: int = 1024, depth: int = 3):
        super().__init__()
        self.body, last = _dense_stack(in_features, (width,) * depth)
        self.head = nn.Linear(in_features + last, out_features)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(torch.cat([z, self.body(z)], dim=1))


class Stage2Decoder(nn.Module):
    """The second-stage decoder: u [B, in_features] -> depth x (dense width, ReLU) -> h; a linear head on
    [u, h] [B, in_features + width] -> zhat [B, *output_shape] (output_shape = (stage-1 latent dim,))."""

    def __init__(self, in_features: int, output_shape: tuple[int], width: int = 1024, depth: int = 3):
        super().__init__()
        if len(output_shape) != 1:
            raise ValueError(f"the stage-2 decoder outputs vectors: output_shape must be (d,); got {output_shape}")
        self.body, last = _dense_stack(in_features, (width,) * depth)
        self.head = nn.Linear(in_features + last, output_shape[0])

    def forward(self, u: Tensor) -> Tensor:
        return self.head(torch.cat([u, self.body(u)], dim=1))


def _checked_image(shape: tuple[int, ...], multiple: int, architecture: str) -> tuple[int, int, int]:
    if len(shape) != 3 or shape[1] % multiple or shape[2] % multiple:
        raise ValueError(f"the {architecture} networks need images (C, H, W) with H and W divisible by "
                         f"{multiple}; got data_shape {tuple(shape)}")
    return tuple(shape)


def build_encoder(architecture: str, input_shape: tuple[int, ...], out_features: int,
                  hidden_dims: tuple[int, ...], width: int) -> nn.Module:
    """The encoder of an architecture ("mlp", "infogan", "resnet", "mlp-skip"): hidden_dims sizes the
    dense stacks (mlp-skip: width hidden_dims[0], depth len(hidden_dims)), width the conv networks."""
    if architecture == "mlp":
        return MLPEncoder(input_shape, out_features, hidden_dims)
    if architecture == "infogan":
        return InfoGANEncoder(input_shape, out_features, width)
    if architecture == "resnet":
        return ResNetEncoder(input_shape, out_features, width)
    return Stage2Encoder(math.prod(input_shape), out_features, hidden_dims[0], len(hidden_dims))


def build_decoder(architecture: str, in_features: int, output_shape: tuple[int, ...],
                  hidden_dims: tuple[int, ...], width: int) -> nn.Module:
    """The decoder matching build_encoder; an MLP decoder mirrors the encoder's hidden_dims."""
    if architecture == "mlp":
        return MLPDecoder(in_features, output_shape, tuple(reversed(hidden_dims)))
    if architecture == "infogan":
        return InfoGANDecoder(in_features, output_shape, width)
    if architecture == "resnet":
        return ResNetDecoder(in_features, output_shape, width)
    return Stage2Decoder(in_features, output_shape, hidden_dims[0], len(hidden_dims))

