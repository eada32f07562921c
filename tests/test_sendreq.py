"""serverRunner/sendReq.py: input validation, the detached command, wrong credentials (local HTTP server)."""
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SENDREQ = REPO / "serverRunner" / "sendReq.py"
sys.path.insert(0, str(REPO / "serverRunner"))
import sendReq  # noqa: E402

ENTRY = {"user": "alice", "apiKey": "SECRETKEY123", "userID": "SECRETUID456", "teamspaceName": "ts",
         "studioName": "s1", "commandToRun": "python run.py"}


def call(args, env=None):
    return subprocess.run([sys.executable, str(SENDREQ), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("content,entry,message", [
    (None, "studio_1", "does not exist"),
    ("{bad", "studio_1", "not valid JSON"),
    (json.dumps({"studio_1": ENTRY}), "studio_9", "has no entry 'studio_9'"),
    (json.dumps({"studio_1": {**ENTRY, "apiKey": ""}}), "studio_1", "entry 'studio_1' lacks field 'apiKey'"),
    (json.dumps({"studio_1": {**ENTRY, "machine": 3}}), "studio_1", "field 'machine'"),
    (json.dumps({"studio_1": {**ENTRY, "apiKey": "your-lightning-api-key"}}), "studio_1",
     "field 'apiKey' is still the placeholder 'your-lightning-api-key'"),
    ('{"studio_1": ' + json.dumps(ENTRY) + ', "studio_1": ' + json.dumps(ENTRY) + '}', "studio_1",
     'gives "studio_1" twice'),
    (b"\xff\xfe\x00garbage", "studio_1", "not UTF-8 text"),
    ("DIRECTORY", "studio_1", "cannot be read"),
])
def test_bad_input_exit_2(tmp_path, content, entry, message):
    path = tmp_path / "studios.json"
    if content == "DIRECTORY":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    r = call(["--studios", str(path), "--entry", entry])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert "SECRET" not in r.stdout + r.stderr


def test_no_network_is_one_whole_line_without_retry_noise(tmp_path):
    env = {"LIGHTNING_CLOUD_URL": "http://127.0.0.1:9", "STUDIO_USER": "alice", "STUDIO_API_KEY": ENTRY["apiKey"],
           "STUDIO_USER_ID": ENTRY["userID"], "STUDIO_TEAMSPACE": "ts", "STUDIO_NAME": "s1",
           "STUDIO_COMMAND": "python run.py", "HOME": str(tmp_path)}
    r = call(["--from-env"], env)
    assert r.returncode == 1
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0] == ("sendReq.py: studio ts/s1: http://127.0.0.1:9 could not be reached (no network, or the "
                        "server is down); try again later")


def test_from_env_needs_every_variable():
    env = {k: "" for k in sendReq.FROM_ENV.values()}
    r = call(["--from-env"], env)
    assert r.returncode == 2 and "STUDIO_USER" in r.stderr


def test_detached_command_runs_in_the_background_with_tricky_quoting(tmp_path):
    out = tmp_path / "out.txt"
    log = tmp_path / "launcher.log"
    go = tmp_path / "go"
    # the command cannot finish before the test creates `go`: returning at all proves it was detached
    command = f"echo \"it's $((6*7))\"; while [ ! -e {go} ]; do sleep 0.05; done; echo 'done; really' > {out}"
    line = sendReq.detached(command, log=str(log))
    try:
        subprocess.run(["bash", "-c", line], check=True, timeout=30)
        assert not out.exists()
    finally:
        go.touch()  # lets the command end also when the test fails
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert out.read_text() == "done; really\n"
    assert log.read_text().startswith("it's 42")


def test_print_command(tmp_path):
    path = tmp_path / "studios.json"
    path.write_text(json.dumps({"studio_1": {**ENTRY, "commandToRun": "cd ~ && python run.py"}}))
    r = call(["--studios", str(path), "--print-command"])
    assert r.returncode == 0
    assert r.stdout.strip() == "setsid nohup bash -lc 'cd ~ && python run.py' > $HOME/snn-ddqn-launcher.log 2>&1 < /dev/null &"


class Unauthorized(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list = []

    def log_message(self, *args):
        pass

    def _answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        Unauthorized.seen.append((self.command, self.path, dict(self.headers), body))
        data = json.dumps({"code": 16, "message": "unauthenticated"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer


def test_wrong_key_is_exit_1_without_secrets(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"LIGHTNING_CLOUD_URL": f"http://127.0.0.1:{server.server_address[1]}",
               "STUDIO_USER": "alice", "STUDIO_API_KEY": ENTRY["apiKey"], "STUDIO_USER_ID": ENTRY["userID"],
               "STUDIO_TEAMSPACE": "ts", "STUDIO_NAME": "s1", "STUDIO_COMMAND": "python run.py",
               "HOME": str(tmp_path)}
        r = call(["--from-env"], env)
    finally:
        server.shutdown()
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "wrong credentials" in lines[0]
    assert "SECRET" not in r.stdout + r.stderr
    assert any(path.startswith("/v1/auth/user") for _, path, _, _ in Unauthorized.seen)  # the SDK really asked
    for _, path, _, body in Unauthorized.seen:  # the key travels in headers only, never in a URL or body
        assert b"SECRETKEY" not in body and "SECRETKEY" not in path


# --------------------------------------------------------------------------- against the Lightning stand-in
from lightning_standin import USER_ID, LightningStandIn  # noqa: E402

KEY = "SECRETKEY-lightning"


def lightning_env(standin, tmp_path, **entry):
    values = {"user": "alice", "apiKey": KEY, "userID": USER_ID, "teamspaceName": "ts", "studioName": "s1",
              "commandToRun": "cd ~ && python run.py", **entry}
    env = {v: values.get(k, "") for k, v in sendReq.FROM_ENV.items()}
    env.update(LIGHTNING_CLOUD_URL=standin.url, HOME=str(tmp_path), STUDIO_ENTRY="studio_1")
    return env


@pytest.fixture
def lightning():
    made = []

    def make(**kw):
        s = LightningStandIn(api_key=KEY, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def assert_clean(standin, result):
    assert "SECRETKEY" not in result.stdout + result.stderr and USER_ID not in result.stdout + result.stderr
    for req in standin.requests:  # the key travels in the Authorization header only
        assert KEY.encode() not in req["body"] and KEY not in req["path"]


def test_stopped_studio_is_started_and_the_command_posted_detached(lightning, tmp_path):
    standin = lightning()
    r = call(["--from-env"], lightning_env(standin, tmp_path))
    assert r.returncode == 0, r.stderr
    assert standin.started == [("s1", "cpu-4")]
    assert standin.commands == [sendReq.detached("cd ~ && python run.py")]
    assert "command accepted" in r.stdout and "started on" in r.stdout
    assert_clean(standin, r)
    assert len(standin.requests) < 80  # no busy polling


def test_a_job_entry_submits_a_job_in_the_studios_environment(lightning, tmp_path):
    standin = lightning()
    config = {"name": "it's \"quoted\" $HOME; x", "seed": 1}
    r = call(["--from-env"], lightning_env(standin, tmp_path, target="job", machine="CPU", interruptible="true",
                                           max_runtime="3600", config=json.dumps(config)))
    assert r.returncode == 0, r.stderr
    (job,) = standin.jobs
    assert standin.started == [] and standin.commands == []  # the studio itself is left alone
    spec = job["spec"]
    assert spec["cloudspaceId"] == "cs-s1" and spec["instanceName"] == "cpu-4" and spec["spot"] is True
    assert spec["requestedRunDurationSeconds"] == "3600"
    assert spec["command"] == sendReq.command_of({"commandToRun": "cd ~ && python run.py", "config": config})
    assert re.fullmatch(r"studio-1-\d{8}-\d{6}", job["name"])
    out = r.stdout.strip().splitlines()
    # the SDK's warning that a spot machine ignores max_runtime reaches the user as a note, before the result
    assert out[0].startswith("studio_1: note: max_runtime has no effect on interruptible") and len(out) == 2
    assert f"job {job['name']} submitted on CPU (interruptible)" in out[1]
    assert_clean(standin, r)
    again = call(["--from-env"], lightning_env(standin, tmp_path, target="job", interruptible="false"))
    assert again.returncode == 0, again.stderr
    assert standin.jobs[1]["spec"].get("spot") in (None, False) and "(interruptible)" not in again.stdout


@pytest.mark.parametrize("entry,message", [({"target": "vm"}, "field 'target' must be \"studio\" or \"job\""),
                                           ({"interruptible": "true"}, "applies to \"target\": \"job\" entries only"),
                                           ({"target": "job", "max_runtime": "10"}, "whole seconds >= 60, got 10")])
def test_bad_job_fields_are_refused_before_any_request(lightning, tmp_path, entry, message):
    standin = lightning()
    r = call(["--from-env"], lightning_env(standin, tmp_path, **entry))
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert message in line and standin.requests == []


def test_a_machine_lightning_sdk_does_not_know_is_refused_before_any_request(lightning, tmp_path):
    standin = lightning()
    r = call(["--from-env"], lightning_env(standin, tmp_path, machine="GPU-9000"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'GPU-9000', which lightning-sdk does not know" in lines[0] and "T4" in lines[0]
    assert standin.requests == []


def test_running_studio_is_not_restarted(lightning, tmp_path):
    standin = lightning(running=("s1",))
    r = call(["--from-env"], lightning_env(standin, tmp_path, machine="CPU"))
    assert r.returncode == 0, r.stderr
    assert standin.started == [] and len(standin.commands) == 1
    assert_clean(standin, r)


@pytest.mark.parametrize("case,expect", [("wrong_key", "wrong credentials"), ("missing_studio", "not found"),
                                         ("no_capacity", "no capacity")])
def test_failures_are_exit_1_in_one_line(lightning, tmp_path, case, expect):
    standin = lightning(out_of_capacity=case == "no_capacity")
    entry = {"apiKey": "SECRETKEY-wrong"} if case == "wrong_key" else {}
    if case == "missing_studio":
        entry["studioName"] = "s1-typo"
    r = call(["--from-env"], lightning_env(standin, tmp_path, **entry))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], r.stderr
    assert standin.commands == [] and standin.started == []
    assert "SECRETKEY" not in r.stdout + r.stderr


def test_an_interpreter_without_lightning_sdk_is_told_how_to_choose_another(tmp_path):
    (tmp_path / "lightning_sdk.py").write_text("raise ImportError('not here')\n")  # as if it were not installed
    env = {"PYTHONPATH": str(tmp_path), "STUDIO_USER": "alice", "STUDIO_API_KEY": ENTRY["apiKey"],
           "STUDIO_USER_ID": ENTRY["userID"], "STUDIO_TEAMSPACE": "ts", "STUDIO_NAME": "s1",
           "STUDIO_COMMAND": "python run.py", "HOME": str(tmp_path)}
    r = call(["--from-env"], env)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert "lightning-sdk is not installed for" in line and "--python PATH or PYTHON=PATH" in line
    assert "SECRET" not in r.stdout + r.stderr


def test_a_server_that_never_answers_is_bounded(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts connections (the kernel's backlog) and never answers
    try:
        env = {"LIGHTNING_CLOUD_URL": f"http://127.0.0.1:{listener.getsockname()[1]}", "STUDIO_USER": "alice",
               "STUDIO_API_KEY": ENTRY["apiKey"], "STUDIO_USER_ID": ENTRY["userID"], "STUDIO_TEAMSPACE": "ts",
               "STUDIO_NAME": "s1", "STUDIO_COMMAND": "python run.py", "HOME": str(tmp_path), "SENDREQ_TIMEOUT": "3"}
        t0 = time.monotonic()
        r = call(["--from-env"], env)
        took = time.monotonic() - t0
    finally:
        listener.close()
    assert r.returncode == 1 and took < 60, (took, r.stderr)
    (line,) = r.stderr.strip().splitlines()
    assert "within 3 s" in line and "SECRET" not in r.stdout + r.stderr


def test_a_studio_config_reaches_run_py_whole_whatever_it_holds(tmp_path):
    """studios.json's `config` object is appended as --forceconfig --config '<json>', quoted for the shell: the
    command the studio runs receives the very JSON (quotes, spaces, $ and ; included)."""
    tricky = {"name": "it's-seed1", "seed": 1, "extra_info": "a", "wandb_project": "x; echo $HOME \"q\""}
    entry = {**ENTRY, "commandToRun": f"{sys.executable} -c 'import sys; print(sys.argv[1:])'",
             "config": tricky}
    shown = subprocess.run(["bash", "-lc", sendReq.command_of(entry)], capture_output=True, text=True, check=True)
    args = eval(shown.stdout)  # the printed argv list
    assert args[:2] == ["--forceconfig", "--config"] and json.loads(args[2]) == tricky
    # and through the detached line the studio gets (bash -lc '<command>' &)
    path = tmp_path / "studios.json"
    path.write_text(json.dumps({"studio_1": entry}))
    line = call(["--studios", str(path), "--print-command"]).stdout.strip()
    assert line.startswith("setsid nohup bash -lc ") and "--forceconfig --config" in line
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"studio_1": {**ENTRY, "config": [1, 2]}}))
    r = call(["--studios", str(bad)])
    assert r.returncode == 2 and "field 'config' must be an object" in r.stderr
