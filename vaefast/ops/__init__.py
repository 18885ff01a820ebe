"""vaefast's fused ops. Each op has one module here (wrapper, fake kernel, autograd registration) and a
pure-PyTorch twin in reference.py."""
from .gaussian_kl import gaussian_kl
from .gaussian_nll import gaussian_nll
from .mmd import mmd, mmd_prior
from .reparameterize import reparameterize, reparameterize_philox
from .reparameterize_kl import reparameterize_kl

__all__ = ["gaussian_kl", "gaussian_nll", "mmd", "mmd_prior", "reparameterize", "reparameterize_kl",
           "reparameterize_philox"]
