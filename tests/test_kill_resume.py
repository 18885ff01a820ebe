"""A two-stage training killed with SIGKILL at random moments and resumed each time ends as an uninterrupted
run does: the same checkpoints, bit for bit, and the same metrics.jsonl records (timings aside), none twice.

The killed runs are real `python -m vaefast train` processes; the uninterrupted run and the last resume
run in-process (each python start costs seconds on a loaded machine). Kill points are drawn afresh every
run: a record count to wait for (the log shows how far training is), then up to 20 ms more.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.test_train import TinyVAE, config, tiny_data
from vaefast.cli import main
from vaefast.train import cut_metrics, load_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
# 512 digits in batches of 16: 32 steps an epoch, a record every 4 steps (8 an epoch), a checkpoint every
# epoch; 3 + 4 epochs make 56 records, most of them logged between two checkpoints.
ARGS = ["train", "two-stage", "--data", "digits", "--limit", "512", "--batch-size", "16", "--epochs", "3",
        "--stage2-epochs", "4", "--checkpoint-every", "1", "--log-every", "4", "--latent-dim", "4",
        "--stage2-width", "16", "--lr", "1e-3", "--threads", "1", "--no-progress"]
KILLS = 3
TIMING_FIELDS = ("images_per_s",)


def records(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]


def line_count(out):
    path = out / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def past_checkpoints(out):
    """How many logged records lie past their stage's last checkpoint: what a resume must not log twice."""
    checkpointed = {stage: load_checkpoint(out / f"{stage}.pt")["step"] if (out / f"{stage}.pt").exists() else 0
                    for stage in ("stage1", "stage2")}
    complete = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines(keepends=True)
                if line.endswith("\n")] if (out / "metrics.jsonl").exists() else []
    return sum(record["step"] > checkpointed[record["stage"]] for record in complete)


def kill_at(out, target, rng):
    """Starts `vaefast train --resume` on out, SIGKILLs it once the log holds `target` lines (plus a random
    0-20 ms); returns whether it was still running when killed."""
    environment = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-m", "vaefast", *ARGS, "--out", str(out), "--resume"], cwd=ROOT,
                               env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while line_count(out) < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.02))
        running = process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        return running
    finally:
        if process.poll() is None:
            process.kill()


def test_sigkill_and_resume_leaves_no_duplicate_records(tmp_path):
    threads = torch.get_num_threads()
    try:
        straight, killed = tmp_path / "straight", tmp_path / "killed"
        assert main([*ARGS, "--out", str(straight)]) == 0
        expected = records(straight)
        assert len(expected) == 56

        rng = random.Random()  # unseeded: fresh kill points every run
        schedule, dangling = [], 0
        for kill in range(KILLS):
            # One kill in each third of the run, at a random record of it.
            now, end = line_count(killed), (kill + 1) * len(expected) // KILLS - 1
            if now >= end:
                continue
            target = rng.randint(max(now + 1, kill * len(expected) // KILLS), end)
            interrupted = kill_at(killed, target, rng)
            schedule.append((target, line_count(killed), interrupted))
            dangling += past_checkpoints(killed)
        assert main([*ARGS, "--out", str(killed), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)

    note = f"kills (target lines, lines at the kill, still running): {schedule}"
    # Without the cut, each record past a checkpoint at a kill would be logged twice. With 3 kills after
    # random records, 7 in 8 of them mid-epoch, all three landing just after a checkpoint is a ~0.2% draw.
    assert dangling > 0, f"no kill left records past a checkpoint, so nothing was tested; {note}"
    got = records(killed)
    keys = [(r["stage"], r["step"]) for r in got]
    assert len(keys) == len(set(keys)), f"duplicate records; {note}"
    assert got == expected, note
    for name in ("stage1.pt", "stage2.pt"):
        a, b = load_checkpoint(straight / name), load_checkpoint(killed / name)
        assert (a["epoch"], a["step"], a["bad_steps"]) == (b["epoch"], b["step"], b["bad_steps"])
        assert a["model"].keys() == b["model"].keys()
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), f"{name}: {key} differs; {note}"
        for index, state in a["optimizer"]["state"].items():
            for key, value in state.items():
                assert torch.equal(value, b["optimizer"]["state"][index][key]), f"{name}: Adam {key}; {note}"


def test_cut_metrics_drops_this_stages_records_past_the_step_and_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    logged = [{"stage": "stage1", "step": s} for s in (4, 8, 12)] + [{"stage": "stage2", "step": s} for s in (4, 8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in logged) + '{"stage": "stage2", "st')
    cut_metrics(path, "stage2", 4)
    assert [json.loads(line) for line in path.read_text().splitlines()] == logged[:4]
    cut_metrics(path, "stage1", 8)  # a stage's cut leaves the other stage's records
    assert [json.loads(line) for line in path.read_text().splitlines()] == logged[:2] + logged[3:4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left


def test_a_resumed_run_logs_the_bad_step_count_of_an_uninterrupted_one(tmp_path):
    """A skipped (NaN) step in epoch 1 is still counted in epoch 2's records after a resume, and records a
    killed run logged past its checkpoint are not kept twice."""
    x = tiny_data()
    torch.manual_seed(0)
    straight = train(TinyVAE(nan_at=(2,)), x, config(tmp_path / "straight", epochs=2))
    torch.manual_seed(0)
    train(TinyVAE(nan_at=(2,)), x, config(tmp_path / "split", epochs=1))
    log = tmp_path / "split" / "metrics.jsonl"
    with open(log, "a") as f:  # what a run killed in epoch 2 leaves: a record past the checkpoint, a cut line
        f.write(json.dumps({**straight[6], "loss": -1.0}) + "\n" + '{"stage": null, "ep')
    train(TinyVAE(), x, config(tmp_path / "split", epochs=2, resume=True))
    assert records(tmp_path / "split") == records(tmp_path / "straight")
    assert records(tmp_path / "split")[-1]["bad_steps"] == 1
