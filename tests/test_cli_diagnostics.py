"""`vaefast eval`'s diagnostics: the gamma in effect for an optimal-gamma model, the latent MMD with its
standard error and noise floor, and the singular values of the codes (printed, plotted, in eval.json)."""
import json

import pytest
import torch

from vaefast.cli import main

QUICK = ["--data", "digits", "--epochs", "1", "--limit", "128", "--batch-size", "32", "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_eval_prints_optimal_gamma_mmd_errors_and_spectra(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "two-stage", *QUICK, "--gamma", "optimal", "--latent-dim", "4", "--stage2-width", "16",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out / "stage2.pt"), "--limit", "100", "--no-features", "--out",
                 str(tmp_path / "eval.json")]) == 0
    printed = capsys.readouterr().out
    gamma_line = next(line for line in printed.splitlines() if line.split()[:1] == ["gamma"])
    assert float(gamma_line.split()[1]) > 0  # the gamma in effect, not '-'
    mmd_line = next(line for line in printed.splitlines() if line.split()[:1] == ["latent_mmd_stage2"])
    assert "+-" in mmd_line and "latent_mmd_stage1_se" not in printed
    assert "stage 2: u" in printed and "prior sample" in printed
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["gamma"] == pytest.approx(float(gamma_line.split()[1]), rel=1e-3)
    assert result["latent_mmd_stage1_se"] > 0 and result["latent_mmd_prior_se"] > 0
    assert set(result["singular_values"]) == {"stage 1: mu", "stage 1: z", "stage 2: u", "prior sample"}
    assert len(result["singular_values"]["stage 2: u"]) == 4 and (tmp_path / "singular_values.png").is_file()
