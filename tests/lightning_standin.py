"""A local HTTP stand-in for the Lightning AI endpoints lightning-sdk uses to start a studio and run a
command in it, or to submit a job that runs a command in a studio's environment. Reached through LIGHTNING_CLOUD_URL, so the real SDK code runs.

State: one user `alice` with a teamspace `ts` and studios by name; a studio is stopped until its
`start` is posted. Every request is recorded (method, path, headers, body) for the tests.
"""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

USER_ID = "uid-alice"
PROJECT_ID = "proj-ts"
CLUSTER_ID = "cluster-1"


class LightningStandIn:
    def __init__(self, api_key: str, user_id: str = USER_ID, studios=("s1",), running=(), out_of_capacity=False):
        self.api_key = api_key
        self.user_id = user_id
        self.studios = {name: {"id": f"cs-{name}", "running": name in running, "instance": 0} for name in studios}
        self.out_of_capacity = out_of_capacity
        self.requests: list[dict] = []
        self.commands: list[str] = []
        self.started: list[tuple[str, str]] = []  # (studio, machine)
        self.jobs: list[dict] = []  # the submitted jobs' bodies (name, spec: command, cloudspaceId, instanceName, ...)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _studio_by_id(self, sid: str):
        return next(((n, s) for n, s in self.studios.items() if s["id"] == sid), (None, None))

    def _cloudspace(self, name: str, s: dict) -> dict:
        return {"id": s["id"], "name": name, "projectId": PROJECT_ID, "clusterId": CLUSTER_ID,
                "codeStatus": {"inUse": self._instance(s)}}

    @staticmethod
    def _instance(s: dict) -> dict:
        phase = "CLOUD_SPACE_INSTANCE_STATE_RUNNING" if s["running"] else "CLOUD_SPACE_INSTANCE_STATE_STOPPED"
        inst = {"phase": phase, "cloudSpaceInstanceId": f"inst-{s['instance']}"}
        if s["running"]:
            inst["startupStatus"] = {"topUpRestoreFinished": True}
        return inst

    def _route(self, method: str, path: str, query: dict, body: dict):
        parts = path.strip("/").split("/")
        if parts[:2] == ["v1", "sdk-command-history"]:
            return 200, {}
        if parts[:3] == ["v1", "auth", "user"]:
            return 200, {"id": self.user_id, "username": "alice", "email": "alice@example.com"}
        if parts[:2] == ["v1", "orgs"]:
            return 200, {"organizations": []}
        if parts[:3] == ["v1", "users", "search"]:
            return 200, {"users": [{"id": self.user_id, "username": "alice"}]}
        if parts[:2] == ["v1", "memberships"]:
            return 200, {"memberships": [{"projectId": PROJECT_ID, "name": "ts", "displayName": "ts",
                                          "ownerId": self.user_id, "ownerType": "user", "userId": self.user_id}]}
        if parts[:2] == ["v1", "projects"] and len(parts) >= 3:
            if parts[2] != PROJECT_ID:
                return 404, {"code": 5, "message": "project not found"}
            if len(parts) == 3:
                return 200, {"id": PROJECT_ID, "name": "ts", "ownerId": self.user_id, "ownerType": "user",
                             "projectSettings": {"preferredCluster": CLUSTER_ID}}
            if parts[3] == "cloudspaces" and len(parts) == 4:
                name = (query.get("name") or [""])[0]
                s = self.studios.get(name)
                return 200, {"cloudspaces": [self._cloudspace(name, s)] if s else []}
            if parts[3] == "jobs" and len(parts) == 4 and method == "POST":
                if self.out_of_capacity:
                    return 400, {"code": 9, "message": "out of capacity"}
                taken = {j["name"] for j in self.jobs}
                name = body["name"] if body["name"] not in taken else f"{body['name']}-{len(self.jobs) + 1}"
                self.jobs.append({**body, "name": name})
                return 200, {"id": f"job-{len(self.jobs)}", "name": name, "projectId": PROJECT_ID,
                             "spec": body.get("spec", {}), "state": "JOB_STATE_PENDING"}
            if parts[3] == "cloudspaces" and len(parts) == 5:  # a studio by id (a job's link names its studio)
                name, s = self._studio_by_id(parts[4])
                return (200, self._cloudspace(name, s)) if s else (404, {"code": 5, "message": "cloudspace not found"})
            if parts[3] == "cloudspaces" and len(parts) >= 6:
                name, s = self._studio_by_id(parts[4])
                if s is None:
                    return 404, {"code": 5, "message": "cloudspace not found"}
                action = parts[5]
                if action == "codestatus":
                    return 200, {"inUse": self._instance(s)}
                if action == "start":
                    if self.out_of_capacity:
                        return 400, {"code": 9, "message": "out of capacity"}
                    s["running"] = True
                    s["instance"] += 1
                    self.started.append((name, ((body or {}).get("computeConfig") or {}).get("name", "")))
                    return 200, {}
                if action == "execute" and len(parts) == 6:
                    self.commands.append(body["command"])
                    return 200, {"sessionName": f"session-{len(self.commands)}"}
                if action == "execute" and len(parts) == 8 and parts[7] == "stream":
                    line = json.dumps({"result": {"output": "", "exitCode": 0}})
                    return 200, line + "\n"
                if action in ("keep-alive", "keepalive"):
                    return 200, {}
                return 200, {}
            if "accelerators" in parts:
                return 200, self._accelerators()
            if parts[3] == "clusters":
                return 200, self._clusters()
            return 200, {}
        if "accelerators" in parts:
            return 200, self._accelerators()
        if parts[:3] == ["v1", "core", "clusters"]:
            return 200, self._clusters()
        return 200, {}

    @staticmethod
    def _clusters() -> dict:
        return {"clusters": [{"id": CLUSTER_ID, "name": "lightning-public", "spec": {"clusterType": "GLOBAL",
                                                                                    "awsV1": {"region": "us-east-1"}}}]}

    def _accelerators(self) -> dict:
        return {"accelerator": [{"acceleratorType": "CPU", "family": "CPU", "enabled": True,
                                 "resources": {"cpu": 4, "gpu": 0}, "outOfCapacity": self.out_of_capacity,
                                 "instanceId": "cpu-4", "slug": "cpu-4"}]}

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                url = urlparse(self.path)
                with standin.lock:
                    standin.requests.append({"method": self.command, "path": self.path,
                                             "headers": dict(self.headers), "body": raw})
                    auth = self.headers.get("Authorization", "")
                    try:  # the SDK sends Basic base64(user_id:api_key)
                        pair = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else ""
                    except ValueError:
                        pair = ""
                    known = pair == f"{standin.user_id}:{standin.api_key}"
                    try:
                        body = json.loads(raw) if raw else None
                    except ValueError:
                        body = None
                    if not known and "sdk-command-history" not in url.path:
                        status, payload = 401, {"code": 16, "message": "unauthenticated"}
                    else:
                        status, payload = standin._route(self.command, url.path, parse_qs(url.query), body)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

        return Handler
