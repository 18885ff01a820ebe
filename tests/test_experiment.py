"""experiments/two_stage_mnist at the tiny budget: it runs end to end and writes its tables, grids and plot."""
import csv

import pytest
import torch

from experiments import two_stage_mnist


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the script sets --threads (default 1)


def test_tiny_experiment_writes_tables_grids_and_plot(tmp_path):
    out = tmp_path / "results"
    assert two_stage_mnist.main(["--config", "tiny", "--seeds", "2", "--out", str(out),
                                 "--cache-dir", str(tmp_path / "cache")]) == 0
    for name in ("results.md", "results.csv", "runs.csv", "training.png", "histories.json",
                 *(f"samples_{model}.png" for model in two_stage_mnist.MODELS)):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 2 * len(two_stage_mnist.MODELS)
    with open(out / "results.csv") as f:
        summary = {row["model"]: row for row in csv.DictReader(f)}
    assert set(summary) == set(two_stage_mnist.MODELS)
    assert summary["two-stage"]["latent_mmd_stage2_mean"] != "" and summary["wae-mmd"]["gamma_mean"] == ""
    table = (out / "results.md").read_text()
    assert "| two-stage |" in table and "The paper's claims" in table
