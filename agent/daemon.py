"""Start-up and shutdown of the daemon around :class:`~edge_agent.agent.pipeline.Pipeline`.

SIGTERM or SIGINT stops it gracefully: drivers closed, everything read so far committed, one
last sync attempt bounded by ``agent.shutdown_timeout``. A second signal during that shutdown
cancels what is left (the buffer is still closed cleanly: every put() already committed).
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.agent.config import DRIVER_MODULES, AgentConfig
from edge_agent.agent.pipeline import Pipeline
from edge_agent.agent.status import StatusService
from edge_agent.agent.webconfig import MIN_TOKEN_CHARS
from edge_agent.drivers.base import Driver
from edge_agent.sync.buffer import Buffer
from edge_agent.sync.uploader import Uploader

if TYPE_CHECKING:
    from edge_agent.agent.web import WebServer

log = logging.getLogger(__name__)


def make_drivers(cfg: AgentConfig) -> list[Driver]:
    out: list[Driver] = []
    for dcfg in cfg.drivers:
        module: Any = importlib.import_module(DRIVER_MODULES[dcfg.kind])
        out.append(module.create(dcfg))
    return out


def buffer_path(cfg: AgentConfig) -> Path:
    p = Path(cfg.buffer.path).expanduser()
    return p if p.is_absolute() else cfg.state_dir / p


def lock_state_dir(state_dir: Path) -> int:
    """One agent per state directory: two would poll twice and upload the same buffer."""
    fd = os.open(state_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(f"another edge-agent is already running with state_dir {state_dir}"
                      ) from None
    return fd


def web_token(cfg: AgentConfig) -> str | None:
    """Resolve ``[web].auth_token`` at start-up; a missing one is a start-up failure."""
    if not cfg.web.enabled or cfg.web.auth_token is None:
        return None
    try:
        token = cfg.web.auth_token.reveal()
    except LookupError as exc:
        raise OSError(f"[web].auth_token: {exc}") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise OSError(f"[web].auth_token: must be at least {MIN_TOKEN_CHARS} characters")
    return token


async def start_web(cfg: AgentConfig, pipeline: Pipeline, token: str | None
                    ) -> WebServer | None:
    """The status page, API, /healthz and /metrics; the URL is written to
    ``<state_dir>/web-url`` for ``edge-agent status`` (the port may be 0 = any free one).

    Runs as a task beside the pipeline, importing aiohttp in a worker thread: on a loaded
    2-core gateway that import costs a noticeable part of a second the drivers need not wait."""
    if not cfg.web.enabled:
        return None
    web = await asyncio.to_thread(importlib.import_module, "edge_agent.agent.web")
    server: WebServer = web.WebServer(
        cfg.web, StatusService(pipeline, pipeline.recorder, cfg.web.stall_after), token,
        metrics_enabled=cfg.metrics.enabled)
    url = await server.start()
    url_file = cfg.state_dir / "web-url"
    if url is not None:
        url_file.write_text(url + "\n", encoding="utf-8")
    else:
        url_file.unlink(missing_ok=True)
    return server


async def run(cfg: AgentConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_state_dir(cfg.state_dir)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("signal received; shutting down", extra={"signal": sig.name})
            stop.set()
        elif main is not None:
            log.warning("second signal; abandoning the final sync", extra={"signal": sig.name})
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    buffer = Buffer(buffer_path(cfg), cfg.buffer)
    await buffer.start()
    try:
        uploader = (Uploader(buffer, cfg.uploader, cfg.agent.gateway_id)
                    if cfg.uploader.url else None)
        pipeline = Pipeline(cfg, make_drivers(cfg), buffer, uploader)
        web = asyncio.create_task(start_web(cfg, pipeline, web_token(cfg)), name="web")
        log.info("agent running", extra={"gateway_id": cfg.agent.gateway_id,
                                          "state_dir": str(cfg.state_dir),
                                          "drivers": [d.name for d in pipeline.drivers],
                                          "uploader": cfg.uploader.url or "disabled"})
        try:
            await pipeline.run(stop)
        finally:
            server = await web
            if server is not None:
                await server.stop()
                (cfg.state_dir / "web-url").unlink(missing_ok=True)
    finally:
        await asyncio.shield(buffer.close())
        os.close(lock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("agent stopped")
