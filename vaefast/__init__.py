"""vaefast: fused kernels and faithful models for training variational autoencoders in PyTorch."""
from ._backend import backend_info
from .ops import gaussian_kl, gaussian_nll, mmd, mmd_prior, reparameterize, reparameterize_kl, reparameterize_philox

__version__ = "0.1.0"
__all__ = [
    "backend_info",
    "gaussian_kl",
    "gaussian_nll",
    "mmd",
    "mmd_prior",
    "reparameterize",
    "reparameterize_kl",
    "reparameterize_philox",
    "__version__",
]
