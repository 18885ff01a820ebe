"""vaefast's fused ops. Each op has one module here (wrapper, fake kernel, autograd registration) and a
pure-PyTorch twin in reference.py."""
from .gaussian_kl import gaussian_kl

__all__ = ["gaussian_kl"]
