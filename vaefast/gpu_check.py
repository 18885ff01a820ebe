"""python -m vaefast.gpu_check: the one command that checks vaefast on a CUDA GPU, offline.

Run from the source tree (the repository root) on a machine with a CUDA GPU, torch with CUDA, nvcc and
pytest; nothing is downloaded. Steps, each reported as it finishes (the first failure stops the run):
  1. build   FORCE_CUDA=1 python setup.py build_ext --inplace (the CUDA extension, from this tree)
  2. tests   pytest tests/test_cuda.py (every op's CUDA kernel against the CPU kernel, Philox on both
             devices, CUDA-graph replay, torch.compile reduce-overhead, > 2^31 elements), then the whole
             suite with VAEFAST_TEST_DEVICE=cuda
  3. sanitizer  compute-sanitizer memcheck and racecheck over a small run of every kernel (--small-run),
             where compute-sanitizer exists
  4. bench   python -m benchmarks.run --device cuda, python -m benchmarks.mmd_sweep --device cuda, then
             python -m benchmarks.training --device cuda: the same runner, cases and harness as the CPU
             results (CUDA-event timing, the caching allocator's peak memory, the device-to-device copy
             bandwidth, the GPU's name, memory, compute capability and CUDA versions), at the CPU sizes plus
             the CUDA issue's (64M elements; MMD n = 4096 and 65536), and the training comparison with
             pythae (MNIST from $VAEFAST_DATA_DIR or ../shared/data; skipped with the reason when absent):
             benchmarks/results/gpu_ops.md, .csv, gpu_speedups.png, gpu_mmd_sweep.md, .csv, .png and
             gpu_training.md, .csv
Options: --skip-build, --skip-bench, --only-tests, --small-run (step 3's payload, run under the sanitizer).
Without a CUDA GPU it exits with status 2 and says so.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(message):
    print(f"[gpu_check] {message}", flush=True)


def run(command, env=None, timeout=None):
    """Runs a command in the repository root, streaming its output; returns its exit status."""
    log("$ " + " ".join(command))
    start = time.time()
    status = subprocess.call(command, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout)
    log(f"  exit {status} after {time.time() - start:.0f} s")
    return status


def require_gpu():
    if not torch.cuda.is_available():
        reason = ("torch was built without CUDA" if torch.version.cuda is None
                  else "torch has CUDA but sees no GPU (driver, CUDA_VISIBLE_DEVICES?)")
        print(f"vaefast.gpu_check: no CUDA GPU available ({reason}); nothing checked. Run this on a GPU machine.",
              file=sys.stderr)
        sys.exit(2)


def build():
    status = run([sys.executable, "setup.py", "build_ext", "--inplace"], env={"FORCE_CUDA": "1"})
    if status != 0:
        return status
    # A fresh interpreter: this one has already imported the previous build.
    probe = ("from vaefast import _backend as b; import sys; "
             "missing = [op for op, d in b.KERNEL_DEVICES.items() if 'cuda' not in d]; "
             "print('CUDA kernels:', 'all ops' if not missing else 'MISSING for ' + ', '.join(missing)); "
             "sys.exit(1 if missing else 0)")
    return run([sys.executable, "-c", probe])


def tests():
    pytest = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    env = {"VAEFAST_TEST_DEVICE": "cuda", "VAEFAST_BACKEND": "compiled"}
    status = run(pytest + ["tests/test_cuda.py"], env=env)
    if status != 0:
        return status
    return run(pytest + ["tests"], env=env)


def small_run():
    """Every kernel once, forward and backward, every dtype, small sizes (the sanitizer's payload)."""
    import vaefast

    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        def leaf(*shape):
            return torch.randn(*shape, device="cuda").to(dtype).requires_grad_(True)

        for features in (37, 64, 2100):  # scalar path, vector path, several row chunks
            mu, logvar = leaf(66, features), leaf(66, features)
            z = vaefast.reparameterize(mu, logvar, num_samples=2)
            z2 = vaefast.reparameterize(mu, logvar, eps=torch.randn_like(mu))
            z3, kl = vaefast.reparameterize_kl(mu, logvar, num_samples=2)
            loss = vaefast.gaussian_kl(mu, logvar) + z.sum() + z2.sum() + z3.sum() + kl
            for log_gamma in (leaf(()), leaf(66, 1), leaf(features), leaf(66, features)):
                loss = loss + vaefast.gaussian_nll(mu, logvar, log_gamma)
            torch.autograd.grad(loss, [mu, logvar])
        for kernel in ("imq", "rbf", "poly"):
            x, y = leaf(70, 5), leaf(65, 5)
            torch.autograd.grad(vaefast.mmd(x, y, kernel=kernel), [x, y])
            big_x, big_y = leaf(33, 130), leaf(40, 130)
            torch.autograd.grad(vaefast.mmd(big_x, big_y, kernel=kernel, unbiased=False), [big_x, big_y])
    torch.cuda.synchronize()
    print("small run: ok")


def sanitizer():
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
        candidate = os.path.join(cuda_home, "bin", "compute-sanitizer")
        tool = candidate if os.path.exists(candidate) else None
    if tool is None:
        log("compute-sanitizer not found: sanitizer step skipped")
        return 0
    for check in ("memcheck", "racecheck"):
        status = run([tool, "--tool", check, "--error-exitcode", "1", sys.executable, "-m", "vaefast.gpu_check",
                      "--small-run"])
        if status != 0:
            return status
    return 0


def bench(out_dir):
    """The CUDA benchmarks, through the runner and sweep that write the CPU results (one timing code path:
    benchmarks/harness.py). The > 2^31-element case is a test (tests/test_cuda.py), not a timing."""
    status = run([sys.executable, "-m", "benchmarks.run", "--device", "cuda", "--out", out_dir])
    if status != 0:
        return status
    status = run([sys.executable, "-m", "benchmarks.mmd_sweep", "--device", "cuda", "--out", out_dir])
    if status != 0:
        return status
    return run([sys.executable, "-m", "benchmarks.training", "--device", "cuda", "--loop-repeats", "5",
                "--out", out_dir])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m vaefast.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--only-tests", action="store_true")
    parser.add_argument("--small-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    require_gpu()
    if args.small_run:
        small_run()
        return 0
    steps = []
    if not args.skip_build:
        steps.append(("build", build))
    steps.append(("tests", tests))
    if not args.only_tests:
        steps.append(("sanitizer", sanitizer))
        if not args.skip_bench:
            steps.append(("bench", lambda: bench(args.out)))
    for name, step in steps:
        log(f"== {name}")
        status = step()
        if status != 0:
            log(f"FAILED at {name} (exit {status})")
            return status
    log("all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
