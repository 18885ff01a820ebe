"""Which implementation each op runs: the compiled kernels of vaefast._C, or the pure-PyTorch reference.

VAEFAST_BACKEND selects it: "auto" (default) uses a kernel where the extension has one for the tensor's
device and the reference elsewhere; "reference" forces the pure-PyTorch path; "compiled" makes a missing
extension an import error instead of a warning. Everything is decided at import time, so the per-call
decision is a dictionary lookup that torch.compile traces through.
"""
import os
import warnings

import torch

OPS = (
    "reparameterize", "reparameterize_philox", "reparameterize_with_eps", "reparameterize_backward",
    "gaussian_kl", "gaussian_kl_backward",
    "reparameterize_kl", "reparameterize_kl_backward",
    "gaussian_nll", "gaussian_nll_backward",
    "kernel_sum_self", "kernel_sum_self_with_grad", "kernel_sum_self_backward",
    "kernel_sum_cross", "kernel_sum_cross_with_grad", "kernel_sum_cross_backward",
)

BACKEND = os.environ.get("VAEFAST_BACKEND", "auto")
if BACKEND not in ("auto", "compiled", "reference"):
    raise ImportError(f"VAEFAST_BACKEND must be 'auto', 'compiled' or 'reference'; got {BACKEND!r}")

_C = None
LOAD_ERROR = None
if BACKEND != "reference":
    try:
        from vaefast import _C
    except ImportError as error:
        if BACKEND == "compiled":
            raise
        LOAD_ERROR = error
        warnings.warn(
            f"vaefast: the compiled extension vaefast._C could not be loaded ({error}); every op falls back "
            "to the pure-PyTorch reference. Reinstall with `pip install --no-build-isolation .` to build it.",
            RuntimeWarning,
            stacklevel=2,
        )


def _kernel_devices(op):
    """Device types ("cpu", "cuda") for which vaefast::op has a registered kernel."""
    if _C is None or not torch._C._dispatch_has_kernel(f"vaefast::{op}"):
        return frozenset()
    return frozenset(
        key.lower() for key in ("CPU", "CUDA")
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"vaefast::{op}", key)
    )


KERNEL_DEVICES = {op: _kernel_devices(op) for op in OPS}


def compiled(op, device):
    """True when the call should run vaefast::op's kernel for a tensor on `device`."""
    return device.type in KERNEL_DEVICES[op]


def backend_info():
    """Whether the compiled extension loaded, which devices each op has kernels for, and build flags."""
    info = {
        "compiled": _C is not None,
        "backend": BACKEND,
        "load_error": None if LOAD_ERROR is None else str(LOAD_ERROR),
        "ops": {op: sorted(devices) for op, devices in KERNEL_DEVICES.items() if not op.endswith("_backward")},
        "torch_version": torch.__version__,
    }
    if _C is not None:
        info["build"] = dict(_C.build_info())
    return info
