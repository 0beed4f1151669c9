"""The MLflow REST API over httpx: what the gateway reads and what ``models publish`` writes.

The ``mlflow`` package is never imported. Facts (MLflow 3.17): an alias is read with
``GET /api/2.0/mlflow/registered-models/alias?name=&alias=`` (a missing alias answers 400
``INVALID_PARAMETER_VALUE``, a missing model 404); a version's files are located by
``model-versions/get-download-uri``, whose ``mlflow-artifacts:/<p>`` maps to
``<tracking>/api/2.0/mlflow-artifacts/artifacts/<p>`` (list with ``?path=<p>``); built-in auth is
HTTP basic; the server checks the Host header (``--allowed-hosts`` must name the plant's host
name for the tracking URI).

Every failure is a :class:`RegistryFailure` whose ``kind`` says which of a few things went wrong
(``unreachable``, ``server_error``, ``unauthorized``, ``not_found``, ``garbage``, ``refused``)
so that the poller logs one clear line per kind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from edge_agent.errors import RegistryError

__all__ = ["ArtifactFile", "ModelVersion", "RegistryClient", "RegistryFailure", "TooLarge"]

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
CHUNK = 64 * 1024


class RegistryFailure(RegistryError):
    """The registry could not be used now; ``kind`` names the failure class."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class TooLarge(RegistryError):
    """A download went over its byte budget (stopped before reading it whole)."""


@dataclass(frozen=True, slots=True)
class ModelVersion:
    name: str
    version: str
    source: str
    run_id: str
    status: str


@dataclass(frozen=True, slots=True)
class ArtifactFile:
    path: str
    size: int | None
    is_dir: bool


def artifact_path(uri: str) -> str:
    """``mlflow-artifacts:/<p>`` (or ``mlflow-artifacts://host/<p>``) → ``<p>``."""
    if not uri.startswith("mlflow-artifacts:"):
        raise RegistryFailure("garbage", f"artifact location {uri!r} is not served by the "
                              "tracking server (mlflow-artifacts:/…); start the server with "
                              "--serve-artifacts")
    rest = uri.removeprefix("mlflow-artifacts:")
    if rest.startswith("//"):
        rest = rest[2:].partition("/")[2]
    return rest.strip("/")


def _version(d: Any) -> ModelVersion:
    if not isinstance(d, Mapping):
        raise RegistryFailure("garbage", "registry answer has no model_version object")
    try:
        return ModelVersion(str(d["name"]), str(d["version"]), str(d.get("source", "")),
                            str(d.get("run_id", "")), str(d.get("status", "READY")))
    except KeyError as exc:
        raise RegistryFailure("garbage", f"model_version lacks {exc}") from exc


class RegistryClient:
    """One tracking server. Use as ``async with RegistryClient(...) as c``."""

    def __init__(self, tracking_uri: str, *, username: str | None = None,
                 password: str | None = None, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        auth = httpx.BasicAuth(username, password or "") if username else None
        self.base = tracking_uri.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base, auth=auth, timeout=timeout,
                                       transport=transport, follow_redirects=False)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing ----------------------------------------------------------------------------
    def _check(self, r: httpx.Response, what: str) -> None:
        if r.status_code < 400:
            return
        code = ""
        try:
            body = r.json()
            code = str(body.get("error_code", "")) if isinstance(body, dict) else ""
            msg = str(body.get("message", "")) if isinstance(body, dict) else r.text[:200]
        except ValueError:
            msg = r.text[:200]
        s = r.status_code
        text = f"{what}: HTTP {s} {code} {msg}".strip()
        if s in (401, 403):
            raise RegistryFailure("unauthorized", text, s)
        if s >= 500:
            raise RegistryFailure("server_error", text, s)
        if s == 404 or code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RegistryFailure("not_found", text, s)
        raise RegistryFailure("refused", text, s)

    async def _send(self, method: str, url: str, what: str, **kw: Any) -> httpx.Response:
        try:
            r = await self._http.request(method, url, **kw)
        except httpx.TransportError as exc:
            raise RegistryFailure("unreachable", f"{what}: {self.base} unreachable "
                                  f"({type(exc).__name__}: {exc})") from exc
        self._check(r, what)
        return r

    async def _json(self, method: str, endpoint: str, what: str, **kw: Any) -> dict[str, Any]:
        r = await self._send(method, f"{API}/{endpoint}", what, **kw)
        try:
            body = r.json()
        except ValueError as exc:
            raise RegistryFailure("garbage", f"{what}: answer is not JSON "
                                  f"({r.text[:80]!r})") from exc
        if not isinstance(body, dict):
            raise RegistryFailure("garbage", f"{what}: answer is not a JSON object")
        return body

    # -- reading (the gateway) -----------------------------------------------------------------
    async def alias_version(self, name: str, alias: str) -> ModelVersion:
        body = await self._json("GET", "registered-models/alias", f"alias {name}@{alias}",
                                params={"name": name, "alias": alias})
        return _version(body.get("model_version"))

    async def get_version(self, name: str, version: str) -> ModelVersion:
        body = await self._json("GET", "model-versions/get", f"version {name}/{version}",
                                params={"name": name, "version": version})
        return _version(body.get("model_version"))

    async def download_uri(self, name: str, version: str) -> str:
        body = await self._json("GET", "model-versions/get-download-uri",
                                f"download URI of {name}/{version}",
                                params={"name": name, "version": version})
        uri = body.get("artifact_uri")
        if not isinstance(uri, str) or not uri:
            raise RegistryFailure("garbage", f"download URI of {name}/{version} missing")
        return uri

    async def list_artifacts(self, path: str) -> list[ArtifactFile]:
        r = await self._send("GET", ARTIFACTS, f"listing {path}", params={"path": path})
        try:
            files = r.json().get("files", [])
            return [ArtifactFile(str(f["path"]), int(f["file_size"]) if "file_size" in f
                                 else None, bool(f.get("is_dir", False))) for f in files]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RegistryFailure("garbage", f"listing {path}: unexpected answer "
                                  f"({type(exc).__name__})") from exc

    async def download(self, path: str, dest: Path, *, limit: int,
                       on_chunk: Callable[[int], None] | None = None) -> int:
        """Stream one artifact to ``dest`` (fsynced), stopping with :class:`TooLarge` as soon as
        more than ``limit`` bytes arrive. Returns the number of bytes written."""
        url = f"{ARTIFACTS}/{quote(path)}"
        n = 0
        try:
            async with self._http.stream("GET", url) as r:
                if r.status_code >= 400:
                    await r.aread()
                    self._check(r, f"download of {path}")
                declared = r.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise TooLarge(f"{path} is {declared} bytes, over the {limit}-byte budget")
                with dest.open("wb") as fh:
                    async for chunk in r.aiter_bytes(CHUNK):
                        n += len(chunk)
                        if n > limit:
                            raise TooLarge(f"{path} is over the {limit}-byte budget "
                                           "(stopped reading)")
                        fh.write(chunk)
                        if on_chunk is not None:
                            on_chunk(n)
                    fh.flush()
                    os.fsync(fh.fileno())
        except httpx.TransportError as exc:
            raise RegistryFailure("unreachable", f"download of {path} interrupted "
                                  f"({type(exc).__name__}: {exc})") from exc
        return n

    async def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        await self._json("POST", "model-versions/set-tag", f"tag {key} on {name}/{version}",
                         json={"name": name, "version": version, "key": key, "value": value})

    # -- writing (``models publish``) -------------------------------------------------------
    async def create_run(self, experiment_id: str, run_name: str) -> tuple[str, str]:
        body = await self._json("POST", "runs/create", "create run",
                                json={"experiment_id": experiment_id, "run_name": run_name})
        try:
            info = body["run"]["info"]
            return str(info["run_id"]), str(info["artifact_uri"])
        except (KeyError, TypeError) as exc:
            raise RegistryFailure("garbage", "create run: unexpected answer") from exc

    async def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        await self._json("POST", "runs/update", "finish run",
                         json={"run_id": run_id, "status": status})

    async def upload(self, path: str, data: bytes) -> None:
        await self._send("PUT", f"{ARTIFACTS}/{quote(path)}", f"upload {path}", content=data)

    async def ensure_registered_model(self, name: str) -> None:
        try:
            await self._json("POST", "registered-models/create", f"create model {name}",
                             json={"name": name})
        except RegistryFailure as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise

    async def create_version(self, name: str, source: str, run_id: str,
                             tags: Mapping[str, str]) -> ModelVersion:
        body = await self._json("POST", "model-versions/create", f"register {name}",
                                json={"name": name, "source": source, "run_id": run_id,
                                      "tags": [{"key": k, "value": v}
                                               for k, v in tags.items()]})
        return _version(body.get("model_version"))

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        await self._json("POST", "registered-models/alias", f"alias {name}@{alias}",
                         json={"name": name, "alias": alias, "version": version})
