"""Run-folder storage (atomic writes) and key=value log lines.

Nothing here knows about DQN. `load_config` and `ConfigError` are re-exported from `config` because
users' scripts call `utils.load_config` (the README documents it).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from config import ConfigError, load_config  # noqa: F401  (public names of utils, see the docstring)


# --------------------------------------------------------------------------- storage
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see either the old or the new content, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes private files; keep the permissions a plain write gives
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read a JSON file, returning `default` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def kv_line(event: str, **fields: Any) -> str:
    """One machine-readable log line: `event key=value key=value`."""
    parts = [event]
    for k, v in fields.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        v = str(v)
        if not v or any(c.isspace() for c in v) or '"' in v:
            v = json.dumps(v)
        parts.append(f"{k}={v}")
    return " ".join(parts)


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """`key: old -> new` for every key whose value differs. Keys `old` does not have (added to the
    schema after it was written) are not changes."""
    skip = set(ignore)
    return [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}"
            for k in new if k not in skip and k in old and old.get(k) != new.get(k)]


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
