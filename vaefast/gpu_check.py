"""python -m vaefast.gpu_check --budget 540 --out DIR: the one prepared run that checks vaefast on a CUDA GPU.

Made for a GPU machine lent for a few minutes, with no network (everything travels with the source tree) and
only a few result files coming back. Run from the repository root with torch (CUDA), nvcc and pytest.
The steps run in order of value, each with a time budget of its own and never past the whole --budget:
  1. build      FORCE_CUDA=1 python setup.py build_ext --inplace with every core (the toolkit is found as
                setup.py finds it, vaefast/cuda_toolkit.py), then a fresh interpreter confirms a CUDA kernel
                for every op
  2. test_cuda  pytest tests/test_cuda.py: every op's CUDA kernel against the CPU kernel (values and
                gradients), Philox on both devices, CUDA-graph replay with fresh noise, torch.compile
                reduce-overhead, an op over 2^31 elements
  3. memcheck, racecheck  compute-sanitizer over a small run of every kernel, every dtype (--small-run)
  4. bench_ops  python -m benchmarks.run --device cuda --quick: the targets' sizes (64M elements, the loss
                head at training sizes, MMD n = 4096 and 65536) with the copy bandwidth of the same run
  5. training   python -m benchmarks.training --device cuda --models VAE,WAE-MMD (MNIST from
                $VAEFAST_DATA_DIR; pythae's rows where pythae is installed)
  6. suite      if time is left: the whole test suite on CUDA, pytest -n 8
A step that needs an earlier one (everything needs the build) is skipped when that one failed; a step is
not started with less time left than it can use. After each step DIR holds summary.md (the table of steps)
and gpu_check.tar.gz (every finished step's log and the benchmarks' result files, results/gpu_*), so a run
cut short still leaves them; the running step's log is DIR/<step>.log until it finishes. DIR never holds
more than three files. Without a CUDA GPU it writes summary.md saying so and exits 0 ("no GPU").
"""
import argparse
import dataclasses
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import torch

from vaefast import cuda_toolkit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PASSED, FAILED, TIMED_OUT = "passed", "failed", "timed out"
NOT_REACHED, SKIPPED = "not reached in time", "skipped"
SUMMARY, BUNDLE = "summary.md", "gpu_check.tar.gz"
# Kept back from the last step's allowance to write the summary and the bundle after it.
WRAP_UP_S = 5


@dataclasses.dataclass
class Step:
    name: str
    budget_s: float  # the most this step may take
    # run(allowance_s, log_path) -> PASSED, FAILED or TIMED_OUT; it must end within allowance_s
    run: object
    needs: tuple = ()  # steps that must have passed first
    min_s: float = 20  # less time left than this, and the step is not started
    # The summary's one line about the outcome: the last log line matching this pattern, else the last line.
    outcome: str = r"$^"


@dataclasses.dataclass
class StepResult:
    name: str
    status: str
    seconds: float = 0.0
    allowance_s: float = 0.0
    outcome: str = ""


def log(message):
    print(f"[gpu_check] {message}", flush=True)


def run_command(argv, allowance_s, log_path, env=None):
    """Runs argv in the repository root, its output appended to log_path; kills it and everything it started
    (its process group: pytest's workers, the program under compute-sanitizer) at allowance_s."""
    with open(log_path, "a") as handle:
        handle.write(f"$ {' '.join(argv)}\n")
        handle.flush()
        process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=max(allowance_s, 0))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            handle.write(f"\n[gpu_check] killed at its allowance of {allowance_s:.0f} s\n")
            return TIMED_OUT
        handle.write(f"[gpu_check] exit {code}\n")
    return PASSED if code == 0 else FAILED


def commands(*argvs, env=None):
    """A step's run: the commands in turn, sharing its allowance; the first that does not pass ends it."""
    def run(allowance_s, log_path):
        deadline = time.monotonic() + allowance_s
        for argv in argvs:
            status = run_command(argv, deadline - time.monotonic(), log_path, env)
            if status != PASSED:
                return status
        return PASSED
    return run


def outcome_line(log_path, pattern):
    try:
        with open(log_path, errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip() and not line.startswith("[gpu_check]")]
    except OSError:
        return ""
    matches = [line for line in lines if re.search(pattern, line)]
    return (matches or lines or [""])[-1][:200]


def write_atomically(path, write):
    partial = path + ".partial"
    write(partial)
    os.replace(partial, path)


def write_summary(out_dir, header, results, budget_s, used_s):
    rows = [f"| {r.name} | {r.status} | {r.seconds:.0f} | {r.allowance_s:.0f} | {r.outcome.replace('|', '/')} |"
            for r in results]
    text = "\n".join([
        "# vaefast GPU check", "",
        *(f"- {key}: {value}" for key, value in header.items()),
        f"- budget {budget_s:.0f} s, used {used_s:.0f} s", "",
        "| step | status | s | allowance s | outcome |", "|---|---|---|---|---|", *rows, "",
        f"Logs and result files: {BUNDLE} (logs/, results/).", ""])

    def write(path):
        with open(path, "w") as handle:
            handle.write(text)
    write_atomically(os.path.join(out_dir, SUMMARY), write)


def write_bundle(out_dir, work_dir):
    def write(path):
        with tarfile.open(path, "w:gz") as bundle:
            for folder in ("logs", "results"):
                if os.path.isdir(os.path.join(work_dir, folder)):
                    bundle.add(os.path.join(work_dir, folder), arcname=folder)
    write_atomically(os.path.join(out_dir, BUNDLE), write)


def run_steps(steps, budget_s, out_dir, work_dir, header, clock=time.monotonic):
    """Runs the steps in order within budget_s seconds; after each, rewrites DIR's summary and bundle.
    Returns the results. `clock` is the time the budget is kept in (a fake one in the tests)."""
    started = clock()
    deadline = started + budget_s
    os.makedirs(os.path.join(work_dir, "logs"), exist_ok=True)
    results = []
    write_summary(out_dir, header, results, budget_s, 0)
    for number, step in enumerate(steps, 1):
        failed_needs = [need for need in step.needs
                        if not any(r.name == need and r.status == PASSED for r in results)]
        allowance = min(step.budget_s, deadline - clock() - WRAP_UP_S)
        if failed_needs:
            result = StepResult(step.name, SKIPPED, outcome=f"needs {', '.join(failed_needs)}, which did not pass")
        elif allowance < step.min_s:
            result = StepResult(step.name, NOT_REACHED, allowance_s=max(allowance, 0),
                                outcome=f"{max(allowance, 0):.0f} s left, the step needs at least {step.min_s:.0f}")
        else:
            log(f"{step.name}: up to {allowance:.0f} s")
            running_log = os.path.join(out_dir, f"{step.name}.log")
            start = clock()
            status = step.run(allowance, running_log)
            seconds = clock() - start
            result = StepResult(step.name, status, seconds, allowance, outcome_line(running_log, step.outcome))
            if os.path.exists(running_log):
                shutil.move(running_log, os.path.join(work_dir, "logs", f"{number}_{step.name}.log"))
        log(f"{step.name}: {result.status} after {result.seconds:.0f} s  {result.outcome}")
        results.append(result)
        write_bundle(out_dir, work_dir)
        write_summary(out_dir, header, results, budget_s, clock() - started)
    return results


def sanitizer_tool(toolkit):
    """compute-sanitizer from PATH or the toolkit's bin (or the toolkit's compute-sanitizer/ folder)."""
    candidates = [shutil.which("compute-sanitizer")]
    if toolkit is not None:
        candidates += [os.path.join(toolkit.home, "bin", "compute-sanitizer"),
                       os.path.join(toolkit.home, "compute-sanitizer", "compute-sanitizer")]
    return next((c for c in candidates if c and os.path.isfile(c)), None)


def missing(reason):
    """A step's run that cannot run here: writes why and fails."""
    def run(allowance_s, log_path):
        with open(log_path, "a") as handle:
            handle.write(reason + "\n")
        return FAILED
    return run


def plan(toolkit, results_dir):
    """The steps, in order of value, with their budgets (seconds; --budget 540 fits steps 1-5 at their
    budgets, and step 6 gets what they leave)."""
    python = sys.executable
    cores = os.cpu_count() or 1
    cuda_env = {"VAEFAST_TEST_DEVICE": "cuda", "VAEFAST_BACKEND": "compiled", "PYTHONUNBUFFERED": "1"}
    pytest = [python, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider"]
    probe = ("from vaefast import _backend as b; import sys; "
             "missing = [op for op, d in b.KERNEL_DEVICES.items() if 'cuda' not in d]; "
             "print('CUDA kernels:', 'every op' if not missing else 'MISSING for ' + ', '.join(missing)); "
             "sys.exit(1 if missing else 0)")
    if toolkit is None:
        build = missing("no CUDA toolkit: " + "; ".join(cuda_toolkit.find_toolkit()[1]))
    else:
        # 16 cores build in about a minute; the GPU that torch sees decides the architecture.
        build = commands([python, "setup.py", "build_ext", "--inplace"], [python, "-c", probe],
                         env={"FORCE_CUDA": "1", "MAX_JOBS": str(cores), "CUDA_HOME": toolkit.home})
    sanitizer = sanitizer_tool(toolkit)
    small_run = [python, "-m", "vaefast.gpu_check", "--small-run"]

    def sanitize(tool):
        if sanitizer is None:
            return missing("compute-sanitizer not found (PATH, the toolkit's bin/)")
        return commands([sanitizer, "--tool", tool, "--error-exitcode", "1", *small_run], env=cuda_env)

    return [
        Step("build", 140, build, outcome=r"CUDA kernels:|error"),
        Step("test_cuda", 90, commands(pytest + ["tests/test_cuda.py"], env=cuda_env), needs=("build",),
             outcome=r" passed| failed| error"),
        Step("memcheck", 50, sanitize("memcheck"), needs=("build",), outcome=r"ERROR SUMMARY"),
        Step("racecheck", 45, sanitize("racecheck"), needs=("build",), outcome=r"RACECHECK SUMMARY|ERROR SUMMARY"),
        # The largest budget: --quick still compiles the training-size cases (the loss head's 1.3x
        # torch.compile target), and a run cut short keeps the cases it measured (benchmarks/run.py).
        Step("bench_ops", 150, commands([python, "-m", "benchmarks.run", "--device", "cuda", "--quick", "--out",
                                         results_dir], env=cuda_env), needs=("build",), min_s=60,
             outcome=r"^wrote "),
        # The two models of the training target; the Two-Stage stages are the same networks' costs.
        Step("training", 60, commands([python, "-m", "benchmarks.training", "--device", "cuda", "--models",
                                       "VAE,WAE-MMD", "--repeats", "3", "--loop-repeats", "2", "--out",
                                       results_dir], env=cuda_env),
             needs=("build",), min_s=40, outcome=r"skipped: MNIST"),
        Step("suite", 10**6, commands(pytest + ["-n", "8", "tests", "--ignore=tests/test_cuda.py"],
                                      env={**cuda_env, "HYPOTHESIS_PROFILE": "dev"}),
             needs=("build",), min_s=60, outcome=r" passed| failed| error"),
    ]


def machine_header(toolkit):
    header = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "torch": f"{torch.__version__} (CUDA {torch.version.cuda})",
              "python": sys.version.split()[0], "cores": os.cpu_count()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        header["gpu"] = (f"{properties.name}, compute capability {properties.major}.{properties.minor}, "
                         f"{properties.total_memory / 2**30:.0f} GiB, {properties.multi_processor_count} SMs")
    if toolkit is None:
        header["CUDA toolkit"] = "none: " + "; ".join(cuda_toolkit.find_toolkit()[1])
    else:
        version = subprocess.run([toolkit.nvcc, "--version"], capture_output=True, text=True).stdout
        release = re.search(r"release [\d.]+, V[\d.]+", version)
        header["CUDA toolkit"] = (f"{toolkit.home} (found by {toolkit.found_by}), nvcc "
                                  f"{release.group(0) if release else 'of unknown version'}")
    return header


def no_gpu_reason():
    if torch.version.cuda is None:
        return f"torch {torch.__version__} was built without CUDA"
    if not torch.cuda.is_available():
        return "torch has CUDA but sees no GPU (driver, CUDA_VISIBLE_DEVICES?)"
    return None


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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m vaefast.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=540,
                        help="seconds for the whole run (default 540: a 600 s command with a minute to spare)")
    parser.add_argument("--out", default=os.path.join("build", "gpu_check", "out"),
                        help="where summary.md, gpu_check.tar.gz and the running step's log go")
    parser.add_argument("--small-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.small_run:
        small_run()
        return 0
    out_dir = os.path.abspath(args.out)
    work_dir = os.path.join(ROOT, "build", "gpu_check", "work")
    shutil.rmtree(work_dir, ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)
    toolkit, _ = cuda_toolkit.find_toolkit()
    header = machine_header(toolkit)
    reason = no_gpu_reason()
    if reason is not None:
        header["result"] = f"no GPU ({reason}); nothing run. The plan:"
        steps = plan(toolkit, os.path.join(work_dir, "results"))
        planned = [StepResult(step.name, "not run (no GPU)", allowance_s=min(step.budget_s, args.budget))
                   for step in steps]
        write_summary(out_dir, header, planned, args.budget, 0)
        log(f"no GPU: {reason}. Nothing run; run this on a machine with a CUDA GPU.")
        return 0
    results = run_steps(plan(toolkit, os.path.join(work_dir, "results")), args.budget, out_dir, work_dir, header)
    with open(os.path.join(out_dir, SUMMARY)) as summary:
        print(summary.read())
    # A step that did not reach its turn is no failure: the budget is what it is.
    return 1 if any(r.status in (FAILED, TIMED_OUT) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
