"""vaefast.data: the embedded digits, MNIST from .npz or IDX files, plain arrays, and the missing-data errors."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from vaefast.data import DATA_DIR_ENV, as_dataset, load_dataset, read_idx

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist.npz"


def write_idx(path, array):
    """The inverse of read_idx for uint8 arrays: 0x00 0x00 0x08 ndim, big-endian int32 dims, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def test_digits_shape_range_and_split():
    x, y = load_dataset("digits")
    x_test, y_test = load_dataset("digits", split="test")
    assert x.shape == (1438, 1, 8, 8) and x_test.shape == (359, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.tolist()) == set(range(10))
    again, _ = load_dataset("digits")
    assert torch.equal(x, again)  # deterministic split
    assert load_dataset("digits", limit=10)[0].shape == (10, 1, 8, 8)


@pytest.mark.skipif(not MNIST.is_file(), reason=f"MNIST not present at {MNIST} (the shared data folder)")
def test_mnist_from_shared_npz(monkeypatch):
    x, y = load_dataset(MNIST, limit=256)
    assert x.shape == (256, 1, 28, 28) and y.shape == (256,)
    assert 0.0 <= float(x.min()) and float(x.max()) == 1.0
    monkeypatch.setenv(DATA_DIR_ENV, str(MNIST.parent))
    x_env, _ = load_dataset("mnist", split="test", limit=8)
    assert x_env.shape == (8, 1, 28, 28)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    for stem in ("train", "t10k"):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte{suffix}", images)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte{suffix}", labels)
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    x, y = load_dataset("mnist", data_dir=tmp_path)
    assert torch.equal(x, torch.from_numpy(images).float().unsqueeze(1) / 255)
    assert torch.equal(y, torch.from_numpy(labels).long())
    assert load_dataset(tmp_path, split="test")[0].shape == (5, 1, 28, 28)  # the directory as a path


def test_missing_mnist_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "--data-dir" in message and DATA_DIR_ENV in message


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown data set 'no-such-set'"):
        load_dataset("no-such-set")


def test_arrays_and_tabular():
    x, y = as_dataset(np.zeros((4, 6, 6, 3), dtype=np.uint8) + 255, labels=[0, 1, 2, 3])
    assert x.shape == (4, 3, 6, 6) and float(x.max()) == 1.0 and y.dtype == torch.int64
    rows, none = as_dataset(torch.randn(7, 5, dtype=torch.float64), limit=3)
    assert rows.shape == (3, 5) and rows.dtype == torch.float32 and none is None
    with pytest.raises(ValueError, match="labels must have shape"):
        as_dataset(np.zeros((3, 2)), labels=[1, 2])
