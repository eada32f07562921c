#!/usr/bin/env python3
"""Ask one Lightning AI studio to run its command, detached, and return at once.

    python serverRunner/sendReq.py --studios studios.json --entry studio_1
    python serverRunner/sendReq.py --from-env        # credentials from STUDIO_* (trainingRunner.js)

Looks the studio up (never creates one: a typo is an error, not a new studio), starts it when it is
not running (on the entry's `machine`, default CPU), then runs `commandToRun` detached through
`setsid nohup bash -lc '<command>' > <log> 2>&1 < /dev/null &`, so the call returns as soon as the
studio accepted the command. An entry with `"target": "job"` instead submits a Lightning Job that runs
the command in the studio's environment on its own machine (`interruptible`, default true: a spot
machine; `max_runtime` seconds where the platform honours it) and returns once it is submitted.
Exit codes: 0 accepted; 2 bad input; 1 wrong credentials, no capacity, a missing studio or teamspace,
or the network (one line each). API keys and user ids never appear in the output.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import sys
import time
import warnings
from pathlib import Path

REQUIRED = ("user", "apiKey", "userID", "teamspaceName", "studioName", "commandToRun")
FROM_ENV = {"user": "STUDIO_USER", "apiKey": "STUDIO_API_KEY", "userID": "STUDIO_USER_ID",
            "teamspaceName": "STUDIO_TEAMSPACE", "studioName": "STUDIO_NAME", "commandToRun": "STUDIO_COMMAND",
            "machine": "STUDIO_MACHINE", "config": "STUDIO_CONFIG", "target": "STUDIO_TARGET",
            "interruptible": "STUDIO_INTERRUPTIBLE", "max_runtime": "STUDIO_MAX_RUNTIME"}
TARGETS = ("studio", "job")
LOG_PATH = "$HOME/snn-ddqn-launcher.log"  # in the studio: where the detached command's output goes


class BadInput(Exception):
    pass


class Failed(Exception):
    pass


def _no_duplicates(pairs):
    """A JSON object whose keys are unique (as trainingRunner.js checks the same file): a second entry or
    field of the same name would be dropped silently."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise BadInput(f"studios.json gives {json.dumps(key)} twice; keep one")
        seen[key] = value
    return seen


def load_entry(args) -> tuple[str, dict]:
    if args.from_env:
        entry = {k: os.environ.get(v, "") for k, v in FROM_ENV.items()}
        name = os.environ.get("STUDIO_ENTRY", "studio")
        missing = [FROM_ENV[k] for k in REQUIRED if not entry[k].strip()]
        if missing:
            raise BadInput(f"--from-env: environment variable {missing[0]} is missing or empty")
        check_placeholders(f"entry {name!r}", entry)
        try:
            entry["config"] = json.loads(entry["config"]) if entry["config"].strip() else None
        except json.JSONDecodeError as e:
            raise BadInput(f"--from-env: STUDIO_CONFIG is not valid JSON ({e.msg})") from None
        check_config(f"entry {name!r}", entry)
        for key, text in (("interruptible", entry["interruptible"]), ("max_runtime", entry["max_runtime"])):
            try:
                entry[key] = json.loads(text) if text.strip() else None
            except json.JSONDecodeError:
                raise BadInput(f"--from-env: {FROM_ENV[key]} is not valid JSON ({text!r})") from None
        entry["target"] = entry["target"] or None
        check_job(f"entry {name!r}", entry)
        return name, entry
    path = Path(args.studios)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
    except FileNotFoundError:
        raise BadInput(f"{path} does not exist; copy studios.json.example to studios.json and fill it in") from None
    except json.JSONDecodeError as e:
        raise BadInput(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not UTF-8 text; it should be a JSON file of studio entries") from None
    except OSError as e:
        raise BadInput(f"{path} cannot be read ({e.strerror}); it should be a JSON file of studio entries") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} must be an object of entries like \"studio_1\": {{...}}")
    if args.entry not in data:
        raise BadInput(f"{path} has no entry {args.entry!r} (entries: {', '.join(map(repr, data)) or 'none'})")
    entry = data[args.entry]
    if not isinstance(entry, dict):
        raise BadInput(f"{path}: entry {args.entry!r} must be an object")
    for field in REQUIRED:
        if not isinstance(entry.get(field), str) or not entry[field].strip():
            raise BadInput(f"{path}: entry {args.entry!r} lacks field {field!r} (a non-empty string)")
    if "machine" in entry and (not isinstance(entry["machine"], str) or not entry["machine"].strip()):
        raise BadInput(f"{path}: entry {args.entry!r} field 'machine' must be a non-empty string when given")
    check_placeholders(f"{path}: entry {args.entry!r}", entry)
    check_config(f"{path}: entry {args.entry!r}", entry)
    check_job(f"{path}: entry {args.entry!r}", entry)
    return args.entry, entry


def check_config(where: str, entry: dict) -> None:
    if entry.get("config") is not None and not isinstance(entry["config"], dict):
        raise BadInput(f"{where} field 'config' must be an object of conf.json keys")


def check_job(where: str, entry: dict) -> None:
    """`target` (studio or job) and the job-only fields, as trainingRunner.js checks them."""
    target = entry.get("target")
    if target is not None and target not in TARGETS:
        raise BadInput(f"{where} field 'target' must be \"studio\" or \"job\", got {json.dumps(target)}")
    for key in ("interruptible", "max_runtime"):
        if entry.get(key) is not None and target != "job":
            raise BadInput(f"{where} field {key!r} applies to \"target\": \"job\" entries only")
    if entry.get("interruptible") is not None and not isinstance(entry["interruptible"], bool):
        raise BadInput(f"{where} field 'interruptible' must be true or false")
    runtime = entry.get("max_runtime")
    if runtime is not None and (isinstance(runtime, bool) or not isinstance(runtime, int) or runtime < 60):
        raise BadInput(f"{where} field 'max_runtime' must be whole seconds >= 60, got {json.dumps(runtime)}")


def job_name(entry_name: str, now: float | None = None) -> str:
    """A job name Lightning accepts (lower-case letters, digits, '-'): the entry's, with the UTC start time,
    so every round's job is its own."""
    base = re.sub(r"[^a-z0-9]+", "-", entry_name.lower()).strip("-")[:40] or "run"
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}"


def command_of(entry: dict) -> str:
    """The studio's command, with the entry's `config` (conf.json keys over the defaults) given to run.py as
    --forceconfig --config '<json>', quoted for the shell whatever the JSON holds."""
    config = entry.get("config")
    return entry["commandToRun"] + (f" --forceconfig --config {shlex.quote(json.dumps(config))}" if config else "")


def check_placeholders(where: str, entry: dict) -> None:
    """Values left as studios.json.example's placeholders ("your-...") are bad input, not a failed login."""
    for field in REQUIRED:
        value = str(entry.get(field, "")).strip()
        if value.lower().startswith("your-") or (value.startswith("<") and value.endswith(">")):
            raise BadInput(f"{where} field {field!r} is still the placeholder {value!r}; fill in your own value")


def detached(command: str, log: str = LOG_PATH) -> str:
    """A shell line that starts `command` in its own session and returns at once."""
    return f"setsid nohup bash -lc {shlex.quote(command)} > {log} 2>&1 < /dev/null &"


def _sdk(entry: dict):
    """lightning_sdk (Machine, Studio, Job, Status, OutOfCapacityError), logged in as the entry's user."""
    # The SDK reads these at import; without the version check switch it calls out to a package
    # index with no timeout.
    os.environ["LIGHTNING_USER_ID"] = entry["userID"]
    os.environ["LIGHTNING_API_KEY"] = entry["apiKey"]
    os.environ["LIGHTNING_DISABLE_VERSION_CHECK"] = "1"
    try:
        from lightning_sdk import Job, Machine, Studio
        from lightning_sdk.status import Status
    except ImportError:
        raise Failed(f"lightning-sdk is not installed for {sys.executable}: pip install lightning-sdk there, or give "
                     "the scheduler an interpreter that has it (--python PATH or PYTHON=PATH)") from None
    import logging

    # the SDK sets urllib3's logger to WARNING with its own handler on import: one line per failure, not a
    # "Retrying" line per try; its own INFO lines repeat what this helper prints
    for name in ("urllib3", "urllib3.connectionpool", "urllib3.util.retry", "lightning_sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from lightning_sdk.exceptions import OutOfCapacityError
    except ImportError:  # older SDKs
        OutOfCapacityError = RuntimeError  # noqa: N806
    machine = entry.get("machine") or None
    if machine:
        known = sorted(k for k, v in vars(Machine).items() if isinstance(v, Machine))
        if machine.upper() not in known and machine not in {str(getattr(Machine, k)) for k in known}:
            raise BadInput(f"field 'machine' is {machine!r}, which lightning-sdk does not know; use one of "
                           f"{', '.join(known)}")
    return Machine, Studio, Job, Status, OutOfCapacityError


@contextlib.contextmanager
def _one_line_failures(where: str, out_of_capacity):
    """The SDK's exceptions as one Failed line each."""
    try:
        yield
    except ConnectionError as e:
        raise Failed(f"{where}: wrong credentials ({_first_line(e)}); check apiKey and userID") from None
    except out_of_capacity as e:
        raise Failed(f"{where}: no capacity for the requested machine ({_first_line(e)})") from None
    except ValueError as e:  # "Studio 'x' does not exist." / teamspace not resolvable
        raise Failed(f"{where}: not found ({_first_line(e)}); check user, teamspaceName and studioName") from None
    except (BadInput, Failed):
        raise
    except Exception as e:  # network and server errors
        if _unreachable(e):
            server = os.environ.get("LIGHTNING_CLOUD_URL", "https://lightning.ai")
            raise Failed(f"{where}: {server} could not be reached (no network, or the server is down); "
                         "try again later") from None
        raise Failed(f"{where}: request failed ({type(e).__name__}: {_first_line(e)})") from None


def start_and_run(entry: dict) -> str:
    """Look the studio up, start it if needed, run the command detached. Returns a status line."""
    Machine, Studio, _, Status, OutOfCapacityError = _sdk(entry)  # noqa: N806
    machine = entry.get("machine") or None
    where = f"studio {entry['teamspaceName']}/{entry['studioName']}"
    with _one_line_failures(where, OutOfCapacityError):
        studio = Studio(name=entry["studioName"], teamspace=f"{entry['user']}/{entry['teamspaceName']}",
                        create_ok=False)
        started = ""
        if studio.status != Status.Running:
            studio.start(machine=Machine.from_str(machine) if machine else None)
            started = f" (started on {machine or 'the default machine'})"
        output, code = studio.run_with_exit_code(detached(command_of(entry)))
    if code != 0:
        raise Failed(f"{where}: the command was refused (exit {code}): {_first_line(output)}")
    return f"{where}{started}: command accepted, running detached; output in {LOG_PATH} there"


def submit_job(entry_name: str, entry: dict) -> str:
    """Submit a Lightning Job that runs the command in the studio's environment; returns a status line. What
    the SDK warns about (max_runtime on a spot machine) comes first as `note:` lines."""
    Machine, Studio, Job, _, OutOfCapacityError = _sdk(entry)  # noqa: N806
    machine = entry.get("machine") or "CPU"
    interruptible = entry.get("interruptible") is not False
    where = f"job of studio {entry['teamspaceName']}/{entry['studioName']}"
    with _one_line_failures(where, OutOfCapacityError), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        studio = Studio(name=entry["studioName"], teamspace=f"{entry['user']}/{entry['teamspaceName']}",
                        create_ok=False)
        job = Job.run(name=job_name(entry_name), machine=Machine.from_str(machine), command=command_of(entry),
                      studio=studio, interruptible=interruptible, max_runtime=entry.get("max_runtime"))
    notes = "".join(f"note: {_first_line(w.message)}\n" for w in caught if issubclass(w.category, UserWarning))
    return (f"{notes}{where}: job {job.name} submitted on {machine}"
            f"{' (interruptible)' if interruptible else ''}; its output is in the job's logs")


NETWORK_TIMEOUT_S = 60.0  # one network call (a server that accepts and never answers)
TOTAL_TIMEOUT_ENV = "SENDREQ_TIMEOUT"  # seconds for the whole start (default 600); the scheduler's --kill-after aside


def bounded(fn, *args):
    """`fn(*args)` with every socket bounded (NETWORK_TIMEOUT_S, where the SDK sets none) and the whole call
    bounded by SENDREQ_TIMEOUT: a server that never answers is one line and exit 1, not a hang."""
    import signal
    import socket

    total = float(os.environ.get(TOTAL_TIMEOUT_ENV) or 600)
    socket.setdefaulttimeout(min(NETWORK_TIMEOUT_S, total))

    def expired(_signum, _frame):  # the SDK retries what it catches: end the process, one line first
        print(f"sendReq.py: no answer from {os.environ.get('LIGHTNING_CLOUD_URL') or 'Lightning'} within {total:g} s "
              f"({TOTAL_TIMEOUT_ENV}); try again later", file=sys.stderr, flush=True)
        os._exit(1)

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, total)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _unreachable(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}"
    return any(k in text for k in ("failed to reach the server", "Max retries exceeded", "NewConnectionError",
                                   "ConnectionRefused", "Name or service not known", "timed out"))


def _first_line(x, limit: int = 300) -> str:
    """The first line of a message, shortened at a word boundary (never mid-word)."""
    lines = str(x).strip().splitlines()
    line = lines[0] if lines else ""
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " …"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sendReq.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studios", default=str(Path(__file__).resolve().parents[1] / "studios.json"))
    parser.add_argument("--entry", default="studio_1", help="entry of studios.json (default studio_1)")
    parser.add_argument("--from-env", action="store_true", help="read the entry from STUDIO_* variables")
    parser.add_argument("--print-command", action="store_true",
                        help="print the shell line that would be sent (a job's command), and exit")

    def fail(message: str):
        raise BadInput(message)

    parser.error = fail  # type: ignore[method-assign]
    secrets: list[str] = []
    try:
        args = parser.parse_args(argv)
        name, entry = load_entry(args)
        secrets = [entry["apiKey"], entry["userID"]]
        if args.print_command:  # a job runs the command itself; a studio's shell gets it detached
            print(command_of(entry) if entry.get("target") == "job" else detached(command_of(entry)))
            return 0
        if entry.get("target") == "job":
            print(_mask(f"{name}: {bounded(submit_job, name, entry)}", secrets), flush=True)
        else:
            print(_mask(f"{name}: {bounded(start_and_run, entry)}", secrets), flush=True)
        return 0
    except BadInput as e:
        print(_mask(f"sendReq.py: error: {e}", secrets), file=sys.stderr)
        return 2
    except Failed as e:
        print(_mask(f"sendReq.py: {e}", secrets), file=sys.stderr)
        return 1


def _mask(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


if __name__ == "__main__":
    sys.exit(main())
