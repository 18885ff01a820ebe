"""python -m benchmarks.contention [--repeats 15] [--out DIR] [--cases mmd,reparameterize,...]

How the CPU ops behave when another process wants a core: users train beside data-loader workers and other
jobs. Every case runs forward+backward at 1 and 2 threads (torch.set_num_threads), first on a quiet machine,
then with one competing busy process that this benchmark starts itself (a Python loop spinning on one
core) and stops at the end. On 2 cores, 2 threads beside a busy process get about 2/3 of a core each, so
a well-behaved op at 2 threads takes at most about the time of 1 thread (which has a core to itself while
the competitor takes the other); one that synchronises its threads often waits for a thread the OS has
descheduled each time.

Target (the hardening issue): with the competitor, the 2-thread time at most 1.3x the 1-thread time.
Cases: MMD (IMQ, 7 scales) at n = m = 2048, d = 64, and its eager cdist reference; mmd_prior at the
training size (n = 256, d = 64); the elementwise ops at [4096, 1024] (reparameterize, gaussian_kl,
reparameterize_kl, gaussian_nll with a scalar log_gamma). Median of round-robin repeats (harness.py).
Writes DIR/cpu_contention.md and .csv with the machine's facts; with OMP_WAIT_POLICY set in the
environment (it must be set before torch loads libgomp, so it cannot be a flag of this process),
DIR/cpu_contention_omp_<policy>.md and .csv. OpenMP's default policy spins at the end of a parallel region
while the last thread finishes; PASSIVE sleeps at once, so a descheduled thread can take the core.
"""
import argparse
import csv
import os
import subprocess
import sys
import time

import torch

import vaefast
from vaefast.ops import reference

from . import harness

TARGET_RATIO = 1.3


def log(message):
    print(f"[contention] {message}", file=sys.stderr, flush=True)


def leaf(*shape):
    return torch.randn(shape).requires_grad_()


def forward_backward(loss_fn, leaves):
    def step():
        for t in leaves:
            t.grad = None
        loss_fn().backward()
    return step


def make_cases():
    """name -> no-argument forward+backward step (inputs made once, fresh gradients each call)."""
    x, y = leaf(2048, 64), leaf(2048, 64)
    z = leaf(256, 64)
    mu, logvar = leaf(4096, 1024), leaf(4096, 1024)
    data, x_hat, log_gamma = torch.rand(4096, 1024), leaf(4096, 1024), leaf()
    return {
        "mmd n=2048 d=64": forward_backward(lambda: vaefast.mmd(x, y), (x, y)),
        "mmd eager (cdist) n=2048 d=64": forward_backward(lambda: reference.mmd(x, y), (x, y)),
        "mmd_prior n=256 d=64": forward_backward(lambda: vaefast.mmd_prior(z), (z,)),
        "reparameterize [4096, 1024]": forward_backward(lambda: vaefast.reparameterize(mu, logvar).sum(),
                                                        (mu, logvar)),
        "gaussian_kl [4096, 1024]": forward_backward(lambda: vaefast.gaussian_kl(mu, logvar), (mu, logvar)),
        "reparameterize_kl [4096, 1024]": forward_backward(
            lambda: sum(t.sum() for t in vaefast.reparameterize_kl(mu, logvar)), (mu, logvar)),
        "gaussian_nll [4096, 1024]": forward_backward(lambda: vaefast.gaussian_nll(data, x_hat, log_gamma),
                                                      (x_hat, log_gamma)),
    }


class Competitor:
    """One busy process (a spinning Python loop) for the duration of a `with` block."""

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # let the scheduler see it as a busy task
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def measure(cases, threads, repeats):
    torch.set_num_threads(threads)
    timings = harness.time_round_robin(cases, repeats=repeats, warmup=2, min_sample_s=0.05)
    return {name: timing for name, timing in timings.items()}


def markdown(machine, rows, notes):
    out = ["# CPU ops beside a competing busy process", "", "## Machine", ""]
    out += [f"- {key}: {value}" for key, value in machine.items()]
    out += ["", "## Run notes", ""] + [f"- {note}" for note in notes]
    out += ["", "## Results (forward+backward, median ms; IQR in brackets)", "",
            "| case | quiet, 1 thread | quiet, 2 threads | busy, 1 thread | busy, 2 threads | "
            f"busy 2 threads / busy 1 thread (target <= {TARGET_RATIO}) |",
            "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row["case"]] + [f"{row[key]:.2f} [{row[key.replace('_ms', '_iqr_ms')]:.2f}]" for key in
                                 ("quiet_1_ms", "quiet_2_ms", "busy_1_ms", "busy_2_ms")]
        ratio = row["busy_2_ms"] / row["busy_1_ms"]
        cells.append(f"{ratio:.2f} ({'met' if ratio <= TARGET_RATIO else 'missed'})")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.contention", description=__doc__.split("\n\n")[1])
    parser.add_argument("--repeats", type=int, default=15, help="round-robin repeats per condition (default 15)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--cases", help="comma-separated substrings of the case names to run (default: all)")
    parser.add_argument("--note", action="append", default=[], help="a run note to record (repeatable), e.g. "
                        "how the machine was kept quiet")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    torch.manual_seed(0)
    cases = make_cases()
    if args.cases:
        wanted = [part.strip() for part in args.cases.split(",") if part.strip()]
        cases = {name: step for name, step in cases.items() if any(part in name for part in wanted)}
        if not cases:
            parser.error(f"--cases {args.cases!r} matches none of: {', '.join(make_cases())}")
    load_start = os.getloadavg()[0]
    machine = harness.machine_info(threads="1 and 2 (per column)")
    policy = os.environ.get("OMP_WAIT_POLICY")
    machine["OMP_WAIT_POLICY"] = policy or "not set (libgomp's default: spin, then sleep)"
    results = {}
    for condition in ("quiet", "busy"):
        for threads in (1, 2):
            log(f"{condition}, {threads} thread(s)")
            if condition == "busy":
                with Competitor():
                    results[condition, threads] = measure(cases, threads, args.repeats)
            else:
                results[condition, threads] = measure(cases, threads, args.repeats)
    rows = []
    for name in cases:
        row = {"case": name}
        for (condition, threads), timings in results.items():
            row[f"{condition}_{threads}_ms"] = timings[name].median_ms
            row[f"{condition}_{threads}_iqr_ms"] = timings[name].iqr_ms
        row["busy_ratio"] = row["busy_2_ms"] / row["busy_1_ms"]
        rows.append(row)
    notes = [f"{args.repeats} round-robin repeats per (condition, threads); a sample lasts >= 50 ms",
             "busy: one `python -c 'while True: pass'` process started by the benchmark, on "
             f"{len(os.sched_getaffinity(0))} cores", *args.note]
    # The run's own 2 threads and its competitor count in the load average (it is also read at the end).
    warning = harness.load_warning(load_start, threads=3)
    if warning:
        notes.append(warning)
    os.makedirs(args.out, exist_ok=True)
    stem = "cpu_contention" + (f"_omp_{policy.lower()}" if policy else "")
    with open(os.path.join(args.out, stem + ".md"), "w") as handle:
        handle.write(markdown(machine, rows, notes))
    with open(os.path.join(args.out, stem + ".csv"), "w", newline="") as handle:
        for key, value in machine.items():
            handle.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(markdown(machine, rows, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
