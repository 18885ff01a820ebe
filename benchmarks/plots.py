"""PNG figures of the benchmark results (matplotlib, Agg backend: no display needed).

- mmd_sweep(rows, path): the MMD sweep, log-log, time per call (left) and peak extra memory (right) against
  n, one line per provider; a provider's line stops where it was skipped (memory or time budget).
- speedups(rows, path): forward+backward speed-up over eager of every provider at the large sizes (the
  cases marked large: on CUDA the CUDA issue's sizes too), one group of bars per case, from the runner's
  rows; no bar where a case has no eager row to compare with.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- the backend must be chosen first

PROVIDER_STYLE = {
    "vaefast": dict(color="tab:blue", marker="o"),
    "eager": dict(color="tab:gray", marker="s"),
    "compile": dict(color="tab:green", marker="^"),
    "pythae": dict(color="tab:red", marker="v"),
    "keops": dict(color="tab:purple", marker="D"),
}


def mmd_sweep(rows, path, title):
    measured = [row for row in rows if row.get("median_ms")]
    modes = sorted({row["mode"] for row in measured}, key=["forward", "forward+backward"].index)
    figure, axes = plt.subplots(len(modes), 2, figsize=(11, 4.2 * len(modes)), squeeze=False)
    for line, mode in enumerate(modes):
        for provider, style in PROVIDER_STYLE.items():
            points = sorted((row["n"], row["median_ms"], row["peak_extra_mib"]) for row in measured
                            if row["mode"] == mode and row["provider"] == provider)
            if not points:
                continue
            sizes = [p[0] for p in points]
            axes[line][0].plot(sizes, [p[1] for p in points], label=provider, **style)
            memory = [(p[0], p[2]) for p in points if p[2]]
            if memory:
                axes[line][1].plot([m[0] for m in memory], [m[1] for m in memory], label=provider, **style)
        axes[line][0].set_ylabel(f"{mode}: median ms per call")
        axes[line][1].set_ylabel(f"{mode}: peak extra MiB")
        for axis in axes[line]:
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("n = m (d = 64, 7 IMQ scales)")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def speedups(rows, path, title):
    large = [row for row in rows if row.get("median_ms") and row["mode"] == "forward+backward" and row["large"]]
    cases = list(dict.fromkeys(row["case"] for row in large))
    providers = [p for p in PROVIDER_STYLE if any(row["provider"] == p for row in large)]
    width = 0.8 / max(1, len(providers))
    figure, axis = plt.subplots(figsize=(10, 4.5))
    for index, provider in enumerate(providers):
        values = []
        for case in cases:
            match = [row for row in large if row["case"] == case and row["provider"] == provider]
            values.append(float(match[0]["speedup_vs_eager"]) if match and match[0]["speedup_vs_eager"] else 0.0)
        positions = [c + (index - (len(providers) - 1) / 2) * width for c in range(len(cases))]
        bars = axis.bar(positions, values, width, label=provider, color=PROVIDER_STYLE[provider]["color"])
        axis.bar_label(bars, labels=[f"{v:.1f}x" if v else "" for v in values], fontsize=7)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xticks(range(len(cases)), cases)
    axis.set_yscale("log")
    axis.set_ylabel("speed-up over eager (forward+backward)")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
