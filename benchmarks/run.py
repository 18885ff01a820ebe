"""python -m benchmarks.run [--device cpu|cuda] [--quick] [--out DIR] [--ops reparameterize,kl,nll,mmd,loss_head]
[--threads N]

Times every selected case with its providers -- "vaefast" (the public fused op), "eager" (the reference
in vaefast.ops.reference, what a user writes), "compile" (torch.compile of that reference, default mode)
and, for MMD, the peers "pythae" and "keops" where they install (benchmarks/peers.py) -- forward and
forward+backward, on the CPU or a CUDA GPU, prints a markdown report to stdout (progress goes to
stderr) and writes it with a CSV to DIR/cpu_ops.md and DIR/cpu_ops.csv (gpu_ops.md and gpu_ops.csv with
--device cuda), and the bar chart of forward+backward speed-ups at the large sizes to DIR/cpu_speedups.png
(gpu_speedups.png).

--device cuda makes the inputs on the current GPU, times with CUDA events, probes peak memory with the
caching allocator's counters, measures the copy yardstick device to device (benchmarks/harness.py holds
every such difference) and adds the CUDA issue's sizes: 64M elements for the elementwise ops, MMD
n = m = 4096 and 65536.
"""
import argparse
import os
import sys
import time

import torch

from . import gaussian_kl, gaussian_nll, harness, loss_head, mmd, plots, report, reparameterize

CASE_MODULES = {
    "reparameterize": reparameterize, "kl": gaussian_kl, "nll": gaussian_nll, "mmd": mmd, "loss_head": loss_head,
}

# (repeats, warm-up calls, least seconds per sample, copy-bandwidth elements, copy repeats)
FULL = dict(repeats=15, warmup=3, min_sample_s=0.02, copy_numel=2**26, copy_repeats=10)
# --quick fits in about a minute on 2 cores: fewer and shorter samples, and no compilation at the large
# sizes (inductor takes 10-30 s per graph there, more than the whole quick budget).
QUICK = dict(repeats=5, warmup=1, min_sample_s=0.005, copy_numel=2**26, copy_repeats=5)


def log(message):
    print(message, file=sys.stderr, flush=True)


# Results files are named by device: cpu_ops.md on the CPU, gpu_ops.md on CUDA.
FILE_PREFIX = {"cpu": "cpu", "cuda": "gpu"}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[1])
    parser.add_argument("--device", choices=FILE_PREFIX, default="cpu",
                        help="where inputs live and ops run (default cpu); cuda adds the CUDA issue's sizes")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no compile provider at the large sizes")
    parser.add_argument("--out", metavar="DIR", default=os.path.join("benchmarks", "results"), help="results folder")
    parser.add_argument("--ops", default=",".join(CASE_MODULES),
                        help=f"comma-separated subset of {','.join(CASE_MODULES)}")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    args = parser.parse_args(argv)
    args.ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = sorted(set(args.ops) - set(CASE_MODULES))
    if unknown:
        parser.error(f"unknown --ops {', '.join(unknown)}; choose from {', '.join(CASE_MODULES)}")
    check_device(parser, args.device)
    return args


def check_device(parser, device):
    """Stops with a message naming --device when CUDA is asked for but torch cannot use it."""
    if device == "cuda" and not torch.cuda.is_available():
        reason = ("this torch was built without CUDA" if torch.version.cuda is None
                  else "torch has CUDA but sees no GPU (driver, CUDA_VISIBLE_DEVICES?)")
        parser.error(f"--device cuda: torch.cuda.is_available() is False ({reason}); "
                     "run with --device cpu or on a machine with a CUDA GPU")


def with_compile(case, skip_reason):
    """The case's providers plus torch.compile of its eager function, unless skip_reason says why not.
    dynamic=False: each case compiles for its own static shapes, as a fixed-size training step would."""
    providers = dict(case.providers)
    if skip_reason is None and "eager" not in providers:
        skip_reason = "no eager provider at this size to compile (see its note)"
    if skip_reason:
        case.notes.append(f"compile skipped: {skip_reason}")
    else:
        providers["compile"] = torch.compile(case.providers["eager"], dynamic=False)
    return providers


# Providers whose first call is a build, not a measurement: inductor compiles the graph, KeOps compiles its
# formula (and the gradient's) with the system C++ compiler. That call runs outside the timing, its seconds
# go to stderr, and a failure drops the provider with the reason in the case's notes.
BUILT_ON_FIRST_CALL = ("compile", "keops")


def warm_first_calls(steps, case, device):
    for name in BUILT_ON_FIRST_CALL:
        if name not in steps:
            continue
        try:
            seconds = harness.first_call_seconds(steps[name], device)
            log(f"    {name} provider, first call (compilation for this mode): {seconds:.1f} s")
        except Exception as error:  # noqa: BLE001 -- any inductor/dynamo/KeOps failure is a result to record
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            case.notes.append(f"{name} failed: {reason[:300]}")
            log(f"    {name} failed: {reason[:300]}")
            del steps[name]


def measure_case(case, providers, settings, copy_gbs, device):
    rows = []
    for mode in harness.MODES:
        log(f"  {case.name} / {mode}")
        steps = {name: harness.make_step(fn, case, mode) for name, fn in providers.items()}
        warm_first_calls(steps, case, device)
        for name in BUILT_ON_FIRST_CALL:
            if name not in steps:
                providers.pop(name, None)
        timings = harness.time_round_robin(steps, settings["repeats"], settings["warmup"], settings["min_sample_s"],
                                           device)
        peaks = ({name: harness.peak_extra_bytes(step, device) for name, step in steps.items()}
                 if case.measure_memory else {})
        eager = timings.get("eager")  # absent where eager would not fit in memory (mmd at n = 65536 on CUDA)
        for name, timing in timings.items():
            median_s = timing.median_ms / 1e3
            row = {
                "case": case.name, "shape": case.shape, "mode": mode, "provider": name,
                "median_ms": timing.median_ms, "iqr_ms": timing.iqr_ms,
                "repeats": len(timing.samples_ms), "calls_per_sample": timing.inner,
                "speedup_vs_eager": (eager.median_ms / timing.median_ms) if eager else None,
                "speedup_vs_compile": (timings["compile"].median_ms / timing.median_ms) if "compile" in timings else None,
                "bytes": None, "gb_per_s": None, "fraction_of_copy_bw": None,
                "flops": None, "gflop_per_s": None, "peak_extra_mib": None, "note": "",
                "large": case.large,  # picks the speed-up chart's bars; not a report column
            }
            if case.bytes_moved:
                row["bytes"] = case.bytes_moved[mode]
                row["gb_per_s"] = row["bytes"] / median_s / 1e9
                row["fraction_of_copy_bw"] = row["gb_per_s"] / copy_gbs
            if case.flops:
                row["flops"] = case.flops[mode]
                row["gflop_per_s"] = row["flops"] / median_s / 1e9
            if name in peaks:
                row["peak_extra_mib"] = peaks[name] / 2**20
            rows.append(row)
    if case.notes:
        rows.append({"case": case.name, "shape": case.shape, "mode": "", "provider": "", "median_ms": None,
                     "iqr_ms": None, "note": "; ".join(case.notes)})
    return rows


def main(argv=None):
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    device = torch.device(args.device)
    prefix = FILE_PREFIX[device.type]
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    log(f"copy bandwidth ({settings['copy_numel'] * 4 / 2**20:.0f} MiB float32, {device.type}) ...")
    copy_start = harness.copy_bandwidth_gbs(settings["copy_numel"], settings["copy_repeats"], device)
    machine = harness.machine_info(torch.get_num_threads(), device)
    load_start = os.getloadavg()[0]

    torch.manual_seed(0)
    cases = [case for op in args.ops for case in CASE_MODULES[op].cases(device)]
    notes = [
        f"{'--quick' if args.quick else 'full'} run: {settings['repeats']} repeats per provider and mode "
        f"(round-robin), {settings['warmup']} warm-up call(s), each sample at least "
        f"{settings['min_sample_s'] * 1e3:.0f} ms of back-to-back calls",
    ]
    if device.type == "cuda":
        notes.append("timed with CUDA events around each sample's back-to-back calls; the targets below are the "
                     "CPU issue's ratios at its sizes, and the CUDA issue's sizes are the 64M, mmd 4096 and "
                     "mmd 65536 rows")
    if args.quick:
        notes.append("--quick: the compile provider is skipped at the large sizes; run without --quick for it")
    rows = []
    for case in cases:
        log(f"{case.name} ({case.shape})")
        skip = "--quick skips compilation at the large sizes" if args.quick and case.large else None
        rows += measure_case(case, with_compile(case, skip), settings, copy_start, device)

    copy_end = harness.copy_bandwidth_gbs(settings["copy_numel"], settings["copy_repeats"], device)
    machine["copy bandwidth, start / end of run (GB/s, read + written)"] = f"{copy_start:.1f} / {copy_end:.1f}"
    machine["'of copy BW' uses"] = f"the start figure, {copy_start:.1f} GB/s"
    machine["load average at end (1, 5, 15 min)"] = ", ".join(f"{load:.2f}" for load in os.getloadavg())
    notes.append(f"total wall time {time.perf_counter() - started:.0f} s")
    busiest = max(load_start, os.getloadavg()[0])
    if busiest > len(os.sched_getaffinity(0)):
        # With more runnable jobs than cores, a parallel region waits for a descheduled thread (a
        # 16-20 ms stall per region was seen with 2 threads under a load of 7): such numbers are noise.
        notes.append(f"WARNING: 1-minute load average reached {busiest:.1f} on {len(os.sched_getaffinity(0))} "
                     "cores: other jobs shared the machine, so these timings are not representative")

    hardware = machine["gpu"] if device.type == "cuda" else machine["cpu"]
    text = report.markdown(f"vaefast {prefix.upper()} op benchmarks ({hardware})", machine, rows, notes)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{prefix}_ops.md"), "w") as handle:
        handle.write(text)
    report.write_csv(os.path.join(args.out, f"{prefix}_ops.csv"), machine, rows)
    plots.speedups(rows, os.path.join(args.out, f"{prefix}_speedups.png"),
                   f"forward+backward speed-up over eager at the large sizes ({hardware}, {args.threads} threads)")
    print(text)
    log(f"wrote {os.path.join(args.out, prefix + '_ops.md')}, {prefix}_ops.csv and {prefix}_speedups.png")


if __name__ == "__main__":
    main()
