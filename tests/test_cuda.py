"""CUDA-specific tests: every op's CUDA kernel against the CPU kernel on the same inputs (values and
gradients), the fused head against the two ops it fuses, the Philox stream on both devices, determinism,
CUDA-graph capture and replay of a training step, torch.compile(mode="reduce-overhead"), and int64 indexing
past 2^31 elements. Skipped where there is no CUDA device or the extension was built without CUDA kernels
(python -m vaefast.gpu_check builds it).
"""
import pytest
import torch

import vaefast
from vaefast import _backend

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in _backend.KERNEL_DEVICES["gaussian_kl"],
    reason="needs a CUDA device and vaefast._C built with CUDA kernels",
)

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# CPU and CUDA kernels evaluate the same formulas in the same accumulation type; they differ by the
# rounding of exp/log/sincos (a few ulps) and by summation order. Low-precision outputs may differ by one
# rounding of the output (2^-8 for bfloat16, 2^-11 for float16) on top.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float16: dict(rtol=4e-3, atol=4e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}
# Per-sample sums: rows of 5000 features cross kRowChunk = 2048 (several chunks); 37 features is not a
# multiple of any vector width (scalar path); 130 rows span three 64-row blocks of the per-feature NLL grad.
SHAPES = ((4, 64), (3, 37), (130, 24), (2, 5000), (5, 3, 7))


def on_both(*tensors):
    """(cpu leaf tensors, cuda leaf tensors) with the same values, requiring grad where floating."""
    cpu = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]
    cuda = [t.detach().cuda().requires_grad_(t.is_floating_point()) for t in tensors]
    return cpu, cuda


def assert_same(cuda_value, cpu_value, dtype):
    torch.testing.assert_close(cuda_value.detach().cpu(), cpu_value.detach(), **TOLERANCES[dtype])


def compare(fn, inputs, dtype):
    """fn on CPU and CUDA copies of inputs: values and gradients (of a fixed random upstream) agree."""
    cpu, cuda = on_both(*inputs)
    out_cpu, out_cuda = fn(*cpu), fn(*cuda)
    assert_same(out_cuda, out_cpu, dtype)
    upstream = torch.randn(out_cpu.shape, dtype=torch.float64).to(out_cpu.dtype)
    grads_cpu = torch.autograd.grad(out_cpu, cpu, upstream, allow_unused=True)
    grads_cuda = torch.autograd.grad(out_cuda, cuda, upstream.cuda(), allow_unused=True)
    for g_cpu, g_cuda in zip(grads_cpu, grads_cuda):
        assert (g_cpu is None) == (g_cuda is None)
        if g_cpu is not None:
            assert_same(g_cuda, g_cpu, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_kl_matches_cpu(dtype, shape):
    mu, logvar = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    compare(lambda m, l: vaefast.gaussian_kl(m, l, reduction="none"), (mu, logvar), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ("scalar", "per_sample", "per_feature", "full"))
def test_gaussian_nll_matches_cpu(dtype, shape, layout):
    x, x_hat = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    per_sample = (shape[0], *([1] * (len(shape) - 1)))
    log_gamma_shape = {"scalar": (), "per_sample": per_sample, "per_feature": shape[1:], "full": shape}[layout]
    log_gamma = (0.3 * torch.randn(log_gamma_shape)).to(dtype)
    compare(lambda a, b, g: vaefast.gaussian_nll(a, b, g, reduction="none"), (x, x_hat, log_gamma), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((4, 64), (3, 37), (2, 1, 5)))
@pytest.mark.parametrize("num_samples", (None, 3))
def test_reparameterize_with_eps_matches_cpu(dtype, shape, num_samples):
    mu, logvar = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    eps = torch.randn(shape if num_samples is None else (num_samples, *shape)).to(dtype)
    compare(lambda m, l, e: vaefast.reparameterize(m, l, eps=e, num_samples=num_samples), (mu, logvar, eps), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", (1, 7, 64, 1001, 4096 + 3))
@pytest.mark.parametrize("num_samples", (None, 2))
def test_philox_eps_identical_on_cpu_and_cuda(dtype, numel, num_samples):
    """Same (seed, offset): the same eps on both devices, up to the rounding of log/sqrt/sincos."""
    seed, offset = 0x1234_5678_9ABC, 8
    mu, logvar = torch.randn(numel).to(dtype), torch.randn(numel).to(dtype)
    compare(lambda m, l: vaefast.reparameterize_philox(m, l, seed, offset, num_samples=num_samples), (mu, logvar), dtype)
    zeros = torch.zeros(numel, dtype=dtype)
    eps_cpu = vaefast.reparameterize_philox(zeros, zeros, seed, offset)
    eps_cuda = vaefast.reparameterize_philox(zeros.cuda(), zeros.cuda(), seed, offset)
    assert_same(eps_cuda, eps_cpu, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_samples", (None, 3))
def test_reparameterize_kl_is_the_two_ops_bit_for_bit(dtype, shape, num_samples):
    """The fused head from a CUDA generator state: reparameterize's z and gaussian_kl's per-sample KL, bit for
    bit (the same Philox offsets, the same row sums)."""
    mu, logvar = torch.randn(shape, device="cuda").to(dtype), torch.randn(shape, device="cuda").to(dtype)
    generator = torch.Generator("cuda")
    generator.manual_seed(0x5EED)
    z, kl = vaefast.reparameterize_kl(mu, logvar, num_samples=num_samples, generator=generator, reduction="none")
    generator.manual_seed(0x5EED)
    assert torch.equal(z, vaefast.reparameterize(mu, logvar, num_samples=num_samples, generator=generator))
    assert torch.equal(kl, vaefast.gaussian_kl(mu, logvar, reduction="none"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_samples", (None, 3))
def test_reparameterize_kl_backward_matches_cpu(dtype, shape, num_samples):
    z_shape = shape if num_samples is None else (num_samples, *shape)
    args = [torch.randn(z_shape), torch.randn(shape[0]), torch.randn(z_shape), torch.randn(shape), torch.randn(shape)]
    args = [t.to(dtype) for t in args]  # grad_z, grad_kl, z, mu, logvar
    expected = torch.ops.vaefast.reparameterize_kl_backward(*args)
    actual = torch.ops.vaefast.reparameterize_kl_backward(*(t.cuda() for t in args))
    for got, want in zip(actual, expected):
        assert_same(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reparameterize_kl_gradients_match_the_two_ops(dtype, shape):
    """One fused backward against the two ops' backwards summed by autograd, on the same draw."""
    generator = torch.Generator("cuda")
    inputs = [torch.randn(shape, device="cuda").to(dtype).requires_grad_() for _ in range(2)]
    grads = []
    def separate(mu, logvar, generator):
        return vaefast.reparameterize(mu, logvar, generator=generator), vaefast.gaussian_kl(mu, logvar)

    for head in (vaefast.reparameterize_kl, separate):
        generator.manual_seed(7)
        z, kl = head(*inputs, generator=generator)
        grads.append(torch.autograd.grad((z * z.detach().sign()).sum() + 3 * kl, inputs))
    for got, want in zip(*grads):
        assert_same(got, want, dtype)


def capture_graph(step):
    """(graph, outputs): step() warmed up three times on a side stream, as capture requires, then captured
    once; graph.replay() reruns it into the same output tensors."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs


def test_reparameterize_kl_cuda_graph_replay_draws_fresh_noise():
    mu = torch.randn(64, 16, device="cuda", requires_grad=True)
    logvar = torch.randn(64, 16, device="cuda", requires_grad=True)

    def step():
        z, kl = vaefast.reparameterize_kl(mu, logvar)
        return z, torch.autograd.grad(z.square().mean() + kl, (mu, logvar))

    graph, (static_z, static_grads) = capture_graph(step)
    draws = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        assert all(bool(torch.isfinite(g).all()) for g in static_grads)
        draws.append(static_z.clone())
    assert not torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ("imq", "rbf", "poly"))
@pytest.mark.parametrize("sizes", ((5, 7, 3), (64, 64, 8), (130, 70, 100)))
def test_mmd_matches_cpu(dtype, kernel, sizes):
    n, m, d = sizes
    x, y = torch.randn(n, d).to(dtype), (torch.randn(m, d) + 0.5).to(dtype)
    for unbiased in (True, False):
        compare(lambda a, b: vaefast.mmd(a, b, kernel=kernel, unbiased=unbiased), (x, y), dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_kernel_sums_match_cpu_directly(dtype):
    """The raw ops (float64 sums) including the self sum with and without its diagonal."""
    x, y = torch.randn(100, 9, dtype=dtype), torch.randn(67, 9, dtype=dtype)
    scales = [0.1, 1.0, 10.0]
    for exclude in (True, False):
        for kernel in ("imq", "rbf", "poly"):
            cpu = torch.ops.vaefast.kernel_sum_self(x, kernel, scales, 1.0, exclude)
            cuda = torch.ops.vaefast.kernel_sum_self(x.cuda(), kernel, scales, 1.0, exclude)
            torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)
    cpu = torch.ops.vaefast.kernel_sum_cross(x, y, "imq", scales, 1.0)
    cuda = torch.ops.vaefast.kernel_sum_cross(x.cuda(), y.cuda(), "imq", scales, 1.0)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


def test_non_contiguous_inputs():
    mu = torch.randn(64, 40, device="cuda").t()  # [40, 64], strided
    logvar = torch.randn(64, 40, device="cuda").t()
    torch.testing.assert_close(vaefast.gaussian_kl(mu, logvar, reduction="none"),
                               vaefast.gaussian_kl(mu.contiguous(), logvar.contiguous(), reduction="none"))


def test_deterministic():
    """Same inputs, same bits: fixed reduction orders, no atomics."""
    mu, logvar = torch.randn(7, 100_003, device="cuda"), torch.randn(7, 100_003, device="cuda")
    assert torch.equal(vaefast.gaussian_kl(mu, logvar, reduction="none"), vaefast.gaussian_kl(mu, logvar, reduction="none"))
    x, y = torch.randn(1000, 16, device="cuda"), torch.randn(900, 16, device="cuda")
    assert torch.equal(vaefast.mmd(x, y), vaefast.mmd(x, y))


def test_fresh_noise_per_call_and_seeded():
    mu = torch.zeros(1000, device="cuda")
    torch.manual_seed(0)
    first, second = vaefast.reparameterize(mu, mu), vaefast.reparameterize(mu, mu)
    assert not torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(vaefast.reparameterize(mu, mu), first)
    assert abs(float(first.mean())) < 0.2 and abs(float(first.std()) - 1) < 0.1


def training_step_fn(batch=32, latent=8, pixels=49):
    """A tiny VAE + WAE loss head using every op; returns (step, parameters)."""
    encoder = torch.nn.Linear(pixels, 2 * latent).cuda()
    decoder = torch.nn.Linear(latent, pixels).cuda()
    log_gamma = torch.zeros((), device="cuda", requires_grad=True)
    params = [*encoder.parameters(), *decoder.parameters(), log_gamma]
    x = torch.rand(batch, pixels, device="cuda")

    def step():
        mu, logvar = encoder(x).chunk(2, dim=1)
        z = vaefast.reparameterize(mu, logvar)
        x_hat = decoder(z)
        prior = vaefast.reparameterize(torch.zeros_like(mu), torch.zeros_like(logvar))
        loss = (vaefast.gaussian_nll(x, x_hat, log_gamma) + vaefast.gaussian_kl(mu, logvar)
                + vaefast.mmd(z, prior))
        grads = torch.autograd.grad(loss, params)
        return z, loss, grads

    return step


def test_cuda_graph_capture_and_replay_draws_fresh_noise():
    step = training_step_fn()
    graph, (static_z, static_loss, static_grads) = capture_graph(step)
    draws = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert bool(torch.isfinite(static_loss)) and all(bool(torch.isfinite(g).all()) for g in static_grads)
        draws.append(static_z.clone())
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


def test_torch_compile_reduce_overhead():
    mu, logvar = torch.randn(64, 16, device="cuda"), torch.randn(64, 16, device="cuda")
    x, x_hat = torch.rand(64, 49, device="cuda"), torch.rand(64, 49, device="cuda")
    eps = torch.randn(64, 16, device="cuda")

    def loss_fn(mu, logvar, x, x_hat, eps):
        z = vaefast.reparameterize(mu, logvar, eps=eps)
        return (vaefast.gaussian_nll(x, x_hat, torch.zeros((), device="cuda")) + vaefast.gaussian_kl(mu, logvar)
                + vaefast.mmd(z, eps))

    compiled = torch.compile(loss_fn, mode="reduce-overhead", fullgraph=True)
    expected = loss_fn(mu, logvar, x, x_hat, eps)
    for _ in range(3):  # warm-up, record, replay
        torch.testing.assert_close(compiled(mu, logvar, x, x_hat, eps), expected)

    fresh = torch.compile(lambda m, l: vaefast.reparameterize(m, l), mode="reduce-overhead", fullgraph=True)
    draws = [fresh(mu, logvar).clone() for _ in range(4)]
    assert not torch.equal(draws[-1], draws[-2])


def test_more_than_2_31_elements():
    """int64 indexing: a per-sample KL over one row of 2^31 + 64 float16 elements, with the only non-zero
    terms past index 2^31."""
    numel = 2**31 + 64
    free, _ = torch.cuda.mem_get_info()
    if free < 5 * numel * 2 + 2**30:  # mu, logvar, grad_mu, grad_logvar (float16) and slack
        pytest.skip(f"needs about {5 * numel * 2 / 2**30:.0f} GiB of free GPU memory")
    mu = torch.zeros(1, numel, dtype=torch.float16, device="cuda")
    logvar = torch.zeros_like(mu)
    mu[0, 2**31 + 5] = 1.0
    mu[0, -1] = 2.0
    mu.requires_grad_(True)
    kl = vaefast.gaussian_kl(mu, logvar, reduction="none")
    assert float(kl[0]) == pytest.approx(2.5)
    (grad_mu,) = torch.autograd.grad(kl.sum(), mu)
    assert float(grad_mu[0, -1]) == 2.0 and float(grad_mu[0, 2**31 + 5]) == 1.0
    del grad_mu
    z = vaefast.reparameterize_philox(mu.detach(), logvar, seed=1, offset=0)
    tail = vaefast.reparameterize_philox(mu.detach()[:, -4096:].contiguous(), logvar[:, -4096:].contiguous(), 1, 0)
    assert bool(torch.isfinite(z[0, -4096:]).all())
    assert z.shape == mu.shape and tail.shape == (1, 4096)
