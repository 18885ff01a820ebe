"""The diagnostics one can trust: the latent MMD with its standard error against an independent float64
numpy estimate, the noise floor, the codes' singular values against numpy's SVD, and the gamma in effect for
an optimal-gamma decoder."""
import math

import numpy as np
import pytest
import torch

from vaefast.models import (TwoStageConfig, TwoStageVAE, VAE, VAEConfig, code_spectra, diagnostics,
                            latent_mmd_estimate, prior_mmd_floor, singular_values)

SCALES = (0.1, 0.2, 0.5, 1, 2, 5, 10)


def imq_mmd_numpy(x, y, chunk=500):
    """Unbiased squared MMD, IMQ kernel summed over SCALES with C_s = s * 2 d (REFERENCE.md section 1), in
    float64 numpy over chunks of rows: independent of vaefast's tiled kernels."""
    d = x.shape[1]

    def kernel_sum(a, b):
        total = 0.0
        for start in range(0, len(a), chunk):
            distances = ((a[start:start + chunk, None, :] - b[None, :, :]) ** 2).sum(-1)
            total += sum((2 * s * d / (2 * s * d + distances)).sum() for s in SCALES)
        return total

    n, m = len(x), len(y)
    diagonal = len(SCALES)  # k(a, a) = sum_s C_s / C_s
    return ((kernel_sum(x, x) - n * diagonal) / (n * (n - 1)) + (kernel_sum(y, y) - m * diagonal) / (m * (m - 1))
            - 2 * kernel_sum(x, y) / (n * m))


def test_latent_mmd_estimate_agrees_with_an_independent_estimate_within_its_standard_error():
    rng = np.random.default_rng()
    shift = np.array([0.4, 0.0, -0.3])  # a mismatch with N(0, I) of a known direction
    codes = rng.standard_normal((2000, 3)) * np.array([1.0, 0.6, 1.0]) + shift
    mean, se = latent_mmd_estimate(torch.from_numpy(codes),
                                   generator=torch.Generator().manual_seed(int(rng.integers(2**31))))
    # Independent: 4000 other codes of the same distribution against their own 4000 prior samples. Away from
    # zero an unbiased MMD's variance falls as 1/n, so the mean of 10 blocks of 200 is about as noisy as one
    # estimate on 2000 codes and this one has about half its variance: |difference| < 5 se is 4 sigma.
    other = rng.standard_normal((4000, 3)) * np.array([1.0, 0.6, 1.0]) + shift
    reference = imq_mmd_numpy(other, rng.standard_normal((4000, 3)))
    assert 0 < se < 0.25 * mean
    assert abs(mean - reference) < 5 * se


def test_standard_error_is_the_spread_of_repeated_estimates():
    """Over fresh code sets of one distribution, the block means scatter as their reported SE says."""
    generator = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    estimates = [latent_mmd_estimate(torch.randn(600, 4, generator=generator, dtype=torch.float64) * 1.3,
                                     generator=generator) for _ in range(20)]
    means = np.array([m for m, _ in estimates])
    typical_se = np.sqrt(np.mean([se**2 for _, se in estimates]))
    # The ratio of the observed spread to the SE is within a factor of 2 (20 repeats: its own noise ~16%).
    assert 0.5 < means.std(ddof=1) / typical_se < 2.0


def test_noise_floor_reads_zero_within_its_error_and_a_shift_does_not():
    generator = torch.Generator().manual_seed(int(np.random.default_rng().integers(2**31)))
    floor, floor_se = prior_mmd_floor(2000, 8, generator=generator, dtype=torch.float64)
    assert abs(floor) < 4 * floor_se
    shifted, shifted_se = latent_mmd_estimate(torch.randn(2000, 8, generator=generator) + 0.5, generator=generator)
    assert shifted > 10 * shifted_se and shifted > 10 * abs(floor)


def test_latent_mmd_estimate_rejects_too_few_codes():
    with pytest.raises(ValueError, match="blocks"):
        latent_mmd_estimate(torch.randn(15, 2))


def test_singular_values_match_numpy_and_read_as_the_docstring_says():
    rng = np.random.default_rng()
    n, d = 4000, 8
    prior = rng.standard_normal((n, d))
    values = singular_values(torch.from_numpy(prior).float())
    assert values.shape == (d,) and values.dtype == torch.float64
    np.testing.assert_allclose(values.numpy(), np.linalg.svd(prior / math.sqrt(n), compute_uv=False),
                               rtol=1e-5)  # the codes were rounded to float32
    assert torch.all(values[:-1] >= values[1:])
    edge = math.sqrt(d / n)  # Marchenko-Pastur: singular values within 1 +- sqrt(d / n) for large n
    assert values.max() < 1 + 2 * edge and values.min() > 1 - 2 * edge
    # Codes on a 2-dimensional manifold: two large values, the rest zero to rounding.
    manifold = rng.standard_normal((n, 2)) @ rng.standard_normal((2, d))
    values = singular_values(torch.from_numpy(manifold))
    assert values[1] > 0.1 and values[2:].max() < 1e-12 * values[0]


def test_code_spectra_of_a_two_stage_vae():
    model = TwoStageVAE(TwoStageConfig(stage1=VAEConfig(data_shape=(10,), latent_dim=3, hidden_dims=(8,)),
                                       stage2_width=8, stage2_depth=2)).double()
    spectra = code_spectra(model, torch.rand(50, 10, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    assert list(spectra) == ["stage 1: mu", "stage 1: z", "stage 2: u", "prior sample"]
    assert all(values.shape == (3,) for values in spectra.values())


def test_diagnostics_report_the_optimal_gamma_in_effect():
    """An optimal-gamma VAE whose encoder ignores x and has sigma = e^-30: every code is mu = 0, so the gamma
    in effect is sqrt of the MSE of the constant decoder output decode(0), computed here on its own."""
    model = VAE(VAEConfig(data_shape=(10,), latent_dim=4, hidden_dims=(8,), gamma="optimal")).double()
    with torch.no_grad():
        model.encoder.head.weight.zero_()
        model.encoder.head.bias.copy_(torch.cat([torch.zeros(4), torch.full((4,), -60.0)]))
        x = torch.rand(40, 10, dtype=torch.float64)
        x_hat = model.decode(torch.zeros(1, 4, dtype=torch.float64))
        expected = float((x - x_hat).pow(2).mean().sqrt())
    report = diagnostics(model, x, batch_size=16, mmd_blocks=4)
    assert report["gamma"] == pytest.approx(expected, rel=1e-9)
    floored = VAE(VAEConfig(data_shape=(10,), latent_dim=4, hidden_dims=(8,), gamma="optimal", gamma_min=10.0))
    assert diagnostics(floored.double(), x, mmd_blocks=4)["gamma"] == 10.0


def test_singular_values_of_non_finite_codes_are_nan():
    """A diverged model's NaN codes give a NaN spectrum of the right length, not an exception."""
    from vaefast.models.diagnostics import singular_values

    z = torch.randn(7, 3)
    z[int(torch.randint(0, 7, ())), int(torch.randint(0, 3, ()))] = float("nan")
    values = singular_values(z)
    assert values.shape == (3,) and bool(torch.isnan(values).all())
