"""Data sets as whole tensors: images [N, C, H, W] or tabular rows [N, D] in float32, labels int64 [N].

Training moves the whole set to the device once (MNIST is 188 MB in float32), so a data set here is just a
pair of tensors, not a Dataset/DataLoader. Sources:
- "digits": scikit-learn's bundled 8x8 handwritten digits (1797 images, 0..16 grey levels), no download;
  the last fifth is the test split.
- "mnist" (or any image set in the same layouts): an .npz with x_train/y_train/x_test/y_test (uint8
  0..255), or the four IDX files (train-images-idx3-ubyte, ..., optionally .gz), found in `data_dir`, in
  $VAEFAST_DATA_DIR, or at an explicit path. vaefast never downloads anything. Without a test part the
  last fifth of the training examples is held out as the test split, as for the digits.
- Plain tensors and numpy arrays (images or tabular rows) via `as_dataset`.

Every array is checked as it loads (numbers, rank 2-4, not empty, finite, integers in 0..255, one label
>= 0 per example; files also [0, 1] once scaled): a bad one is a ValueError naming it and its first bad
index, not a model that trains on NaN.
"""
import gzip
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from . import checks

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
    A set without a test part (an .npz without x_test, a directory without the t10k IDX files) is split
    as the digits are: the last fifth of its training examples is the test split, the rest the training one.
    The arrays are checked as they load (see as_dataset); float images must also lie in [0, 1], the range
    of the sigmoid decoders: a ValueError names the array and the first index that breaks a rule.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    limit = checks.optional_integer("limit", limit)
    name, path = str(name_or_path), Path(name_or_path).expanduser()
    if name == "digits":
        x, y, names, part = _digits(split)
    elif name == "mnist":
        x, y, names, part = _from_locations(_search_dirs(data_dir), split, what="MNIST")
    elif path.is_file():
        x, y, names, part = _read_npz(path, split)
    elif path.is_dir():
        x, y, names, part = _from_locations([path], split, what=str(path))
    else:
        raise ValueError(f"unknown data set {name!r}: use 'digits', 'mnist' (with --data-dir or "
                         f"${DATA_DIR_ENV}), or the path of an .npz file or a directory of IDX files")
    x, y = _checked(x, y, names, unit_interval=True)
    if part is not None:
        x, y = _held_out(x, y, part, names[0])
    return _first(x, y, limit)


def as_dataset(data, labels=None, *, limit=None):
    """(x, y) from a tensor or numpy array, in the layout training expects.

    Integer data are grey levels 0..255 and are scaled by 1/255 (other integers are refused); bools
    become 0 and 1; floating data are taken as they are (images should already be in [0, 1], which the
    sigmoid decoders assume; training checks that for them). [N, H, W] -> [N, 1, H, W]; [N, H, W, C] with
    C in (1, 3, 4) -> [N, C, H, W]; [N, C, H, W] and tabular [N, D] stay. labels: [N] -> int64, or None.
    A ValueError, naming the argument and the first bad index, refuses data that is not numbers, has
    another rank, is empty or holds NaN/inf, and labels that are not one class id >= 0 per example.
    """
    limit = checks.optional_integer("limit", limit)
    return _first(*_checked(data, labels, ("data", "labels"), unit_interval=False), limit)


def check_values(x, name, *, unit_interval=False):
    """Refuses x (a tensor, any layout) holding NaN or inf or, with unit_interval, values outside [0, 1]:
    a ValueError naming `name`, the first such index and its value."""
    _refuse_first(~torch.isfinite(x), x, name, "a non-finite value")
    if unit_interval:
        _refuse_first((x < 0) | (x > 1), x, name, "a value outside [0, 1]",
                      hint="the sigmoid decoders' range; scale images to [0, 1] (integer grey levels 0..255 "
                           "are scaled when loaded)")


def _checked(data, labels, names, *, unit_interval):
    """as_dataset's checks and conversions, before any split or limit, so that an index in a message is
    an index into the caller's array."""
    x = _as_tensor(data, names[0])
    if not 2 <= x.dim() <= 4:
        raise ValueError(f"{names[0]} must be [N, D], [N, H, W], [N, H, W, C] or [N, C, H, W]; got shape "
                         f"{list(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{names[0]} is empty: shape {list(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{names[0]} must hold real numbers; got {x.dtype}")
    if x.dtype == torch.bool:
        values = x.float()
    elif not x.is_floating_point():
        values = x.float()  # exact for integers up to 2^24: enough to tell 0..255 from the rest
        _refuse_first((values < 0) | (values > 255), x, names[0], "an integer outside 0..255",
                      hint="integer data are grey levels, scaled by 1/255; pass other numbers as floats")
        values = values / 255
    else:
        values = x.float()
        # Checked in float32, which training uses: a float64 1e300 is as unusable as an inf.
        _refuse_first(~torch.isfinite(values), x, names[0], "a value that is not finite in float32")
        if unit_interval:
            check_values(values, names[0], unit_interval=True)
    if values.dim() == 3:
        values = values.unsqueeze(1)
    elif values.dim() == 4 and values.shape[1] not in (1, 3, 4) and values.shape[-1] in (1, 3, 4):
        values = values.permute(0, 3, 1, 2)
    return values.contiguous(), None if labels is None else _checked_labels(labels, x.shape[0], names[1])


def _checked_labels(labels, count, name):
    y = _as_tensor(labels, name)
    if y.dim() != 1 or y.shape[0] != count:
        raise ValueError(f"{name} must have shape [{count}] (one per example); got {list(y.shape)}")
    if y.is_complex():
        raise ValueError(f"{name} must be integer class ids; got {y.dtype}")
    if y.is_floating_point():
        _refuse_first(~torch.isfinite(y) | (y != y.round()), y, name, "a value that is not a class id")
    _refuse_first(y.long() < 0, y, name, "a negative class id")
    return y.long()


def _as_tensor(value, name):
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be an array of numbers; got {type(value).__name__} that is not one "
                         f"({str(error).splitlines()[0]})") from error


def _refuse_first(bad, values, name, what, *, hint=None):
    """A ValueError naming the first index (C order) where the bool tensor `bad` holds, and values there."""
    if bool(bad.any()):
        first = int(torch.argmax(bad.flatten().to(torch.uint8)))  # argmax returns the first of equal maxima
        index = [int(i) for i in np.unravel_index(first, tuple(bad.shape))]
        raise ValueError(f"{name} has {what} at index {index}: {values.flatten()[first].item()!r}"
                         + (f" ({hint})" if hint else ""))


def _held_out(x, y, part, name):
    """The fixed split of a set without a test part: the last fifth is the test split (the digits: 359 of
    1797), the rest the training split."""
    cut = x.shape[0] - x.shape[0] // 5
    if part == "test" and cut == x.shape[0]:
        raise ValueError(f"{name} has {x.shape[0]} examples, too few to hold out a fifth as the test split "
                         "(and there is no test array)")
    rows = slice(0, cut) if part == "train" else slice(cut, None)
    return x[rows], None if y is None else y[rows]


def _first(x, y, limit):
    if limit is None:
        return x, y
    return x[:limit], None if y is None else y[:limit]


def _digits(split):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # grey levels 0..16
    return images, digits.target, ("the digits' images", "the digits' labels"), split  # no test part: held out


def _search_dirs(data_dir):
    dirs = [Path(data_dir).expanduser()] if data_dir is not None else []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    return dirs


def _from_locations(dirs, split, *, what):
    """Reads mnist.npz, the only .npz, or the IDX files from the first directory holding them; returns
    (x, y, their names, the part of them that is `split` or None when they are all of it)."""
    for directory in dirs:
        npz = directory / "mnist.npz"
        others = sorted(directory.glob("*.npz")) if directory.is_dir() else []
        if npz.is_file() or len(others) == 1:
            return _read_npz(npz if npz.is_file() else others[0], split)
        files = {name: [_find_idx(directory, stem) for stem in stems] for name, stems in IDX_STEMS.items()}
        if None not in files["train"]:
            has_test = None not in files["test"]
            images, labels = files[split] if has_test else files["train"]
            return read_idx(images), read_idx(labels), (str(images), str(labels)), None if has_test else split
    looked = ", ".join(str(d) for d in dirs) if dirs else f"nowhere (no --data-dir given and ${DATA_DIR_ENV} unset)"
    raise FileNotFoundError(
        f"{what} not found: looked for mnist.npz (x_train/y_train, optionally x_test/y_test) or the IDX files "
        f"{IDX_STEMS['train'][0]}[.gz] and {IDX_STEMS['train'][1]}[.gz] (optionally the t10k ones) in {looked}. "
        f"Point at the data with --data-dir DIR (data_dir= in Python), the environment variable "
        f"{DATA_DIR_ENV}, or pass the path of the .npz file itself; vaefast downloads nothing."
    )


def _find_idx(directory, stem):
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _read_npz(path, split):
    """(x, y, their names, part) of `split` from an .npz with x_train (y_train, x_test, y_test optional);
    without x_test the training arrays are returned with part = split, to be held out."""
    unreadable = (f"cannot read {path}: not an .npz archive of numeric arrays (numpy.savez(path, x_train=..., "
                  "y_train=..., x_test=..., y_test=...))")
    try:
        archive = np.load(path, allow_pickle=False)
    # numpy raises ValueError (pickled or text data), OSError, EOFError or BadZipFile, by what the bytes are.
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(unreadable) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{unreadable}; it holds a single array")
    with archive:
        if "x_train" not in archive.files:
            raise ValueError(f"{path} has no array 'x_train'; expected x_train/y_train/x_test/y_test, "
                             f"found {sorted(archive.files)}")
        has_test = "x_test" in archive.files
        key = split if has_test else "train"
        names = (f"x_{key} in {path}", f"y_{key} in {path}")
        try:
            x = archive[f"x_{key}"]
            y = archive[f"y_{key}"] if f"y_{key}" in archive.files else None
        # A damaged member: BadZipFile (CRC), zlib.error or EOFError (cut), ValueError (object arrays).
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"{unreadable}; {names[0]} or its labels cannot be read") from error
    return x, y, names, None if has_test else split


def read_idx(path):
    """An IDX file (LeCun's MNIST format, optionally gzipped) as a numpy array.

    Layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, each dimension as a
    big-endian int32, then the values in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:  # a damaged or cut .gz
        raise ValueError(f"cannot read {path}: a damaged or truncated gzip file") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (it must start with 0x00 0x00 <type> <ndim>)")
    ndim, dtype = raw[3], np.dtype(IDX_TYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: its header promises {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    count = math.prod(shape)
    if min(shape, default=0) < 0 or len(raw) < header + count * dtype.itemsize:
        raise ValueError(f"{path} is truncated or damaged: its header promises {list(shape)} values, "
                         f"{header + count * dtype.itemsize} bytes, and the file has {len(raw)}")
    values = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    return values.reshape(shape).copy()  # frombuffer's view is read-only; torch wants writable memory
