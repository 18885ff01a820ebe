"""python -m benchmarks.mmd_sweep [--device cpu|cuda] [--sizes 256,1024,4096,16384,65536] [--out DIR] [--threads N]

The MMD sweep: the unbiased 7-scale IMQ MMD^2 of x [n, 64] (requires grad) against y [n, 64] for n from 256
to 65536, every provider forward and forward+backward: median time, achieved GFLOP/s (the nominal count of
benchmarks/mmd.py) and peak extra memory (the profiler probe of harness.py). It shows the memory of the fused
op and KeOps growing as O(n d) while the references' grows as O(n^2).

Providers: vaefast, eager (the cdist reference), pythae and keops (benchmarks/peers.py). torch.compile is
left out here: it compiles anew for every n (10-30 s each on 2 cores), which the sweep's budget cannot
hold; the runner measures it at n = 256 and 2048.

Budgets, so that the sweep ends in under 10 minutes on 2 cores and never exhausts memory:
- memory: a provider is skipped where it would hold more than MEMORY_LIMIT_BYTES (4 GiB): pythae by its
  formula (peers.pythae_bytes), eager by its peak at the previous size scaled by (n / n_prev)^2;
- time: a provider is skipped where one call would take more than TIME_LIMIT_S, predicted from its fastest
  sample at the previous size times (n / n_prev)^2 (every provider is O(n^2 d) in time; the fastest sample,
  not the median, because on a shared machine a stalled sample can be 100x a clean one and would skip a
  provider for no reason of its own).
A skipped provider gets a row whose note says why ("skipped: would need 17.2 GB").
Modes: forward and forward+backward (the runner derives backward-only rows from the two; the sweep does not).
--device cuda runs it on the GPU with the runner's CUDA clock and memory probe (benchmarks/harness.py) and
KeOps' GPU backend. Writes DIR/cpu_mmd_sweep.md, .csv and .png (gpu_mmd_sweep.* with --device cuda).
"""
import argparse
import os
import sys
import time

import torch

from . import harness, mmd, peers, plots
from .run import FILE_PREFIX, check_device

DIM = 64
SIZES = (256, 1024, 4096, 16384, 65536)
MEMORY_LIMIT_BYTES = mmd.MEMORY_LIMIT_BYTES
TIME_LIMIT_S = 60.0
SLOW_CALL_S = 1.0  # above this, 3 repeats and no extra warm-up call (the harness's first timed call warms)
VERY_SLOW_CALL_S = 10.0  # above this, a single timed sample (no spread): n = 65536 takes ~45 s a call
COLUMNS = ("n", "d", "mode", "provider", "median_ms", "iqr_ms", "min_ms", "repeats", "gflop_per_s", "peak_extra_mib",
           "note")


def log(message):
    print(message, file=sys.stderr, flush=True)


def providers(device):
    available = {"vaefast": mmd.fused, "eager": mmd.eager}
    notes = []
    for name, error, fn in (("pythae", peers.PYTHAE_ERROR, peers.pythae_mmd),
                            ("keops", peers.keops_error(device), peers.keops_mmd)):
        if error is None:
            available[name] = fn
        else:
            notes.append(f"{name} skipped at every size: {error}")
    return available, notes


def skip_reason(name, n, mode, previous):
    """Why provider `name` must not run at n (None: it may). previous: its row at the last size it ran."""
    if name == "pythae":
        need = peers.pythae_bytes(n, n, DIM)
        if need > MEMORY_LIMIT_BYTES:
            return f"skipped: would need {need / 1e9:.1f} GB ([n, n, d] per scale, kept for the backward)"
    if previous is None:
        return None
    growth = (n / previous["n"]) ** 2
    if name == "eager" and previous["peak_extra_mib"]:
        need = previous["peak_extra_mib"] * 2**20 * growth
        if need > MEMORY_LIMIT_BYTES:
            return (f"skipped: would need {need / 1e9:.1f} GB (its {previous['peak_extra_mib']:.0f} MiB at "
                    f"n = {previous['n']} times (n / {previous['n']})^2)")
    predicted_s = previous["min_ms"] / 1e3 * growth
    if predicted_s > TIME_LIMIT_S:
        return (f"skipped: about {predicted_s:.0f} s per call predicted ({previous['min_ms'] / 1e3:.2f} s "
                f"at n = {previous['n']} times (n / {previous['n']})^2), over the sweep's {TIME_LIMIT_S:.0f} s "
                "per-call budget")
    return None


def markdown(title, machine, rows, notes):
    out = [f"# {title}", "", "## Machine", ""]
    out += [f"- {key}: {value}" for key, value in machine.items()]
    out += ["", "## Run notes", ""] + [f"- {note}" for note in notes]
    out += ["", "## Results", "", "| n | mode | provider | median ms | IQR ms | min ms | repeats | GFLOP/s | peak extra MiB | note |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row["n"], row["mode"], row["provider"],
                 f"{row['median_ms']:.2f}" if row["median_ms"] else "",
                 f"{row['iqr_ms']:.2f}" if row["median_ms"] else "",
                 f"{row['min_ms']:.2f}" if row["median_ms"] else "", row["repeats"] or "",
                 f"{row['gflop_per_s']:.1f}" if row["gflop_per_s"] else "",
                 f"{row['peak_extra_mib']:.1f}" if row["peak_extra_mib"] is not None else "", row["note"]]
        out.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(out) + "\n"


def write_csv(path, machine, rows):
    import csv
    with open(path, "w", newline="") as handle:
        for key, value in machine.items():
            handle.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mmd_sweep", description=__doc__.split("\n\n")[1])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated n (= m)")
    parser.add_argument("--out", metavar="DIR", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=FILE_PREFIX, default="cpu", help="where the sweep runs (default cpu)")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    device = torch.device(args.device)
    prefix = FILE_PREFIX[device.type]
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = harness.machine_info(torch.get_num_threads(), device)
    load_start = os.getloadavg()[0]
    available, notes = providers(device)
    notes.append("compile left out: torch.compile recompiles for every n (10-30 s each here); the runner "
                 f"({prefix}_ops.md) has it at n = 256 and 2048")
    if "keops" in available:  # KeOps compiles its formulas (forward and gradient) on first use: not timed
        x, y = torch.randn(8, DIM, device=device, requires_grad=True), torch.randn(8, DIM, device=device)
        start = time.perf_counter()
        torch.autograd.grad(peers.keops_mmd(x, y), x)
        log(f"keops formulas compiled or loaded from cache in {time.perf_counter() - start:.1f} s")
    torch.manual_seed(0)
    rows, last = [], {}
    for n in (int(size) for size in args.sizes.split(",")):
        x, y = torch.randn(n, DIM, device=device, requires_grad=True), torch.randn(n, DIM, device=device)
        flops = mmd.nominal_flops(n, n, DIM, len(mmd.SCALES))
        for mode in harness.MODES:
            case = harness.Case(name=f"mmd n={n}", op="mmd", shape="", inputs={"x": x, "y": y}, providers={},
                                grad_inputs=("x",))
            steps, predicted = {}, 0.0
            for name, fn in available.items():
                previous = last.get((name, mode))
                reason = skip_reason(name, n, mode, previous)
                if reason:
                    rows.append(dict(n=n, d=DIM, mode=mode, provider=name, median_ms=None, iqr_ms=None, min_ms=None,
                                     repeats=None, gflop_per_s=None, peak_extra_mib=None, note=reason))
                    log(f"n = {n} {mode} {name}: {reason}")
                    continue
                steps[name] = harness.make_step(fn, case, mode)
                if previous is not None:
                    predicted = max(predicted, previous["min_ms"] / 1e3 * (n / previous["n"]) ** 2)
            if not steps:  # every provider skipped at this size: the skip rows say why
                continue
            slow = predicted > SLOW_CALL_S
            repeats = 1 if predicted > VERY_SLOW_CALL_S else 3 if slow else 7
            log(f"n = {n} {mode}: {', '.join(steps)} ({repeats} repeats)")
            timings = harness.time_round_robin(steps, repeats=repeats, warmup=0 if slow else 1, min_sample_s=0.02,
                                               device=device)
            for name, timing in timings.items():
                peak = harness.peak_extra_bytes(steps[name], device) / 2**20
                row = dict(n=n, d=DIM, mode=mode, provider=name, median_ms=timing.median_ms,
                           iqr_ms=timing.iqr_ms, min_ms=min(timing.samples_ms), repeats=len(timing.samples_ms),
                           gflop_per_s=flops[mode] / (timing.median_ms / 1e3) / 1e9, peak_extra_mib=peak, note="")
                rows.append(row)
                last[(name, mode)] = row
                log(f"  {name}: {timing.median_ms:.1f} ms, {row['gflop_per_s']:.1f} GFLOP/s, {peak:.1f} MiB")
    machine["load average at end (1, 5, 15 min)"] = ", ".join(f"{load:.2f}" for load in os.getloadavg())
    notes.append(f"total wall time {time.perf_counter() - started:.0f} s")
    warning = harness.load_warning(load_start, torch.get_num_threads())
    if warning:
        notes.append(warning)
    os.makedirs(args.out, exist_ok=True)
    hardware = machine["gpu"] if device.type == "cuda" else machine["cpu"]
    text = markdown(f"vaefast {prefix.upper()} MMD sweep (7-scale IMQ, unbiased, d = {DIM}; {hardware})",
                    machine, rows, notes)
    with open(os.path.join(args.out, f"{prefix}_mmd_sweep.md"), "w") as handle:
        handle.write(text)
    write_csv(os.path.join(args.out, f"{prefix}_mmd_sweep.csv"), machine, rows)
    plots.mmd_sweep(rows, os.path.join(args.out, f"{prefix}_mmd_sweep.png"),
                    f"MMD sweep, d = {DIM}, 7 IMQ scales ({hardware}, {args.threads} threads)")
    print(text)
    log(f"wrote {args.out}/{prefix}_mmd_sweep.md, .csv and .png")


if __name__ == "__main__":
    main()
