"""The peer libraries' MMD code paths, as providers for the MMD cases and the sweep: pythae's WAE_MMD IMQ
kernel and KeOps (pykeops) LazyTensor kernel sums. Each is used only when its package imports; otherwise
the reason is recorded and the provider is skipped (never replaced by a copy passed off as the peer).

pythae (0.1.2): WAE_MMD.loss_function(recon_x, x, z, z_prior) is called on a real WAE_MMD model with the
7 IMQ scales; its mmd term (the third output) is the provider's result. Its imq_kernel builds, per scale,
torch.norm(z1.unsqueeze(1) - z2.unsqueeze(0), dim=-1): an [n, m, d] tensor each time, which autograd keeps
for the backward, so one call holds about S * (n^2 + n m) * d * 4 bytes (PYTHAE_BYTES). Empty recon_x and x
([n, 0]) make its reconstruction term zero-cost, so only the MMD is timed. Its cross term divides by N^2 with
N = z.shape[0]: it assumes n = m, which every case here has.

KeOps (2.3): the same unbiased 7-scale IMQ estimator as vaefast.mmd, written with LazyTensor reductions
over j (no n x m matrix is ever stored); k(x_i, x_i) = S for every i, so the diagonal of the x-x sum is
removed exactly by subtracting n * S. KeOps compiles each formula (and its gradient) with the system C++
compiler on first use and caches it under ~/.cache/keops*; the first call is a warm-up outside the timing.
LazyTensors of CUDA tensors run on KeOps' GPU backend (formulas compiled with nvrtc); keops_error says
where that backend is missing.
"""
import importlib.metadata

import torch

from vaefast.ops import reference

SCALES = reference.DEFAULT_SCALES


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- pythae -------------------------------------------------------------------------------------------------
try:
    from pythae.models import WAE_MMD, WAE_MMD_Config

    PYTHAE_ERROR = None
except Exception as error:  # noqa: BLE001 -- ImportError or a broken dependency: either way, skip with why
    WAE_MMD = WAE_MMD_Config = None
    PYTHAE_ERROR = f"pythae not importable: {type(error).__name__}: {error}"
PYTHAE_VERSION = _version("pythae")

_pythae_models = {}


def pythae_model(dim):
    """A WAE_MMD for latent dimension dim with the 7 IMQ scales and bandwidth 1 (C_s = s * 2 * d), the
    same kernel as vaefast's. Its default encoder/decoder are never called."""
    if dim not in _pythae_models:
        config = WAE_MMD_Config(input_dim=(dim,), latent_dim=dim, kernel_choice="imq", kernel_bandwidth=1.0,
                                scales=list(SCALES), reg_weight=1.0)
        _pythae_models[dim] = WAE_MMD(config)
    return _pythae_models[dim]


def pythae_mmd(x, y):
    """pythae's unbiased MMD^2 between x [n, d] and y [n, d] through WAE_MMD.loss_function."""
    model = pythae_model(x.shape[1])
    empty = x.new_empty(x.shape[0], 0)  # reconstruction term over zero pixels: nothing to compute
    return model.loss_function(empty, empty, x, y)[2]


def pythae_bytes(n, m, d, scales=len(SCALES)):
    """Bytes one pythae call (with autograd recording) holds at its peak: the [n, n, d] and [n, m, d]
    differences of every scale, kept for the backward; the y-y ones are freed as they go."""
    return scales * (n * n + n * m) * d * 4


# --- KeOps --------------------------------------------------------------------------------------------------
try:
    from pykeops.torch import LazyTensor

    KEOPS_ERROR = None
except Exception as error:  # noqa: BLE001
    LazyTensor = None
    KEOPS_ERROR = f"pykeops not importable: {type(error).__name__}: {error}"
KEOPS_VERSION = _version("pykeops")


def keops_error(device):
    """Why the keops provider cannot run on the device, or None. On CUDA it needs pykeops' GPU backend,
    which pykeops turns off at import when it finds no CUDA libraries (pykeops.config.gpu_available)."""
    if KEOPS_ERROR is not None or torch.device(device).type != "cuda":
        return KEOPS_ERROR
    import pykeops.config

    if not getattr(pykeops.config, "gpu_available", False):
        return "pykeops has no GPU backend here (pykeops.config.gpu_available is False: no CUDA libraries found)"
    return None


def _keops_kernel_sum(a, b):
    """sum_i sum_j sum_s C_s / (C_s + |a_i - b_j|^2) as a 0-dim tensor, reduced over j by KeOps."""
    dim = a.shape[1]
    a_i = LazyTensor(a[:, None, :])  # [n, 1, d] symbolic
    b_j = LazyTensor(b[None, :, :])  # [1, m, d] symbolic
    sq_dist = ((a_i - b_j) ** 2).sum(-1)  # [n, m] symbolic, never stored
    kernel = None
    for scale in SCALES:
        c = scale * 2 * dim
        term = c / (c + sq_dist)
        kernel = term if kernel is None else kernel + term
    return kernel.sum(dim=1).sum()  # [n, 1] -> scalar


def keops_mmd(x, y):
    """Unbiased MMD^2 with the 7-scale IMQ kernel, every sum a KeOps reduction."""
    n, m = x.shape[0], y.shape[0]
    scales = len(SCALES)
    xx = (_keops_kernel_sum(x, x) - n * scales) / (n * (n - 1))
    yy = (_keops_kernel_sum(y, y) - m * scales) / (m * (m - 1))
    xy = _keops_kernel_sum(x, y) / (n * m)
    return xx + yy - 2 * xy


def check_against_reference():
    """Both peers agree with vaefast's reference on a small case (a wrong peer would make a wrong table)."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=generator), torch.randn(64, 8, generator=generator)
    expected = reference.mmd(x.double(), y.double(), kernel="imq", scales=SCALES, bandwidth=1.0, unbiased=True)
    errors = {}
    if PYTHAE_ERROR is None:
        errors["pythae"] = abs(pythae_mmd(x, y).item() - expected.item())
    if KEOPS_ERROR is None:
        errors["keops"] = abs(keops_mmd(x, y).item() - expected.item())
    return errors
