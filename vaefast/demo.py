"""`vaefast demo`: the Two-Stage VAE's effect, shown over several seeds in about a minute on 2 CPU cores.

For each seed it trains a Two-Stage VAE (vaefast.train.train_two_stage) into OUT/seed<k>/, then measures on
the training set's codes (repeated `--code-draws` times: the aggregate posterior stage 2 was fitted to) the
squared MMD to N(0, I) of stage 1's z and stage 2's u, each with its standard error over 10 blocks
(models.diagnostics), the same estimator on prior samples (the noise floor), and the FD of 1000 samples of
stage 1 alone and of the two-stage sampler to the test images (features of vaefast's digit classifier,
trained once and cached; --no-features skips it). It prints one row per seed
and the verdict: is stage 2's MMD at most half of stage 1's by more than two standard errors of the
difference over seeds? It writes OUT/demo.json, OUT/samples_side_by_side.png (seed 0: stage 1 alone,
u ~ N(0, I) into the stage-1 decoder, next to the full two-stage sampler, from the same noise seed) and
OUT/singular_values.png (seed 0's z and u against a prior sample).

The default recipe differs from the paper's (README, "Set up and run"): stage 1 uses the optimal gamma of
Rybkin et al. (gamma^2 = the batch MSE, the minimiser of the learned gamma for the current decoder) instead
of a learned one, so that it is in the small-gamma regime after 30 epochs; lr 1e-3 instead of 1e-4;
30 + 60 epochs instead of 400 + 800; the 8x8 digits with an MLP and latent dim 16.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from .cli import positive_float, positive_int

# Block-SE multiples the stage-2 MMD must clear: 0.5 * MMD_1 - MMD_2 > this many standard errors of it.
STANDARD_ERRORS = 2.0


def add_parser(commands):
    demo = commands.add_parser(
        "demo", help="train the Two-Stage VAE over several seeds and show its effect (latent MMD, samples)",
        description="Train a Two-Stage VAE for each of --seeds seeds and show what stage 2 does: the latent MMD "
        "to N(0, I) of stage 1 and of stage 2 with standard errors, a side-by-side PNG of stage-1-alone and "
        "two-stage samples, and the singular values of the codes. Defaults: the one-minute recipe (digits, "
        "optimal gamma, 30 + 60 epochs, lr 1e-3, 3 seeds).")
    demo.add_argument("--data", default="digits", help="'digits' (built in), 'mnist' or a path (as for train)")
    demo.add_argument("--data-dir", help="where 'mnist' lives (default $VAEFAST_DATA_DIR)")
    demo.add_argument("--limit", type=positive_int, help="use only the first N training examples")
    demo.add_argument("--out", required=True, help="output directory (one folder per seed inside)")
    demo.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 (default 3)")
    demo.add_argument("--epochs", type=positive_int, default=30, help="stage-1 epochs (default 30)")
    demo.add_argument("--stage2-epochs", type=positive_int, help="stage-2 epochs (default: 2 x --epochs, as in the paper)")
    demo.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    demo.add_argument("--gamma", default="optimal", help="stage-1 decoder std: optimal (default), learned or a "
                      "number")
    demo.add_argument("--latent-dim", type=positive_int, help="latent dimension (default as for train: 16 for the digits)")
    demo.add_argument("--architecture", choices=["mlp", "infogan", "resnet"], help="networks (default as for train)")
    demo.add_argument("--stage2-width", type=positive_int, help="stage-2 layer width (default as for train)")
    demo.add_argument("--stage2-depth", type=positive_int, default=3, help="stage-2 layers (paper: 3)")
    demo.add_argument("--batch-size", type=positive_int, default=64)
    demo.add_argument("--code-draws", type=positive_int, default=4, help="codes drawn per training example for the MMD "
                      "(default 4: 5,752 codes for the digits, blocks of 575)")
    demo.add_argument("--no-features", action="store_true", help="skip the FD of the samples (no classifier)")
    demo.add_argument("--cache-dir", default="~/.cache/vaefast", help="where the feature classifier is cached")
    demo.add_argument("--threads", type=positive_int, default=1, help="CPU threads (default 1: these MLPs are tiny)")
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo.set_defaults(run=run_demo, kind="two-stage")
    return demo


def run_demo(args):
    from .cli import model_config
    from .data import load_dataset
    from .models import build, code_spectra, diagnostics
    from .plots import plot_side_by_side, plot_singular_values
    from .train import TrainConfig, train_two_stage

    if args.threads:
        torch.set_num_threads(args.threads)
    x, _ = load_dataset(args.data, data_dir=args.data_dir, limit=args.limit)
    x_test, _ = load_dataset(args.data, data_dir=args.data_dir, split="test")
    extractor = None
    if not args.no_features:
        from .metrics import ClassifierExtractor

        extractor = ClassifierExtractor.for_dataset(args.data, data_dir=args.data_dir, cache_dir=args.cache_dir)
    out = Path(args.out)
    rows = []
    for seed in range(args.seeds):
        seed_dir = out / f"seed{seed}"
        torch.manual_seed(seed)  # the initial weights
        model = build("two-stage", model_config(args, tuple(x.shape[1:])))

        def stage(epochs, halving):
            return TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, lr_halve_every=halving,
                               device=args.device, seed=seed, out_dir=str(seed_dir), progress=False)

        train_two_stage(model, x, stage(args.epochs, 150), stage(args.stage2_epochs or 2 * args.epochs, 300))
        model.eval()
        reference = next(model.parameters())
        x_repeated = x.to(reference.device, reference.dtype).repeat(args.code_draws, *([1] * (x.dim() - 1)))
        generator = torch.Generator(reference.device).manual_seed(seed)
        report = diagnostics(model, x_repeated, generator=generator)
        if extractor is not None:
            report.update(sample_distances(model, extractor, x_test, seed))
        rows.append({"seed": seed, **report})
        if seed == 0:
            spectra = code_spectra(model, x_repeated, generator=torch.Generator(reference.device).manual_seed(0))
            plot_singular_values(spectra, out / "singular_values.png",
                                 title="singular values of the training codes / sqrt(n), seed 0")
            side_by_side(model, out / "samples_side_by_side.png", plot_side_by_side)
    summary = summarise(rows)
    print_table(rows, summary)
    (out / "demo.json").write_text(json.dumps({"argv": sys.argv[1:], "seeds": rows, "summary": summary},
                                              indent=2) + "\n")
    print(f"written: {out / 'demo.json'}, {out / 'samples_side_by_side.png'}, {out / 'singular_values.png'}, "
          f"and per seed {out / 'seed0'}/... (checkpoints, metrics.jsonl, sample grids)")
    return 0


def sample_distances(model, extractor, x_test, seed, num_samples=1000):
    """FD between x_test's classifier features and those of num_samples samples of stage 1 alone
    ("fd_stage1") and of the two-stage sampler ("fd_two_stage"), both from noise seed `seed`."""
    from .metrics import frechet_distance

    reference = next(model.parameters())
    real = extractor(x_test)
    distances = {}
    for name, sampler in (("fd_stage1", model.stage1), ("fd_two_stage", model)):
        with torch.no_grad():
            images = sampler.sample(num_samples, generator=torch.Generator(reference.device).manual_seed(seed))
        distances[name] = frechet_distance(extractor(images), real)
    return distances


def side_by_side(model, path, plot):
    """Seed 0's samples, 64 each: stage 1 alone (u ~ N(0, I) straight into the stage-1 decoder) and the
    two-stage sampler, both from noise seed 0, tiled by save_grid and shown next to each other."""
    import matplotlib.image

    from .train import save_grid

    reference = next(model.parameters())
    grids = {}
    for title, sampler in (("stage 1 alone: z ~ N(0, I)", model.stage1), ("two-stage: u ~ N(0, I) -> z -> x", model)):
        with torch.no_grad():
            images = sampler.sample(64, generator=torch.Generator(reference.device).manual_seed(0))
        grid_path = Path(path).with_name(f".{Path(path).stem}-{len(grids)}.png")
        save_grid(images, grid_path)
        grids[title] = matplotlib.image.imread(grid_path)[..., 0]
        grid_path.unlink()
    plot(grids, path)


def summarise(rows):
    """Means over seeds and the verdict on 0.5 * MMD_1 - MMD_2 (mean and its standard error over seeds)."""
    def stats(values):
        values = np.asarray(values, dtype=np.float64)
        se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
        return float(values.mean()), se

    margins = [0.5 * r["latent_mmd_stage1"] - r["latent_mmd_stage2"] for r in rows]
    margin, margin_se = stats(margins)
    mmd1, mmd1_se = stats([r["latent_mmd_stage1"] for r in rows])
    mmd2, mmd2_se = stats([r["latent_mmd_stage2"] for r in rows])
    holds = len(rows) > 1 and margin > STANDARD_ERRORS * margin_se
    distances = {}
    if "fd_two_stage" in rows[0]:
        distances = {"fd_stage1": stats([r["fd_stage1"] for r in rows])[0],
                     "fd_two_stage": stats([r["fd_two_stage"] for r in rows])[0]}
    return {**distances,"latent_mmd_stage1": mmd1, "latent_mmd_stage1_se": mmd1_se, "latent_mmd_stage2": mmd2,
            "latent_mmd_stage2_se": mmd2_se, "ratio": mmd2 / mmd1 if mmd1 else float("nan"),
            "half_margin": margin, "half_margin_se": margin_se,
            "latent_mmd_prior": float(np.mean([r["latent_mmd_prior"] for r in rows])),
            "stage2_at_most_half": bool(holds)}


def print_table(rows, summary):
    print("latent MMD^2 to N(0, I) on the training set's codes (IMQ; +- its standard error over 10 blocks):")
    print(f"  {'seed':>4}  {'gamma':>7}  {'active':>6}  {'stage 1 (z)':>20}  {'stage 2 (u)':>20}  {'ratio':>6}  "
          f"{'gamma_z':>7}  {'prior floor':>20}")
    for r in rows:
        print(f"  {r['seed']:>4}  {r['gamma']:>7.4f}  {r['active_dimensions']:>6}  "
              f"{r['latent_mmd_stage1']:>10.5f} +- {r['latent_mmd_stage1_se']:<7.5f}  "
              f"{r['latent_mmd_stage2']:>10.5f} +- {r['latent_mmd_stage2_se']:<7.5f}  "
              f"{r['latent_mmd_stage2'] / r['latent_mmd_stage1']:>6.3f}  {r['gamma_z']:>7.4f}  "
              f"{r['latent_mmd_prior']:>10.5f} +- {r['latent_mmd_prior_se']:<7.5f}")
    s = summary
    print(f"  mean over {len(rows)} seeds (+- SE over seeds): stage 1 {s['latent_mmd_stage1']:.5f} +- "
          f"{s['latent_mmd_stage1_se']:.5f}, stage 2 {s['latent_mmd_stage2']:.5f} +- {s['latent_mmd_stage2_se']:.5f}, "
          f"ratio {s['ratio']:.3f}")
    if "fd_two_stage" in s:
        print("FD to the test images (classifier features; 1000 samples): stage 1 alone "
              + ", ".join(f"{r['fd_stage1']:.3g}" for r in rows) + f" (mean {s['fd_stage1']:.3g}), two-stage "
              + ", ".join(f"{r['fd_two_stage']:.3g}" for r in rows) + f" (mean {s['fd_two_stage']:.3g})")
    verdict = "yes" if s["stage2_at_most_half"] else "no"
    print(f"stage-2 MMD at most half of stage 1's beyond {STANDARD_ERRORS:g} standard errors: {verdict} "
          f"(0.5 x stage 1 - stage 2 = {s['half_margin']:.5f} +- {s['half_margin_se']:.5f} over seeds)")
