"""The op benchmarks as a pytest-benchmark suite: every case of the runner (benchmarks/<op>.py, training and
large sizes) x every provider x forward / backward / forward+backward.

    pytest benchmarks/ --benchmark-group-by=param:case,param:mode
    pytest benchmarks/ -k "mmd and large" --benchmark-json=/tmp/mmd.json

Not part of `pytest` / `pytest tests` (pyproject.toml's testpaths names tests/ only). It shares the cases,
the providers and the step construction with the runner (python -m benchmarks.run), which is the one that
writes the committed results; this suite is for pytest-benchmark's own tooling (comparisons between runs,
--benchmark-compare, JSON). A provider that does not apply to an op, or whose package is missing, or that
would need more memory than the cases allow, is skipped with the reason.

backward: the forward runs in pytest-benchmark's setup, outside the timing, and the timed call is
torch.autograd.grad of its output (one round per forward, since a graph can be walked once). The runner
cannot do that with its samples of back-to-back calls, so it reports forward+backward - forward instead
(benchmarks/run.py, derive_backward). The cases are built on the CPU.
"""
import pytest
import torch

from . import gaussian_kl, gaussian_nll, harness, loss_head, mmd, peers, reparameterize, reparameterize_kl

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed (benchmarks/requirements.txt)")

MODULES = (reparameterize, gaussian_kl, reparameterize_kl, gaussian_nll, mmd, loss_head)
PROVIDERS = ("vaefast", "separate", "eager", "compile", "pythae", "keops")
MODES = ("forward", "backward", "forward+backward")
PEER_ERRORS = {"pythae": peers.PYTHAE_ERROR, "keops": peers.KEOPS_ERROR}

torch.manual_seed(0)
CASES = {case.name: case for module in MODULES for case in module.cases()}
_compiled = {}


def provider_fn(case, provider):
    """The provider's function for this case, or pytest.skip with why it has none."""
    if provider in PEER_ERRORS and PEER_ERRORS[provider] is not None:
        pytest.skip(PEER_ERRORS[provider])
    if provider == "compile":
        if case.name not in _compiled:
            _compiled[case.name] = torch.compile(case.providers["eager"], dynamic=False)
        return _compiled[case.name]
    if provider not in case.providers:
        reasons = [note for note in case.notes if note.startswith(provider)]
        pytest.skip(reasons[0] if reasons else f"{provider} is not a provider of {case.op}")
    return case.providers[provider]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", list(CASES))
def test_op(benchmark, case, provider, mode):
    case = CASES[case]
    fn = provider_fn(case, provider)
    benchmark.group = f"{case.name} {mode}"
    benchmark.extra_info.update(shape=case.shape, mode=mode)
    if case.flops and mode in case.flops:
        benchmark.extra_info["flops"] = case.flops[mode]
    if case.bytes_moved and mode in case.bytes_moved:
        benchmark.extra_info["bytes"] = case.bytes_moved[mode]
    harness.make_step(fn, case, "forward+backward")()  # compilation (inductor, KeOps) outside the timing
    if mode != "backward":
        benchmark(harness.make_step(fn, case, mode))
        return
    args = tuple(case.inputs.values())
    wrt = tuple(case.inputs[name] for name in case.grad_inputs)

    def forward():
        return (fn(*args),), {}

    def backward(output):
        torch.autograd.grad(output, wrt, grad_outputs=case.upstream)

    benchmark.pedantic(backward, setup=forward, rounds=10, iterations=1, warmup_rounds=1)
