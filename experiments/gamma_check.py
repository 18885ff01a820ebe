"""python -m experiments.gamma_check RUN_DIR [--data mnist] [--data-dir DIR]

Is a learned gamma held back by Adam, or at its optimum? For a trained Gaussian-decoder VAE (RUN_DIR holds
its checkpoint.pt and metrics.jsonl, as experiments.two_stage_mnist writes them), prints the learned gamma
beside sqrt of the decoder's mean squared error over the training images at sampled codes: the gamma that
minimises the loss for this decoder (Rybkin et al.'s optimal gamma), which a learned gamma tracks once Adam
lets it. Then log gamma along training against Adam's limit, -(sum of lr) (Adam moves a parameter by about
lr a step). docs/results/two_stage_mnist_cpu60k/NOTES.md quotes its output for seed 0 of vae-learned.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch

from vaefast.data import load_dataset
from vaefast.models import VAE, VAEConfig
from vaefast.models.diagnostics import latent_codes
from vaefast.train import load_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.gamma_check", description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dir", help="a run folder with checkpoint.pt and metrics.jsonl")
    parser.add_argument("--data", default="mnist", help="the data set it was trained on (default mnist)")
    parser.add_argument("--data-dir", help="where 'mnist' lives (default $VAEFAST_DATA_DIR or ../shared/data)")
    parser.add_argument("--every", type=int, default=500, help="print log gamma every N steps (default 500)")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error(f"--every must be >= 1; got {args.every}")
    run_dir = Path(args.run_dir)
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    model = VAE(VAEConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    model.eval()
    if model.gamma is None:
        parser.error(f"{run_dir} holds a model without a Gaussian decoder's gamma")
    x, _ = load_dataset(args.data, data_dir=args.data_dir)
    codes = latent_codes(model, x, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        squared_error = sum(float((batch - model.decode(z)).double().pow(2).sum())
                            for batch, z in zip(x.split(1000), codes["z"].split(1000)))
    print(f"learned gamma {float(model.gamma):.4f}; sqrt(MSE) of the decoder over the {x.shape[0]} training "
          f"images: {math.sqrt(squared_error / x.numel()):.4f} at sampled codes, "
          f"{math.sqrt(float(codes['squared_error']) / x.numel()):.4f} at the encoder means")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    lr_sum = 0.0
    previous_step = 0
    print("step  log gamma  Adam's limit -(sum of lr)")
    records = [record for record in records if record.get("gamma") is not None and "lr" in record]
    for index, record in enumerate(records):
        lr_sum += record["lr"] * (record["step"] - previous_step)
        previous_step = record["step"]
        if record["step"] % args.every == 0 or index == len(records) - 1:
            print(f"{record['step']:>5}  {math.log(record['gamma']):>9.3f}  {-lr_sum:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
