"""The launcher <-> trainer contract: what `run.py` tells the script it starts (environment variables)
and what the script tells it back (the run's `status.json`). Standard library only: `run.py` imports it
before any requirement is installed.

status.json holds `finished` (true: the run is done, the launcher stops), `reason`, `bout` (the id this
bout was given: a status of an earlier bout never counts) and the run's progress, rewritten at every
checkpoint (the fleet view and users read it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import utils

BOUT_SECONDS_ENV = "SNNDQN_BOUT_SECONDS"  # this bout's share of train_max_time, in seconds
BOUT_ID_ENV = "SNNDQN_BOUT_ID"  # written into status.json by the bout it names
LAUNCHER_PID_ENV = "SNNDQN_LAUNCHER_PID"  # the trainer stops when this process dies
CONFIG_ENV = "SNNDQN_CONFIG"  # every script: the path of the resolved config JSON (train.py also gets --config)
NEW_RUN_ENV = "SNNDQN_NEW_RUN"  # "1" when this bout starts the run anew
RUN_LOCK_FD_ENV = "SNNDQN_RUN_LOCK_FD"  # the descriptor of the run's lock, taken by the launcher and inherited
STATUS_NAME = "status.json"
CANDIDATES = "candidates"  # best.pt's candidates, confirmed when the run finishes (heldout.py)
# What a run folder holds (README's run-folder contract); a new run under the same name moves all of it, and
# anything else found there, to archive/<time>/. Kept in place: archive/ itself, the lock and launch configs.
RUN_FOLDER = ("config.json", "checkpoints", "best.pt", CANDIDATES, "metrics.csv", STATUS_NAME, "tensorboard", "plots",
              "videos", "evaluation.md", "evaluation.csv", "wandb")
KEPT_ON_NEW_RUN = ("archive", ".lock")
LAUNCH_CONFIG_PREFIX = ".launch-config"


def bout_environment(seconds: float, bout_id: str, launcher_pid: int, config_path: Path, new_run: bool,
                     lock_fd: int | None = None) -> dict:
    """The variables `run.py` sets for one bout of its script."""
    return {BOUT_SECONDS_ENV: f"{seconds:.3f}", BOUT_ID_ENV: bout_id, LAUNCHER_PID_ENV: str(launcher_pid),
            CONFIG_ENV: str(config_path), NEW_RUN_ENV: "1" if new_run else "0",
            **({RUN_LOCK_FD_ENV: str(lock_fd)} if lock_fd is not None else {})}


def inherited_lock_fd() -> int | None:
    """The run lock's descriptor the launcher passed down, if any."""
    given = os.environ.get(RUN_LOCK_FD_ENV)
    return int(given) if given and given.isdigit() else None


def bout_seconds(default: float) -> float:
    """This bout's time: `default` (max_run_time), or less when the launcher says so."""
    given = os.environ.get(BOUT_SECONDS_ENV)
    return min(default, float(given)) if given else default


def launcher_pid() -> int | None:
    given = os.environ.get(LAUNCHER_PID_ENV)
    return int(given) if given else None


def launcher_config() -> str | None:
    """The resolved config's path when started by `run.py`, else None."""
    return os.environ.get(CONFIG_ENV) or None


def write_status(run_dir: str | os.PathLike, finished: bool, reason: str, **progress: Any) -> None:
    """status.json, atomically: `finished`, `reason`, this bout's id (when the launcher gave one) and
    `progress` (agent steps, episodes, evaluations, time: whatever the writer knows)."""
    bout = os.environ.get(BOUT_ID_ENV)
    extra = {"bout": bout} if bout and "bout" not in progress else {}
    utils.atomic_write_json(Path(run_dir) / STATUS_NAME,
                            {"finished": bool(finished), "reason": reason, **progress, **extra})


def read_status(run_dir: str | os.PathLike) -> dict:
    """The run's status.json, or {} when it is missing or unreadable."""
    status = utils.read_json(Path(run_dir) / STATUS_NAME, default=None)
    return status if isinstance(status, dict) else {}
