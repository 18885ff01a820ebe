"""`vaefast demo`, the README's main job: its recipe's defaults, the README's command, a tiny run end to end,
and the verdict's arithmetic."""
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from vaefast import demo
from vaefast.cli import build_parser, main
from vaefast.metrics import frechet_distance
from vaefast.models import TwoStageConfig, TwoStageVAE, VAEConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # --threads


def test_defaults_are_the_one_minute_recipe():
    args = build_parser().parse_args(["demo", "--out", "x"])
    assert (args.data, args.gamma, args.epochs, args.stage2_epochs, args.lr, args.seeds, args.threads) == (
        "digits", "optimal", 30, None, 1e-3, 3, 1)


def test_readme_main_command_runs_the_demo_over_three_seeds():
    lines = (ROOT / "README.md").read_text().splitlines()
    command = lines[lines.index("<!-- main-command -->") + 1]
    assert "\n" not in command and command.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    vaefast_part = command.split(" && ")[-1]
    words = shlex.split(vaefast_part)
    assert words[0] == "vaefast"
    args = build_parser().parse_args(words[1:])
    assert args.command == "demo" and args.seeds == 3 and args.gamma == "optimal"


def test_tiny_demo_writes_its_table_figures_and_json(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--seeds", "2", "--epochs", "1", "--limit", "256", "--latent-dim", "4", "--stage2-width",
                 "16", "--code-draws", "2", "--no-features", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stage-2 MMD at most half of stage 1's beyond 2 standard errors:" in printed
    result = json.loads((out / "demo.json").read_text())
    assert [row["seed"] for row in result["seeds"]] == [0, 1]
    for row in result["seeds"]:
        assert row["gamma"] > 0 and row["latent_mmd_stage2_se"] > 0 and row["latent_mmd_prior_se"] > 0
    for name in ("samples_side_by_side.png", "singular_values.png", "seed0/stage2.pt", "seed1/stage2.pt",
                 "seed1/metrics.jsonl"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.png"))  # the grids' temporary files are gone


def test_bad_counts_are_refused_by_name(tmp_path, capsys):
    for flag in ("--seeds", "--epochs", "--code-draws", "--batch-size"):
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", flag, "0", "--out", str(tmp_path)])
        assert exit_info.value.code == 2
        assert f"argument {flag}: must be a positive integer; got 0" in capsys.readouterr().err


def test_verdict_is_half_of_stage_one_beyond_two_standard_errors():
    stage1 = np.array([0.010, 0.013, 0.016])

    def verdict(stage2):
        rows = [{"latent_mmd_stage1": a, "latent_mmd_stage2": b, "latent_mmd_prior": 0.0}
                for a, b in zip(stage1, stage2)]
        return demo.summarise(rows)

    clear = verdict(np.array([0.001, 0.0012, 0.0009]))
    margins = 0.5 * stage1 - np.array([0.001, 0.0012, 0.0009])
    assert clear["half_margin"] == pytest.approx(margins.mean())
    assert clear["half_margin_se"] == pytest.approx(margins.std(ddof=1) / math.sqrt(3))
    assert clear["stage2_at_most_half"] and clear["ratio"] == pytest.approx(0.0031 / 0.039)
    near_half = verdict(0.5 * stage1 + np.array([-0.0005, 0.0004, -0.0002]))  # below half on average, within noise
    assert near_half["half_margin"] > 0 and not near_half["stage2_at_most_half"]
    assert not verdict(0.6 * stage1)["stage2_at_most_half"]


def test_sample_distances_compare_both_samplers_on_the_same_features():
    torch.manual_seed(0)
    model = TwoStageVAE(TwoStageConfig(stage1=VAEConfig(data_shape=(1, 4, 4), latent_dim=3, hidden_dims=(8,)),
                                       stage2_width=8, stage2_depth=2)).eval()
    x_test = torch.rand(300, 1, 4, 4)

    def features(images):
        return images.flatten(1).double()

    distances = demo.sample_distances(model, features, x_test, seed=5, num_samples=200)
    with torch.no_grad():
        stage1 = model.stage1.sample(200, generator=torch.Generator().manual_seed(5))
    assert distances["fd_stage1"] == pytest.approx(frechet_distance(features(stage1), features(x_test)))
    assert set(distances) == {"fd_stage1", "fd_two_stage"} and distances["fd_two_stage"] != distances["fd_stage1"]
