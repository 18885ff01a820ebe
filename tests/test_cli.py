"""The vaefast command: smoke runs of train/sample/eval/info as subprocesses on the digits (1 epoch, --limit),
the other kinds and the error paths in-process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaefast.cli import main
from vaefast.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--data", "digits", "--epochs", "1", "--limit", "128", "--batch-size", "32", "--no-progress", "--threads", "1"]


def vaefast_command(*args):
    environment = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "vaefast", *map(str, args)], cwd=ROOT, env=environment,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # --threads in the in-process runs


def test_train_sample_eval_two_stage(tmp_path):
    out = tmp_path / "run"
    printed = vaefast_command("train", "two-stage", *QUICK, "--latent-dim", "4", "--stage2-width", "32",
                              "--out", out)
    assert "latent_mmd_stage2" in printed and "gamma_z" in printed
    for name in ("stage1.pt", "stage2.pt", "metrics.jsonl", "samples_stage1.png", "samples_stage2.png",
                 "eval.json", "run.json"):
        assert (out / name).is_file(), name
    assert load_checkpoint(out / "stage2.pt")["config"]["stage2_width"] == 32

    vaefast_command("sample", out / "stage2.pt", "-n", "9", "--out", tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0

    printed = vaefast_command("eval", out / "stage2.pt", "--limit", "50", "--out", tmp_path / "eval.json")
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["data"] == "digits" and result["examples"] == 50 and "reconstruction_mse" in printed
    assert {"fd", "kid", "test_elbo", "iwae_nll_k50", "latent_mmd_stage2"} <= set(result) and "test accuracy" in printed


def test_info_prints_backend_json():
    info = json.loads(vaefast_command("info"))
    assert "compiled" in info and "ops" in info


@pytest.mark.parametrize("kind", ["vae", "wae"])
def test_train_single_models_and_resume(tmp_path, kind, capsys):
    assert main(["train", kind, *QUICK, "--latent-dim", "4", "--out", str(tmp_path)]) == 0
    assert load_checkpoint(tmp_path / "checkpoint.pt")["kind"] == kind
    assert (tmp_path / "samples.png").is_file() and "active_dimensions" in capsys.readouterr().out
    assert main(["train", kind, *QUICK, "--latent-dim", "4", "--out", str(tmp_path), "--resume",
                 "--epochs", "2"]) == 0
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2
    assert "resuming" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["eval"], ["info"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main([*command, "--help"])
    assert exit_code.value.code == 0 and "usage: vaefast" in capsys.readouterr().out


def test_clear_errors(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["train", "vae", "--data", "no-such-set", "--out", str(tmp_path)]) == 2
    assert "unknown data set 'no-such-set'" in capsys.readouterr().err
