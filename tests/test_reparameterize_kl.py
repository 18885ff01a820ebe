"""Tests of vaefast.reparameterize_kl, the fused VAE head: z and the per-sample KL bit for bit what
vaefast.reparameterize and vaefast.gaussian_kl give for the same generator state (every dtype, layout and
num_samples; hypothesis over shapes and extreme values), values and gradients against the float64
reference composition (vaefast.ops.reference), earned tolerances in float32/float16/bfloat16, gradcheck, one
output used alone, empty inputs, opcheck, torch.compile, determinism across thread counts, the
VAEFAST_BACKEND=reference path and argument validation. Inputs are fresh random draws on every run."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

import vaefast
from tests.conftest import assert_close64, assert_earned
from tests.op_testing import (
    LAYOUTS, REDUCTIONS, assert_same_bits_at_1_and_2_threads, make_input, run_with_reference_backend, same_bits,
)
from vaefast.ops import reference

COMPILED = vaefast.backend_info()["compiled"] and "cpu" in vaefast.backend_info()["ops"].get("reparameterize_kl", [])
needs_compiled = pytest.mark.skipif(not COMPILED, reason="the compiled extension (with reparameterize_kl) is not built")

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# [256, 64]: the training size; [2, 20000]: rows over three 8192-element reduction chunks; [3, 37] and
# [7, 100]: numel not a multiple of the vectors, so with several samples the later ones start inside a noise
# tile (both of reparameterize's scalar tails); [5, 3, 4, 4]: per sample over three dimensions; [6]: 1-D;
# [0, 7], [7, 0]: empty.
SHAPES = [(1, 1), (3, 5), (256, 64), (2, 20000), (3, 37), (7, 100), (5, 3, 4, 4), (6,), (0, 7), (7, 0)]
def seeded(seed):
    """A fresh CPU generator: every call given seeded(s) draws the same noise."""
    return torch.Generator().manual_seed(seed)


def separate(mu, logvar, *, num_samples=None, generator=None, reduction="mean"):
    """The two public ops one after the other, as a model calls them without the fused head."""
    return (vaefast.reparameterize(mu, logvar, num_samples=num_samples, generator=generator),
            vaefast.gaussian_kl(mu, logvar, reduction=reduction))


def make_pair(shape, layout, dtype=torch.float64, generator=None):
    mu, view = make_input(shape, layout, dtype=dtype, generator=generator)
    logvar, _ = make_input(shape, layout, dtype=dtype, generator=generator)
    return [mu, logvar], view


def new_seed():
    return int(torch.randint(0, 2**62, ()))


# --- The contract: the two ops' bits.
@pytest.mark.parametrize("num_samples", [None, 3])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bit_identical_to_the_two_ops(dtype, shape, layout, num_samples):
    (mu, logvar), view = make_pair(shape, layout, dtype)
    mu, logvar = view(mu), view(logvar)
    seed = new_seed()
    z, kl = vaefast.reparameterize_kl(mu, logvar, num_samples=num_samples, generator=seeded(seed), reduction="none")
    z_ref, kl_ref = separate(mu, logvar, num_samples=num_samples, generator=seeded(seed), reduction="none")
    assert same_bits(z, z_ref) and same_bits(kl, kl_ref)
    for reduction in ("sum", "mean"):
        _, reduced = vaefast.reparameterize_kl(mu, logvar, generator=seeded(seed), reduction=reduction)
        assert same_bits(reduced, vaefast.gaussian_kl(mu, logvar, reduction=reduction))


def test_default_generator_is_used_as_reparameterize_uses_it():
    """One seed draw per call from the default generator: the same z, and the generator left in the same
    state, so that whatever is drawn next is the same too."""
    mu, logvar = torch.randn(33, 17), torch.randn(33, 17)
    torch.manual_seed(new_seed())
    state = torch.get_rng_state()
    z_ref, kl_ref = separate(mu, logvar, num_samples=2)
    after_ref = torch.get_rng_state()
    torch.set_rng_state(state)
    z, kl = vaefast.reparameterize_kl(mu, logvar, num_samples=2)
    assert same_bits(z, z_ref) and same_bits(kl, kl_ref)
    assert torch.equal(torch.get_rng_state(), after_ref)
    z_next, _ = vaefast.reparameterize_kl(mu, logvar)
    assert not torch.equal(z_next, z[0])  # a fresh draw on the next call


@st.composite
def head_cases(draw):
    """Shapes, layouts, dtypes, samples and value ranges chosen by hypothesis; values from a torch generator
    seeded by hypothesis, so a failing draw replays exactly."""
    shape = (draw(st.integers(0, 6)), *draw(st.lists(st.integers(1, 40), min_size=0, max_size=2)))
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(DTYPES))
    num_samples = draw(st.sampled_from([None, 1, 2, 3]))
    mu_scale = draw(st.sampled_from((0.0, 1e-3, 1.0, 1e3)))
    logvar_range = draw(st.sampled_from((1e-6, 1.0, 10.0, 80.0)))
    generator = seeded(draw(st.integers(0, 2**63 - 1)))

    def uniform_logvar(t):  # U(-logvar_range, logvar_range)
        return (2 * torch.rand(t.shape, dtype=t.dtype, generator=generator) - 1) * logvar_range

    mu, view = make_input(shape, layout, generator=generator, fill=lambda t: t * mu_scale)
    logvar, _ = make_input(shape, layout, generator=generator, fill=uniform_logvar)
    return view(mu.to(dtype)), view(logvar.to(dtype)), num_samples, draw(st.integers(0, 2**62))


@given(head_cases())
def test_property_bit_identical_to_the_two_ops(case):
    """Extreme logvar (z and the KL overflowing to inf in float16), tiny and huge mu, every layout."""
    mu, logvar, num_samples, seed = case
    z, kl = vaefast.reparameterize_kl(mu, logvar, num_samples=num_samples, generator=seeded(seed), reduction="none")
    z_ref, kl_ref = separate(mu, logvar, num_samples=num_samples, generator=seeded(seed), reduction="none")
    assert same_bits(z, z_ref) and same_bits(kl, kl_ref)


# --- Values and gradients against the float64 reference composition, on the same noise.
def head_forward_backward(op, bases, view, seed, cotangents, **kwargs):
    """[z, kl, d/d mu, d/d logvar]: op on view(fresh leaves), noise from seeded(seed), pulled back with
    cotangents (g_z, g_kl)."""
    leaves = [base.detach().clone().requires_grad_() for base in bases]
    z, kl = op(view(leaves[0]), view(leaves[1]), generator=seeded(seed), **kwargs)
    grads = torch.autograd.grad((z, kl), leaves, (cotangents[0].to(z.dtype), cotangents[1].to(kl.dtype)))
    return [z.detach(), kl.detach(), *grads]


def cotangents_for(z_shape, batch, reduction):
    return torch.randn(z_shape, dtype=torch.float64), torch.randn((batch,) if reduction == "none" else (),
                                                                  dtype=torch.float64)


@pytest.mark.parametrize("num_samples", [None, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s != (2, 20000)] + [(2, 9000)], ids=str)
def test_matches_float64_reference(shape, layout, reduction, num_samples):
    bases, view = make_pair(shape, layout)
    z_shape = shape if num_samples is None else (num_samples, *shape)
    cotangents = cotangents_for(z_shape, shape[0], reduction)
    seed = new_seed()
    kwargs = dict(num_samples=num_samples, reduction=reduction)
    actual = head_forward_backward(vaefast.reparameterize_kl, bases, view, seed, cotangents, **kwargs)
    expected = head_forward_backward(reference.reparameterize_kl, bases, view, seed, cotangents, **kwargs)
    for got, want in zip(actual, expected, strict=True):
        assert got.shape == want.shape
        assert_close64(got, want)


def magnitudes(bases, view, z, cotangents):
    """Per result (z, kl, grad_mu, grad_logvar), the largest magnitude its computation passes through before
    its terms cancel: grad_mu adds g_kl mu to the g_z, and grad_logvar takes 0.5 g_z (z - mu) from the rounded
    z, so an ulp of |z| is lost in it whatever the precision."""
    mu, logvar = (view(t.double()) for t in bases)
    g_z, g_kl = cotangents
    g_kl = g_kl.reshape(-1, *([1] * (mu.dim() - 1))) if g_kl.dim() else g_kl / max(1, mu.shape[0])
    samples = z.dim() - mu.dim()
    sum_samples = (lambda t: t.sum(0)) if samples else (lambda t: t)
    grad_mu = sum_samples(g_z.abs()) + (g_kl * mu).abs()
    grad_logvar = (sum_samples(0.5 * g_z.abs() * (z.double().abs() + mu.abs()))
                   + (0.5 * g_kl * torch.expm1(logvar)).abs())
    largest = lambda t: float(t.max()) if t.numel() else 0.0  # noqa: E731
    return [None, None, largest(grad_mu), largest(grad_logvar)]


@pytest.mark.parametrize("num_samples", [None, 3])
@pytest.mark.parametrize("reduction", ("none", "mean"))
@pytest.mark.parametrize("shape, layout", [((4, 37), "contiguous"), ((256, 64), "contiguous"),
                                           ((2, 9000), "contiguous"), ((3, 4, 5, 6), "step")], ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
def test_low_precision_within_earned_tolerance(dtype, shape, layout, reduction, num_samples):
    """The op in dtype off the float64 truth (the same rounded inputs, float64 math and noise) by at most
    about twice what the reference composition loses in dtype."""
    bases, view = make_pair(shape, layout)
    # logvar in [-2, 2]: float16 sums of 9000 KL terms stay finite.
    bases[1] = bases[1].clamp(-2, 2)
    z_shape = shape if num_samples is None else (num_samples, *shape)
    cotangents = cotangents_for(z_shape, shape[0], reduction)
    seed = new_seed()
    kwargs = dict(num_samples=num_samples, reduction=reduction)
    lowp = [b.to(dtype) for b in bases]
    actual = head_forward_backward(vaefast.reparameterize_kl, lowp, view, seed, cotangents, **kwargs)
    reference_lowp = head_forward_backward(reference.reparameterize_kl, lowp, view, seed, cotangents, **kwargs)
    exact = head_forward_backward(reference.reparameterize_kl, [b.double() for b in lowp], view, seed, cotangents,
                                  **kwargs)
    scales = magnitudes(lowp, view, exact[0], cotangents)
    for got, low, truth, scale in zip(actual, reference_lowp, exact, scales, strict=True):
        assert got.dtype == dtype and got.shape == truth.shape
        assert_earned(got, low, truth, scale=scale)


@pytest.mark.parametrize("num_samples", [None, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, layout", [((3, 4), "contiguous"), ((2, 3, 2), "transposed"), ((3, 5), "step")],
                         ids=str)
def test_gradcheck(shape, layout, reduction, num_samples):
    (mu, logvar), view = make_pair(shape, layout)
    seed = new_seed()

    def head(mu, logvar):  # the same noise on every call gradcheck makes
        return vaefast.reparameterize_kl(view(mu), view(logvar), num_samples=num_samples, generator=seeded(seed),
                                         reduction=reduction)

    assert torch.autograd.gradcheck(head, (mu.requires_grad_(), logvar.requires_grad_()))


# --- One output used alone: only that op's backward runs, with that op's bits.
@pytest.mark.parametrize("num_samples", [None, 3])
@pytest.mark.parametrize("shape", [(5, 12), (4, 37), (0, 3)], ids=str)
def test_only_z_or_only_kl_used(shape, num_samples):
    mu = torch.randn(shape, requires_grad=True)
    logvar = torch.randn(shape, requires_grad=True)
    seed = new_seed()
    z, _ = vaefast.reparameterize_kl(mu, logvar, num_samples=num_samples, generator=seeded(seed))
    z_ref, kl_ref = separate(mu, logvar, num_samples=num_samples, generator=seeded(seed), reduction="none")
    g_z = torch.randn_like(z)
    for got, want in zip(torch.autograd.grad(z, (mu, logvar), g_z), torch.autograd.grad(z_ref, (mu, logvar), g_z)):
        assert same_bits(got, want)
    _, kl = vaefast.reparameterize_kl(mu, logvar, num_samples=num_samples, generator=seeded(seed), reduction="none")
    g_kl = torch.randn_like(kl)
    for got, want in zip(torch.autograd.grad(kl, (mu, logvar), g_kl), torch.autograd.grad(kl_ref, (mu, logvar), g_kl)):
        assert same_bits(got, want)


def test_gradient_to_one_input_only():
    mu = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(6, 10, dtype=torch.float64)  # a fixed variance: no gradient wanted
    seed = new_seed()
    z, kl = vaefast.reparameterize_kl(mu, logvar, generator=seeded(seed))
    z_ref, kl_ref = reference.reparameterize_kl(mu, logvar, generator=seeded(seed))
    (got,) = torch.autograd.grad(z.sum() + kl, mu)
    (want,) = torch.autograd.grad(z_ref.sum() + kl_ref, mu)
    assert_close64(got, want)


# --- Empty inputs: empty or zero results, as the reference gives.
@pytest.mark.parametrize("num_samples", [None, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0, 7), (7, 0), (0,), (3, 0, 4)], ids=str)
def test_empty(shape, reduction, num_samples):
    mu = torch.randn(shape, requires_grad=True)
    logvar = torch.randn(shape, requires_grad=True)
    z, kl = vaefast.reparameterize_kl(mu, logvar, num_samples=num_samples, reduction=reduction)
    z_ref, kl_ref = reference.reparameterize_kl(mu, logvar, num_samples=num_samples, reduction=reduction)
    assert z.shape == z_ref.shape and kl.shape == kl_ref.shape
    torch.testing.assert_close(kl, kl_ref, equal_nan=True)  # "mean" over no samples is NaN, like torch.mean
    grads = torch.autograd.grad((z.sum(), kl.nan_to_num().sum()), (mu, logvar))
    assert all(g.shape == mu.shape and bool((g == 0).all()) for g in grads)


def test_mixed_dtypes_are_promoted():
    mu = torch.randn(3, 4)
    logvar = torch.randn(3, 4, dtype=torch.float64)
    z, kl = vaefast.reparameterize_kl(mu, logvar)
    assert z.dtype == kl.dtype == torch.float64


# --- The registration: opcheck, torch.compile, threads, the reference backend.
@needs_compiled
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_opcheck(dtype):
    mu = torch.randn(5, 6, dtype=dtype, requires_grad=True)
    logvar = torch.randn(5, 6, dtype=dtype, requires_grad=True)
    # Draws fresh noise each call, so only the schema and fake-kernel checks apply (as for reparameterize).
    for num_samples, reduction in ((None, "none"), (2, "none"), (None, "mean"), (2, "sum")):
        torch.library.opcheck(torch.ops.vaefast.reparameterize_kl, (mu, logvar, num_samples, None, reduction),
                              test_utils=("test_schema", "test_faketensor"))
    for z_shape in ((5, 6), (3, 5, 6)):
        z = torch.randn(z_shape, dtype=dtype)
        args = (torch.randn_like(z), torch.randn(5, dtype=dtype), z, mu.detach(), logvar.detach().t().contiguous().t())
        torch.library.opcheck(torch.ops.vaefast.reparameterize_kl_backward, args)


def head_loss(head, mu, logvar, weight):
    """A small training loss around the head: z through a linear map, plus the batch-mean KL."""
    z, kl = head(mu, logvar)
    return (z @ weight).square().mean() + kl


@needs_compiled
def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    mu = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(lambda *a: head_loss(vaefast.reparameterize_kl, *a), fullgraph=True, backend="inductor")
    seed = new_seed()
    results = []
    for fn in (compiled, lambda *a: head_loss(reference.reparameterize_kl, *a)):
        torch.manual_seed(seed)  # the compiled op draws its seed from the default generator, as eager does
        loss = fn(mu, logvar, weight)
        results.append([loss, *torch.autograd.grad(loss, (mu, logvar, weight))])
    for got, want in zip(*results, strict=True):
        assert_close64(got, want)
    # The op is nondeterministic_seeded: two calls in one graph are two draws.
    both = torch.compile(lambda m, l: (vaefast.reparameterize_kl(m, l)[0], vaefast.reparameterize_kl(m, l)[0]),
                         fullgraph=True)(mu.detach(), logvar.detach())
    assert not torch.equal(*both)


@needs_compiled
# (64, 64) and (40, 100): small enough that only the noise kernels' smaller grain splits them over threads.
@pytest.mark.parametrize("shape", [(257, 300), (2, 20000), (600, 37), (64, 64), (40, 100)], ids=str)
def test_bit_identical_across_thread_counts(shape):
    mu, logvar = torch.randn(shape), torch.randn(shape)
    seed = new_seed()
    cotangents = (torch.randn(2, *shape), torch.randn(shape[0]))
    assert_same_bits_at_1_and_2_threads(lambda: head_forward_backward(
        vaefast.reparameterize_kl, [mu, logvar], lambda t: t, seed, cotangents, num_samples=2, reduction="none"))


REFERENCE_BACKEND_SCRIPT = """
import torch, vaefast
outputs = {"compiled": vaefast.backend_info()["compiled"], "cases": []}
for case in torch.load("inputs.pt"):
    mu, logvar = case["mu"].requires_grad_(), case["logvar"].requires_grad_()
    z, kl = vaefast.reparameterize_kl(mu, logvar, num_samples=case["num_samples"], reduction=case["reduction"],
                                      generator=torch.Generator().manual_seed(case["seed"]))
    grads = torch.autograd.grad((z, kl), (mu, logvar), case["cotangents"])
    outputs["cases"].append([z.detach(), kl.detach(), *grads])
torch.save(outputs, "outputs.pt")
"""


@needs_compiled
def test_reference_backend_subprocess(tmp_path):
    """VAEFAST_BACKEND=reference runs the composition of the reference ops, with the same noise on CPU."""
    cases = []
    for shape, num_samples, reduction in [((4, 3, 5), None, "none"), ((3, 9), 2, "mean"), ((0, 7), None, "sum")]:
        z_shape = shape if num_samples is None else (num_samples, *shape)
        cases.append({"mu": torch.randn(shape, dtype=torch.float64), "logvar": torch.randn(shape, dtype=torch.float64),
                      "num_samples": num_samples, "reduction": reduction, "seed": new_seed(),
                      "cotangents": cotangents_for(z_shape, shape[0], reduction)})
    torch.save(cases, tmp_path / "inputs.pt")
    run_with_reference_backend(REFERENCE_BACKEND_SCRIPT, tmp_path)
    outputs = torch.load(tmp_path / "outputs.pt")
    assert outputs["compiled"] is False
    for case, theirs in zip(cases, outputs["cases"], strict=True):
        ours = head_forward_backward(vaefast.reparameterize_kl, [case["mu"], case["logvar"]], lambda t: t,
                                     case["seed"], case["cotangents"], num_samples=case["num_samples"],
                                     reduction=case["reduction"])
        for got, want in zip(ours, theirs, strict=True):
            assert_close64(got, want)


# --- Bad input: each error names the argument, in the two ops' words.
def zeros(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


# (mu, logvar, keyword arguments, expected error, start of its message)
BAD_ARGUMENTS = [
    (zeros(3, 4), zeros(3, 5), {}, ValueError, r"^logvar must have the shape of mu"),
    (zeros(3, 4), zeros(4, 3), {}, ValueError, r"^logvar must have the shape of mu"),
    (zeros(), zeros(), {}, ValueError, r"^mu must have at least 1 dim"),
    (zeros(3, 4, dtype=torch.int64), zeros(3, 4), {}, TypeError, r"^mu must be a floating"),
    (zeros(3, 4), zeros(3, 4, dtype=torch.bool), {}, TypeError, r"^logvar must be a floating"),
    (zeros(3, 4, dtype=torch.complex64), zeros(3, 4), {}, TypeError, r"^mu must be a floating"),
    ([[0.0]], zeros(1, 1), {}, TypeError, r"^mu must be a torch.Tensor"),
    (zeros(1, 1), 0.0, {}, TypeError, r"^logvar must be a torch.Tensor"),
    (zeros(3, 4), zeros(3, 4), {"reduction": "avg"}, ValueError, r"^reduction must be one of"),
    (zeros(3, 4), zeros(3, 4), {"num_samples": 0}, ValueError, r"^num_samples must be >= 1"),
    (zeros(3, 4), zeros(3, 4), {"num_samples": 2.5}, TypeError, r"^num_samples must be an int"),
    (zeros(3, 4), zeros(3, 4), {"generator": 123}, TypeError, r"^generator must be a torch.Generator"),
    (zeros(3, 4), zeros(3, 4).to("meta"), {}, ValueError, r"^logvar is on meta"),
]


@pytest.mark.parametrize("mu, logvar, kwargs, error, match", BAD_ARGUMENTS,
                         ids=[f"{i}-{case[-1]}" for i, case in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_raise_naming_the_argument(mu, logvar, kwargs, error, match):
    with pytest.raises(error, match=match):
        vaefast.reparameterize_kl(mu, logvar, **kwargs)


@needs_compiled
def test_registered_ops_check_their_arguments():
    """A direct torch.ops call skips the Python checks; the C++ ones must still refuse what the kernels
    cannot read safely, naming the argument."""
    mu = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="logvar must have the shape of mu"):
        torch.ops.vaefast.reparameterize_kl(mu, torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="num_samples must be >= 1"):
        torch.ops.vaefast.reparameterize_kl(mu, mu, 0)
    with pytest.raises(RuntimeError, match="reduction must be one of 'none', 'sum', 'mean'; got 'batchmean'"):
        torch.ops.vaefast.reparameterize_kl(mu, mu, None, None, "batchmean")
    backward = torch.ops.vaefast.reparameterize_kl_backward
    with pytest.raises(RuntimeError, match="grad_kl must have shape"):
        backward(torch.randn(3, 4), torch.randn(2), torch.randn(3, 4), mu, mu)
    with pytest.raises(RuntimeError, match="z must have the shape of mu"):
        backward(torch.randn(3, 5), torch.randn(3), torch.randn(3, 5), mu, mu)
    with pytest.raises(RuntimeError, match="grad_z must have the shape of z"):
        backward(torch.randn(3, 3), torch.randn(3), torch.randn(3, 4), mu, mu)


def test_the_reference_is_the_composition():
    mu, logvar = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    seed = new_seed()
    z, kl = reference.reparameterize_kl(mu, logvar, num_samples=2, generator=seeded(seed), reduction="sum")
    assert torch.equal(z, reference.reparameterize(mu, logvar, num_samples=2, generator=seeded(seed)))
    assert torch.equal(kl, reference.gaussian_kl(mu, logvar, reduction="sum"))
    assert math.isfinite(float(kl))
