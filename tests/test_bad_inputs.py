"""Bad inputs get one-line errors: the command line (exit 2 and `vaefast COMMAND: error: ...`, no traceback),
the data loaders, the configs and samplers (ValueError naming the field), and checkpoints (damaged, foreign,
or of another model). Then hypothesis fuzzes the same surface with argument values and malformed files.

The CLI runs in-process through vaefast.cli.main (an exception escaping it fails the test, so a return of 2
shows there was no traceback); two real subprocesses check the console itself.
"""
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaefast.cli import main
from vaefast.data import as_dataset, load_dataset, read_idx
from vaefast.metrics import train_classifier
from vaefast.models import VAE, WAE, CVAEConfig, ConditionalVAE, TwoStageConfig, TwoStageVAE, VAEConfig, WAEConfig
from vaefast.train import TrainConfig, load_checkpoint, load_model, train

ROOT = Path(__file__).resolve().parents[1]
UNREADABLE = "cannot read checkpoint {}: truncated or not a vaefast checkpoint"
TINY = ["--data", "digits", "--limit", "40", "--epochs", "1", "--batch-size", "8", "--latent-dim", "2",
        "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # --threads in the in-process runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of a tiny VAE on 40 digits, trained by the CLI, and its bytes."""
    out = tmp_path_factory.mktemp("trained")
    assert main(["train", "vae", *TINY, "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def last_error_line(capsys):
    """The one line a failing command printed last on stderr (argparse prints its usage above it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def rng():
    return np.random.default_rng()  # fresh every run: the cut points and bad indices differ each time


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------------ the table


def test_truncated_checkpoint_and_text_file(tmp_path, trained, capsys):
    data = trained.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[:rng().integers(1, len(data))])
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes, not a checkpoint\n")
    for path in (truncated, text):
        for command in (["sample", str(path)], ["eval", str(path), "--data", "digits", "--no-features"]):
            assert main(command) == 2
            assert last_error_line(capsys) == f"vaefast {command[0]}: error: " + UNREADABLE.format(path)


def test_all_nan_data_is_refused_at_load(tmp_path, capsys):
    path = write_npz(tmp_path / "nan.npz", x_train=np.full((50, 8, 8), np.nan, np.float32),
                     y_train=np.zeros(50, np.int64))
    assert main(["train", "vae", *TINY, "--data", str(path), "--out", str(tmp_path / "run")]) == 2
    assert last_error_line(capsys) == (f"vaefast train: error: x_train in {path} has a value that is not finite "
                                       "in float32 at index [0, 0, 0]: nan")
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("command, flag, value, wanted", [
    ("train", "--batch-size", "0", "must be a positive integer; got 0"),
    ("train", "--epochs", "-1", "must be a positive integer; got -1"),
    ("train", "--latent-dim", "0", "must be a positive integer; got 0"),
    ("sample", "-n", "0", "must be a positive integer; got 0"),
    ("train", "--limit", "0", "must be a positive integer; got 0"),
    ("train", "--log-every", "0", "must be a positive integer; got 0"),
    ("train", "--checkpoint-every", "-2", "must be a positive integer; got -2"),
    ("train", "--stage2-epochs", "0", "must be a positive integer; got 0"),
    ("train", "--threads", "0", "must be a positive integer; got 0"),
    ("train", "--stage2-width", "0", "must be a positive integer; got 0"),
    ("train", "--stage2-depth", "-1", "must be a positive integer; got -1"),
    ("train", "--lr-halve-every", "-1", "must be an integer >= 0; got -1"),
    ("train", "--gamma", "large", "must be 'learned', 'optimal' or a positive number; got 'large'"),
    ("train", "--gamma", "-0.5", "must be 'learned', 'optimal' or a positive number; got '-0.5'"),
    ("train", "--mmd-weight", "-1", "must be a finite number >= 0; got -1"),
    ("train", "--lr", "0", "must be a positive finite number; got 0"),
    ("train", "--lr", "nan", "must be a positive finite number; got nan"),
    ("train", "--lr", "inf", "must be a positive finite number; got inf"),
    ("train", "--seed", "-1", "must be an integer in [0, 2^63); got -1"),
    ("train", "--device", "gpu", "must be 'cpu', 'cuda' or 'cuda:N'; got 'gpu'"),
    ("eval", "--limit", "0", "must be a positive integer; got 0"),
    ("eval", "--iwae-samples", "0", "must be a positive integer; got 0"),
    ("train", "--epochs", "two", "invalid positive_int value: 'two'"),
    ("train", "--latent-dim", str(2**64), f"must be at most {2**31 - 1}; got {2**64}"),
])
def test_bad_flags_are_argparse_errors(tmp_path, capsys, command, flag, value, wanted):
    argv = {"train": ["train", "two-stage", "--out", str(tmp_path)], "sample": ["sample", "x.pt"],
            "eval": ["eval", "x.pt"]}[command]
    with pytest.raises(SystemExit) as exit_code:
        main([*argv, flag, value])
    assert exit_code.value.code == 2
    shown = {"-n": "-n/--num-samples"}.get(flag, flag)  # argparse names every spelling of the flag
    assert last_error_line(capsys) == f"vaefast {command}: error: argument {shown}: {wanted}"


def test_the_console_prints_one_line_and_no_traceback(tmp_path, trained):
    """The real `python -m vaefast`: a damaged checkpoint and NaN data, both started at once (~2 s each)."""
    cut = tmp_path / "cut.pt"
    cut.write_bytes(trained.read_bytes()[:100])
    nan = write_npz(tmp_path / "nan.npz", x_train=np.full((20, 4), np.nan))
    environment = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    runs = {
        "sample": ["sample", str(cut)],
        "train": ["train", "vae", "--data", str(nan), "--out", str(tmp_path / "run"), "--no-progress"],
    }
    processes = {name: subprocess.Popen([sys.executable, "-m", "vaefast", *argv], cwd=ROOT, env=environment,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, argv in runs.items()}
    errors = {}
    for name, process in processes.items():
        _, errors[name] = process.communicate(timeout=120)
        assert process.returncode == 2, errors[name]
        assert "Traceback" not in errors[name] and len(errors[name].strip().splitlines()) == 1, errors[name]
    assert errors["sample"] == "vaefast sample: error: " + UNREADABLE.format(cut) + "\n"
    assert errors["train"].startswith(f"vaefast train: error: x_train in {nan} has a value that is not finite")


# ----------------------------------------------------------------------------------- data at load time


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
def test_non_finite_values_name_the_array_and_first_index(tmp_path, bad):
    x = rng().random((30, 6, 6))
    index = tuple(int(i) for i in rng().integers(0, x.shape))
    x[index] = bad
    x[-1, -1, -1] = np.nan  # a later bad value: the first one is named
    with pytest.raises(ValueError) as error:
        as_dataset(x)
    assert str(error.value) == (f"data has a value that is not finite in float32 at index {list(index)}: "
                                f"{float(x[index])!r}")
    path = write_npz(tmp_path / "bad.npz", x_train=x)
    at_index = re.escape(str(list(index)))
    with pytest.raises(ValueError, match=rf"x_train in {path} has a value that is not finite .* index {at_index}"):
        load_dataset(path)


def test_values_outside_the_unit_interval(tmp_path):
    """Files hold images for sigmoid decoders: floats must lie in [0, 1]. as_dataset also takes tabular rows
    (for linear decoders), and training checks the range for the models whose decoder is a sigmoid."""
    x = rng().random((20, 5)).astype(np.float32)
    index = (int(rng().integers(20)), int(rng().integers(5)))
    x[index] = 1.5
    at_index = re.escape(str(list(index)))
    with pytest.raises(ValueError, match=rf"x_train in .* a value outside \[0, 1\] at index {at_index}: 1.5 \("):
        load_dataset(write_npz(tmp_path / "wide.npz", x_train=x))
    rows, _ = as_dataset(x)
    with pytest.raises(ValueError, match=rf"^x has a value outside \[0, 1\] at index {at_index}: 1.5 \("):
        train(VAE(VAEConfig(data_shape=(5,), latent_dim=2, hidden_dims=(4,))), rows,
              TrainConfig(epochs=1, batch_size=4, progress=False))
    linear = VAE(VAEConfig(data_shape=(5,), latent_dim=2, hidden_dims=(4,), output_activation="linear"))
    assert len(train(linear, rows, TrainConfig(epochs=1, batch_size=4, progress=False))) == 1


def test_integers_are_grey_levels_0_to_255(tmp_path):
    levels = rng().integers(0, 256, size=(10, 4, 4))
    for dtype in (np.uint8, np.int16, np.int64):
        x, _ = load_dataset(write_npz(tmp_path / "levels.npz", x_train=levels.astype(dtype), x_test=levels[:2]))
        assert torch.equal(x, torch.from_numpy(levels).float().unsqueeze(1) / 255)
    levels[3, 2, 1] = 256
    with pytest.raises(ValueError, match=r"an integer outside 0\.\.255 at index \[3, 2, 1\]: 256 \(integer data"):
        as_dataset(levels)
    assert torch.equal(as_dataset(np.eye(3, dtype=bool))[0], torch.eye(3))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5, 6), ()])
def test_wrong_rank(shape):
    with pytest.raises(ValueError, match=rf"data must be \[N, D\], .*; got shape {re.escape(str(list(shape)))}"):
        as_dataset(np.zeros(shape))


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 8, 8)])
def test_empty_arrays(tmp_path, shape):
    with pytest.raises(ValueError, match=re.escape(f"data is empty: shape {list(shape)}")):
        as_dataset(np.zeros(shape))
    with pytest.raises(ValueError, match=rf"x_train in .* is empty"):
        load_dataset(write_npz(tmp_path / "empty.npz", x_train=np.zeros(shape)))


def test_labels_must_be_one_class_id_per_example(tmp_path):
    x = rng().random((12, 3))
    with pytest.raises(ValueError, match=r"y_train in .* must have shape \[12\] \(one per example\); got \[11\]"):
        load_dataset(write_npz(tmp_path / "short.npz", x_train=x, y_train=np.zeros(11)), limit=5)
    with pytest.raises(ValueError, match=r"labels must have shape \[12\]"):
        as_dataset(x, np.zeros((12, 2)))
    with pytest.raises(ValueError, match=r"labels has a negative class id at index \[4\]: -1"):
        as_dataset(x, [0, 1, 2, 3, -1, 5, 6, 7, 8, 9, 0, 1])
    with pytest.raises(ValueError, match=r"labels has a value that is not a class id at index \[2\]: 2.5"):
        as_dataset(x, np.array([0, 1, 2.5] + [0] * 9))
    assert as_dataset(x, np.arange(12.0))[1].dtype == torch.int64  # whole floats are class ids


def test_missing_test_split_holds_out_the_last_fifth(tmp_path):
    x, y = rng().random((15, 2, 2)), rng().integers(0, 3, size=15)
    path = write_npz(tmp_path / "train_only.npz", x_train=x, y_train=y)
    x_train, y_train = load_dataset(path)
    x_test, y_test = load_dataset(path, split="test")
    assert torch.equal(x_train, torch.from_numpy(x[:12]).float().unsqueeze(1))
    assert torch.equal(x_test, torch.from_numpy(x[12:]).float().unsqueeze(1))
    assert torch.equal(torch.cat([y_train, y_test]), torch.from_numpy(y))
    with pytest.raises(ValueError, match="too few to hold out a fifth"):
        load_dataset(write_npz(tmp_path / "four.npz", x_train=x[:4]), split="test")
    with pytest.raises(ValueError, match=r"has no array 'x_train'.* found \['images'\]"):
        load_dataset(write_npz(tmp_path / "other.npz", images=x))


def test_damaged_and_foreign_data_files(tmp_path):
    good = write_npz(tmp_path / "good.npz", x_train=rng().random((10, 4)))
    data = good.read_bytes()
    cut, text, single = tmp_path / "cut.npz", tmp_path / "text.npz", tmp_path / "single.npz"
    cut.write_bytes(data[:rng().integers(1, len(data))])
    text.write_text("x_train = [0.1, 0.2]\n")
    with open(single, "wb") as f:
        np.save(f, np.zeros((3, 3)))
    for path in (cut, text, single):
        with pytest.raises(ValueError, match=f"cannot read {path}: not an .npz archive of numeric arrays"):
            load_dataset(path)
    idx = tmp_path / "idx"
    idx.mkdir()
    header = bytes([0, 0, 0x08, 3]) + np.asarray([10, 28, 28], dtype=">i4").tobytes()
    (idx / "train-images-idx3-ubyte").write_bytes(header + bytes(100))
    labels_header = bytes([0, 0, 0x08, 1]) + np.asarray([10], dtype=">i4").tobytes()
    (idx / "train-labels-idx1-ubyte").write_bytes(labels_header + bytes(10))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is truncated or damaged: its header promises "
                                         r"\[10, 28, 28\] values"):
        load_dataset(idx)
    (idx / "junk.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="damaged or truncated gzip"):
        read_idx(idx / "junk.gz")


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match=rf"limit must be an integer >= 1; got {limit!r}"):
        as_dataset(np.zeros((4, 2)), limit=limit)
    with pytest.raises(ValueError, match="limit must be"):
        load_dataset("digits", limit=limit)


def test_data_that_is_not_numbers():
    for data in (np.array([["a", "b"]]), [[1, 2], [3]], [[None, 1.0]], np.ones((2, 2), np.complex64)):
        with pytest.raises(ValueError, match="data must "):
            as_dataset(data)


# --------------------------------------------------------------------------------- configs and samplers


VAE_SHAPE = dict(data_shape=(4,), hidden_dims=(8,))


@pytest.mark.parametrize("make, field", [
    (lambda: VAEConfig(**VAE_SHAPE, latent_dim=0), "latent_dim"),
    (lambda: VAEConfig(**VAE_SHAPE, latent_dim=2.0), "latent_dim"),
    (lambda: VAEConfig(data_shape=(0, 4)), "data_shape"),
    (lambda: VAEConfig(data_shape=()), "data_shape"),
    (lambda: VAEConfig(data_shape="28x28"), "data_shape"),
    (lambda: VAEConfig(data_shape=(4,), hidden_dims=(8, -1)), "hidden_dims"),
    (lambda: VAEConfig(**VAE_SHAPE, width=0), "width"),
    (lambda: VAEConfig(**VAE_SHAPE, beta=float("nan")), "beta"),
    (lambda: VAEConfig(**VAE_SHAPE, beta=-1.0), "beta"),
    (lambda: VAEConfig(**VAE_SHAPE, gamma=float("inf")), "gamma"),
    (lambda: VAEConfig(**VAE_SHAPE, gamma=-1.0), "gamma"),
    (lambda: VAEConfig(**VAE_SHAPE, gamma_min=0.0), "gamma_min"),
    (lambda: VAEConfig(**VAE_SHAPE, kl_warmup_steps=-1), "kl_warmup_steps"),
    (lambda: CVAEConfig(**VAE_SHAPE, num_classes=0), "num_classes"),
    (lambda: WAEConfig(**VAE_SHAPE, latent_dim=-2), "latent_dim"),
    (lambda: WAEConfig(**VAE_SHAPE, mmd_weight=-0.1), "mmd_weight"),
    (lambda: WAEConfig(**VAE_SHAPE, mmd_weight=float("inf")), "mmd_weight"),
    (lambda: WAEConfig(**VAE_SHAPE, bandwidth=0.0), "bandwidth"),
    (lambda: TwoStageConfig(stage1=VAEConfig(**VAE_SHAPE), stage2_width=0), "stage2_width"),
    (lambda: TwoStageConfig(stage1=VAEConfig(**VAE_SHAPE), stage2_depth=1.5), "stage2_depth"),
    (lambda: TwoStageConfig(stage1=VAEConfig(**VAE_SHAPE), stage2_latent_dim=0), "stage2_latent_dim"),
    (lambda: TwoStageConfig(stage1="vae"), "stage1"),
    (lambda: TrainConfig(epochs=-1), "epochs"),
    (lambda: TrainConfig(epochs=0), "epochs"),
    (lambda: TrainConfig(batch_size=0), "batch_size"),
    (lambda: TrainConfig(lr=0.0), "lr"),
    (lambda: TrainConfig(lr=float("nan")), "lr"),
    (lambda: TrainConfig(lr_halve_every=0), "lr_halve_every"),
    (lambda: TrainConfig(log_every=0), "log_every"),
    (lambda: TrainConfig(checkpoint_every=0), "checkpoint_every"),
    (lambda: TrainConfig(max_bad_steps=0), "max_bad_steps"),
    (lambda: TrainConfig(seed=-1), "seed"),
    (lambda: TrainConfig(seed=2**63), "seed"),
    (lambda: VAEConfig(**VAE_SHAPE, latent_dim=2**63), "latent_dim"),
    (lambda: TwoStageConfig(stage1=VAEConfig(**VAE_SHAPE), stage2_depth=2**31), "stage2_depth"),
    (lambda: TrainConfig(device="gpu"), "device"),
])
def test_configs_name_the_bad_field(make, field):
    with pytest.raises(ValueError, match=rf"^{field} must "):
        make()


@pytest.mark.parametrize("model", [
    VAE(VAEConfig(**VAE_SHAPE, latent_dim=2)),
    WAE(WAEConfig(**VAE_SHAPE, latent_dim=2)),
    ConditionalVAE(CVAEConfig(**VAE_SHAPE, latent_dim=2, num_classes=3)),
    TwoStageVAE(TwoStageConfig(stage1=VAEConfig(**VAE_SHAPE, latent_dim=2), stage2_width=4)),
], ids=["vae", "wae", "cvae", "two-stage"])
@pytest.mark.parametrize("num_samples", [0, -1, 2.0])
def test_sample_counts(model, num_samples):
    with pytest.raises(ValueError, match=rf"num_samples must be an integer >= 1; got {num_samples!r}"):
        model.sample(num_samples)
    assert model.sample(3).shape == (3, 4)


# ---------------------------------------------------------------------------------------- checkpoints


def test_checkpoints_of_the_wrong_kind_or_shape(tmp_path, trained, capsys):
    checkpoint = load_checkpoint(trained)
    wrong_shape = tmp_path / "wrong_shape.pt"
    torch.save({**checkpoint, "config": {**checkpoint["config"], "latent_dim": 3}}, wrong_shape)
    with pytest.raises(ValueError, match=rf"the weights in {wrong_shape} do not fit the model: "
                                         r"encoder.head.weight is \[4, 256\], the model's \[6, 256\]"):
        load_model(wrong_shape)
    wrong_config = tmp_path / "wrong_config.pt"
    torch.save({**checkpoint, "config": {"data_shape": [1, 8, 8], "depth": 3}}, wrong_config)
    with pytest.raises(ValueError, match=rf"{wrong_config} holds no valid 'vae' model: .*depth"):
        load_model(wrong_config)
    not_vaefast = tmp_path / "weights.pt"
    torch.save(checkpoint["model"], not_vaefast)  # a bare state_dict
    assert main(["sample", str(not_vaefast)]) == 2
    assert last_error_line(capsys) == "vaefast sample: error: " + UNREADABLE.format(not_vaefast)
    partial = tmp_path / "partial.pt"
    torch.save({key: value for key, value in checkpoint.items() if key != "optimizer"}, partial)
    with pytest.raises(ValueError, match=r"not a vaefast checkpoint \(it lacks optimizer\)"):
        load_checkpoint(partial)
    torch.save({**checkpoint, "epoch": "5"}, partial)
    with pytest.raises(ValueError, match=r"not a vaefast checkpoint \(its epoch and step are not counts\)"):
        load_checkpoint(partial)


def test_resume_from_another_model_stage_or_a_later_epoch(tmp_path, trained, capsys):
    out = trained.parent
    assert main(["train", "wae", *TINY, "--out", str(out), "--resume"]) == 2
    assert last_error_line(capsys) == (f"vaefast train: error: cannot resume from {trained}: it holds a 'vae' "
                                       "model at stage None, this run trains a 'wae' model at stage None")
    assert main(["train", "vae", *TINY, "--latent-dim", "3", "--out", str(out), "--resume"]) == 2
    assert "do not fit the model: encoder.head.weight is [4, 256], the model's [6, 256]" in last_error_line(capsys)
    later = tmp_path / "later"
    later.mkdir()
    torch.save({**load_checkpoint(trained), "epoch": 5}, later / "checkpoint.pt")
    assert main(["train", "vae", *TINY, "--out", str(later), "--resume"]) == 2
    assert "it is at epoch 5, past epochs = 1" in last_error_line(capsys)


def test_batches_and_splits_too_small_for_the_mmd(tmp_path, trained, capsys):
    assert main(["train", "wae", *TINY, "--batch-size", "1", "--out", str(tmp_path)]) == 2
    assert last_error_line(capsys) == ("vaefast train: error: a WAE needs --batch-size >= 2 (its MMD estimate "
                                       "compares latents pairwise); got 1")
    assert main(["eval", str(trained), "--no-features", "--limit", "1"]) == 2
    assert last_error_line(capsys) == ("vaefast eval: error: evaluation needs at least 2 examples; digits's test "
                                       "split (--limit 1) has 1")
    path = write_npz(tmp_path / "one_test.npz", x_train=rng().random((20, 8, 8)), x_test=rng().random((1, 8, 8)))
    assert main(["train", "vae", *TINY, "--data", str(path), "--out", str(tmp_path / "run")]) == 2
    assert last_error_line(capsys).endswith(f"evaluation needs at least 2 examples; {path}'s test split has 1")
    assert not (tmp_path / "run").exists()  # refused before training


def test_eval_on_data_of_another_shape(tmp_path, trained, capsys):
    path = write_npz(tmp_path / "wide.npz", x_train=rng().random((20, 3, 5)))
    assert main(["eval", str(trained), "--data", str(path), "--no-features"]) == 2
    assert last_error_line(capsys) == (f"vaefast eval: error: {trained} models [1, 8, 8] examples; {path}'s test "
                                       "split holds [1, 3, 5]")
    unlabelled = write_npz(tmp_path / "unlabelled.npz", x_train=rng().random((20, 8, 8)))
    assert main(["eval", str(trained), "--data", str(unlabelled), "--cache-dir", str(tmp_path)]) == 2
    assert "the feature classifier for FD and KID trains on labels" in last_error_line(capsys)


def test_a_damaged_classifier_cache_is_trained_again(tmp_path):
    x, y = load_dataset("digits", limit=64)
    cache = tmp_path / "classifier.pt"
    cache.write_bytes(b"PK\x03\x04 cut short")
    _, info = train_classifier(x, y, epochs=1, cache_path=cache)
    assert info["num_classes"] == 10
    assert torch.load(cache, weights_only=True)["info"] == info  # overwritten with the fresh result


# ------------------------------------------------------------------------------------------ the fuzzing
# Bounded so that the file runs in seconds: deadline off (a valid argv trains for ~1 s), few examples.
# VAEFAST_FUZZ_EXAMPLES=500 makes a longer hunt.
FUZZ = settings(max_examples=int(os.environ.get("VAEFAST_FUZZ_EXAMPLES", "25")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

TRAIN_FLAGS = ["--epochs", "--stage2-epochs", "--batch-size", "--lr", "--lr-halve-every", "--latent-dim",
               "--gamma", "--mmd-weight", "--stage2-width", "--stage2-depth", "--seed", "--checkpoint-every",
               "--log-every", "--limit", "--architecture", "--data", "--device", "--threads"]
# Values as a user types them: small and huge integers, special floats, words, nothing. Valid counts stay
# small (a valid --epochs 10**6 would train for hours); the huge ones must be refused.
VALUES = st.one_of(st.integers(-3, 4).map(str), st.integers(2**31, 2**70).map(str),
                   st.integers(-2**70, -2**31).map(str),
                   st.sampled_from(["nan", "inf", "-inf", "1e-3", "1e309", "0.5", "-0.0", "learned", "optimal",
                                    "", " ", "cuda", "mlp", "infogan", "resnet", "digits", "mnist", "0x10",
                                    "1_0", "--"]),
                   st.text(max_size=6))


def assert_clean_exit(run, capsys):
    """run() is a CLI call: it returns 0 or exits 2 with one `vaefast ...: error:` line and no traceback."""
    try:
        status = run()
    except SystemExit as exit_code:
        status = exit_code.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert status in (0, 2), err
    if status == 2:
        assert err.strip().splitlines()[-1].startswith("vaefast "), err


@FUZZ
@given(kind=st.sampled_from(["vae", "wae", "two-stage"]),
       flags=st.lists(st.tuples(st.sampled_from(TRAIN_FLAGS), VALUES), min_size=1, max_size=3))
def test_fuzz_train_flags(tmp_path, capsys, kind, flags):
    argv = ["train", kind, *TINY, "--stage2-width", "8", "--out", str(tmp_path / "run"),
            *[word for pair in flags for word in pair]]
    assert_clean_exit(lambda: main(argv), capsys)


JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.integers(2**63, 2**70),
                 st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 0.5, 2.0]), st.text(max_size=5),
                 st.sampled_from(["learned", "optimal", "mlp", "infogan", "bernoulli", "linear", "cpu", "rbf"]),
                 st.lists(st.integers(-1, 4), max_size=3))
CONFIGS = {
    "vae": (VAEConfig, VAE, dict(data_shape=(4,), hidden_dims=(8,), latent_dim=2)),
    "wae": (WAEConfig, WAE, dict(data_shape=(4,), hidden_dims=(8,), latent_dim=2)),
    "cvae": (CVAEConfig, ConditionalVAE, dict(data_shape=(4,), hidden_dims=(8,), latent_dim=2)),
    "two-stage": (TwoStageConfig, TwoStageVAE, dict(stage1=VAEConfig(data_shape=(4,), hidden_dims=(8,)),
                                                    stage2_width=4)),
    "train": (TrainConfig, None, {}),
}


@FUZZ
@given(kind=st.sampled_from(sorted(CONFIGS)), data=st.data())
def test_fuzz_config_fields(kind, data):
    """Any config with one field set to junk is built, and then makes a model, or raises a ValueError."""
    config_class, model_class, base = CONFIGS[kind]
    field = data.draw(st.sampled_from([f.name for f in dataclasses.fields(config_class)]))
    try:
        config = config_class(**{**base, field: data.draw(JUNK)})
        if model_class is not None:
            model_class(config)
    except ValueError as error:
        assert "\n" not in str(error)


@FUZZ
@given(flag=st.sampled_from(["-n", "--seed", "--device", "--out"]), value=VALUES)
def test_fuzz_sample_flags(tmp_path, capsys, trained, flag, value):
    out = str(tmp_path / "grid.png") if flag != "--out" else str(tmp_path / (value or "x"))
    argv = ["sample", str(trained), "--out", out, *([flag, value] if flag != "--out" else [])]
    assert_clean_exit(lambda: main(argv), capsys)


@FUZZ
@given(flag=st.sampled_from(["--limit", "--iwae-samples", "--split", "--data", "--device"]), value=VALUES)
def test_fuzz_eval_flags(tmp_path, capsys, trained, flag, value):
    argv = ["eval", str(trained), "--no-features", "--limit", "20", "--iwae-samples", "2",
            "--out", str(tmp_path / "eval.json"), flag, value]
    assert_clean_exit(lambda: main(argv), capsys)


@FUZZ
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_fuzz_damaged_checkpoints(tmp_path, capsys, trained, cut, flips):
    """A checkpoint cut short and with a few bytes overwritten: loads, or is the one-line error."""
    data = bytearray(trained.read_bytes()[:int(cut * len(trained.read_bytes()))])
    for where, byte in flips:
        if data:
            data[int(where * (len(data) - 1))] = byte
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    assert_clean_exit(lambda: main(["sample", str(damaged), "-n", "2", "--out", str(tmp_path / "g.png")]), capsys)


CHECKPOINT_JUNK = st.one_of(st.none(), st.integers(-2, 3), st.text(max_size=4), st.lists(st.integers(0, 3), max_size=3),
                            st.dictionaries(st.sampled_from(["latent_dim", "data_shape", "x"]), st.integers(-1, 3)))


@FUZZ
@given(key=st.sampled_from(["kind", "config", "model", "stage", "epoch", "format", "config.latent_dim",
                            "config.data_shape", "config.architecture", "config.gamma", "config.hidden_dims"]),
       value=CHECKPOINT_JUNK)
def test_fuzz_checkpoint_fields(tmp_path, capsys, trained, key, value):
    """A checkpoint with one field (or one field of its model config) replaced by junk: loads, or is a
    one-line error."""
    checkpoint = load_checkpoint(trained)
    if key.startswith("config."):
        checkpoint["config"] = {**checkpoint["config"], key.split(".")[1]: value}
    else:
        checkpoint[key] = value
    damaged = tmp_path / "junk.pt"
    torch.save(checkpoint, damaged)
    assert_clean_exit(lambda: main(["sample", str(damaged), "-n", "2", "--out", str(tmp_path / "g.png")]), capsys)


ARRAYS = hnp.arrays(dtype=st.sampled_from([np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]),
                    shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5),
                    elements=None)


@FUZZ
@given(x=ARRAYS, y=st.one_of(st.none(), ARRAYS), test=st.booleans(), split=st.sampled_from(["train", "test"]))
def test_fuzz_npz_arrays(tmp_path, x, y, test, split):
    """Any .npz of small arrays: load_dataset returns data training can use, or raises a ValueError."""
    arrays = {"x_train": x, **({"y_train": y} if y is not None else {}), **({"x_test": x} if test else {})}
    path = write_npz(tmp_path / "fuzz.npz", **arrays)
    try:
        images, labels = load_dataset(path, split=split)
    except ValueError as error:
        assert "\n" not in str(error)
        return
    assert images.dtype == torch.float32 and images.dim() in (2, 4) and images.shape[0] >= 1
    assert bool(torch.isfinite(images).all()) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert labels is None or (labels.dtype == torch.int64 and labels.shape == images.shape[:1]
                              and int(labels.min()) >= 0)


@FUZZ
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_fuzz_damaged_npz(tmp_path, cut, flips):
    good = write_npz(tmp_path / "good.npz", x_train=np.arange(40, dtype=np.uint8).reshape(10, 4),
                     y_train=np.arange(10))
    data = bytearray(good.read_bytes()[:max(1, int(cut * len(good.read_bytes())))])
    for where, byte in flips:
        data[int(where * (len(data) - 1))] = byte
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(data))
    try:
        load_dataset(damaged)
    except ValueError as error:
        assert "\n" not in str(error)
