"""experiments/two_stage_mnist at the tiny budget: it runs end to end, writes its tables, grids and plots, and
resumes after an interruption with the same numbers as an uninterrupted run."""
import csv

import pytest
import torch

import vaefast.train
from experiments import two_stage_mnist


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the script sets --threads (default 1)


def run_tiny(tmp_path, name, seeds=1, models=None):
    out, work = tmp_path / name, tmp_path / f"{name}-work"
    extra = [] if models is None else ["--models", models]
    assert two_stage_mnist.main(["--config", "tiny", "--seeds", str(seeds), "--out", str(out), "--work-dir",
                                 str(work), "--cache-dir", str(tmp_path / "cache"), *extra]) == 0
    with open(out / "runs.csv") as f:
        return out, list(csv.DictReader(f))


def test_tiny_experiment_writes_tables_grids_and_plots(tmp_path):
    out, runs = run_tiny(tmp_path, "results", seeds=2)
    for name in ("results.md", "results.csv", "runs.csv", "training.png", "singular_values.png", "histories.json",
                 *(f"samples_{model}.png" for model in two_stage_mnist.MODELS)):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert len(runs) == 2 * len(two_stage_mnist.MODELS)
    with open(out / "results.csv") as f:
        summary = {row["model"]: row for row in csv.DictReader(f)}
    assert set(summary) == set(two_stage_mnist.MODELS)
    assert summary["two-stage"]["latent_mmd_stage2_mean"] != "" and summary["wae-mmd"]["gamma_mean"] == ""
    assert float(summary["vae-optimal"]["gamma_mean"]) > 0  # the gamma in effect, not '-'
    for row in runs:  # a two-stage model's stage 1 reads exactly as the VAE it loaded
        if row["model"] in two_stage_mnist.STAGE1_OF:
            single = next(r for r in runs if r["model"] == two_stage_mnist.STAGE1_OF[row["model"]]
                          and r["seed"] == row["seed"])
            assert row["latent_mmd_stage1"] == single["latent_mmd_stage1"] and row["latent_mmd_stage2_se"] != ""
    table = (out / "results.md").read_text()
    assert "| two-stage-optimal |" in table and "claims, measured: optimal gamma" in table
    assert "status: complete" in table


def test_interrupted_experiment_resumes_to_the_same_numbers(tmp_path, monkeypatch, capsys):
    models = "vae-learned,two-stage,vae-optimal,two-stage-optimal"
    _, uninterrupted = run_tiny(tmp_path, "whole", models=models)

    # Interrupt after the second checkpoint: vae-learned is finished, two-stage has stage 2's epoch 1 of 2.
    written = []
    save_checkpoint = vaefast.train.save_checkpoint

    def save_then_stop(state, path):
        save_checkpoint(state, path)
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(vaefast.train, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tmp_path, "cut", models=models)
    monkeypatch.setattr(vaefast.train, "save_checkpoint", save_checkpoint)
    assert written[-1].name == "stage2.pt"
    capsys.readouterr()
    out, resumed = run_tiny(tmp_path, "cut", models=models)
    printed = capsys.readouterr()
    assert "done before: vae-learned seed 0" in printed.out and "resuming" in printed.err
    assert [r["model"] for r in resumed] == [r["model"] for r in uninterrupted]
    for whole, cut in zip(uninterrupted, resumed):
        assert {k: v for k, v in whole.items() if k != "seconds"} == {k: v for k, v in cut.items() if k != "seconds"}
    run_tiny(tmp_path, "cut", models=models)  # a third call finds every run done
    assert capsys.readouterr().out.count("done before") == 4 and "status: complete" in (out / "results.md").read_text()


def test_mnist_configs_refuse_to_run_without_mnist(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEFAST_DATA_DIR", raising=False)
    monkeypatch.setattr(two_stage_mnist, "MNIST_DIRS", ())
    with pytest.raises(SystemExit, match="needs MNIST"):
        two_stage_mnist.main(["--config", "cpu60k", "--out", str(tmp_path), "--data-dir", str(tmp_path)])


def test_gamma_check_compares_learned_gamma_with_the_decoders_optimum(tmp_path, capsys):
    """experiments.gamma_check on a tiny vae-learned run: it prints the checkpoint's own gamma, the decoder's
    sqrt(MSE) recomputed here independently, and Adam's limit as the running sum of the logged lr."""
    import json
    import math
    import re

    from experiments import gamma_check
    from vaefast.data import load_dataset
    from vaefast.models import VAE, VAEConfig
    from vaefast.models.diagnostics import latent_codes

    run_tiny(tmp_path, "results", models="vae-learned")
    run_dir = tmp_path / "results-work" / "vae-learned-s0"
    capsys.readouterr()
    assert gamma_check.main([str(run_dir), "--data", "digits", "--every", "1"]) == 0
    printed = capsys.readouterr().out
    checkpoint = vaefast.train.load_checkpoint(run_dir / "checkpoint.pt")
    model = VAE(VAEConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    model.eval()
    x, _ = load_dataset("digits")
    z = latent_codes(model, x, generator=torch.Generator().manual_seed(0))["z"]
    with torch.no_grad():
        mse = float((x - model.decode(z)).double().pow(2).mean())
    assert f"learned gamma {float(model.gamma):.4f}" in printed
    assert f"{math.sqrt(mse):.4f} at sampled codes" in printed
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    limit = sum(r["lr"] * (r["step"] - p["step"]) for p, r in zip([{"step": 0}] + records[:-1], records))
    row = re.search(rf"^\s*{last['step']}\s+(\S+)\s+(\S+)$", printed, re.M)
    assert row and float(row.group(1)) == pytest.approx(math.log(last["gamma"]), abs=1e-3)
    assert float(row.group(2)) == pytest.approx(-limit, abs=1e-3)
