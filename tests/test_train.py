"""vaefast.train: fused ops vs the reference backend step by step, checkpoint/resume bit-equality, atomic
checkpoints, the non-finite guard, DDP with gloo, and the Two-Stage VAE end to end at a tiny budget."""
import json
import math
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import torch
from torch import nn

import vaefast
from vaefast import distributed
from vaefast.data import load_dataset
from vaefast.models import WAE, TwoStageConfig, TwoStageVAE, VAE, VAEConfig, WAEConfig, diagnostics
from vaefast.train import TrainConfig, TrainingDiverged, load_checkpoint, save_checkpoint, train, train_two_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: on 2 shared cores, OpenMP's second thread makes a step ~5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Output:  # the fields of vaefast.models.ModelOutput that the loop reads
    loss: torch.Tensor
    nll: torch.Tensor
    kl: Optional[torch.Tensor]
    gamma: Optional[torch.Tensor]
    extra: dict = field(default_factory=dict)


class TinyVAE(nn.Module):
    """A stand-in following the models' interface: linear encoder/decoder, learned gamma, fused ops.
    `nan_from` / `nan_at`: steps (1-based forward calls) whose loss is made NaN, to test the guard."""

    def __init__(self, dim=16, latent=3, nan_at=(), nan_from=None):
        super().__init__()
        self.encoder = nn.Linear(dim, 2 * latent)
        self.decoder = nn.Linear(latent, dim)
        self.log_gamma = nn.Parameter(torch.zeros(()))
        self.nan_at, self.nan_from, self.calls = set(nan_at), nan_from, 0

    def forward(self, x, labels=None):
        self.calls += 1
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        z = vaefast.reparameterize(mu, logvar)
        x_hat = torch.sigmoid(self.decoder(z)).view_as(x)
        nll = vaefast.gaussian_nll(x, x_hat, self.log_gamma)
        kl = vaefast.gaussian_kl(mu, logvar)
        loss = nll + kl
        if self.calls in self.nan_at or (self.nan_from is not None and self.calls >= self.nan_from):
            loss = loss * float("nan")
        return Output(loss, nll, kl, self.log_gamma.detach().exp())


def tiny_data(n=96, dim=16, seed=0):
    return torch.rand(n, dim, generator=torch.Generator().manual_seed(seed))


def config(tmp_path=None, **overrides):
    settings = dict(epochs=2, batch_size=16, lr=1e-2, lr_halve_every=1, log_every=1, progress=False,
                    out_dir=None if tmp_path is None else str(tmp_path))
    settings.update(overrides)
    return TrainConfig(**settings)


def parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_parameters(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_is_bit_identical(tmp_path):
    torch.manual_seed(1)
    straight = TinyVAE()
    torch.manual_seed(1)
    interrupted = TinyVAE()
    x = tiny_data()
    train(straight, x, config(tmp_path / "straight", epochs=2))
    train(interrupted, x, config(tmp_path / "split", epochs=1))
    torch.manual_seed(12345)  # resuming must not depend on the caller's RNG or the fresh model's weights
    resumed = TinyVAE()
    history = train(resumed, x, config(tmp_path / "split", epochs=2, resume=True))
    assert history[0]["epoch"] == 2
    assert_same_parameters(parameters(straight), parameters(resumed))
    checkpoint = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 12


def test_checkpoint_every_and_metrics(tmp_path):
    train(TinyVAE(), tiny_data(), config(tmp_path, epochs=3, checkpoint_every=2, log_every=4))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 6, 8, 12, 16, 18]  # every 4th step (counted across epochs) and at each epoch end
    assert {"loss", "nll", "kl", "gamma", "lr", "images_per_s", "bad_steps"} <= records[0].keys()
    assert [r["lr"] for r in records[::2]] == [1e-2, 5e-3, 2.5e-3]  # halved every epoch
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"format": 1, "epoch": 1}, path)
    before = path.read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": 1, "epoch": 2}, path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # the temporary file is gone


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")


def test_isolated_bad_steps_are_skipped_and_counted():
    model = TinyVAE(nan_at=(2, 5))
    history = train(model, tiny_data(), config(epochs=2, max_bad_steps=2))
    assert history[-1]["bad_steps"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(r["loss"] == r["loss"] for r in history)  # bad steps never enter the logged means


def test_consecutive_bad_steps_stop_training_and_leave_the_model_untouched(tmp_path):
    model = TinyVAE(nan_from=7)  # epoch 1 is steps 1-6, every step after it is bad
    good_checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingDiverged, match="3 consecutive steps had a non-finite loss") as error:
        train(model, tiny_data(), config(tmp_path, epochs=3, checkpoint_every=1, max_bad_steps=3))
    assert str(good_checkpoint) in str(error.value)
    checkpoint = load_checkpoint(good_checkpoint)
    assert checkpoint["epoch"] == 1
    # No bad step touched the parameters: they are still those of the end of epoch 1.
    assert_same_parameters(parameters(model), checkpoint["model"])
    # Adam's state after epoch 1's 6 steps, no more.
    assert all(int(s["step"]) == 6 for s in checkpoint["optimizer"]["state"].values())


class TinyWAE(nn.Module):
    """A stand-in WAE that applies the training loop's latent_gather hook before the MMD, as WAE must."""

    def __init__(self, dim=16, latent=3):
        super().__init__()
        self.encoder = nn.Linear(dim, latent)
        self.decoder = nn.Linear(latent, dim)
        self.latent_gather = None  # set by the training loop under DDP, as on vaefast.models.WAE

    def forward(self, x, labels=None):
        z = self.encoder(x)
        squared_error = (x - self.decoder(z)).pow(2).sum(dim=1).mean()
        gather = self.latent_gather
        mmd = vaefast.mmd_prior(gather(z) if gather is not None else z, kernel="rbf")  # rbf: no prior samples
        return Output(squared_error + 10 * mmd, squared_error, None, None, {"mmd": mmd})


def _ddp_worker(rank, world_size, port, out_dir):
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # different initial weights: DDP must broadcast rank 0's
    model = TinyVAE()
    train(model, tiny_data(), config(out_dir, epochs=1, batch_size=8))
    torch.save(parameters(model), Path(out_dir) / f"rank{rank}.pt")

    # The gathered MMD is the global one: 2 ranks x 8 rows give the gradient of one process on all 16.
    torch.manual_seed(0)
    reference = TinyWAE().double()
    distributed_model = TinyWAE().double()
    distributed_model.load_state_dict(reference.state_dict())
    distributed_model.latent_gather = distributed.gather_rows
    ddp = nn.parallel.DistributedDataParallel(distributed_model)
    x = tiny_data(16).double()
    ddp(x[8 * rank:8 * (rank + 1)]).loss.backward()
    reference(x).loss.backward()
    for (name, p), q in zip(reference.named_parameters(), distributed_model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
    torch.distributed.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert_same_parameters(rank0, rank1)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 6  # 96 rows / 2 ranks / batch 8
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 6  # rank 0 alone writes


def loss_curves(steps=12):
    """Per-step losses of a tiny float64 VAE and WAE on digits rows, fixed seeds; run once per backend."""
    x, _ = load_dataset("digits", limit=128)
    curves = {}
    for kind, model_class, model_config in [
        ("vae", VAE, VAEConfig(data_shape=(1, 8, 8), latent_dim=4, hidden_dims=(16,))),
        ("wae", WAE, WAEConfig(data_shape=(1, 8, 8), latent_dim=4, hidden_dims=(16,))),
    ]:
        torch.manual_seed(0)
        model = model_class(model_config).double()
        history = train(model, x, TrainConfig(epochs=steps // 4, batch_size=32, lr=1e-3, log_every=1, seed=3,
                                              progress=False))
        curves[kind] = [record["loss"] for record in history]
    return curves


def test_fused_and_reference_backends_train_identically():
    fused = loss_curves()
    script = "import json, torch; torch.set_num_threads(1); from tests.test_train import loss_curves; print(json.dumps(loss_curves()))"
    environment = dict(os.environ, VAEFAST_BACKEND="reference", OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    reference = json.loads(run.stdout.splitlines()[-1])
    for kind in ("vae", "wae"):
        assert len(fused[kind]) == len(reference[kind]) == 12
        assert fused[kind][-1] < fused[kind][0]  # it does train
        # float64 on both paths: the curves agree to rounding, step after step.
        torch.testing.assert_close(torch.tensor(fused[kind]), torch.tensor(reference[kind]), rtol=1e-9, atol=0,
                                   msg=f"{kind}: fused and reference loss curves differ")


def test_two_stage_end_to_end_on_digits(tmp_path):
    # 10 + 10 epochs at lr 1e-2: gamma_x falls from 1 to about 0.25 and one or two latent dimensions switch
    # on. At this budget both stages' codes sit within the estimator's noise of N(0, I) (measured: stage 1
    # 0.0045 +- 0.0017, stage 2 0.0065 +- 0.0023, the prior's own floor 0.0035 +- 0.0018), so "stage 2 below
    # stage 1" cannot be decided here; the demo's test and docs/results show that effect at a real budget.
    x, _ = load_dataset("digits")
    torch.manual_seed(0)
    model = TwoStageVAE(TwoStageConfig(stage1=VAEConfig(data_shape=(1, 8, 8), latent_dim=8, hidden_dims=(64, 64)),
                                       stage2_width=64, stage2_depth=2))
    stage = dict(epochs=10, lr=1e-2, lr_halve_every=None, log_every=10, progress=False, out_dir=str(tmp_path))
    history = train_two_stage(model, x, TrainConfig(**stage), TrainConfig(**stage))
    assert history["stage1"][-1]["gamma"] < 0.5 and history["stage2"][-1]["stage"] == "stage2"
    samples = model.sample(16)
    assert samples.shape == (16, 1, 8, 8) and bool(torch.isfinite(samples).all())
    assert (tmp_path / "samples_stage1.png").is_file() and (tmp_path / "samples_stage2.png").is_file()
    assert load_checkpoint(tmp_path / "stage2.pt")["kind"] == "two-stage"
    result = diagnostics(model, x, generator=torch.Generator().manual_seed(0))
    # Stage 2's codes match N(0, I) to within noise: its estimate within 4 standard errors of the floor's.
    noise = 4 * math.hypot(result["latent_mmd_stage2_se"], result["latent_mmd_prior_se"])
    assert abs(result["latent_mmd_stage2"] - result["latent_mmd_prior"]) < noise, result


def test_optimizer_is_fused_adam_with_plain_adams_updates():
    # The loop's Adam is torch's fused kernel on CPU; its parameters after a run match the same run with
    # the textbook per-op Adam (foreach=False) up to float32 rounding of the fused update.
    from vaefast.train import _adam
    assert _adam([nn.Parameter(torch.zeros(2))], 1e-3, torch.device("cpu")).defaults["fused"]
    x = tiny_data()
    torch.manual_seed(3)
    fused, plain = TinyVAE(), TinyVAE()
    plain.load_state_dict(fused.state_dict())
    train(fused, x, config())
    original = torch.optim.Adam
    try:
        torch.optim.Adam = lambda params, lr, fused=None: original(params, lr=lr, foreach=False)
        train(plain, x, config())
    finally:
        torch.optim.Adam = original
    for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("setup", ["plain", "weight_decay", "amsgrad", "two_groups", "float64"])
def test_adam_step_shortcut_is_adam_step_bit_for_bit(setup):
    # The loop's optimizer step (_AdamStep: torch's fused kernel called directly) against Adam.step() on
    # a copy: same parameters and moments after every step, with a halving lr, a step where one parameter
    # has no gradient, and optimizers the shortcut must leave to Adam.step() (amsgrad, two groups).
    from vaefast.train import _AdamStep
    dtype = torch.float64 if setup == "float64" else torch.float32
    shapes = [(5, 3), (3,), (7, 5), ()]
    ours = [nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in shapes]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    options = dict(lr=1e-2, fused=True, weight_decay=0.1 if setup == "weight_decay" else 0.0,
                   amsgrad=setup == "amsgrad")

    def adam(params):
        groups = [{"params": params[:2]}, {"params": params[2:]}] if setup == "two_groups" else params
        return torch.optim.Adam(groups, **options)

    optimizer, reference = adam(ours), adam(theirs)
    calls = []
    optimizer.register_step_pre_hook(lambda *args: calls.append(1))  # counts the steps Adam.step() took
    schedules = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (optimizer, reference)]
    step = _AdamStep(optimizer)
    for t in range(7):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        if t == 3:
            ours[1].grad = theirs[1].grad = None
        step()
        reference.step()
        for schedule in schedules:
            schedule.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b), (setup, t)
            state, expected = optimizer.state[a], reference.state[b]
            assert all(torch.equal(state[k], expected[k]) for k in expected), (setup, t)
    shortcut = setup in ("plain", "weight_decay", "float64")
    # Adam.step() ran for the first step and the one with a missing gradient only, where the shortcut applies.
    assert len(calls) == (2 if shortcut else 7)


def test_amp_autocasts_the_forward_to_bf16_and_keeps_float32_parameters():
    seen = []

    class Recording(TinyVAE):
        def forward(self, x, labels=None):
            seen.append(self.encoder(x.flatten(1)).dtype)
            return super().forward(x, labels)

    x = tiny_data()
    torch.manual_seed(4)
    amp, full = Recording(), Recording()
    full.load_state_dict(amp.state_dict())
    amp_history = train(amp, x, config(amp=True))
    assert set(seen) == {torch.bfloat16}
    seen.clear()
    full_history = train(full, x, config())
    assert set(seen) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in amp.parameters())
    # bf16 rounds the forward (8 bits of mantissa), so the runs differ, but they train alike.
    losses = [[record["loss"] for record in history] for history in (amp_history, full_history)]
    assert losses[0] != losses[1]
    assert losses[0][-1] < losses[0][0]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=0.05, atol=0)


def test_amp_on_a_float64_model_is_a_clear_error():
    model = TinyVAE().double()
    with pytest.raises(ValueError, match="amp=True.*float64"):
        train(model, tiny_data().double(), config(amp=True))
