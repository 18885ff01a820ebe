"""Argument validation shared by the compiled and the reference paths of every public op.

Each check raises with a message that names the argument and says what was expected, before any kernel
runs. Mixed floating dtypes are promoted like torch promotes them (float32 data with a bfloat16 decoder
output under autocast is ordinary); integer, boolean and complex tensors are rejected.
"""
import numbers

import torch

REDUCTIONS = ("none", "sum", "mean")
KERNELS = ("imq", "rbf", "poly")


def _shape(t):
    return list(t.shape)


def tensor(value, name):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if not (value.is_floating_point()):
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64); got {value.dtype}"
        )
    return value


def same_device(tensors):
    """tensors: dict name -> tensor (in argument order); all must live on the first one's device."""
    (first_name, first), *rest = tensors.items()
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; move both to one device")


def promote(*tensors):
    """Casts to torch's promoted floating dtype (a no-op when they already agree)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def min_rank(t, name, rank, layout):
    if t.dim() < rank:
        raise ValueError(f"{name} must have at least {rank} dimension(s) ({layout}); got shape {_shape(t)}")


def same_shape(t, name, ref, ref_name):
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {_shape(ref)}; got {_shape(t)}")


def rows(t, name):
    """A [n, d] tensor of n samples in d >= 1 dimensions (one sample per row)."""
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [n, d] (one sample per row); got shape {_shape(t)}")
    if t.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column (d >= 1); got shape {_shape(t)}")


def rows_like(t, name, ref, ref_name):
    """Samples in the same space as ref's: a 2-D tensor with ref's number of columns."""
    rows(t, name)
    if t.shape[1] != ref.shape[1]:
        raise ValueError(
            f"{name} must have d = {ref.shape[1]} columns like {ref_name} [n, d] = {_shape(ref)}; got {_shape(t)}"
        )


def enough_rows(t, name, unbiased):
    """The unbiased estimator averages over pairs i != j: it needs two rows; the biased one needs one."""
    minimum = 2 if unbiased else 1
    if t.shape[0] < minimum:
        estimator = "the unbiased estimator (unbiased=True)" if unbiased else "an estimate"
        raise ValueError(f"{name} must have at least {minimum} rows for {estimator}; got shape {_shape(t)}")


def reduction(value):
    if value not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {value!r}")


def kernel(value):
    if value not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}; got {value!r}")


def positive_number(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number; got {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be positive and finite; got {value}")
    return float(value)


def scales(values, kernel_name):
    """A non-empty sequence of positive numbers, returned as a tuple of floats (ignored for "poly")."""
    if isinstance(values, (int, float)):
        values = (values,)
    try:
        values = tuple(values)
    except TypeError:
        raise TypeError(f"scales must be a sequence of positive numbers; got {type(values).__name__}") from None
    if kernel_name != "poly" and not values:
        raise ValueError("scales must hold at least one positive number; got an empty sequence")
    return tuple(positive_number(v, f"scales[{i}]") for i, v in enumerate(values))


def positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def generator(gen, device, name="generator"):
    if gen is None:
        return
    if not isinstance(gen, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None; got {type(gen).__name__}")
    if gen.device.type != device.type or (gen.device.index is not None and device.index is not None
                                          and gen.device.index != device.index):
        raise ValueError(f"{name} is a generator for {gen.device} but the tensors are on {device}")


def log_gamma_value(log_gamma, x):
    """log_gamma as a tensor: a Python number becomes a 0-dim tensor of x's device and dtype."""
    if isinstance(log_gamma, numbers.Real) and not isinstance(log_gamma, bool):
        return torch.tensor(float(log_gamma), dtype=x.dtype, device=x.device)
    if not isinstance(log_gamma, torch.Tensor):
        raise TypeError(f"log_gamma must be a torch.Tensor or a Python number; got {type(log_gamma).__name__}")
    return tensor(log_gamma, "log_gamma")


def log_gamma_shape(log_gamma, x):
    """log_gamma must broadcast to x by numpy's rules: [D] is per feature whatever B is; per sample is
    [B, 1, ...]."""
    try:
        broadcast = torch.broadcast_shapes(log_gamma.shape, x.shape)
    except RuntimeError:
        broadcast = None
    if broadcast == x.shape:
        return
    per_sample = [x.shape[0], *([1] * (x.dim() - 1))]
    hint = ""
    if log_gamma.dim() == 1 and x.dim() > 1 and log_gamma.shape[0] == x.shape[0]:
        # The one shape ported code gets wrong ([B] used to mean per sample): say how to write it.
        hint = f"; for one value per sample write log_gamma.reshape({per_sample}) (a [D] log_gamma is per feature)"
    raise ValueError(
        f"log_gamma must broadcast to x {_shape(x)} (a scalar, per feature e.g. {_shape(x)[1:]}, per sample "
        f"{per_sample}, or x's shape); got {_shape(log_gamma)}{hint}"
    )
