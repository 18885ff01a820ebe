"""The `vaefast` command: train, sample, eval, info. Also reachable as `python -m vaefast`.

    vaefast train two-stage --data digits --epochs 30 --lr 1e-3 --out runs/digits
    vaefast sample runs/digits/stage2.pt -n 64 --out grid.png
    vaefast eval runs/digits/stage2.pt
    vaefast info
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch

from .checks import LARGEST_SIZE

SAMPLE_GRID = "samples.png"
EVAL_EXAMPLES = 2000  # test examples `train` evaluates on when it is done (eval's --limit default)


def main(argv=None):
    """Runs a command; returns its exit status: 0, 2 for a bad input (a flag, as argparse reports it, or a
    file or data set: one line, `vaefast COMMAND: error: ...`), 1 for a training run that diverged."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .train import TrainingDiverged

    try:
        return args.run(args)
    except TrainingDiverged as error:
        return report(args.command, error, status=1)
    # ValueError: vaefast's checks of files, data sets and checkpoints; OSError: the file system's refusals
    # (a missing file, an --out that is a directory, no space left).
    except (OSError, ValueError) as error:
        return report(args.command, error, status=2)


def report(command, error, *, status):
    """Prints `vaefast COMMAND: error: MESSAGE` on one line (a message quoting another library's text may
    hold line breaks) and returns status."""
    print(f"vaefast {command}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return status


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return _not_huge(value)


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0; got {value}")
    return _not_huge(value)


def _not_huge(value):
    # A count or size past 2^31 is a slip of the keyboard (MNIST has 2^16 examples) that would overflow
    # torch's size arithmetic or loop for ever (vaefast.checks.LARGEST_SIZE).
    if value > LARGEST_SIZE:
        raise argparse.ArgumentTypeError(f"must be at most {LARGEST_SIZE}; got {value}")
    return value


def seed(text):
    value = int(text)
    if not 0 <= value < 2**63:  # torch seeds are 64-bit, and each process seeds with seed + rank
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^63); got {value}")
    return value


def positive_float(text):
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number; got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text}")
    return value


def gamma(text):
    if text in ("learned", "optimal"):
        return text
    try:
        return positive_float(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"must be 'learned', 'optimal' or a positive number; got {text!r}") from None


def device(text):
    try:
        parsed = torch.device(text)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be 'cpu', 'cuda' or 'cuda:N'; got {text!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} asks for CUDA, which this torch build or machine lacks")
    return text


def build_parser():
    parser = argparse.ArgumentParser(prog="vaefast", description="Train, sample and evaluate VAEs, WAEs and "
                                     "Two-Stage VAEs on vaefast's fused ops.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model and write checkpoints, metrics and sample grids",
                                description="Train a model. Writes OUT/checkpoint.pt (stage1.pt and stage2.pt "
                                "for two-stage), OUT/metrics.jsonl, sample grids, and prints the diagnostics.")
    train.add_argument("kind", choices=["vae", "wae", "two-stage"], help="the model")
    train.add_argument("--data", default="digits", help="'digits' (built in), 'mnist', or the path of an .npz "
                       "(x_train/y_train/x_test/y_test) or a directory of IDX files (default: digits)")
    train.add_argument("--data-dir", help="where 'mnist' lives (mnist.npz or IDX files; default $VAEFAST_DATA_DIR)")
    train.add_argument("--limit", type=positive_int, help="use only the first N training examples (quick runs)")
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--epochs", type=positive_int, default=400, help="epochs (stage 1 for two-stage; official: 400)")
    train.add_argument("--stage2-epochs", type=positive_int, help="two-stage: stage-2 epochs (default: 2 x --epochs, "
                       "the official 800 for 400)")
    train.add_argument("--batch-size", type=positive_int, default=64, help="batch size per process (official: 64)")
    train.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate (official: 1e-4)")
    train.add_argument("--lr-halve-every", type=non_negative_int, help="halve lr every K epochs (default: the "
                       "official 150 for stage 1 and single models, 300 for stage 2); 0 keeps it constant")
    train.add_argument("--latent-dim", type=positive_int, help="latent dimension (default: 64, the paper's, or a "
                       "quarter of the data's dimension when that is smaller: 16 for 8x8 digits)")
    train.add_argument("--architecture", choices=["mlp", "infogan", "resnet"],
                       help="networks (default: infogan for 28x28 and 32x32 images, mlp otherwise)")
    train.add_argument("--gamma", type=gamma, default="learned",
                       help="vae/two-stage decoder std: learned, optimal or a number")
    train.add_argument("--mmd-weight", type=non_negative_float, default=10.0,
                       help="wae: lambda, the weight of the MMD term")
    train.add_argument("--stage2-width", type=positive_int, help="two-stage: stage-2 layer width (default: 16 x the "
                       "latent dimension up to 1024: the paper's 1024 for kappa = 64, 256 for the digits' 16)")
    train.add_argument("--stage2-depth", type=positive_int, default=3, help="two-stage: stage-2 layers (paper: 3)")
    train.add_argument("--seed", type=seed, default=0, help="seeds the initial weights, data order and noise")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    train.add_argument("--checkpoint-every", type=positive_int,
                       help="epochs between checkpoints (always one at the end)")
    train.add_argument("--log-every", type=positive_int, default=50, help="steps between metric records")
    train.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    train.add_argument("--compile", action="store_true", help="torch.compile the forward pass")
    train.add_argument("--amp", action="store_true", help="bf16 autocast of the forward pass (meant for CUDA; works on CPU, where it is slower unless the CPU has bf16 matmul instructions)")
    train.add_argument("--threads", type=positive_int, help="CPU threads (torch.set_num_threads); small models such as "
                       "the digits' MLPs run fastest on 1, and a second thread on busy cores can cost 5x")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=run_train)

    sample = commands.add_parser("sample", help="draw samples from a checkpoint into a PNG grid",
                                 description="Draw samples from a trained model and save them as one PNG grid.")
    sample.add_argument("checkpoint", help="a checkpoint written by `vaefast train`")
    sample.add_argument("-n", "--num-samples", type=positive_int, default=64)
    sample.add_argument("--out", default="grid.png", help="PNG path, ending in .png (default: grid.png)")
    sample.add_argument("--seed", type=seed, default=0)
    sample.add_argument("--device", type=device, default="cpu")
    sample.set_defaults(run=run_sample)

    evaluate = commands.add_parser("eval", help="print a checkpoint's metrics and write eval.json",
                                   description="Metrics of a trained model on a data split: FD and KID of its "
                                   "samples against the split (features of a CNN classifier vaefast trains on the "
                                   "training split and caches; or --inception FILE), reconstruction MSE, ELBO, "
                                   "IWAE bound, and the diagnostics (gamma, active latent dimensions, latent MMD "
                                   "to N(0, I) per stage); prints a table and writes eval.json next to the "
                                   "checkpoint.")
    evaluate.add_argument("checkpoint", help="a checkpoint written by `vaefast train`")
    evaluate.add_argument("--data", help="data set (default: the one the run was trained on, from run.json)")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--split", default="test", choices=["train", "test"])
    evaluate.add_argument("--limit", type=positive_int, default=EVAL_EXAMPLES,
                          help=f"first N examples (default {EVAL_EXAMPLES})")
    evaluate.add_argument("--out", help="JSON path (default: eval.json beside the checkpoint)")
    evaluate.add_argument("--device", type=device, default="cpu")
    evaluate.add_argument("--iwae-samples", type=positive_int, default=50, help="k of the IWAE bound (default 50)")
    evaluate.add_argument("--no-features", action="store_true", help="skip FD and KID (no classifier needed)")
    evaluate.add_argument("--inception", help="FD/KID on a user-supplied Inception-v3: a TorchScript file mapping "
                          "images to pool features (see vaefast.metrics.InceptionExtractor); never required")
    evaluate.add_argument("--cache-dir", default="~/.cache/vaefast", help="where the feature classifier is cached")
    evaluate.set_defaults(run=run_eval)

    from .demo import add_parser as add_demo_parser

    add_demo_parser(commands)

    info = commands.add_parser("info", help="print which kernels were compiled (JSON)",
                               description="Print vaefast.backend_info() as JSON.")
    info.set_defaults(run=run_info)
    return parser


def run_train(args):
    from .data import load_dataset
    from .models import build
    from .train import TrainConfig, save_grid, train, train_two_stage

    if args.kind == "wae" and args.batch_size < 2:
        raise ValueError(f"a WAE needs --batch-size >= 2 (its MMD estimate compares latents pairwise); got "
                         f"{args.batch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    x, labels = load_dataset(args.data, data_dir=args.data_dir, limit=args.limit)
    # The test split is evaluated after training; loaded now, a bad one stops the run before it trains.
    x_test, _ = load_dataset(args.data, data_dir=args.data_dir, split="test", limit=EVAL_EXAMPLES)
    if x_test.shape[1:] != x.shape[1:]:
        raise ValueError(f"the test split's examples are {list(x_test.shape[1:])}, the training split's "
                         f"{list(x.shape[1:])}")
    check_evaluable(x_test, f"{args.data}'s test split")
    torch.manual_seed(args.seed)  # the initial weights
    model = build(args.kind, model_config(args, tuple(x.shape[1:])))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"kind": args.kind, "data": args.data, "data_dir": args.data_dir,
                                              "argv": sys.argv[1:]}, indent=2) + "\n")

    def stage_config(epochs, official_halving):
        halving = official_halving if args.lr_halve_every is None else (args.lr_halve_every or None)
        return TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, lr_halve_every=halving,
                           device=args.device, amp=args.amp, compile=args.compile, log_every=args.log_every,
                           checkpoint_every=args.checkpoint_every, seed=args.seed, out_dir=str(out),
                           resume=args.resume, progress=not args.no_progress)

    if args.kind == "two-stage":
        train_two_stage(model, x, stage_config(args.epochs, 150),
                        stage_config(args.stage2_epochs or 2 * args.epochs, 300))
        checkpoint = out / "stage2.pt"
        grids = [out / "samples_stage1.png", out / "samples_stage2.png"]
    else:
        train(model, x, stage_config(args.epochs, 150))
        with torch.no_grad():
            save_grid(model.sample(64, generator=torch.Generator(args.device).manual_seed(args.seed)), out / SAMPLE_GRID)
        checkpoint = out / "checkpoint.pt"
        grids = [out / SAMPLE_GRID]
    print(f"checkpoint: {checkpoint}\nsample grids: {', '.join(str(g) for g in grids)}")
    evaluate_and_report(model, x_test, args.data, "test", args.device, out / "eval.json")
    return 0


def model_config(args, data_shape):
    """The model's config dict from the command line and the data's shape."""
    features = 1
    for size in data_shape:
        features *= size
    latent_dim = args.latent_dim or min(64, max(2, features // 4))
    architecture = args.architecture or (
        "infogan" if len(data_shape) == 3 and data_shape[1:] in ((28, 28), (32, 32)) else "mlp")
    networks = {"data_shape": data_shape, "latent_dim": latent_dim, "architecture": architecture}
    if args.kind == "wae":
        return {**networks, "mmd_weight": args.mmd_weight}
    gamma = args.gamma  # "learned", "optimal" or a positive float (the gamma argparse type)
    if args.kind == "vae":
        return {**networks, "gamma": gamma}
    return {"stage1": {**networks, "gamma": gamma}, "stage2_width": args.stage2_width or min(1024, 16 * latent_dim),
            "stage2_depth": args.stage2_depth}


def run_sample(args):
    from .train import load_model, save_grid

    model, _ = load_model(args.checkpoint, args.device)
    with torch.no_grad():
        images = model.sample(args.num_samples, generator=torch.Generator(args.device).manual_seed(args.seed))
    save_grid(images, args.out)
    print(f"{args.num_samples} samples -> {args.out}")
    return 0


def run_eval(args):
    from .data import load_dataset
    from .train import load_model

    model, _ = load_model(args.checkpoint, args.device)
    data, data_dir = args.data, args.data_dir
    run_file = Path(args.checkpoint).parent / "run.json"
    if data is None:
        if not run_file.is_file():
            raise ValueError(f"no --data given and no {run_file} to read the training data set from")
        try:
            run = json.loads(run_file.read_text())
            data, data_dir = str(run["data"]), data_dir or run.get("data_dir")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{run_file} is not the run.json `vaefast train` writes; name the data with "
                             "--data") from error
    x, _ = load_dataset(data, data_dir=data_dir, split=args.split, limit=args.limit)
    shape = data_shape(model)
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"{args.checkpoint} models {list(shape)} examples; {data}'s {args.split} split holds "
                         f"{list(x.shape[1:])}")
    check_evaluable(x, f"{data}'s {args.split} split" + (f" (--limit {args.limit})" if args.limit else ""))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval.json"
    extractor = None
    if args.inception:
        from .metrics import InceptionExtractor

        extractor = InceptionExtractor.from_weights(args.inception)
    elif not args.no_features:
        from .metrics import ClassifierExtractor

        extractor = ClassifierExtractor.for_dataset(data, data_dir=data_dir, cache_dir=args.cache_dir)
        print(f"features: CNN classifier ({extractor.info['cache_path']}), test accuracy "
              f"{extractor.info['test_accuracy']:.4f}")
    evaluate_and_report(model, x, data, args.split, args.device, out, extractor=extractor,
                        iwae_samples=args.iwae_samples)
    return 0


def check_evaluable(x, what):
    """The evaluation's latent MMD is an unbiased estimate, which needs two examples at least."""
    if x.shape[0] < 2:
        raise ValueError(f"evaluation needs at least 2 examples; {what} has {x.shape[0]}")


def data_shape(model):
    """One example's shape, as the model (a vaefast model, or a TwoStageVAE's stage 1) takes it."""
    config = model.config
    return tuple(getattr(config, "stage1", config).data_shape)


def evaluate_and_report(model, x, data, split, device, out, *, extractor=None, iwae_samples=50):
    """Prints the metrics of `model` on x, a split of the data set named `data` (vaefast.metrics.evaluate:
    FD/KID when an extractor is given, reconstruction MSE, ELBO, IWAE bound, diagnostics with the latent
    MMD's standard error) and writes them to `out` as JSON with the codes' singular values, plotted in
    singular_values.png beside it."""
    from .metrics import evaluate
    from .models import code_spectra
    from .plots import plot_singular_values

    x = x.to(device, next(model.parameters()).dtype)
    result = evaluate(model, x, extractor, iwae_samples=iwae_samples)
    print(f"metrics on {data} ({split}, {x.shape[0]} examples{'' if extractor is None else ', as many samples'}):")
    width = max(len(name) for name in result)
    for name, value in result.items():
        if name.endswith("_se"):  # shown beside its estimate
            continue
        shown = "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
        if result.get(f"{name}_se") is not None:
            shown += f" +- {result[name + '_se']:.2g}"
        if name == "latent_mmd_prior":
            shown += "  (the same estimator on N(0, I) samples: the noise floor)"
        print(f"  {name:<{width}}  {shown}")
    spectra = code_spectra(model, x, generator=torch.Generator(x.device).manual_seed(0))
    spectrum_plot = Path(out).with_name("singular_values.png")
    plot_singular_values(spectra, spectrum_plot, title=f"singular values of the codes / sqrt(n), {data} {split}")
    print(f"  singular values of the codes (largest, smallest; N(0, I) gives values near 1), plot: {spectrum_plot}")
    for label, values in spectra.items():
        print(f"    {label:<13} {float(values[0]):.3g}, {float(values[-1]):.3g}")
    Path(out).write_text(json.dumps({"data": str(data), "split": split, "examples": x.shape[0], **result,
                                     "singular_values": {k: v.tolist() for k, v in spectra.items()}},
                                    indent=2) + "\n")
    print(f"written: {out}")


def run_info(args):
    from . import backend_info

    print(json.dumps(backend_info(), indent=2))
    return 0
