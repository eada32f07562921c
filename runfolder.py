"""A run's folder as the trainer meets it and leaves it: the checkpoint to continue from (local, or the Hub's
when newer), the previous run's files archived when a new run starts, and at every checkpoint the
checkpoint file, status.json, the training plot and the Hub push (upload_to_cloud).

The layout is the README's run-folder contract: config.json, checkpoints/, best.pt, metrics.csv,
status.json, tensorboard/, plots/, videos/, archive/<time>/.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import checkpoints
import contract
import heldout
import hub
import metrics
import utils
from config import as_trained
from envfile import check_upload_settings
from utils import kv_line


HUB_START_WAITS = (5.0, 15.0, 30.0)  # seconds between the tries when the Hub does not answer at the start


class HubUnreachable(Exception):
    """The Hub's state is unknown and nothing here can be resumed: the run must not start anew."""


def archive_previous_run(run_dir: Path, log: Callable[[str], None], why: str | None = None) -> None:
    """A new run never deletes the old one's data: everything the run folder holds (contract.RUN_FOLDER, and
    whatever else is there) moves to archive/<time>/, except the archive itself, the lock and the launcher's
    config (with a warning line when `why` says the run could not be continued)."""
    if not run_dir.is_dir():
        return
    old = sorted(p for p in run_dir.iterdir() if p.name not in contract.KEPT_ON_NEW_RUN
                 and not p.name.startswith(contract.LAUNCH_CONFIG_PREFIX))
    if not old:
        return
    dest = run_dir / "archive" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for p in old:
        shutil.move(str(p), str(dest / p.name))
    if why:
        log(f"warning: {why}; starting the run anew and the previous files were moved to {dest}")
    else:
        log(f"new run: the previous run's files were moved to {dest}")


class RunFolder:
    """The run folder `run_dir` of `cfg` (and its Hub mirror with upload_to_cloud)."""

    def __init__(self, cfg, run_dir: Path, log: Callable[[str], None]):
        self.cfg, self.run_dir, self.log = cfg, run_dir, log
        self.ckpt_dir = run_dir / "checkpoints"
        env = hub.hub_environment()
        check_upload_settings(cfg, env)
        self.hub = (hub.HubMirror(env, cfg.run_name, run_dir, cfg.keep_checkpoints, cfg.local_backup, log=log)
                    if cfg.upload_to_cloud else None)

    def newest(self, map_location) -> tuple[Path, dict] | None:
        """The newest loadable checkpoint, fetched from the Hub first when the Hub's is newer. A Hub that does
        not answer is asked again (HUB_START_WAITS); when it never answers and there is no checkpoint here,
        HubUnreachable: an unanswered question is not "nothing there", and a new run would archive the Hub's."""
        failure = self._fetch_newer() if self.hub is not None else None
        found = checkpoints.load_newest(self.ckpt_dir, map_location=map_location, log=self.log)
        if failure is None:
            return found
        if found is None:
            raise HubUnreachable(f"the Hub did not answer whether {self.hub.repo_id}/{self.hub.prefix} holds a "
                                 f"checkpoint ({failure}) and there is none here; not starting the run anew over "
                                 "what the Hub may hold: run again once the Hub answers, or set upload_to_cloud "
                                 "to false to train locally")
        self.hub.log(f"the Hub did not answer ({failure}); resuming from the local files (a newer checkpoint on the "
                     "Hub stays there, untouched)")
        return found

    def _fetch_newer(self) -> str | None:
        """Ask the Hub for a checkpoint newer than the local one; None when it answered, else the last failure."""
        for attempt, wait in enumerate((*HUB_START_WAITS, None), start=1):
            try:
                self.hub.fetch_newer(checkpoints.newest_verified_step(self.ckpt_dir))
                return None
            except Exception as e:
                failure = self.hub.describe(e)
                if wait is None:
                    return failure
                self.hub.log(f"could not look for a newer checkpoint ({failure}); asking again in {wait:g} s "
                             f"(try {attempt} of {len(HUB_START_WAITS) + 1})")
                time.sleep(wait)
        return None

    def start_new_run(self, asked: bool) -> None:
        """Archive what a previous run left, locally and on the Hub (`asked`: a new run was asked for; else
        nothing could be loaded)."""
        archive_previous_run(self.run_dir, self.log, None if asked else "no checkpoint of the run could be loaded")
        if self.hub is not None:  # the Hub folder holds this run alone
            self.hub.start_new_run(time.strftime("%Y%m%d-%H%M%S"))

    def resumed(self, path: Path, saved_config: dict, state, metrics_log, note: str) -> None:
        """After a resume: metrics.csv cut back to the checkpoint's episode (later rows archived), the log
        lines that say what was resumed and which config keys changed, best.pt's bar (heldout.rebase_best)."""
        cut = metrics_log.truncate_to(state.episode, self.run_dir / "archive" / time.strftime("%Y%m%d-%H%M%S"))
        if cut:
            self.log(f"warning: metrics.csv had {cut['rows']} rows past the checkpoint's episode {state.episode} "
                     f"(written after it); they were moved to {cut['path']}")
        self.log(kv_line("resumed", checkpoint=path.name, global_step=state.global_step, episode=state.episode,
                         epsilon=round(state.epsilon, 4), note=note))
        # a key the checkpoint predates counts as changed where the run behaved otherwise without it
        changes = utils.describe_changes(as_trained(saved_config), self.cfg.to_dict(), ignore=("continue_run",))
        if changes:
            self.log("config changes on resume: " + "; ".join(changes))
        state.best_eval = heldout.rebase_best(self.run_dir, state.best_eval, self.cfg.eval_episodes, self.log)

    def learning_stopped(self, state, percent: float) -> None:
        """stop_learning_at_win_percent was reached: one log line, and status.json says so."""
        wins = sum(state.recent_wins)
        self.log(kv_line("learning_stopped", episode=state.episode, global_step=state.global_step,
                         wins_last_100=wins, threshold_percent=percent))
        contract.write_status(self.run_dir, False, f"learning stopped: {wins} wins in the last 100 episodes reached "
                              f"stop_learning_at_win_percent={percent:g}", **state.progress())

    def save(self, state: dict, keep: int, progress: dict, metrics_path: Path, replay_bytes: Callable[[], int]) -> Path:
        """Checkpoint `state` (atomic, verified), then status.json, the training plot and the Hub push."""
        t0 = time.monotonic()
        path, size = checkpoints.write(self.ckpt_dir, state, keep)
        seconds = time.monotonic() - t0
        reason = "learning stopped (stop_learning_at_win_percent reached)" if progress.get("learning_stopped") \
            else "training"
        contract.write_status(self.run_dir, False, reason, **progress)
        try:
            metrics.plot_runs({self.cfg.run_name: metrics_path}, self.run_dir / "plots" / "training.png",
                              self.cfg.win_threshold)
        except Exception as e:  # a plot must never stop training
            self.log(f"warning: could not draw the training plot: {e}")
        self.log(kv_line("checkpoint", path=path.name, global_step=progress["global_step"], episode=progress["episode"],
                         mb=round((size + replay_bytes()) / 2**20, 1), seconds=round(seconds, 2)))
        if self.hub is not None:
            self.hub.push()
        return path
