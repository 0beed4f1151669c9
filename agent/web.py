"""The status page, its JSON API, ``/healthz`` and ``/metrics``: aiohttp on the agent's loop.

Read-only (GET; the one POST is the login form). Every asset is served from the package (plant
networks are offline: no CDN). Responses carry a strict CSP (no inline script or style),
``X-Content-Type-Options: nosniff``, ``frame-ancestors 'none'`` and ``Referrer-Policy``.

With ``[web].auth_token`` set, every route except ``/static/*``, ``/login`` and ``/healthz``
needs either ``Authorization: Bearer <token>`` (scripts, Prometheus, ``edge-agent status``) or
the session cookie the login form sets. The cookie holds an HMAC derived from the token, never
the token; it is ``HttpOnly`` and ``SameSite=Strict``. The token never travels in a URL (so it
does not end up in browser history or proxy logs). With basic auth instead, the browser asks
for the user and password itself; the scrypt check runs in a worker thread and an accepted
``Authorization`` header is remembered (by its SHA-256) so polling does not pay it again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from edge_agent.agent import metrics
from edge_agent.agent.status import StatusService
from edge_agent.agent.webconfig import WebConfig, check_password, split_listen

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
COOKIE = "edge_agent_session"
PUBLIC_PREFIXES = ("/static/", "/login", "/healthz")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_value(token: str) -> str:
    """The cookie value for a token: an HMAC of a constant, so the cookie is not the token."""
    return hmac.new(token.encode(), b"edge-agent web session v1", hashlib.sha256).hexdigest()


def _json(data: Any, status: int = 200) -> web.Response:
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return web.Response(text=body, status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


class WebServer:
    def __init__(self, cfg: WebConfig, status: StatusService, token: str | None,
                 metrics_enabled: bool = True) -> None:
        self.cfg = cfg
        self.status = status
        self._token = token
        self._session = session_value(token) if token else None
        self.metrics_enabled = metrics_enabled
        self._registry = metrics.registry(status.snapshot)
        self._runner: web.AppRunner | None = None
        self.url: str | None = None
        self.requests = 0
        self._body_of: object = None  # the snapshot _body was serialised from
        self._body = b""
        self._basic_ok: dict[bytes, None] = {}  # SHA-256 of accepted basic headers (bounded)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._auth])
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_get("/api/status", self.api_status)
        r.add_get("/api/sources/{source}/scores", self.api_scores)
        r.add_get("/healthz", self.healthz)
        if self.metrics_enabled:
            r.add_get("/metrics", self.metrics)
        r.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
        return app

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> str | None:
        """Bind and serve; a busy port is logged (the data path runs on), returns the URL."""
        host, port = split_listen(self.cfg.listen)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            log.error("web server not started", extra={"listen": self.cfg.listen,
                                                       "error": str(exc)})
            await self._runner.cleanup()
            self._runner = None
            return None
        addresses = self._runner.addresses  # the real port when listen is ":0"
        bound = int(addresses[0][1]) if addresses else port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        log.info("web server up", extra={"url": self.url})
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- middlewares ------------------------------------------------------------------------
    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests += 1
        try:
            resp = await handler(request)
        except web.HTTPException as exc:  # redirects, 404, 405: headers too, then re-raise
            for k, v in SECURITY_HEADERS.items():
                exc.headers.setdefault(k, v)
            raise
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

    async def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if self.cfg.basic_user is not None:
            return await self._basic(auth)
        if self._token is None or self._session is None:
            return True
        if auth.startswith("Bearer ") and hmac.compare_digest(
                auth[7:].strip().encode(), self._token.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self._session.encode())

    async def _basic(self, auth: str) -> bool:
        key = hashlib.sha256(auth.encode()).digest()
        if key in self._basic_ok:
            return True
        if not auth.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(auth[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        stored = self.cfg.basic_password_hash or ""
        ok = hmac.compare_digest(user.encode(), (self.cfg.basic_user or "").encode()) and \
            await asyncio.to_thread(check_password, password, stored)
        if not ok:
            await asyncio.sleep(1.0)  # slow down guessing
            return False
        if len(self._basic_ok) >= 64:
            self._basic_ok.clear()
        self._basic_ok[key] = None
        return True

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith(PUBLIC_PREFIXES) or await self._authorized(request):
            return await handler(request)
        if self.cfg.basic_user is not None:
            return web.json_response({"error": "unauthorized"}, status=401, headers={
                "WWW-Authenticate": 'Basic realm="edge-agent", charset="UTF-8"'})
        if path == "/":
            raise web.HTTPSeeOther("/login")
        return web.json_response({"error": "unauthorized"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="edge-agent"'})

    # -- pages ------------------------------------------------------------------------------
    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if self._token is None:
            raise web.HTTPSeeOther("/")
        return web.FileResponse(STATIC / "login.html", headers={"Cache-Control": "no-cache"})

    async def login(self, request: web.Request) -> web.StreamResponse:
        if self._token is None or self._session is None:
            raise web.HTTPSeeOther("/")
        form = await request.post()
        given = str(form.get("token", ""))
        if not hmac.compare_digest(given.encode(), self._token.encode()):
            await asyncio.sleep(1.0)  # slow down guessing
            log.warning("web login refused", extra={"peer": request.remote})
            raise web.HTTPSeeOther("/login?failed=1")
        resp = web.HTTPSeeOther("/")
        resp.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict", path="/")
        raise resp

    # -- API --------------------------------------------------------------------------------
    async def api_status(self, request: web.Request) -> web.StreamResponse:
        snap = self.status.snapshot()
        if snap is not self._body_of:  # one serialisation per snapshot, shared by all clients
            self._body = json.dumps(snap, separators=(",", ":"), allow_nan=False).encode()
            self._body_of = snap
        return web.Response(body=self._body, content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def api_scores(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("since", "0")
        try:
            since = float(raw)
        except ValueError:
            since = math.nan
        if not math.isfinite(since):
            return _json({"error": "since must be a Unix time in seconds"}, status=400)
        out = self.status.scores(request.match_info["source"], since)
        if out is None:
            return _json({"error": "unknown source"}, status=404)
        return _json(out)

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        v = self.status.health()
        return _json(v.as_json(), status=200 if v.ok else 503)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body = metrics.render(self._registry)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE,
                                                "Cache-Control": "no-store"})
