"""Tests of vaefast.gaussian_nll: values and gradients (x, x_hat, log_gamma) against the float64 reference
(vaefast.ops.reference) and torch.distributions for every log_gamma layout (scalar, per sample, per
feature, per channel, full), earned tolerances in float32/float16/bfloat16, gradcheck, opcheck,
torch.compile, hypothesis properties (tiny and huge residuals, extreme log_gamma, NaN/inf), determinism
across thread counts, the VAEFAST_BACKEND=reference path and argument validation."""
import math

import pytest
import torch
from hypothesis import given, strategies as st
from torch.distributions import Normal

import vaefast
from tests.conftest import assert_close64
from tests.op_testing import (
    LAYOUT_REDUCTIONS, LAYOUTS, Case, REDUCTIONS, assert_all_match, compare_to_reference, cotangent_for, forward_backward, make_input,
    assert_reference_backend_matches, assert_same_bits_at_1_and_2_threads,
)
from vaefast.ops import reference

# (x shape, log_gamma shape): every layout the contract names, on the sizes that matter to the kernels:
# [0, 7] empty batch, [7, 0] no features, [2, 20000] rows over three 8192-element reduction chunks, [4, 13]
# features not a multiple of the 8-lane vectors, [6, 6] where a [6] log_gamma is per feature and [6, 1] per
# sample (B == D), [130, 9] per-feature gradients over three 64-row blocks, a 1-D x with one feature per
# sample. log_gamma broadcasts against x by numpy's rules, nothing else.
CASES = [
    ((1, 5), ()), ((1, 5), (1,)), ((1, 5), (1, 5)), ((1, 5), (5,)),
    ((0, 7), ()), ((0, 7), (0, 1)), ((0, 7), (1, 7)), ((0, 7), (0, 7)),
    ((7, 0), ()), ((7, 0), (7, 1)), ((7, 0), (1, 0)),
    ((2, 20000), ()), ((2, 20000), (2, 1)), ((2, 20000), (1, 20000)), ((2, 20000), (2, 20000)),
    ((5, 3, 4, 4), ()), ((5, 3, 4, 4), (1, 1, 1, 1)), ((5, 3, 4, 4), (1, 3, 1, 1)), ((5, 3, 4, 4), (1, 3, 4, 4)),
    ((5, 3, 4, 4), (3, 1, 1)), ((5, 3, 4, 4), (4,)), ((5, 3, 4, 4), (5, 3, 1, 4)), ((5, 3, 4, 4), (5, 1, 1, 1)),
    ((5, 3, 4, 4), (5, 3, 4, 4)),
    ((4, 13), (13,)), ((4, 13), (4, 1)), ((4, 13), (1, 1)), ((6, 6), (6,)), ((6, 6), (6, 1)), ((6, 6), (1, 6)), ((130, 9), (1, 9)),
    ((6,), ()), ((6,), (6,)),
]


def make_triple(x_shape, log_gamma_shape, layout, dtype=torch.float64, generator=None, log_gamma_fill=None,
                residual_scale=1.0):
    """[x, x_hat, log_gamma] and their views; x_hat = x + residual_scale * N(0, 1)."""
    x, x_view = make_input(x_shape, layout, generator=generator)
    residual, _ = make_input(x_shape, layout, generator=generator)
    x, x_hat = x.to(dtype), (x + residual_scale * residual).to(dtype)
    log_gamma, log_gamma_view = make_input(log_gamma_shape, layout, dtype=dtype, generator=generator,
                                           fill=log_gamma_fill)
    return [x, x_hat, log_gamma], [x_view, x_view, log_gamma_view]


def nll_magnitudes(x, x_hat, log_gamma, *, cotangent, reduction):
    """Magnitudes the NLL and d/d log_gamma pass through before cancelling, for the earned floors (float64).

    A per-sample value adds sum r^2 / (2 gamma^2) >= 0 to sum (log_gamma + 0.5 log 2 pi), which is negative
    for log_gamma < -0.92; d/d log_gamma sums g * (1 - r^2 / gamma^2), near 0 for a calibrated gamma. Any
    float32 evaluation loses a few ulps of these magnitudes, however small the result."""
    if x.numel() == 0:
        return None
    aligned = log_gamma
    scaled_squares = (x - x_hat).pow(2) * torch.exp(-2 * aligned)  # r^2 / gamma^2, x's shape
    per_sample = reference.sum_per_sample(0.5 * scaled_squares + (aligned + reference.HALF_LOG_2PI).abs())
    batch = x.shape[0]
    weights = {"none": cotangent, "sum": cotangent.expand(batch), "mean": cotangent.expand(batch) / batch}
    per_element = weights[reduction].abs().reshape(-1, *([1] * (x.dim() - 1))) * (1 + scaled_squares)
    per_value = per_element.sum() if aligned.dim() == 0 else per_element.sum_to_size(aligned.shape)
    value_scale = float({"none": per_sample.max(), "sum": per_sample.sum(), "mean": per_sample.mean()}[reduction])
    return [value_scale, None, None, float(per_value.max())]


def compare_nll(bases, views, reduction, dtype, **kwargs):
    compare_to_reference(vaefast.gaussian_nll, reference.gaussian_nll, bases, views, reduction, dtype,
                         magnitudes=nll_magnitudes, **kwargs)


@pytest.mark.parametrize("layout, reduction", LAYOUT_REDUCTIONS, ids="-".join)
@pytest.mark.parametrize("x_shape, log_gamma_shape", CASES, ids=str)
def test_matches_float64_reference(x_shape, log_gamma_shape, layout, reduction):
    bases, views = make_triple(x_shape, log_gamma_shape, layout)
    compare_nll(bases, views, reduction, torch.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_and_no_features(reduction):
    """B = 0: empty, 0 or NaN (torch's mean of nothing); no features: an NLL of zero per sample."""
    empty = vaefast.gaussian_nll(torch.randn(0, 7), torch.randn(0, 7), torch.randn(()), reduction=reduction)
    expected_empty = {"none": torch.empty(0), "sum": torch.tensor(0.0), "mean": torch.tensor(math.nan)}
    torch.testing.assert_close(empty, expected_empty[reduction], equal_nan=True)
    for log_gamma in (torch.randn(()), torch.randn(7, 1), torch.randn(1, 0)):
        featureless = vaefast.gaussian_nll(torch.randn(7, 0), torch.randn(7, 0), log_gamma, reduction=reduction)
        assert bool((featureless == 0).all()) and featureless.shape == ((7,) if reduction == "none" else ())


@pytest.mark.parametrize("x_shape, log_gamma_shape", [((4, 3, 5), ()), ((4, 3, 5), (4, 1, 1)), ((4, 3, 5), (1, 3, 5)),
                                                      ((4, 3, 5), (3, 1)), ((4, 3, 5), (4, 3, 5))], ids=str)
def test_matches_torch_distributions(x_shape, log_gamma_shape):
    """An independent formula: -Normal(x_hat, gamma).log_prob(x), summed per sample."""
    bases, views = make_triple(x_shape, log_gamma_shape, "contiguous")

    def via_distributions(x, x_hat, log_gamma, reduction):
        gamma = torch.exp(log_gamma).expand(x.shape)
        nll = -Normal(x_hat, gamma).log_prob(x)
        return reference.reduce_per_sample(nll.reshape(x.shape[0], -1).sum(dim=1), reduction)

    for reduction in REDUCTIONS:
        cotangent = cotangent_for(x_shape[0], reduction)
        actual = forward_backward(vaefast.gaussian_nll, bases, views, cotangent, reduction=reduction)
        expected = forward_backward(via_distributions, bases, views, cotangent, reduction=reduction)
        for got, want in zip(actual, expected):
            assert_close64(got, want)


@pytest.mark.parametrize("reduction", ("none", "mean"))
@pytest.mark.parametrize("x_shape, log_gamma_shape, layout", [
    ((4, 37), (), "contiguous"), ((4, 37), (4, 1), "step"), ((2, 20000), (), "contiguous"),
    ((2, 20000), (1, 20000), "contiguous"), ((3, 4, 5, 6), (4, 1, 1), "step"),
    ((3, 4, 5, 6), (3, 4, 5, 6), "transposed"),
], ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
def test_low_precision_within_earned_tolerance(dtype, x_shape, log_gamma_shape, layout, reduction):
    """Off the float64 truth by at most about twice what the reference loses in the same dtype.

    Sized for float16: residuals ~ 0.3 N(0, 1) and log_gamma ~ 0.3 N(0, 1) keep every per-pixel term below
    2.5 even 5 sigma out, so a sum over 20000 pixels stays below 65504; a 0.1-scaled upstream gradient
    keeps d/d log_gamma of a scalar log_gamma (about 40000 * grad) in range too."""
    bases, views = make_triple(x_shape, log_gamma_shape, layout, log_gamma_fill=lambda t: 0.3 * t,
                               residual_scale=0.3)
    compare_nll(bases, views, reduction, dtype, cotangent_scale=0.1)


@pytest.mark.parametrize("log_gamma_shape", [(1, 200000), (200000,)], ids=str)
def test_long_rows_per_feature_log_gamma_within_earned_tolerance(log_gamma_shape):
    """One log_gamma per pixel over 200000 pixels: the per-sample sum of log_gamma_j + 0.5 log(2 pi) must be
    as accurate as the float32 reference's (a running float32 sum over the row is not: its error grows
    with the row length, 10 to 1000 times the reference's here). The per-pixel log_gamma holds one random
    value everywhere, as at initialisation (the official code starts at 0), where a running sum's rounding
    errors all lean the same way; small residuals (a decoder close to the data) leave that sum as most of
    the value."""
    bases, views = make_triple((2, 200000), log_gamma_shape, "contiguous", torch.float32,
                               log_gamma_fill=lambda t: torch.full_like(t, 0.3 * float(torch.randn(()))),
                               residual_scale=0.01)
    compare_nll(bases, views, "none", torch.float32)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("log_gamma_shape", [(), (3, 1), (1, 16)], ids=str)
def test_large_residuals_with_large_gamma_stay_finite(dtype, log_gamma_shape):
    """Residuals of 1e19 to 1.5e19 are representable in float32 and bfloat16 and so are their squares (1e38 <
    3.4e38); divided by gamma^2 = exp(40) each term is about 1e21, which the reference sums without
    trouble. Summing the unscaled squares first would pass float32's range and give inf."""
    x = torch.randn(3, 16, dtype=torch.float64)
    x_hat = x + 1e19 * (1 + 0.5 * torch.rand(3, 16, dtype=torch.float64))  # squares <= 2.25e38
    log_gamma = 20 - torch.rand(log_gamma_shape, dtype=torch.float64)
    views = [lambda t: t] * 3
    compare_nll([x, x_hat, log_gamma], views, "none", dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("x_shape, log_gamma_shape, layout", [
    ((3, 4), (), "contiguous"), ((3, 4), (1,), "step"), ((3, 4), (1, 4), "transposed"),
    ((3, 4), (4,), "contiguous"), ((3, 4), (3, 4), "step"), ((3, 4), (3, 1), "contiguous"),
    ((2, 3, 2, 2), (3, 1, 1), "contiguous"), ((2, 3, 2, 2), (1, 3, 2, 2), "transposed"),
    ((2, 3, 2, 2), (2, 3, 2, 2), "contiguous"), ((2, 3, 2, 2), (2, 3, 1, 2), "step"), ((2, 3, 2, 2), (2, 1, 1, 1), "step"),
], ids=str)
def test_gradcheck(x_shape, log_gamma_shape, layout, reduction):
    """Finite differences in float64 for d/dx, d/dx_hat and d/dlog_gamma, every log_gamma layout."""
    bases, views = make_triple(x_shape, log_gamma_shape, layout, log_gamma_fill=lambda t: 0.3 * t)
    for base in bases:
        base.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *leaves: vaefast.gaussian_nll(*(view(t) for view, t in zip(views, leaves)), reduction=reduction),
        tuple(bases),
    )


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@pytest.mark.parametrize("log_gamma_shape, layout", [((), "contiguous"), ((2, 1, 1, 1), "contiguous"), ((3, 1, 1), "step"),
                                                     ((1, 3, 4, 5), "transposed"), ((2, 3, 1, 5), "contiguous")],
                         ids=str)
def test_opcheck(dtype, log_gamma_shape, layout):
    bases, views = make_triple((2, 3, 4, 5), log_gamma_shape, layout, dtype)
    x, x_hat, log_gamma = (view(base) for view, base in zip(views, bases))
    for reduction in ("none", "sum", "mean"):  # the batch reduction runs inside the op
        torch.library.opcheck(torch.ops.vaefast.gaussian_nll,
                              (*(t.detach().requires_grad_() for t in (x, x_hat, log_gamma)), reduction))
    grad = torch.randn(2, dtype=dtype)
    torch.library.opcheck(torch.ops.vaefast.gaussian_nll_backward, (grad, x, x_hat, log_gamma))


def nll_loss(nll, x, x_hat, log_gamma_scalar, log_gamma_feature):
    """A small training loss around an NLL implementation: a shared-scalar and a per-feature term."""
    return nll(x, x_hat, log_gamma_scalar) + nll(x, x_hat, log_gamma_feature, reduction="sum") / x.shape[0]


def test_torch_compile_fullgraph_matches_eager():
    # backend="inductor": this CPU machine has the C++ compiler it needs (about 10 s for this graph).
    compiled = torch.compile(lambda *args: nll_loss(vaefast.gaussian_nll, *args), fullgraph=True, backend="inductor")
    bases = [torch.randn(6, 40), torch.randn(6, 40), torch.randn(()), 0.3 * torch.randn(1, 40)]
    views = [lambda t: t] * 4
    cotangent = torch.randn(())
    actual = forward_backward(compiled, bases, views, cotangent)
    eager = forward_backward(lambda *args: nll_loss(vaefast.gaussian_nll, *args), bases, views, cotangent)
    reference32 = forward_backward(lambda *args: nll_loss(reference.gaussian_nll, *args), bases, views, cotangent)
    exact = forward_backward(lambda *args: nll_loss(reference.gaussian_nll, *args), [b.double() for b in bases],
                             views, cotangent)
    # Floors follow the magnitudes each NLL term passes through before cancelling (nll_magnitudes).
    x, x_hat, log_gamma_scalar, log_gamma_feature = (b.double() for b in bases)
    scalar_term = nll_magnitudes(x, x_hat, log_gamma_scalar, cotangent=cotangent.double(), reduction="mean")
    feature_term = nll_magnitudes(x, x_hat, log_gamma_feature, cotangent=cotangent.double() / x.shape[0],
                                  reduction="sum")
    scales = [scalar_term[0] + feature_term[0] / x.shape[0], None, None, scalar_term[3], feature_term[3]]
    # Compiled within twice eager's own float32 error, and eager within twice the reference's.
    assert_all_match(actual, eager, exact, scales)
    assert_all_match(eager, reference32, exact, scales)


# The spellings of log_gamma the contract accepts (numpy broadcasting against x), grouped by the kernel
# layout they map to (with B = 1 a "full" log_gamma has a leading 1 and runs as per-feature).
KERNEL_LAYOUTS = {
    "scalar": ("scalar", "one_element"),
    "per_sample": ("per_sample",),
    "per_feature": ("per_feature", "last_dim", "per_channel"),
    "full": ("full",),
}


def log_gamma_shape_for(layout, x_shape):
    batch, *features = x_shape
    return {
        "scalar": (),
        "one_element": (1,) * len(x_shape),
        "per_sample": (batch, *([1] * len(features))),
        "per_feature": (1, *features),
        "last_dim": (features[-1],),
        "per_channel": (features[0], *([1] * (len(features) - 1))),
        "full": tuple(x_shape),
    }[layout]


SPECIALS = st.lists(
    st.tuples(st.sampled_from(("x", "x_hat", "log_gamma")), st.integers(0, 2**20),
              st.sampled_from((math.nan, math.inf, -math.inf))),
    max_size=2,
)


@st.composite
def nll_cases(draw, kernel_layout):
    """A Case with hypothesis-chosen shapes, layouts, dtype and scales; the values come from a torch generator
    seeded by hypothesis, so a failing draw replays exactly."""
    batch = draw(st.integers(0, 6))
    features = draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))
    x_shape = (batch, *features)
    log_gamma_layout = draw(st.sampled_from(KERNEL_LAYOUTS[kernel_layout]))
    log_gamma_shape = log_gamma_shape_for(log_gamma_layout, x_shape)
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from((torch.float32, torch.float64)))
    reduction = draw(st.sampled_from(REDUCTIONS))
    # Residuals from 1e-20 (squares far below float32's normal range) to 1e6, around data of any scale;
    # with log_gamma in [-20, 20] every term stays below 1e30 in float32.
    x_scale = draw(st.sampled_from((0.0, 1e-20, 1.0, 1e6)))
    residual_scale = draw(st.sampled_from((0.0, 1e-20, 1e-3, 1.0, 1e6)))
    low = draw(st.floats(-20, 20))
    high = min(low + draw(st.sampled_from((0.0, 1e-3, 1.0, 40.0))), 20.0)
    if dtype == torch.float32:
        # The float32 reference's d/d log_gamma divides r^2 by (2 gamma^2)^2 (autograd of a division), which
        # passes 3.4e38 long before the result does; keep r^2 / (4 gamma^4) below 1e36 for residuals up to
        # 5 sigma (plus x's rounding) so that the reference it is judged against stays finite.
        largest_residual = 5 * (residual_scale + 2 * torch.finfo(torch.float32).eps * x_scale)
        if largest_residual > 0:
            floor = math.log(largest_residual**2 / 4e36) / 4
            low, high = max(low, floor), max(high, floor)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**63 - 1)))
    x, view = make_input(x_shape, layout, generator=generator, fill=lambda t: t * x_scale)
    residual, _ = make_input(x_shape, layout, generator=generator, fill=lambda t: t * residual_scale)
    x_hat = x + residual
    log_gamma, log_gamma_view = make_input(
        log_gamma_shape, layout, generator=generator,
        fill=lambda t: low + (high - low) * torch.rand(t.shape, dtype=t.dtype, generator=generator),
    )
    tensors = {"x": x, "x_hat": x_hat, "log_gamma": log_gamma}
    specials = draw(SPECIALS)
    for name, index, value in specials:
        if tensors[name].numel():
            tensors[name].view(-1)[index % tensors[name].numel()] = value
    description = (f"x {list(x_shape)} log_gamma {log_gamma_layout} {list(log_gamma_shape)} {layout} {dtype} "
                   f"reduction={reduction} x_scale={x_scale:g} residual_scale={residual_scale:g} "
                   f"log_gamma in [{low:g}, {high:g}] specials={specials}")
    return Case(description, [x.to(dtype), x_hat.to(dtype), log_gamma.to(dtype)], [view, view, log_gamma_view],
                reduction, dtype, bool(specials), generator)


# One property per kernel layout, so that a failure in one does not hide the others (hypothesis stops at the
# first failing draw).
@pytest.mark.parametrize("kernel_layout", KERNEL_LAYOUTS)
@given(data=st.data())
def test_property_matches_reference(kernel_layout, data):
    case = data.draw(nll_cases(kernel_layout), label="case")
    if case.has_specials:
        # NaN and inf: the per-sample values must carry exactly the reference's NaN/inf pattern.
        args = [view(t) for view, t in zip(case.views, case.bases)]
        actual = vaefast.gaussian_nll(*args, reduction=case.reduction)
        assert_all_match([actual], [reference.gaussian_nll(*args, reduction=case.reduction)],
                         [reference.gaussian_nll(*(t.double() for t in args), reduction=case.reduction)])
    else:
        compare_nll(case.bases, case.views, case.reduction, case.dtype, generator=case.generator)


@pytest.mark.parametrize("x_shape, log_gamma_shape", [
    ((2, 20000), ()), ((2, 20000), (1, 20000)), ((150, 300), (1, 300)), ((150, 300), (150, 1)),
    ((5, 3, 4, 4), (3, 1, 1)), ((5, 3, 4, 4), (5, 3, 4, 4)),
], ids=str)
def test_bit_identical_across_thread_counts(x_shape, log_gamma_shape):
    bases, views = make_triple(x_shape, log_gamma_shape, "contiguous", torch.float32)
    cotangent = cotangent_for(x_shape[0], "none")
    assert_same_bits_at_1_and_2_threads(
        lambda: forward_backward(vaefast.gaussian_nll, bases, views, cotangent, reduction="none"))


def test_reference_backend_subprocess(tmp_path):
    cases = []
    for x_shape, log_gamma_shape, reduction in [((4, 3, 5), (), "none"), ((4, 3, 5), (3, 1), "mean"),
                                                ((4, 6), (4, 1), "sum"), ((0, 7), (1, 7), "mean")]:
        args = [torch.randn(x_shape, dtype=torch.float64), torch.randn(x_shape, dtype=torch.float64),
                torch.randn(log_gamma_shape, dtype=torch.float64)]
        cases.append({"args": args, "reduction": reduction, "cotangent": cotangent_for(x_shape[0], reduction)})
    assert_reference_backend_matches("gaussian_nll", cases, tmp_path)


@pytest.mark.parametrize("batch, features", [(4, 7), (5, 5)])
def test_log_gamma_broadcasts_by_numpy_rules(batch, features):
    """[B, 1] is one value per sample and [D] one per feature, also when D == B, each checked against the
    formula written out element by element; a [B] log_gamma with D != B is refused, saying how to write a
    per-sample one."""
    x, x_hat = torch.randn(batch, features, dtype=torch.float64), torch.randn(batch, features, dtype=torch.float64)
    log_gamma = torch.randn(batch, 1, dtype=torch.float64, requires_grad=True)
    out = vaefast.gaussian_nll(x, x_hat, log_gamma, reduction="none")
    expected = torch.stack([
        ((x[b] - x_hat[b]) ** 2).sum() / (2 * math.exp(2 * float(log_gamma[b, 0].detach())))
        + features * (float(log_gamma[b, 0].detach()) + 0.5 * math.log(2 * math.pi))
        for b in range(batch)
    ])
    assert_close64(out.detach(), expected)
    (grad,) = torch.autograd.grad(out.sum(), log_gamma)
    residuals = ((x - x_hat) ** 2).sum(dim=1, keepdim=True) * torch.exp(-2 * log_gamma.detach())
    assert grad.shape == (batch, 1)
    assert_close64(grad, features - residuals)  # REFERENCE.md: d/d log_gamma = D - sum (x - x_hat)^2 / gamma^2

    per_feature = torch.randn(features, dtype=torch.float64, requires_grad=True)
    out = vaefast.gaussian_nll(x, x_hat, per_feature, reduction="none")
    expected = torch.tensor([
        sum((float(x[b, j] - x_hat[b, j]) ** 2 / (2 * math.exp(2 * float(per_feature[j].detach())))
             + float(per_feature[j].detach()) + 0.5 * math.log(2 * math.pi)) for j in range(features))
        for b in range(batch)
    ], dtype=torch.float64)
    assert_close64(out.detach(), expected)
    (grad,) = torch.autograd.grad(out.sum(), per_feature)
    assert grad.shape == (features,)
    assert_close64(grad, (1 - (x - x_hat) ** 2 * torch.exp(-2 * per_feature.detach())).sum(dim=0))

    if batch != features:
        with pytest.raises(ValueError, match=rf"write log_gamma.reshape\(\[{batch}, 1\]\)"):
            vaefast.gaussian_nll(x, x_hat, torch.randn(batch, dtype=torch.float64))


@pytest.mark.parametrize("value", [0.0, -1.5, 2, float("inf")])
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_python_number_log_gamma(value, dtype):
    """A Python number is a 0-dim log_gamma of x's device and dtype: the same result as that tensor."""
    x, x_hat = torch.randn(5, 6, dtype=dtype), torch.randn(5, 6, dtype=dtype, requires_grad=True)
    for reduction in REDUCTIONS:
        out = vaefast.gaussian_nll(x, x_hat, value, reduction=reduction)
        assert out.dtype == dtype
        torch.testing.assert_close(out, vaefast.gaussian_nll(x, x_hat, torch.tensor(value, dtype=dtype),
                                                             reduction=reduction), equal_nan=True, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(vaefast.gaussian_nll(x, x_hat, value), x_hat)
    torch.testing.assert_close(grad, (x_hat.detach() - x) / (x.shape[0] * math.exp(2 * value)),
                               rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


def test_mixed_dtypes_promote_like_torch():
    x32 = torch.randn(3, 4, dtype=torch.float32, requires_grad=True)
    x_hat64 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    log_gamma32 = torch.randn((), dtype=torch.float32, requires_grad=True)
    out = vaefast.gaussian_nll(x32, x_hat64, log_gamma32, reduction="none")
    assert out.dtype == torch.float64
    assert_close64(out.detach(), reference.gaussian_nll(x32.detach().double(), x_hat64.detach(),
                                                        log_gamma32.detach().double(), reduction="none"))
    out.sum().backward()
    assert (x32.grad.dtype, x_hat64.grad.dtype, log_gamma32.grad.dtype) == (torch.float32, torch.float64, torch.float32)

    out = vaefast.gaussian_nll(torch.randn(3, 4, dtype=torch.bfloat16), torch.randn(3, 4, dtype=torch.float16),
                               torch.zeros(4, dtype=torch.float32))
    assert out.dtype == torch.float32
    out = vaefast.gaussian_nll(torch.randn(3, 4), torch.randn(3, 4), torch.zeros((), dtype=torch.float64))
    assert out.dtype == torch.float64


def zeros(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


# (x, x_hat, log_gamma, reduction, expected error, start of its message): every message names the argument.
BAD_ARGUMENTS = [
    (zeros(3, 4), zeros(3, 5), zeros(), "mean", ValueError, r"^x_hat must have the shape of x"),
    (zeros(3, 4), zeros(4, 3), zeros(), "mean", ValueError, r"^x_hat must have the shape of x"),
    (zeros(3, 4), zeros(3, 4), zeros(3, 5), "mean", ValueError, r"^log_gamma must broadcast to x \[3, 4\]"),
    (zeros(3, 4), zeros(3, 4), zeros(5), "mean", ValueError, r"^log_gamma must broadcast to x \[3, 4\]"),
    (zeros(3, 4), zeros(3, 4), zeros(2, 3, 4), "mean", ValueError, r"^log_gamma must broadcast to x \[3, 4\]"),
    (zeros(3, 4), zeros(3, 4), zeros(1, 1, 1), "mean", ValueError, r"^log_gamma must broadcast to x \[3, 4\]"),
    (zeros(3, 4), zeros(3, 4), zeros(3), "mean", ValueError, r"per sample \[3, 1\].*write log_gamma.reshape"),
    (zeros(), zeros(), zeros(), "mean", ValueError, r"^x must have at least 1 dim"),
    (zeros(3, 4, dtype=torch.int64), zeros(3, 4), zeros(), "mean", TypeError, r"^x must be a floating"),
    (zeros(3, 4), zeros(3, 4, dtype=torch.uint8), zeros(), "mean", TypeError, r"^x_hat must be a floating"),
    (zeros(3, 4), zeros(3, 4), zeros(dtype=torch.int64), "mean", TypeError, r"^log_gamma must be a floating"),
    (zeros(3, 4), zeros(3, 4), zeros(dtype=torch.bool), "mean", TypeError, r"^log_gamma must be a floating"),
    (zeros(3, 4), zeros(3, 4, dtype=torch.complex64), zeros(), "mean", TypeError, r"^x_hat must be a floating"),
    (zeros(3, 4), zeros(3, 4), zeros(dtype=torch.complex128), "mean", TypeError, r"^log_gamma must be a floating"),
    ([[0.0]], zeros(1, 1), zeros(), "mean", TypeError, r"^x must be a torch.Tensor"),
    (zeros(1, 1), None, zeros(), "mean", TypeError, r"^x_hat must be a torch.Tensor"),
    (zeros(1, 1), zeros(1, 1), "0.0", "mean", TypeError, r"^log_gamma must be a torch.Tensor or a Python number"),
    (zeros(1, 1), zeros(1, 1), True, "mean", TypeError, r"^log_gamma must be a torch.Tensor or a Python number"),
    (zeros(3, 4), zeros(3, 4), zeros(), "batchmean", ValueError, r"^reduction must be one of"),
]


@pytest.mark.parametrize("x, x_hat, log_gamma, reduction, error, match", BAD_ARGUMENTS,
                         ids=[f"{i}-{case[-1]}" for i, case in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_raise_naming_the_argument(x, x_hat, log_gamma, reduction, error, match):
    with pytest.raises(error, match=match):
        vaefast.gaussian_nll(x, x_hat, log_gamma, reduction=reduction)


def test_registered_op_checks_its_arguments():
    """A direct torch.ops call skips the Python checks; the C++ ones must still refuse what the kernel
    cannot read safely, naming the argument."""
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="x_hat must have the shape of x"):
        torch.ops.vaefast.gaussian_nll(x, torch.randn(3, 5), torch.zeros(()))
    with pytest.raises(RuntimeError, match="log_gamma must have x's device and dtype"):
        torch.ops.vaefast.gaussian_nll(x, x, torch.zeros((), dtype=torch.float64))
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.vaefast.gaussian_nll_backward(torch.randn(2), x, x, torch.zeros(()))


@pytest.mark.parametrize("log_gamma_shape", [(3, 5), (2, 4), (3,)], ids=str)
def test_registered_op_names_log_gamma_when_not_broadcastable(log_gamma_shape):
    """The C++ check has a message naming log_gamma and the accepted layouts; it must be the one raised."""
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match=r"log_gamma must broadcast to x \[3, 4\]"):
        torch.ops.vaefast.gaussian_nll(x, x, torch.zeros(log_gamma_shape))
    with pytest.raises(RuntimeError, match=r"log_gamma must broadcast to x \[3, 4\]"):
        torch.ops.vaefast.gaussian_nll_backward(torch.randn(3), x, x, torch.zeros(log_gamma_shape))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to put the arguments on two devices")
def test_different_devices_raise():
    with pytest.raises(ValueError, match=r"^log_gamma is on"):
        vaefast.gaussian_nll(torch.randn(3, 4), torch.randn(3, 4), torch.zeros((), device="cuda"))
