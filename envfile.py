"""The `.env` file: its reading (python-dotenv's rules; a parser of its own where python-dotenv is not
installed) and the launcher's and the Hub's settings it holds (the code remote and its credentials, the
sync timeout, the training interpreter, the Hub keys that `upload_to_cloud` needs).

Standard library only, like config.py: `run.py` reads `.env` before any requirement is installed.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Mapping
from urllib.parse import unquote

from config import ConfigError


# --------------------------------------------------------------------------- .env
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)$")


def parse_env_text(text: str) -> dict[str, str]:
    """Parse .env text with python-dotenv's rules for quotes and comments.

    `KEY=value  # comment`, `KEY="quoted # not a comment"`, `KEY='single'`, `export KEY=v`;
    double quotes understand backslash escapes and may span lines; a `#` starts a comment
    only at the start of a line or after whitespace in an unquoted value.
    """
    values: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _ENV_LINE.match(lines[i])
        i += 1
        if not m:
            continue
        key, rest = m.group(1), m.group(2)
        if rest[:1] in ("'", '"'):
            quote = rest[0]
            body = rest[1:]
            # a double-quoted value may continue over several lines
            while _closing_quote(body, quote) < 0 and i < len(lines):
                body += "\n" + lines[i]
                i += 1
            end = _closing_quote(body, quote)
            value = body[:end] if end >= 0 else body
            if quote == '"':
                value = re.sub(r'\\([\\"\'nrt])', lambda mm: {"n": "\n", "r": "\r", "t": "\t"}.get(mm.group(1), mm.group(1)), value)
        else:
            value = re.split(r"\s+#", rest, maxsplit=1)[0].strip()
            if value.startswith("#"):
                value = ""
        values[key] = value
    return values


def _closing_quote(body: str, quote: str) -> int:
    i = 0
    while i < len(body):
        if body[i] == "\\" and quote == '"':
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return -1


def load_env(path: Path) -> dict[str, str]:
    """The keys of `.env` ({} without one); a file that cannot be read as text is a one-line ConfigError."""
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8 (KEY=value lines)") from None
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e.strerror}); it should be a file of KEY=value lines") from None
    try:
        from dotenv import dotenv_values  # type: ignore
    except ImportError:
        return parse_env_text(text)
    import io

    return {k: (v or "") for k, v in dotenv_values(stream=io.StringIO(text)).items()}


# --------------------------------------------------------------------------- .env values
SYNC_TIMEOUT_DEFAULT = 20.0  # seconds a remote may take before the sync is abandoned (.env code_sync_timeout)
GIT_CRED_ENV = ("SNNDQN_GIT_USERNAME", "SNNDQN_GIT_PASSWORD")  # read by run.py's askpass helper only


def redact_url(url: str) -> str:
    """Drop credentials from a URL so it can be printed."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", url)


def resolve_remote(link: str, base: Path) -> str:
    """code_base_link: `owner/repo` -> its GitHub URL; a URL stays as it is; anything else is a local path."""
    link = link.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", link) or re.match(r"^[\w.-]+@[\w.-]+:", link):
        return link
    candidate = Path(link).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    if not candidate.exists() and re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", link):
        name = link[:-4] if link.endswith(".git") else link
        return f"https://github.com/{name}.git"
    return str(candidate.resolve())


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """`https://user:token@host/repo` -> (`https://host/repo`, the askpass helper's environment)."""
    m = re.match(r"^([a-z][a-z0-9+.-]*://)([^/@\s]+)@(.*)$", url)
    if not m:
        return url, {}
    user, _, password = m.group(2).partition(":")
    return m.group(1) + m.group(3), {GIT_CRED_ENV[0]: unquote(user), GIT_CRED_ENV[1]: unquote(password)}


def sync_timeout(env: Mapping[str, str]) -> float:
    """code_sync_timeout: seconds a remote may take before the sync is abandoned (default 20)."""
    value = env.get("code_sync_timeout", "").strip()
    if not value:
        return SYNC_TIMEOUT_DEFAULT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"code_sync_timeout in .env must be a number of seconds > 0, got {value!r}")
    return seconds


def check_interpreter(interpreter: str) -> str:
    """`interpreter` runs Python code (python_venv_path may name any program): ConfigError otherwise."""
    import subprocess

    try:
        proc = subprocess.run([interpreter, "-c", "import sys; print(sys.version_info[0])"], capture_output=True,
                              text=True, timeout=60)
        ok = proc.returncode == 0 and proc.stdout.strip() == "3"
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        raise ConfigError(f"python_venv_path in .env: {interpreter} is not a Python 3 interpreter (it did not run "
                          "`-c 'import sys'`); point it at a venv or a python3")
    return interpreter


def training_interpreter(env: Mapping[str, str], root: Path) -> str:
    """python_venv_path: the interpreter (or venv folder) that runs train.py; default the current one."""
    value = env.get("python_venv_path", "").strip()
    if not value:
        return sys.executable
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(root) / path
    if path.is_dir():
        for cand in (path / "bin" / "python", path / "Scripts" / "python.exe", path / "bin" / "python3"):
            if cand.is_file():
                return str(cand)
        raise ConfigError(f"python_venv_path in .env: {value} is a folder without bin/python; point it at a venv or an interpreter")
    if not path.is_file():
        raise ConfigError(f"python_venv_path in .env: {value} does not exist; point it at a venv or a Python interpreter, or remove it")
    return str(path)


# --------------------------------------------------------------------------- Hub settings
HUB_ENV_KEYS = ("session_name", "huggingface_read", "huggingface_write", "repo_ID")


def check_upload_settings(cfg, env: Mapping[str, str]) -> None:
    """`upload_to_cloud` needs repo_ID, a write token and a session name: a config error otherwise."""
    if not cfg.upload_to_cloud:
        return
    missing = [k for k in ("repo_ID", "huggingface_write", "session_name") if not env.get(k)]
    if missing:
        raise ConfigError(f"upload_to_cloud is true but .env lacks {', '.join(missing)}; fill them in .env or set "
                          "upload_to_cloud to false")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", env["repo_ID"]) or ".." in env["repo_ID"]:
        raise ConfigError(f"repo_ID in .env must be a Hub repo id like owner/name (letters, digits, '-', '_', '.'), "
                          f"got {env['repo_ID']!r}")
    if not re.fullmatch(r"[\w.-]{1,100}", env["session_name"]):
        raise ConfigError(f"session_name in .env must be a folder name (letters, digits, '-', '_', '.'), "
                          f"got {env['session_name']!r}")
