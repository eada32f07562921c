"""Crash-proof runs with real processes and real signals: one trainer per run, no orphaned trainer,
exact resume after SIGKILL, history never wiped, exit codes believed before status.json."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoints
import train
from conftest import REPO, run_dir_of, write_config

SLOW = {"total_steps": 10**7, "max_run_time": 600, "checkpoint_every": 5}


def tiny(tmp_path, **keys):
    return write_config(tmp_path, **{"train_every": 1, "target_update_every": 50, "learning_rate": 1e-3,
                                     "decay": 0.9, **keys})


def start_train(cfg_path, *extra, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", str(REPO / "train.py"), "--config", str(cfg_path), *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 60, min_step: int = 0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"process ended before printing {prefix!r}: {proc.stderr.read()}")
        if line.startswith(prefix):
            step = int(line.split("global_step=")[1].split()[0]) if "global_step=" in line else 0
            if step >= min_step:
                return line
    raise AssertionError(f"no {prefix!r} line within {timeout} s")


def trainers_of(run_dir: Path) -> list[int]:
    """PIDs of live processes whose command line names the run folder (train.py children)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
                state = (proc / "stat").read_text().split(") ")[1].split()[0]
            except OSError:
                continue
            if "train.py" in cmd and str(run_dir) in cmd and state != "Z":
                pids.append(int(proc.name))
    return pids


def metric_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("sps", "wall_time")} for r in csv.DictReader(f)]


# --------------------------------------------------------------------------- one writer per run
def test_second_trainer_on_a_locked_run_exits_2_and_touches_nothing(tmp_path):
    cfg = tiny(tmp_path, **SLOW)
    first = start_train(cfg, "--new-run")
    try:
        wait_for_line(first, "checkpoint")
        run_dir = run_dir_of(cfg)
        other = tiny(tmp_path, **SLOW, batch=8)  # another config for the same run
        before = (run_dir / "config.json").read_bytes()
        second = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(other), "--new-run"],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and f"process {first.pid}" in err[0] and "Traceback" not in second.stderr
        assert (run_dir / "config.json").read_bytes() == before
        assert not (run_dir / "archive").exists()  # --new-run did not move the first trainer's files
    finally:
        first.terminate()
        first.wait(30)


def test_launcher_killed_with_its_process_group_leaves_no_trainer(tmp_path):
    cfg = json.loads(tiny(tmp_path, **SLOW, name="orphan").read_text())
    launcher = subprocess.Popen([sys.executable, "run.py", "--no-sync", "--forceconfig", "--config", json.dumps(cfg)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    run_dir = Path(cfg["runs_dir"]) / "orphan"
    try:
        wait_for_line(launcher, "checkpoint")
        assert trainers_of(run_dir)
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its group; the trainer has its own session
        launcher.wait(10)
        deadline = time.monotonic() + 15
        while trainers_of(run_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not trainers_of(run_dir), "train.py outlived its launcher"
        status = json.loads((run_dir / "status.json").read_text())
        assert status["reason"] == "interrupted by SIGTERM"  # it checkpointed and stopped like any stop
    finally:
        for pid in trainers_of(run_dir):
            os.kill(pid, signal.SIGKILL)


def test_sighup_to_the_launcher_stops_the_run_cleanly(tmp_path):
    cfg = json.loads(tiny(tmp_path, **SLOW, name="hup").read_text())
    launcher = subprocess.Popen([sys.executable, "run.py", "--no-sync", "--forceconfig", "--config", json.dumps(cfg)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    wait_for_line(launcher, "checkpoint")
    launcher.send_signal(signal.SIGHUP)
    out = launcher.communicate(timeout=60)[0]
    assert launcher.returncode == 0, out
    assert "stopped by SIGHUP" in out
    status = json.loads((Path(cfg["runs_dir"]) / "hup" / "status.json").read_text())
    assert status["reason"] == "interrupted by SIGTERM" and status["finished"] is False


# --------------------------------------------------------------------------- exact resume after SIGKILL
def test_sigkill_after_an_episode_checkpoint_then_resume_is_bit_exact(tmp_path):
    # the spiking network only: resume restores whatever network the checkpoint holds, and the ANN's bit-exact
    # resume is pinned by tests/data/checkpoint_v1 (with n-step and PER) and the worker variant in test_actor
    keys = {"architecture": "snn", "total_steps": 500, "checkpoint_every": 5, "train_every": 4}
    straight = tiny(tmp_path, name="straight", **keys)
    assert train.main(["--config", str(straight), "--new-run"]) == 0
    split = tiny(tmp_path, name="split", **keys)
    proc = start_train(split, "--new-run")
    ckpt_dir = run_dir_of(split) / "checkpoints"
    deadline = time.monotonic() + 120
    while not any(checkpoints.step_of(p.name) >= 250 for p in checkpoints.list_checkpoints(ckpt_dir)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.kill()  # SIGKILL right after an end-of-episode checkpoint
    out = proc.communicate(timeout=10)[0]
    assert "finished" not in out, "too late to test a kill"
    assert train.main(["--config", str(split)]) == 0
    a = checkpoints.load_newest(run_dir_of(straight) / "checkpoints")[1]
    b = checkpoints.load_newest(run_dir_of(split) / "checkpoints")[1]
    assert a["counters"] == b["counters"] and a["counters"]["global_step"] == 500
    for net in ("q_network", "target_network"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net])
    assert metric_rows(run_dir_of(straight)) == metric_rows(run_dir_of(split))


# --------------------------------------------------------------------------- history is never destroyed
def test_rows_past_the_checkpoint_and_unloadable_runs_go_to_the_archive(tmp_path, capsys):
    cfg = tiny(tmp_path, total_steps=300, checkpoint_every=3)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    run_dir = run_dir_of(cfg)
    ckpts = checkpoints.list_checkpoints(run_dir / "checkpoints")
    for path in ckpts[-2:]:  # truncated: resume falls back to the oldest, episodes before the last rows
        path.write_bytes(path.read_bytes()[:1000])
    rows_before = metric_rows(run_dir)
    capsys.readouterr()
    assert train.main(["--config", str(tiny(tmp_path, total_steps=300, checkpoint_every=3))]) == 0
    out = capsys.readouterr().out
    assert "does not match the manifest" in out and "were moved to" in out
    cut = next((run_dir / "archive").glob("*/metrics_cut.csv"))
    cut_rows = list(csv.DictReader(open(cut)))
    resumed_at = int(cut_rows[0]["episode"]) - 1
    assert [r["episode"] for r in cut_rows] == [r["episode"] for r in rows_before[resumed_at:]]

    # nothing loads at all: the whole previous run is archived with a warning, not wiped
    for path in checkpoints.list_checkpoints(run_dir / "checkpoints"):
        path.write_bytes(b"garbage")
    metrics_before = (run_dir / "metrics.csv").read_bytes()
    assert train.main(["--config", str(tiny(tmp_path, total_steps=100))]) == 0
    out = capsys.readouterr().out
    assert "warning: no checkpoint of the run could be loaded" in out
    archived = [p for p in (run_dir / "archive").glob("*/metrics.csv")]
    assert any(p.read_bytes() == metrics_before for p in archived)


# --------------------------------------------------------------------------- the launcher believes exit codes
def test_a_stale_finished_status_never_hides_a_rejected_config(tmp_path):
    cfg = json.loads(tiny(tmp_path, total_steps=100, name="stale").read_text())
    ok = subprocess.run([sys.executable, "run.py", "--no-sync", "--forceconfig", "--config", json.dumps(cfg)],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "run finished" in ok.stdout, ok.stderr
    run_dir = Path(cfg["runs_dir"]) / "stale"
    assert json.loads((run_dir / "status.json").read_text())["finished"] is True
    accepted = (run_dir / "config.json").read_bytes()
    # a shape change on resume: train.py exits 2; the old finished status must not make that a success
    bad = {**cfg, "hidden_layers": [32], "total_steps": 200}
    out = subprocess.run([sys.executable, "run.py", "--no-sync", "--forceconfig", "--config", json.dumps(bad)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "run finished" not in out.stdout and "hidden_layers" in out.stderr
    assert (run_dir / "config.json").read_bytes() == accepted  # the rejected config never replaced it


# --------------------------------------------------------------------------- disks and bad input
@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs), for a real full disk; skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_keeps_the_previous_checkpoint_and_exits_2_once(tmp_path, small_disk):
    cfg = tiny(tmp_path, runs_dir=str(small_disk), total_steps=200, checkpoint_every=1000)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    run_dir = run_dir_of(cfg)
    good = checkpoints.list_checkpoints(run_dir / "checkpoints")[-1]
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    room = max(12 * 1024, good.stat().st_size // 2)  # status.json and metrics rows fit, a checkpoint does not
    (small_disk / "filler").write_bytes(b"\0" * (free - room))
    more = tiny(tmp_path, runs_dir=str(small_disk), total_steps=400, checkpoint_every=1000)
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(more)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "Traceback" not in proc.stderr
    (small_disk / "filler").unlink()
    assert checkpoints.load_newest(run_dir / "checkpoints")[0] == good  # the previous checkpoint is intact
    status = json.loads((run_dir / "status.json").read_text())
    assert status["finished"] is False and "No space left on device" in status["reason"]


def test_read_only_run_folder_is_one_line_exit_2(tmp_path, small_disk):
    cfg = tiny(tmp_path, runs_dir=str(small_disk), total_steps=100)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(cfg)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0]


def test_an_env_id_that_does_not_import_is_one_line_and_no_restart_loop(tmp_path):
    cfg = json.loads(tiny(tmp_path, env_id="nosuchmodule:Foo-v0", name="badenv").read_text())
    out = subprocess.run([sys.executable, "run.py", "--no-sync", "--forceconfig", "--config", json.dumps(cfg)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stdout.count("bout ") == 1  # no restart
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("train.py: error:")]
    assert len(lines) == 1 and "'nosuchmodule:Foo-v0' cannot be made by Gymnasium" in lines[0]


# --------------------------------------------------------------------------- run.py's --help examples
def launch_here(*args, timeout=180):
    return subprocess.run([sys.executable, "run.py", "--no-sync", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_every_help_example_of_other_scripts_works(tmp_path):
    """`python run.py evaluate.py` evaluates the configured run; arguments after -- reach the script;
    train.py refuses them."""
    cfg = json.loads(tiny(tmp_path, total_steps=200, name="helpex", eval_every=5, eval_episodes=1).read_text())
    forced = ["--forceconfig", "--config", json.dumps(cfg)]
    first = launch_here(*forced)
    assert first.returncode == 0, first.stderr
    out = launch_here(*forced, "evaluate.py", "--", "--episodes", "2")
    assert out.returncode == 0, out.stderr
    assert "ANN-DDQN (helpex)" in out.stdout and "evaluate.py finished" in out.stdout  # one run, then done
    assert (Path(cfg["runs_dir"]) / "helpex" / "evaluation.md").exists()
    best = launch_here(*forced, "evaluate.py", "--", "--best", "--episodes", "2")
    assert best.returncode == 0 and "ANN-DDQN (helpex, best)" in best.stdout, best.stderr
    bad = launch_here(*forced, "--", "--episodes", "2")
    assert bad.returncode == 2 and "arguments after -- are for scripts other than train.py" in bad.stderr
    helptext = launch_here("--help").stdout
    assert "python run.py evaluate.py -- --best --episodes 10" in helptext and "SNNDQN_CONFIG" in helptext
