"""python -m benchmarks.run [--device cpu|cuda] [--quick] [--out DIR]
[--ops reparameterize,kl,reparameterize_kl,nll,mmd,loss_head] [--threads N]

Times every selected case with its providers -- "vaefast" (the public fused op), "eager" (the reference
in vaefast.ops.reference, what a user writes), "compile" (torch.compile of that reference, default mode),
for the fused head and the loss head "separate" (vaefast's reparameterize and gaussian_kl, unfused) and,
for MMD, the peers "pythae" and "keops" where they install (benchmarks/peers.py) -- forward, backward
and forward+backward, on the CPU or a CUDA GPU, prints a markdown report to stdout (progress goes to
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

from . import gaussian_kl, gaussian_nll, harness, loss_head, mmd, plots, report, reparameterize, reparameterize_kl

CASE_MODULES = {
    "reparameterize": reparameterize, "kl": gaussian_kl, "reparameterize_kl": reparameterize_kl, "nll": gaussian_nll,
    "mmd": mmd, "loss_head": loss_head,
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


# The report's modes: the two the harness times, and backward, derived from them (derive_backward).
MODES = ("forward", "backward", "forward+backward")


def derive_backward(timings):
    """(provider, "backward") -> (median ms, IQR ms): its forward+backward median minus its forward median,
    both timed in the same round-robin. Why a difference: a backward timed alone needs a fresh graph per
    call, built outside the timing, which a sample of back-to-back calls cannot have; walking one graph again
    and again with retain_graph=True fails for the compile provider (AOTAutograd donates the saved buffers
    to its backward and refuses retain_graph) and never frees the saved tensors as a training backward does.
    The spread is the two IQRs added, the worst case of error propagation (independent spreads would add in
    quadrature), so a backward smaller than its IQR is within the noise of the two rows and says so."""
    derived = {}
    for (name, mode), both in timings.items():
        forward = timings.get((name, "forward"))
        if mode == "forward+backward" and forward is not None:
            derived[(name, "backward")] = (both.median_ms - forward.median_ms, both.iqr_ms + forward.iqr_ms)
    return derived


def ratio(reference_ms, median_ms):
    """reference_ms / median_ms (above 1: this row is faster), or None where the reference is missing or
    either time is not positive (an unresolved backward)."""
    return reference_ms / median_ms if reference_ms and reference_ms > 0 and median_ms > 0 else None


def measure_case(case, providers, settings, copy_gbs, device):
    steps = {}
    for mode in harness.MODES:
        log(f"  {case.name} / {mode}")
        mode_steps = {name: harness.make_step(fn, case, mode) for name, fn in providers.items()}
        warm_first_calls(mode_steps, case, device)
        for name in BUILT_ON_FIRST_CALL:
            if name not in mode_steps:
                providers.pop(name, None)
        steps.update({(name, mode): step for name, step in mode_steps.items()})
    # Both modes in one round-robin: each forward+backward sample has the forward sample of the same repeat
    # beside it, so drift hits the two alike and their difference (the backward rows) stays honest.
    timings = harness.time_round_robin(steps, settings["repeats"], settings["warmup"], settings["min_sample_s"],
                                       device)
    peaks = ({key: harness.peak_extra_bytes(step, device) for key, step in steps.items()}
             if case.measure_memory else {})
    figures = {key: (timing.median_ms, timing.iqr_ms) for key, timing in timings.items()}
    figures.update(derive_backward(timings))
    names = list(dict.fromkeys(name for name, _ in timings))
    rows = []
    for mode in MODES:
        # eager is absent where it would not fit in memory (mmd at n = 65536 on CUDA): no x eager column
        eager_ms, _ = figures.get(("eager", mode), (None, None))
        compile_ms, _ = figures.get(("compile", mode), (None, None))
        for name in names:
            if (name, mode) not in figures:
                continue
            median_ms, iqr_ms = figures[(name, mode)]
            timed = timings.get((name, mode))  # None for a derived backward row
            sampled = timed or timings[(name, "forward+backward")]
            resolved = median_ms > 0
            row = {
                "case": case.name, "shape": case.shape, "mode": mode, "provider": name,
                "median_ms": median_ms, "iqr_ms": iqr_ms,
                "repeats": len(sampled.samples_ms),
                "calls_per_sample": timed.inner if timed else None,
                "speedup_vs_eager": ratio(eager_ms, median_ms), "speedup_vs_compile": ratio(compile_ms, median_ms),
                "bytes": None, "gb_per_s": None, "fraction_of_copy_bw": None,
                "flops": None, "gflop_per_s": None, "peak_extra_mib": None, "note": "",
                "large": case.large,  # picks the speed-up chart's bars; not a report column
            }
            if mode == "backward" and median_ms <= iqr_ms:
                row["note"] = "backward within the spread of the two rows it is derived from: not resolved"
            if case.bytes_moved:
                row["bytes"] = case.bytes_moved[mode]
                if resolved:
                    row["gb_per_s"] = row["bytes"] / (median_ms / 1e3) / 1e9
                    row["fraction_of_copy_bw"] = row["gb_per_s"] / copy_gbs
            if case.flops:
                row["flops"] = case.flops[mode]
                if resolved:
                    row["gflop_per_s"] = row["flops"] / (median_ms / 1e3) / 1e9
            if (name, mode) in peaks:
                row["peak_extra_mib"] = peaks[(name, mode)] / 2**20
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
        "forward and forward+backward are timed in one round-robin; backward = forward+backward - forward "
        "(medians), its IQR the sum of the two IQRs, no peak memory of its own (run.py, derive_backward)",
    ]
    if device.type == "cuda":
        notes.append("timed with CUDA events around each sample's back-to-back calls; the targets below are the "
                     "CPU issue's ratios at its sizes, and the CUDA issue's sizes are the 64M, mmd 4096 and "
                     "mmd 65536 rows")
    if args.quick:
        notes.append("--quick: the compile provider is skipped at the large sizes; run without --quick for it")
    hardware = machine["gpu"] if device.type == "cuda" else machine["cpu"]
    title = f"vaefast {prefix.upper()} op benchmarks ({hardware})"
    os.makedirs(args.out, exist_ok=True)

    def write(rows, notes):
        text = report.markdown(title, machine, rows, notes)
        with open(os.path.join(args.out, f"{prefix}_ops.md"), "w") as handle:
            handle.write(text)
        report.write_csv(os.path.join(args.out, f"{prefix}_ops.csv"), machine, rows)
        return text

    rows = []
    for number, case in enumerate(cases, 1):
        log(f"{case.name} ({case.shape})")
        skip = "--quick skips compilation at the large sizes" if args.quick and case.large else None
        rows += measure_case(case, with_compile(case, skip), settings, copy_start, device)
        # The cases measured so far, on disk: a run stopped from outside (a GPU lent for minutes, the
        # gpu_check budget) keeps them. The complete report below overwrites this one.
        if number < len(cases):
            write(rows, notes + [f"partial: {number} of {len(cases)} cases measured; the run did not finish"])

    copy_end = harness.copy_bandwidth_gbs(settings["copy_numel"], settings["copy_repeats"], device)
    machine["copy bandwidth, start / end of run (GB/s, read + written)"] = f"{copy_start:.1f} / {copy_end:.1f}"
    machine["'of copy BW' uses"] = f"the start figure, {copy_start:.1f} GB/s"
    machine["load average at end (1, 5, 15 min)"] = ", ".join(f"{load:.2f}" for load in os.getloadavg())
    notes.append(f"total wall time {time.perf_counter() - started:.0f} s")
    warning = harness.load_warning(load_start, torch.get_num_threads())
    if warning:
        notes.append(warning)

    text = write(rows, notes)
    plots.speedups(rows, os.path.join(args.out, f"{prefix}_speedups.png"),
                   f"forward+backward speed-up over eager at the large sizes ({hardware}, {args.threads} threads)")
    print(text)
    log(f"wrote {os.path.join(args.out, prefix + '_ops.md')}, {prefix}_ops.csv and {prefix}_speedups.png")


if __name__ == "__main__":
    main()
