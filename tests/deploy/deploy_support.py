"""Deploy test support: schemas and local HTTP stand-ins for the APIs a cluster would serve.

Everything here is offline. The Kubernetes schemas are the ones kubernetes-validate ships; the
TrainJob schema is the Kubeflow Trainer CRD's, kept in data/. The stand-ins are small HTTP
servers on 127.0.0.1 that answer the few calls our clients make, the way the real APIs do.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import yaml
from referencing import Registry, Resource

DATA = Path(__file__).parent / "data"
KUBE_VERSION = "1.33.0"
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# ---- schemas ---------------------------------------------------------------------------------------

def _close(node: Any) -> Any:
    """Emulate the API server's strict field validation: objects that list properties take no others."""
    if isinstance(node, dict):
        node = {k: _close(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_close(v) for v in node]
    return node


def trainjob_validator() -> jsonschema.Draft202012Validator:
    schema = _close(yaml.safe_load((DATA / "trainjob-v1alpha1.schema.yaml").read_text()))
    defs_file = resources.files("kubernetes_validate") / "kubernetes-json-schema" / \
        f"v{KUBE_VERSION}-local-strict" / "_definitions.json"
    registry = Resource.from_contents(json.loads(defs_file.read_text())) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace the schema's own #/$defs refs by their content (external core/v1 refs stay)."""
    if isinstance(node, dict):
        if set(node) == {"$ref"} and node["$ref"].startswith("#/$defs/"):
            return _inline(defs[node["$ref"].rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _list_map_problems(schema: Any, data: Any, where: str = "") -> list[str]:
    """x-kubernetes-list-type: map means unique keys; jsonschema does not know that rule."""
    problems: list[str] = []
    if not isinstance(schema, dict):
        return problems
    if isinstance(data, list):
        if schema.get("x-kubernetes-list-type") == "map":
            keys = [tuple(item.get(k) for k in schema["x-kubernetes-list-map-keys"]) for item in data]
            if len(keys) != len(set(keys)):
                problems.append(f"{where}: duplicate list-map keys {keys}")
        for i, item in enumerate(data):
            problems += _list_map_problems(schema.get("items"), item, f"{where}[{i}]")
    elif isinstance(data, dict):
        for k, v in data.items():
            problems += _list_map_problems((schema.get("properties") or {}).get(k), v, f"{where}.{k}")
    return problems


def validate_trainjob(body: dict[str, Any]) -> None:
    """The CRD's schema, its CEL rules on metadata.name, and list-map key uniqueness."""
    trainjob_validator().validate(body)
    name = body["metadata"]["name"]
    assert RFC1035.match(name) and len(name) <= 63, f"metadata.name {name!r} breaks the CRD's CEL rules"
    schema = yaml.safe_load((DATA / "trainjob-v1alpha1.schema.yaml").read_text())
    problems = _list_map_problems(_inline(schema, schema["$defs"]), body)
    assert not problems, problems


# ---- a stand-in for the Kubernetes API (TrainJobs only) ---------------------------------------------

class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 with one handler function and a request log."""

    def __init__(self, handle):
        self.requests: list[tuple[str, str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _do(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                owner.requests.append((self.command, self.path, raw))
                status, body = handle(self.command, self.path, raw, self.headers)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _do

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def status_for(phase: str, reason: str = "", message: str = "", progress: int | None = None) -> dict[str, Any]:
    """A TrainJob status as the controller writes it, for the stand-in's script."""
    conds = []
    if phase in ("Complete", "Failed"):
        conds.append({"type": phase, "status": "True", "reason": reason or phase, "message": message,
                      "lastTransitionTime": "2026-11-22T06:00:00Z"})
    active = 2 if phase == "Running" else 0
    status: dict[str, Any] = {"conditions": conds, "jobsStatus": [{
        "name": "node", "ready": active, "active": active, "succeeded": 1 if phase == "Complete" else 0,
        "failed": 1 if phase == "Failed" else 0, "suspended": 0}]}
    if progress is not None:
        status["trainerStatus"] = {"progressPercentage": progress, "lastUpdatedTime": "2026-11-22T06:00:00Z",
                                   "metrics": [{"name": "loss", "value": "0.42"}]}
    return status


class TrainJobApiStandIn:
    """Kubernetes API stand-in serving trainer.kubeflow.org/v1alpha1 trainjobs: create validates the
    body against the CRD schema (422 like the API server), each GET advances a scripted status."""

    PREFIX = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/?]+))?")

    def __init__(self, script: list[dict[str, Any]]):
        self.script, self.jobs, self.deleted, self.created = list(script), {}, [], []
        self.fail_gets = 0  # answer this many GETs with 503 first (API server restarts)
        self.server = _Server(self.handle)
        self.url = self.server.url

    def handle(self, method: str, path: str, raw: bytes, headers) -> tuple[int, Any]:
        m = self.PREFIX.match(path)
        if not m:
            return 404, {"kind": "Status", "code": 404, "message": f"no route {path}"}
        ns, name = m.group(1), m.group(2)
        if method == "POST":
            body = json.loads(raw)
            try:
                validate_trainjob(body)
            except (jsonschema.ValidationError, AssertionError) as e:
                return 422, {"kind": "Status", "code": 422, "message": str(e)[:500]}
            key = (ns, body["metadata"]["name"])
            if key in self.jobs:
                return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"}
            self.jobs[key] = copy.deepcopy(body)
            self.created.append(body)
            return 201, body
        job = self.jobs.get((ns, name))
        if job is None:
            return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}
        if method == "GET":
            if self.fail_gets:
                self.fail_gets -= 1
                return 503, {"kind": "Status", "code": 503}
            if self.script:
                job["status"] = self.script.pop(0)
            trainjob_validator().validate(job)  # the statuses we script must be valid ones too
            return 200, job
        if method == "DELETE":
            del self.jobs[(ns, name)]
            self.deleted.append((ns, name, parse_qs(urlsplit(path).query), json.loads(raw or b"{}")))
            return 200, {"kind": "Status", "status": "Success"}
        return 405, {}

    def api(self):
        from kubernetes import client

        return client.CustomObjectsApi(client.ApiClient(client.Configuration(host=self.url)))

    def close(self):
        self.server.close()


# ---- a stand-in for the Kubeflow Pipelines API (v2beta1) -------------------------------------------

class KfpApiStandIn:
    """Kubeflow Pipelines API stand-in: pipelines, versions (multipart upload), experiments, runs,
    kept in memory; list filters on display_name EQUALS, as kfp.Client sends them."""

    def __init__(self):
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.uploads: list[bytes] = []
        self.server = _Server(self.handle)
        self.url = self.server.url

    @staticmethod
    def _name_filter(query: dict[str, list[str]]) -> str | None:
        if "filter" not in query:
            return None
        (pred,) = json.loads(query["filter"][0])["predicates"]
        assert pred["key"] == "display_name" and pred["operation"] in ("EQUALS", 1), pred
        return pred["stringValue"]

    def handle(self, method: str, path: str, raw: bytes, headers) -> tuple[int, Any]:
        parts = urlsplit(path)
        route, query = parts.path.removeprefix("/apis/v2beta1"), parse_qs(parts.query)
        name = self._name_filter(query)
        if route == "/healthz":
            return 200, {"multi_user": False}
        if route == "/pipelines" and method == "GET":
            found = [p for p in self.pipelines.values() if name is None or p["display_name"] == name]
            return 200, {"pipelines": found, "total_size": len(found)}
        if route == "/pipelines" and method == "POST":
            body = json.loads(raw)
            if any(p["display_name"] == body["display_name"] for p in self.pipelines.values()):
                return 409, {"error": "pipeline exists"}
            pid = f"p-{len(self.pipelines) + 1}"
            self.pipelines[pid] = {**body, "pipeline_id": pid}
            self.versions[pid] = []
            return 200, self.pipelines[pid]
        m = re.fullmatch(r"/pipelines/([^/]+)/versions", route)
        if m and method == "GET":
            found = [v for v in self.versions.get(m.group(1), []) if name is None or v["display_name"] == name]
            if query.get("sort_by") == ["created_at desc"]:  # versions are kept in creation order
                found = found[::-1]
            size = int(query.get("page_size", ["10"])[0])
            return 200, {"pipeline_versions": found[:size], "total_size": len(found)}
        if route == "/pipelines/upload_version" and method == "POST":
            pid, vname = query["pipelineid"][0], query["name"][0]
            if any(v["display_name"] == vname for v in self.versions[pid]):
                return 409, {"error": "version exists"}
            assert b"pipelineSpec" in raw or b"deploymentSpec" in raw, "the upload carries no pipeline IR"
            self.uploads.append(raw)
            version = {"pipeline_id": pid, "pipeline_version_id": f"{pid}-v{len(self.versions[pid]) + 1}",
                       "display_name": vname, "description": query.get("description", [""])[0]}
            self.versions[pid].append(version)
            return 200, version
        if route == "/experiments" and method == "GET":
            found = [e for e in self.experiments.values() if name is None or e["display_name"] == name]
            return 200, {"experiments": found, "total_size": len(found)}
        if route == "/experiments" and method == "POST":
            body = json.loads(raw)
            eid = f"e-{len(self.experiments) + 1}"
            self.experiments[eid] = {**body, "experiment_id": eid}
            return 200, self.experiments[eid]
        if route == "/runs" and method == "POST":
            body = json.loads(raw)
            run = {**body, "run_id": f"r-{len(self.runs) + 1}", "state": "PENDING"}
            self.runs.append(run)
            return 200, run
        return 404, {"error": f"stand-in has no route {method} {route}"}

    def close(self):
        self.server.close()
