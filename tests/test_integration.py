"""All ops together: torch.compile without graph breaks, the backend switch, build information."""
import json
import os
import subprocess
import sys

import pytest
import torch

import vaefast
from vaefast.ops import reference
from tests.conftest import assert_close64

COMPILED = vaefast.backend_info()["compiled"]
needs_compiled = pytest.mark.skipif(not COMPILED, reason="the compiled extension is not built")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loss_head(ops, x, mu, logvar, weight, log_gamma, eps, prior):
    """A VAE + WAE loss head that touches every op, written against vaefast or its reference module."""
    z = ops.reparameterize(mu, logvar)  # noise drawn in-kernel from the default generator
    z_given = ops.reparameterize(mu, logvar, eps=eps)
    x_hat = torch.sigmoid(z @ weight)
    return (
        ops.gaussian_nll(x, x_hat, log_gamma)
        + ops.gaussian_kl(mu, logvar)
        + ops.mmd(z_given, prior)
        + ops.mmd_prior(z, kernel="rbf")
    )


def make_batch(dtype=torch.float64):
    batch, latent, pixels = 16, 8, 20
    tensors = dict(
        x=torch.rand(batch, pixels, dtype=dtype),
        mu=torch.randn(batch, latent, dtype=dtype, requires_grad=True),
        logvar=torch.randn(batch, latent, dtype=dtype).mul(0.3).requires_grad_(),
        weight=torch.randn(latent, pixels, dtype=dtype, requires_grad=True),
        log_gamma=torch.zeros((), dtype=dtype, requires_grad=True),
        eps=torch.randn(batch, latent, dtype=dtype),
        prior=torch.randn(batch, latent, dtype=dtype),
    )
    return tensors


@needs_compiled
def test_compile_fullgraph_every_op_forward_and_backward():
    torch._dynamo.reset()
    batch = make_batch()
    names = ("mu", "logvar", "weight", "log_gamma")
    params = [batch[k] for k in names]
    compiled = torch.compile(loss_head, fullgraph=True, backend="inductor")  # fullgraph: a break raises
    seed = int(torch.randint(0, 2**31, ()))
    torch.manual_seed(seed)
    loss = compiled(vaefast, **batch)
    grads = torch.autograd.grad(loss, params)
    # The compiled op draws its seed from the default generator exactly as the reference does.
    torch.manual_seed(seed)
    expected = loss_head(reference, **batch)
    assert_close64(loss, expected)
    for got, want in zip(grads, torch.autograd.grad(expected, params)):
        assert_close64(got, want)


@needs_compiled
def test_compiled_draws_fresh_noise_each_call():
    torch._dynamo.reset()
    mu = torch.zeros(64, 8)
    draw = torch.compile(lambda m: vaefast.reparameterize(m, m), fullgraph=True)
    first, second = draw(mu), draw(mu)
    assert not torch.equal(first, second)
    # Two draws inside one graph are never merged into one (the op is tagged nondeterministic_seeded).
    both = torch.compile(lambda m: (vaefast.reparameterize(m, m), vaefast.reparameterize(m, m)), fullgraph=True)(mu)
    assert not torch.equal(*both)


def test_backend_info_describes_the_build():
    info = vaefast.backend_info()
    assert set(info) >= {"compiled", "ops", "backend"}
    assert set(info["ops"]) >= {"reparameterize", "gaussian_kl", "gaussian_nll", "kernel_sum_self"}
    if info["compiled"]:
        assert "cpu" in info["ops"]["gaussian_kl"]
        assert info["build"]["version"] == vaefast.__version__
        assert "cpu" in info["build"]["devices"]


def run_with_backend(backend, script):
    env = dict(os.environ, VAEFAST_BACKEND=backend, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT)


def test_reference_backend_is_forced_by_the_environment(tmp_path):
    batch = make_batch()
    torch.save({k: v.detach() for k, v in batch.items()}, tmp_path / "batch.pt")
    script = f"""
import json, torch, vaefast
b = torch.load({str(tmp_path / 'batch.pt')!r})
loss = vaefast.gaussian_nll(b['x'], torch.sigmoid(b['eps'] @ b['weight']), b['log_gamma']) + vaefast.gaussian_kl(b['mu'], b['logvar']) + vaefast.mmd(b['eps'], b['prior'])
print(json.dumps({{'compiled': vaefast.backend_info()['compiled'], 'loss': float(loss)}}))
"""
    result = run_with_backend("reference", script)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["compiled"] is False
    b = {k: v.detach() for k, v in batch.items()}
    expected = (
        reference.gaussian_nll(b["x"], torch.sigmoid(b["eps"] @ b["weight"]), b["log_gamma"])
        + reference.gaussian_kl(b["mu"], b["logvar"])
        + reference.mmd(b["eps"], b["prior"])
    )
    assert abs(out["loss"] - float(expected)) < 1e-9 * max(1.0, abs(float(expected)))


def test_unknown_backend_is_a_clear_error():
    result = run_with_backend("fast", "import vaefast")
    assert result.returncode != 0
    assert "VAEFAST_BACKEND" in result.stderr


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda a, b: vaefast.reparameterize(a, b), "logvar"),
        (lambda a, b: vaefast.reparameterize(a, a, eps=b), "eps"),
        (lambda a, b: vaefast.gaussian_kl(a, b), "logvar"),
        (lambda a, b: vaefast.reparameterize_kl(a, b), "logvar"),
        (lambda a, b: vaefast.gaussian_nll(a, b, torch.zeros(())), "x_hat"),
        (lambda a, b: vaefast.gaussian_nll(a, a, b[0, 0]), "log_gamma"),
        (lambda a, b: vaefast.mmd(a, b), "y"),
    ],
)
def test_arguments_on_different_devices_are_named(call, name):
    """The check needs two devices, not a GPU: the meta device (shapes without data) is one."""
    here = torch.randn(4, 3)
    elsewhere = torch.randn(4, 3).to("meta")
    with pytest.raises(ValueError, match=name):
        call(here, elsewhere)


def head_loss(ops, b):
    """The fused head with a fixed seed (the same noise on the compiled and the reference path)."""
    z, kl = ops.reparameterize_kl(b["mu"], b["logvar"], generator=torch.Generator().manual_seed(11))
    return z.square().sum() + kl


def _ops_under_second_order():
    """(name of the op whose backward is reached, loss(ops, batch), tensors it differentiates)."""
    return [
        ("vaefast::reparameterize_with_eps",
         lambda ops, b: ops.reparameterize(b["mu"], b["logvar"], eps=b["eps"]).square().sum(), ("mu", "logvar")),
        ("vaefast::gaussian_kl", lambda ops, b: ops.gaussian_kl(b["mu"], b["logvar"]), ("mu", "logvar")),
        ("vaefast::reparameterize_kl", lambda ops, b: head_loss(ops, b), ("mu", "logvar")),
        ("vaefast::gaussian_nll",
         lambda ops, b: ops.gaussian_nll(b["x"], torch.sigmoid(b["mu"] @ b["weight"]), b["log_gamma"]),
         ("mu", "weight", "log_gamma")),
        ("vaefast::kernel_sum_(self|cross)", lambda ops, b: ops.mmd(b["mu"], b["prior"]), ("mu",)),
    ]


@needs_compiled
@pytest.mark.parametrize("op, loss, names", _ops_under_second_order(), ids=lambda v: v if isinstance(v, str) else "")
def test_create_graph_gives_first_order_gradients_and_a_named_double_backward_error(op, loss, names):
    # create_graph=True (gradient penalties, meta-learning) keeps the first-order gradients exact; taking a
    # gradient of them raises, naming the op, instead of silently dropping the op's second-order term.
    batch = make_batch()
    params = [batch[name] for name in names]
    grads = torch.autograd.grad(loss(vaefast, batch), params, create_graph=True)
    for got, want in zip(grads, torch.autograd.grad(loss(reference, batch), params)):
        assert_close64(got, want)
    penalty = sum(g.square().sum() for g in grads)
    with pytest.raises(RuntimeError, match=f"{op}: double backward is not supported"):
        torch.autograd.grad(penalty, params)
