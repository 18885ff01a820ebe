"""Turns measured rows into the markdown report (stdout and cpu_ops.md, or gpu_ops.md with --device cuda)
and the CSV (cpu_ops.csv, gpu_ops.csv), and checks the performance targets."""
import csv

SPEEDUP_TARGET = 1.5  # fused op vs eager, forward+backward
MEMORY_FRACTION_TARGET = 0.10  # "a small fraction of eager's" peak memory, taken as at most 10%
TARGET_CASES = ("reparameterize large", "gaussian_kl large", "gaussian_nll large")
MMD_TARGET_CASE = "mmd imq large"
MMD_SPEEDUP_TARGET = 5.0  # the issue's: at least 5x the cdist-based reference, and faster than KeOps

COLUMNS = (
    ("case", "case"), ("shape", "shape"), ("mode", "mode"), ("provider", "provider"),
    ("median_ms", "median ms"), ("iqr_ms", "IQR ms"), ("speedup_vs_eager", "x eager"),
    ("speedup_vs_compile", "x compile"), ("gb_per_s", "GB/s"), ("fraction_of_copy_bw", "of copy BW"),
    ("gflop_per_s", "GFLOP/s"), ("peak_extra_mib", "peak extra MiB"), ("note", "note"),
)
CSV_ONLY = ("repeats", "calls_per_sample", "bytes", "flops")


def fmt(key, value):
    if value is None or value == "":
        return ""
    if key in ("speedup_vs_eager", "speedup_vs_compile"):
        return f"{value:.2f}x"
    if key == "fraction_of_copy_bw":
        return f"{100 * value:.0f}%"
    if key in ("median_ms", "iqr_ms"):
        return f"{value:.4f}" if value < 1 else f"{value:.2f}"
    if key in ("gb_per_s", "gflop_per_s", "peak_extra_mib"):
        return f"{value:.1f}"
    return str(value)


def find(rows, case, mode, provider):
    for row in rows:
        if row["case"] == case and row["mode"] == mode and row["provider"] == provider and row["median_ms"]:
            return row
    return None


def targets(rows):
    """(target, status) lines; a case that did not run is reported as not measured, never as met."""
    lines = []
    for case in TARGET_CASES:
        row = find(rows, case, "forward+backward", "vaefast")
        goal = f"{case}: vaefast >= {SPEEDUP_TARGET}x eager, forward+backward"
        if row is None or row["speedup_vs_eager"] is None:
            lines.append((goal, "not measured"))
        else:
            met = row["speedup_vs_eager"] >= SPEEDUP_TARGET
            lines.append((goal, f"{'met' if met else 'NOT met'} ({row['speedup_vs_eager']:.2f}x)"))
    fused = find(rows, MMD_TARGET_CASE, "forward+backward", "vaefast")
    eager = find(rows, MMD_TARGET_CASE, "forward+backward", "eager")
    keops = find(rows, MMD_TARGET_CASE, "forward+backward", "keops")
    goal = f"{MMD_TARGET_CASE}: vaefast >= {MMD_SPEEDUP_TARGET}x eager (cdist reference), forward+backward"
    keops_goal = f"{MMD_TARGET_CASE}: vaefast faster than keops, forward+backward"
    memory_goal = (f"{MMD_TARGET_CASE}: vaefast peak extra memory <= {MEMORY_FRACTION_TARGET:.0%} of eager's, "
                   "forward+backward")
    if fused is None or eager is None:
        lines.append((goal, "not measured (vaefast.mmd not available)"))
        lines.append((keops_goal, "not measured (vaefast.mmd not available)"))
        lines.append((memory_goal, "not measured (vaefast.mmd not available)"))
        return lines
    met = fused["speedup_vs_eager"] >= MMD_SPEEDUP_TARGET
    lines.append((goal, f"{'met' if met else 'NOT met'} ({fused['speedup_vs_eager']:.2f}x)"))
    if keops is None:
        lines.append((keops_goal, "not measured (keops did not run; see the notes)"))
    else:
        ratio = keops["median_ms"] / fused["median_ms"]
        lines.append((keops_goal, f"{'met' if ratio > 1 else 'NOT met'} ({ratio:.1f}x: "
                                  f"{fused['median_ms']:.1f} vs {keops['median_ms']:.1f} ms)"))
    if fused["peak_extra_mib"] is None or not eager["peak_extra_mib"]:
        lines.append((memory_goal, "not measured"))
    else:
        fraction = fused["peak_extra_mib"] / eager["peak_extra_mib"]
        met = fraction <= MEMORY_FRACTION_TARGET
        lines.append((memory_goal, f"{'met' if met else 'NOT met'} ({fraction:.1%}: "
                                   f"{fused['peak_extra_mib']:.1f} vs {eager['peak_extra_mib']:.1f} MiB)"))
    return lines


def markdown(title, machine, rows, notes):
    out = [f"# {title}", "", "## Machine", ""]
    out += [f"- {key}: {value}" for key, value in machine.items()]
    if notes:
        out += ["", "## Run notes", ""] + [f"- {note}" for note in notes]
    out += ["", "## Results", "", "| " + " | ".join(header for _, header in COLUMNS) + " |",
            "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        out.append("| " + " | ".join(fmt(key, row.get(key)).replace("|", "/") for key, _ in COLUMNS) + " |")
    out += ["", "## Targets", ""]
    out += [f"- {goal}: **{status}**" for goal, status in targets(rows)]
    return "\n".join(out) + "\n"


def write_csv(path, machine, rows):
    """Machine facts first, as '# key: value' lines (pandas.read_csv(path, comment='#') skips them)."""
    with open(path, "w", newline="") as handle:
        for key, value in machine.items():
            handle.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(handle, fieldnames=[key for key, _ in COLUMNS] + list(CSV_ONLY),
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
