"""The launcher's code sync: the checkout brought to the newest commit of `code_base_link` (git fetch and
hard reset; untracked and ignored files — conf.json, .env, runs/ — untouched), rolled back when the synced
modules do not import. Standard library only: run.py syncs before any requirement is installed.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable

import envfile

SYNC_REMOTE = "codebase"  # remote name used for syncing; the user's own remotes are left alone
GIT_LOCAL_TIMEOUT = 120.0  # local git commands (reset, rev-parse) on a slow disk


def _askpass_helper() -> str:
    """A script git runs for a username or password: it prints them from its environment, so they
    never appear in a command line (`ps`) or in .git/config."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="snndqn-askpass-"))  # private (0700)
    helper = folder / "askpass.sh"
    helper.write_text('#!/bin/sh\ncase "$1" in\n  Username*) printf "%s" "$SNNDQN_GIT_USERNAME" ;;\n'
                      '  *) printf "%s" "$SNNDQN_GIT_PASSWORD" ;;\nesac\n')
    helper.chmod(0o700)
    return str(helper)


def _git(*args: str, cwd: Path, check: bool = True, timeout: float = GIT_LOCAL_TIMEOUT,
        creds: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run git; past `timeout` s it is killed with every helper it started (a remote that never answers)."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C", GIT_ASKPASS="true")
    for k in envfile.GIT_CRED_ENV:
        env.pop(k, None)
    if creds:
        env.update(creds, GIT_ASKPASS=_askpass_helper())
    proc = subprocess.Popen(["git", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        if creds:
            shutil.rmtree(Path(env["GIT_ASKPASS"]).parent, ignore_errors=True)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        lines = [ln.strip() for ln in (err or out).strip().splitlines() if ln.strip()]
        fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
        raise RuntimeError(envfile.redact_url((fatal or lines or [f"git {args[0]} failed"])[0]))
    return result


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def head_commit(cwd: Path) -> str | None:
    proc = _git("rev-parse", "--verify", "-q", "HEAD", cwd=cwd, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def sync_code(root: Path, link: str, branch: str, timeout: float, problem: Callable[[], str | None],
              say: Callable[[str], None], warn: Callable[[str], None]) -> bool:
    """Bring the checkout `root` to the newest commit of the remote `link` (code_base_link). Returns True when
    files changed. A synced commit for which `problem()` names a problem (its modules do not import) is
    rolled back.

    Failures are reported in one line and leave the local code as it was. Credentials in the link
    reach git through its askpass helper only; the remote is stored without them.
    """
    def git(*args, **kw):
        return _git(*args, cwd=root, **kw)

    if shutil.which("git") is None:
        warn("code sync skipped: the git command is not installed")
        return False
    url, creds = envfile.split_credentials(envfile.resolve_remote(link, root))
    shown = envfile.redact_url(url)
    try:
        if not branch:
            branch = remote_default_branch(root, url, creds, timeout)
        if not (root / ".git").exists():
            git("init", "-q", "-b", branch)
            say(f"{root} is not a git checkout; turning it into a checkout of {shown} (your files are kept)")
        remotes = git("remote").stdout.split()
        git("remote", "set-url" if SYNC_REMOTE in remotes else "add", SYNC_REMOTE, url)
        git("fetch", "-q", "--no-tags", SYNC_REMOTE, f"+refs/heads/{branch}:refs/remotes/{SYNC_REMOTE}/{branch}",
            timeout=timeout, creds=creds)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        reason = (f"the remote did not answer within {timeout:g} s (code_sync_timeout in .env)"
                  if isinstance(e, subprocess.TimeoutExpired) else str(e))
        warn(f"code sync failed ({shown}{' ' + branch if branch else ''}): {reason}; carrying on with the local code")
        return False

    target = git("rev-parse", f"refs/remotes/{SYNC_REMOTE}/{branch}").stdout.strip()
    old = head_commit(root)
    if old == target:
        say(f"code is up to date with {shown} {branch} ({target[:8]})")
        return False
    # Hard reset moves tracked files only: untracked and ignored files (conf.json, .env, runs/) stay.
    git("reset", "-q", "--hard", target)
    if git("symbolic-ref", "-q", "HEAD", check=False).returncode == 0:
        git("branch", "-q", f"--set-upstream-to={SYNC_REMOTE}/{branch}", check=False)
    say(f"synced code from {shown} {branch}: {old[:8] if old else 'nothing'} -> {target[:8]}")

    problem = problem()
    if problem:
        if old:
            git("reset", "-q", "--hard", old)
            warn(f"synced code {target[:8]} fails to import ({problem}); rolled back to {old[:8]}")
        else:
            warn(f"synced code {target[:8]} fails to import ({problem}); no earlier commit to roll back to")
        return old is None
    return True


def remote_default_branch(root: Path, url: str, creds: dict[str, str], timeout: float) -> str:
    out = _git("ls-remote", "--symref", url, "HEAD", cwd=root, timeout=timeout, creds=creds).stdout
    m = re.search(r"^ref: refs/heads/(\S+)\s+HEAD", out, re.M)
    if not m:
        raise RuntimeError("the remote has no default branch; set code_base_branch in .env")
    return m.group(1)
