"""Corrupted MNIST, the tutorial's figure (Wipf's tutorial, Part III): a fraction p of every image's pixels is
replaced by outliers, the models see only the corrupted images, and each one's recovered image is compared
with the clean original.

Corruption: each pixel independently, with probability p in {0.1, 0.2, 0.4}, is replaced by a value from
U(0, 1) ("uniform") or by 1 ("salt"). Methods, all at the same dimension (latent dim = PCA components):
  robust-vae   RobustVAE, MLP, per-pixel log gamma head beside the mean (floor 1e-3)
  scalar-vae   vaefast's VAE with one learned gamma, the same encoder/decoder widths and latent dim
  pca          scikit-learn PCA, reconstruction from the top components
  rpca         convex robust PCA (TensorLy's principal component pursuit), lambda = 1 / sqrt(max(N, 784))
Metrics: mean squared error of the recovered image against the clean one, on all pixels and on the corrupted
ones; outlier-support detection against the known mask (precision, recall, F1 at score > 0.1, and the
threshold-free average precision) from the gamma map (robust VAE; the scalar VAE has no map) and from |E|
(RPCA); wall time of each fit. The score threshold 0.1 is in pixel units for both (gamma: the decoder's
expected deviation; |E|: the deviation RPCA assigns to the sparse part), a tenth of the [0, 1] range.
The corrupted input itself is listed as "corrupted" (error of doing nothing).

Outputs (--out): results.csv (a row per setting and method; finished settings are skipped on a rerun with the
same --out, so an interrupted run resumes), results.md, grid_<corruption>_<p>.png (8 images; rows: original,
corrupted, robust VAE, scalar-gamma VAE, RPCA, PCA, robust VAE's gamma map scaled to [0, 1]).

    python -m experiments.robust_mnist --config cpu --out docs/results/robust_mnist
"""
import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from vaefast.data import load_dataset
from vaefast.models import VAE, RobustVAE, RobustVAEConfig, VAEConfig
from vaefast.train import TrainConfig, save_grid, train

CORRUPTIONS = ("uniform", "salt")
METHODS = ("corrupted", "robust-vae", "scalar-vae", "pca", "rpca")
SCORE_THRESHOLD = 0.1  # an outlier score (gamma or |E|) above a tenth of the pixel range flags the pixel
GRID_IMAGES = 8
# The project's shared data folder beside the repository (../shared/data), tried after --data-dir and
# $VAEFAST_DATA_DIR.
MNIST_DIRS = (os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"),)


@dataclass
class MnistConfig:
    images: int  # training images (a random subset of MNIST's training split); the models are scored on them
    fractions: tuple  # p, the corrupted fraction of pixels
    corruptions: tuple  # "uniform" and/or "salt"
    latent_dim: int  # the VAEs' dim z and PCA's number of components
    hidden_dims: tuple  # MLP widths (encoder; decoders mirrored)
    epochs: int
    batch_size: int
    lr: float
    gamma_init: float  # both VAEs' initial gamma (the learned scalar's and every pixel's)
    rpca_iterations: int


CONFIGS = {
    # The test suite's budget: a few hundred images, one epoch; it checks the plumbing, not the claims.
    "tiny": MnistConfig(images=256, fractions=(0.2,), corruptions=("uniform",), latent_dim=8, hidden_dims=(64,),
                        epochs=1, batch_size=64, lr=1e-3, gamma_init=0.1, rpca_iterations=20),
    # Under 20 minutes of one shared thread (about 30 on the loaded machine): 500 images, 6 settings; each VAE
    # 120 epochs of 7 steps, each RPCA 100 ALM iterations (a full SVD of 500 x 784 each: at 1000 images one
    # RPCA took over 6 minutes on the loaded machine). gamma starts at 0.1 and lr is 2e-3: Adam moves a
    # scalar log gamma (and the log-gamma head's bias) by about lr a step, and a first try from gamma ~ 1 at
    # lr 1e-3 (2000 images, 930 steps) left the robust VAE's gamma above 0.1 on ~90% of the pixels (uniform
    # p = 0.1) and both VAEs at an error of 0.086-0.088 (uniform p = 0.4).
    "cpu": MnistConfig(images=500, fractions=(0.1, 0.2, 0.4), corruptions=CORRUPTIONS, latent_dim=32,
                       hidden_dims=(256, 256), epochs=120, batch_size=64, lr=2e-3, gamma_init=0.1,
                       rpca_iterations=100),
}


def corrupt(x, fraction, corruption, generator):
    """(corrupted, mask): each pixel of x [N, ...] in [0, 1] replaced, with probability `fraction`, by U(0, 1)
    ("uniform") or 1 ("salt"); mask (bool, x's shape) marks the replaced pixels."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1]; got {fraction}")
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}; got {corruption!r}")
    mask = torch.rand(x.shape, generator=generator) < fraction
    values = torch.rand(x.shape, generator=generator) if corruption == "uniform" else torch.ones_like(x)
    return torch.where(mask, values.to(x.dtype), x), mask


def detection(score, mask):
    """Outlier-support detection from a per-pixel score against the true mask: precision, recall, F1 at
    score > SCORE_THRESHOLD and the average precision over all thresholds."""
    from sklearn.metrics import average_precision_score

    flagged, truth = score.ravel() > SCORE_THRESHOLD, mask.ravel()
    hits = float(np.sum(flagged & truth))
    precision = hits / max(float(np.sum(flagged)), 1.0)
    recall = hits / max(float(np.sum(truth)), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": precision, "recall": recall, "f1": f1,
            "average_precision": float(average_precision_score(truth, score.ravel()))}


def recovery_errors(recovered, clean, mask):
    squared = (np.asarray(recovered, dtype=np.float64) - clean) ** 2
    return {"mse_all": float(squared.mean()), "mse_corrupted": float(squared[mask].mean())}


def fit_robust_vae(x, config, seed):
    torch.manual_seed(seed)
    model = RobustVAE(RobustVAEConfig(data_shape=tuple(x.shape[1:]), latent_dim=config.latent_dim,
                                      hidden_dims=config.hidden_dims, gamma_init=config.gamma_init))
    train(model, x, _train_config(config, seed))
    return model.clean(x), model.gamma_map(x)


def fit_scalar_vae(x, config, seed):
    torch.manual_seed(seed)
    model = VAE(VAEConfig(data_shape=tuple(x.shape[1:]), latent_dim=config.latent_dim,
                          hidden_dims=config.hidden_dims, gamma="learned"))
    with torch.no_grad():
        model.log_gamma.fill_(math.log(config.gamma_init))  # the robust VAE's start, for a like-for-like budget
    train(model, x, _train_config(config, seed))
    model.eval()
    with torch.no_grad():
        return model.decode(model.encode(x)[0])


def _train_config(config, seed):
    return TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, lr_halve_every=None,
                       log_every=10**9, progress=False, seed=seed)


def fit_pca(flat, config, seed):
    from sklearn.decomposition import PCA

    pca = PCA(n_components=config.latent_dim, random_state=seed)
    return pca.inverse_transform(pca.fit_transform(flat))


def fit_rpca(flat, config):
    from tensorly.decomposition import robust_pca

    # mu_init 1.25 / ||X||_2 (Lin, Chen & Ma's inexact ALM) instead of TensorLy's 1e-4, from which the penalty
    # (x1.1 per iteration) needs ~100 iterations to reach that scale: the same fixed point in fewer full SVDs.
    low_rank, sparse = robust_pca(flat, reg_E=1 / np.sqrt(max(flat.shape)), n_iter_max=config.rpca_iterations,
                                  tol=1e-7, mu_init=1.25 / np.linalg.norm(flat, 2), verbose=0)
    return np.asarray(low_rank), np.asarray(sparse)


def run_setting(x_clean, corruption, fraction, config, seed, out):
    """All methods on one corrupted copy of x_clean [N, 1, 28, 28]; returns the rows and writes the grid."""
    x, mask = corrupt(x_clean, fraction, corruption, torch.Generator().manual_seed(seed))
    clean, mask_np = x_clean.double().numpy(), mask.numpy()
    flat = x.double().numpy().reshape(x.shape[0], -1)
    rows, recovered = [], {}

    def record(method, estimate, seconds, score=None):
        estimate = np.asarray(estimate, dtype=np.float64).reshape(clean.shape)
        recovered[method] = estimate
        row = {"corruption": corruption, "fraction": fraction, "method": method, "seconds": round(seconds, 1),
               **recovery_errors(estimate, clean, mask_np)}
        row.update(detection(score.reshape(mask_np.shape), mask_np) if score is not None else {})
        rows.append(row)
        print(json.dumps(row), flush=True)

    record("corrupted", flat, 0.0)
    tick = time.perf_counter()
    cleaned, gamma = fit_robust_vae(x, config, seed)
    record("robust-vae", cleaned.double().numpy(), time.perf_counter() - tick, gamma.double().numpy())
    tick = time.perf_counter()
    record("scalar-vae", fit_scalar_vae(x, config, seed).double().numpy(), time.perf_counter() - tick)
    tick = time.perf_counter()
    record("pca", fit_pca(flat, config, seed), time.perf_counter() - tick)
    tick = time.perf_counter()
    low_rank, sparse = fit_rpca(flat, config)
    record("rpca", low_rank, time.perf_counter() - tick, np.abs(sparse))

    shown = slice(0, GRID_IMAGES)
    gamma_shown = gamma[shown].double()
    rows_of_grid = [x_clean[shown].double(), x[shown].double(), *(torch.from_numpy(recovered[m][shown])
                    for m in ("robust-vae", "scalar-vae", "rpca", "pca")), gamma_shown / gamma_shown.max()]
    save_grid(torch.cat(rows_of_grid), out / f"grid_{corruption}_{fraction}.png", columns=GRID_IMAGES)
    return rows


FIELDS = ("corruption", "fraction", "method", "mse_all", "mse_corrupted", "precision", "recall", "f1",
          "average_precision", "seconds")


def load_mnist(data_dir, images, seed):
    """images clean MNIST training images [images, 1, 28, 28] (a seeded random subset), or None if absent."""
    for directory in [data_dir, os.environ.get("VAEFAST_DATA_DIR"), *MNIST_DIRS]:
        if directory and Path(directory, "mnist.npz").is_file():
            x, _ = load_dataset("mnist", data_dir=directory)
            return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:images]]
    return None


def write_markdown(out, rows, header):
    def shown(value):
        return "-" if value in ("", None) else f"{float(value):.4g}"

    lines = [*header, "", "| corruption | p | method | MSE all | MSE corrupted | precision | recall | F1 | "
             "avg. precision | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['corruption']} | {row['fraction']} | {row['method']} | "
                     + " | ".join(shown(row.get(f)) for f in FIELDS[3:]) + " |")
    lines += ["", f"Detection flags score > {SCORE_THRESHOLD} (gamma for robust-vae, |E| for rpca); the scalar VAE "
              "and PCA give no per-pixel score. Seconds are wall time on a loaded shared machine.", ""]
    settings = list(dict.fromkeys((r["corruption"], r["fraction"]) for r in rows))
    lines += ["Rows of each grid: original, corrupted, robust VAE, scalar-gamma VAE, RPCA, PCA, robust VAE's gamma "
              "map (scaled to its maximum).", ""]
    lines += [f"{c}, p = {p}: ![grid](grid_{c}_{p}.png)" for c, p in settings]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--out", required=True)
    parser.add_argument("--data-dir", help="a directory with mnist.npz (default: $VAEFAST_DATA_DIR, then "
                        + ", ".join(MNIST_DIRS) + ")")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (the shared machine: 1)")
    parser.add_argument("--report-only", action="store_true",
                        help="write results.md from the settings already in --out's results.csv; train nothing")
    args = parser.parse_args(argv)
    try:
        import tensorly  # noqa: F401  (checked up front: the RPCA baseline is half the point)
    except ImportError:
        raise SystemExit("robust_mnist needs TensorLy for convex RPCA: pip install 'vaefast[experiments]'")
    from threadpoolctl import threadpool_limits

    config = CONFIGS[args.config]
    x_clean = load_mnist(args.data_dir, config.images, args.seed)
    if x_clean is None:
        raise SystemExit("MNIST not found (mnist.npz in --data-dir, $VAEFAST_DATA_DIR or ../shared/data); "
                         "vaefast never downloads it")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "results.csv"
    rows = []
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    done = {(r["corruption"], float(r["fraction"])) for r in rows}
    started = time.time()
    with threadpool_limits(args.threads):
        for corruption in config.corruptions:
            for fraction in config.fractions:
                if (corruption, fraction) in done or args.report_only:
                    continue
                new = run_setting(x_clean, corruption, fraction, config, args.seed, out)
                new_file = not csv_path.is_file()
                with open(csv_path, "a", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=FIELDS)
                    if new_file:
                        writer.writeheader()
                    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
                                     for r in new)
                rows += [{k: str(v) for k, v in r.items()} for r in new]
    header = [f"# Corrupted MNIST: robust VAE against convex RPCA ({args.config} config)", "",
              f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.node()}, "
              f"{os.cpu_count()} cores shared with other jobs (wall times are inflated), torch {torch.__version__}, "
              f"{args.threads} thread(s)",
              f"- command: `python -m experiments.robust_mnist {' '.join(argv or sys.argv[1:])}`",
              f"- data: {config.images} MNIST training images (seeded random subset), corrupted; every method "
              "sees only the corrupted images and is scored on those same images (transductive, as RPCA is)",
              f"- settings: {json.dumps(asdict(config))}",
              f"- elapsed this invocation: {time.time() - started:.0f} s"]
    write_markdown(out, rows, header)
    print(f"done: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
