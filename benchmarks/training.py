"""python -m benchmarks.training [--device cpu|cuda] [--data-dir DIR] [--limit 10000] [--out DIR] [--threads N]
                                [--models ...] [--compile]

End-to-end training throughput (images per second) on MNIST (the first 10k training images, batch 64):
vaefast's VAE, WAE-MMD and the Two-Stage VAE's two stages against pythae 0.1.2's VAE and WAE_MMD built
from encoder and decoder modules of identical layer sizes.

Architectures (the same nn.Linear stack on both sides: pythae's encoder and decoder wrap the very module
classes vaefast builds, vaefast.models.MLPEncoder / MLPDecoder / Stage2Encoder / Stage2Decoder):
- VAE, Two-Stage stage 1: 784 -> 512 -> 256 -> 2 x 64 (mu, log-variance); 64 -> 256 -> 512 -> 784, sigmoid.
- WAE-MMD: the same with a deterministic 64-d code; loss = squared error + 10 x MMD^2, 7-scale IMQ against
  a batch of N(0, I) samples (both libraries).
- Two-Stage stage 2: on stage 1's 64-d latents, 3 x 1024 dense layers with the skip into the heads (the
  paper's), a linear output. pythae's TwoStageVAESampler trains a pythae VAE as its second stage; here it
  gets the same skip networks so that only the library code differs.
Loss differences that remain are each library's own: vaefast's VAE has a learned decoder gamma (one
scalar, the Two-Stage VAE's) and uses its fused ops; pythae's VAE uses a fixed-variance MSE.

Two comparisons (benchmarks/README.md has the details):
- Each library's own training loop, with its defaults: vaefast.train.train against pythae's
  TrainingPipeline (BaseTrainer, DataLoader). Timed as the marginal cost of extra epochs (a long run minus a
  short run, in one round-robin), so once-per-run costs (set-up, the final save) do not decide it; this is
  the issue's throughput target.
- The models in an identical minimal loop -- forward on a batch sliced from a tensor, loss.backward(),
  fused Adam(lr 1e-4).step() -- so that only the model and loss code differ.
Both are timed by the harness in round-robin (benchmarks/harness.py: warm-up, repeats, medians, the
providers taking turns).
Writes DIR/cpu_training.md and DIR/cpu_training.csv (gpu_training.* with --device cuda: models and data on
the current GPU, vaefast.train with device="cuda", pythae's trainer with CUDA allowed, CUDA-event timing).
"""
import argparse
import contextlib
import csv
import io
import logging
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

from vaefast.data import load_dataset
from vaefast.models import (MLPDecoder, MLPEncoder, Stage2Decoder, Stage2Encoder, TwoStageConfig, TwoStageVAE,
                            VAE, VAEConfig, WAE, WAEConfig)
from vaefast.train import TrainConfig, train

from . import harness, peers
from .run import FILE_PREFIX, check_device

IMAGE_SHAPE = (1, 28, 28)
LATENT = 64
HIDDEN = (512, 256)
STAGE2_WIDTH, STAGE2_DEPTH = 1024, 3
BATCH = 64
LR = 1e-4
MMD_WEIGHT = 10.0
MODELS = ("VAE", "WAE-MMD", "Two-Stage stage 1", "Two-Stage stage 2")
THROUGHPUT_TARGET = 1.5  # the issue's: vaefast's training at least 1.5x pythae's images/s

try:
    from pythae.models import VAE as PythaeVAE, VAEConfig as PythaeVAEConfig
    from pythae.models import WAE_MMD as PythaeWAE, WAE_MMD_Config as PythaeWAEConfig
    from pythae.models.base.base_utils import ModelOutput as PythaeOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
except Exception:  # noqa: BLE001 -- peers.PYTHAE_ERROR says why
    BaseEncoder = BaseDecoder = nn.Module


def log(message):
    print(message, file=sys.stderr, flush=True)


class PythaeGaussianEncoder(BaseEncoder):
    """pythae's encoder interface around a vaefast encoder module: [B, 2d] -> embedding, log_covariance."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        mu, logvar = self.body(x).chunk(2, dim=1)
        return PythaeOutput(embedding=mu, log_covariance=logvar)


class PythaeDeterministicEncoder(BaseEncoder):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return PythaeOutput(embedding=self.body(x))


class PythaeDecoder(BaseDecoder):
    """pythae's decoder interface around a vaefast decoder module; sigmoid for images, linear for latents."""

    def __init__(self, body, sigmoid):
        super().__init__()
        self.body, self.sigmoid = body, sigmoid

    def forward(self, z):
        raw = self.body(z)
        return PythaeOutput(reconstruction=torch.sigmoid(raw) if self.sigmoid else raw)


def vaefast_models():
    """(the TwoStageVAE, name -> (model, forward(batch) -> loss)). Stage 2 is the TwoStageVAE's own
    forward_stage2; stage 1 stays trainable here (each stage's step is timed on its own)."""
    image_vae = VAEConfig(data_shape=IMAGE_SHAPE, latent_dim=LATENT, architecture="mlp", hidden_dims=HIDDEN)
    vae = VAE(image_vae)
    wae = WAE(WAEConfig(data_shape=IMAGE_SHAPE, latent_dim=LATENT, architecture="mlp", hidden_dims=HIDDEN,
                        mmd_weight=MMD_WEIGHT, kernel="imq"))
    two_stage = TwoStageVAE(TwoStageConfig(stage1=image_vae, stage2_width=STAGE2_WIDTH, stage2_depth=STAGE2_DEPTH))
    return two_stage, {
        "VAE": (vae, lambda batch: vae(batch).loss),
        "WAE-MMD": (wae, lambda batch: wae(batch).loss),
        "Two-Stage stage 1": (two_stage.stage1, lambda batch: two_stage(batch).loss),
        "Two-Stage stage 2": (two_stage.stage2, lambda batch: two_stage.forward_stage2(batch).loss),
    }


def pythae_models():
    """The same four with pythae's models around encoder/decoder modules of identical layer sizes."""
    def image_vae():
        return PythaeVAE(PythaeVAEConfig(input_dim=IMAGE_SHAPE, latent_dim=LATENT, reconstruction_loss="mse"),
                         encoder=PythaeGaussianEncoder(MLPEncoder(IMAGE_SHAPE, 2 * LATENT, HIDDEN)),
                         decoder=PythaeDecoder(MLPDecoder(LATENT, IMAGE_SHAPE, tuple(reversed(HIDDEN))), True))

    vae, stage1 = image_vae(), image_vae()
    wae = PythaeWAE(PythaeWAEConfig(input_dim=IMAGE_SHAPE, latent_dim=LATENT, kernel_choice="imq",
                                    reg_weight=MMD_WEIGHT, kernel_bandwidth=1.0, scales=list(peers.SCALES)),
                    encoder=PythaeDeterministicEncoder(MLPEncoder(IMAGE_SHAPE, LATENT, HIDDEN)),
                    decoder=PythaeDecoder(MLPDecoder(LATENT, IMAGE_SHAPE, tuple(reversed(HIDDEN))), True))
    stage2 = PythaeVAE(PythaeVAEConfig(input_dim=(LATENT,), latent_dim=LATENT, reconstruction_loss="mse"),
                       encoder=PythaeGaussianEncoder(Stage2Encoder(LATENT, 2 * LATENT, STAGE2_WIDTH, STAGE2_DEPTH)),
                       decoder=PythaeDecoder(Stage2Decoder(LATENT, (LATENT,), STAGE2_WIDTH, STAGE2_DEPTH), False))
    return {name: (model, (lambda m: lambda batch: m({"data": batch}).loss)(model))
            for name, model in (("VAE", vae), ("WAE-MMD", wae), ("Two-Stage stage 1", stage1),
                                ("Two-Stage stage 2", stage2))}


def training_step(model, loss_of, data, seed):
    """A no-argument callable: one Adam step of model on the next batch of a fixed random order of data.
    Both libraries get torch's fused Adam here (vaefast's loop uses it), so that the optimizer, the same on
    both sides, is as small a part of the step as it can be and the model and loss code stand out."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR, fused=True)
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed)).to(data.device)
    batches = data.shape[0] // BATCH
    position = [0]
    model.train()

    def step():
        index = order[(position[0] % batches) * BATCH:(position[0] % batches + 1) * BATCH]
        position[0] += 1
        loss = loss_of(data[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def vaefast_loop(name, models, two_stage, x, stage2_data, epochs, out_dir, device, compile=False):
    """A no-argument callable: `epochs` epochs of vaefast.train.train with its defaults (fused Adam,
    finite-loss guard, progress bar, metrics file and a checkpoint at the end), as a user runs it; with
    compile=True, as `vaefast train --compile` runs it (the first, untimed call compiles)."""
    config = TrainConfig(epochs=epochs, batch_size=BATCH, lr=LR, lr_halve_every=None, out_dir=out_dir,
                         compile=compile, device=str(device))
    if name == "Two-Stage stage 1":
        return lambda: train(two_stage, x, config, stage="stage1")
    if name == "Two-Stage stage 2":
        two_stage.freeze_stage1()
        return lambda: train(two_stage, stage2_data, config, stage="stage2")
    return lambda: train(models[name][0], x, config)


def pythae_loop(model, data, epochs, out_dir, device):
    """A no-argument callable: `epochs` epochs of pythae's TrainingPipeline (BaseTrainer) with its defaults
    (DataLoader, Adam, per-epoch bookkeeping, progress bar, the final model saved), as a user runs it."""
    config = BaseTrainerConfig(output_dir=out_dir, num_epochs=epochs, learning_rate=LR,
                               per_device_train_batch_size=BATCH, no_cuda=device.type != "cuda")
    return lambda: TrainingPipeline(training_config=config, model=model)(train_data=data)


@contextlib.contextmanager
def quiet():
    """Both loops draw progress bars and pythae logs every epoch: keep them off the benchmark's output
    (they are still drawn, into a buffer, so their cost is measured)."""
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def markdown(machine, sections, notes, targets, prefix):
    out = [f"# vaefast {prefix.upper()} training throughput (MNIST, first 10k images, batch 64)", "", "## Machine",
           ""]
    out += [f"- {key}: {value}" for key, value in machine.items()]
    out += ["", "## Run notes", ""] + [f"- {note}" for note in notes]
    out += ["", "## Targets", ""] + [f"- {goal}: **{status}**" for goal, status in targets]
    for title, rows in sections:
        out += ["", f"## {title}", "",
                "| model | library | ms per step (median) | IQR ms | images/s | x pythae |", "|---|---|---|---|---|---|"]
        for row in rows:
            cells = [row["model"], row["library"], f"{row['median_ms']:.2f}", f"{row['iqr_ms']:.2f}",
                     f"{row['images_per_s']:.0f}",
                     f"{row['speedup_vs_pythae']:.2f}x" if row["speedup_vs_pythae"] else ""]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


class Marginal:
    """The time of the extra calls' work: long minus short medians; spread: their IQRs added (worst case).
    per_repeat_ms: long minus short within each round-robin repeat (the pairs the paired ratio divides)."""

    def __init__(self, long, short):
        self.median_ms = long.median_ms - short.median_ms
        self.iqr_ms = long.iqr_ms + short.iqr_ms
        self.per_repeat_ms = [a - b for a, b in zip(long.samples_ms, short.samples_ms)]


def paired_ratios(theirs, ours):
    """Per repeat: their marginal time over ours, both from the same round-robin repeat. Another tenant's
    load comes and goes over seconds and slows both libraries' runs of a repeat alike, so a ratio within a
    repeat varies less than the ratio of the two medians, whose samples come from different moments."""
    return sorted(t / o for t, o in zip(theirs.per_repeat_ms, ours.per_repeat_ms) if o > 0)


def rows_of(section, name, timings, steps_per_call):
    """One CSV/markdown row per library from round-robin timings of calls of steps_per_call steps each."""
    rows = []
    for library, timing in timings.items():
        median_ms, iqr_ms = timing.median_ms / steps_per_call, timing.iqr_ms / steps_per_call
        rows.append(dict(section=section, model=name, library=library, median_ms=median_ms, iqr_ms=iqr_ms,
                         images_per_s=BATCH / (median_ms / 1e3), speedup_vs_pythae=None))
    pythae_rows = [row for row in rows if row["library"].startswith("pythae")]
    for row in rows:
        if pythae_rows:
            row["speedup_vs_pythae"] = pythae_rows[0]["median_ms"] / row["median_ms"]
        log(f"  {row['library']}: {row['images_per_s']:.0f} images/s")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n\n")[1])
    parser.add_argument("--device", choices=FILE_PREFIX, default="cpu",
                        help="where the models, data and both loops run (default cpu)")
    parser.add_argument("--data-dir", default=os.environ.get("VAEFAST_DATA_DIR", "/work/shared/data"))
    parser.add_argument("--limit", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=7, help="round-robin repeats of the per-step comparison")
    parser.add_argument("--loop-repeats", type=int, default=3, help="round-robin repeats of the end-to-end loops")
    parser.add_argument("--loop-epochs", type=int, nargs=2, default=(1, 3), metavar=("SHORT", "LONG"),
                        help="epochs of the short and the long run of each library's loop (default 1 3)")
    parser.add_argument("--out", metavar="DIR", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS), type=lambda text: text.split(","),
                        help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    parser.add_argument("--compile", action="store_true",
                        help="add vaefast.train --compile rows (inductor takes ~30 s per model first)")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    device = torch.device(args.device)
    prefix = FILE_PREFIX[device.type]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {','.join(MODELS)}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = harness.machine_info(torch.get_num_threads(), device)
    machine["pythae"] = peers.PYTHAE_VERSION or f"unavailable ({peers.PYTHAE_ERROR})"
    load_start = os.getloadavg()[0]
    notes = [f"library loops: each library's own training loop with its defaults, run for {args.loop_epochs[0]} "
             f"and for {args.loop_epochs[1]} epochs in one round-robin ({args.loop_repeats} repeats, one untimed "
             "call each first); ms per step = (median long run - median short run) / the extra steps, so a "
             "loop's once-per-run costs (set-up, the final checkpoint or model file) are left out and its "
             "per-epoch and per-step costs counted; IQR = the two runs' IQRs added, per step",
             f"identical loop: {args.repeats} round-robin repeats per model, each sample at least 0.5 s of "
             "back-to-back steps (forward + backward + fused Adam on batches sliced from an in-memory tensor, "
             "the same code for both libraries), 5 warm-up steps",
             "images/s = 64 / median seconds per step",
             "targets: judged on the ratio of the two loops' marginal medians (the tables' x pythae); beside it "
             "the paired ratios, one per round-robin repeat (pythae's long-minus-short time over vaefast's from "
             "the same repeat), which cancel load that comes and goes between repeats"]
    sections, targets = {"Library training loops, end to end": [], "Models in an identical loop": []}, []
    try:
        x, _ = load_dataset("mnist", data_dir=args.data_dir, limit=args.limit)
    except (OSError, ValueError) as error:
        notes.append(f"skipped: MNIST not found ({error})")
        x = None
    if x is not None:
        torch.manual_seed(0)
        two_stage, ours = vaefast_models()
        theirs = pythae_models() if peers.PYTHAE_ERROR is None else {}
        if not theirs:
            notes.append(f"pythae unavailable: {peers.PYTHAE_ERROR}; vaefast rows only")
        # Stage 2's data, as train_two_stage makes it: z = mu_z + sigma_z eps from stage 1's encoder (untrained
        # here: the step's cost does not depend on the values).
        mu_z, sigma_z = two_stage.stage2_data(x)
        latents = mu_z + sigma_z * torch.randn_like(mu_z)
        two_stage.to(device)  # vaefast's four models live in it or are the image VAE and WAE below
        for model, _ in [*ours.values(), *theirs.values()]:
            model.to(device)
        with tempfile.TemporaryDirectory() as scratch:
            for name in (name for name in ours if name in args.models):
                data = latents if name == "Two-Stage stage 2" else x
                on_device = data.to(device)
                steps = {"vaefast": training_step(*ours[name], on_device, seed=1)}
                if name in theirs:
                    steps["pythae"] = training_step(*theirs[name], on_device, seed=1)
                log(f"{name}, identical loop: {', '.join(steps)}")
                timings = harness.time_round_robin(steps, repeats=args.repeats, warmup=5, min_sample_s=0.5,
                                                   device=device)
                sections["Models in an identical loop"] += rows_of("identical loop", name, timings, 1)

                # Each library's loop runs for `short` and for `long` epochs in one round-robin; a step costs
                # the difference over the extra steps, so what a loop does once per run (setting up, the final
                # checkpoint or model file) is left out and what it does every epoch or step is counted.
                short, long = args.loop_epochs
                loops = {}
                for epochs in (short, long):
                    loops[f"vaefast.train|{epochs}"] = vaefast_loop(
                        name, ours, two_stage, x, (mu_z, sigma_z), epochs, os.path.join(scratch, "vaefast"), device)
                    if args.compile:
                        loops[f"vaefast.train --compile|{epochs}"] = vaefast_loop(
                            name, ours, two_stage, x, (mu_z, sigma_z), epochs,
                            os.path.join(scratch, "vaefast-compile"), device, compile=True)
                    if name in theirs:
                        loops[f"pythae TrainingPipeline|{epochs}"] = pythae_loop(
                            theirs[name][0], data.numpy(), epochs, os.path.join(scratch, "pythae"), device)
                log(f"{name}, library loops: {', '.join(loops)}")
                with quiet():
                    timings = harness.time_round_robin(loops, repeats=args.loop_repeats, warmup=0, min_sample_s=0,
                                                       device=device)
                marginal = {library: Marginal(timings[f"{library}|{long}"], timings[f"{library}|{short}"])
                            for library in dict.fromkeys(key.split("|")[0] for key in loops)}
                rows = rows_of("library loops", name, marginal, (long - short) * (data.shape[0] // BATCH))
                sections["Library training loops, end to end"] += rows
                for row in rows:
                    if not row["library"].startswith("vaefast"):
                        continue
                    goal = f"{name}: {row['library']} >= {THROUGHPUT_TARGET}x pythae's TrainingPipeline images/s"
                    ratio = row["speedup_vs_pythae"]
                    if ratio is None:
                        targets.append((goal, "not measured (pythae unavailable)"))
                        continue
                    paired = paired_ratios(marginal["pythae TrainingPipeline"], marginal[row["library"]])
                    row["paired_speedup_vs_pythae"] = statistics.median(paired) if paired else None
                    status = f"{'met' if ratio >= THROUGHPUT_TARGET else 'NOT met'} ({ratio:.2f}x"
                    if paired:
                        status += (f"; paired per repeat: median {statistics.median(paired):.2f}x, "
                                   f"range {paired[0]:.2f}-{paired[-1]:.2f}x")
                    targets.append((goal, status + ")"))
    else:
        targets.append(("training throughput vs pythae", "not measured (MNIST absent)"))
    machine["load average at end (1, 5, 15 min)"] = ", ".join(f"{load:.2f}" for load in os.getloadavg())
    notes.append(f"total wall time {time.perf_counter() - started:.0f} s")
    warning = harness.load_warning(load_start, torch.get_num_threads())
    if warning:
        notes.append(warning)
    text = markdown(machine, list(sections.items()), notes, targets, prefix)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{prefix}_training.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(args.out, f"{prefix}_training.csv"), "w", newline="") as handle:
        for key, value in machine.items():
            handle.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(handle, fieldnames=["section", "model", "library", "median_ms", "iqr_ms",
                                                    "images_per_s", "speedup_vs_pythae",
                                                    "paired_speedup_vs_pythae"])
        writer.writeheader()
        for rows in sections.values():
            writer.writerows(rows)
    print(text)


if __name__ == "__main__":
    main()
