"""python -m benchmarks.training [--data-dir DIR] [--limit 10000] [--out DIR] [--threads N]

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

The loop (why this is a fair comparison): both libraries run the same minimal step -- model forward on a
batch sliced from a tensor, loss.backward(), Adam(lr 1e-4).step() -- timed by the runner's harness in
round-robin (benchmarks/harness.py: warm-up, repeats, medians, the providers taking turns), so the only
difference is the model and loss code of each library. pythae's BaseTrainer is not used in the comparison:
it adds a DataLoader with per-sample collation, an evaluation pass and checkpoint writing per epoch, which
would measure its bookkeeping rather than its models. For context, one epoch of vaefast's own loop
(vaefast.train.train, with its per-step finite-loss guard) is timed too, as a separate row.
Writes DIR/cpu_training.md and DIR/cpu_training.csv.
"""
import argparse
import csv
import os
import sys
import time

import torch
from torch import nn

from vaefast.data import load_dataset
from vaefast.models import (MLPDecoder, MLPEncoder, Stage2Decoder, Stage2Encoder, TwoStageConfig, TwoStageVAE,
                            VAE, VAEConfig, WAE, WAEConfig)
from vaefast.train import TrainConfig, train

from . import harness, peers

IMAGE_SHAPE = (1, 28, 28)
LATENT = 64
HIDDEN = (512, 256)
STAGE2_WIDTH, STAGE2_DEPTH = 1024, 3
BATCH = 64
LR = 1e-4
MMD_WEIGHT = 10.0
THROUGHPUT_TARGET = 1.5  # the issue's: vaefast's training at least 1.5x pythae's images/s

try:
    from pythae.models import VAE as PythaeVAE, VAEConfig as PythaeVAEConfig
    from pythae.models import WAE_MMD as PythaeWAE, WAE_MMD_Config as PythaeWAEConfig
    from pythae.models.base.base_utils import ModelOutput as PythaeOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
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
    """A no-argument callable: one Adam step of model on the next batch of a fixed random order of data."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))
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


def vaefast_loop_epoch(x):
    """Images/s of one epoch of vaefast.train.train on a fresh VAE (its loop, finite-loss guard included)."""
    model = VAE(VAEConfig(data_shape=IMAGE_SHAPE, latent_dim=LATENT, architecture="mlp", hidden_dims=HIDDEN))
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=LR, progress=False, log_every=10**9)
    start = time.perf_counter()
    train(model, x, config)
    return (x.shape[0] // BATCH) * BATCH / (time.perf_counter() - start)


def markdown(machine, rows, notes, targets):
    out = ["# vaefast CPU training throughput (MNIST, first 10k images, batch 64)", "", "## Machine", ""]
    out += [f"- {key}: {value}" for key, value in machine.items()]
    out += ["", "## Run notes", ""] + [f"- {note}" for note in notes]
    out += ["", "## Results", "", "| model | library | ms per step (median) | IQR ms | images/s | x pythae | note |",
            "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row["model"], row["library"], f"{row['median_ms']:.2f}" if row["median_ms"] else "",
                 f"{row['iqr_ms']:.2f}" if row["iqr_ms"] else "",
                 f"{row['images_per_s']:.0f}" if row["images_per_s"] else "",
                 f"{row['speedup_vs_pythae']:.2f}x" if row["speedup_vs_pythae"] else "", row["note"]]
        out.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    out += ["", "## Targets", ""] + [f"- {goal}: **{status}**" for goal, status in targets]
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n\n")[1])
    parser.add_argument("--data-dir", default=os.environ.get("VAEFAST_DATA_DIR", "/work/shared/data"))
    parser.add_argument("--limit", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", metavar="DIR", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = harness.machine_info(torch.get_num_threads())
    machine["pythae"] = peers.PYTHAE_VERSION or f"unavailable ({peers.PYTHAE_ERROR})"
    load_start = os.getloadavg()[0]
    notes = [f"{args.repeats} round-robin repeats per model, each sample at least 0.5 s of back-to-back training "
             "steps, 5 warm-up steps; images/s = 64 / median seconds per step",
             "loop: forward + backward + Adam step on batches sliced from an in-memory tensor, identical for "
             "both libraries (see benchmarks/training.py for why not pythae's BaseTrainer)"]
    rows, targets = [], []
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
        for name in ours:
            data = latents if name == "Two-Stage stage 2" else x
            steps = {"vaefast": training_step(*ours[name], data, seed=1)}
            if name in theirs:
                steps["pythae"] = training_step(*theirs[name], data, seed=1)
            log(f"{name}: {', '.join(steps)}")
            timings = harness.time_round_robin(steps, repeats=args.repeats, warmup=5, min_sample_s=0.5)
            for library, timing in timings.items():
                row = dict(model=name, library=library, median_ms=timing.median_ms, iqr_ms=timing.iqr_ms,
                           images_per_s=BATCH / (timing.median_ms / 1e3), speedup_vs_pythae=None, note="")
                if "pythae" in timings:
                    row["speedup_vs_pythae"] = timings["pythae"].median_ms / timing.median_ms
                rows.append(row)
                log(f"  {library}: {row['images_per_s']:.0f} images/s")
            goal = f"{name}: vaefast >= {THROUGHPUT_TARGET}x pythae's images/s"
            if "pythae" in timings:
                ratio = timings["pythae"].median_ms / timings["vaefast"].median_ms
                targets.append((goal, f"{'met' if ratio >= THROUGHPUT_TARGET else 'NOT met'} ({ratio:.2f}x)"))
            else:
                targets.append((goal, "not measured (pythae unavailable)"))
        images_per_s = vaefast_loop_epoch(x)
        rows.append(dict(model="VAE", library="vaefast.train.train (1 epoch)", median_ms=None, iqr_ms=None,
                         images_per_s=images_per_s, speedup_vs_pythae=None,
                         note="vaefast's own loop, one epoch, wall time: context, not round-robin"))
    else:
        targets.append(("training throughput vs pythae", "not measured (MNIST absent)"))
    machine["load average at end (1, 5, 15 min)"] = ", ".join(f"{load:.2f}" for load in os.getloadavg())
    notes.append(f"total wall time {time.perf_counter() - started:.0f} s")
    busiest = max(load_start, os.getloadavg()[0])
    if busiest > len(os.sched_getaffinity(0)):
        notes.append(f"WARNING: 1-minute load average reached {busiest:.1f} on {len(os.sched_getaffinity(0))} "
                     "cores: other jobs shared the machine, so these timings are not representative")
    text = markdown(machine, rows, notes, targets)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cpu_training.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(args.out, "cpu_training.csv"), "w", newline="") as handle:
        for key, value in machine.items():
            handle.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(handle, fieldnames=["model", "library", "median_ms", "iqr_ms", "images_per_s",
                                                    "speedup_vs_pythae", "note"])
        writer.writeheader()
        writer.writerows(rows)
    print(text)


if __name__ == "__main__":
    main()
