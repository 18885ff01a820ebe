"""Helpers the per-op test files share: inputs in several memory layouts, one forward + backward pass that
returns the value and every gradient, and the comparison rule (float64 tight, lower precisions earned).
Not a test module: it holds no tests."""
import dataclasses
import os
import pathlib
import subprocess
import sys

import torch

import vaefast
from tests.conftest import assert_close64, assert_earned

REDUCTIONS = ("none", "sum", "mean")
LAYOUTS = ("contiguous", "transposed", "step")
# Every memory layout with per-sample results ("none", pulled back with a random [B] gradient), and the
# batch reductions (plain PyTorch on the [B] result) on contiguous inputs only: the full product would
# test the same kernels again at nearly twice the run time.
LAYOUT_REDUCTIONS = [(layout, "none") for layout in LAYOUTS] + [("contiguous", "sum"), ("contiguous", "mean")]


@dataclasses.dataclass
class Case:
    """One hypothesis draw: the inputs (left out of failure reports, they can be large) and a one-line
    description of how they were drawn (shown, with the seed that replays them)."""

    description: str
    bases: list = dataclasses.field(repr=False)
    views: list = dataclasses.field(repr=False)
    reduction: str
    dtype: torch.dtype
    has_specials: bool
    generator: torch.Generator = dataclasses.field(repr=False)  # for the upstream gradient


def make_input(shape, layout, *, dtype=torch.float64, generator=None, fill=None):
    """(base, view): base is a contiguous leaf-to-be, view(base) the [shape] tensor handed to the op.

    "transposed" reverses every dimension of a larger base; "step" keeps every other element of the last
    dimension. Values are standard normal in float64, then rounded to dtype; fill(base64) may replace them.
    """
    shape = tuple(shape)
    if layout == "contiguous":
        base_shape, view = shape, lambda t: t
    elif layout == "transposed":
        base_shape = shape[::-1]
        view = lambda t: t.permute(*reversed(range(t.dim()))) if t.dim() else t  # noqa: E731
    elif layout == "step":
        base_shape = (*shape[:-1], 2 * shape[-1]) if shape else shape
        view = (lambda t: t[..., ::2]) if shape else (lambda t: t)
    else:
        raise ValueError(layout)
    base = torch.randn(base_shape, dtype=torch.float64, generator=generator)
    if fill is not None:
        base = fill(base)
    return base.to(dtype), view


def forward_backward(fn, bases, views, cotangent, **kwargs):
    """[value, d/d base for every base]: fn(*views(bases), **kwargs), pulled back with `cotangent`."""
    leaves = [base.detach().clone().requires_grad_() for base in bases]
    out = fn(*(view(leaf) for view, leaf in zip(views, leaves)), **kwargs)
    grads = torch.autograd.grad(out, leaves, grad_outputs=cotangent.to(out.dtype))
    return [out.detach(), *grads]


def at_thread_counts(run, counts=(1, 2)):
    """[run() with torch.set_num_threads(c) for c in counts]; the caller's thread count is restored."""
    threads = torch.get_num_threads()
    try:
        results = []
        for count in counts:
            torch.set_num_threads(count)
            results.append(run())
        return results
    finally:
        torch.set_num_threads(threads)


BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
        torch.float64: torch.int64}


def same_bits(actual, expected):
    """Bitwise equality (NaN payloads and signed zeros included) of two tensors of one dtype and shape."""
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return False
    bits = BITS[actual.dtype]
    return torch.equal(actual.contiguous().view(bits), expected.contiguous().view(bits))


def assert_same_bits_at_1_and_2_threads(run):
    """run() -> a sequence of tensors; the same bits with 1 thread as with 2 (the kernels split their
    reductions at fixed chunks, so the thread count must not change a result)."""
    one, two = at_thread_counts(run)
    for index, (a, b) in enumerate(zip(one, two, strict=True)):
        assert same_bits(a, b), f"output {index} differs between 1 and 2 threads"


def cotangent_for(batch, reduction, generator=None):
    """A random upstream gradient ([B] for "none", 0-dim otherwise), so per-sample scaling is tested."""
    shape = (batch,) if reduction == "none" else ()
    return torch.randn(shape, dtype=torch.float64, generator=generator)


def assert_all_match(actual, reference_lowp, reference64, scales=None):
    """Lists of tensors: float64 results to a few thousand ulps, lower precisions within earned bounds
    (scales: per result, the magnitude it passes through before cancelling, or None; see assert_earned)."""
    assert len(actual) == len(reference64)
    scales = scales or [None] * len(actual)
    for got, low, exact, scale in zip(actual, reference_lowp, reference64, scales, strict=True):
        assert got.dtype == low.dtype, (got.dtype, low.dtype)
        assert got.shape == exact.shape, (got.shape, exact.shape)
        if got.dtype == torch.float64:
            assert_close64(got, exact)
        else:
            assert_earned(got, low, exact, scale=scale)


def compare_to_reference(op, reference_op, bases, views, reduction, dtype, generator=None, cotangent_scale=1.0,
                         magnitudes=None):
    """The op in `dtype` against the same reference in `dtype` and in float64 on the same rounded inputs.
    magnitudes(*inputs64, cotangent=, reduction=), if given, returns the scales for assert_all_match."""
    batch = views[0](bases[0]).shape[0]
    cotangent = cotangent_scale * cotangent_for(batch, reduction, generator)
    lowp = [base.to(dtype) for base in bases]
    exact = [base.to(dtype).double() for base in bases]
    actual = forward_backward(op, lowp, views, cotangent, reduction=reduction)
    reference_lowp = forward_backward(reference_op, lowp, views, cotangent, reduction=reduction)
    reference64 = forward_backward(reference_op, exact, views, cotangent, reduction=reduction)
    scales = None
    if magnitudes is not None:
        scales = magnitudes(*(view(t) for view, t in zip(views, exact)), cotangent=cotangent, reduction=reduction)
    assert_all_match(actual, reference_lowp, reference64, scales)


def run_with_reference_backend(script, tmp_path):
    """Runs `script` in a fresh interpreter with VAEFAST_BACKEND=reference; returns its stdout."""
    # This checkout's vaefast first, whatever else the interpreter could import.
    root = str(pathlib.Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, VAEFAST_BACKEND="reference", PYTHONPATH=path)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


REFERENCE_BACKEND_SCRIPT = """
import torch, vaefast
op = getattr(vaefast, OP_NAME)
info = vaefast.backend_info()
outputs = {"compiled": info["compiled"], "backend": info["backend"], "cases": []}
for case in torch.load("inputs.pt"):
    args = [t.requires_grad_() for t in case["args"]]
    value = op(*args, reduction=case["reduction"])
    grads = torch.autograd.grad(value, args, case["cotangent"])
    outputs["cases"].append([value.detach(), *grads])
torch.save(outputs, "outputs.pt")
"""


def assert_reference_backend_matches(op_name, cases, tmp_path):
    """vaefast.<op_name> in a fresh interpreter under VAEFAST_BACKEND=reference (pure PyTorch) against this
    process's compiled op: value and gradients, float64, for each case {"args": [tensors], "reduction",
    "cotangent"}."""
    torch.save(cases, tmp_path / "inputs.pt")
    run_with_reference_backend(REFERENCE_BACKEND_SCRIPT.replace("OP_NAME", repr(op_name)), tmp_path)
    outputs = torch.load(tmp_path / "outputs.pt")
    assert outputs["compiled"] is False and outputs["backend"] == "reference"
    assert vaefast.backend_info()["compiled"], "this process should run the compiled kernels"
    op = getattr(vaefast, op_name)
    for case, theirs in zip(cases, outputs["cases"], strict=True):
        ours = forward_backward(op, case["args"], [lambda t: t] * len(case["args"]), case["cotangent"],
                                reduction=case["reduction"])
        for got, want in zip(ours, theirs, strict=True):
            assert_close64(got, want)
