"""Data sets as whole tensors: images [N, C, H, W] or tabular rows [N, D] in float32, labels int64 [N].

Training moves the whole set to the device once (MNIST is 188 MB in float32), so a data set here is just a
pair of tensors, not a Dataset/DataLoader. Sources:
- "digits": scikit-learn's bundled 8x8 handwritten digits (1797 images, 0..16 grey levels), no download;
  the last fifth is the test split.
- "mnist" (or any image set in the same layouts): an .npz with x_train/y_train/x_test/y_test (uint8
  0..255), or the four IDX files (train-images-idx3-ubyte, ..., optionally .gz), found in `data_dir`, in
  $VAEFAST_DATA_DIR, or at an explicit path. vaefast never downloads anything.
- Plain tensors and numpy arrays (images or tabular rows) via `as_dataset`.
"""
import gzip
import os
from pathlib import Path

import numpy as np
import torch

DATA_DIR_ENV = "VAEFAST_DATA_DIR"
SPLITS = ("train", "test")
# IDX file stems per split; both the hyphenated and the dotted ("train-images.idx3-ubyte") spellings exist.
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def load_dataset(name_or_path, *, data_dir=None, split="train", limit=None):
    """(x, y) for a named data set or a path: x float32 in [0, 1], [N, C, H, W] (or [N, D]); y int64 [N] or None.

    name_or_path: "digits", "mnist", or a path to an .npz file or a directory holding mnist.npz / IDX files.
    data_dir: where to look for "mnist" (default: $VAEFAST_DATA_DIR). limit: keep only the first N examples.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    name = str(name_or_path)
    if name == "digits":
        x, y = _digits(split)
    elif name == "mnist":
        x, y = _from_locations(_search_dirs(data_dir), split, what="MNIST")
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        x, y = _read_npz(path, split) if path.is_file() else _from_locations([path], split, what=str(path))
    else:
        raise ValueError(f"unknown data set {name!r}: use 'digits', 'mnist' (with --data-dir or "
                         f"${DATA_DIR_ENV}), or the path of an .npz file or a directory of IDX files")
    return as_dataset(x, y, limit=limit)


def as_dataset(data, labels=None, *, limit=None):
    """(x, y) from a tensor or numpy array, in the layout training expects.

    uint8 data are grey levels and are scaled by 1/255; floating data are taken as they are (images should
    already be in [0, 1], which the sigmoid decoders assume). [N, H, W] -> [N, 1, H, W]; [N, H, W, C] with
    C in (1, 3, 4) -> [N, C, H, W]; [N, C, H, W] and tabular [N, D] stay. labels: [N] -> int64, or None.
    """
    x = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
    if x.dim() < 2:
        raise ValueError(f"data must have a batch dimension and at least one more, [N, D] or [N, C, H, W]; "
                         f"got shape {list(x.shape)}")
    if limit is not None:
        x = x[:limit]
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4 and x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    x = x.contiguous()
    y = None
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        y = y[:limit].long() if limit is not None else y.long()
        if y.shape != x.shape[:1]:
            raise ValueError(f"labels must have shape [{x.shape[0]}] (one per example); got {list(y.shape)}")
    return x, y


def _digits(split):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # grey levels 0..16
    test_size = len(images) // 5  # 359 of 1797: a fixed split, the last fifth
    cut = len(images) - test_size
    part = slice(0, cut) if split == "train" else slice(cut, None)
    return images[part], digits.target[part]


def _search_dirs(data_dir):
    dirs = [Path(data_dir).expanduser()] if data_dir is not None else []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    return dirs


def _from_locations(dirs, split, *, what):
    """Reads mnist.npz, the only .npz, or the IDX files of `split` from the first directory holding them."""
    for directory in dirs:
        npz = directory / "mnist.npz"
        others = sorted(directory.glob("*.npz")) if directory.is_dir() else []
        if npz.is_file() or len(others) == 1:
            return _read_npz(npz if npz.is_file() else others[0], split)
        images, labels = (_find_idx(directory, stem) for stem in IDX_STEMS[split])
        if images is not None and labels is not None:
            return read_idx(images), read_idx(labels)
    looked = ", ".join(str(d) for d in dirs) if dirs else f"nowhere (no --data-dir given and ${DATA_DIR_ENV} unset)"
    raise FileNotFoundError(
        f"{what} not found: looked for mnist.npz (x_train/y_train/x_test/y_test) or the IDX files "
        f"{IDX_STEMS[split][0]}[.gz] and {IDX_STEMS[split][1]}[.gz] in {looked}. Point at the data with "
        f"--data-dir DIR (data_dir= in Python), the environment variable {DATA_DIR_ENV}, or pass the path "
        f"of the .npz file itself; vaefast downloads nothing."
    )


def _find_idx(directory, stem):
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _read_npz(path, split):
    with np.load(path) as arrays:
        keys = (f"x_{split}", f"y_{split}")
        if keys[0] not in arrays:
            raise ValueError(f"{path} has no array {keys[0]!r}; expected x_train/y_train/x_test/y_test, "
                             f"found {sorted(arrays.files)}")
        return arrays[keys[0]], arrays[keys[1]] if keys[1] in arrays else None


def read_idx(path):
    """An IDX file (LeCun's MNIST format, optionally gzipped) as a numpy array.

    Layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, each dimension as a
    big-endian int32, then the values in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (it must start with 0x00 0x00 <type> <ndim>)")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    values = np.frombuffer(raw, dtype=IDX_TYPES[raw[2]], count=int(np.prod(shape)), offset=4 + 4 * ndim)
    return values.reshape(shape).copy()  # frombuffer's view is read-only; torch wants writable memory
