"""vaefast's fused ops. Each op has one module here (wrapper, fake kernel, autograd registration) and a
pure-PyTorch twin in reference.py."""
from .gaussian_kl import gaussian_kl
from .mmd import mmd, mmd_prior

__all__ = ["gaussian_kl", "mmd", "mmd_prior"]
