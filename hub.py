"""Mirror a run folder to a Hugging Face Hub repo and fetch it back on a fresh machine.

The run lives under `<session_name>/<run_name>/` of the repo `repo_ID` (created private when
missing). Pushes run in a background thread, one at a time (a push asked for while one is in flight
runs once it ends, with the newest files), send only files that changed since the last successful
push (replay segments once: they never change), delete checkpoints the run folder no longer keeps and
segments no kept checkpoint references, and retry network failures with back-off. The folder holds
one run: a new run under the same name first moves the previous one's files to `archive/<time>/`.
A rejected token switches uploads off for the bout with one line; training never waits on the
network except for a bounded final push. Tokens never reach a log line, an exception message or an
upload (they travel only in the Authorization header).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

import checkpoints
from contract import CANDIDATES
from envfile import HUB_ENV_KEYS as ENV_KEYS


def hub_environment(environ=None, dotenv_path: Path | None = None) -> dict[str, str]:
    """The Hub keys from the environment (run.py passes .env there), else from .env next to this file."""
    environ = os.environ if environ is None else environ
    values = {k: environ.get(k, "").strip() for k in ENV_KEYS}
    path = dotenv_path or Path(__file__).resolve().parent / ".env"
    if not all(values.values()) and path.is_file():
        try:
            from dotenv import dotenv_values

            for k, v in dotenv_values(path).items():
                if k in values and not values[k] and v:
                    values[k] = v.strip()
        except ImportError:
            pass
    return values


def client():
    """An HfApi for the endpoint of this moment (HF_ENDPOINT is read now, not at import: tests move it). The
    client's own retry warnings are silenced: a failure is one line of ours, not one per retry."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def unreachable(repo_id: str, filename: str, token: str | None, timeout: float = 10.0) -> str | None:
    """Why the Hub cannot be reached for `filename` of `repo_id` (one quick request, no retries), or None when
    it answered (whatever it answered: a missing file is the download's error to report)."""
    import requests

    url = f"{endpoint().rstrip('/')}/{repo_id}/resolve/main/{filename}"
    try:
        response = requests.head(url, timeout=timeout, allow_redirects=False,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    except requests.RequestException as e:
        return type(e).__name__
    return f"HTTP {response.status_code}" if response.status_code >= 500 else None


class HubMirror:
    def __init__(self, env: dict[str, str], run_name: str, run_dir: Path, keep_checkpoints: int = 3,
                 local_backup: bool = True, log: Callable[[str], None] = print, retry_base: float = 2.0,
                 max_retry_wait: float = 60.0):

        self.repo_id = env["repo_ID"]
        self.prefix = f"{env['session_name']}/{run_name}"
        self.run_dir = Path(run_dir)
        self.write_token = env.get("huggingface_write") or None
        self.read_token = env.get("huggingface_read") or self.write_token
        self.keep = keep_checkpoints
        self.local_backup = local_backup
        self._log = log
        self.retry_base = retry_base
        self.max_retry_wait = max_retry_wait
        self.api = client()
        self.uploads_enabled = bool(self.write_token)
        self._pushed: dict[str, tuple[int, int]] = {}  # rel path -> (size, mtime_ns) last sent
        self._remote_ckpts: set[str] | None = None  # paths under checkpoints/ on the Hub
        self._remote_cands: set[str] | None = None  # paths of candidates/ on the Hub (relative to the run)
        self.archive_pending: str | None = None  # a new run: move the Hub folder to archive/<this>/ first
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._again = False
        self._stop = threading.Event()
        self._repo_ready = False
        self.pushes = 0

    # ------------------------------------------------------------------ messages
    def _clean(self, text: str) -> str:
        for secret in (self.write_token, self.read_token):
            if secret:
                text = text.replace(secret, "***")
        return " ".join(text.split())[:300]

    def log(self, msg: str) -> None:
        self._log("hub: " + self._clean(msg))

    @staticmethod
    def _status(exc: Exception) -> int | None:
        response = getattr(exc, "response", None)
        return getattr(response, "status_code", None)

    @staticmethod
    def _transient(exc: Exception, status: int | None) -> bool:
        """Worth retrying: timeouts, rate limits, server errors and connection failures."""
        if status is not None:
            return status in (408, 429) or status >= 500
        if isinstance(exc, (OSError, TimeoutError)):
            return True
        return type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2", "requests",
                                                       "urllib3")

    def describe(self, exc: Exception) -> str:
        first = (str(exc).strip().splitlines() or [""])[0]
        return self._clean(f"{type(exc).__name__}: {first}")

    # ------------------------------------------------------------------ uploads
    def _ensure_repo(self) -> bool:
        if self._repo_ready:
            return True
        self.api.create_repo(self.repo_id, private=True, exist_ok=True, token=self.write_token)
        self._repo_ready = True
        return True

    def push(self) -> None:
        """Ask for a background push of the run folder; returns at once."""
        if not self.uploads_enabled:
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return
            self._again = False
            self._thread = threading.Thread(target=self._worker, name="hub-push", daemon=True)
            self._thread.start()

    def _worker(self) -> None:
        while True:
            self._push_with_retries()
            with self._lock:
                if not self._again or not self.uploads_enabled or self._stop.is_set():
                    self._again = False
                    return
                self._again = False

    def _push_with_retries(self) -> None:
        wait = self.retry_base
        while self.uploads_enabled and not self._stop.is_set():
            try:
                self._ensure_repo()
                self._push_once()
                return
            except Exception as e:  # classify: wrong token, or a network problem worth retrying
                self._remote_ckpts = self._remote_cands = None  # what the Hub holds is read anew before the next try
                if isinstance(e, FileNotFoundError):  # a file pruned while its upload was pending: a newer
                    return  # checkpoint's push is already asked for
                status = self._status(e)
                if status in (401, 403):
                    self.uploads_enabled = False
                    self.log(f"the write token was rejected by the Hub ({status}); uploads are off for this bout, "
                             "training carries on locally. Check huggingface_write in .env")
                    return
                if not self._transient(e, status):
                    self.log(f"push failed ({self.describe(e)}); will try again at the next checkpoint")
                    return
                self.log(f"push failed ({self.describe(e)}); retrying in {wait:.0f} s while training goes on")
                if self._stop.wait(wait):
                    return
                wait = min(wait * 2, self.max_retry_wait)

    def _local_files(self) -> dict[str, Path]:
        files = {}
        for path in sorted(self.run_dir.rglob("*")):
            rel = path.relative_to(self.run_dir).as_posix()
            if not path.is_file() or rel.startswith("archive/") or any(p.startswith(".") for p in rel.split("/")):
                continue  # temporary files (written then renamed) start with a dot: only completed files go
            files[rel] = path
        return files

    def _remote_checkpoints(self) -> set[str]:
        """Paths under checkpoints/ on the Hub: ckpt_*.pt and replay/seg_*.bin."""
        if self._remote_ckpts is None:
            self._remote_ckpts = {p[len("checkpoints/"):] for p in self.list_remote("checkpoints")}
        return self._remote_ckpts

    def _remote_candidates(self) -> set[str]:
        """Paths under candidates/ on the Hub (a candidate pruned here is deleted there)."""
        if self._remote_cands is None:
            self._remote_cands = set(self.list_remote(CANDIDATES))
        return self._remote_cands

    def start_new_run(self, stamp: str) -> None:
        """A new run under this name: its first push moves the Hub folder's files to archive/<stamp>/."""
        self.archive_pending = stamp

    def _archive_remote(self) -> None:
        """Move the previous run's files on the Hub into archive/<stamp>/ in one commit (copy + delete)."""
        from huggingface_hub import CommitOperationCopy, CommitOperationDelete

        stamp, files = self.archive_pending, [r for r in self.list_remote() if not r.startswith("archive/")]
        if files:
            dest = f"{self.prefix}/archive/{stamp}"
            ops = [CommitOperationCopy(src_path_in_repo=f"{self.prefix}/{r}", path_in_repo=f"{dest}/{r}") for r in files]
            ops += [CommitOperationDelete(path_in_repo=f"{self.prefix}/{r}") for r in files]
            self.api.create_commit(self.repo_id, operations=ops, token=self.write_token,
                                   commit_message=f"{self.prefix}: new run, previous one archived")
            self.log(f"new run: the previous run's {len(files)} files on the Hub were moved to {dest}/")
        self.archive_pending = None
        self._remote_ckpts = self._remote_cands = None

    def _push_once(self) -> None:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        if self.archive_pending is not None:
            self._archive_remote()
        local = self._local_files()
        local_ckpts = {Path(r).name for r in local if r.startswith("checkpoints/") and checkpoints.step_of(Path(r).name) is not None}
        remote = self._remote_checkpoints()
        # the newest keep_checkpoints of the run, wherever they are (with local_backup false, older ones
        # live only on the Hub), and the replay segments they reference (None: not known, delete none)
        keep = set(sorted(local_ckpts | {n for n in remote if checkpoints.step_of(n) is not None})[-self.keep:])
        needed = checkpoints.referenced_segments(self.run_dir / "checkpoints", keep)
        ops, sent = [], {}
        for rel, path in local.items():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # pruned since the listing
            stamp = (st.st_size, st.st_mtime_ns)
            if self._pushed.get(rel) == stamp:
                continue
            if rel.startswith(f"checkpoints/{checkpoints.SEGMENT_DIR}/"):
                if rel[len("checkpoints/"):] in remote or (needed is not None and path.name not in needed):
                    continue  # segments never change: one upload; unreferenced ones stay home
                if not checkpoints.segment_whole(path):
                    self.log(f"replay segment {path.name} does not match its sha256; not uploading it")
                    self._pushed[rel] = stamp
                    continue
                source = str(path)
            elif rel.startswith("checkpoints/"):
                if Path(rel).name not in keep:
                    continue
                if not checkpoints.verified(path):  # a damaged file must never replace a good copy on the Hub
                    self.log(f"checkpoint {Path(rel).name} does not match its manifest entry; not uploading it")
                    self._pushed[rel] = stamp
                    continue
                source: object = str(path)  # checkpoints are immutable once their name exists
            else:
                data = path.read_bytes()  # a snapshot of files that may still grow (metrics, events)
                if rel.endswith(".csv") and b"\n" in data:
                    data = data[: data.rfind(b"\n") + 1]  # whole rows only
                source = data
            ops.append(CommitOperationAdd(path_in_repo=f"{self.prefix}/{rel}", path_or_fileobj=source))
            sent[rel] = stamp
        stale = {n for n in remote if checkpoints.step_of(n) is not None} - keep
        if needed is not None:
            stale |= {n for n in remote if n.startswith(f"{checkpoints.SEGMENT_DIR}/") and Path(n).name not in needed}
        ops += [CommitOperationDelete(path_in_repo=f"{self.prefix}/checkpoints/{name}") for name in sorted(stale)]
        dropped = self._remote_candidates() - {r for r in local if r.startswith(f"{CANDIDATES}/")}
        ops += [CommitOperationDelete(path_in_repo=f"{self.prefix}/{rel}") for rel in sorted(dropped)]
        if not ops:
            return
        newest = max(keep, default="none")
        self.api.create_commit(self.repo_id, operations=ops, token=self.write_token,
                               commit_message=f"{self.prefix}: {newest}")
        self._pushed.update(sent)
        self._remote_ckpts = (remote - stale) | {r[len("checkpoints/"):] for r in sent if r.startswith("checkpoints/")}
        self._remote_cands = (self._remote_cands - dropped) | {r for r in sent if r.startswith(f"{CANDIDATES}/")}
        self.pushes += 1
        if not self.local_backup:
            self._drop_local_copies(keep)

    def _drop_local_copies(self, keep: set[str]) -> None:
        """local_backup false: once on the Hub, only the newest checkpoint stays on disk."""
        newest = max(keep, default=None)
        for path in (self.run_dir / "checkpoints").glob("ckpt_*.pt"):
            if path.name != newest and path.name in (self._remote_ckpts or set()):
                path.unlink(missing_ok=True)
        for path in (self.run_dir / "videos").glob("*.gif"):
            rel = path.relative_to(self.run_dir).as_posix()
            if rel in self._pushed:
                path.unlink(missing_ok=True)

    def finish(self, timeout: float = 120.0) -> bool:
        """Final push at the end of a bout, waiting at most `timeout` seconds. True when done."""
        self.push()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            self._stop.set()
            self.log(f"final push still running after {timeout:.0f} s; the next bout sends what is missing")
            return False
        return True

    # ------------------------------------------------------------------ downloads
    def list_remote(self, sub: str = "") -> list[str]:
        """Files of the run on the Hub (paths relative to the run folder); [] when there are none."""
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

        path = f"{self.prefix}/{sub}".rstrip("/")
        try:
            entries = self.api.list_repo_tree(self.repo_id, path_in_repo=path, recursive=True,
                                              token=self.read_token)
            return [e.path[len(self.prefix) + 1:] for e in entries if getattr(e, "size", None) is not None]
        except (EntryNotFoundError, RepositoryNotFoundError):
            return []

    def download(self, rel: str, dest: Path) -> Path:
        """Download one file of the run to `dest` (written atomically)."""
        with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
            got = self.api.hf_hub_download(self.repo_id, f"{self.prefix}/{rel}", local_dir=tmp, token=self.read_token)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, dest) if Path(got).stat().st_dev == dest.parent.stat().st_dev else shutil.move(got, dest)
        return dest

    def fetch_newer(self, local_step: int | None) -> Path | None:
        """Download the Hub's newest loadable checkpoint when it is newer than `local_step` (None = no
        local checkpoint), with the metrics and plots. Returns its local path, or None."""
        names = (Path(p).name for p in self.list_remote("checkpoints"))
        remote = sorted(((step, n) for n in names if (step := checkpoints.step_of(n)) is not None), reverse=True)
        for step, name in remote:
            if local_step is not None and step <= local_step:
                return None
            dest = self.run_dir / "checkpoints" / name
            self.download(f"checkpoints/{name}", dest)
            try:
                ckpt = checkpoints.read(dest)
            except Exception:
                self.log(f"checkpoint {name} on the Hub cannot be loaded; trying the previous one")
                dest.unlink(missing_ok=True)
                continue
            segments = self._fetch_segments(ckpt)
            checkpoints.record(dest.parent, name, checkpoints.sha256_of(dest), dest.stat().st_size, segments, self.keep)
            for rel in self.list_remote():  # the run's history and what its confirmation needs
                if rel in ("metrics.csv", checkpoints.BEST_NAME) or rel.startswith(("plots/", f"{CANDIDATES}/")):
                    self.download(rel, self.run_dir / rel)
                    self._pushed[rel] = _stamp(self.run_dir / rel)
            self._pushed[f"checkpoints/{name}"] = _stamp(dest)
            where = "no local checkpoint" if local_step is None else f"the local one is at step {local_step}"
            self.log(f"took checkpoint {name} (step {step}) from {self.repo_id}/{self.prefix}: {where}")
            return dest
        return None

    def _fetch_segments(self, ckpt: dict) -> list[str]:
        """Download the replay segments a fetched checkpoint references that are not here whole; their names."""
        refs = (ckpt.get("replay") or {}).get("segments", [])
        seg_dir = self.run_dir / "checkpoints" / checkpoints.SEGMENT_DIR
        for seg in refs:
            path = seg_dir / seg["name"]
            if path.is_file() and checkpoints.segment_whole(path):
                continue
            try:
                self.download(f"checkpoints/{checkpoints.SEGMENT_DIR}/{seg['name']}", path)
            except Exception as e:  # resuming then falls back past this checkpoint, or to an empty replay
                self.log(f"replay segment {seg['name']} could not be downloaded ({self.describe(e)})")
        return [seg["name"] for seg in refs]


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns
