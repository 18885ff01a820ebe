"""Shared test configuration: fresh random inputs on every run (the seed is printed on failure so that a
failing draw can be replayed with VAEFAST_TEST_SEED), hypothesis profiles, and earned tolerances."""
import os
import random

import pytest
import torch
from hypothesis import HealthCheck, settings

# "full" is the CI run: several hundred examples per property. "dev" is for quick local iterations.
settings.register_profile(
    "full", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "full"))


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Seeds torch with a new seed per test (or VAEFAST_TEST_SEED) and reports it if the test fails."""
    seed = int(os.environ.get("VAEFAST_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seeds = [value for key, value in item.user_properties if key == "seed"]
        if seeds:
            report.sections.append(("vaefast", f"replay with VAEFAST_TEST_SEED={seeds[0]}"))


def max_error(actual, expected):
    """Largest absolute difference, in float64; NaN and inf must sit at the same places with the same sign."""
    actual = actual.detach().double()
    expected = expected.detach().double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    same_nonfinite = (actual.isnan() == expected.isnan()) & (actual.isinf() == expected.isinf())
    assert bool(same_nonfinite.all()), "NaN/inf pattern differs from the reference"
    inf = expected.isinf()
    assert bool((actual[inf] == expected[inf]).all()), "an infinity has the wrong sign"
    finite = expected.isfinite()
    if not bool(finite.any()):
        return 0.0
    return float((actual[finite] - expected[finite]).abs().max())


def assert_earned(actual, reference_lowp, reference64, *, factor=2.0, floor_ulps=8, scale=None):
    """A result in a low precision may be off the float64 truth by about twice what the reference itself
    loses in that precision (STYLE.md rule 7). The floor (a few ulps of the largest value) covers draws
    where the reference happens to be exact. `scale`, when given, is the largest magnitude the computation
    passes through before a cancellation (a sum of terms of both signs), if larger than the result's."""
    finite = reference64.detach().double().abs()[reference64.isfinite()]
    largest = float(finite.max()) if finite.numel() else 0.0  # an all-NaN/inf reference leaves only the pattern
    scale = largest if scale is None else max(largest, scale)
    eps = torch.finfo(actual.dtype).eps
    budget = factor * max_error(reference_lowp, reference64) + floor_ulps * eps * max(scale, 1.0)
    error = max_error(actual, reference64)
    assert error <= budget, f"error {error:.3e} exceeds the earned budget {budget:.3e} ({actual.dtype})"


def assert_close64(actual, expected, *, rtol=1e-10, atol=1e-12):
    """float64 results against a float64 reference: equal to a few thousand ulps of the magnitudes."""
    scale = float(expected.detach().abs()[expected.isfinite()].max()) if expected.numel() and bool(expected.isfinite().any()) else 1.0
    error = max_error(actual, expected)
    assert error <= atol + rtol * max(scale, 1.0), f"error {error:.3e} (scale {scale:.3e})"


def _test_devices():
    """"cpu", plus "cuda" where a GPU and the extension's CUDA kernels exist. VAEFAST_TEST_DEVICE=cuda (set
    by python -m vaefast.gpu_check) makes a missing CUDA kernel an error rather than a silent CPU-only run."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    elif os.environ.get("VAEFAST_TEST_DEVICE") == "cuda":
        raise RuntimeError("VAEFAST_TEST_DEVICE=cuda but torch sees no CUDA device")
    return devices


@pytest.fixture(params=_test_devices())
def device(request):
    """The device an op test runs on: op tests that take this fixture run on every available device."""
    return request.param
