"""run.py: git sync against local bare repos, self-restart, bad input, dependency check and the bout supervisor.

Every test drives the real launcher as a child process in a throw-away project folder.
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A stand-in training script: records each bout, then acts as `mode.txt` (in the project) says.
STANDIN = textwrap.dedent('''
    import json, os, signal, sys, time
    from pathlib import Path


    def main():
        cfg_path = Path(sys.argv[sys.argv.index("--config") + 1])
        cfg = json.loads(cfg_path.read_text())
        run_dir = cfg_path.parent
        log = run_dir / "bouts.jsonl"
        n = sum(1 for _ in log.open()) + 1 if log.exists() else 1
        with log.open("a") as f:
            f.write(json.dumps({"bout": n, "t": time.time(), "new_run": "--new-run" in sys.argv,
                                "continue_run": cfg["continue_run"],
                                "budget": float(os.environ["SNNDQN_BOUT_SECONDS"]),
                                "malloc": os.environ.get("MALLOC_MMAP_MAX_")}) + "\\n")
        mode = Path("mode.txt").read_text().strip() if Path("mode.txt").exists() else "finish"

        def finish(reason):
            (run_dir / "status.json").write_text(json.dumps({"finished": True, "reason": reason,
                                                             "bout": os.environ["SNNDQN_BOUT_ID"]}))

        if mode == "finish":
            finish("budget")
        elif mode == "crash":
            sys.exit(1)
        elif mode.startswith("crash-then-finish"):
            if n <= int(mode.split(":")[1]):
                sys.exit(1)
            finish("after crashes")
        elif mode == "use-budget":
            time.sleep(float(os.environ["SNNDQN_BOUT_SECONDS"]))
        elif mode == "wait-signal":
            def handler(signum, frame):
                (run_dir / "signal.txt").write_text(signal.Signals(signum).name)
                sys.exit(0)
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)
            (run_dir / "started.txt").write_text("yes")
            time.sleep(60)
        print("standin bout", n, "done", flush=True)


    if __name__ == "__main__":
        main()
''')

TINY = {"train_max_time": 60, "max_run_time": 30}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                                   GIT_COMMITTER_EMAIL="t@t")).stdout.strip()


def write_project(folder: Path) -> None:
    """The files a project needs to launch, with the stand-in as train.py."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("run.py", "config.py", "envfile.py", "gitsync.py", "contract.py", "utils.py", "runlock.py",
                 "preflight.py", "conf.json.example", ".gitignore"):
        shutil.copy(REPO / name, folder / name)
    (folder / "train.py").write_text(STANDIN)
    (folder / "requirements.txt").write_text("pytest\n")


def launch(cwd: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def forced(**keys) -> list[str]:
    return ["--forceconfig", "--config", json.dumps({**TINY, **keys})]


@pytest.fixture
def remote_and_checkout(tmp_path):
    """A bare repo standing in for GitHub, a developer clone to push from, and the studio's checkout."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    dev = tmp_path / "dev"
    write_project(dev)
    git(dev, "init", "-q", "-b", "main")
    git(dev, "add", "-A")
    git(dev, "commit", "-q", "-m", "initial")
    git(dev, "remote", "add", "origin", str(remote))
    git(dev, "push", "-q", "origin", "main")
    studio = tmp_path / "studio"
    git(tmp_path, "clone", "-q", str(remote), str(studio))
    (studio / ".env").write_text(f"code_base_link={remote}\nsession_name=s1\n")
    (studio / "conf.json").write_text(json.dumps(TINY))
    (studio / "runs" / "old").mkdir(parents=True)
    (studio / "runs" / "old" / "data.bin").write_bytes(b"precious")
    return remote, dev, studio


def push(dev: Path, files: dict[str, str], message: str = "change") -> str:
    for name, text in files.items():
        (dev / name).write_text(text)
    git(dev, "add", "-A")
    git(dev, "commit", "-q", "-m", message)
    git(dev, "push", "-q", "origin", "main")
    return git(dev, "rev-parse", "HEAD")


def assert_user_files_intact(studio: Path) -> None:
    assert json.loads((studio / "conf.json").read_text()) == TINY
    assert "code_base_link" in (studio / ".env").read_text()
    assert (studio / "runs" / "old" / "data.bin").read_bytes() == b"precious"


# --------------------------------------------------------------------------- sync
def test_new_commit_is_fetched_and_user_files_survive(remote_and_checkout):
    _, dev, studio = remote_and_checkout
    head = push(dev, {"NEWFILE.txt": "from upstream\n"})
    out = launch(studio)
    assert out.returncode == 0, out.stderr
    assert (studio / "NEWFILE.txt").read_text() == "from upstream\n"
    assert git(studio, "rev-parse", "HEAD") == head
    assert "synced code from" in out.stdout
    assert_user_files_intact(studio)
    # nothing new upstream: one line says so and training still starts
    again = launch(studio)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_changed_runpy_is_reexecuted_exactly_once(remote_and_checkout):
    _, dev, studio = remote_and_checkout
    new_run = (dev / "run.py").read_text().replace(
        "def main(argv: list[str] | None = None) -> int:\n",
        "def main(argv: list[str] | None = None) -> int:\n    print('NEW-LAUNCHER-VERSION', flush=True)\n", 1)
    assert new_run != (dev / "run.py").read_text()
    push(dev, {"run.py": new_run})
    out = launch(studio, "--restart-delay", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("restarting the launcher once") == 1
    assert out.stdout.count("NEW-LAUNCHER-VERSION") == 1
    assert out.stdout.count("standin bout 1 done") == 1
    assert_user_files_intact(studio)


def test_a_refused_second_launcher_touches_neither_the_code_nor_the_run(remote_and_checkout):
    """A second `python run.py` on a run that a launcher trains: one line, exit 2, before its code sync (the
    checkout stays on its commit under the running trainer), before it writes the run's launch config and
    before --forcenewrun could archive anything."""
    _, dev, studio = remote_and_checkout
    (studio / "mode.txt").write_text("wait-signal")
    first = subprocess.Popen([sys.executable, "run.py"], cwd=studio, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    run_dir = studio / "runs" / "carracing"
    deadline = time.time() + 60
    while not (run_dir / "started.txt").exists():
        assert time.time() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    head, given = git(studio, "rev-parse", "HEAD"), (run_dir / ".launch-config.json").read_bytes()
    push(dev, {"NEWFILE.txt": "from upstream\n"})  # the second launcher would sync this
    second = launch(studio, "--forcenewrun", *forced(learning_rate=0.5, batch=8))
    assert second.returncode == 2
    (line,) = second.stderr.strip().splitlines()
    assert "is being trained by process" in line and "changed nothing" in line and "Traceback" not in line
    assert "synced" not in second.stdout and git(studio, "rev-parse", "HEAD") == head
    assert not (studio / "NEWFILE.txt").exists()
    assert (run_dir / ".launch-config.json").read_bytes() == given and not (run_dir / "archive").exists()
    assert len(bouts(run_dir)) == 1 and first.poll() is None
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err


def test_unreachable_remote_still_trains(remote_and_checkout, tmp_path):
    _, _, studio = remote_and_checkout
    for link in ("http://127.0.0.1:9/nothing.git", str(tmp_path / "no-such-repo")):
        (studio / ".env").write_text(f"code_base_link={link}\n")
        out = launch(studio)
        assert out.returncode == 0, out.stderr
        assert "code sync failed" in out.stderr and "carrying on with the local code" in out.stderr
        assert "fatal:" in out.stderr  # git's own reason is shown
        assert re.search(r"standin bout \d+ done", out.stdout)


def test_credentials_in_remote_url_are_not_printed(remote_and_checkout):
    _, _, studio = remote_and_checkout
    (studio / ".env").write_text("code_base_link=http://user:s3cr3t-token@127.0.0.1:9/x.git\n")
    out = launch(studio)
    assert out.returncode == 0
    assert "s3cr3t-token" not in out.stdout + out.stderr


def test_remote_that_never_answers_is_abandoned_in_time(remote_and_checkout):
    _, _, studio = remote_and_checkout
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing is ever read or answered
    try:
        port = silent.getsockname()[1]
        (studio / ".env").write_text(f"code_base_link=http://127.0.0.1:{port}/x.git\ncode_sync_timeout=2\n")
        t0 = time.monotonic()
        out = launch(studio)
        assert time.monotonic() - t0 < 15
        assert out.returncode == 0, out.stderr
        assert "the remote did not answer within 2 s (code_sync_timeout in .env)" in out.stderr
        assert re.search(r"standin bout \d+ done", out.stdout)  # training started anyway
    finally:
        silent.close()


class _AuthGitServer(http.server.SimpleHTTPRequestHandler):
    """A git remote over HTTP (git's dumb protocol: plain files) that wants Basic credentials."""
    expected = ""

    def do_GET(self):
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def test_credentials_reach_git_by_askpass_never_argv_or_git_config(remote_and_checkout):
    remote, dev, studio = remote_and_checkout
    head = push(dev, {"NEWFILE.txt": "over http\n"})
    git(remote, "update-server-info")
    token = "tok3n-Zx9-never-in-argv"
    handler = functools.partial(_AuthGitServer, directory=str(remote))
    _AuthGitServer.expected = "Basic " + base64.b64encode(f"alice:{token}".encode()).decode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    seen, stop = [], threading.Event()

    def sample_cmdlines():
        while not stop.is_set():
            for proc in Path("/proc").iterdir():
                try:
                    cmd = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if token.encode() in cmd:
                    seen.append(cmd)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample_cmdlines, daemon=True)
    sampler.start()
    try:
        (studio / ".env").write_text(f"code_base_link=http://alice:{token}@127.0.0.1:{server.server_port}/\n")
        out = launch(studio)
    finally:
        stop.set()
        sampler.join()
        server.shutdown()
    assert out.returncode == 0, out.stderr
    assert git(studio, "rev-parse", "HEAD") == head and (studio / "NEWFILE.txt").read_text() == "over http\n"
    assert not seen, "the token appeared in a process's command line"
    assert token not in (studio / ".git" / "config").read_text() + out.stdout + out.stderr
    assert not list(Path(tempfile.gettempdir()).glob("snndqn-askpass-*"))  # the helper is removed


def test_syntax_error_upstream_is_rolled_back(remote_and_checkout):
    _, dev, studio = remote_and_checkout
    good = git(studio, "rev-parse", "HEAD")
    push(dev, {"train.py": STANDIN + "\ndef broken(:\n"})
    out = launch(studio)
    assert out.returncode == 0, out.stderr
    assert "rolled back to " + good[:8] in out.stderr
    assert git(studio, "rev-parse", "HEAD") == good
    assert "standin bout 1 done" in out.stdout  # the previous code trained
    assert_user_files_intact(studio)


def test_plain_folder_becomes_a_checkout_without_losing_files(remote_and_checkout, tmp_path):
    remote, dev, _ = remote_and_checkout
    head = push(dev, {"NEWFILE.txt": "upstream\n"})
    plain = tmp_path / "uploaded"
    write_project(plain)  # an older copy uploaded by hand
    (plain / "notes.txt").write_text("mine")
    (plain / ".env").write_text(f"code_base_link={remote}\n")
    (plain / "conf.json").write_text(json.dumps(TINY))
    (plain / "runs" / "r").mkdir(parents=True)
    (plain / "runs" / "r" / "ckpt.pt").write_bytes(b"weights")
    out = launch(plain)
    assert out.returncode == 0, out.stderr
    assert git(plain, "rev-parse", "HEAD") == head
    assert git(plain, "status", "--porcelain", "--untracked-files=no") == ""
    assert (plain / "notes.txt").read_text() == "mine"
    assert (plain / "runs" / "r" / "ckpt.pt").read_bytes() == b"weights"
    assert (plain / "NEWFILE.txt").exists()
    assert json.loads((plain / "conf.json").read_text()) == TINY


# --------------------------------------------------------------------------- bad input
@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "proj"
    write_project(folder)
    return folder


BAD_INPUTS = [
    ("conf", '{"batch": 32,\n  "gamma": }', "line 2 column"),
    ("conf", '{"lerning_rate": 0.001}', "did you mean 'learning_rate'"),
    ("conf", '{"batch": "big"}', "'batch' must be an integer"),
    ("conf", '{"gamma": 1.5}', "'gamma' must be <= 1"),
    ("conf", '{"epsilon_start": 0.01, "epsilon_min": 0.5}', "contradict"),
    ("conf", '[1, 2]', "must be a JSON object"),
    ("args", ["--config", "{}"], "--forceconfig and --config go together"),
    ("args", ["--forceconfig"], "--forceconfig and --config go together"),
    ("args", ["--forceconfig", "--config", "{bad json"], "--config is not valid JSON"),
    ("args", ["no_such_script.py"], "does not exist"),
    ("args", ["--bogus-flag"], "unrecognized arguments"),
    ("env", "python_venv_path=/no/such/python\n", "python_venv_path"),
    ("env_conf", ("repo_ID=\n", '{"upload_to_cloud": true}'), "lacks repo_ID"),
    ("conf", '{"batch": 32, "batch": 8}', 'gives key "batch" twice'),
    ("conf_bytes", b'{"batch": "\xff\xfe"}', "conf.json is not UTF-8 text"),
    ("conf_dir", None, "conf.json cannot be read"),
    ("env_bytes", b"session_name=\xff\xfe\n", "is not UTF-8 text"),
    ("env", "python_venv_path=/bin/false\n", "/bin/false is not a Python 3 interpreter"),
    ("args", ["--kill-grace", "nan"], "--kill-grace must be a finite number"),
    ("args", ["--quick-crash", "nan"], "--quick-crash must be a finite number"),
    ("args", ["--restart-delay", "inf"], "--restart-delay must be a finite number"),
    ("conf", '{"runs_dir": "RUNS_FILE"}', "Not a directory"),
    ("conf", '{"runs_dir": "/proc/snn-ddqn-runs"}', "/proc/snn-ddqn-runs"),
]


@pytest.mark.parametrize("kind,value,expect", BAD_INPUTS, ids=[f"{k}-{e[:20]}" for k, _, e in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(project, kind, value, expect):
    (project / "runs" / "keep").mkdir(parents=True)
    (project / "runs" / "keep" / "metrics.csv").write_text("episode\n1\n")
    args: list[str] = []
    (project / "a_file").write_text("not a folder")
    if kind == "conf":
        (project / "conf.json").write_text(value.replace("RUNS_FILE", str(project / "a_file" / "runs")))
    elif kind == "conf_bytes":
        (project / "conf.json").write_bytes(value)
    elif kind == "conf_dir":
        (project / "conf.json").mkdir()
    elif kind == "env_bytes":
        (project / ".env").write_bytes(value)
    elif kind == "args":
        args = value
    elif kind == "env":
        (project / ".env").write_text(value)
    elif kind == "env_conf":
        (project / ".env").write_text(value[0])
        (project / "conf.json").write_text(value[1])
    out = launch(project, *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert expect in lines[0]
    assert "Traceback" not in out.stderr + out.stdout
    assert (project / "runs" / "keep" / "metrics.csv").read_text() == "episode\n1\n"


def test_missing_conf_is_copied_from_example(project):
    out = launch(project)
    assert out.returncode == 0, out.stderr
    assert (project / "conf.json").read_text() == (REPO / "conf.json.example").read_text()
    assert "copied conf.json.example to conf.json" in out.stdout


def test_resolved_config_is_written_to_run_folder_without_secrets(project):
    (project / ".env").write_text("huggingface_write=hf_SECRETWRITE\nhuggingface_read=hf_SECRETREAD\n")
    out = launch(project, *forced(name="cfgtest", extra_info="x1", batch=8))
    assert out.returncode == 0, out.stderr
    run_dir = project / "runs" / "cfgtest-x1"
    written = json.loads((run_dir / ".launch-config.json").read_text())  # what the child was given
    assert written["batch"] == 8 and written["snn_tSteps"] == 25
    everything = "".join(p.read_text(errors="ignore") for p in run_dir.rglob("*") if p.is_file())
    assert "SECRET" not in everything + out.stdout + out.stderr
    assert not (project / "conf.json").exists()  # --forceconfig never touches conf.json


# --------------------------------------------------------------------------- supervisor
def bouts(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "bouts.jsonl").read_text().splitlines()]


def test_crashed_bout_restarts_with_backoff_and_continues(project):
    (project / "mode.txt").write_text("crash-then-finish:2")
    out = launch(project, "--restart-delay", "0.3", "--max-crashes", "5", *forced(name="crashy", continue_run=False))
    assert out.returncode == 0, out.stderr
    b = bouts(project / "runs" / "crashy")
    assert len(b) == 3
    assert [x["new_run"] for x in b] == [True, False, False]
    assert [x["continue_run"] for x in b] == [False, True, True]
    assert b[1]["t"] - b[0]["t"] >= 0.3 and b[2]["t"] - b[1]["t"] >= 0.6  # back-off doubles
    assert out.stderr.count("restarting with continue_run") == 2
    assert "run finished: after crashes" in out.stdout


def test_crash_loop_stops_with_exit_1(project):
    (project / "mode.txt").write_text("crash")
    out = launch(project, "--restart-delay", "0", *forced(name="loop"))
    assert out.returncode == 1
    assert "crashed 3 times in a row" in out.stderr and "See its output above" in out.stderr
    assert len(bouts(project / "runs" / "loop")) == 3


def test_finished_status_ends_the_launcher(project):
    out = launch(project, *forced(name="done"))
    assert out.returncode == 0
    assert len(bouts(project / "runs" / "done")) == 1
    assert "run finished: budget" in out.stdout
    assert bouts(project / "runs" / "done")[0]["malloc"] == "0"  # allocator defaults reach the child


def test_train_max_time_bounds_the_bouts(project):
    (project / "mode.txt").write_text("use-budget")
    t0 = time.monotonic()
    out = launch(project, *forced(name="timed", train_max_time=2.5, max_run_time=1))
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    b = bouts(project / "runs" / "timed")
    # bouts of at most max_run_time, together never beyond train_max_time
    assert 2 <= len(b) <= 3 and b[0]["budget"] == 1
    assert all(x["budget"] <= 1 for x in b) and sum(x["budget"] for x in b) <= 2.5
    assert all(x["continue_run"] for x in b[1:])
    assert re.search(r"train_max_time of \d s reached", out.stdout)
    assert took < 30


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_reaches_child_and_no_new_bout_starts(project, sig):
    (project / "mode.txt").write_text("wait-signal")
    proc = subprocess.Popen([sys.executable, "run.py", *forced(name="sig")], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = project / "runs" / "sig"
    deadline = time.time() + 60
    while not (run_dir / "started.txt").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (run_dir / "signal.txt").read_text() == sig.name
    assert len(bouts(run_dir)) == 1
    assert f"stopped by {sig.name}" in out


# --------------------------------------------------------------------------- dependencies
def make_wheel(folder: Path, name: str = "snndqn_tinydep", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel built by hand, so pip installs it without any network."""
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": "VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{p},,\n" for p in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
        z.writestr(f"{dist}/RECORD", record)
    return wheel


def test_dependency_check_installs_only_what_is_missing(project, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    wheel = make_wheel(tmp_path)
    (project / "requirements.txt").write_text(f"pytest  # installed already\nsnndqn_tinydep @ {wheel.as_uri()}\n")
    (project / ".env").write_text(f"python_venv_path={venv}\n")
    out = launch(project, *forced(name="deps"))
    assert out.returncode == 0, out.stderr
    assert "installing requirements (1 missing: snndqn_tinydep)" in out.stdout
    py = venv / "bin" / "python"
    assert subprocess.run([str(py), "-c", "import snndqn_tinydep; print(snndqn_tinydep.VALUE)"],
                          capture_output=True, text=True).stdout.strip() == "42"
    again = launch(project, *forced(name="deps"))
    assert again.returncode == 0 and "installing requirements" not in again.stdout


FAKE_PIP = """#!/bin/bash
# a Python whose pip behaves as FAKE_PIP says; everything else is the real interpreter
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "$*" >> "$FAKE_PIP_CALLS"
  echo "some pip chatter"
  case "$FAKE_PIP" in
    managed) echo "error: externally-managed-environment"; exit 1;;
    noindex) for a in "$@"; do [ "$a" = "--index-url" ] && { echo "ERROR: could not connect"; exit 1; }; done; exit 0;;
  esac
  exit 0
fi
exec PYTHON "$@"
"""


def fake_python(tmp_path: Path) -> Path:
    path = tmp_path / "fakepython"
    path.write_text(FAKE_PIP.replace("PYTHON", sys.executable))
    path.chmod(0o755)
    return path


def test_an_unreachable_cpu_index_falls_back_to_pypi_and_pip_is_quiet(project, tmp_path):
    (project / "requirements.txt").write_text("torch>=999\n")  # missing: the launcher installs it
    (project / ".env").write_text(f"python_venv_path={fake_python(tmp_path)}\n")
    calls = tmp_path / "calls.txt"
    out = launch(project, *forced(name="deps"), env={"FAKE_PIP": "noindex", "FAKE_PIP_CALLS": str(calls)})
    assert out.returncode == 0, out.stderr
    made = calls.read_text().splitlines()
    assert "--index-url" in made[0] and "--index-url" not in made[1] and "torch>=999" in made[1]
    assert "installing torch from PyPI instead" in out.stdout
    assert "some pip chatter" not in out.stdout + out.stderr and "some pip chatter" in (project / "pip-install.log").read_text()
    assert "pip's output: " in out.stdout


def test_install_only_installs_and_trains_nothing(project, tmp_path):
    (project / "requirements.txt").write_text("torch>=999\n")
    (project / ".env").write_text(f"python_venv_path={fake_python(tmp_path)}\n")
    calls = tmp_path / "calls.txt"
    out = launch(project, "--install-only", env={"FAKE_PIP": "ok", "FAKE_PIP_CALLS": str(calls)})
    assert out.returncode == 0, out.stderr
    assert "requirements met for" in out.stdout and not (project / "runs").exists()
    assert any("torch>=999" in line for line in calls.read_text().splitlines())


def test_an_externally_managed_python_is_told_to_use_a_venv(project, tmp_path):
    (project / "requirements.txt").write_text("snndqn_absent_dep\n")
    (project / ".env").write_text(f"python_venv_path={fake_python(tmp_path)}\n")
    out = launch(project, *forced(name="deps"), env={"FAKE_PIP": "managed", "FAKE_PIP_CALLS": str(tmp_path / "c")})
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "python3 -m venv .venv && . .venv/bin/activate" in line and "Traceback" not in line


def test_dependency_check_finds_nothing_missing_in_this_environment():
    # every line of the real requirements.txt (versions, extras, markers) is satisfied here
    sys.path.insert(0, str(REPO))
    import run

    assert run.missing_requirements(sys.executable, REPO / "requirements.txt") == []


def test_torch_comes_from_the_cpu_index_on_a_machine_without_cuda(tmp_path):
    sys.path.insert(0, str(REPO))
    import run

    req = tmp_path / "requirements.txt"
    cpu = run.install_commands("py", req, ["torch>=2.1", "tqdm>=4.60"], cuda=False)
    assert cpu == [["py", "-m", "pip", "install", "--disable-pip-version-check", "torch>=2.1", "--index-url",
                    run.TORCH_CPU_INDEX], ["py", "-m", "pip", "install", "--disable-pip-version-check", "-r", str(req)]]
    # with CUDA pip's default (CUDA) torch is right; with torch installed it is never touched
    assert run.install_commands("py", req, ["torch>=2.1"], cuda=True) == [cpu[1]]
    assert run.install_commands("py", req, ["tqdm>=4.60"], cuda=False) == [cpu[1]]


def test_env_parser_matches_dotenv_rules():
    import envfile

    text = textwrap.dedent('''\
        # comment
        export A=1
        B = two words  # trailing comment
        C="quoted # not a comment"
        D='single $x'
        E="line1\\nline2"
        F=
        G=a#b
        H="multi
        line"
    ''')
    parsed = envfile.parse_env_text(text)
    assert parsed == {"A": "1", "B": "two words", "C": "quoted # not a comment", "D": "single $x",
                      "E": "line1\nline2", "F": "", "G": "a#b", "H": "multi\nline"}
    dotenv = pytest.importorskip("dotenv")
    import io

    assert {k: v or "" for k, v in dotenv.dotenv_values(stream=io.StringIO(text)).items()} == parsed


def test_another_script_is_said_as_a_script_and_the_help_examples_do_not_collide(project):
    (project / "other.py").write_text("print('other ran')\n")
    out = launch(project, "other.py")
    assert out.returncode == 0, out.stderr
    assert "running other.py" in out.stdout and "other.py finished" in out.stdout and "other ran" in out.stdout
    assert "bout 1" not in out.stdout and "status.json" not in out.stdout
    # run.py --help's --forceconfig example trains a run of its own, not over the default run's checkpoint
    helptext = launch(project, "--help").stdout
    examples = [json.loads(m) for m in re.findall(r"--config '(\{.*?\})'", helptext)]
    assert examples and all(e.get("name") not in (None, "carracing") for e in examples)
