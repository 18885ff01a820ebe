"""Tests of vaefast.models: shapes and output types of every model and architecture, build/config_of round
trips, loss values against independent recomputations (torch.distributions, vaefast.ops.reference) for
every gamma mode, bernoulli, beta and the KL warm-up, the WAE-MMD loss, the Two-Stage VAE's pieces (stage-2
data, freezing, sampling pipeline, the [input, last hidden] skips), the IWAE bound's statistics, the
diagnostics and where gradients flow. Networks are tiny so that the file runs in seconds on 2 cores."""
import copy
import json
import math

import pytest
import torch
from hypothesis import given, strategies as st
from torch.distributions import Bernoulli, Normal, kl_divergence
from torch.nn.functional import softplus
from torch.nn.utils import parametrize

import vaefast
from tests.conftest import assert_close64
from vaefast.models import (
    CVAEConfig, ConditionalVAE, ModelOutput, TwoStageConfig, TwoStageVAE, VAE, VAEConfig, WAE, WAEConfig,
    active_dimensions, build, config_of, diagnostics, iwae_bound, latent_mmd, latent_variances,
)
from vaefast.models.networks import evaluating, split_gaussian
from vaefast.ops import reference

BATCH = 3  # > 1: BatchNorm in training mode needs two samples
LATENT = 4
TINY = {"mlp": {"hidden_dims": (16,)}, "infogan": {"width": 4}, "resnet": {"width": 2}}

# (architecture, data_shape): flat and image MLPs, the InfoGAN pair at both of its sizes, the ResNet pair.
ARCHITECTURE_CASES = [
    ("mlp", (64,)), ("mlp", (1, 8, 8)), ("infogan", (1, 28, 28)), ("infogan", (3, 32, 32)), ("resnet", (3, 64, 64)),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: with two OpenMP threads on a loaded 2-core machine a 64x64 ResNet forward
    took 1.1 s of thread synchronisation against 0.02 s on one thread (measured), so this file runs on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vae_config(architecture="mlp", data_shape=(64,), **options):
    return dict(data_shape=data_shape, latent_dim=LATENT, architecture=architecture, **TINY[architecture], **options)


def model_config(kind, architecture="mlp", data_shape=(64,)):
    """A tiny config dict of each kind."""
    if kind == "two-stage":
        return dict(stage1=vae_config(architecture, data_shape), stage2_width=8, stage2_depth=2)
    if kind == "wae":
        return dict(data_shape=data_shape, latent_dim=LATENT, architecture=architecture, **TINY[architecture])
    if kind == "cvae":
        return dict(vae_config(architecture, data_shape), num_classes=3)
    return vae_config(architecture, data_shape)


def batch_of(data_shape, size=BATCH, dtype=torch.float32):
    return torch.rand(size, *data_shape, dtype=dtype), torch.randint(3, (size,))


def assert_scalar(value):
    assert isinstance(value, torch.Tensor) and value.dim() == 0 and bool(value.isfinite())


def check_output(out, model, x):
    """The ModelOutput contract: 0-dim loss, nll, kl and gamma; x_hat like x; z [B, latent]."""
    assert isinstance(out, ModelOutput)
    assert_scalar(out.loss)
    assert_scalar(out.nll)
    assert out.loss.requires_grad
    assert out.x_hat.shape == x.shape
    latent = model.config.stage1.latent_dim if isinstance(model, TwoStageVAE) else model.config.latent_dim
    assert out.z.shape == (x.shape[0], latent)
    if isinstance(model, WAE):
        assert out.kl is None and out.mu is None and out.logvar is None and out.gamma is None
        assert set(out.extra) == {"mmd"}
        assert_scalar(out.extra["mmd"])
    else:
        assert_scalar(out.kl)
        assert out.mu.shape == out.logvar.shape == out.z.shape
        assert_scalar(out.gamma)
        assert not out.gamma.requires_grad


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("kind", ["vae", "wae", "cvae", "two-stage"])
@pytest.mark.parametrize("architecture,data_shape", ARCHITECTURE_CASES)
def test_forward_and_sample_shapes(kind, architecture, data_shape):
    model = build(kind, model_config(kind, architecture, data_shape))
    x, labels = batch_of(data_shape)
    check_output(model(x, labels), model, x)
    samples = model.sample(5)
    assert samples.shape == (5, *data_shape)
    assert not samples.requires_grad
    assert bool(((samples >= 0) & (samples <= 1)).all())
    assert model.training, "sample() must restore training mode"


@pytest.mark.parametrize("likelihood,gamma", [("bernoulli", "learned"), ("gaussian", "optimal"), ("gaussian", 0.3)])
def test_other_likelihoods_and_gammas_shapes(likelihood, gamma):
    model = VAE(VAEConfig(**vae_config("infogan", (1, 28, 28), likelihood=likelihood, gamma=gamma)))
    x, _ = batch_of((1, 28, 28))
    out = model(x)
    assert out.x_hat.shape == x.shape and bool(((out.x_hat > 0) & (out.x_hat < 1)).all())
    assert (out.gamma is None) == (likelihood == "bernoulli")


def test_infogan_networks_follow_the_paper():
    """Paper widths at width=64: encoder convs 64, 128 and FC 1024 with spectral norm; decoder FC 1024 then
    128 * 7 * 7 for 28x28; std = 1e-6 + softplus(raw)."""
    model = VAE(VAEConfig(data_shape=(1, 28, 28), architecture="infogan"))
    encoder_layers = [m for m in model.encoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert [m.weight.shape[0] for m in encoder_layers] == [64, 128, 1024, 2 * 64]
    assert all(parametrize.is_parametrized(m, "weight") for m in encoder_layers)
    decoder_linears = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in decoder_linears] == [1024, 128 * 7 * 7]
    assert not any(parametrize.is_parametrized(m) for m in model.decoder.modules())
    raw = torch.randn(5, 2 * LATENT, dtype=torch.float64)
    mu, logvar = split_gaussian(raw, model.encoder.std_activation)
    assert_close64(mu, raw[:, :LATENT])
    assert_close64(torch.exp(0.5 * logvar), 1e-6 + softplus(raw[:, LATENT:]))


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="architecture"):
        VAEConfig(data_shape=(4,), architecture="transformer")
    with pytest.raises(ValueError, match="gamma"):
        VAEConfig(data_shape=(4,), gamma="fixed")
    with pytest.raises(ValueError, match="positive"):
        VAEConfig(data_shape=(4,), gamma=0.0)
    with pytest.raises(ValueError, match="divisible by 4"):
        VAE(VAEConfig(data_shape=(1, 30, 30), architecture="infogan"))
    with pytest.raises(ValueError, match="kind"):
        build("gan", {})


# ---------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("kind", ["vae", "wae", "cvae", "two-stage"])
def test_build_config_of_round_trip(kind):
    """(kind, config dict, state_dict) through JSON rebuilds the same model: keys, config, outputs, samples."""
    model = build(kind, model_config(kind, "infogan", (1, 28, 28)))
    x, labels = batch_of((1, 28, 28))
    model(x, labels).loss.backward()  # a training forward moves BatchNorm statistics and spectral-norm vectors
    stored_kind, stored_config = config_of(model)
    assert stored_kind == kind
    rebuilt = build(stored_kind, json.loads(json.dumps(stored_config)))
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        expected = model(x, labels)
        torch.manual_seed(1)
        actual = rebuilt(x, labels)
    assert torch.equal(actual.loss, expected.loss) and torch.equal(actual.x_hat, expected.x_hat)
    sample_kwargs = {"labels": labels} if kind == "cvae" else {}
    assert torch.equal(rebuilt.sample(BATCH, generator=torch.Generator().manual_seed(2), **sample_kwargs),
                       model.sample(BATCH, generator=torch.Generator().manual_seed(2), **sample_kwargs))


def test_config_of_refuses_other_modules():
    with pytest.raises(TypeError):
        config_of(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------- VAE loss


def independent_vae_terms(model, x, out):
    """(nll, kl) recomputed with torch.distributions from what the model returned (float64)."""
    kl = kl_divergence(Normal(out.mu, torch.exp(0.5 * out.logvar)), Normal(0.0, 1.0)).sum(dim=1).mean()
    if model.config.likelihood == "bernoulli":
        log_likelihood = x * torch.log(out.x_hat) + (1 - x) * torch.log1p(-out.x_hat)
    else:
        log_likelihood = Normal(out.x_hat, out.gamma).log_prob(x)
    return -log_likelihood.flatten(1).sum(dim=1).mean(), kl


@given(
    seed=st.integers(0, 2**31 - 1),
    gamma=st.one_of(st.just("learned"), st.just("optimal"), st.floats(0.05, 3.0)),
    likelihood=st.sampled_from(["gaussian", "bernoulli"]),
    log_gamma=st.floats(-3.0, 2.0),
    beta=st.floats(0.0, 4.0),
    shape=st.sampled_from([(7,), (2, 3, 3)]),
    batch=st.integers(2, 5),
)
def test_vae_loss_matches_torch_distributions(seed, gamma, likelihood, log_gamma, beta, shape, batch):
    """loss == NLL + beta KL recomputed independently; z is reparameterize's draw for the seed (the Philox
    stream that vaefast.ops.reference draws too) and x_hat is the decoder mean at that z."""
    torch.manual_seed(seed)
    model = VAE(VAEConfig(data_shape=shape, latent_dim=3, hidden_dims=(8,), likelihood=likelihood, gamma=gamma,
                          beta=beta)).double()
    if model.config.gamma == "learned" and likelihood == "gaussian":
        model.log_gamma.data.fill_(log_gamma)
    x = torch.rand(batch, *shape, dtype=torch.float64)
    torch.manual_seed(seed)
    out = model(x)
    torch.manual_seed(seed)
    assert_close64(out.z, reference.reparameterize(out.mu, out.logvar))
    assert_close64(out.x_hat, model.decode(out.z))
    nll, kl = independent_vae_terms(model, x, out)
    assert_close64(out.nll, nll)
    assert_close64(out.kl, kl)
    assert_close64(out.loss, nll + beta * kl)
    if likelihood == "bernoulli":
        assert out.gamma is None
    elif gamma == "optimal":
        assert_close64(out.gamma**2, (x - out.x_hat).pow(2).mean())  # sigma-VAE: gamma^2 = batch MSE
    elif gamma == "learned":
        assert_close64(out.gamma, torch.tensor(math.exp(log_gamma), dtype=torch.float64))
    else:
        assert_close64(out.gamma, torch.tensor(gamma, dtype=torch.float64))


@pytest.mark.parametrize("gamma", ["learned", "optimal"])
def test_gamma_floor(gamma):
    """gamma_min clamps log gamma from below, for the learned and the optimal gamma."""
    model = VAE(VAEConfig(data_shape=(6,), latent_dim=2, hidden_dims=(4,), gamma=gamma, gamma_min=0.5)).double()
    if gamma == "learned":
        model.log_gamma.data.fill_(-5.0)
    x = torch.rand(4, 6, dtype=torch.float64)
    out = model(x)
    assert_close64(out.gamma, torch.tensor(0.5, dtype=torch.float64))
    assert_close64(out.nll, independent_vae_terms(model, x, out)[0])


@pytest.mark.parametrize("likelihood,gamma",
                         [("gaussian", "learned"), ("gaussian", "optimal"), ("bernoulli", "learned")])
def test_reconstruction_reductions(likelihood, gamma):
    """reconstruction(x, z): the per-sample -log p(x|z) of torch.distributions, and its batch sum and mean
    (which the Gaussian NLL reduces inside the op); a misspelt reduction names the argument."""
    model = VAE(VAEConfig(data_shape=(6,), latent_dim=2, hidden_dims=(4,), likelihood=likelihood,
                          gamma=gamma)).double()
    x, z = torch.rand(5, 6, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    per_sample, x_hat, log_gamma = model.reconstruction(x, z)
    if likelihood == "bernoulli":
        expected = -Bernoulli(probs=x_hat, validate_args=False).log_prob(x).sum(dim=1)  # x in [0, 1]: cross-entropy
    else:
        expected = -Normal(x_hat, log_gamma.exp()).log_prob(x).sum(dim=1)
    assert_close64(per_sample, expected)
    for reduction, reduce in (("sum", torch.sum), ("mean", torch.mean)):
        reduced, _, _ = model.reconstruction(x, z, reduction=reduction)
        assert reduced.shape == ()
        assert_close64(reduced, reduce(expected))
    with pytest.raises(ValueError, match="reduction must be 'none', 'sum' or 'mean'; got 'avg'"):
        model.reconstruction(x, z, reduction="avg")


@given(beta=st.floats(0.1, 4.0), warmup=st.integers(1, 50), step=st.integers(0, 120))
def test_kl_warmup_weight_at_step(beta, warmup, step):
    """After t training steps the KL weight is beta * min(1, t / kl_warmup_steps); training forwards count
    steps, eval forwards do not."""
    model = VAE(VAEConfig(data_shape=(5,), latent_dim=2, hidden_dims=(4,), beta=beta,
                          kl_warmup_steps=warmup)).double()
    model.training_steps.fill_(step)
    x = torch.rand(3, 5, dtype=torch.float64)
    out = model(x)
    assert_close64(out.loss, out.nll + beta * min(1.0, step / warmup) * out.kl)
    assert int(model.training_steps) == step + 1
    model.eval()
    model(x)
    assert int(model.training_steps) == step + 1


def test_kl_warmup_schedule_over_training():
    model = VAE(VAEConfig(data_shape=(5,), latent_dim=2, hidden_dims=(4,), beta=2.0, kl_warmup_steps=4)).double()
    x = torch.rand(3, 5, dtype=torch.float64)
    weights = []
    for _ in range(6):
        out = model(x)
        weights.append(float((out.loss - out.nll).detach() / out.kl.detach()))
    assert weights == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0], abs=1e-9)
    assert "training_steps" in model.state_dict(), "a resumed run must continue the schedule"


# ---------------------------------------------------------------------------------------------- gradients


def test_gradient_reaches_learned_log_gamma():
    """d loss / d log_gamma = D - mean_b sum_i (x - x_hat)^2 / gamma^2 (REFERENCE.md section 1)."""
    model = VAE(VAEConfig(data_shape=(6,), latent_dim=2, hidden_dims=(4,))).double()
    model.log_gamma.data.fill_(-0.7)
    x = torch.rand(5, 6, dtype=torch.float64)
    out = model(x)
    out.loss.backward()
    expected = 6 - (x - out.x_hat).pow(2).sum(dim=1).mean() / math.exp(-1.4)
    assert_close64(model.log_gamma.grad, expected.detach())


@pytest.mark.parametrize("gamma", [0.4, "optimal"])
def test_fixed_and_optimal_gamma_are_constants(gamma):
    """No log_gamma parameter, and the decoder's gradient is that of the NLL with gamma held constant."""
    model = VAE(VAEConfig(data_shape=(6,), latent_dim=2, hidden_dims=(4,), gamma=gamma)).double()
    assert "log_gamma" not in dict(model.named_parameters())
    x = torch.rand(5, 6, dtype=torch.float64)
    out = model(x)
    nll, kl = independent_vae_terms(model, x, out)  # out.gamma is detached: a constant here
    decoder = list(model.decoder.parameters())
    actual = torch.autograd.grad(out.loss, decoder, retain_graph=True)
    expected = torch.autograd.grad(nll + kl, decoder)
    for a, e in zip(actual, expected):
        assert_close64(a, e)


# ---------------------------------------------------------------------------------------------- WAE


@given(seed=st.integers(0, 2**31 - 1), mmd_weight=st.floats(0.0, 100.0), bandwidth=st.floats(0.3, 3.0),
       kernel=st.sampled_from(["imq", "rbf"]), batch=st.integers(2, 6))
def test_wae_loss_is_squared_error_plus_weighted_mmd(seed, mmd_weight, bandwidth, kernel, batch):
    torch.manual_seed(seed)
    model = WAE(WAEConfig(data_shape=(2, 3), latent_dim=3, hidden_dims=(8,), mmd_weight=mmd_weight,
                          kernel=kernel, bandwidth=bandwidth)).double()
    x = torch.rand(batch, 2, 3, dtype=torch.float64)
    torch.manual_seed(seed)
    out = model(x)
    torch.manual_seed(seed)  # the same Philox draw of prior samples on the reference path
    mmd = reference.mmd_prior(out.z.detach(), kernel=kernel, bandwidth=bandwidth)
    squared_error = (x - out.x_hat).pow(2).sum(dim=(1, 2)).mean()
    assert_close64(out.z, model.encode(x))
    assert_close64(out.nll, squared_error)
    assert_close64(out.extra["mmd"], mmd)
    assert_close64(out.loss, squared_error + mmd_weight * mmd)


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_wae_prior_std(kernel):
    """A prior N(0, sigma^2 I): the MMD compares z with it at bandwidth sigma (C = 2 d sigma^2) unless a
    bandwidth is given, and samples decode sigma * N(0, I)."""
    sigma = 0.5 + 2 * float(torch.rand(()))
    seed = int(torch.randint(0, 2**31, ()))
    model = WAE(WAEConfig(data_shape=(4,), latent_dim=3, hidden_dims=(8,), kernel=kernel, prior_std=sigma)).double()
    x = torch.rand(6, 4, dtype=torch.float64)
    torch.manual_seed(seed)
    out = model(x)
    torch.manual_seed(seed)
    expected = reference.mmd_prior(out.z.detach(), kernel=kernel, bandwidth=sigma, prior_std=sigma)
    assert_close64(out.extra["mmd"], expected)
    model.config.bandwidth = 1.0
    torch.manual_seed(seed)
    out = model(x)
    torch.manual_seed(seed)
    assert_close64(out.extra["mmd"], reference.mmd_prior(out.z.detach(), kernel=kernel, prior_std=sigma))
    generator_seed = int(torch.randint(0, 2**31, ()))
    samples = model.sample(5, generator=torch.Generator().manual_seed(generator_seed))
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(generator_seed), dtype=torch.float64)
    assert_close64(samples, model.decode(sigma * z).detach())
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="prior_std must be a positive finite number"):
            WAEConfig(data_shape=(4,), prior_std=bad)


def test_wae_mmd_scale_convention():
    """C_s = s * 2 * d * bandwidth^2 (C = 2 d sigma^2): the IMQ kernel by hand for two points."""
    z = torch.randn(2, 3, dtype=torch.float64)
    bandwidth = 1.7
    kernel = reference.kernel_matrix(z, z, "imq", bandwidth=bandwidth)[0, 1]
    distance = (z[0] - z[1]).pow(2).sum()
    by_hand = sum(c / (c + distance) for c in (s * 2 * 3 * bandwidth**2 for s in (0.1, 0.2, 0.5, 1, 2, 5, 10)))
    assert_close64(kernel, by_hand)


# ---------------------------------------------------------------------------------------------- CVAE


def test_cvae_conditions_encoder_and_decoder():
    model = ConditionalVAE(CVAEConfig(data_shape=(1, 8, 8), latent_dim=2, hidden_dims=(8,), num_classes=3)).double()
    model.eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    z = torch.randn(2, 2, dtype=torch.float64)
    zeros, ones = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    assert not torch.allclose(model.encode(x, zeros)[0], model.encode(x, ones)[0])
    assert not torch.allclose(model.decode(z, zeros), model.decode(z, ones))
    assert model.encoder.body[0].in_features == (1 + 3) * 8 * 8  # one-hot as extra channels
    with pytest.raises(ValueError, match="labels"):
        model(x)
    labels = torch.tensor([2, 0, 1])
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(5)
    expected = model.decode(torch.randn(3, 2, generator=generator, dtype=torch.float64), labels)
    assert torch.equal(model.sample(3, labels, generator=torch.Generator().manual_seed(0)), expected)
    assert model.sample(4).shape == (4, 1, 8, 8)


# ---------------------------------------------------------------------------------------------- Two-Stage VAE


def two_stage(data_shape=(1, 28, 28), architecture="infogan", width=8, depth=2):
    config = TwoStageConfig(stage1=VAEConfig(**vae_config(architecture, data_shape)), stage2_width=width,
                            stage2_depth=depth)
    return TwoStageVAE(config)


def test_two_stage_composes_two_vaes():
    model = two_stage()
    assert type(model.stage1) is VAE and type(model.stage2) is VAE and not isinstance(model, VAE)
    stage2 = model.stage2.config
    assert stage2.architecture == "mlp-skip" and stage2.data_shape == (LATENT,) and stage2.latent_dim == LATENT
    assert stage2.gamma == "learned" and stage2.likelihood == "gaussian" and stage2.output_activation == "linear"
    assert isinstance(model.stage2.log_gamma, torch.nn.Parameter), "gamma_z is learned"
    defaults = TwoStageConfig(stage1=VAEConfig(data_shape=(4,))).stage2_config()
    assert defaults.hidden_dims == (1024, 1024, 1024)
    x, _ = batch_of((1, 28, 28))
    out = model(x)
    check_output(out, model, x)
    model.eval()  # in training mode spectral norm and BatchNorm change between two calls
    torch.manual_seed(0)
    stage1_loss = model.stage1(x).loss
    torch.manual_seed(0)
    assert torch.equal(model(x).loss, stage1_loss)  # forward(x) is stage 1's forward


def test_stage2_data_is_one_eval_pass_without_grad():
    model = two_stage()
    x, _ = batch_of((1, 28, 28), size=10)
    model(x)  # leave BatchNorm with non-trivial running statistics
    before = copy.deepcopy(model.state_dict())
    mu_z, sigma_z = model.stage2_data(x, batch_size=4)
    assert mu_z.shape == sigma_z.shape == (10, LATENT)
    assert not mu_z.requires_grad and not sigma_z.requires_grad
    assert all(m.training for m in model.modules()), "the caller's training mode is restored"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "eval mode: no statistics were updated"
    model.stage1.eval()
    with torch.no_grad():
        mu, logvar = model.stage1.encode(x)
    assert torch.allclose(mu_z, mu, atol=1e-6) and torch.allclose(sigma_z, torch.exp(0.5 * logvar), atol=1e-6)
    assert bool((sigma_z > 0).all())


def test_freeze_stage1_and_train_stage2():
    model = two_stage()
    model.freeze_stage1()
    assert not any(p.requires_grad for p in model.stage1.parameters())
    assert all(p.requires_grad for p in model.stage2.parameters())
    z = torch.randn(5, LATENT)
    out = model.forward_stage2(z)
    check_output(out, model.stage2, z)
    out.loss.backward()
    assert all(p.grad is None for p in model.stage1.parameters())
    assert model.stage2.log_gamma.grad is not None


def test_two_stage_sample_pipeline():
    """sample: u ~ N(0, I) -> z = zhat(u) + gamma_z eps -> x = stage 1's decoder mean, all from one generator."""
    model = two_stage()
    model.stage2.log_gamma.data.fill_(-1.0)
    samples = model.sample(6, generator=torch.Generator().manual_seed(3))
    assert samples.shape == (6, 1, 28, 28)
    generator = torch.Generator().manual_seed(3)
    model.eval()
    with torch.no_grad():
        u = torch.randn(6, LATENT, generator=generator)
        z_hat = model.stage2.decode(u)
        z = z_hat + math.exp(-1.0) * torch.randn(6, LATENT, generator=generator)
        expected = model.stage1.decode(z)
    assert torch.allclose(samples, expected, atol=1e-6)


def test_stage2_networks_have_the_input_skip():
    """The heads see [input, last hidden]: width + input dim features, and the input reaches them even when
    every hidden layer is silenced."""
    model = two_stage(width=8, depth=3)
    encoder, decoder = model.stage2.encoder, model.stage2.decoder
    assert encoder.head.in_features == 8 + LATENT and encoder.head.out_features == 2 * LATENT
    assert decoder.head.in_features == 8 + LATENT and decoder.head.out_features == LATENT
    assert sum(isinstance(m, torch.nn.Linear) for m in encoder.body) == 3
    for network in (encoder, decoder):
        with torch.no_grad():
            for layer in network.body:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.zero_()
                    layer.bias.zero_()
        a, b = torch.randn(2, LATENT), torch.randn(2, LATENT)
        assert not torch.allclose(network(a), network(b))


# ---------------------------------------------------------------------------------------------- IWAE


def iwae_model():
    """A float64 VAE with a sharp decoder (gamma 0.1): an untrained q(z|x) is far from p(z|x), so the
    importance weights vary and k = 10 tightens the bound by a clear margin (at least 13 standard errors over
    40 random data batches tried while writing this test). Its weights are fixed; data and draws stay random."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VAE(VAEConfig(data_shape=(12,), latent_dim=3, hidden_dims=(16,), gamma=0.1)).double()
    return model.eval()


def test_iwae_bound_shape_and_k1_expectation_is_the_elbo():
    """E[bound_1] = E_q[log p(x|z) + log p(z) - log q(z|x)] = E_q[log p(x|z)] - KL = ELBO. Both sides are
    means of n = 20000 independent draws; their difference is within 5 standard errors of 0 unless the
    two disagree (a false alarm has probability about 6e-7 under the central limit theorem)."""
    model = iwae_model()
    x = torch.rand(4, 12, dtype=torch.float64)
    with torch.no_grad():
        assert iwae_bound(model, x, num_samples=7).shape == (4,)
        draws = x.repeat(5000, 1)
        bound = iwae_bound(model, draws, num_samples=1)
        out = model(draws)
        nll = -Normal(out.x_hat, out.gamma).log_prob(draws).sum(dim=1)
        kl = kl_divergence(Normal(out.mu, torch.exp(0.5 * out.logvar)), Normal(0.0, 1.0)).sum(dim=1)
        elbo = -(nll + kl)
    assert_close64(-elbo.mean(), out.loss)  # the same ELBO the model trains on (beta = 1)
    standard_error = math.sqrt(bound.var() / bound.numel() + elbo.var() / elbo.numel())
    assert abs(float(bound.mean() - elbo.mean())) < 5 * standard_error


def test_iwae_bound_with_10_samples_is_above_the_elbo():
    """E[bound_10] >= E[bound_1] = ELBO (Burda et al., theorem 1); averaged over 2000 draws per sample the
    gap must stand 5 standard errors above 0."""
    model = iwae_model()
    x = torch.rand(4, 12, dtype=torch.float64)
    with torch.no_grad():
        draws = x.repeat(2000, 1)
        bound_10 = iwae_bound(model, draws, num_samples=10)
        bound_1 = iwae_bound(model, draws, num_samples=1)
    gap = float(bound_10.mean() - bound_1.mean())
    standard_error = math.sqrt(bound_10.var() / bound_10.numel() + bound_1.var() / bound_1.numel())
    assert gap > 5 * standard_error, (gap, standard_error)


def test_iwae_bound_bernoulli_and_conditional():
    model = ConditionalVAE(CVAEConfig(data_shape=(6,), latent_dim=2, hidden_dims=(4,), likelihood="bernoulli",
                                      num_classes=3)).double().eval()
    x, labels = torch.rand(3, 6, dtype=torch.float64), torch.tensor([0, 2, 1])
    torch.manual_seed(9)
    bound = iwae_bound(model, x, num_samples=1, labels=labels)
    torch.manual_seed(9)
    out = model(x, labels)
    log_likelihood = (x * torch.log(out.x_hat) + (1 - x) * torch.log1p(-out.x_hat)).sum(dim=1)
    std = torch.exp(0.5 * out.logvar)
    expected = (log_likelihood + Normal(0.0, 1.0).log_prob(out.z).sum(dim=1)
                - Normal(out.mu, std).log_prob(out.z).sum(dim=1))
    assert_close64(bound, expected)  # same seed: the same single draw


# ---------------------------------------------------------------------------------------------- diagnostics


def switched_off_vae(off=(0, 2, 5), latent=6):
    """An MLP VAE whose encoder outputs mu = 0 and variance 1 on the `off` dimensions and e^-8 elsewhere."""
    model = VAE(VAEConfig(data_shape=(10,), latent_dim=latent, hidden_dims=(8,))).double()
    with torch.no_grad():
        model.encoder.head.weight.zero_()
        logvar = torch.full((latent,), -8.0, dtype=torch.float64)
        logvar[list(off)] = 0.0
        model.encoder.head.bias.copy_(torch.cat([torch.zeros(latent, dtype=torch.float64), logvar]))
    return model


def test_active_dimensions_count_the_switched_on_latents():
    model = switched_off_vae()
    x = torch.rand(9, 10, dtype=torch.float64)
    variances = latent_variances(model, x, batch_size=4)
    expected = torch.full((6,), math.exp(-8.0), dtype=torch.float64)
    expected[[0, 2, 5]] = 1.0
    assert_close64(variances, expected)
    assert active_dimensions(variances) == 3
    assert active_dimensions(torch.tensor([0.0, 0.49, 0.51, 1.0])) == 2


def test_diagnostics_of_every_model():
    x = torch.rand(20, 10, dtype=torch.float64)
    vae = switched_off_vae()
    report = diagnostics(vae, x, batch_size=8)
    assert report["gamma"] == 1.0 and report["active_dimensions"] == 3
    with torch.no_grad():
        mse = (x - vae.decode(vae.encode(x)[0])).pow(2).mean()
    assert report["reconstruction_mse"] == pytest.approx(float(mse), rel=1e-12)
    assert math.isfinite(report["latent_mmd_stage1"])

    model = TwoStageVAE(TwoStageConfig(stage1=VAEConfig(data_shape=(10,), latent_dim=3, hidden_dims=(8,)),
                                       stage2_width=8, stage2_depth=2)).double()
    report = diagnostics(model, x)
    assert {"gamma", "active_dimensions", "latent_mmd_stage1", "reconstruction_mse", "gamma_z",
            "active_dimensions_stage2", "latent_mmd_stage2"} <= set(report)
    wae = WAE(WAEConfig(data_shape=(10,), latent_dim=3, hidden_dims=(8,))).double()
    torch.manual_seed(4)
    report = diagnostics(wae, x)
    assert report["gamma"] is None and report["active_dimensions"] is None
    torch.manual_seed(4)  # the same prior samples
    assert report["latent_mmd_stage1"] == latent_mmd(wae.encode(x).detach())
    cvae = ConditionalVAE(CVAEConfig(data_shape=(10,), latent_dim=3, hidden_dims=(8,), num_classes=2)).double()
    assert diagnostics(cvae, x, labels=torch.randint(2, (20,)))["active_dimensions"] in range(4)


def test_latent_mmd_separates_the_prior_from_a_shifted_cloud():
    generator = torch.Generator().manual_seed(0)
    prior = torch.randn(400, 4, generator=generator, dtype=torch.float64)
    assert abs(latent_mmd(prior, generator=generator)) < 0.05
    assert latent_mmd(prior + 2.0, generator=generator) > 0.5


def test_evaluating_restores_each_submodules_mode():
    model = two_stage()
    model.stage1.eval()
    with evaluating(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model.stage2.training and not model.stage1.training
    assert not any(m.training for m in model.stage1.modules())


def test_fused_ops_are_the_ones_used(monkeypatch):
    """The loss head goes through vaefast's ops (the point of the library), not a re-implementation."""
    calls = []
    for name in ("reparameterize", "gaussian_kl", "reparameterize_kl", "gaussian_nll", "mmd_prior"):
        original = getattr(vaefast, name)
        monkeypatch.setattr(vaefast, name, lambda *a, _original=original, _name=name, **k:
                            calls.append(_name) or _original(*a, **k))
    VAE(VAEConfig(data_shape=(5,), latent_dim=2, hidden_dims=(4,)))(torch.rand(3, 5))
    WAE(WAEConfig(data_shape=(5,), latent_dim=2, hidden_dims=(4,)))(torch.rand(3, 5))
    # The VAE draws z and takes the KL with the fused head; the WAE has no KL.
    assert calls == ["reparameterize_kl", "gaussian_nll", "mmd_prior"]


def test_wae_applies_the_latent_gather_hook():
    """Under DDP the training loop sets latent_gather; the MMD must then see the gathered latents."""
    model = WAE(WAEConfig(data_shape=(6,), latent_dim=3, hidden_dims=(8,), kernel="rbf"))
    x = torch.rand(5, 6)
    shapes = []

    def gather(z):  # stands in for an all-gather over two ranks
        shapes.append(tuple(z.shape))
        return torch.cat([z, z.flip(0) + 1])

    model.latent_gather = gather
    out = model(x)
    z = model.encode(x)
    assert shapes == [(5, 3)]
    expected = vaefast.mmd_prior(torch.cat([z, z.flip(0) + 1]), kernel="rbf")
    assert torch.allclose(out.extra["mmd"], expected, rtol=1e-6, atol=1e-7)
