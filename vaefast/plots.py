"""Figures the CLI and the experiment write: the singular values of latent codes against the prior's, and two
sample grids side by side. matplotlib is imported inside each function (Agg backend: no display needed)."""
from pathlib import Path

import torch


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_singular_values(spectra: dict, path, *, title: str = "singular values of the latent codes") -> None:
    """spectra: {label: singular values [d], descending} (models.diagnostics.singular_values) -> a PNG with
    one line per label against the index. A prior sample's line is near 1 everywhere; a code set on a
    low-dimensional manifold has a few large values and the rest near 0."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, values in spectra.items():
        values = torch.as_tensor(values, dtype=torch.float64)
        style = "k--" if "prior" in label else "-"
        axis.plot(range(1, len(values) + 1), values.numpy(), style, label=label)
    axis.axhline(1.0, color="grey", linewidth=0.5)
    axis.set(yscale="log", xlabel="index (descending)", ylabel="singular value of codes / sqrt(n)", title=title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_side_by_side(grids: dict, path) -> None:
    """grids: {title: image [H, W] or [H, W, 3] in [0, 1]} (e.g. read back from save_grid's PNGs) -> one PNG
    with the grids next to each other, each under its title."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.6))
    for axis, (title, image) in zip(axes if len(grids) > 1 else [axes], grids.items()):
        axis.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
