"""The paper's MNIST experiment (Dai & Wipf 2019, Table 1 and the latent-MMD table), on vaefast's models.

Seven models with the same networks, latent dim and epochs, over several seeds:
  vae-ce (Bernoulli decoder, cross-entropy), vae-fixed (Gaussian, gamma = 1), vae-learned (learned gamma),
  vae-optimal (gamma^2 = the batch MSE, Rybkin et al.'s closed-form optimum of the learned gamma),
  wae-mmd (WAE-MMD, IMQ kernel, lambda 10), two-stage (stage 2 trained on vae-learned's latents) and
  two-stage-optimal (stage 2 on vae-optimal's latents).
Stage 1 of a Two-Stage VAE *is* the VAE of the same gamma and seed (the paper's recipe trains exactly that
model first), so it is not trained twice: its weights are loaded and only stage 2 is trained. That saves
CPU time and makes the two-stage vs single-stage comparison isolate what stage 2 adds.

Measured on the test split: FD and KID of samples against test images on the penultimate layer of a CNN
classifier that vaefast trains on the training split (vaefast.metrics; not Inception, so the numbers are
not on the paper's FID scale; ratios between models are what the claims are about), reconstruction MSE,
final gamma (for vae-optimal the gamma in effect, sqrt of the MSE at sampled codes), active latent
dimensions (mean encoder variance < 0.5), the latent MMD to N(0, I) of stage 1 (z) and stage 2 (u) with
its standard error over 10 blocks of the test codes, the same estimator on prior samples (the noise floor),
and the singular values of the codes.

Resumable: every run trains in WORK/<model>-s<seed>/ (default WORK = runs/two_stage_mnist_<config>),
checkpointing every epoch, and writes result.json there once measured. Rerunning the same command skips
finished runs and continues an interrupted one from its last checkpoint, ending with the same numbers as an
uninterrupted run.

Writes to --out: results.md (table, claims check for learned and for optimal gamma, settings, machine,
date; "PARTIAL" while runs are missing), results.csv (mean and std per model), runs.csv (one row per model
and seed), samples_<model>.png (seed 0), training.png (gamma and loss over training, seed 0),
singular_values.png (seed 0's codes against the prior's), histories.json.

    python -m experiments.two_stage_mnist --config cpu60k --seeds 3 --out docs/results/two_stage_mnist_cpu60k
"""
import argparse
import csv
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vaefast import metrics
from vaefast.data import load_dataset
from vaefast.models import (TwoStageConfig, TwoStageVAE, VAE, VAEConfig, WAE, WAEConfig, code_spectra,
                            diagnostics)
from vaefast.plots import plot_singular_values
from vaefast.train import TrainConfig, load_checkpoint, save_grid, train

MODELS = ("vae-ce", "vae-fixed", "vae-learned", "vae-optimal", "wae-mmd", "two-stage", "two-stage-optimal")
# A Two-Stage VAE's stage 1 is this single-stage model of the same seed.
STAGE1_OF = {"two-stage": "vae-learned", "two-stage-optimal": "vae-optimal"}
# Training order within a seed: the models the claims compare first, so that a run cut short has them.
RUN_ORDER = ("vae-learned", "two-stage", "vae-optimal", "two-stage-optimal", "vae-ce", "wae-mmd", "vae-fixed")
# The paper's MNIST figures for each claim (Dai & Wipf 2019; REFERENCE.md section 1). Its FIDs are on
# Inception features, ours on vaefast's classifier's: only the ratios compare.
PAPER = {"fd_ratio": "FID 12.6 / 54.5 = 0.231", "fd_others": "FID 12.6 vs 115.0 and 16.6",
         "mmd_ratio": "0.43 / 2.85 = 0.151", "gamma": "gamma -> 0 (theory; no figure)",
         "active": "superfluous ones switched off (theory)"}
# The project's shared data folder beside the repository (../shared/data), tried after --data-dir and
# $VAEFAST_DATA_DIR.
MNIST_DIRS = (os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"),)


@dataclass
class ExperimentConfig:
    architecture: str  # "mlp" or "infogan"
    hidden_dims: tuple  # MLP widths (encoder; decoder mirrored)
    latent_dim: int  # kappa, 64 in the paper
    epochs: int  # stage-1 epochs, the same for every model
    stage2_epochs: int  # the paper trains stage 2 twice as long as stage 1
    stage2_width: int  # stage-2 dense width (paper: 1024)
    train_limit: Optional[int]  # first N training images (None: all)
    eval_examples: int  # test images compared with as many samples for FD/KID and the diagnostics
    lr: float
    lr_halve_every: Optional[int]  # stage 1 / single models; stage 2 halves at 2x this, as in the paper (150 / 300)
    batch_size: int
    classifier_epochs: int
    classifier_limit: Optional[int]  # training images for the feature classifier (None: all)
    kid_subsets: int
    kid_subset_size: int


CONFIGS = {
    # A test-suite budget: 8x8 digits, a few epochs; it checks the plumbing, not the claims.
    "tiny": ExperimentConfig(architecture="mlp", hidden_dims=(64, 32), latent_dim=16, epochs=1, stage2_epochs=2,
                             stage2_width=64, train_limit=320, eval_examples=200, lr=1e-3, lr_halve_every=150,
                             batch_size=64, classifier_epochs=1, classifier_limit=600, kid_subsets=10,
                             kid_subset_size=100),
    # 2 shared CPU cores, under 30 minutes for 5 models x 3 seeds: an MLP pair on a 10k-image MNIST subset,
    # 12 epochs (about 7 s each on one thread: 4 stage-1 models x 3 seeds x 12 epochs = 17 minutes), stage 2
    # twice as long as in the paper. lr 1e-3 (10x the paper's): the budget is about 1/100 of its steps.
    "cpu": ExperimentConfig(architecture="mlp", hidden_dims=(512, 256), latent_dim=64, epochs=12,
                            stage2_epochs=24, stage2_width=256, train_limit=10000, eval_examples=2000, lr=1e-3,
                            lr_halve_every=5, batch_size=64, classifier_epochs=5, classifier_limit=None,
                            kid_subsets=100, kid_subset_size=1000),
    # The cpu config's networks on all 60,000 training images, with enough Adam steps for log gamma to fall
    # 100x: Adam moves it by at most about lr per step, and 6 epochs x 937 steps at a constant 1e-3 allow
    # 5.6 nats (the cpu config's 1,872 steps allowed 1.25 and used 96% of them); a halving schedule inside
    # 6 epochs would cut that below 4.6. Stage 2 twice as long. Budget, measured on one quiet thread (50 ms a
    # stage-1 step, 10 ms a stage-2 step): 5 stage-1 models x 3 seeds x 281 s + 6 stage-2 runs x 112 s +
    # ~15 s of metrics per run = about 87 minutes. All 10,000 test images for the metrics (the paper's 10k).
    "cpu60k": ExperimentConfig(architecture="mlp", hidden_dims=(512, 256), latent_dim=64, epochs=6,
                               stage2_epochs=12, stage2_width=256, train_limit=None, eval_examples=10000,
                               lr=1e-3, lr_halve_every=None, batch_size=64, classifier_epochs=5,
                               classifier_limit=None, kid_subsets=100, kid_subset_size=1000),
    # One GPU: the paper's InfoGAN networks, all of MNIST, the paper's lr and batch; a quarter of its epochs.
    "gpu": ExperimentConfig(architecture="infogan", hidden_dims=(512, 256), latent_dim=64, epochs=100,
                            stage2_epochs=200, stage2_width=1024, train_limit=None, eval_examples=10000, lr=1e-4,
                            lr_halve_every=38, batch_size=64, classifier_epochs=5, classifier_limit=None,
                            kid_subsets=100, kid_subset_size=1000),
}


def load_data(config_name, data_dir):
    """(name, x_train, y_train, x_test, y_test): the 8x8 digits for the tiny config; MNIST (never downloaded)
    for every other, an error naming where it looked when it is not found (a silent fallback once ran the
    60k-image config on the 1,438 digits)."""
    if config_name == "tiny":
        x, y = load_dataset("digits")
        x_test, y_test = load_dataset("digits", split="test")
        return "digits", x, y, x_test, y_test
    directories = [d for d in [data_dir, os.environ.get("VAEFAST_DATA_DIR"), *MNIST_DIRS] if d]
    for directory in directories:
        if Path(directory, "mnist.npz").is_file():
            x, y = load_dataset("mnist", data_dir=directory)
            x_test, y_test = load_dataset("mnist", data_dir=directory, split="test")
            return "mnist", x, y, x_test, y_test
    raise SystemExit(f"the {config_name} config needs MNIST: no mnist.npz in {', '.join(directories)}; "
                     "pass --data-dir DIR or set $VAEFAST_DATA_DIR")


def build_model(name, config, data_shape):
    networks = dict(data_shape=data_shape, latent_dim=config.latent_dim, architecture=config.architecture,
                    hidden_dims=config.hidden_dims)
    if name == "vae-ce":
        return VAE(VAEConfig(**networks, likelihood="bernoulli"))
    if name == "vae-fixed":
        return VAE(VAEConfig(**networks, gamma=1.0))
    if name in ("vae-learned", "vae-optimal"):
        return VAE(VAEConfig(**networks, gamma=name.removeprefix("vae-")))
    if name == "wae-mmd":
        return WAE(WAEConfig(**networks, mmd_weight=10.0))
    if name in STAGE1_OF:
        gamma = STAGE1_OF[name].removeprefix("vae-")
        return TwoStageVAE(TwoStageConfig(stage1=VAEConfig(**networks, gamma=gamma), stage2_width=config.stage2_width))
    raise ValueError(f"unknown model {name!r}")


def run_dir(work, name, seed):
    return Path(work) / f"{name}-s{seed}"


def train_run(name, seed, config, x, work, device):
    """Trains one model in its run directory, resuming from its last checkpoint; returns the model. A
    Two-Stage VAE loads its stage 1 from the finished single-stage run of the same seed."""
    torch.manual_seed(seed)  # initial weights (a resumed run's come from its checkpoint)
    model = build_model(name, config, tuple(x.shape[1:]))
    train_config = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                               lr_halve_every=config.lr_halve_every, device=device, seed=seed, log_every=50,
                               progress=False, out_dir=str(run_dir(work, name, seed)), checkpoint_every=1,
                               resume=True)
    if name not in STAGE1_OF:
        train(model, x, train_config)
        return model
    stage1 = load_checkpoint(run_dir(work, STAGE1_OF[name], seed) / "checkpoint.pt")
    model.stage1.load_state_dict(stage1["model"])
    model.to(device)
    mu_z, sigma_z = model.stage2_data(x, batch_size=256)
    model.freeze_stage1()
    halving = None if config.lr_halve_every is None else 2 * config.lr_halve_every
    train(model, (mu_z, sigma_z), replace(train_config, epochs=config.stage2_epochs, lr_halve_every=halving),
          stage="stage2")
    return model


def history_of(name, seed, work):
    """The run's logged metrics (metrics.jsonl; a two-stage run's are its stage 1's, then its stage 2's).
    A resumed run logs again the steps after its last checkpoint: the last record of each step is kept."""
    def records(directory, stage):
        path = directory / "metrics.jsonl"
        by_step = {}
        for line in path.read_text().splitlines() if path.is_file() else []:
            record = json.loads(line)
            by_step[record["step"]] = dict(record, stage=stage)
        return [by_step[step] for step in sorted(by_step)]

    if name in STAGE1_OF:
        return records(run_dir(work, STAGE1_OF[name], seed), "stage1") + records(run_dir(work, name, seed), "stage2")
    return records(run_dir(work, name, seed), "stage1")


def measure(model, extractor, x_test, config, seed):
    quality = metrics.sample_quality(model, extractor, x_test, seed=seed, kid_subsets=config.kid_subsets,
                                     kid_subset_size=config.kid_subset_size)
    diag = diagnostics(model, x_test, generator=torch.Generator().manual_seed(seed))
    return {"fd": quality["fd"], "kid": quality["kid"], **{column: diag.get(column) for column in DIAGNOSTICS}}


DIAGNOSTICS = ("reconstruction_mse", "gamma", "active_dimensions", "latent_mmd_stage1", "latent_mmd_stage1_se",
               "latent_mmd_stage2", "latent_mmd_stage2_se", "latent_mmd_prior", "latent_mmd_prior_se", "gamma_z")
COLUMNS = ("fd", "kid", "reconstruction_mse", "gamma", "active_dimensions", "latent_mmd_stage1",
           "latent_mmd_stage1_se", "latent_mmd_stage2", "latent_mmd_stage2_se", "gamma_z")
HEADERS = ("FD", "KID", "recon. MSE", "final gamma", "active dims", "latent MMD stage 1", "its SE",
           "latent MMD stage 2", "its SE", "gamma_z")


def summarise(runs):
    """{model: {column: (mean, std, n)}} over seeds, skipping None."""
    summary = {}
    for name in MODELS:
        rows = [r for r in runs if r["model"] == name]
        if not rows:
            continue
        summary[name] = {}
        for column in COLUMNS:
            values = [r[column] for r in rows if r.get(column) is not None]
            if values:
                std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                summary[name][column] = (float(np.mean(values)), std, len(values))
    return summary


def _shown(entry):
    if entry is None:
        return "-"
    mean, std, _ = entry
    return f"{mean:.4g} ± {std:.2g}"


def claims(summary, runs, histories, gamma):
    """The paper's five claims for the learned- or optimal-gamma pair, each (statement, measured, the paper's
    figure, holds).
    The two-stage model is compared with its own stage 1 (the VAE with that gamma), the paper's baseline."""
    single, two_stage = f"vae-{gamma}", "two-stage" if gamma == "learned" else "two-stage-optimal"

    def mean(model, column):
        entry = summary.get(model, {}).get(column)
        return None if entry is None else entry[0]

    result = []
    fd_two, fd_single = mean(two_stage, "fd"), mean(single, "fd")
    fd_wae, fd_ce = mean("wae-mmd", "fd"), mean("vae-ce", "fd")
    if None not in (fd_two, fd_single):
        result.append((f"{two_stage} FD <= 1/2 of {single}'s", f"{fd_two:.4g} / {fd_single:.4g} = "
                       f"{fd_two / fd_single:.3f}", PAPER["fd_ratio"], fd_two <= 0.5 * fd_single))
    if None not in (fd_two, fd_wae, fd_ce):
        result.append((f"{two_stage} FD < WAE-MMD's and the cross-entropy VAE's",
                       f"{fd_two:.4g} vs {fd_wae:.4g} and {fd_ce:.4g}", PAPER["fd_others"],
                       fd_two < min(fd_wae, fd_ce)))
    mmd1, mmd2 = mean(two_stage, "latent_mmd_stage1"), mean(two_stage, "latent_mmd_stage2")
    if None not in (mmd1, mmd2):
        result.append((f"{two_stage}: stage-2 latent MMD <= 1/5 of stage 1's",
                       f"{mmd2:.4g} / {mmd1:.4g} = {mmd2 / mmd1:.3f}", PAPER["mmd_ratio"], mmd2 <= 0.2 * mmd1))
    final = mean(single, "gamma")
    first = [r["gamma"] for r in histories.get(single, []) if r.get("gamma") is not None][:1]
    if final is not None and first:
        start = 1.0 if gamma == "learned" else first[0]  # learned starts at 1; optimal at its first window's mean
        factor = start / final
        where = "from 1 (init)" if gamma == "learned" else f"from {start:.3g} (first 50 steps, seed 0)"
        result.append((f"{single}: gamma falls >= 100x", f"{where} to {final:.3g}: {factor:.1f}x", PAPER["gamma"],
                       factor >= 100))
    active = mean(single, "active_dimensions")
    if active is not None:
        kappa = next(r["latent_dim"] for r in runs)
        result.append((f"{single}: unused latent dimensions switched off (0 < active < kappa)",
                       f"{active:.1f} of {kappa} active", PAPER["active"], 0 < active < kappa))
    return result


def write_tables(out, runs, summary, header_lines, claim_sets):
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["model", "seed", "latent_dim", "seconds", "fd", "kid", *DIAGNOSTICS])
        writer.writeheader()
        writer.writerows(runs)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "seeds", *[f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")]])
        for name, columns in summary.items():
            seeds = max(entry[2] for entry in columns.values())
            row = [name, seeds]
            for column in COLUMNS:
                entry = columns.get(column)
                row += ["", ""] if entry is None else [f"{entry[0]:.6g}", f"{entry[1]:.6g}"]
            writer.writerow(row)
    lines = [*header_lines, "", "| model | " + " | ".join(HEADERS) + " |",
             "|---|" + "---|" * len(HEADERS)]
    for name, columns in summary.items():
        lines.append(f"| {name} | " + " | ".join(_shown(columns.get(c)) for c in COLUMNS) + " |")
    floors = [(r["latent_mmd_prior"], r["latent_mmd_prior_se"]) for r in runs if r.get("latent_mmd_prior") is not None]
    lines += ["", "mean ± std over seeds; '-': not defined for that model (no single gamma, no stage 2). "
              "'its SE': the standard error of one seed's latent MMD (10 blocks of the test codes), mean over "
              "seeds. For vae-optimal, gamma is the one in effect: sqrt of the test MSE at sampled codes."]
    if floors:
        lines += ["", f"Noise floor: the same MMD estimator on as many N(0, I) samples reads "
                  f"{np.mean([f for f, _ in floors]):.2g} (SE {np.mean([s for _, s in floors]):.2g})."]
    for title, claim_rows in claim_sets:
        lines += ["", f"## The paper's claims, measured: {title}", "",
                  "| claim | measured | the paper (MNIST) | holds |", "|---|---|---|---|"]
        lines += [f"| {statement} | {measured} | {paper} | {'yes' if holds else 'no'} |"
                  for statement, measured, paper, holds in claim_rows]
    lines += ["", "Samples (seed 0), in the table's order:", ""]
    lines += [f"![{name}](samples_{name}.png)" for name in summary]
    lines += ["", "Gamma and loss over training (seed 0): ![training](training.png)", "",
              "Singular values of the test codes (seed 0) against a prior sample's: "
              "![singular values](singular_values.png)", ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def plot_histories(out, histories):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (gamma_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in histories.items():
        for stage, style in (("stage1", "-"), ("stage2", "--")):
            records = [r for r in history if r.get("stage") == stage]
            if not records:
                continue
            steps = [r["step"] for r in records]
            label = name if stage == "stage1" else f"{name} stage 2"
            if name not in STAGE1_OF or stage == "stage2":
                loss_axis.plot(steps, [r["loss"] for r in records], style, label=label)
            gammas = [r.get("gamma") for r in records]
            if all(g is not None and g == g for g in gammas) and (name not in STAGE1_OF or stage == "stage2"):
                gamma_axis.plot(steps, gammas, style, label=label + (" (gamma_z)" if stage == "stage2" else ""))
    learned = [r for r in histories.get("vae-learned", []) if r.get("stage") == "stage1"]
    if learned:  # Adam moves log gamma by at most about lr a step: from gamma = 1, exp(-sum of lr) is its floor
        steps, lrs = [r["step"] for r in learned], [r["lr"] for r in learned]
        spent = np.cumsum([lr * (step - previous) for lr, step, previous in zip(lrs, steps, [0, *steps[:-1]])])
        gamma_axis.plot(steps, np.exp(-spent), "k:", label="exp(-sum of lr): Adam's limit")
    gamma_axis.set(yscale="log", xlabel="step", ylabel="gamma (decoder std)", title="gamma over training (seed 0)")
    loss_axis.set(yscale="symlog", xlabel="step", ylabel="loss (nats per example)", title="loss (seed 0)")
    for axis in (gamma_axis, loss_axis):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "training.png", dpi=100)
    plt.close(figure)


def plot_spectra(out, spectra):
    """singular_values.png: seed 0's two-stage codes (stage-1 mu and z, stage-2 u) against a prior sample's
    (one: both models' prior lines are draws of the same distribution)."""
    lines = {f"{name}, {label}": values for name, by_label in spectra.items() for label, values in by_label.items()
             if label != "prior sample"}
    if not lines:
        return
    lines["prior sample"] = next(iter(spectra.values()))["prior sample"]
    plot_singular_values(lines, out / "singular_values.png", title="singular values of test codes / sqrt(n) (seed 0)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (the issue asks for >= 3)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work-dir", help="checkpoints and per-run results (default: runs/two_stage_mnist_<config>;"
                        " rerunning with the same one resumes)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--data-dir", help="a directory with mnist.npz (default: $VAEFAST_DATA_DIR, then "
                        + ", ".join(MNIST_DIRS) + "; the tiny config uses the 8x8 digits)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on the shared 2-core "
                        "machine one epoch of the cpu config took 6.9 s on 1 thread and 53 s on 2)")
    parser.add_argument("--cache-dir", default="~/.cache/vaefast", help="where the feature classifier is cached")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = CONFIGS[args.config]
    names = [m for m in RUN_ORDER if m in args.models.split(",")]
    for two_stage, single in STAGE1_OF.items():
        if two_stage in names and single not in names:
            raise SystemExit(f"{two_stage} reuses {single} as its stage 1: include {single}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir or f"runs/two_stage_mnist_{args.config}")
    started = time.time()

    data_name, x, y, x_test, y_test = load_data(args.config, args.data_dir)
    x_classifier, y_classifier = x[:config.classifier_limit], y[:config.classifier_limit]
    cache_path = Path(args.cache_dir).expanduser() / (
        f"classifier-{data_name}-s0-e{config.classifier_epochs}-n{x_classifier.shape[0]}.pt")
    classifier, classifier_info = metrics.train_classifier(
        x_classifier, y_classifier, seed=0, epochs=config.classifier_epochs, cache_path=cache_path,
        x_test=x_test, y_test=y_test)
    extractor = metrics.ClassifierExtractor(classifier, classifier_info)
    print(f"feature classifier: test accuracy {classifier_info.get('test_accuracy', float('nan')):.4f} "
          f"({time.time() - started:.0f} s)", flush=True)
    x_train = x[:config.train_limit].to(args.device)
    x_eval = x_test[:config.eval_examples].to(args.device)

    runs, histories, spectra = [], {}, {}
    total = args.seeds * len(names)
    for seed in range(args.seeds):
        for name in names:
            result_path = run_dir(work, name, seed) / "result.json"
            if result_path.is_file():  # finished in an earlier invocation
                result = json.loads(result_path.read_text())
                print(f"done before: {name} seed {seed}", flush=True)
            else:
                tick = time.time()
                model = train_run(name, seed, config, x_train, work, args.device).eval()
                measured = measure(model, extractor, x_eval, config, seed)
                result = {"model": name, "seed": seed, "latent_dim": config.latent_dim,
                          "seconds": round(time.time() - tick, 1), **measured}
                if seed == 0:
                    with torch.no_grad():
                        generator = torch.Generator(args.device).manual_seed(0)
                        save_grid(model.sample(64, generator=generator), out / f"samples_{name}.png")
                    if name in STAGE1_OF:
                        result["spectra"] = {label: values.tolist() for label, values in code_spectra(
                            model, x_eval, generator=torch.Generator().manual_seed(seed)).items()}
                result_path.write_text(json.dumps(result) + "\n")
                print(json.dumps({k: v for k, v in result.items() if k != "spectra"}), flush=True)
            if "spectra" in result:
                spectra[name] = result.pop("spectra")
            runs.append(result)
            if seed == 0:
                histories[name] = history_of(name, seed, work)
            # Partial results after every run: a run cut short still leaves a table behind.
            summary = summarise(runs)
            status = ("complete" if len(runs) == total else
                      f"PARTIAL: {len(runs)} of {total} runs finished; rerun the command to continue")
            header = [f"# Two-Stage VAE reproduction on {data_name} ({args.config} config)", "",
                      f"- status: {status}",
                      f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.node()}, "
                      f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads",
                      f"- command: `python -m experiments.two_stage_mnist {' '.join(argv or sys.argv[1:])}`",
                      f"- seeds done: {len({r['seed'] for r in runs})} of {args.seeds}; "
                      f"this invocation's elapsed time {time.time() - started:.0f} s; per-run training + "
                      f"metrics seconds in runs.csv (of the invocation that finished each run)",
                      f"- data: {data_name}, {x_train.shape[0]} training images, {x_eval.shape[0]} test images "
                      f"(and as many samples) for every metric",
                      f"- settings: {json.dumps({k: v for k, v in vars(config).items()})}",
                      f"- features for FD/KID: vaefast CNN classifier (penultimate layer, 128-d), trained on "
                      f"{x_classifier.shape[0]} training images, test accuracy "
                      f"{classifier_info.get('test_accuracy', float('nan')):.4f}; not Inception: not the paper's scale"]
            claim_sets = [(f"{gamma} gamma", claims(summary, runs, histories, gamma))
                          for gamma in ("learned", "optimal")]
            write_tables(out, runs, summary, header, claim_sets)
        (out / "histories.json").write_text(json.dumps(histories) + "\n")
        plot_histories(out, histories)  # once per seed: a figure costs about a second
        plot_spectra(out, spectra)
    print(f"done in {time.time() - started:.0f} s: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
