"""python -m vaefast.gpu_check without a GPU: its time budget with fake steps on a fake clock (each step gets
min(its budget, what is left), none starts with less than it can use, a failed build skips what needs it),
the results written after every step (a run cut short keeps them, in at most three files), the allowance
enforced on real commands and their children, and the dry run's clean "no GPU" exit."""
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from vaefast import gpu_check
from vaefast.gpu_check import FAILED, NOT_REACHED, PASSED, SKIPPED, TIMED_OUT, WRAP_UP_S, Step

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def fake_step(clock, name, budget_s, takes_s, status=PASSED, seen=None, **options):
    """A step that takes takes_s seconds of the fake clock (at most its allowance: the real runner kills a
    command there), logs a line, and records the allowance it was given in `seen`."""
    def run(allowance_s, log_path):
        if seen is not None:
            seen[name] = allowance_s
        with open(log_path, "a") as handle:
            handle.write(f"{name} ran\nlast line of {name}\n")
        clock.now += min(takes_s, allowance_s)
        return TIMED_OUT if takes_s > allowance_s else status
    return Step(name, budget_s, run, **options)


def run(steps, budget_s, tmp_path, clock):
    out_dir, work_dir = tmp_path / "out", tmp_path / "work"
    out_dir.mkdir()
    results = gpu_check.run_steps(steps, budget_s, str(out_dir), str(work_dir), {"gpu": "fake"}, clock=clock)
    return {r.name: r for r in results}, out_dir


def test_each_step_gets_its_budget_or_what_is_left(tmp_path):
    clock, seen = FakeClock(), {}
    budget = 100 + WRAP_UP_S
    steps = [fake_step(clock, "a", 30, 10, seen=seen), fake_step(clock, "b", 50, 50, seen=seen),
             fake_step(clock, "c", 60, 5, seen=seen, min_s=10),
             fake_step(clock, "d", 10**6, 1, seen=seen, min_s=10)]
    results, _ = run(steps, budget, tmp_path, clock)
    # a finishes early (10 of its 30 s); b uses all 50; c may have its 60 but only 40 are left; d gets the rest.
    assert seen == {"a": 30, "b": 50, "c": 40, "d": 35}
    assert [results[n].status for n in "abcd"] == [PASSED] * 4
    assert results["b"].seconds == 50 and results["c"].allowance_s == 40


def test_no_step_starts_with_less_time_than_it_can_use(tmp_path):
    clock, seen = FakeClock(), {}
    steps = [fake_step(clock, "slow", 80, 200, seen=seen),
             fake_step(clock, "bench", 60, 10, seen=seen, min_s=30),
             fake_step(clock, "small", 10, 1, seen=seen, min_s=5)]
    results, _ = run(steps, 100 + WRAP_UP_S, tmp_path, clock)
    assert results["slow"].status == TIMED_OUT and results["slow"].seconds == 80
    assert results["bench"].status == NOT_REACHED and "bench" not in seen  # 20 s left, needs 30
    assert results["small"].status == PASSED and seen["small"] == 10


def test_a_failed_step_skips_the_steps_that_need_it(tmp_path):
    clock, seen = FakeClock(), {}
    steps = [fake_step(clock, "build", 50, 5, status=FAILED, seen=seen),
             fake_step(clock, "tests", 50, 5, seen=seen, needs=("build",)),
             fake_step(clock, "standalone", 50, 5, seen=seen),
             fake_step(clock, "after", 50, 5, seen=seen, needs=("standalone",))]
    results, _ = run(steps, 500, tmp_path, clock)
    assert results["build"].status == FAILED
    assert results["tests"].status == SKIPPED and "build" in results["tests"].outcome and "tests" not in seen
    assert results["standalone"].status == PASSED and results["after"].status == PASSED


def test_results_are_on_disk_after_every_step_and_survive_a_cut(tmp_path):
    """The third step stands for a run killed mid-step: the first two steps' summary rows and logs are
    already in DIR, and DIR never holds more than the summary, the bundle and the running step's log."""
    clock = FakeClock()
    out_dir = tmp_path / "out"
    observed = {}

    def killed(allowance_s, log_path):
        with open(log_path, "w") as handle:
            handle.write("partial output\n")
        observed["files"] = sorted(os.listdir(out_dir))
        observed["summary"] = (out_dir / gpu_check.SUMMARY).read_text()
        with tarfile.open(out_dir / gpu_check.BUNDLE) as bundle:
            observed["bundled"] = sorted(bundle.getnames())
        raise KeyboardInterrupt

    steps = [fake_step(clock, "first", 50, 5), fake_step(clock, "second", 50, 5, status=FAILED),
             Step("third", 50, killed)]
    with pytest.raises(KeyboardInterrupt):
        run(steps, 500, tmp_path, clock)
    assert observed["files"] == [gpu_check.BUNDLE, gpu_check.SUMMARY, "third.log"]
    assert "| first | passed | 5 | 50 | last line of first |" in observed["summary"]
    assert "| second | failed |" in observed["summary"]
    assert {"logs/1_first.log", "logs/2_second.log"} <= set(observed["bundled"])
    with tarfile.open(out_dir / gpu_check.BUNDLE) as bundle:
        assert bundle.extractfile("logs/1_first.log").read().decode() == "first ran\nlast line of first\n"


def test_outcome_line_prefers_the_pattern(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("========= ERROR SUMMARY: 0 errors\nsmall run: ok\n[gpu_check] exit 0\n")
    assert gpu_check.outcome_line(str(log), r"ERROR SUMMARY") == "========= ERROR SUMMARY: 0 errors"
    assert gpu_check.outcome_line(str(log), r"$^") == "small run: ok"
    assert gpu_check.outcome_line(str(tmp_path / "missing.log"), r"x") == ""


def alive(pid):
    """True while pid runs (a zombie, killed but not yet reaped by whoever adopted it, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_run_command_kills_the_command_and_its_children_at_the_allowance(tmp_path):
    log = tmp_path / "sleep.log"
    # The command starts a child that would outlive it: both must go.
    script = ("import subprocess, sys, time; "
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print('child-pid', child.pid, flush=True); time.sleep(60)")
    start = time.monotonic()
    status = gpu_check.run_command([sys.executable, "-c", script], 3, str(log))
    assert status == TIMED_OUT
    assert time.monotonic() - start < 30
    text = log.read_text()
    assert "killed at its allowance of 3 s" in text
    child = int(re.search(r"^child-pid (\d+)$", text, re.MULTILINE).group(1))
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child)
    assert gpu_check.run_command([sys.executable, "-c", "import sys; sys.exit(3)"], 60, str(log)) == FAILED
    assert gpu_check.run_command([sys.executable, "-c", "print('fine')"], 60, str(log)) == PASSED
    assert log.read_text().endswith("fine\n[gpu_check] exit 0\n")


def test_commands_share_one_allowance_and_stop_at_the_first_failure(tmp_path):
    log = tmp_path / "steps.log"
    step = gpu_check.commands([sys.executable, "-c", "print('one')"],
                              [sys.executable, "-c", "raise SystemExit(1)"],
                              [sys.executable, "-c", "print('never')"])
    assert step(60, str(log)) == FAILED
    text = log.read_text()
    assert "\none\n" in text and "\nnever\n" not in text


def test_the_plan_runs_in_order_of_value_within_the_default_budget():
    steps = gpu_check.plan(None, "results")
    assert [s.name for s in steps] == ["build", "test_cuda", "memcheck", "racecheck", "bench_ops", "training",
                                       "suite"]
    assert sum(s.budget_s for s in steps[:-1]) <= 540 - WRAP_UP_S  # steps 1-5 fit; the suite takes what is left
    assert all(s.needs == ("build",) for s in steps[1:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine this would start the real run")
def test_dry_run_without_a_gpu_exits_cleanly(tmp_path):
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "vaefast.gpu_check", "--budget", "540", "--out", str(tmp_path)],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=path), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no GPU" in result.stdout
    summary = (tmp_path / gpu_check.SUMMARY).read_text()
    assert "no GPU" in summary and "| build | not run (no GPU) |" in summary
    assert "Traceback" not in result.stderr


def test_the_op_benchmark_keeps_the_cases_measured_before_a_cut(tmp_path, monkeypatch):
    """gpu_check's benchmark step may be killed at its allowance: benchmarks.run writes its report after every
    case, so the cases measured so far survive (the complete report replaces it at the end)."""
    from benchmarks import harness, run as bench_run

    measured = []

    def measure_case(case, providers, settings, copy_gbs, device):
        if measured:
            raise KeyboardInterrupt  # the kill, during the second case
        measured.append(case.name)
        return [{"case": case.name, "shape": case.shape, "mode": "", "provider": "", "median_ms": None,
                 "iqr_ms": None, "note": "measured before the cut"}]

    monkeypatch.setattr(bench_run, "measure_case", measure_case)
    monkeypatch.setattr(bench_run, "with_compile", lambda case, skip: dict(case.providers))
    monkeypatch.setattr(harness, "copy_bandwidth_gbs", lambda *args: 10.0)
    with pytest.raises(KeyboardInterrupt):
        bench_run.main(["--ops", "kl", "--quick", "--out", str(tmp_path)])
    text = (tmp_path / "cpu_ops.md").read_text()
    assert f"| {measured[0]} |" in text and "measured before the cut" in text
    assert "partial: 1 of 2 cases measured" in text
    assert (tmp_path / "cpu_ops.csv").read_text().count("measured before the cut") == 1
