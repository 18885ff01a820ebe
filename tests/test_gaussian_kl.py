"""Tests of vaefast.gaussian_kl: values and gradients against the float64 reference (vaefast.ops.reference)
and against torch.distributions, earned tolerances in float32/float16/bfloat16, gradcheck, opcheck,
torch.compile, hypothesis properties (extreme logvar, NaN/inf), determinism across thread counts, the
VAEFAST_BACKEND=reference path and argument validation. Inputs are fresh random draws on every run."""
import decimal
import math

import pytest
import torch
from hypothesis import given, strategies as st
from torch.distributions import Normal, kl_divergence

import vaefast
from tests.conftest import assert_close64
from tests.op_testing import (
    LAYOUT_REDUCTIONS, LAYOUTS, Case, REDUCTIONS, assert_all_match, compare_to_reference, cotangent_for, forward_backward, make_input,
    assert_reference_backend_matches, assert_same_bits_at_1_and_2_threads,
)
from vaefast.ops import reference

# [1, 5]: one sample; [0, 7]: empty batch; [7, 0]: no features; [2, 20000]: rows spanning three 8192-element
# reduction chunks; [4, 13]: features not a multiple of the 8-lane vectors; [6]: 1-D, one feature each.
SHAPES = [(1, 5), (0, 7), (7, 0), (2, 20000), (5, 3, 4, 4), (4, 13), (6,)]


def make_pair(shape, layout, dtype=torch.float64, generator=None):
    mu, view = make_input(shape, layout, dtype=dtype, generator=generator)
    logvar, _ = make_input(shape, layout, dtype=dtype, generator=generator)
    return [mu, logvar], [view, view]


@pytest.mark.parametrize("layout, reduction", LAYOUT_REDUCTIONS, ids="-".join)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_reference(shape, layout, reduction):
    bases, views = make_pair(shape, layout)
    compare_to_reference(vaefast.gaussian_kl, reference.gaussian_kl, bases, views, reduction, torch.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_and_no_features(reduction):
    """B = 0: empty, 0 or NaN (torch's mean of nothing); no features: a KL of zero per sample."""
    empty = vaefast.gaussian_kl(torch.randn(0, 7), torch.randn(0, 7), reduction=reduction)
    expected_empty = {"none": torch.empty(0), "sum": torch.tensor(0.0), "mean": torch.tensor(math.nan)}
    torch.testing.assert_close(empty, expected_empty[reduction], equal_nan=True)
    featureless = vaefast.gaussian_kl(torch.randn(7, 0), torch.randn(7, 0), reduction=reduction)
    assert bool((featureless == 0).all()) and featureless.shape == ((7,) if reduction == "none" else ())


def test_matches_torch_distributions():
    """An independent formula: torch.distributions' closed-form KL of two Normals, summed per sample."""
    shape = (4, 3, 5)
    mu, logvar = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    identity = [lambda t: t, lambda t: t]

    def via_distributions(mu, logvar, reduction):
        prior = Normal(torch.zeros_like(mu), torch.ones_like(mu))
        kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), prior)
        return reference.reduce_per_sample(kl.reshape(kl.shape[0], -1).sum(dim=1), reduction)

    for reduction in REDUCTIONS:
        cotangent = cotangent_for(shape[0], reduction)
        actual = forward_backward(vaefast.gaussian_kl, [mu, logvar], identity, cotangent, reduction=reduction)
        expected = forward_backward(via_distributions, [mu, logvar], identity, cotangent, reduction=reduction)
        for got, want in zip(actual, expected):
            assert_close64(got, want)


def exp_parts_exact(values):
    """(e^v - 1 - v, e^v - 1) of each value (a float64 tensor), with 50-digit decimal arithmetic: exact to
    float64 and beyond, with none of the cancellation a float formula has near v = 0."""
    with decimal.localcontext() as context:
        context.prec = 50
        pairs = []
        for v in values.tolist():
            expm1 = decimal.Decimal(v).exp() - 1
            pairs.append((float(expm1 - decimal.Decimal(v)), float(expm1)))
    return torch.tensor(pairs, dtype=torch.float64).unbind(1)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_accurate_relative_to_the_kl_where_logvar_is_near_zero(dtype):
    """Near logvar = 0 the KL term is ~logvar^2 / 4 while exp(logvar) - 1 and logvar are each ~logvar: the
    textbook expm1(logvar) - logvar keeps only what survives the cancellation (relative error ~eps/|logvar|).
    The op's per-sample KL (one feature: one term each) is accurate relative to itself at every logvar, and
    its logvar gradient, 0.5 expm1(logvar), too; the textbook form fails the same bound (the test can fail)."""
    eps = torch.finfo(dtype).eps
    count = 4096
    magnitude = 10.0 ** (torch.rand(count, 1, dtype=torch.float64) * 8 - 7)  # log-uniform on [1e-7, 10]
    logvar = (magnitude * torch.where(torch.rand(count, 1) < 0.5, -1.0, 1.0).double()).to(dtype)
    mu = torch.zeros_like(logvar)
    logvar.requires_grad_(True)
    kl = vaefast.gaussian_kl(mu, logvar, reduction="none")
    (grad_logvar,) = torch.autograd.grad(kl.sum(), logvar)
    minus_identity, expm1 = exp_parts_exact(logvar.detach().double().squeeze(1))
    exact, exact_grad = 0.5 * minus_identity, 0.5 * expm1
    # Per term: within 6.5 eps of itself (the derivation in csrc/tests/test_elementwise_math.cpp); 2x that.
    relative = ((kl.double() - exact).abs() / exact).max().item()
    assert relative <= 13 * eps, f"{dtype}: worst relative error {relative / eps:.1f} eps"
    relative_grad = ((grad_logvar.double().squeeze(1) - exact_grad).abs() / exact_grad.abs()).max().item()
    assert relative_grad <= 2 * 2.6 * eps, f"{dtype}: gradient's worst relative error {relative_grad / eps:.1f} eps"
    textbook = 0.5 * (torch.expm1(logvar.detach()) - logvar.detach()).squeeze(1)
    assert ((textbook.double() - exact).abs() / exact).max().item() > 13 * eps


@pytest.mark.parametrize("reduction", ("none", "mean"))
@pytest.mark.parametrize("shape, layout", [((4, 37), "contiguous"), ((2, 20000), "contiguous"),
                                           ((3, 4, 5, 6), "step")], ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
def test_low_precision_within_earned_tolerance(dtype, shape, layout, reduction):
    """Off the float64 truth by at most about twice what the reference loses in the same dtype."""
    bases, views = make_pair(shape, layout)
    compare_to_reference(vaefast.gaussian_kl, reference.gaussian_kl, bases, views, reduction, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, layout", [((3, 4), "contiguous"), ((2, 3, 2), "transposed"), ((3, 5), "step")],
                         ids=str)
def test_gradcheck(shape, layout, reduction):
    (mu, logvar), (view, _) = make_pair(shape, layout)
    mu.requires_grad_()
    logvar.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda mu, logvar: vaefast.gaussian_kl(view(mu), view(logvar), reduction=reduction), (mu, logvar)
    )


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_opcheck(dtype):
    for shape, layout in [((3, 5), "contiguous"), ((2, 3, 4), "transposed")]:
        (mu, logvar), (view, _) = make_pair(shape, layout, dtype)
        mu, logvar = view(mu), view(logvar)
        for reduction in ("none", "sum", "mean"):  # the batch reduction runs inside the op
            torch.library.opcheck(torch.ops.vaefast.gaussian_kl,
                                  (mu.detach().requires_grad_(), logvar.detach().requires_grad_(), reduction))
        grad = torch.randn(shape[0], dtype=dtype)
        torch.library.opcheck(torch.ops.vaefast.gaussian_kl_backward, (grad, mu, logvar))


def _reduction_cases(batch, dtype):
    """(op name, fn(reduction) -> that op's KL or NLL) on fresh inputs whose per-sample values span six
    decades, so that a plain float32 running sum of them would lose digits."""
    scale = torch.logspace(-3, 3, batch, dtype=torch.float64)[torch.randperm(batch)].unsqueeze(1)
    mu = (torch.randn(batch, 3, dtype=torch.float64) * scale.sqrt()).to(dtype)
    logvar = torch.randn(batch, 3, dtype=dtype)
    x = torch.rand(batch, 3, dtype=dtype)
    x_hat = (torch.randn(batch, 3, dtype=torch.float64) * scale.sqrt()).to(dtype)
    log_gamma = torch.randn((), dtype=dtype)
    return [("gaussian_kl", lambda reduction: vaefast.gaussian_kl(mu, logvar, reduction=reduction)),
            ("gaussian_nll", lambda reduction: vaefast.gaussian_nll(x, x_hat, log_gamma, reduction=reduction)),
            ("reparameterize_kl", lambda reduction: vaefast.reparameterize_kl(mu, logvar, reduction=reduction)[1])]


@pytest.mark.skipif(not vaefast._backend.compiled("gaussian_kl", torch.device("cpu")),
                    reason="the batch reduction inside the op is the compiled kernels' (the reference uses torch's)")
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_batch_reduction_inside_the_ops_is_the_rounded_exact_sum(dtype):
    """The loss ops reduce over the batch inside the op (no second autograd node): "sum" and "mean" must be
    the exact sum (math.fsum) of the op's own per-sample values, rounded to the dtype -- for float32
    exactly that, for float64 within 2 ulp (the compensated double sum is not correctly rounded)."""
    batch = 4099
    for name, loss in _reduction_cases(batch, dtype):
        per_sample = loss("none").double().tolist()
        exact_sum = math.fsum(per_sample)
        for reduction, expected in (("sum", exact_sum), ("mean", exact_sum / batch)):
            got = loss(reduction)
            assert got.shape == () and got.dtype == dtype, (name, reduction, got.shape, got.dtype)
            if dtype == torch.float32:
                assert got.item() == torch.tensor(expected, dtype=torch.float32).item(), (name, reduction)
            else:
                assert abs(got.item() - expected) <= 2 * math.ulp(expected), (name, reduction, got.item(), expected)


def kl_loss(kl, mu, logvar, weights):
    """A small training loss around a KL implementation: weighted per-sample terms plus the batch mean."""
    return (kl(mu, logvar, reduction="none") * weights).sum() + kl(mu, logvar)


def test_torch_compile_fullgraph_matches_eager():
    # backend="inductor": this CPU machine has the C++ compiler it needs (about 10 s for this graph).
    compiled = torch.compile(lambda *args: kl_loss(vaefast.gaussian_kl, *args), fullgraph=True, backend="inductor")
    shape = (6, 40)
    bases = [torch.randn(shape), torch.randn(shape), torch.randn(shape[0])]
    views = [lambda t: t] * 3
    cotangent = torch.randn(())
    actual = forward_backward(compiled, bases, views, cotangent)
    eager = forward_backward(lambda *args: kl_loss(vaefast.gaussian_kl, *args), bases, views, cotangent)
    reference32 = forward_backward(lambda *args: kl_loss(reference.gaussian_kl, *args), bases, views, cotangent)
    exact = forward_backward(lambda *args: kl_loss(reference.gaussian_kl, *args), [b.double() for b in bases],
                             views, cotangent)
    # The weighted sum cancels (weights of both signs): its floor follows sum |w_b| KL_b + mean KL, the
    # magnitude every float32 evaluation passes through, whatever order it sums in.
    mu, logvar, weights = (b.double() for b in bases)
    magnitude = float(kl_loss(reference.gaussian_kl, mu, logvar, weights.abs()) * cotangent.abs())
    scales = [magnitude, None, None, None]
    # Compiled within twice eager's own float32 error, and eager within twice the reference's.
    assert_all_match(actual, eager, exact, scales)
    assert_all_match(eager, reference32, exact, scales)


# Up to two NaN/inf values at hypothesis-chosen positions: (tensor, flat index modulo its size, value).
SPECIALS = st.lists(
    st.tuples(st.sampled_from(("mu", "logvar")), st.integers(0, 2**20),
              st.sampled_from((math.nan, math.inf, -math.inf))),
    max_size=2,
)


@st.composite
def kl_cases(draw):
    """A Case with hypothesis-chosen shape, layout, dtype and scales; the values come from a torch generator
    seeded by hypothesis, so a failing draw replays exactly."""
    batch = draw(st.integers(0, 6))
    features = draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from((torch.float32, torch.float64)))
    reduction = draw(st.sampled_from(REDUCTIONS))
    mu_scale = draw(st.sampled_from((0.0, 1e-20, 1e-3, 1.0, 1e3, 1e6)))
    # logvar ~ U(low, low + width) inside [-80, 80]: exp(80) = 5.5e34 keeps float32 sums of up to 729
    # terms finite; widths down to 1e-6 sit in the cancellation zone near logvar = 0.
    low = draw(st.floats(-80, 80))
    width = draw(st.sampled_from((0.0, 1e-6, 1e-3, 1.0, 10.0, 160.0)))
    high = min(low + width, 80.0)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**63 - 1)))
    shape = (batch, *features)
    mu, view = make_input(shape, layout, generator=generator, fill=lambda t: t * mu_scale)
    logvar, _ = make_input(shape, layout, generator=generator,
                           fill=lambda t: low + (high - low) * torch.rand(t.shape, dtype=t.dtype, generator=generator))
    specials = draw(SPECIALS)
    for name, index, value in specials:
        target = mu if name == "mu" else logvar
        if target.numel():
            target.view(-1)[index % target.numel()] = value
    description = (f"shape {list(shape)} {layout} {dtype} reduction={reduction} mu_scale={mu_scale:g} "
                   f"logvar in [{low:g}, {high:g}] specials={specials}")
    return Case(description, [mu.to(dtype), logvar.to(dtype)], [view, view], reduction, dtype, bool(specials),
                generator)


@given(kl_cases())
def test_property_matches_reference(case):
    if case.has_specials:
        # NaN and inf: the per-sample values must carry exactly the reference's NaN/inf pattern.
        args = [view(t) for view, t in zip(case.views, case.bases)]
        actual = vaefast.gaussian_kl(*args, reduction=case.reduction)
        assert_all_match([actual], [reference.gaussian_kl(*args, reduction=case.reduction)],
                         [reference.gaussian_kl(*(t.double() for t in args), reduction=case.reduction)])
    else:
        compare_to_reference(vaefast.gaussian_kl, reference.gaussian_kl, case.bases, case.views, case.reduction,
                             case.dtype, case.generator)


@pytest.mark.parametrize("shape", [(2, 20000), (5, 3, 4, 4), (300, 70)], ids=str)
def test_bit_identical_across_thread_counts(shape):
    bases, views = make_pair(shape, "contiguous", torch.float32)
    cotangent = cotangent_for(shape[0], "none")
    assert_same_bits_at_1_and_2_threads(
        lambda: forward_backward(vaefast.gaussian_kl, bases, views, cotangent, reduction="none"))


def test_reference_backend_subprocess(tmp_path):
    cases = []
    for shape, reduction in [((4, 3, 5), "none"), ((3, 9), "mean"), ((0, 7), "sum")]:
        cases.append({"args": [torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)],
                      "reduction": reduction, "cotangent": cotangent_for(shape[0], reduction)})
    assert_reference_backend_matches("gaussian_kl", cases, tmp_path)


def test_mixed_dtypes_promote_like_torch():
    mu16 = torch.randn(3, 4, dtype=torch.float16, requires_grad=True)
    logvar_bf16 = torch.randn(3, 4, dtype=torch.bfloat16, requires_grad=True)
    out = vaefast.gaussian_kl(mu16, logvar_bf16)
    assert out.dtype == torch.promote_types(torch.float16, torch.bfloat16) == torch.float32
    out.backward()
    assert mu16.grad.dtype == torch.float16 and logvar_bf16.grad.dtype == torch.bfloat16

    mu32 = torch.randn(3, 4, dtype=torch.float32)
    logvar64 = torch.randn(3, 4, dtype=torch.float64)
    out = vaefast.gaussian_kl(mu32, logvar64, reduction="none")
    assert out.dtype == torch.float64
    assert_close64(out, reference.gaussian_kl(mu32.double(), logvar64, reduction="none"))


def zeros(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


# (mu, logvar, reduction, expected error, start of its message): every message names the argument.
BAD_ARGUMENTS = [
    (zeros(3, 4), zeros(3, 5), "mean", ValueError, r"^logvar must have the shape of mu"),
    (zeros(3, 4), zeros(4, 3), "mean", ValueError, r"^logvar must have the shape of mu"),
    (zeros(), zeros(), "mean", ValueError, r"^mu must have at least 1 dim"),
    (zeros(3, 4, dtype=torch.int64), zeros(3, 4), "mean", TypeError, r"^mu must be a floating"),
    (zeros(3, 4), zeros(3, 4, dtype=torch.int32), "mean", TypeError, r"^logvar must be a floating"),
    (zeros(3, 4), zeros(3, 4, dtype=torch.bool), "mean", TypeError, r"^logvar must be a floating"),
    (zeros(3, 4, dtype=torch.complex64), zeros(3, 4), "mean", TypeError, r"^mu must be a floating"),
    ([[0.0]], zeros(1, 1), "mean", TypeError, r"^mu must be a torch.Tensor"),
    (zeros(1, 1), 0.0, "mean", TypeError, r"^logvar must be a torch.Tensor"),
    (zeros(3, 4), zeros(3, 4), "avg", ValueError, r"^reduction must be one of"),
    (zeros(3, 4), zeros(3, 4), None, ValueError, r"^reduction must be one of"),
]


@pytest.mark.parametrize("mu, logvar, reduction, error, match", BAD_ARGUMENTS,
                         ids=[f"{i}-{case[-1]}" for i, case in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_raise_naming_the_argument(mu, logvar, reduction, error, match):
    with pytest.raises(error, match=match):
        vaefast.gaussian_kl(mu, logvar, reduction=reduction)


def test_registered_op_checks_its_arguments():
    """A direct torch.ops call skips the Python checks; the C++ ones must still refuse what the kernel
    cannot read safely, naming the argument."""
    with pytest.raises(RuntimeError, match="logvar must have the shape of mu"):
        torch.ops.vaefast.gaussian_kl(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="logvar has dtype"):
        torch.ops.vaefast.gaussian_kl(torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.vaefast.gaussian_kl_backward(torch.randn(2), torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(RuntimeError, match="reduction must be one of 'none', 'sum', 'mean'; got 'avg'"):
        torch.ops.vaefast.gaussian_kl(torch.randn(3, 4), torch.randn(3, 4), "avg")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to put the arguments on two devices")
def test_different_devices_raise():
    with pytest.raises(ValueError, match=r"^logvar is on"):
        vaefast.gaussian_kl(torch.randn(3, 4), torch.randn(3, 4, device="cuda"))
