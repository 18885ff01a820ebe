"""vaefast.train: one explicit training loop for every vaefast model, and the Two-Stage VAE's two stages.

`train(model, x, config)` reads top to bottom: set up the device and the optimizer (Adam with the official
step schedule: lr halved every `lr_halve_every` epochs), restore a checkpoint when resuming, then for each
epoch draw a permutation, slice batches out of the data set that lives on the device, step, log every
`log_every` steps, checkpoint every `checkpoint_every` epochs and at the end. No callbacks, no DataLoader.

Speed: the whole data set is moved to the device once and batches are index slices (no worker processes,
no host-to-device copy per step); each step's loss terms are kept, detached, where they are and reach the
host only every `log_every` steps; the optimizer step is torch's fused Adam kernel, called without
Adam.step()'s per-call Python once its state exists (_AdamStep). The one per-step sync is the non-finite
guard (`check_finite`, on by default): deciding whether to apply a step needs the loss on the host. On CPU
that costs nothing (there is no queue to drain); on CUDA it is one 4-byte copy per step. A sync-free guard
would need a copy of parameters and Adam's moments to roll back to (three times the model per step) or an
optimizer that masks its own update; neither is worth it for models of this size. `check_finite=False`
removes the sync and the guard.

Reproducibility: the data order comes from a dedicated torch.Generator seeded with `seed`; the model's
noise (reparameterisation, prior samples) from torch's default generator, seeded with `seed + rank`.
Checkpoints hold both, with the model, optimizer and scheduler state, so a resumed run ends with
bit-identical parameters to an uninterrupted one.
"""
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from . import checks, distributed
from .data import check_values
from .ops import reparameterize

CHECKPOINT_FORMAT = 1
METRICS_FILE = "metrics.jsonl"
# What every checkpoint holds (_checkpoint_state writes them; loading and resuming read them).
CHECKPOINT_KEYS = ("kind", "config", "model", "stage", "optimizer", "scheduler", "epoch", "step", "rng")


@dataclass
class TrainConfig:
    epochs: int = 400  # the official stage-1 budget; stage 2 uses 800
    batch_size: int = 64  # per process; the official value
    lr: float = 1e-4  # Adam's initial learning rate
    lr_halve_every: Optional[int] = 150  # epochs between halvings of lr (official: 150 stage 1, 300 stage 2); None = constant
    drop_last: bool = True  # the official code drops the last partial batch of each epoch
    device: str = "cpu"
    amp: bool = False  # bf16 autocast of the forward pass (float32 models; CUDA, or CPUs with bf16 matmuls)
    compile: bool = False  # torch.compile the forward pass
    log_every: int = 50  # steps between host syncs for metrics (and at the end of each epoch)
    checkpoint_every: Optional[int] = None  # epochs between checkpoints; one is always written at the end
    max_bad_steps: int = 20  # consecutive non-finite losses after which training stops
    check_finite: bool = True  # skip non-finite steps (one host sync per step; see the module docstring)
    seed: int = 0
    out_dir: Optional[str] = None  # checkpoints, metrics.jsonl, sample grids; None writes nothing
    resume: bool = False  # continue from out_dir's checkpoint when there is one
    progress: bool = True  # a tqdm bar: epoch, loss, gamma, images/s

    def __post_init__(self):
        self.epochs = checks.integer("epochs", self.epochs)
        self.batch_size = checks.integer("batch_size", self.batch_size)
        self.lr = checks.number("lr", self.lr)
        self.lr_halve_every = checks.optional_integer("lr_halve_every", self.lr_halve_every)
        self.log_every = checks.integer("log_every", self.log_every)
        self.checkpoint_every = checks.optional_integer("checkpoint_every", self.checkpoint_every)
        self.max_bad_steps = checks.integer("max_bad_steps", self.max_bad_steps)
        # torch seeds are 64-bit; seed + rank seeds each process's noise, so the seed stays below 2^63.
        self.seed = checks.integer("seed", self.seed, minimum=0, maximum=2**63 - 1)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda'; got {self.device!r}"
                             ) from error


class TrainingDiverged(RuntimeError):
    """Raised after max_bad_steps consecutive non-finite losses; the model holds the last good step."""


def train(model, x, config, *, labels=None, stage=None):
    """Trains `model` on x [N, *data_shape] (the whole set, any device); returns the logged metrics.

    labels: int64 [N] handed to forward (conditional models). stage: None trains the model as a whole;
    "stage1" trains a TwoStageVAE's stage 1; "stage2" trains its stage 2 on x = (mu_z, sigma_z), the stored
    encoder moments, drawing fresh z = mu_z + sigma_z * eps every epoch (train_two_stage does both).
    Returns one dict per log point (stage, epoch, step, lr, images_per_s, bad_steps, loss, nll, kl, gamma,
    and the model's extra terms); rank 0 also appends them to out_dir/metrics.jsonl, first cut back to
    where this run starts (cut_metrics), so that a resumed run's log has no record twice.
    x must be finite, and in [0, 1] for models whose decoder mean is a sigmoid (ValueError otherwise).
    """
    context = distributed.setup(config.device)
    device = context.device
    out_dir = Path(config.out_dir) if config.out_dir is not None else None
    checkpoint_path = out_dir / f"{stage or 'checkpoint'}.pt" if out_dir is not None else None
    writes = out_dir is not None and context.is_main
    if writes:
        out_dir.mkdir(parents=True, exist_ok=True)

    model.to(device)
    module = _trainable_part(model, stage)
    dtype = next(module.parameters()).dtype
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = _adam(parameters, config.lr, device)
    optimizer_step = _AdamStep(optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=config.lr_halve_every or 2**62, gamma=0.5 if config.lr_halve_every else 1.0
    )
    order_generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed + context.rank)
    start_epoch, step, bad_total = 0, 0, 0
    if config.resume and checkpoint_path is not None and checkpoint_path.exists():
        start_epoch, step, bad_total = _resume(checkpoint_path, model, optimizer, scheduler, order_generator,
                                               context, config, stage)
    if writes:
        cut_metrics(out_dir / METRICS_FILE, stage, step)

    if stage == "stage2":
        mu_z, sigma_z = (t.to(device, dtype) for t in x)
        logvar_z = 2 * torch.log(sigma_z)  # reparameterize takes log-variances: log sigma^2
        num_examples = mu_z.shape[0]
    else:
        check_values(x, "x", unit_interval=_decodes_unit_interval(module))
        x = x.to(device, dtype)
        num_examples = x.shape[0]
    labels = labels.to(device) if labels is not None else None

    forward = module
    if context.world_size > 1:
        forward = nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)
        if hasattr(model, "latent_gather"):
            model.latent_gather = distributed.gather_rows  # a WAE's MMD sees every rank's latents
    if config.compile:
        forward = torch.compile(forward)
    if config.amp and dtype != torch.float32:
        raise ValueError(f"amp=True autocasts float32 models to bf16; this model's parameters are {dtype}")
    # A disabled torch.autocast still costs its enter and exit every step; without amp there is nothing to enter.
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16) if config.amp else contextlib.nullcontext

    per_rank = num_examples // context.world_size
    steps_per_epoch = per_rank // config.batch_size if config.drop_last else math.ceil(per_rank / config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {per_rank} examples each process "
                         "gets; lower it or set drop_last=False")
    buffer_backup = [b.detach().clone() for b in module.buffers()] if config.check_finite else []
    window, window_start = [], time.perf_counter()
    bad_in_a_row = 0
    history = []
    bar = _progress_bar(config, context, (config.epochs - start_epoch) * steps_per_epoch, stage)
    for epoch in range(start_epoch, config.epochs):
        module.train()
        # Stage 2 of the Two-Stage VAE: fresh z ~ N(mu_z, sigma_z^2) every epoch, from the stored moments.
        data = reparameterize(mu_z, logvar_z) if stage == "stage2" else x
        order = torch.randperm(num_examples, generator=order_generator)
        order = order[context.rank::context.world_size][:per_rank].to(device)
        for batch in range(steps_per_epoch):
            index = order[batch * config.batch_size:(batch + 1) * config.batch_size]
            # index_select, not data[index]: the same rows, without advanced indexing's general machinery
            # (~0.1 ms a step on CPU at batch 64, about 1% of a small VAE's step).
            inputs = data.index_select(0, index)  # [batch_size, *data_shape]
            for saved, buffer in zip(buffer_backup, module.buffers()):
                saved.copy_(buffer)  # BatchNorm statistics, restored if this step turns out bad
            with autocast():
                if labels is None:
                    output = forward(inputs)
                else:
                    output = forward(inputs, labels=labels.index_select(0, index))
            step += 1
            if config.check_finite and not distributed.all_finite(output.loss, context):
                # Nothing is applied: no backward, no optimizer step, buffers as before the forward.
                for saved, buffer in zip(buffer_backup, module.buffers()):
                    buffer.copy_(saved)
                bad_in_a_row, bad_total = bad_in_a_row + 1, bad_total + 1
                if bad_in_a_row >= config.max_bad_steps:
                    bar.close()
                    good = checkpoint_path is not None and checkpoint_path.exists()
                    kept = f"; the last good checkpoint is {checkpoint_path}" if good else ""
                    raise TrainingDiverged(
                        f"training stopped: {bad_in_a_row} consecutive steps had a non-finite loss (epoch "
                        f"{epoch + 1}, step {step}; {bad_total} bad steps in all). The model holds the last good "
                        f"step{kept}. Lower the learning rate or check the data for NaN/inf."
                    )
                bar.update(1)
                continue
            bad_in_a_row = 0
            for parameter in parameters:  # optimizer.zero_grad(set_to_none=True) without its bookkeeping
                parameter.grad = None
            output.loss.backward()
            optimizer_step()
            window.append(_terms(output))
            bar.update(1)
            if step % config.log_every == 0 or batch == steps_per_epoch - 1:
                record = _flush(window, time.perf_counter() - window_start, context, config)
                record.update(stage=stage, epoch=epoch + 1, step=step, lr=optimizer.param_groups[0]["lr"],
                              bad_steps=bad_total)
                history.append(record)
                if writes:
                    with open(out_dir / METRICS_FILE, "a") as metrics:
                        metrics.write(json.dumps(record) + "\n")
                bar.set_postfix(epoch=epoch + 1, loss=f"{record.get('loss', float('nan')):.4g}",
                                gamma=f"{record.get('gamma', float('nan')):.3g}",
                                img_s=f"{record['images_per_s']:.0f}", refresh=False)
                window, window_start = [], time.perf_counter()
        scheduler.step()
        last = epoch + 1 == config.epochs
        due = last or (config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0)
        if checkpoint_path is not None and due:
            state = _checkpoint_state(model, optimizer, scheduler, epoch + 1, step, bad_total, order_generator,
                                      context, config, stage)
            if writes:
                save_checkpoint(state, checkpoint_path)
            distributed.barrier(context)
    bar.close()
    if context.world_size > 1 and hasattr(model, "latent_gather"):
        model.latent_gather = None
    return history


def train_two_stage(model, x, stage1_config, stage2_config, *, num_samples=64):
    """The Two-Stage VAE recipe: stage 1 as a VAE on x; then one eval-mode encoder pass storing mu_z and
    sigma_z; then stage 1 frozen and stage 2 trained on fresh z = mu_z + sigma_z * eps every epoch.

    Writes stage1.pt / stage2.pt (each the whole model) and samples_stage1.png / samples_stage2.png (grids
    of num_samples samples; stage 1's decodes u ~ N(0, I) directly) to each stage's out_dir.
    Returns {"stage1": metrics, "stage2": metrics}.
    """
    history1 = train(model, x, stage1_config, stage="stage1")
    _write_samples(model.stage1, stage1_config, "samples_stage1.png", num_samples)
    device = distributed.setup(stage1_config.device).device
    mu_z, sigma_z = model.stage2_data(x.to(device, next(model.parameters()).dtype), batch_size=256)
    model.freeze_stage1()
    history2 = train(model, (mu_z, sigma_z), stage2_config, stage="stage2")
    _write_samples(model, stage2_config, "samples_stage2.png", num_samples)
    return {"stage1": history1, "stage2": history2}


def save_grid(images, path, *, columns=None):
    """Tiles images [N, C, H, W] in [0, 1] (C = 1 or 3) into one PNG, 1-pixel white gaps, grey or RGB;
    images under 32 pixels wide are enlarged by an integer factor."""
    import matplotlib.image

    # matplotlib picks the format from the suffix, and an unknown one ("grid.5") escapes PIL as a KeyError.
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"a sample grid is a PNG file: its path must end in .png; got {str(path)!r}")
    images = images.detach().float().clamp(0, 1).cpu()
    if images.dim() == 2:  # flat samples of a square image: [N, H*W] -> [N, 1, H, W]
        side = math.isqrt(images.shape[1])
        images = images.reshape(-1, 1, side, side)
    # Small images are enlarged (nearest neighbour) to at least 32 pixels: an 8x8 digit is a speck otherwise.
    scale = max(1, math.ceil(32 / images.shape[-1]))
    images = images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    count, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = torch.ones(channels, rows * (height + 1) + 1, columns * (width + 1) + 1)
    for i in range(count):
        top, left = 1 + (i // columns) * (height + 1), 1 + (i % columns) * (width + 1)
        grid[:, top:top + height, left:left + width] = images[i]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if channels == 1:
        matplotlib.image.imsave(path, grid[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        matplotlib.image.imsave(path, grid.permute(1, 2, 0).numpy())


def save_checkpoint(state, path):
    """Writes state with torch.save atomically (see _replace_atomically): a crash at any point leaves the
    previous checkpoint intact."""
    _replace_atomically(path, lambda f: torch.save(state, f))


def cut_metrics(path, stage, step):
    """Cuts a metrics.jsonl back to what a run had logged when `stage` (None for a single model) was at
    `step`: that stage's records past `step` go, and so does a last line that a kill cut short; the other
    stages' records stay.

    A run killed after its last checkpoint has logged records past the checkpoint's step; resuming from
    the checkpoint logs them again. Cut first, the log holds what an uninterrupted run's does (timings
    aside). A fresh run (step 0) drops what an earlier run of the stage left. The shorter log replaces the
    old one atomically, so a kill during the cut leaves the old log whole.
    """
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _logged_by(line, stage, step)]
    if len(kept) < len(lines):
        _replace_atomically(path, lambda f: f.write("".join(kept).encode()))


def _logged_by(line, stage, step):
    """Whether a metrics.jsonl line was logged before `stage` reached `step`: false for a line without its
    newline or that does not parse (a write cut short, always the last one before a kill)."""
    if not line.endswith("\n"):
        return False
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return not isinstance(record, dict) or record.get("stage") != stage or not record.get("step", 0) > step


def _replace_atomically(path, write):
    """Calls write(f) on a temporary file in path's directory (binary), flushes and fsyncs it, then
    os.replace's it over `path`: readers see the old file or the new one, never a part."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every OS)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def load_checkpoint(path):
    """The dict a training run saved (tensors on the CPU). A file that is not one -- truncated, another
    program's, text -- is a ValueError saying so, in one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: training writes <out>/checkpoint.pt "
                                "(stage1.pt and stage2.pt for a Two-Stage VAE)")
    unreadable = f"cannot read checkpoint {path}: truncated or not a vaefast checkpoint"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # Where the bytes break decides what torch raises: RuntimeError (a cut zip archive), EOFError (an empty
    # file), KeyError or UnpicklingError (text, or bytes of another format), ...; each means the same here.
    except Exception as error:
        raise ValueError(unreadable) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(unreadable)
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"{unreadable} (it lacks {', '.join(missing)})")
    if not all(isinstance(checkpoint[key], int) and checkpoint[key] >= 0 for key in ("epoch", "step")):
        raise ValueError(f"{unreadable} (its epoch and step are not counts)")
    return checkpoint


def load_model(path, device="cpu"):
    """(model, checkpoint): the model a checkpoint describes, built with vaefast.models.build, with its
    weights, in eval mode. A config or weights that do not make a vaefast model are a ValueError."""
    from .models import build

    checkpoint = load_checkpoint(path)
    if checkpoint["kind"] is None:
        raise ValueError(f"{path} holds no model kind/config (trained from a model vaefast.models does not "
                         "know); rebuild the model yourself and load checkpoint['model']")
    try:
        model = build(checkpoint["kind"], checkpoint["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} holds no valid {checkpoint['kind']!r} model: {error}") from error
    load_weights(model, checkpoint["model"], path)
    return model.to(device).eval(), checkpoint


def load_weights(model, state, path):
    """model.load_state_dict(state) for the checkpoint at `path`, with a mismatch (keys missing or extra,
    shapes that differ) reported in one line instead of torch's list of every key."""
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no model weights (its 'model' entry is a {type(state).__name__})")
    expected = model.state_dict()
    problems = []
    missing, extra = [k for k in expected if k not in state], [k for k in state if k not in expected]
    if missing:
        problems.append(f"{len(missing)} missing ({missing[0]}, ...)")
    if extra:
        problems.append(f"{len(extra)} unexpected ({extra[0]}, ...)")
    for key, value in expected.items():
        if key in state and (not isinstance(state[key], torch.Tensor) or state[key].shape != value.shape):
            found = list(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            problems.append(f"{key} is {found}, the model's {list(value.shape)}")
            break
    if problems:
        raise ValueError(f"the weights in {path} do not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state)


def _resume(path, model, optimizer, scheduler, order_generator, context, config, stage):
    """Restores model, optimizer, schedule and random streams from the checkpoint at `path`; returns its
    (epoch, step, bad steps). A checkpoint of another model or stage, or past config.epochs, is a ValueError
    saying what differs."""
    checkpoint = load_checkpoint(path)
    kind = _describe(model)[0]
    if (checkpoint["kind"], checkpoint["stage"]) != (kind, stage):
        raise ValueError(f"cannot resume from {path}: it holds a {checkpoint['kind']!r} model at stage "
                         f"{checkpoint['stage']!r}, this run trains a {kind!r} model at stage {stage!r}")
    if checkpoint["epoch"] > config.epochs:
        raise ValueError(f"cannot resume from {path}: it is at epoch {checkpoint['epoch']}, past epochs = "
                         f"{config.epochs}; ask for at least as many epochs, or train afresh elsewhere")
    load_weights(model, checkpoint["model"], path)
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _restore_rng(checkpoint["rng"], order_generator, context)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"cannot resume from {path}: its optimizer, schedule or random state does not fit this "
                         f"run ({error})") from error
    epoch, step = checkpoint["epoch"], checkpoint["step"]
    _note(context, f"resuming {path} at epoch {epoch} (step {step})")
    # Checkpoints written before the count was saved resume it from 0.
    return epoch, step, checkpoint.get("bad_steps", 0)


class _StageTwo(nn.Module):
    """A TwoStageVAE's stage 2 as a module of its own, so that DDP and torch.compile (which wrap a module's
    forward) see forward_stage2 and only stage 2's parameters; stage 1 stays out of train mode."""

    def __init__(self, model):
        super().__init__()
        self.stage2 = model.stage2
        self._forward_stage2 = model.forward_stage2  # a bound method, not a registered submodule

    def forward(self, z):
        return self._forward_stage2(z)


def _adam(params, lr, device):
    """Adam, fused where torch has a fused kernel for the device: one pass per parameter for the whole
    update instead of a dozen elementwise ops. At batch 64 on CPU this takes Adam from about a third of a
    small VAE's step to about a tenth (benchmarks/results/cpu_training.md); the update is the same
    algorithm, rounded differently."""
    fused = device.type in torch.utils._foreach_utils._get_fused_kernels_supported_devices()
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


class _AdamStep:
    """optimizer.step() for a fused torch Adam, with what does not change between steps worked out once.

    Adam.step() spends ~0.2 ms a call on CPU around its kernel (profiler hooks, a state lookup per
    parameter, regrouping the tensors by device and dtype), 2-3% of a small VAE's step at batch 64. Here the
    same kernel, torch._fused_adam_, gets the same tensors and arguments Adam.step() would hand it (the
    optimizer's own state, so checkpoints and the scheduler's lr work as before): the same update, bit for
    bit (tests/test_train.py); the step counts advance with one op instead of torch._foreach_add_'s one per
    parameter. Any step the shortcut does not cover exactly -- the first (Adam creates its state there),
    one where a parameter has no gradient, or an optimizer set up otherwise (several groups, devices or
    dtypes, amsgrad, a tensor lr, a grad scaler, ...) -- is Adam.step() itself.
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.tensors = None  # (params, exp_avgs, exp_avg_sqs, steps, counts) once the shortcut applies

    def __call__(self):
        if self.tensors is not None:
            params, exp_avgs, exp_avg_sqs, steps, counts = self.tensors
            grads = [p.grad for p in params]
            if all(grad is not None for grad in grads):
                group = self.optimizer.param_groups[0]
                beta1, beta2 = group["betas"]
                with torch.no_grad():
                    counts.add_(1)  # every parameter's step count (steps are views of counts)
                    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                                       lr=group["lr"], beta1=beta1, beta2=beta2,
                                       weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
                return
        self.optimizer.step()
        self.tensors = self._shortcut()

    def _shortcut(self):
        """The tensors to hand the kernel, or None where Adam.step() must run as it is."""
        optimizer = self.optimizer
        if (len(optimizer.param_groups) != 1 or getattr(optimizer, "grad_scale", None) is not None
                or getattr(optimizer, "found_inf", None) is not None):
            return None
        group = optimizer.param_groups[0]
        params = group["params"]
        plain = (group.get("fused") and not group["amsgrad"] and not group["maximize"]
                 and not group["capturable"] and not group["differentiable"]
                 and not group.get("decoupled_weight_decay", False)
                 and not any(isinstance(group[key], torch.Tensor) for key in ("lr", "weight_decay", "eps"))
                 and not any(isinstance(beta, torch.Tensor) for beta in group["betas"]))
        if not plain or not params or any(p not in optimizer.state or p.is_complex() for p in params):
            return None
        if len({(p.device, p.dtype) for p in params}) != 1:
            return None
        states = [optimizer.state[p] for p in params]
        # The per-parameter step counts become views of one tensor, so that a step advances them with one
        # add_ (torch._foreach_add_ over 0-dim CPU tensors is a loop of ops, ~40 us for a dozen); Adam.step()
        # and checkpoints see the same values through the views.
        counts = torch.stack([s["step"] for s in states])
        for index, s in enumerate(states):
            s["step"] = counts[index]
        return (params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states], counts)


def _trainable_part(model, stage):
    if stage is None:
        return model
    if stage == "stage1":
        return model.stage1  # TwoStageVAE.forward(x) is stage 1's forward
    if stage == "stage2":
        return _StageTwo(model)
    raise ValueError(f"stage must be None, 'stage1' or 'stage2'; got {stage!r}")


def _terms(output):
    """The step's 0-dim terms, detached and left where they are: no arithmetic and no host sync per step
    (_flush sums a window's worth at once)."""
    terms = {"loss": output.loss, "nll": output.nll, "kl": output.kl, "gamma": output.gamma, **output.extra}
    return {name: value.detach() for name, value in terms.items()
            if isinstance(value, torch.Tensor) and value.dim() == 0}


def _flush(window, seconds, context, config):
    """Window means of the steps' terms (window: one _terms dict per applied step), summed in float64 (the
    one host sync of a log point), and throughput."""
    record = {}
    for name in dict.fromkeys(name for terms in window for name in terms):
        values = [terms[name] for terms in window if name in terms]
        record[name] = torch.stack(values).double().sum().item() / len(values)
    record["images_per_s"] = len(window) * config.batch_size * context.world_size / max(seconds, 1e-9)
    return record


def _checkpoint_state(model, optimizer, scheduler, epoch, step, bad_steps, order_generator, context, config,
                      stage):
    kind, model_config = _describe(model)
    rng = {
        "torch": distributed.gather_objects(torch.get_rng_state(), context),  # one per rank
        "order": order_generator.get_state(),
    }
    if context.device.type == "cuda":
        rng["cuda"] = distributed.gather_objects(torch.cuda.get_rng_state(context.device), context)
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "config": model_config,
        "model": model.state_dict(),
        "stage": stage,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": step,
        "bad_steps": bad_steps,  # the metrics' running count, so that a resumed run logs what it would have
        "rng": rng,
        "train_config": asdict(config),
    }


def _restore_rng(rng, order_generator, context):
    order_generator.set_state(rng["order"])
    if len(rng["torch"]) == context.world_size:
        torch.set_rng_state(rng["torch"][context.rank])
        if "cuda" in rng and context.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"][context.rank], context.device)
    else:
        _note(context, f"resuming with {context.world_size} processes from a run with {len(rng['torch'])}: "
                       "the data order continues exactly, the model's noise streams do not")


def _decodes_unit_interval(module):
    """Whether a vaefast model's decoder mean is a sigmoid, so that its data must lie in [0, 1]: every WAE,
    and a VAE (a TwoStageVAE's stage 1) with output_activation "sigmoid" (which a Bernoulli one must have).
    False for models vaefast does not know."""
    from .models import VAEConfig, WAEConfig

    config = getattr(module, "config", None)
    config = getattr(config, "stage1", config)  # a TwoStageVAE trained as a whole trains its stage 1
    return isinstance(config, WAEConfig) or (isinstance(config, VAEConfig) and config.output_activation == "sigmoid")


def _describe(model):
    """(kind, config dict) for vaefast.models' models; (None, None) for any other module."""
    try:
        from .models import config_of
    except ImportError:
        return None, None
    try:
        return config_of(model)
    except (TypeError, ValueError, KeyError):
        return None, None


def _write_samples(model, config, name, num_samples):
    if config.out_dir is None or not distributed.setup(config.device).is_main:
        return
    model.eval()
    generator = torch.Generator(next(model.parameters()).device).manual_seed(config.seed)
    with torch.no_grad():
        save_grid(model.sample(num_samples, generator=generator), Path(config.out_dir) / name)


def _progress_bar(config, context, total, stage):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=stage or "train", unit="step", dynamic_ncols=True, leave=False,
                disable=not (config.progress and context.is_main), file=sys.stderr)


def _note(context, message):
    if context.is_main:
        print(f"vaefast: {message}", file=sys.stderr)
