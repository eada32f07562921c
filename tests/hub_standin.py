"""A local HTTP stand-in for the Hugging Face Hub endpoints huggingface_hub 2.x uses here.

    python tests/hub_standin.py [PORT]    # serve on 127.0.0.1:PORT (default: a free port) until Ctrl-C

then point the toolkit at it with HF_ENDPOINT (docs/training.md, "Trying publishing locally").

Started by the tests and reached through HF_ENDPOINT, so the real client code runs: create repo,
preupload (every file "regular": contents travel base64 inside the commit), NDJSON commit with
additions and deletions, tree listing, repo info, HEAD/GET resolve, README metadata validation. Errors carry `X-Error-Code`
like the real Hub. `down = True` answers 503 to everything (an outage), `fail_rate` a random share of requests.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, private: bool):
        self.private = private
        self.files: dict[str, bytes] = {}
        self.commits = 0

    @property
    def sha(self) -> str:
        return hashlib.sha1(f"commit-{self.commits}".encode()).hexdigest()


class HubStandIn:
    def __init__(self, write_tokens=("hf_write_good",), read_tokens=("hf_read_good",), port: int = 0):
        self.write_tokens = set(write_tokens)
        self.read_tokens = set(read_tokens) | self.write_tokens
        self.repos: dict[str, Repo] = {}
        self.down = False
        self.fail_rate = 0.0  # the share of requests answered 503 at random (a flaky Hub; bench/soak.py)
        self.failures = 0  # requests answered 503, down or flaky
        self._random = __import__("random").Random(0)
        self.bodies: list[bytes] = []  # every request body received (secret scans)
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "HubStandIn":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            # ---------------------------------------------------------------- helpers
            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else b""
                hub.bodies.append(data)
                return data

            def _send(self, status: int, payload=None, headers=None, raw: bytes | None = None, head=False):
                data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def _error(self, status: int, code: str | None, message: str, head=False):
                headers = {"X-Error-Message": message}
                if code:
                    headers["X-Error-Code"] = code
                self._send(status, {"error": message}, headers, head=head)

            def _token(self) -> str | None:
                auth = self.headers.get("Authorization", "")
                return auth[7:] if auth.startswith("Bearer ") else None

            def _auth(self, write: bool, head=False) -> bool:
                token = self._token()
                ok = token in (hub.write_tokens if write else hub.read_tokens)
                if not ok:
                    self._error(401, None, "Invalid credentials in Authorization header", head=head)
                return ok

            def _repo(self, repo_id: str, head=False) -> Repo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", f"Repository not found: {repo_id}", head=head)
                return repo

            def _route(self, method: str):
                hub.requests.append((method, self.path))
                body = self._body() if method == "POST" else b""
                if hub.down or (hub.fail_rate and hub._random.random() < hub.fail_rate):
                    hub.failures += 1
                    return self._error(503, None, "Service Unavailable", head=method == "HEAD")
                url = urlparse(self.path)
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                query = parse_qs(url.query)
                with hub.lock:
                    return self._dispatch(method, parts, query, body)

            def _dispatch(self, method, parts, query, body):
                head = method == "HEAD"
                if parts[:2] == ["api", "whoami-v2"]:
                    if not self._auth(write=False):
                        return
                    return self._send(200, {"name": "tester", "type": "user"})
                if parts[:2] == ["api", "validate-yaml"] and method == "POST":  # a README's metadata block
                    content = json.loads(body or b"{}").get("content", "")
                    if not content.startswith("---\n") or "\n---" not in content[4:]:
                        return self._error(400, None, "no YAML metadata block")
                    return self._send(200, {"errors": [], "warnings": []})
                if parts[:3] == ["api", "repos", "create"] and method == "POST":
                    if not self._auth(write=True):
                        return
                    req = json.loads(body)
                    repo_id = f"{req.get('organization') or 'tester'}/{req['name']}"
                    if repo_id in hub.repos:  # the real Hub names the existing repo in its 409 answer
                        return self._send(409, {"error": "You already created this model repo",
                                                "url": f"{hub.url}/{repo_id}"},
                                          {"X-Error-Message": "You already created this model repo"})
                    # huggingface_hub 2.x sends "visibility"; older clients sent "private"
                    hub.repos[repo_id] = Repo(req.get("visibility") == "private" or bool(req.get("private")))
                    return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if parts[0] == "api" and len(parts) >= 6 and parts[1] == "models":
                    repo_id = f"{parts[2]}/{parts[3]}"
                    action, rest = parts[4], parts[6:]
                    if not self._auth(write=action in ("preupload", "commit")):
                        return
                    repo = self._repo(repo_id)
                    if repo is None:
                        return
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                "oid": git_blob_sha1(repo.files[f["path"]]) if f["path"] in repo.files else None}
                               for f in files]
                        return self._send(200, {"files": out, "commitOid": repo.sha})
                    if action == "commit":
                        for line in body.splitlines():
                            item = json.loads(line)
                            if item["key"] == "file":
                                repo.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                            elif item["key"] == "deletedFile":
                                if item["value"]["path"] not in repo.files:
                                    return self._error(404, "EntryNotFound", "A file with this name doesn't exist")
                                del repo.files[item["value"]["path"]]
                            elif item["key"] == "deletedFolder":
                                prefix = item["value"]["path"].rstrip("/") + "/"
                                for p in [p for p in repo.files if p.startswith(prefix)]:
                                    del repo.files[p]
                            elif item["key"] == "lfsFile":
                                return self._error(400, None, "this stand-in only takes regular files")
                        repo.commits += 1
                        return self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{repo.sha}",
                                                "commitOid": repo.sha, "pullRequestUrl": None})
                    if action == "tree":
                        prefix = "/".join(rest)
                        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                        entries, folders = [], set()
                        for p, data in sorted(repo.files.items()):
                            if prefix and not p.startswith(prefix.rstrip("/") + "/"):
                                continue
                            tail = p[len(prefix.rstrip("/")) + 1:] if prefix else p
                            if "/" in tail and not recursive:
                                folders.add((prefix.rstrip("/") + "/" if prefix else "") + tail.split("/")[0])
                                continue
                            entries.append({"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data)})
                        if prefix and not entries and not folders:
                            return self._error(404, "EntryNotFound", f"{prefix} does not exist on 'main'")
                        entries += [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(folders)]
                        return self._send(200, entries)
                    if action == "paths-info" and method == "POST":  # what CommitOperationCopy asks first
                        wanted = parse_qs(body.decode()).get("paths", [])
                        return self._send(200, [{"type": "file", "path": p, "size": len(repo.files[p]),
                                                 "oid": git_blob_sha1(repo.files[p])}
                                                for p in wanted if p in repo.files])
                    if action == "revision":
                        return self._send(200, {"id": repo_id, "sha": repo.sha, "private": repo.private,
                                                "siblings": [{"rfilename": p} for p in sorted(repo.files)]})
                    return self._error(404, None, f"unknown endpoint {action}")
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo_id = f"{parts[0]}/{parts[1]}"
                    path = "/".join(parts[4:])
                    if not self._auth(write=False, head=head):
                        return
                    repo = self._repo(repo_id, head=head)
                    if repo is None:
                        return
                    if path not in repo.files:
                        return self._error(404, "EntryNotFound", f"{path} does not exist", head=head)
                    data = repo.files[path]
                    return self._send(200, raw=data, head=head,
                                      headers={"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": repo.sha})
                return self._error(404, None, f"unknown path {self.path}")

            def do_GET(self):
                self._route("GET")

            def do_HEAD(self):
                self._route("HEAD")

            def do_POST(self):
                self._route("POST")

        return Handler


def main(argv: list[str]) -> int:
    import signal
    import sys

    if len(argv) > 1 or (argv and not argv[0].isdigit()):
        print("usage: python tests/hub_standin.py [PORT]", file=sys.stderr)
        return 2
    hub = HubStandIn(port=int(argv[0]) if argv else 0)
    print(f"Hub stand-in at {hub.url} (in memory; Ctrl-C stops it). In another shell:\n"
          f"  export HF_ENDPOINT={hub.url} huggingface_write=hf_write_good huggingface_read=hf_read_good\n"
          "  python evaluate.py --checkpoint pretrained/snn_hybrid_ddqn.pt --episodes 1 --push-to-hub you/agent\n"
          "  python evaluate.py --checkpoint hf://you/agent --episodes 1", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        hub.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        hub.server.server_close()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
