"""Soak test of the crash-proofing (run by hand; results in docs/launcher.md).

    python bench/soak.py [--kills 8] [--fail-rate 0.2] [--down-at-start 20] [--env CarRacing-v3] [--steps 6000]

Trains with Hub mirroring to the local Hub stand-in (tests/hub_standin.py) while the Hub answers a random share
of requests with 503 (and is down for the first seconds), and kills the launcher's whole process group (kill -9)
at random moments, `--kills` times; then lets the run finish with the Hub healthy and checks what a user relies
on: the run never restarted from step 0, metrics.csv's episodes are consecutive, and the Hub converged to the
local run (the kept checkpoints and metrics.csv equal). Prints the figures: kills, Hub failures, agent steps lost
per kill (the last step logged before a kill against the step resumed after it).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from hub_standin import HubStandIn  # noqa: E402

WRITE, READ = "hf_write_good", "hf_read_good"


def launch(keys: dict, env: dict, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--no-sync", "--forceconfig", "--config",
                             json.dumps(keys), "--restart-delay", "1"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_released(run_dir: Path, timeout: float = 120) -> None:
    """Until no process holds the run's lock (the killed launcher's trainer checkpoints and exits)."""
    import fcntl

    lock = run_dir / ".lock"
    deadline = time.monotonic() + timeout
    while lock.exists() and time.monotonic() < deadline:
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError:
                time.sleep(0.2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=8)
    p.add_argument("--fail-rate", type=float, default=0.2, help="share of Hub requests answered 503")
    p.add_argument("--down-at-start", type=float, default=20.0, help="seconds the Hub is down at the first start")
    p.add_argument("--env", default="CarRacing-v3")
    p.add_argument("--steps", type=int, default=6000, help="the run's total_steps")
    p.add_argument("--min-s", type=float, default=15.0, help="shortest life of a launcher before its kill")
    p.add_argument("--max-s", type=float, default=45.0, help="longest")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    hub = HubStandIn(write_tokens=(WRITE,), read_tokens=(READ,)).start()
    tmp = Path(tempfile.mkdtemp(prefix="snndqn-soak-"))
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1", "repo_ID": "soak/runs",
           "session_name": "soak", "huggingface_write": WRITE, "huggingface_read": READ, "PYTHONUNBUFFERED": "1"}
    image = args.env.startswith(("CarRacing", "FastCarRacing"))
    keys = {"name": "soak", "runs_dir": str(tmp / "runs"), "env_id": args.env, "upload_to_cloud": True,
            "total_steps": args.steps, "checkpoint_every": 2, "eval_every": 0, "train_max_time": 3600,
            "max_run_time": 600, "learning_starts": 500, "replay_size": 5000, "hidden_layers": [64],
            "snn_tSteps": 8, "architecture": "snn", **({} if image else {"skip_penalty": 0})}
    run_dir = tmp / "runs" / "soak"
    log_path = tmp / "launcher.log"
    print(f"soak: run folder {run_dir}, log {log_path}, Hub stand-in {hub.url}", flush=True)
    hub.down = args.down_at_start > 0
    if hub.down:
        __import__("threading").Timer(args.down_at_start, lambda: setattr(hub, "down", False)).start()
    hub.fail_rate = args.fail_rate
    kills, lost = 0, []
    t0 = time.monotonic()
    with open(log_path, "a") as log:
        for kills in range(1, args.kills + 1):
            before = log_text(log_path)
            proc = launch(keys, env, log)
            time.sleep(rng.uniform(args.min_s, args.max_s))
            if proc.poll() is not None:  # the run finished before its kill
                break
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            wait_released(run_dir)
            steps = [int(s) for s in re.findall(r"global_step=(\d+)", log_text(log_path)[len(before):])]
            lost.append(max(steps) if steps else 0)
            print(f"kill {kills} at {time.monotonic() - t0:.0f} s: last logged global_step={lost[-1]}", flush=True)
        hub.fail_rate = 0.0
        hub.down = False
        final = launch(keys, env, log)
        final.wait(timeout=7200)
    text = log_text(log_path)
    resumed = [int(s) for s in re.findall(r"^resumed checkpoint=\S+ global_step=(\d+)", text, re.M)]
    restarts_from_zero = len(re.findall(r"^start run=soak .* global_step=0 ", text, re.M)) - 1
    steps_lost = [max(0, last - first) for last, first in zip(lost, resumed)]
    episodes = [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    consecutive = episodes == list(range(1, len(episodes) + 1))
    status = json.loads((run_dir / "status.json").read_text())
    local = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt_*.pt"))
    repo = hub.repos.get("soak/runs")
    remote = sorted(Path(p).name for p in (repo.files if repo else {}) if "/checkpoints/ckpt_" in p
                    and "/archive/" not in p)
    metrics_equal = repo is not None and repo.files.get("soak/soak/metrics.csv") == (run_dir / "metrics.csv").read_bytes()
    result = {"kills": len(lost), "hub_503s": hub.failures, "restarts_from_step_0": restarts_from_zero,
              "steps_lost_per_kill": steps_lost, "finished": status.get("finished"), "final_step": status.get("global_step"),
              "episodes": len(episodes), "metrics_consecutive": consecutive, "hub_checkpoints_equal": remote == local,
              "hub_metrics_equal": metrics_equal, "seconds": round(time.monotonic() - t0)}
    print(json.dumps(result), flush=True)
    hub.stop()
    ok = (restarts_from_zero == 0 and consecutive and remote == local and metrics_equal and status.get("finished"))
    return 0 if ok else 1


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


if __name__ == "__main__":
    sys.exit(main())
