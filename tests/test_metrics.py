"""vaefast.metrics: the Frechet distance against its closed form, KID's unbiasedness, the feature
classifier's determinism, the pluggable extractors and the likelihood metrics."""
import math

import numpy as np
import pytest
import torch

from pathlib import Path

from vaefast import metrics
from vaefast.data import load_dataset
from vaefast.models import VAE, VAEConfig, diagnostics


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions and matrices: one thread is faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_covariance(dim, generator):
    """A well-conditioned SPD matrix: eigenvalues in [0.5, 2.5], random orientation."""
    q, _ = np.linalg.qr(generator.standard_normal((dim, dim)))
    return (q * generator.uniform(0.5, 2.5, dim)) @ q.T


def closed_form(mean_a, cov_a, mean_b, cov_b):
    """FD computed independently of sqrtm: tr((A B)^1/2) = sum of sqrt eigenvalues of A^1/2 B A^1/2."""
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values)) @ vectors.T
    trace_root = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a)).sum()
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = torch.randn(2000, 16) * 3 + 1
    # Exact in exact arithmetic: sqrtm(C C) = C, so only float64 rounding of a trace of ~150 remains.
    assert abs(metrics.frechet_distance(features, features)) < 1e-8 * 150


def test_frechet_distance_from_moments_matches_the_closed_form_exactly():
    generator = np.random.default_rng(0)
    for dim in (1, 3, 10):
        mean_a, mean_b = generator.standard_normal(dim), generator.standard_normal(dim)
        cov_a, cov_b = random_covariance(dim, generator), random_covariance(dim, generator)
        expected = closed_form(mean_a, cov_a, mean_b, cov_b)
        assert metrics.frechet_distance_from_moments(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-9, abs=1e-10)
    # Diagonal covariances: FD = ||m_a - m_b||^2 + sum (s_a - s_b)^2 with s the standard deviations.
    assert metrics.frechet_distance_from_moments([0.0, 1.0], np.diag([4.0, 1.0]), [1.0, 1.0], np.diag([1.0, 9.0])) == \
        pytest.approx(1.0 + (2 - 1) ** 2 + (1 - 3) ** 2, rel=1e-12)


def test_frechet_distance_of_samples_matches_the_closed_form_statistically():
    generator = np.random.default_rng(int(torch.randint(2**31, ())))
    dim, n = 4, 40000
    mean_a, mean_b = np.zeros(dim), np.full(dim, 0.5)
    cov_a, cov_b = random_covariance(dim, generator), random_covariance(dim, generator)
    a = generator.multivariate_normal(mean_a, cov_a, n)
    b = generator.multivariate_normal(mean_b, cov_b, n)
    expected = closed_form(mean_a, cov_a, mean_b, cov_b)
    # Tolerance: the mean term ||mean_a_hat - mean_b_hat||^2 has standard deviation about
    # 2 sqrt(delta' (A + B) delta / n); each trace term fluctuates like the trace of a sample covariance,
    # sd sqrt(2 tr(C^2) / n), and the square-root term is of the same order. Five of those combined,
    # plus the estimator's O(dim / n) bias, is a false-alarm rate below 1e-6 per run.
    delta = mean_a - mean_b
    sd_mean = 2 * math.sqrt(delta @ (cov_a + cov_b) @ delta / n)
    sd_trace = math.sqrt(2 * (np.trace(cov_a @ cov_a) + np.trace(cov_b @ cov_b)) / n)
    tolerance = 5 * math.sqrt(sd_mean ** 2 + 4 * sd_trace ** 2) + 2 * dim * 2.5 / n
    assert abs(metrics.frechet_distance(a, b) - expected) < tolerance


def test_kid_is_unbiased_and_positive_for_a_shift():
    draws, n, dim = 300, 40, 8
    same, shifted = [], []
    for _ in range(draws):
        a, b = torch.randn(n, dim, dtype=torch.float64), torch.randn(n, dim, dtype=torch.float64)
        same.append(metrics.kernel_inception_distance(a, b, subsets=1)[0])
        shifted.append(metrics.kernel_inception_distance(a, b + 1.0, subsets=1)[0])
    same, shifted = np.array(same), np.array(shifted)
    # The unbiased MMD^2 has expectation exactly 0 for one distribution: the mean over independent draws
    # is within 5 standard errors of 0 (false alarm < 1e-6).
    assert abs(same.mean()) < 5 * same.std(ddof=1) / math.sqrt(draws)
    # A unit shift in every dimension: far above both the noise and 0.
    assert shifted.mean() > 10 * shifted.std(ddof=1) / math.sqrt(draws) and shifted.mean() > 20 * abs(same.mean())


def test_kid_caps_the_subset_size_and_matches_vaefast_mmd():
    import vaefast

    a, b = torch.randn(30, 5, dtype=torch.float64), torch.randn(20, 5, dtype=torch.float64) + 0.3
    mean, std = metrics.kernel_inception_distance(a[:20], b, subsets=5, subset_size=1000)
    # subset_size capped at 20 = both set sizes: every subset is the whole set (in another order).
    assert mean == pytest.approx(float(vaefast.mmd(a[:20], b, kernel="poly", unbiased=True)), rel=1e-10)
    assert std < 1e-10
    mean, std = metrics.kernel_inception_distance(a, b, subsets=20, subset_size=10)
    assert std > 0


def test_classifier_training_is_deterministic_under_a_seed(tmp_path):
    x, y = load_dataset("digits", limit=400)
    first, info = metrics.train_classifier(x, y, seed=3, epochs=1)
    torch.manual_seed(12345)  # the global RNG must not matter
    second, _ = metrics.train_classifier(x, y, seed=3, epochs=1)
    other, _ = metrics.train_classifier(x, y, seed=4, epochs=1)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert not all(torch.equal(t, other.state_dict()[n]) for n, t in first.state_dict().items())
    assert info["num_classes"] == 10

    x_test, y_test = load_dataset("digits", split="test")
    cache = tmp_path / "classifier.pt"
    trained, info = metrics.train_classifier(x, y, seed=3, epochs=1, cache_path=cache, x_test=x_test, y_test=y_test)
    loaded, loaded_info = metrics.train_classifier(x, y, seed=3, epochs=1, cache_path=cache)
    assert 0.0 <= info["test_accuracy"] <= 1.0 and loaded_info == info
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    features = metrics.ClassifierExtractor(loaded)(x_test[:7])
    assert features.shape == (7, 128)


def test_classifier_learns_the_digits():
    x, y = load_dataset("digits")
    x_test, y_test = load_dataset("digits", split="test")
    _, info = metrics.train_classifier(x, y, seed=0, epochs=8, batch_size=32, x_test=x_test, y_test=y_test)
    assert info["test_accuracy"] > 0.8  # 10 classes: chance is 0.1; 360 steps reach about 0.9


MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.mark.skipif(not (MNIST_DIR / "mnist.npz").is_file(), reason=f"MNIST not present in {MNIST_DIR}")
def test_default_mnist_classifier_is_above_99_percent(tmp_path):
    # The extractor FD and KID use by default on MNIST: trained from scratch here (about 2 minutes on one
    # core), on the 60k training images, and scored on the 10k test images it never saw.
    extractor = metrics.ClassifierExtractor.for_dataset("mnist", data_dir=MNIST_DIR, cache_dir=tmp_path)
    assert extractor.info["train_examples"] == 60000 and extractor.info["epochs"] == 5
    assert extractor.info["test_accuracy"] > 0.99, extractor.info


class PoolFeatures(torch.nn.Module):
    """A stand-in for Inception-v3: [N, 3, H, W] -> a list holding [N, 6, 1, 1] (pytorch-fid's shape)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3)

    def forward(self, x):
        return [torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1)]


def test_inception_extractor_accepts_a_module_and_a_torchscript_file(tmp_path):
    network = PoolFeatures()
    path = tmp_path / "inception.pt"
    torch.jit.script(network).save(str(path))
    images = torch.rand(5, 1, 8, 8)
    from_module = metrics.InceptionExtractor.from_weights(network, resize=16)(images)
    from_file = metrics.InceptionExtractor.from_weights(path, resize=16)(images)
    assert from_module.shape == (5, 6) and torch.allclose(from_module, from_file)
    state = tmp_path / "state.pt"
    torch.save(network.state_dict(), state)
    from_state = metrics.InceptionExtractor.from_weights(state, model=PoolFeatures(), resize=16)(images)
    assert torch.allclose(from_module, from_state)
    with pytest.raises(ValueError, match="not a TorchScript file"):
        metrics.InceptionExtractor.from_weights(state)


def test_likelihood_metrics():
    x, _ = load_dataset("digits", split="test", limit=200)
    model = VAE(VAEConfig(data_shape=(1, 8, 8), latent_dim=4, hidden_dims=(32,))).eval()
    mse = metrics.reconstruction_mse(model, x)
    assert mse == pytest.approx(diagnostics(model, x)["reconstruction_mse"], rel=1e-6)
    elbo = metrics.test_elbo(model, x)
    nll_1, nll_100 = metrics.iwae_nll(model, x, 1), metrics.iwae_nll(model, x, 100)
    # An untrained model with gamma = 1: log p(x|z) ~ -64 * 0.92 - sum (x - xhat)^2 / 2, KL small.
    assert -150 < elbo < -50
    # The IWAE bound tightens with k: -log p(x) <= nll_100 <= nll_1 in expectation; over 200 examples
    # the gap (KL of q to the posterior, ~0.1 nats here) dwarfs the Monte Carlo noise of the difference.
    assert nll_100 < nll_1
    result = metrics.evaluate(model, x, iwae_samples=10)
    assert {"reconstruction_mse", "test_elbo", "iwae_nll_k10", "gamma", "active_dimensions",
            "latent_mmd_stage1"} <= set(result)
