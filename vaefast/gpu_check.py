"""python -m vaefast.gpu_check: the one command that checks vaefast on a CUDA GPU, offline.

Run from the source tree (the repository root) on a machine with a CUDA GPU, torch with CUDA, nvcc and
pytest; nothing is downloaded. Steps, each reported as it finishes (the first failure stops the run):
  1. build   FORCE_CUDA=1 python setup.py build_ext --inplace (the CUDA extension, from this tree)
  2. tests   pytest tests/test_cuda.py (every op's CUDA kernel against the CPU kernel, Philox on both
             devices, CUDA-graph replay, torch.compile reduce-overhead, > 2^31 elements), then the whole
             suite with VAEFAST_TEST_DEVICE=cuda
  3. sanitizer  compute-sanitizer memcheck and racecheck over a small run of every kernel (--small-run),
             where compute-sanitizer exists
  4. bench   python -m benchmarks.run --out benchmarks/results (the CPU runner), then CUDA-event timings of
             every op at large and training sizes with the GPU's name, its measured device-to-device copy
             bandwidth and the torch and CUDA versions: benchmarks/results/gpu_ops.md and gpu_ops.csv
Options: --skip-build, --skip-bench, --only-tests, --small-run (step 3's payload, run under the sanitizer).
Without a CUDA GPU it exits with status 2 and says so.
"""
import argparse
import csv
import datetime
import os
import shutil
import statistics
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
            loss = vaefast.gaussian_kl(mu, logvar) + z.sum() + z2.sum()
            for log_gamma in (leaf(()), leaf(66), leaf(features), leaf(66, features)):
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


# ---- CUDA benchmarks ----------------------------------------------------------------------------------

def cuda_time_ms(fn, warmup=3, repeats=20):
    """Median of `repeats` CUDA-event timings of fn() (each call timed alone, after warm-up)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def copy_bandwidth_gbs(numel=2**28):
    """Device-to-device copy bandwidth, bytes read plus written (the yardstick for memory-bound ops)."""
    src = torch.empty(numel, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src))
    return 2 * numel * 4 / (ms * 1e-3) / 1e9


def bench_rows():
    import vaefast
    from vaefast.ops import reference

    rows = []

    def case(name, bytes_moved, providers, inputs):
        wrt = [t for t in inputs if t.requires_grad]
        for provider, fn in providers.items():
            def step(fn=fn):
                out = fn(*inputs)
                torch.autograd.grad(out.sum() if out.dim() else out, wrt)
            try:
                ms = cuda_time_ms(step)
            except torch.cuda.OutOfMemoryError:
                ms = float("nan")
                torch.cuda.empty_cache()
            gbs = bytes_moved / (ms * 1e-3) / 1e9 if bytes_moved else float("nan")
            rows.append(dict(case=name, provider=provider, ms=ms, gbs=gbs))
            log(f"  {name} {provider}: {ms:.3f} ms" + (f", {gbs:.0f} GB/s" if bytes_moved else ""))

    def leaf(*shape):
        return torch.randn(*shape, device="cuda").requires_grad_(True)

    large = 2**26  # 64M float32 elements
    mu, logvar = leaf(256, large // 256), leaf(256, large // 256)
    # Bytes each direction must move at the least (float32): forward 8 read + 4 written; backward
    # 12 read + 4 written (grad_z, z, mu -> grad_logvar; grad_mu is grad_z itself).
    case("reparameterize 64M fwd+bwd", 28 * large,
         {"vaefast": lambda m, l: vaefast.reparameterize(m, l),
          "eager": lambda m, l: reference.reparameterize(m, l)}, (mu, logvar))
    # KL: forward 8 read; backward 8 read + 8 written.
    case("gaussian_kl 64M fwd+bwd", 24 * large,
         {"vaefast": lambda m, l: vaefast.gaussian_kl(m, l), "eager": lambda m, l: reference.gaussian_kl(m, l)},
         (mu, logvar))
    x = torch.rand(256, large // 256, device="cuda")
    x_hat = leaf(256, large // 256)
    log_gamma = torch.zeros((), device="cuda", requires_grad=True)
    # NLL: forward 8 read; backward 8 read + 4 written.
    case("gaussian_nll 64M fwd+bwd", 20 * large,
         {"vaefast": lambda a, b, g: vaefast.gaussian_nll(a, b, g),
          "eager": lambda a, b, g: reference.gaussian_nll(a, b, g)}, (x, x_hat, log_gamma))
    del mu, logvar, x, x_hat
    torch.cuda.empty_cache()

    small_mu, small_logvar = leaf(256, 64), leaf(256, 64)
    small_x, small_x_hat = torch.rand(256, 784, device="cuda"), leaf(256, 784)

    def head(impl):
        def loss(m, l, xh, g):
            z = impl.reparameterize(m, l)
            return impl.gaussian_nll(small_x, xh, g) + impl.gaussian_kl(m, l) + impl.mmd(z, torch.randn_like(z))
        return loss

    case("loss head [256,64]+[256,784] fwd+bwd", 0,
         {"vaefast": head(vaefast), "eager": head(reference),
          "compile": torch.compile(head(reference))}, (small_mu, small_logvar, small_x_hat, log_gamma))

    for n in (4096, 65536):
        a, b = leaf(n, 64), leaf(n, 64)
        providers = {"vaefast": lambda p, q: vaefast.mmd(p, q)}
        if n <= 4096:
            providers["cdist reference"] = lambda p, q: reference.mmd(p, q)
        case(f"mmd imq7 n=m={n} d=64 fwd+bwd", 0, providers, (a, b))
    return rows


def bench(out_dir):
    status = run([sys.executable, "-m", "benchmarks.run", "--out", out_dir])
    os.makedirs(os.path.join(ROOT, out_dir), exist_ok=True)
    bandwidth = copy_bandwidth_gbs()
    properties = torch.cuda.get_device_properties(0)
    facts = {
        "gpu": properties.name,
        "memory_gib": f"{properties.total_memory / 2**30:.0f}",
        "copy_bandwidth_gbs": f"{bandwidth:.0f}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    log(f"GPU {facts['gpu']}, device-to-device copy {bandwidth:.0f} GB/s")
    rows = bench_rows()
    csv_path = os.path.join(ROOT, out_dir, "gpu_ops.csv")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "provider", "ms", "gbs", "fraction_of_copy"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "fraction_of_copy": row["gbs"] / bandwidth if row["gbs"] == row["gbs"] else ""})
    lines = ["# vaefast on " + facts["gpu"], "",
             " ".join(f"{key}: {value};" for key, value in facts.items()), "",
             "Forward+backward, CUDA-event median of 20 calls. GB/s counts the bytes each pass must move.", "",
             "| case | provider | ms | GB/s | of copy |", "|---|---|---|---|---|"]
    for row in rows:
        fraction = f"{row['gbs'] / bandwidth:.0%}" if row["gbs"] == row["gbs"] else ""
        gbs = f"{row['gbs']:.0f}" if row["gbs"] == row["gbs"] else ""
        lines.append(f"| {row['case']} | {row['provider']} | {row['ms']:.3f} | {gbs} | {fraction} |")
    with open(os.path.join(ROOT, out_dir, "gpu_ops.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    log(f"wrote {out_dir}/gpu_ops.md and gpu_ops.csv")
    return status


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
