"""One `train.py` process's share of a run (a bout): deadline, stop signals, progress display, final
checkpoint and status, and the disk failures that end it with exit 2.

`run.py` starts a bout with the environment variables below; `train.Trainer.run()` runs one.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import time

import numpy as np

import utils
from config import ConfigError
from utils import kv_line

BOUT_SECONDS_ENV = "SNNDQN_BOUT_SECONDS"  # set by run.py: this bout's share of train_max_time
BOUT_ID_ENV = "SNNDQN_BOUT_ID"  # set by run.py: written into status.json so it knows this bout wrote it
DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM)  # exit 2, no restart loop
PROGRESS_EVERY_S = 10.0
HUB_FINAL_WAIT_S = 120.0  # the end-of-bout push waits at most this long


def log(msg: str) -> None:
    """One line on stdout; a vanished reader (the launcher died, the terminal closed) must not stop the
    final checkpoint, so write errors are ignored."""
    try:
        print(msg, flush=True)
    except OSError:
        pass


class Bout:
    """One `train.py` process's share of a run: its deadline, signals, progress display and final status."""

    def __init__(self, trainer):
        self.t = trainer
        cfg = trainer.cfg
        self.seconds = cfg.max_run_time
        if os.environ.get(BOUT_SECONDS_ENV):
            self.seconds = min(self.seconds, float(os.environ[BOUT_SECONDS_ENV]))
        self.stop_signal: int | None = None

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum

    def run(self) -> int:
        t, cfg = self.t, self.t.cfg
        deadline = time.monotonic() + self.seconds
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal or ssh session closed
            signal.signal(s, self._on_signal)
        log(kv_line("start", run=cfg.run_name, architecture=cfg.architecture,
                    snn_mode=cfg.snn_mode if cfg.architecture == "snn" else "-", env=cfg.env_id, agents=cfg.agents,
                    device=t.device, obs_shape="x".join(map(str, t.obs_shape)), replay_mb=round(t.replay_mb),
                    global_step=t.global_step, episode=t.episode, bout_seconds=round(self.seconds)))
        self._status(False, "training")
        progress = Progress(cfg.total_steps, t.global_step)
        sps_t0, sps_steps = time.monotonic(), t.global_step
        sps = 0.0
        reason = finished = None
        try:
            while True:
                finished = t.budget_reached()
                if finished:
                    break
                if self.stop_signal is not None:
                    reason = f"interrupted by {signal.Signals(self.stop_signal).name}"
                    break
                if time.monotonic() >= deadline:
                    reason = f"bout time budget of {self.seconds:.0f} s reached"
                    break
                t.step(sps)
                now = time.monotonic()
                if now - sps_t0 >= 5:
                    sps = (t.global_step - sps_steps) / (now - sps_t0)
                    sps_t0, sps_steps = now, t.global_step
                progress.update(t, sps, deadline)
            t.save_checkpoint()
        except OSError as e:
            if e.errno not in DISK_ERRNOS:
                raise
            self._disk_failure(e)
        finally:
            progress.close()
        self._status(bool(finished), finished or reason)
        log(kv_line("finished" if finished else "stopped", reason=finished or reason, global_step=t.global_step,
                    episode=t.episode))
        t.metrics.close()
        t.vec.close()
        if t.hub is not None:
            t.hub.finish(HUB_FINAL_WAIT_S)
        return 0

    def _disk_failure(self, e: OSError) -> None:
        """A full or read-only disk: the previous checkpoint stays; say so in status.json if it can be
        written, and stop with exit 2 (a restart would fail the same way)."""
        t = self.t
        reason = f"cannot write to the run folder ({e.strerror}: {e.filename or t.run_dir})"
        try:
            self._status(False, reason)
        except OSError:
            pass
        t.vec.close()
        raise ConfigError(f"{reason}; free disk space or make the folder writable, then run again — the newest "
                          "checkpoint written before is kept and the run continues from it")

    def _status(self, finished: bool, reason: str) -> None:
        t = self.t
        utils.write_status(t.run_dir, finished, reason, global_step=t.global_step, episode=t.episode,
                           learning_stopped=t.learning_stopped, bout=os.environ.get(BOUT_ID_ENV))


class Progress:
    """A tqdm bar when stdout is a terminal, otherwise a key=value line every few seconds."""

    def __init__(self, total_steps: int, start: int):
        self.bar = None
        self.last = time.monotonic()
        if sys.stdout.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps or None, initial=start, unit="step", dynamic_ncols=True)
            except ImportError:
                self.bar = None
        self.shown = start

    @staticmethod
    def _mean100(t) -> float:
        return float(np.mean(t.recent_returns)) if t.recent_returns else float("nan")

    def update(self, t, sps: float, deadline: float) -> None:
        """Called every loop iteration: anything beyond a counter update happens only when shown."""
        if self.bar is not None:
            self.bar.update(t.global_step - self.shown)
            self.shown = t.global_step
            if t.global_step % 50 == 0:
                self.bar.set_postfix(ep=t.episode, ret100=f"{self._mean100(t):.1f}", eps=f"{t.epsilon:.3f}",
                                     refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            log(kv_line("progress", global_step=t.global_step, episode=t.episode, sps=round(sps, 1),
                          mean_return_100=round(self._mean100(t), 2), epsilon=round(t.epsilon, 4), replay=len(t.replay),
                          bout_left_s=round(max(0.0, deadline - now))))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
