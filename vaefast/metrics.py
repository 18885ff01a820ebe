"""vaefast.metrics: how good a generative model's samples and reconstructions are.

- Sample quality: the Frechet distance (FD; FID when the features are Inception's) and the kernel
  distance (KID, Binkowski et al. 2018) between generated and real images, on the features of a pluggable
  `FeatureExtractor` (a callable images [N, ...] -> features [N, F]).
- The default extractor for digit data is `ClassifierExtractor`: a small CNN that vaefast trains on the
  data set's training split (`train_classifier`), cached to a file keyed by data set, with its test
  accuracy reported; the features are its penultimate layer (128 units). Inception-v3 weights cannot be
  downloaded here; `InceptionExtractor.from_weights` accepts a user-supplied one (never required).
- Likelihood side: `reconstruction_mse`, `test_elbo` and `iwae_nll` (the IWAE bound of models.iwae).

Numbers computed on the classifier's features are comparable between models evaluated with the same
classifier file, not with the paper's Inception FIDs (different features, different scale).
"""
import hashlib
import math
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

import vaefast

# A callable images [N, *data_shape] -> features [N, F]; anything with that signature plugs in.
FeatureExtractor = Callable[[Tensor], Tensor]

# sqrtm of a product of two covariances comes back complex when rounding makes it slightly non-symmetric.
# An imaginary part below this (relative to the largest real entry; pytorch-fid uses an absolute 1e-3 on the
# diagonal) is rounding and is dropped. A larger one happens when the covariances are singular (fewer samples
# than feature dimensions, dead ReLU features) and sqrtm's Schur iteration loses accuracy; the trace is then
# recomputed from the symmetric PSD form tr((A^1/2 B A^1/2)^1/2), which equals tr((A B)^1/2), with a warning.
IMAGINARY_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------------------- distances

def frechet_distance_from_moments(mean_a, cov_a, mean_b, cov_b) -> float:
    """Frechet distance between N(mean_a, cov_a) and N(mean_b, cov_b): means [F], covariances [F, F].

    ``||mean_a - mean_b||^2 + tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2))``, in float64. The square root is
    scipy.linalg.sqrtm; its real part is kept when the imaginary part is rounding (see IMAGINARY_TOLERANCE).
    When the product is singular (sqrtm returns non-finite values) eps * I is added to both covariances,
    as pytorch-fid does.
    """
    mean_a, mean_b = (np.asarray(m, dtype=np.float64) for m in (mean_a, mean_b))
    cov_a, cov_b = (np.atleast_2d(np.asarray(c, dtype=np.float64)) for c in (cov_a, cov_b))
    if mean_a.shape != mean_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (mean_a.size, mean_a.size):
        raise ValueError(f"means must be [F] and covariances [F, F] for both sets; got {mean_a.shape}, "
                         f"{cov_a.shape}, {mean_b.shape}, {cov_b.shape}")
    with warnings.catch_warnings():
        # Singular products are common (dead ReLU features have zero variance) and handled below.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():
            offset = np.eye(cov_a.shape[0]) * 1e-6
            root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    trace_root = np.trace(root)
    if np.iscomplexobj(root):
        scale = max(1.0, float(np.abs(root.real).max()))
        imaginary = float(np.abs(root.imag).max())
        if imaginary > IMAGINARY_TOLERANCE * scale:
            warnings.warn(f"sqrtm(cov_a cov_b) has an imaginary part of {imaginary:.3g} (relative "
                          f"{imaginary / scale:.3g} > {IMAGINARY_TOLERANCE}): singular covariances? (use more "
                          "samples than feature dimensions); taking the trace from the symmetric form instead",
                          RuntimeWarning, stacklevel=2)
            trace_root = _trace_sqrt_product(cov_a, cov_b)
        else:
            trace_root = trace_root.real
    difference = mean_a - mean_b
    return float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr((A B)^1/2) = tr((A^1/2 B A^1/2)^1/2) for symmetric PSD A, B: eigenvalues of a symmetric matrix,
    clipped at 0 (rounding makes tiny ones negative)."""
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum())


def _moments(features) -> tuple[np.ndarray, np.ndarray]:
    array = features.detach().double().cpu().numpy() if isinstance(features, Tensor) else np.asarray(features, np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"features must be [N, F] with N >= 2; got shape {list(array.shape)}")
    return array.mean(axis=0), np.cov(array, rowvar=False)


def frechet_distance(features_a, features_b) -> float:
    """FD between the Gaussians fitted to two feature sets [N, F] and [M, F] (tensors or arrays).

    Means and unbiased covariances (divided by N - 1) in float64, then frechet_distance_from_moments. The
    estimate is biased upwards for finite N (about tr terms of order F / N), so compare models at equal N.
    """
    return frechet_distance_from_moments(*_moments(features_a), *_moments(features_b))


def kernel_inception_distance(features_a, features_b, *, subsets: int = 100, subset_size: int = 1000,
                              generator: Optional[torch.Generator] = None) -> tuple[float, float]:
    """KID (Binkowski et al., 2018) between feature sets [N, F] and [M, F] -> (mean, std) over subsets.

    Each of `subsets` rounds draws subset_size rows of each set without replacement (subset_size is capped
    at min(N, M)) and takes the unbiased MMD^2 with the polynomial kernel (a.b / F + 1)^3 (vaefast.mmd's
    "poly"). The unbiased estimate can be negative when the sets match; its mean is ~0 then.
    """
    a = torch.as_tensor(features_a).double()
    b = torch.as_tensor(features_b).double()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, F] and [M, F]; got {list(a.shape)} and {list(b.shape)}")
    size = min(subset_size, a.shape[0], b.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 rows in each set; got {a.shape[0]} and {b.shape[0]}")
    generator = generator or torch.Generator().manual_seed(0)
    values = []
    for _ in range(subsets):
        rows_a = torch.randperm(a.shape[0], generator=generator)[:size]
        rows_b = torch.randperm(b.shape[0], generator=generator)[:size]
        values.append(float(vaefast.mmd(a[rows_a], b[rows_b], kernel="poly", unbiased=True)))
    values = np.asarray(values)
    return float(values.mean()), float(values.std(ddof=1)) if subsets > 1 else 0.0


# ------------------------------------------------------------------------------------ the classifier

class DigitClassifier(nn.Module):
    """A small CNN for [N, C, H, W] images with H, W divisible by 4 (8x8 digits, 28x28 MNIST):
    conv 16 3x3 + ReLU + maxpool 2 -> conv 32 3x3 + ReLU + maxpool 2 -> FC 128 + ReLU (the features) ->
    FC classes. 16/32 channels: about 25 s per MNIST epoch on one CPU core; 99.2% test accuracy
    after train_classifier's default 5 epochs."""

    def __init__(self, data_shape: tuple[int, int, int], num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        channels, height, width = data_shape
        self.data_shape = tuple(data_shape)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [N, 16, H/2, W/2]
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [N, 32, H/4, W/4]
            nn.Flatten(), nn.Linear(32 * (height // 4) * (width // 4), feature_dim), nn.ReLU(),  # [N, 128]
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x.reshape(-1, *self.data_shape)))


def train_classifier(x: Tensor, y: Tensor, *, seed: int = 0, epochs: int = 5, batch_size: int = 128,
                     lr: float = 2e-3, cache_path: Union[str, Path, None] = None,
                     x_test: Optional[Tensor] = None, y_test: Optional[Tensor] = None) -> tuple[DigitClassifier, dict]:
    """(classifier in eval mode, info) trained with Adam on images x [N, C, H, W] in [0, 1], labels y [N],
    its learning rate annealed from lr to 0 along a cosine over all steps (on MNIST's 60k training images,
    5 epochs reach 99.2% test accuracy where a constant 1e-3 reached 98.5%).

    Deterministic under `seed`: initial weights and batch order come from generators seeded with it (and
    the CPU kernels used are deterministic), so two calls give identical weights. With cache_path, a file
    there holding the same settings is loaded instead of training, and a fresh result is saved there.
    info: seed, epochs, num_classes, train examples, and test_accuracy when x_test / y_test are given.
    """
    settings = {"seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr, "schedule": "cosine",
                "data_shape": list(x.shape[1:]), "train_examples": int(x.shape[0]),
                "data_hash": _tensor_hash(x, y)}
    if cache_path is not None and Path(cache_path).is_file():
        cached = _cached_classifier(cache_path, settings, tuple(x.shape[1:]))
        if cached is not None:
            return cached
    num_classes = int(y.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(tuple(x.shape[1:]), num_classes)
    order_generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * math.ceil(x.shape[0] / batch_size))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=order_generator)
        for start in range(0, x.shape[0], batch_size):
            index = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    info = {"seed": seed, "epochs": epochs, "num_classes": num_classes, "train_examples": int(x.shape[0])}
    if x_test is not None and y_test is not None:
        info["test_accuracy"] = classifier_accuracy(model, x_test, y_test)
    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"settings": settings, "info": info, "model": model.state_dict()}, cache_path)
    return model, info


@torch.no_grad()
def classifier_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of x [N, ...] that the classifier labels as y [N]."""
    correct = sum(int((model(batch).argmax(dim=1) == labels).sum())
                  for batch, labels in zip(x.split(batch_size), y.split(batch_size)))
    return correct / x.shape[0]


def _tensor_hash(*tensors: Optional[Tensor]) -> str:
    digest = hashlib.sha1()
    for tensor in tensors:
        if tensor is not None:
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class ClassifierExtractor:
    """FeatureExtractor from a trained DigitClassifier: images [N, C, H, W] -> penultimate layer [N, 128]."""

    def __init__(self, classifier: DigitClassifier, info: Optional[dict] = None, batch_size: int = 1000):
        self.classifier = classifier.eval()
        self.info = info or {}
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        reference = next(self.classifier.parameters())
        images = images.to(reference.device, reference.dtype)
        return torch.cat([self.classifier.features(batch.reshape(-1, *self.classifier.data_shape))
                          for batch in images.split(self.batch_size)])

    @classmethod
    def for_dataset(cls, data: str, *, data_dir=None, cache_dir: Union[str, Path] = "~/.cache/vaefast",
                    seed: int = 0, epochs: Optional[int] = None, limit: Optional[int] = None) -> "ClassifierExtractor":
        """The classifier for a named data set ("digits", "mnist" or a path), trained once on its training
        split and cached in cache_dir as classifier-<data>-<settings>.pt; reports its test accuracy.
        epochs: default at least 5 and enough passes for about 100k images (5 on MNIST's 60k, 70 on the
        1438 digits)."""
        from .data import load_dataset

        x, y = load_dataset(data, data_dir=data_dir, split="train", limit=limit)
        if y is None:
            raise ValueError(f"the feature classifier for FD and KID trains on labels, and {data} has none; "
                             "skip FD/KID (--no-features) or give an Inception network (--inception)")
        epochs = epochs or max(5, math.ceil(100000 / x.shape[0]))
        x_test, y_test = load_dataset(data, data_dir=data_dir, split="test")
        key = f"{Path(str(data)).stem}-s{seed}-e{epochs}-n{x.shape[0]}"
        cache_path = Path(cache_dir).expanduser() / f"classifier-{key}.pt"
        classifier, info = train_classifier(x, y, seed=seed, epochs=epochs, cache_path=cache_path,
                                            x_test=x_test, y_test=y_test)
        return cls(classifier, {**info, "cache_path": str(cache_path)})


def _cached_classifier(cache_path, settings, data_shape):
    """(classifier, info) from cache_path when it holds one trained with `settings`; None when it holds
    another, or is damaged (a run killed while saving it): then it is trained again and overwritten."""
    try:
        cached = torch.load(cache_path, map_location="cpu", weights_only=True)
        if cached.get("settings") != settings:
            return None
        model = DigitClassifier(data_shape, cached["info"]["num_classes"])
        model.load_state_dict(cached["model"])
    # Damaged bytes raise whatever torch.load meets first (RuntimeError, EOFError, KeyError, UnpicklingError,
    # ...), a foreign file AttributeError or KeyError; for a cache each means "train again".
    except Exception:
        return None
    return model.eval(), cached["info"]


class InceptionExtractor:
    """FeatureExtractor around a user-supplied Inception-v3 (or any network) that maps images to pool
    features [N, 2048]. Never required: vaefast ships no Inception weights and cannot download them.

    torchvision (which defines Inception-v3) is not assumed to exist, so `from_weights` takes either
    - a torch.nn.Module already holding its weights (for example pytorch-fid's `InceptionV3([3])`, whose
      forward returns a list: the first element is used), or
    - the path of a TorchScript file (`torch.jit.load`), e.g. one exported with
      `torch.jit.script(pytorch_fid.inception.InceptionV3([3])).save("inception.pt")`, or
    - the path of a state dict (e.g. pt_inception-2015-12-05-6726825d.pth) together with `model`, an
      instance of the matching architecture to load it into.
    Grey images are repeated to 3 channels and resized to 299x299 (bilinear); pixel values stay in [0, 1]
    (pytorch-fid's module normalises internally).
    """

    def __init__(self, network: nn.Module, batch_size: int = 100, resize: Optional[int] = 299):
        self.network = network.eval()
        self.batch_size = batch_size
        self.resize = resize

    @classmethod
    def from_weights(cls, source: Union[str, Path, nn.Module], model: Optional[nn.Module] = None,
                     **kwargs) -> "InceptionExtractor":
        if isinstance(source, nn.Module):
            return cls(source, **kwargs)
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no Inception file at {path}")
        if model is not None:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return cls(model, **kwargs)
        try:
            return cls(torch.jit.load(str(path), map_location="cpu"), **kwargs)
        except RuntimeError as error:
            raise ValueError(f"{path} is not a TorchScript file; for a state dict pass model=, an instance of the "
                             "Inception-v3 definition it belongs to (torchvision's or pytorch-fid's)") from error

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        features = []
        for batch in images.split(self.batch_size):
            if batch.dim() == 2:  # flat square images
                side = math.isqrt(batch.shape[1])
                batch = batch.reshape(-1, 1, side, side)
            if batch.shape[1] == 1:
                batch = batch.repeat(1, 3, 1, 1)
            if self.resize is not None:
                batch = nn.functional.interpolate(batch, size=(self.resize, self.resize), mode="bilinear",
                                                  align_corners=False)
            output = self.network(batch)
            output = output[0] if isinstance(output, (list, tuple)) else output
            features.append(output.reshape(output.shape[0], -1))  # [B, 2048, 1, 1] -> [B, 2048]
        return torch.cat(features)


# ------------------------------------------------------------------------------- likelihood metrics

def _data_vae(model):
    from .models import TwoStageVAE

    return model.stage1 if isinstance(model, TwoStageVAE) else model


@torch.no_grad()
def reconstruction_mse(model, x: Tensor, batch_size: int = 256) -> float:
    """Mean squared error per pixel between x [N, ...] and the decoder mean at the posterior mean
    (a WAE's deterministic code); eval mode. A TwoStageVAE reconstructs through stage 1."""
    from .models import WAE
    from .models.networks import evaluating

    model = _data_vae(model)
    total = 0.0
    with evaluating(model):
        for batch in x.split(batch_size):
            if isinstance(model, WAE):
                x_hat = model.decode(model.encode(batch))
            else:
                mu, _ = model.posterior(batch)
                x_hat = model.mean(model.decoder_output(mu))
            total += float((batch - x_hat).double().pow(2).sum())
    return total / x.numel()


@torch.no_grad()
def test_elbo(model, x: Tensor, batch_size: int = 256) -> float:
    """Mean ELBO per example (nats; higher is better) of x [N, ...]: the IWAE bound with one sample, an
    unbiased estimate of E_q[log p(x|z)] - KL. A TwoStageVAE's is stage 1's (the data likelihood)."""
    return iwae_nll(model, x, 1, batch_size=batch_size) * -1.0


@torch.no_grad()
def iwae_nll(model, x: Tensor, num_samples: int, batch_size: int = 256) -> float:
    """Mean negative IWAE bound (an upper bound on -log p(x), nats) of x [N, ...] with num_samples draws;
    eval mode. For a learned or fixed gamma this is a continuous density: it can be negative."""
    from .models import iwae_bound
    from .models.networks import evaluating

    vae = _data_vae(model)
    total = 0.0
    with evaluating(vae):
        for batch in x.split(max(1, batch_size // num_samples)):
            total += float(iwae_bound(vae, batch, num_samples).double().sum())
    return -total / x.shape[0]


# --------------------------------------------------------------------------------------- everything

@torch.no_grad()
def sample_quality(model, extractor: FeatureExtractor, x_real: Tensor, *, num_samples: Optional[int] = None,
                   seed: int = 0, kid_subsets: int = 100, kid_subset_size: int = 1000) -> dict:
    """FD and KID (mean, std) between num_samples model samples (default len(x_real)) and x_real."""
    num_samples = num_samples or x_real.shape[0]
    reference = next(model.parameters())
    generator = torch.Generator(reference.device).manual_seed(seed)
    samples = torch.cat([model.sample(min(1000, num_samples - start), generator=generator)
                         for start in range(0, num_samples, 1000)])
    fake, real = extractor(samples), extractor(x_real)
    kid_mean, kid_std = kernel_inception_distance(fake, real, subsets=kid_subsets, subset_size=kid_subset_size,
                                                  generator=torch.Generator().manual_seed(seed))
    return {"fd": frechet_distance(fake, real), "kid": kid_mean, "kid_std": kid_std}


def evaluate(model, x_test: Tensor, extractor: Optional[FeatureExtractor] = None, *, iwae_samples: int = 50,
             num_samples: Optional[int] = None, seed: int = 0) -> dict:
    """Every metric of a model on test images x_test: FD/KID (when an extractor is given), reconstruction
    MSE, test ELBO and IWAE NLL (VAE-type models), and models.diagnostics."""
    from .models import WAE, diagnostics

    result = {}
    if extractor is not None:
        result.update(sample_quality(model, extractor, x_test, num_samples=num_samples, seed=seed))
    result["reconstruction_mse"] = reconstruction_mse(model, x_test)
    if not isinstance(model, WAE):
        result["test_elbo"] = test_elbo(model, x_test)
        result[f"iwae_nll_k{iwae_samples}"] = iwae_nll(model, x_test, iwae_samples)
    diag = diagnostics(model, x_test, generator=torch.Generator(x_test.device).manual_seed(seed))
    diag.pop("reconstruction_mse", None)  # the same number as above
    result.update(diag)
    return result


__all__ = ["ClassifierExtractor", "DigitClassifier", "FeatureExtractor", "IMAGINARY_TOLERANCE",
           "InceptionExtractor", "classifier_accuracy", "evaluate", "frechet_distance",
           "frechet_distance_from_moments", "iwae_nll", "kernel_inception_distance", "reconstruction_mse",
           "sample_quality", "test_elbo", "train_classifier"]
