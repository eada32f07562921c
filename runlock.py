"""One trainer per run, and no trainer without its launcher.

`RunLock` holds an OS lock (`flock`) on `runs/<run>/.lock` for the trainer's whole life: the kernel
releases it when the process dies, however it dies, so a stale lock never blocks a restart, and a
second trainer on the same run fails at once with the PID of the one that holds it.

`follow_parent(pid)` makes the trainer stop when its launcher dies (kill -9, OOM killer, a closed
terminal): on Linux the kernel sends SIGTERM when the parent exits (`prctl(PR_SET_PDEATHSIG)`), and
a watcher thread that notices the parent is gone does the same elsewhere. SIGTERM makes the
trainer checkpoint and exit like any other stop.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import sys
import threading
import time
from pathlib import Path

from config import ConfigError

LOCK_NAME = ".lock"
PR_SET_PDEATHSIG = 1


class RunLock:
    """An exclusive lock on a run folder, held until `release()` or the end of the process."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, inherited: int | None = None) -> "RunLock":
        """Take the lock, or keep the one the launcher took for this process (`inherited`: the descriptor it
        passed down, checked to be this run's lock file and to hold the lock)."""
        import fcntl

        if inherited is not None and self._holds(inherited):
            self.fd = inherited
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"process {holder}" if holder else "another process"
                raise ConfigError(f"run folder {self.path.parent} is being trained by {who}; stop it first "
                                  "(a second trainer would interleave its checkpoints) or use another run name") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def _holds(self, fd: int) -> bool:
        import fcntl

        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            if same:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the same open file: succeeds where it holds it
            return same
        except OSError:
            return False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def follow_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Send this process SIGTERM when `parent_pid` is no longer its parent (the launcher died)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watcher below still works

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != parent_pid:  # the parent died before the kernel was asked to tell us
        os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=watch, name="follow-parent", daemon=True).start()
