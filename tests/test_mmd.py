"""vaefast.mmd and vaefast.mmd_prior against the pure-PyTorch reference (vaefast.ops.reference): values and
gradients in float64 and, with earned tolerances, in float32/float16/bfloat16; the op registrations
(opcheck, gradcheck); the RBF prior's closed form; statistical properties; memory; determinism; and the
argument checks."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import assume, given, strategies as st

import vaefast
from vaefast import _backend
from vaefast.ops import philox, reference

from .conftest import assert_close64, assert_earned, max_error
from .op_testing import assert_same_bits_at_1_and_2_threads, same_bits

KERNELS = ("imq", "rbf", "poly")
COMPILED = _backend.compiled("kernel_sum_self", torch.device("cpu"))
needs_compiled = pytest.mark.skipif(not COMPILED, reason="the compiled extension vaefast._C is not loaded")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def samples(n, m, d, dtype=torch.float64, generator=None):
    """x ~ N(0, I) [n, d] and y ~ N(0.3, 1.2^2 I) [m, d]: two different distributions, so MMD^2 > 0."""
    x = torch.randn(n, d, dtype=dtype, generator=generator)
    y = 0.3 + 1.2 * torch.randn(m, d, dtype=dtype, generator=generator)
    return x, y


def value_and_grads(fn, x, y, **kwargs):
    """fn(x, y) and its gradients to x and y, on fresh leaves that keep x's and y's strides."""
    x = x.detach().requires_grad_()
    y = y.detach().requires_grad_()
    value = fn(x, y, **kwargs)
    return (value, *torch.autograd.grad(value, (x, y)))


def assert_all_close64(actual, expected):
    for a, e in zip(actual, expected):
        assert_close64(a, e)


def with_layout(t, layout):
    """The same values in a non-contiguous tensor."""
    if layout == "transposed":
        return t.t().contiguous().t()  # column-major
    wide = torch.randn(t.shape[0], t.shape[1] + 3, dtype=t.dtype)
    wide[:, 1:-2] = t
    return wide[:, 1:-2]  # a column slice: row stride d + 3


@pytest.mark.parametrize("n, m, d", [(37, 53, 8), (2, 2, 3), (19, 23, 1), (12, 9, 300), (257, 70, 5), (257, 256, 5),
                                     (300, 520, 7)])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", KERNELS)
def test_mmd_matches_float64_reference(kernel, unbiased, n, m, d):
    # 257 rows and 300 features are multiples of no tile size; 2 rows is the unbiased minimum. The CPU
    # backward computes the cross sum's two gradients in one pass (rounds of tiles) when both sides have 8
    # blocks of 32 rows or more, else side by side: (257, 70) takes the second way, (257, 256) and (300, 520)
    # the first, with 9 (odd: a bye in the self sum's tournament), 8, 10 and 17 blocks.
    x, y = samples(n, m, d)
    kwargs = dict(kernel=kernel, unbiased=unbiased)
    assert_all_close64(value_and_grads(vaefast.mmd, x, y, **kwargs), value_and_grads(reference.mmd, x, y, **kwargs))


@pytest.mark.parametrize("layout", ["transposed", "column_slice"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_mmd_non_contiguous_inputs(kernel, layout):
    x, y = samples(45, 33, 7)
    x_strided, y_strided = with_layout(x, layout), with_layout(y, layout)
    assert not x_strided.is_contiguous() and not y_strided.is_contiguous()
    actual = value_and_grads(vaefast.mmd, x_strided, y_strided, kernel=kernel)
    assert_all_close64(actual, value_and_grads(reference.mmd, x, y, kernel=kernel))
    assert actual[1].shape == x.shape and actual[2].shape == y.shape


@pytest.mark.parametrize("kernel", KERNELS)
def test_mmd_custom_scales_and_bandwidth(kernel):
    x, y = samples(30, 26, 4)
    kwargs = dict(kernel=kernel, scales=(0.3, 4.0), bandwidth=0.7)
    assert_all_close64(value_and_grads(vaefast.mmd, x, y, **kwargs), value_and_grads(reference.mmd, x, y, **kwargs))


def low_precision_reference(x, y, dtype, **kwargs):
    """What the eager reference gets in `dtype`. CPU cdist has no float16/bfloat16 kernel, so eager code
    there runs in float32 and rounds its results to the low precision."""
    if dtype == torch.float32:
        return value_and_grads(reference.mmd, x, y, **kwargs)
    return tuple(t.to(dtype) for t in value_and_grads(reference.mmd, x.float(), y.float(), **kwargs))


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mmd_low_precision_earned(dtype, kernel, unbiased):
    x, y = (t.to(dtype) for t in samples(64, 48, 6))
    kwargs = dict(kernel=kernel, unbiased=unbiased)
    actual = value_and_grads(vaefast.mmd, x, y, **kwargs)
    assert all(t.dtype == dtype for t in actual)
    # The float64 truth of the rounded inputs: input rounding is not the kernel's error.
    truth = value_and_grads(reference.mmd, x.double(), y.double(), **kwargs)
    for a, low, t in zip(actual, low_precision_reference(x, y, dtype, **kwargs), truth):
        assert_earned(a, low, t)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", KERNELS)
def test_mmd_gradcheck(kernel, unbiased):
    x, y = samples(5, 6, 3)
    fn = lambda x, y: vaefast.mmd(x, y, kernel=kernel, scales=(0.5, 2.0), unbiased=unbiased)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), y.requires_grad_()))


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_prior_rbf_gradcheck(unbiased):
    z = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: vaefast.mmd_prior(z, kernel="rbf", unbiased=unbiased), (z,))


@needs_compiled
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck(dtype, kernel):
    x = torch.randn(9, 4, dtype=dtype, requires_grad=True)
    y = torch.randn(7, 4, dtype=dtype, requires_grad=True)
    grad = torch.rand((), dtype=torch.float64)
    scales, bandwidth = [0.5, 1.0, 2.0], 1.3
    ops = torch.ops.vaefast
    for exclude_diagonal in (True, False):
        torch.library.opcheck(ops.kernel_sum_self.default, (x, kernel, scales, bandwidth, exclude_diagonal))
        torch.library.opcheck(
            ops.kernel_sum_self_backward.default, (grad, x.detach(), kernel, scales, bandwidth, exclude_diagonal)
        )
        torch.library.opcheck(
            ops.kernel_sum_self_with_grad.default, (x.detach(), kernel, scales, bandwidth, exclude_diagonal)
        )
    torch.library.opcheck(ops.kernel_sum_cross.default, (x, y, kernel, scales, bandwidth))
    torch.library.opcheck(ops.kernel_sum_cross_with_grad.default, (x.detach(), y.detach(), kernel, scales, bandwidth))
    torch.library.opcheck(ops.kernel_sum_cross_with_grad.default,
                          (x.detach(), y.detach(), kernel, scales, bandwidth, False))
    torch.library.opcheck(ops.kernel_sum_cross_backward.default, (grad, x.detach(), y.detach(), kernel, scales, bandwidth))


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_prior_rbf_matches_reference(unbiased):
    z = 0.5 + torch.randn(40, 5, dtype=torch.float64)
    results = []
    for fn in (vaefast.mmd_prior, reference.mmd_prior):
        leaf = z.clone().requires_grad_()
        value = fn(leaf, kernel="rbf", unbiased=unbiased)
        results.append((value, *torch.autograd.grad(value, (leaf,))))
    assert_all_close64(*results)


def rbf_pair_values(a, b, scales, bandwidth):
    """k(a_i, b_i) row by row (the test's own statement of the RBF kernel, C_s = 2 s d bandwidth^2)."""
    sq_dist = (a - b).pow(2).sum(dim=1)
    return sum(torch.exp(-sq_dist / (2 * s * a.shape[1] * bandwidth**2)) for s in scales)


def test_mmd_prior_rbf_closed_form_matches_monte_carlo():
    """The closed-form prior terms E_y k(z_i, y) and E_{y,y'} k(y, y') against sample means over prior draws."""
    dim, draws = 4, 20000
    z = 0.8 * torch.randn(30, dim, dtype=torch.float64)
    scales, bandwidth = reference.DEFAULT_SCALES, 1.0
    # mmd_prior - Kzz = E k(y, y') - 2 mean_i E_y k(z_i, y): the part of the estimate that replaces samples.
    closed = vaefast.mmd_prior(z, kernel="rbf") - reference.mean_kernel(z, z, "rbf", scales, bandwidth, True)
    # Independent draws for the two terms; each term is a mean of i.i.d. values, so its standard error is
    # std / sqrt(draws). 5 standard errors: a false failure about once in 1.7 million runs.
    prior_draws = torch.randn(draws, dim, dtype=torch.float64)
    cross_values = reference.kernel_matrix(z, prior_draws, "rbf", scales, bandwidth).mean(dim=0)  # [draws]
    y, y_prime = torch.randn(2, draws, dim, dtype=torch.float64)
    prior_values = rbf_pair_values(y, y_prime, scales, bandwidth)  # [draws], one independent pair each
    monte_carlo = prior_values.mean() - 2 * cross_values.mean()
    standard_error = ((prior_values.var() + 4 * cross_values.var()) / draws).sqrt()
    assert abs(float(closed - monte_carlo)) < 5 * float(standard_error)


def test_mmd_prior_rbf_closed_form_with_prior_std_matches_monte_carlo():
    """The closed-form terms for N(0, p^2 I) against sample means over draws of p * N(0, I), at a bandwidth
    other than p so that the two do not cancel into the unit-prior case."""
    dim, draws, prior_std, bandwidth = 3, 20000, 0.2 + 2.8 * float(torch.rand(())), 1.3
    z = prior_std * torch.randn(30, dim, dtype=torch.float64)
    scales = reference.DEFAULT_SCALES
    closed = (vaefast.mmd_prior(z, kernel="rbf", prior_std=prior_std, bandwidth=bandwidth)
              - reference.mean_kernel(z, z, "rbf", scales, bandwidth, True))
    prior_draws = prior_std * torch.randn(draws, dim, dtype=torch.float64)
    cross_values = reference.kernel_matrix(z, prior_draws, "rbf", scales, bandwidth).mean(dim=0)
    y, y_prime = prior_std * torch.randn(2, draws, dim, dtype=torch.float64)
    prior_values = rbf_pair_values(y, y_prime, scales, bandwidth)
    monte_carlo = prior_values.mean() - 2 * cross_values.mean()
    standard_error = ((prior_values.var() + 4 * cross_values.var()) / draws).sqrt()
    assert abs(float(closed - monte_carlo)) < 5 * float(standard_error)


@pytest.mark.parametrize("kernel", KERNELS)
def test_mmd_prior_with_prior_std(kernel):
    """prior_std p: the prior samples are p times the unit draws of the same seed (imq, poly), compiled and
    reference paths agree, and for the scale-free kernels (imq, rbf) the estimate equals the unit prior's on
    z / p with bandwidth / p: kernel values depend on ||a - b||^2 / C_s only."""
    prior_std = 0.3 + 3 * float(torch.rand(()))
    z = prior_std * (0.5 + torch.randn(33, 5, dtype=torch.float64))
    seed = int(torch.randint(0, 2**31, ()))

    def both(fn, points, **kwargs):
        leaf = points.clone().requires_grad_()
        value = fn(leaf, kernel=kernel, generator=torch.Generator().manual_seed(seed), **kwargs)
        return value, *torch.autograd.grad(value, (leaf,))

    actual = both(vaefast.mmd_prior, z, prior_std=prior_std)
    assert_all_close64(actual, both(reference.mmd_prior, z, prior_std=prior_std, bandwidth=prior_std))
    if kernel == "poly":
        rows = z.shape[0]
        unit = philox.normal(rows * 5, philox.draw_seed(torch.Generator().manual_seed(seed), z.device), 0,
                             z.dtype, z.device).reshape(rows, -1)
        assert_close64(actual[0], reference.mmd(z, prior_std * unit, kernel="poly"))
    else:
        value, grad = both(vaefast.mmd_prior, z / prior_std, bandwidth=1.0)
        assert_close64(actual[0], value)
        assert_close64(actual[1], grad / prior_std)


@pytest.mark.parametrize("num_prior_samples", [None, 37])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", ["imq", "poly"])
def test_mmd_prior_sampled_matches_reference(kernel, unbiased, num_prior_samples):
    z = torch.randn(25, 6, dtype=torch.float64)
    kwargs = dict(kernel=kernel, unbiased=unbiased, num_prior_samples=num_prior_samples)
    seed = int(torch.randint(0, 2**31, ()))
    torch.manual_seed(seed)
    actual = vaefast.mmd_prior(z, **kwargs)
    torch.manual_seed(seed)
    assert_close64(actual, reference.mmd_prior(z, **kwargs))
    # An explicit generator draws the same samples on both paths too, and leaves the global one alone.
    state = torch.get_rng_state()
    actual = vaefast.mmd_prior(z, generator=torch.Generator().manual_seed(seed), **kwargs)
    assert_close64(actual, reference.mmd_prior(z, generator=torch.Generator().manual_seed(seed), **kwargs))
    assert torch.equal(state, torch.get_rng_state())


def test_mmd_prior_sampled_gradient_matches_reference():
    z = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    seed = int(torch.randint(0, 2**31, ()))
    (grad,) = torch.autograd.grad(vaefast.mmd_prior(z, generator=torch.Generator().manual_seed(seed)), (z,))
    (expected,) = torch.autograd.grad(reference.mmd_prior(z, generator=torch.Generator().manual_seed(seed)), (z,))
    assert_close64(grad, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", KERNELS)
def test_mmd_of_identical_samples_is_zero_when_biased(kernel, dtype):
    x = torch.randn(50, 6, dtype=dtype)
    value = vaefast.mmd(x, x.clone(), kernel=kernel, unbiased=False)
    # Kxx, Kyy and Kxy average the same values in different orders: a few roundings of the terms' size.
    terms = float(reference.mean_kernel(x.double(), x.double(), kernel, reference.DEFAULT_SCALES, 1.0, False))
    assert abs(float(value)) <= 16 * torch.finfo(dtype).eps * terms


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", KERNELS)
def test_mmd_is_symmetric(kernel, unbiased):
    x, y = samples(31, 44, 5)
    assert_close64(vaefast.mmd(x, y, kernel=kernel, unbiased=unbiased), vaefast.mmd(y, x, kernel=kernel, unbiased=unbiased))


@pytest.mark.parametrize("kernel", KERNELS)
def test_unbiased_mmd_averages_to_zero_for_one_distribution(kernel):
    draws, n, d = 400, 8, 3
    estimates = {True: [], False: []}
    for _ in range(draws):
        x, y = torch.randn(2, n, d, dtype=torch.float64)
        for unbiased in (True, False):
            estimates[unbiased].append(float(vaefast.mmd(x, y, kernel=kernel, unbiased=unbiased)))
    unbiased_values, biased_values = torch.tensor(estimates[True]), torch.tensor(estimates[False])
    # Mean of i.i.d. estimates, standard error std / sqrt(draws); 5 of them: false failure ~ 1 in 1.7 million.
    assert abs(float(unbiased_values.mean())) < 5 * float(unbiased_values.std() / draws**0.5)
    # The biased estimator's expectation, (E k(x, x) - E k(x, x')) (1/n + 1/m), is well above zero.
    assert float(biased_values.mean()) > 5 * float(biased_values.std() / draws**0.5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_nan_propagates(kernel):
    x, y = samples(20, 15, 4)
    x[3, 1] = float("nan")
    for unbiased in (True, False):
        value, grad_x, _ = value_and_grads(vaefast.mmd, x, y, kernel=kernel, unbiased=unbiased)
        assert value.isnan() and reference.mmd(x, y, kernel=kernel, unbiased=unbiased).isnan()
        assert grad_x[3].isnan().all()


@needs_compiled
def test_empty_and_tiny_kernel_sums():
    empty = torch.empty(0, 3)
    assert float(torch.ops.vaefast.kernel_sum_self(empty, "imq", [1.0], 1.0, True)) == 0
    assert float(torch.ops.vaefast.kernel_sum_cross(empty, torch.randn(4, 3), "imq", [1.0], 1.0)) == 0
    one = torch.randn(1, 3, dtype=torch.float64)
    # One row: no pair off the diagonal; on it, D = 0 and k = sum_s C_s / C_s = the number of scales.
    assert float(torch.ops.vaefast.kernel_sum_self(one, "imq", [1.0, 2.0], 1.0, True)) == 0
    assert float(torch.ops.vaefast.kernel_sum_self(one, "imq", [1.0, 2.0], 1.0, False)) == 2


MEMORY_SCRIPT = textwrap.dedent(
    """
    import torch, vaefast

    def status_bytes(field):
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    def peak_growth(run):
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # restart the peak (VmHWM) from the current resident size
        before = status_bytes("VmRSS")
        run()
        return status_bytes("VmHWM") - before

    n, d = 4096, 64
    x = torch.randn(n, d, requires_grad=True)
    y = torch.randn(n, d, requires_grad=True)
    vaefast.mmd(x[:64], y[:64]).backward()  # load everything, start the threads
    mmd_growth = peak_growth(lambda: vaefast.mmd(x, y).backward())
    # One [n, n] float32 matrix: proves that the tracker sees such an allocation.
    matrix_growth = peak_growth(lambda: torch.ones(n, n).sum())
    print(mmd_growth, matrix_growth)
    """
)


@needs_compiled
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc peak-RSS counters")
def test_forward_backward_never_allocates_an_n_by_n_matrix():
    # The peak resident memory of a fresh process, not a clock and not torch's allocator alone: it also
    # counts the kernels' own std::vector buffers. The inputs take 1 MB each; one [4096, 4096] float32 is 64 MB.
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=120, check=True)
    mmd_growth, matrix_growth = map(int, result.stdout.split())
    n_by_n = 4096 * 4096 * 4
    assert matrix_growth > n_by_n // 2, f"the tracker missed a deliberate [n, n] allocation ({result.stdout})"
    assert mmd_growth < n_by_n // 4, f"forward + backward grew the peak memory by {mmd_growth / 2**20:.1f} MB"


def exact_mean_kernel(a, b, kernel, exclude_diagonal, block=25):
    """reference.mean_kernel in float64, without its two losses of precision: cdist subtracts coordinates
    directly for at most 25 rows a side and switches to ||a||^2 + ||b||^2 - 2 a.b beyond, which is off by
    about eps * ||a||^2 (relative to C_s: eps * spread^2 / bandwidth^2, 1e-10 at a spread of 1e3); and
    sum - trace cancels the diagonal's k = 7 against off-diagonal values that may be 1e-6. So the
    reference's kernel matrix is evaluated on blocks of 25 rows, and the diagonal masked out."""
    a, b = a.double(), b.double()
    total = 0.0
    for i in range(0, a.shape[0], block):
        for j in range(0, b.shape[0], block):
            values = reference.kernel_matrix(a[i:i + block], b[j:j + block], kernel)
            if exclude_diagonal and i == j:
                values = values.masked_fill(torch.eye(len(values), dtype=torch.bool), 0)
            total += float(values.sum())
    n = a.shape[0]
    return torch.tensor(total / (n * (n - 1) if exclude_diagonal else n * b.shape[0]), dtype=torch.float64)


@needs_compiled
@given(
    n=st.integers(2, 40),
    m=st.integers(2, 40),
    d=st.integers(1, 20),
    kernel=st.sampled_from(KERNELS),
    unbiased=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    spread=st.sampled_from([1e-20, 1e-3, 1.0, 1e3, 1e6]),
    seed=st.integers(0, 2**31 - 1),
)
def test_mmd_property_against_reference(n, m, d, kernel, unbiased, dtype, spread, seed):
    # poly grows as spread^6: from 1e6 it overflows float32 (on both paths), where no comparison is meaningful.
    assume(not (kernel == "poly" and dtype == torch.float32 and spread > 1e3))
    x, y = (spread * t for t in samples(n, m, d, generator=torch.Generator().manual_seed(seed)))
    x, y = x.to(dtype), y.to(dtype)
    actual = vaefast.mmd(x, y, kernel=kernel, unbiased=unbiased)
    terms = [exact_mean_kernel(x, x, kernel, unbiased), exact_mean_kernel(y, y, kernel, unbiased),
             exact_mean_kernel(x, y, kernel, False)]
    truth = terms[0] + terms[1] - 2 * terms[2]
    # Kxx + Kyy - 2 Kxy may cancel: rounding is relative to the terms, not to their difference, so the
    # floor is a few ulps of the terms (assert_earned's floor, relative to the difference, is too tight
    # where the float32 reference's own error happens to cancel out). imq and rbf values are positive, so
    # a term's size is its mean. poly's are signed and its dot products round relative to sum_i |a_i b_i|:
    # the size that bounds its error is the kernel of the absolute values, (|a|.|b| / d + 1)^3 >= |k|,
    # and a length-d dot product, the +1 and the cube take about 3 (d + 2) roundings of it.
    if kernel == "poly":
        x_abs, y_abs = x.abs(), y.abs()
        sizes = [exact_mean_kernel(x_abs, x_abs, kernel, unbiased), exact_mean_kernel(y_abs, y_abs, kernel, unbiased),
                 exact_mean_kernel(x_abs, y_abs, kernel, False)]
        roundings = 3 * (d + 2)
    else:
        sizes, roundings = terms, 8
    terms_size = float(sizes[0].abs() + sizes[1].abs() + 2 * sizes[2].abs())
    if dtype == torch.float32:
        reference_error = max_error(reference.mmd(x, y, kernel=kernel, unbiased=unbiased), truth)
        budget = 2 * reference_error + roundings * torch.finfo(dtype).eps * terms_size
    else:
        budget = 1e-12 * terms_size
    assert max_error(actual, truth) <= budget


@needs_compiled
@pytest.mark.parametrize("n, m", [(33, 5), (257, 70), (300, 290), (300, 520)])
@pytest.mark.parametrize("kernel", KERNELS)
def test_with_grad_ops_agree_with_the_sum_and_the_backward_ops(kernel, n, m):
    # Autograd runs the *_with_grad ops when an input requires grad: their sums must be the plain sums bit
    # for bit (same tiles, same order), so a loss does not depend on whether it is differentiated; their
    # gradients (at an incoming gradient of 1) must be the backward ops'. Sizes: one block and a partial
    # one; 9 (odd) and 3 blocks, the cross gradient side by side; 10 and 17 blocks, in rounds of tiles.
    # float64: float32 tiles give sums of few significant bits, which double adds exactly in any order.
    x, y = samples(n, m, 6)
    scales, bandwidth, one = [0.5, 1.0, 2.0], 1.3, torch.ones((), dtype=torch.float64)
    ops = torch.ops.vaefast
    for exclude_diagonal in (True, False):
        total, grad_x = ops.kernel_sum_self_with_grad(x, kernel, scales, bandwidth, exclude_diagonal)
        assert same_bits(total, ops.kernel_sum_self(x, kernel, scales, bandwidth, exclude_diagonal))
        expected = ops.kernel_sum_self_backward(one, x, kernel, scales, bandwidth, exclude_diagonal)
        torch.testing.assert_close(grad_x, expected, rtol=1e-13, atol=1e-13 * float(expected.abs().max()))
    total, grad_x, grad_y = ops.kernel_sum_cross_with_grad(x, y, kernel, scales, bandwidth)
    assert same_bits(total, ops.kernel_sum_cross(x, y, kernel, scales, bandwidth))
    for actual, expected in zip((grad_x, grad_y), ops.kernel_sum_cross_backward(one, x, y, kernel, scales, bandwidth)):
        torch.testing.assert_close(actual, expected, rtol=1e-13, atol=1e-13 * float(expected.abs().max()))
    # Without y's side (mmd_prior's samples take no gradient): the same sum and x's gradient, bit for bit,
    # from the pass that skips y's half of every tile; nothing in y's place.
    total_x_only, grad_x_only, nothing = ops.kernel_sum_cross_with_grad(x, y, kernel, scales, bandwidth, False)
    assert same_bits(total_x_only, total) and same_bits(grad_x_only, grad_x) and nothing.shape == (0,)
    # The gradients come in float32 for float32 (and half) inputs, to be rounded once after scaling.
    assert ops.kernel_sum_self_with_grad(x.float(), kernel, scales, bandwidth, True)[1].dtype == torch.float32
    # And through autograd: the estimator's value with and without a graph.
    with torch.no_grad():
        plain = vaefast.mmd(x, y, kernel=kernel)
    assert same_bits(vaefast.mmd(x.requires_grad_(), y, kernel=kernel).detach(), plain)


@needs_compiled
@pytest.mark.parametrize("n, m", [(300, 211), (300, 290)])  # the cross gradient side by side; in rounds of tiles
@pytest.mark.parametrize("kernel", KERNELS)
def test_bit_identical_whatever_the_thread_count(kernel, n, m):
    x, y = samples(n, m, 9, dtype=torch.float32)
    assert_same_bits_at_1_and_2_threads(lambda: value_and_grads(vaefast.mmd, x, y, kernel=kernel))


@pytest.mark.parametrize(
    "make_args, error, match",
    [
        (lambda x, y: (x[0], y), ValueError, r"x must be a 2-D tensor \[n, d\]"),
        (lambda x, y: (x, y[:, :2]), ValueError, r"y must have d = 4 columns like x \[n, d\] = \[6, 4\]; got \[5, 2\]"),
        (lambda x, y: (x.long(), y), TypeError, "x must be a floating-point tensor"),
        (lambda x, y: (x, y.to(torch.complex64)), TypeError, "y must be a floating-point tensor"),
        (lambda x, y: (x[:, :0], y[:, :0]), ValueError, "x must have at least one column"),
        (lambda x, y: (x[:1], y), ValueError, "x must have at least 2 rows"),
        (lambda x, y: (x, y[:1]), ValueError, "y must have at least 2 rows"),
    ],
)
def test_bad_tensors_name_the_argument(make_args, error, match):
    x, y = samples(6, 5, 4)
    with pytest.raises(error, match=match):
        vaefast.mmd(*make_args(x, y))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(kernel="gauss"), ValueError, "kernel must be one of"),
        (dict(scales=(1.0, 0.0)), ValueError, r"scales\[1\] must be positive"),
        (dict(scales=(-2.0,)), ValueError, r"scales\[0\] must be positive"),
        (dict(scales=()), ValueError, "scales must hold at least one"),
        (dict(bandwidth=0.0), ValueError, "bandwidth must be positive"),
        (dict(bandwidth=-1.0), ValueError, "bandwidth must be positive"),
    ],
)
def test_bad_kernel_arguments_name_the_argument(kwargs, error, match):
    x, y = samples(6, 5, 4)
    with pytest.raises(error, match=match):
        vaefast.mmd(x, y, **kwargs)
    with pytest.raises(error, match=match):
        vaefast.mmd_prior(x, **kwargs)


def test_bad_prior_arguments_name_the_argument():
    z = torch.randn(6, 3)
    with pytest.raises(ValueError, match="num_prior_samples must be >= 2"):
        vaefast.mmd_prior(z, num_prior_samples=0)
    with pytest.raises(ValueError, match="num_prior_samples must be >= 1"):
        vaefast.mmd_prior(z, num_prior_samples=0, unbiased=False)
    with pytest.raises(ValueError, match="z must have at least 2 rows"):
        vaefast.mmd_prior(z[:1])
    with pytest.raises(ValueError, match="z must be a 2-D tensor"):
        vaefast.mmd_prior(z[0])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        vaefast.mmd_prior(z, generator=3)
    for prior_std in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="prior_std must be positive and finite"):
            vaefast.mmd_prior(z, prior_std=prior_std)
    with pytest.raises(TypeError, match="prior_std must be a positive number"):
        vaefast.mmd_prior(z, prior_std="1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to put x and y on different devices")
def test_inputs_on_different_devices_name_the_argument():
    x, y = samples(6, 5, 4)
    with pytest.raises(ValueError, match="y is on cuda"):
        vaefast.mmd(x, y.cuda())


def test_mixed_float_dtypes_are_promoted():
    x, y = samples(12, 10, 3)
    value = vaefast.mmd(x.float(), y)
    assert value.dtype == torch.float64
    assert vaefast.mmd(x.half(), y.float()).dtype == torch.float32


@needs_compiled
def test_kernel_ops_check_their_arguments():
    x = torch.randn(5, 3)
    ops = torch.ops.vaefast
    with pytest.raises(RuntimeError, match="scales must hold 1 to 16"):
        ops.kernel_sum_self(x, "imq", [1.0] * 17, 1.0, True)
    with pytest.raises(RuntimeError, match="kernel must be one of"):
        ops.kernel_sum_cross(x, x, "gauss", [1.0], 1.0)
    with pytest.raises(RuntimeError, match=r"y must have d = 3 columns like x"):
        ops.kernel_sum_cross(x, torch.randn(4, 2), "imq", [1.0], 1.0)
    with pytest.raises(RuntimeError, match="grad must hold one value"):
        ops.kernel_sum_self_backward(torch.ones(2), x, "imq", [1.0], 1.0, True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_path_accepts_small_half_precision_batches(dtype):
    """The fallback path (no extension, or VAEFAST_BACKEND=reference) must not crash on a small float16 or
    bfloat16 batch, where CPU cdist has no kernel; its value stays close to the float64 truth."""
    x64, y64 = torch.randn(8, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64) + 0.5
    x, y = x64.to(dtype), y64.to(dtype)
    got = reference.mmd(x, y)
    truth = reference.mmd(x.double(), y.double())
    assert got.dtype == dtype
    # The half-precision kernel sums lose a few units of their dtype's eps relative to the terms (~7 each).
    assert abs(float(got) - float(truth)) <= 64 * torch.finfo(dtype).eps * 7
