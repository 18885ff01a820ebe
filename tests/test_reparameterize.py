"""vaefast.reparameterize: values, gradients and the in-kernel Philox generator."""
import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, strategies as st

import vaefast
from vaefast.ops import philox, reference
from tests.conftest import assert_close64, assert_earned, max_error
from tests.op_testing import assert_same_bits_at_1_and_2_threads

COMPILED = vaefast.backend_info()["compiled"]
needs_compiled = pytest.mark.skipif(not COMPILED, reason="the compiled extension is not built")


def make_inputs(shape, dtype=torch.float64, requires_grad=True):
    mu = torch.randn(shape, dtype=dtype)
    logvar = torch.randn(shape, dtype=dtype)
    return mu.requires_grad_(requires_grad), logvar.requires_grad_(requires_grad)


def reference_z(mu, logvar, seed, offset=0, num_samples=None):
    shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
    eps = philox.normal(math.prod(shape), seed, offset, mu.dtype).reshape(shape)
    return reference.reparameterize(mu, logvar, eps=eps)


# --- Philox: the Python reference generator against Random123's known answers (REFERENCE.md section 2).
@pytest.mark.parametrize(
    "counter, key, expected",
    [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_python_philox_known_answers(counter, key, expected):
    out = philox.philox4x32_10(torch.tensor([counter], dtype=torch.int64), key)
    assert tuple(out[0].tolist()) == expected


# --- Values and gradients against the float64 reference on the same Philox stream.
SHAPES = [(1, 1), (1, 7), (3, 5), (64, 64), (5, 3, 4, 4), (2, 1031), (1000,)]


@needs_compiled
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_samples", [None, 1, 3])
def test_philox_stream_matches_reference(shape, num_samples):
    mu, logvar = make_inputs(shape)
    seed, offset = int(torch.randint(0, 2**62, ())), int(torch.randint(0, 2**40, ())) * 4
    z = vaefast.reparameterize_philox(mu, logvar, seed, offset, num_samples=num_samples)
    expected = reference_z(mu, logvar, seed, offset, num_samples)
    assert z.shape == expected.shape
    assert_close64(z, expected)
    grad = torch.randn_like(z)
    got = torch.autograd.grad(z, (mu, logvar), grad)
    want = torch.autograd.grad(expected, (mu, logvar), grad)
    # d/dlogvar = 0.5 g (z - mu): from the saved z, z - mu carries the rounding of z (an ulp of |z|).
    for g, w in zip(got, want):
        assert_close64(g, w, atol=1e-12 * float(z.detach().abs().max() * grad.abs().max()) + 1e-12)


@needs_compiled
def test_default_generator_draw_matches_reference_path():
    mu, logvar = make_inputs((33, 17))
    torch.manual_seed(1234 + int(torch.randint(0, 1000, ())))
    state = torch.get_rng_state()
    z = vaefast.reparameterize(mu, logvar, num_samples=2)
    torch.set_rng_state(state)
    expected = reference.reparameterize(mu, logvar, num_samples=2)
    assert_close64(z, expected)


@pytest.mark.parametrize("shape", [(4, 9), (0, 3), (3, 0)])
def test_given_eps(shape):
    mu, logvar = make_inputs(shape)
    eps = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    z = vaefast.reparameterize(mu, logvar, eps=eps)
    expected = reference.reparameterize(mu, logvar, eps=eps)
    assert_close64(z, expected)
    if z.numel():
        grad = torch.randn_like(z)
        for g, w in zip(torch.autograd.grad(z, (mu, logvar, eps), grad),
                        torch.autograd.grad(expected, (mu, logvar, eps), grad)):
            assert_close64(g, w)


def test_given_eps_with_samples_does_not_touch_the_generator():
    mu, logvar = make_inputs((6, 4))
    eps = torch.randn(3, 6, 4, dtype=torch.float64)
    state = torch.get_rng_state()
    z = vaefast.reparameterize(mu, logvar, num_samples=3, eps=eps)
    assert torch.equal(torch.get_rng_state(), state)
    assert_close64(z, mu + torch.exp(0.5 * logvar) * eps)


def test_non_contiguous_inputs():
    base_mu, base_logvar = make_inputs((12, 10), requires_grad=False)
    mu, logvar = base_mu.t()[::2], base_logvar.t()[::2]  # [5, 12], strided
    mu.requires_grad_()
    logvar.requires_grad_()
    z = vaefast.reparameterize_philox(mu, logvar, 99, 4)
    expected = reference_z(mu, logvar, 99, 4)
    assert_close64(z, expected)
    grad = torch.randn_like(z)
    for g, w in zip(torch.autograd.grad(z, (mu, logvar), grad), torch.autograd.grad(expected, (mu, logvar), grad)):
        assert_close64(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_against_float64(dtype):
    mu64, logvar64 = make_inputs((64, 33), requires_grad=False)
    eps64 = torch.randn(64, 33, dtype=torch.float64)
    mu, logvar, eps = (t.to(dtype) for t in (mu64, logvar64, eps64))
    # The truth: the same rounded inputs, computed in float64.
    truth = reference.reparameterize(mu.double(), logvar.double(), eps=eps.double())
    assert_earned(vaefast.reparameterize(mu, logvar, eps=eps), reference.reparameterize(mu, logvar, eps=eps), truth)


def test_gradcheck():
    mu, logvar = make_inputs((3, 4))
    eps = torch.randn(2, 3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m, l: vaefast.reparameterize(m, l, eps=eps, num_samples=2), (mu, logvar))
    assert torch.autograd.gradcheck(lambda m, l: vaefast.reparameterize_philox(m, l, 7, 0, num_samples=3), (mu, logvar))


@needs_compiled
def test_opcheck():
    for dtype in (torch.float32, torch.float64):
        mu, logvar = make_inputs((5, 6), dtype)
        torch.library.opcheck(torch.ops.vaefast.reparameterize_philox, (mu, logvar, 2, 11, 4))
        torch.library.opcheck(torch.ops.vaefast.reparameterize_philox, (mu, logvar, None, 11, 4))
        torch.library.opcheck(torch.ops.vaefast.reparameterize_with_eps, (mu, logvar, torch.randn(5, 6, dtype=dtype)))
        z = torch.randn(3, 5, 6, dtype=dtype)
        torch.library.opcheck(torch.ops.vaefast.reparameterize_backward, (torch.randn_like(z), z, mu.detach()))
        # Draws fresh noise each call, so only the schema and fake-kernel checks apply.
        torch.library.opcheck(torch.ops.vaefast.reparameterize, (mu, logvar, None, None),
                              test_utils=("test_schema", "test_faketensor"))


# --- The generator's contract.
@pytest.mark.parametrize("device_generator", [False, True])
def test_same_seed_same_noise_and_fresh_noise_per_call(device_generator):
    mu, logvar = make_inputs((50, 20), requires_grad=False)
    seed = int(torch.randint(0, 2**31, ()))
    if device_generator:
        generator = torch.Generator().manual_seed(seed)
        first, second = (vaefast.reparameterize(mu, logvar, generator=generator) for _ in range(2))
        generator.manual_seed(seed)
        again = vaefast.reparameterize(mu, logvar, generator=generator)
    else:
        torch.manual_seed(seed)
        first, second = (vaefast.reparameterize(mu, logvar) for _ in range(2))
        torch.manual_seed(seed)
        again = vaefast.reparameterize(mu, logvar)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    assert bool(((first - second).abs() > 0).float().mean() > 0.99)


def test_moments_and_kolmogorov_smirnov_on_a_million_draws():
    zeros = torch.zeros(1_000_000, dtype=torch.float64)
    eps = vaefast.reparameterize(zeros, zeros).numpy()
    n = eps.size
    # 5 standard errors: a false alarm about once in 3.5 million runs per statistic.
    assert abs(eps.mean()) < 5 / math.sqrt(n)
    assert abs(eps.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(scipy.stats.skew(eps)) < 5 * math.sqrt(6 / n)
    assert abs(scipy.stats.kurtosis(eps)) < 5 * math.sqrt(24 / n)
    assert scipy.stats.kstest(eps, "norm").pvalue > 1e-4
    # float32 noise too (Box-Muller computed in float)
    eps32 = vaefast.reparameterize(zeros.float(), zeros.float()).double().numpy()
    assert scipy.stats.kstest(eps32, "norm").pvalue > 1e-4


def test_num_samples_draws_are_independent():
    zeros = torch.zeros(20_000, dtype=torch.float64)
    eps = vaefast.reparameterize(zeros, zeros, num_samples=4).numpy()  # [4, 20000]
    correlation = np.corrcoef(eps)
    off_diagonal = correlation[~np.eye(4, dtype=bool)]
    # Sample correlation of independent normals has standard error 1/sqrt(n) = 0.007; 6 s.e. bound.
    assert np.abs(off_diagonal).max() < 6 / math.sqrt(eps.shape[1])
    # Neighbouring elements (the Box-Muller pair and the Philox block) are uncorrelated too.
    flat = eps.reshape(-1)
    for lag in (1, 2, 3, 4):
        assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 6 / math.sqrt(flat.size)


def test_distinct_offsets_give_distinct_streams():
    zeros = torch.zeros(4096, dtype=torch.float64)
    a = vaefast.reparameterize_philox(zeros, zeros, 5, 0)
    b = vaefast.reparameterize_philox(zeros, zeros, 5, 4)
    c = vaefast.reparameterize_philox(zeros, zeros, 6, 0)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert abs(np.corrcoef(a.numpy(), b.numpy())[0, 1]) < 0.1


@needs_compiled
@pytest.mark.parametrize("shape", [(257, 300), (64, 64), (40, 100)], ids=str)
def test_deterministic_across_thread_counts(shape):
    mu, logvar = make_inputs(shape, torch.float32, requires_grad=False)

    def run():
        z = vaefast.reparameterize_philox(mu, logvar, 3, 8, num_samples=2)
        return z, torch.ops.vaefast.reparameterize_backward(torch.ones_like(z), z, mu)
    assert_same_bits_at_1_and_2_threads(run)


# --- Property-based: shapes, strides, dtypes, extremes.
@st.composite
def reparameterize_cases(draw):
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    logvar_range = draw(st.sampled_from([1.0, 10.0, 80.0]))
    transpose = draw(st.booleans()) and len(shape) >= 2
    num_samples = draw(st.sampled_from([None, 1, 2]))
    seed = draw(st.integers(0, 2**63 - 1))
    offset = draw(st.integers(0, 2**40)) * 4
    return shape, dtype, logvar_range, transpose, num_samples, seed, offset


@given(reparameterize_cases())
def test_property_matches_reference(case):
    shape, dtype, logvar_range, transpose, num_samples, seed, offset = case
    mu = torch.randn(shape, dtype=torch.float64) * 3
    logvar = (torch.rand(shape, dtype=torch.float64) * 2 - 1) * logvar_range
    if transpose:
        mu, logvar = mu.transpose(0, 1).contiguous().transpose(0, 1), logvar.transpose(0, 1).contiguous().transpose(0, 1)
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    z = vaefast.reparameterize_philox(mu, logvar, seed, offset, num_samples=num_samples)
    truth = reference_z(mu.double(), logvar.double(), seed, offset, num_samples)
    if dtype == torch.float64:
        # exp(40) * eps ~ 1e18: compare relative to each element's own magnitude.
        assert bool(((z - truth).abs() <= 1e-13 * truth.abs() + 1e-13).all())
    else:
        # float32 noise is computed in float32 on both paths (Box-Muller near u = 1 depends on the rounding
        # of u), so the comparison is with the reference in the same precision: a few ulps of each term.
        same = reference_z(mu, logvar, seed, offset, num_samples)
        assert torch.equal(z.isinf() | z.isnan(), same.isinf() | same.isnan())
        finite = same.isfinite()
        mu_b = mu.double().expand_as(same)
        scale = mu_b.abs() + (same.double() - mu_b).abs()
        assert bool(((z.double() - same.double()).abs()[finite] <= 8 * torch.finfo(dtype).eps * scale[finite]).all())


def test_nan_and_inf_propagate_like_the_reference():
    mu, logvar = make_inputs((4, 6), requires_grad=False)
    mu[0, 0], logvar[1, 1], mu[2, 2], logvar[3, 3] = float("nan"), float("nan"), float("inf"), float("inf")
    eps = torch.randn(4, 6, dtype=torch.float64)
    got = vaefast.reparameterize(mu, logvar, eps=eps)
    want = reference.reparameterize(mu, logvar, eps=eps)
    assert max_error(got, want) < 1e-12


# --- Bad input: each error names the argument.
def test_bad_inputs():
    mu, logvar = make_inputs((4, 3), requires_grad=False)
    with pytest.raises(ValueError, match="logvar"):
        vaefast.reparameterize(mu, logvar[:, :2])
    with pytest.raises(ValueError, match="eps"):
        vaefast.reparameterize(mu, logvar, eps=torch.randn(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="eps"):
        vaefast.reparameterize(mu, logvar, num_samples=2, eps=torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="mu"):
        vaefast.reparameterize(torch.ones(4, 3, dtype=torch.int64), logvar)
    with pytest.raises(TypeError, match="logvar"):
        vaefast.reparameterize(mu, torch.ones(4, 3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="mu"):
        vaefast.reparameterize([1.0, 2.0], logvar)
    with pytest.raises(ValueError, match="mu"):
        vaefast.reparameterize(torch.tensor(1.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match="num_samples"):
        vaefast.reparameterize(mu, logvar, num_samples=0)
    with pytest.raises(TypeError, match="num_samples"):
        vaefast.reparameterize(mu, logvar, num_samples=2.5)
    with pytest.raises(TypeError, match="generator"):
        vaefast.reparameterize(mu, logvar, generator=123)
    with pytest.raises(ValueError, match="seed"):
        vaefast.reparameterize_philox(mu, logvar, -1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_bad_devices():
    mu, logvar = make_inputs((4, 3), requires_grad=False)
    with pytest.raises(ValueError, match="logvar"):
        vaefast.reparameterize(mu, logvar.cuda())
    with pytest.raises(ValueError, match="generator"):
        vaefast.reparameterize(mu, logvar, generator=torch.Generator("cuda"))


def test_mixed_dtypes_are_promoted():
    mu = torch.randn(3, 4)
    logvar = torch.randn(3, 4, dtype=torch.float64)
    assert vaefast.reparameterize(mu, logvar).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_in_kernel_noise(dtype):
    mu64, logvar64 = make_inputs((40, 37), requires_grad=False)
    mu, logvar = mu64.to(dtype), logvar64.to(dtype)
    seed = int(torch.randint(0, 2**62, ()))
    z = vaefast.reparameterize_philox(mu, logvar, seed, 4, num_samples=2)
    assert z.dtype == dtype
    # Truth: float64 math on the same rounded inputs and the same stream (float32 noise differs from
    # float64 noise by ~1e-7, far below the 1e-3 .. 1e-2 that these dtypes resolve).
    truth = reference_z(mu.double(), logvar.double(), seed, 4, num_samples=2)
    assert_earned(z, reference_z(mu, logvar, seed, 4, num_samples=2), truth)
