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


import contract
import heldout
import models
from config import ConfigError
from utils import kv_line

DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM)  # exit 2, no restart loop
PROGRESS_EVERY_S = 10.0
FORCE_BAR_ENV = "SNNDQN_PROGRESS_BAR"  # "1": the tqdm bar even when stdout is not a terminal (tests, tee)
HUB_FINAL_WAIT_S = 120.0  # the end-of-bout push waits at most this long (a finished run)
HUB_STOP_WAIT_S = 10.0  # ... after a stop signal: the checkpoint is safe on disk, the next bout pushes it
HUB_RESERVE = (0.1, 30.0)  # a bout's share (at most this many s) kept at its end for the final push


_BAR = None  # the progress bar on screen, if any: log lines are printed above it


def log(msg: str) -> None:
    """One line on stdout (above the progress bar when there is one); a vanished reader (the launcher
    died, the terminal closed) must not stop the final checkpoint, so write errors are ignored."""
    try:
        if _BAR is not None:
            _BAR.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)
    except OSError:
        pass


class Bout:
    """One `train.py` process's share of a run: its deadline, signals, progress display and final status."""

    def __init__(self, trainer):
        self.t = trainer
        cfg = trainer.cfg
        self.seconds = contract.bout_seconds(cfg.max_run_time)
        self.stop_signal: int | None = None
        self.best_score: float | None = None  # best.pt's mean on fresh tracks, once the finished run scored it

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum

    def run(self) -> int:
        t, cfg = self.t, self.t.cfg
        deadline = time.monotonic() + self.seconds  # the bout's end, its final checkpoint and push included
        reserve = min(HUB_RESERVE[0] * self.seconds, HUB_RESERVE[1]) if t.hub is not None else 0.0
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal or ssh session closed
            signal.signal(s, self._on_signal)
        log(kv_line("start", run=cfg.run_name, architecture=cfg.architecture,
                    snn_mode=cfg.snn_mode if cfg.architecture == "snn" else "-", env=cfg.env_id, agents=cfg.agents,
                    device=t.device, encoder=cfg.encoder if len(t.obs_shape) == 3 else "-",
                    precision=models.encoder_precision(cfg, t.obs_shape), train_every=cfg.train_every,
                    actor=t.vec.kind,
                    obs_shape="x".join(map(str, t.obs_shape)), replay_mb=round(t.replay_mb),
                    global_step=t.state.global_step, episode=t.state.episode, bout_seconds=round(self.seconds)))
        self._status(False, "training")
        log(f"run folder: {t.run_dir}  |  curves: tensorboard --logdir {t.run_dir / 'tensorboard'}  "
            f"(and {t.run_dir / 'plots' / 'training.png'} at every checkpoint)")
        progress = Progress(t, self.seconds, force_bar=os.environ.get(FORCE_BAR_ENV) == "1")
        sps_t0, sps_steps = time.monotonic(), t.state.global_step
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
                if time.monotonic() >= deadline - reserve:
                    reason = f"bout time budget of {self.seconds:.0f} s reached"
                    break
                t.step(sps)
                now = time.monotonic()
                if now - sps_t0 >= 5:
                    sps = (t.state.global_step - sps_steps) / (now - sps_t0)
                    sps_t0, sps_steps = now, t.state.global_step
                progress.update(t, sps, deadline)
            t.save_checkpoint()
            if finished and cfg.eval_every and cfg.eval_candidates and cfg.eval_confirm_episodes:
                confirmed = heldout.confirm_best(cfg, t.run_dir, log)  # best.pt confirmed and scored on fresh tracks
                self.best_score = confirmed and confirmed["score_mean"]
        except OSError as e:
            if e.errno not in DISK_ERRNOS:
                raise
            self._disk_failure(e)
        finally:
            progress.close()
        self._status(bool(finished), finished or reason)
        log(kv_line("finished" if finished else "stopped", reason=finished or reason, global_step=t.state.global_step,
                    episode=t.state.episode))
        t.metrics.close()
        t.vec.close()
        if t.hub is not None:  # within the bout: a stop or the launcher's deadline must not wait on the Hub
            t.hub.finish(HUB_STOP_WAIT_S if self.stop_signal is not None else
                         HUB_FINAL_WAIT_S if finished else max(1.0, deadline - time.monotonic()))
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
        extra = {"best_score": self.best_score} if self.best_score is not None else {}
        contract.write_status(t.run_dir, finished, reason, **t.state.progress(), **extra)


def _columns() -> int:
    """The terminal's width (some report 0, where a bar would print nothing at all)."""
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 80


class Progress:
    """On a terminal a tqdm bar over the run's budget (total_steps, or else the bout's seconds) with an
    ETA, every log line printed above it; elsewhere a `progress key=value` line every few seconds."""

    def __init__(self, t, seconds: float, force_bar: bool = False):
        global _BAR
        self.bar = None
        self.last = time.monotonic()
        self.start = time.monotonic()
        self.by_steps = t.cfg.total_steps > 0
        self.phase = None
        self.shown = t.state.global_step if self.by_steps else 0
        if force_bar or (sys.stdout.isatty() and _columns() > 0):  # a terminal of 0 columns shows no bar: lines
            try:
                from tqdm import tqdm
            except ImportError:
                return
            if self.by_steps:
                self.bar = tqdm(total=t.cfg.total_steps, initial=t.state.global_step, unit="step", dynamic_ncols=True,
                                file=sys.stdout)
            else:  # no step budget: the bar is the bout's time
                self.bar = tqdm(total=round(seconds), unit="s", dynamic_ncols=True, file=sys.stdout,
                                bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s of this bout "
                                           "[{elapsed}<{remaining}{postfix}]")
            _BAR = self.bar

    def update(self, t, sps: float, deadline: float) -> None:
        """Called every loop iteration: anything beyond a counter update happens only when shown."""
        now = time.monotonic()
        filling = t.state.global_step < t.cfg.learning_starts
        if self.bar is not None:
            n = t.state.global_step if self.by_steps else min(int(now - self.start), self.bar.total)
            if n != self.shown:
                self.bar.update(n - self.shown)
                self.shown = n
            # the phase at once, however fast the steps go; while filling, its share of learning_starts
            phase = f"filling replay {t.state.global_step}/{t.cfg.learning_starts}" if filling else "training"
            if phase != self.phase and (not filling or self.phase is None or now - self.last >= 1.0):
                self.phase = phase
                self.bar.set_description(phase)
            if now - self.last >= 1.0:
                self.last = now
                post = {"step": t.state.global_step} if not self.by_steps else {}
                self.bar.set_postfix(ep=t.state.episode, ret100=f"{t.state.mean_return_100():.1f}", eps=f"{t.state.epsilon:.3f}",
                                     sps=f"{sps:.0f}", **post, refresh=False)
            return
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            loss = t.state.mean_loss()
            fill = {"fill": f"{t.state.global_step}/{t.cfg.learning_starts}"} if filling else {}
            log(kv_line("progress", time=time.strftime("%H:%M:%S"), phase="filling_replay" if filling else "training",
                        **fill, global_step=t.state.global_step, episode=t.state.episode, sps=round(sps, 1),
                        mean_return_100=round(t.state.mean_return_100(), 2), epsilon=round(t.state.epsilon, 4),
                        loss="-" if loss is None else round(loss, 5), replay=len(t.replay),
                        bout_left_s=round(max(0.0, deadline - now))))

    def close(self) -> None:
        global _BAR
        if self.bar is not None:
            self.bar.close()
            _BAR = None
