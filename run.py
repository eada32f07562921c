#!/usr/bin/env python3
"""Launcher: .env, git sync + self-restart, dependency check, config, bout supervisor.

It must run on a fresh machine before the requirements are installed, so it imports the standard
library and of the project only its standard-library modules: config.py, envfile.py (python-dotenv when
importable, to read .env), gitsync.py, contract.py and utils.py, reloaded after the code sync, so that
the newest schema validates the config. The
checks that must run in the training interpreter (the synced modules import, the requirements are
met) are `preflight.py`, run as a script by that interpreter. See `python run.py --help` and the README.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import config  # noqa: E402  (standard library only; reloaded after a code sync)
import contract  # noqa: E402  (the same)
import envfile  # noqa: E402  (the same)
import gitsync  # noqa: E402  (the same)
import runlock  # noqa: E402  (the same)
import utils  # noqa: E402  (the same)
REEXEC_GUARD = "SNNDQN_RUNPY_REEXECED"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal or ssh session closed
TRAINING_MODULES = ("config", "envfile", "utils", "contract", "agents", "metrics", "checkpoints", "replay", "hub",
                    "models", "carracing_fast", "envs", "train", "evaluate")
PREFLIGHT = ROOT / "preflight.py"  # run as a script by the training interpreter
DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST,
               errno.ENOENT, errno.EISDIR)  # a runs_dir that is a file, under /proc, read-only, full ...
ALLOCATOR_DEFAULTS = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


class BadInput(Exception):
    """A user mistake: printed as one line, exit code 2."""


def say(msg: str) -> None:
    print(f"[run.py] {msg}", flush=True)


def warn(msg: str) -> None:
    print(f"[run.py] {msg}", file=sys.stderr, flush=True)


def smoke_import(interpreter: str) -> str | None:
    """Import the training modules in a child interpreter; return the problem or None."""
    try:
        proc = subprocess.run([interpreter, str(PREFLIGHT), "imports", *TRAINING_MODULES], cwd=ROOT,
                              capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    except subprocess.TimeoutExpired:
        return "importing the training modules took over 300 s"
    if proc.returncode == 0:
        return None
    lines = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    return lines[-1] if lines else f"import failed with exit code {proc.returncode}"


# --------------------------------------------------------------------------- dependencies



def missing_requirements(interpreter: str, requirements: Path) -> list[str]:
    text = requirements.read_text(encoding="utf-8")
    proc = subprocess.run([interpreter, str(PREFLIGHT), "requirements"], input=text, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"could not check requirements with {interpreter}: "
                           f"{(proc.stderr.strip().splitlines() or ['unknown error'])[-1]}")
    return json.loads(proc.stdout)


TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def has_cuda() -> bool:
    """An NVIDIA driver on this machine (then pip's default torch, a CUDA build, is the right one)."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


def install_commands(interpreter: str, requirements: Path, missing: list[str], cuda: bool) -> list[list[str]]:
    """The pip commands that install what is missing. Without CUDA, torch comes alone from PyTorch's CPU
    index first, so pip never downloads the multi-GB CUDA build; an installed torch is never replaced."""
    pip = [interpreter, "-m", "pip", "install", "--disable-pip-version-check"]
    torch_line = next((m for m in missing if re.split(r"[\s\[<>=!~;@]", m, maxsplit=1)[0].lower() == "torch"), None)
    commands = []
    if torch_line and not cuda:
        commands.append([*pip, torch_line, "--index-url", TORCH_CPU_INDEX])
    return commands + [[*pip, "-r", str(requirements)]]


PIP_LOG = "pip-install.log"  # in the checkout (git-ignored): pip's whole output, the launcher says one line


def ensure_requirements(interpreter: str, requirements: Path) -> None:
    """Install what requirements.txt asks for and the interpreter lacks, quietly (pip's output goes to PIP_LOG).
    Torch from PyTorch's CPU index where there is no CUDA, from PyPI when that index cannot be reached."""
    if not requirements.is_file():
        return
    missing = missing_requirements(interpreter, requirements)
    if not missing:
        return
    log_path = ROOT / PIP_LOG
    say(f"installing requirements ({len(missing)} missing: {', '.join(m.split('@')[0].strip() for m in missing)}) "
        f"with {interpreter} -m pip; pip's output: {log_path}")
    with open(log_path, "a", encoding="utf-8") as log:
        for cmd in install_commands(interpreter, requirements, missing, has_cuda()):
            cpu_index = TORCH_CPU_INDEX in cmd
            if cpu_index:
                say("no CUDA on this machine: installing the CPU build of torch from " + TORCH_CPU_INDEX)
            rc, tail = _pip(cmd, log)
            if rc != 0 and cpu_index and "externally-managed-environment" not in tail:
                say(f"the CPU index could not be used (pip exit {rc}); installing torch from PyPI instead")
                rc, tail = _pip(cmd[:cmd.index("--index-url")], log)
            if "externally-managed-environment" in tail:
                raise BadInput(f"{interpreter} refuses pip installs (an externally managed system Python): create a "
                               "venv first: python3 -m venv .venv && . .venv/bin/activate, then run again")
            if rc != 0:
                raise RuntimeError(f"{' '.join(cmd[3:])} failed (exit {rc}); pip's output is in {log_path}")


def _pip(cmd: list[str], log) -> tuple[int, str]:
    """Run one pip command with its output appended to `log`; (exit code, the end of its output)."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(proc.stdout)
    log.flush()
    return proc.returncode, proc.stdout[-4000:]


# --------------------------------------------------------------------------- config
def config_resolves(args: argparse.Namespace) -> bool:
    try:
        resolve_config(args)
        return True
    except BadInput:
        return False


def take_run_lock(run_dir: Path) -> "runlock.RunLock":
    """The run's lock for this launcher's life (its trainers inherit it): a second launcher on the run is
    refused with one line before it touches the code or the run folder."""
    try:
        return runlock.RunLock(run_dir).acquire()
    except config.ConfigError as e:
        raise BadInput(f"{e}; this launcher changed nothing") from None


def resolve_config(args: argparse.Namespace):
    """The validated config: conf.json (copied from the example when missing) or --config's JSON."""
    try:
        if args.forceconfig:
            raw = config.parse_json(args.config, "--config")
            if not isinstance(raw, dict):
                raise config.ConfigError("--config must be a JSON object of keys")
        else:
            raw = _read_conf_json()
        if args.forcenewrun:
            raw["continue_run"] = False
        return config.load_config(raw)
    except config.ConfigError as e:
        raise BadInput(str(e)) from None


def _read_conf_json() -> dict:
    conf = ROOT / "conf.json"
    if not conf.exists():
        example = ROOT / "conf.json.example"
        if not example.exists():
            raise config.ConfigError("conf.json is missing and there is no conf.json.example to copy; create conf.json")
        shutil.copyfile(example, conf)
        say("conf.json was missing: copied conf.json.example to conf.json (edit it to change the run)")
    try:
        text = conf.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise config.ConfigError("conf.json is not UTF-8 text; save it as UTF-8 JSON") from None
    except OSError as e:
        raise config.ConfigError(f"conf.json cannot be read ({e.strerror}); it should be a JSON file") from None
    raw = config.parse_json(text, "conf.json")
    if not isinstance(raw, dict):
        raise config.ConfigError("conf.json must be a JSON object of keys")
    return raw


def check_hub_settings(cfg, env: dict[str, str]) -> None:
    """upload_to_cloud needs the Hub keys of .env (the config module's rule)."""
    merged = {k: (os.environ.get(k) or env.get(k, "")).strip() for k in envfile.HUB_ENV_KEYS}
    try:
        envfile.check_upload_settings(cfg, merged)
    except config.ConfigError as e:
        raise BadInput(str(e)) from None


# --------------------------------------------------------------------------- bouts
class Supervisor:
    """Runs the training script in bouts until the run is finished or the time is up."""

    def __init__(self, cmd_base: list[str], config_path: Path, run_dir: Path, cfg, env: dict[str, str],
                 write_config, restart_delay: float, max_crashes: int, kill_grace: float, quick_crash: float,
                 script_args: list[str] | None = None, lock_fd: int | None = None):
        self.cmd_base = cmd_base
        self.is_train = Path(cmd_base[-1]).name == "train.py"
        self.script_args = list(script_args or [])
        self.config_path = config_path
        self.run_dir = run_dir
        self.cfg = cfg
        self.env = env
        self.write_config = write_config  # write_config(continue_run) writes the resolved config for the child
        self.restart_delay = restart_delay
        self.max_crashes = max_crashes
        self.kill_grace = kill_grace
        self.quick_crash = quick_crash
        self.lock_fd = lock_fd  # the run's lock, passed down to the trainer
        self.child: subprocess.Popen | None = None
        self.stopping: int | None = None  # the signal that asked us to stop

    def _on_signal(self, signum, _frame):
        self.stopping = signum
        if self.child and self.child.poll() is None:
            try:
                self.child.send_signal(self._forwarded(signum))
            except ProcessLookupError:
                pass

    @staticmethod
    def _forwarded(signum: int) -> int:
        """SIGHUP is passed on as SIGTERM: the child checkpoints and exits either way."""
        return signal.SIGTERM if signum == signal.SIGHUP else signum

    def _wait(self, limit: float) -> int:
        """Wait for the child; past `limit` s terminate it, then kill it after the grace period."""
        assert self.child is not None
        deadline = time.monotonic() + limit
        terminated_at = None
        while True:
            try:
                return self.child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if self.stopping is not None and terminated_at is None:
                terminated_at = now  # the signal was forwarded; give the child the grace period
                deadline = now
            if now >= deadline and terminated_at is None:
                warn(f"bout overran its budget by {self.kill_grace:.0f} s; sending SIGTERM")
                self.child.terminate()
                terminated_at = now
            elif terminated_at is not None and now - terminated_at > self.kill_grace:
                warn("training script did not exit after SIGTERM; killing it")
                self.child.kill()
                return self.child.wait()

    def run(self) -> int:
        start = time.monotonic()
        total = self.cfg.train_max_time
        quick_crashes = 0
        bout = 0
        old_handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            while self.stopping is None:
                left = total - (time.monotonic() - start)
                if left < 1:
                    say(f"train_max_time of {total:.0f} s reached; stopping")
                    return 0
                bout += 1
                budget = min(self.cfg.max_run_time, left)
                # the first bout starts anew when asked to; every later bout continues the run
                new_run = bout == 1 and not self.cfg.continue_run
                self.write_config(continue_run=not new_run)
                if self.is_train:
                    cmd = [*self.cmd_base, "--config", str(self.config_path), *(["--new-run"] if new_run else [])]
                else:  # another script gets the config through the environment and its own arguments
                    cmd = [*self.cmd_base, *self.script_args]
                bout_id = f"{os.getpid()}-{bout}-{time.time():.0f}"
                env = dict(self.env, PYTHONUNBUFFERED="1",
                           **contract.bout_environment(budget, bout_id, os.getpid(), self.config_path, new_run,
                                                       self.lock_fd))
                if self.is_train:
                    say(f"bout {bout}: {Path(self.cmd_base[-1]).name} for at most {budget:.0f} s "
                        f"({left:.0f} s of train_max_time left)")
                else:
                    say(f"running {Path(self.cmd_base[-1]).name}" + (f" (attempt {bout})" if bout > 1 else ""))
                t0 = time.monotonic()
                self.child = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                                              pass_fds=(self.lock_fd,) if self.lock_fd is not None else ())
                if self.stopping is not None:  # a signal arrived between the loop test and Popen
                    self.child.send_signal(self._forwarded(self.stopping))
                rc = self._wait(budget + self.kill_grace)
                ran = time.monotonic() - t0
                # exit codes first: a status.json counts only when this bout wrote it and exited 0
                status = contract.read_status(self.run_dir)
                this_bout = rc == 0 and status.get("bout") == bout_id
                if self.stopping is not None:
                    say(f"stopped by {signal.Signals(self.stopping).name}; training script exited with {rc}")
                    return 0 if rc == 0 else 1
                if this_bout and status.get("finished"):
                    say(f"run finished: {status.get('reason', 'no reason given')}")
                    return 0
                if rc == 0:
                    quick_crashes = 0
                    if not this_bout and not self.is_train:
                        say(f"{Path(self.cmd_base[-1]).name} finished")
                        return 0
                    continue
                if rc == 2:
                    warn("the training script rejected its input (exit 2); fix the problem above and start again")
                    return 2
                quick_crashes = quick_crashes + 1 if ran < self.quick_crash else 1
                if quick_crashes >= self.max_crashes:
                    warn(f"training script crashed {quick_crashes} times in a row, each within {self.quick_crash:.0f} s "
                         f"(last exit code {rc}); stopping. See its output above.")
                    return 1
                delay = min(self.restart_delay * 2 ** (quick_crashes - 1), 600.0)
                warn(f"training script crashed (exit {rc}) after {ran:.1f} s; restarting with continue_run "
                     f"in {delay:g} s")
                self._sleep(delay)
            return 0
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while self.stopping is None and time.monotonic() < end:
            time.sleep(min(0.1, end - time.monotonic()))


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py",
        description="Launch (and keep alive) Double-DQN training: load .env, sync the code from code_base_link "
                    "(restarting itself once if run.py changed), install missing requirements, resolve the config, "
                    "then run train.py in bouts of at most max_run_time seconds until train_max_time has passed or "
                    "the run is finished. A killed machine picks the run up on the next start.",
        epilog="Examples:\n  python run.py                      train with conf.json (copied from conf.json.example if missing)\n"
               "  python run.py --forcenewrun        start the run from scratch\n"
               "  python run.py --forceconfig --config '{\"name\": \"carracing-ann\", \"architecture\": \"ann\"}'   "
               "the defaults but an ANN, in a run of its own\n"
               "  python run.py evaluate.py          evaluate the configured run's newest checkpoint\n"
               "  python run.py evaluate.py -- --best --episodes 10   arguments after -- go to the script\n\n"
               "train.py gets --config PATH [--new-run]; any other script gets the resolved config's path in\n"
               "the environment variable SNNDQN_CONFIG (SNNDQN_NEW_RUN=1 when the run starts anew) and the\n"
               "arguments after --; a script that exits 0 without writing this bout's status.json is done.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script", nargs="?", default="train.py",
                   help="script to run instead of train.py (arguments for it after --; see below)")
    p.add_argument("--forcenewrun", action="store_true",
                   help="make the first bout start a new run whatever continue_run says")
    p.add_argument("--forceconfig", action="store_true", help="ignore conf.json and use --config instead")
    p.add_argument("--config", metavar="JSON", help="the whole config as a JSON object (needs --forceconfig)")
    p.add_argument("--no-sync", action="store_true", help="skip the git sync even if code_base_link is set")
    p.add_argument("--install-only", action="store_true", help="install what requirements.txt asks for and the "
                   "interpreter lacks (CPU torch where there is no CUDA), then exit: no sync, no training")
    p.add_argument("--restart-delay", type=float, default=10.0, metavar="S",
                   help="first back-off after a crashed bout, doubled per crash in a row (default 10)")
    p.add_argument("--max-crashes", type=int, default=3, metavar="N",
                   help="stop after N quick crashes in a row (default 3)")
    p.add_argument("--quick-crash", type=float, default=120.0, metavar="S",
                   help="a bout that crashes within S seconds counts as a quick crash (default 120)")
    p.add_argument("--kill-grace", type=float, default=60.0, metavar="S",
                   help="seconds a bout may overrun (or take to stop after a signal) before it is killed (default 60)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = build_parser()

    def parse_error(message: str):
        raise BadInput(f"{message} (see python run.py --help)")

    parser.error = parse_error  # type: ignore[method-assign]
    try:
        args = parser.parse_args(own)
        if args.forceconfig != (args.config is not None):
            raise BadInput("--forceconfig and --config go together: use --forceconfig --config '<json>'")
        if args.max_crashes < 1:
            raise BadInput("--max-crashes must be >= 1")
        for option, value in (("--restart-delay", args.restart_delay), ("--kill-grace", args.kill_grace),
                              ("--quick-crash", args.quick_crash)):
            if not (math.isfinite(value) and value >= 0):
                raise BadInput(f"{option} must be a finite number of seconds >= 0, got {value}")

        env = envfile.load_env(ROOT / ".env")
        interpreter = envfile.training_interpreter(env, ROOT)
        if interpreter != sys.executable:
            envfile.check_interpreter(interpreter)
        if args.install_only:
            try:
                ensure_requirements(interpreter, ROOT / "requirements.txt")
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                warn(f"dependency check: {e}")
                return 1
            say(f"requirements met for {interpreter}")
            return 0
        trains = Path(args.script).name == "train.py"
        # a run has one launcher: its lock comes before the code sync and before anything of the run is
        # written (with the schema of the code here; the synced one may know a key this one does not)
        lock = take_run_lock(resolve_config(args).run_dir(ROOT)) if trains and config_resolves(args) else None
        link = env.get("code_base_link", "").strip()
        if link and link != "." and not args.no_sync:
            before = gitsync.file_digest(ROOT / "run.py")
            gitsync.sync_code(ROOT, link, env.get("code_base_branch", "").strip(), envfile.sync_timeout(env),
                              lambda: smoke_import(interpreter), say, warn)
            if gitsync.file_digest(ROOT / "run.py") != before:
                if os.environ.get(REEXEC_GUARD):
                    warn("run.py changed again after a restart; not restarting twice")
                else:
                    say("run.py changed upstream; restarting the launcher once with the new version")
                    os.environ[REEXEC_GUARD] = "1"
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os.execv(sys.executable, [sys.executable, str(ROOT / "run.py"), *argv])

        for module in (config, envfile, gitsync, utils, contract, runlock):  # the synced schema validates the config
            importlib.reload(module)

        script = Path(args.script)
        if not script.is_absolute():
            script = (Path.cwd() / script) if (Path.cwd() / script).exists() else ROOT / script
        if not script.is_file():
            raise BadInput(f"script {args.script} does not exist")
        if script_args and script.name == "train.py":
            raise BadInput("arguments after -- are for scripts other than train.py; train.py takes the config only")

        try:
            ensure_requirements(interpreter, ROOT / "requirements.txt")
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            warn(f"dependency check: {e}")
            return 1

        cfg = resolve_config(args)
        check_hub_settings(cfg, env)
        run_dir = cfg.run_dir(ROOT)
        if trains and (lock is None or lock.path.parent != run_dir):
            lock = take_run_lock(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        # the child gets the config in a dot-file (train.py copies it to config.json once it accepted it); another
        # script a private one, so that it never replaces the config of a trainer running on the same run
        config_path = run_dir / (f"{contract.LAUNCH_CONFIG_PREFIX}.json" if trains
                                 else f"{contract.LAUNCH_CONFIG_PREFIX}.{os.getpid()}.json")

        def write_config(continue_run: bool) -> None:
            utils.atomic_write_json(config_path, {**cfg.to_dict(), "continue_run": continue_run})

        say(f"run {cfg.run_name}: {cfg.architecture} on {cfg.env_id}, "
            f"{'new run' if not cfg.continue_run else 'continue if possible'}, folder {run_dir}")
        child_env = {**{k: v for k, v in env.items() if v is not None}, **os.environ}
        for k, v in ALLOCATOR_DEFAULTS.items():
            child_env.setdefault(k, v)
        child_env.pop(REEXEC_GUARD, None)
        sup = Supervisor([interpreter, "-u", str(script)], config_path, run_dir, cfg, child_env,
                         write_config=write_config, restart_delay=args.restart_delay,
                         max_crashes=args.max_crashes, kill_grace=args.kill_grace, quick_crash=args.quick_crash,
                         script_args=script_args, lock_fd=lock.fd if lock is not None else None)
        try:
            return sup.run()
        finally:
            if not trains:
                config_path.unlink(missing_ok=True)
    except (BadInput, config.ConfigError) as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the run folder (or the checkout) cannot be written: say so, do not restart
        if e.errno not in DISK_ERRNOS:
            raise
        print(f"run.py: error: {e.filename or 'the disk'}: {e.strerror}; check runs_dir (a writable folder), free disk "
              "space, then run again", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
