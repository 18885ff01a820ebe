"""vaefast.mmd and vaefast.mmd_prior: squared maximum mean discrepancy from tiled pairwise kernel sums.

The compiled ops are the pair sums (vaefast::kernel_sum_self over the rows of one tensor, kernel_sum_cross
over the pairs of two); the estimators are composed from them here. The sums come back in float64 whatever
the input dtype and the estimator is rounded once to it at the end, since Kxx + Kyy - 2 Kxy cancels O(1)
terms down to a small difference. No [n, m] kernel matrix is ever formed, forward or backward: the extra
memory is O((n + m) d) where eager PyTorch needs several [n, m] matrices.
"""
import torch

from .. import _backend
from . import checks, reference


def _unit_grad_dtype(x):
    """The *_with_grad ops' gradient dtype: float64 for float64 inputs, else float32 (rounded to the input's
    dtype once, after autograd scales it)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


if _backend._C is not None:

    @torch.library.register_fake("vaefast::kernel_sum_self")
    def _(x, kernel, scales, bandwidth, exclude_diagonal):
        return x.new_empty((), dtype=torch.float64)

    @torch.library.register_fake("vaefast::kernel_sum_self_backward")
    def _(grad, x, kernel, scales, bandwidth, exclude_diagonal):
        return x.new_empty(x.shape)

    @torch.library.register_fake("vaefast::kernel_sum_self_with_grad")
    def _(x, kernel, scales, bandwidth, exclude_diagonal):
        return x.new_empty((), dtype=torch.float64), x.new_empty(x.shape, dtype=_unit_grad_dtype(x))

    @torch.library.register_fake("vaefast::kernel_sum_cross")
    def _(x, y, kernel, scales, bandwidth):
        return x.new_empty((), dtype=torch.float64)

    @torch.library.register_fake("vaefast::kernel_sum_cross_with_grad")
    def _(x, y, kernel, scales, bandwidth, with_grad_y=True):
        dtype = _unit_grad_dtype(x)
        grad_y = y.new_empty(y.shape if with_grad_y else (0,), dtype=dtype)
        return x.new_empty((), dtype=torch.float64), x.new_empty(x.shape, dtype=dtype), grad_y

    @torch.library.register_fake("vaefast::kernel_sum_cross_backward")
    def _(grad, x, y, kernel, scales, bandwidth):
        return x.new_empty(x.shape), y.new_empty(y.shape)

    # Autograd: csrc/ops/autograd.cpp. With an input that requires grad it runs the *_with_grad op (the sum
    # and its gradients from one pass over the pairs) and the backward scales the saved gradients; neither
    # ever forms an [n, m] matrix.


def _check_kernel_arguments(kernel, scales, bandwidth):
    """Validated (scales as a list of floats, bandwidth as a float)."""
    checks.kernel(kernel)
    return list(checks.scales(scales, kernel)), checks.positive_number(bandwidth, "bandwidth")


def _self_mean(x, kernel, scales, bandwidth, unbiased):
    """Mean of k(x_i, x_j) over i != j (unbiased) or over all n^2 pairs."""
    n = x.shape[0]
    pairs = n * (n - 1) if unbiased else n * n
    return torch.ops.vaefast.kernel_sum_self(x, kernel, scales, bandwidth, unbiased) / pairs


def _compiled_mmd(x, y, kernel, scales, bandwidth, unbiased):
    cross = torch.ops.vaefast.kernel_sum_cross(x, y, kernel, scales, bandwidth) / (x.shape[0] * y.shape[0])
    squared_mmd = (
        _self_mean(x, kernel, scales, bandwidth, unbiased)
        + _self_mean(y, kernel, scales, bandwidth, unbiased)
        - 2 * cross
    )
    return squared_mmd.to(x.dtype)


def mmd(x, y, *, kernel="imq", scales=reference.DEFAULT_SCALES, bandwidth=1.0, unbiased=True):
    """Squared MMD between the rows of x [n, d] and y [m, d]; returns a 0-dim tensor.

    ``MMD^2 = Kxx + Kyy - 2 Kxy`` with Kxy the mean of k(x_i, y_j) over all n * m pairs and Kxx the mean
    of k(x_i, x_j) over i != j, divided by n (n - 1) (unbiased) or over all n^2 pairs (biased); Kyy alike.
    kernel: "imq" ``sum_s C_s / (C_s + ||a - b||^2)`` (WAE-MMD's), "rbf" ``sum_s exp(-||a - b||^2 / C_s)``,
    with ``C_s = s * 2 * d * bandwidth^2`` for s in scales, or "poly" ``(a.b / d + 1)^3`` (KID's; scales
    ignored). Gradients flow to x and y. The unbiased estimator needs n, m >= 2.
    """
    checks.tensor(x, "x")
    checks.tensor(y, "y")
    checks.same_device({"x": x, "y": y})
    checks.rows(x, "x")
    checks.rows_like(y, "y", x, "x")
    scales, bandwidth = _check_kernel_arguments(kernel, scales, bandwidth)
    checks.enough_rows(x, "x", unbiased)
    checks.enough_rows(y, "y", unbiased)
    x, y = checks.promote(x, y)
    if _backend.compiled("kernel_sum_self", x.device):
        return _compiled_mmd(x, y, kernel, scales, bandwidth, unbiased)
    return reference.mmd(x, y, kernel=kernel, scales=scales, bandwidth=bandwidth, unbiased=unbiased)


def mmd_prior(z, *, kernel="imq", scales=reference.DEFAULT_SCALES, bandwidth=None, unbiased=True, prior_std=1.0,
              num_prior_samples=None, generator=None):
    """Squared MMD between the rows of z [n, d] and the prior N(0, prior_std^2 I); returns a 0-dim tensor.

    bandwidth defaults to prior_std: WAE-MMD's ``C_s = s * 2 * d * sigma^2`` with sigma the prior's std.
    "rbf": the prior's terms in closed form (no samples): with ``v_s = C_s / 2`` and ``p = prior_std``,
    ``E_y k(z_i, y) = sum_s (v_s / (v_s + p^2))^(d/2) exp(-||z_i||^2 / (2 (v_s + p^2)))`` and
    ``E_{y,y'} k(y, y') = sum_s (v_s / (v_s + 2 p^2))^(d/2)``; only the z-z term is a pair sum. "imq" and
    "poly": ``mmd(z, samples)`` with num_prior_samples (default n) rows drawn from vaefast's Philox stream
    (seeded from generator, or from torch's default generator) and scaled by prior_std, the draws the
    reference path makes for the same seed; no gradient flows to the samples. Other arguments as in ``mmd``.
    """
    checks.tensor(z, "z")
    checks.rows(z, "z")
    prior_std = checks.positive_number(prior_std, "prior_std")
    scales, bandwidth = _check_kernel_arguments(kernel, scales, prior_std if bandwidth is None else bandwidth)
    checks.enough_rows(z, "z", unbiased)
    if num_prior_samples is not None:
        checks.positive_int(num_prior_samples, "num_prior_samples", 2 if unbiased else 1)
    checks.generator(generator, z.device)
    if not _backend.compiled("kernel_sum_self", z.device):
        return reference.mmd_prior(z, kernel=kernel, scales=scales, bandwidth=bandwidth, unbiased=unbiased,
                                   prior_std=prior_std, num_prior_samples=num_prior_samples, generator=generator)
    if kernel == "rbf":
        cross, prior = reference.rbf_prior_terms(z, scales, bandwidth, prior_std)
        return (_self_mean(z, kernel, scales, bandwidth, unbiased) + prior - 2 * cross).to(z.dtype)
    rows, dim = (z.shape[0] if num_prior_samples is None else num_prior_samples), z.shape[1]
    # Drawn in-kernel: reparameterisation of N(0, I) itself, z = 0 + exp(0) * eps = eps exactly, [rows, d];
    # the same stream, hence the same numbers, as the reference path's draw for the same seed. The prior's
    # scale is one multiply afterwards (not a logvar of 2 log prior_std: exp(log p) need not round to p).
    zeros = z.new_zeros(dim)
    prior_samples = torch.ops.vaefast.reparameterize(zeros, zeros, rows, generator)
    if prior_std != 1.0:
        prior_samples = prior_samples * prior_std
    return _compiled_mmd(z, prior_samples, kernel, scales, bandwidth, unbiased)
