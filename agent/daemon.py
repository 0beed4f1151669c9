"""Start-up and shutdown of the daemon around :class:`~edge_agent.agent.pipeline.Pipeline`.

SIGTERM or SIGINT stops it gracefully: ``STOPPING=1`` to systemd, drivers closed, everything
read so far committed, one last sync attempt, all within ``agent.shutdown_timeout``
(``agent/shutdown.py``). A second signal during that shutdown cancels what is left (the buffer
is still closed cleanly: every put() already committed). SIGHUP reloads the configuration file
(:mod:`edge_agent.agent.reload`); systemd hears ``READY=1`` / ``STATUS=`` / ``WATCHDOG=1`` from
:mod:`edge_agent.agent.service`.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.agent.config import AgentConfig
from edge_agent.agent.pipeline import Pipeline
from edge_agent.agent.reload import Reloader, make_driver
from edge_agent.agent.service import Service
from edge_agent.agent.status import StatusService
from edge_agent.agent.webconfig import MIN_TOKEN_CHARS
from edge_agent.drivers.base import Driver
from edge_agent.sync.buffer import Buffer

if TYPE_CHECKING:
    from edge_agent.agent.web import WebServer
    from edge_agent.sync.mqtt.publisher import MqttPublisher

log = logging.getLogger(__name__)


def make_drivers(cfg: AgentConfig) -> list[Driver]:
    return [make_driver(dcfg) for dcfg in cfg.drivers]


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


def plc_sensors(cfg: AgentConfig) -> dict[str, str]:
    """sensor_id -> the PLC driver (OPC-UA, Modbus) that reads it: one Sparkplug device each."""
    out: dict[str, str] = {}
    for d in cfg.drivers:
        if d.kind == "opcua":
            out.update((n.sensor_id, d.name) for n in d.nodes)
        elif d.kind == "modbus":
            out.update((p.sensor_id, d.name) for dev in d.devices for p in dev.points)
    return out


def make_mqtt(cfg: AgentConfig, buffer: Buffer) -> MqttPublisher | None:
    """The MQTT sink when ``[mqtt]`` is configured; registered with the buffer before any
    sink runs (a row is freed only once every registered sink has delivered it)."""
    if cfg.mqtt is None:
        return None
    from edge_agent.sync.mqtt.publisher import MqttPublisher  # paho, protobuf: only if used

    return MqttPublisher(buffer, cfg.mqtt, cfg.agent.gateway_id, cfg.state_dir,
                         devices=[p.source for p in cfg.pipelines],
                         sensor_devices=plc_sensors(cfg))


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


async def start_web(cfg: AgentConfig, status: StatusService, token: str | None
                    ) -> WebServer | None:
    """The status page, API, /healthz and /metrics; the URL is written to
    ``<state_dir>/web-url`` for ``edge-agent status`` (the port may be 0 = any free one).

    Runs as a task beside the pipeline, importing aiohttp in a worker thread: on a loaded
    2-core gateway that import costs a noticeable part of a second the drivers need not wait."""
    if not cfg.web.enabled:
        return None
    web = await asyncio.to_thread(importlib.import_module, "edge_agent.agent.web")
    server: WebServer = web.WebServer(cfg.web, status, token,
                                      metrics_enabled=cfg.metrics.enabled)
    url = await server.start()
    url_file = cfg.state_dir / "web-url"
    if url is not None:
        url_file.write_text(url + "\n", encoding="utf-8")
    else:
        url_file.unlink(missing_ok=True)
    return server


def on_sighup(service: Service, reloader: Reloader,
              tasks: set[asyncio.Task[bool]]) -> Callable[[], None]:
    """The SIGHUP handler: one reload task per signal (they run one after the other)."""
    def done(task: asyncio.Task[bool]) -> None:
        tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("configuration reload failed", exc_info=exc)

    def handler() -> None:
        log.info("SIGHUP received; reloading the configuration")
        task = asyncio.create_task(service.reloading(reloader.reload), name="reload")
        tasks.add(task)
        task.add_done_callback(done)
    return handler


class _StopSignals:
    """SIGTERM/SIGINT: the first stops gracefully (``STOPPING=1`` to systemd), a second one
    cancels what is left of the shutdown."""

    def __init__(self, stop: asyncio.Event, main: asyncio.Task[Any] | None) -> None:
        self.stop, self.main, self.count = stop, main, 0
        self.service: Service | None = None

    def __call__(self, sig: signal.Signals) -> None:
        self.count += 1
        if self.count == 1:
            log.info("signal received; shutting down", extra={"signal": sig.name})
            if self.service is not None:
                self.service.stopping()
            self.stop.set()
        elif self.main is not None:
            log.warning("second signal; abandoning the final sync", extra={"signal": sig.name})
            self.main.cancel()


async def run(cfg: AgentConfig, stop: asyncio.Event | None = None,
              load: Callable[[], AgentConfig] | None = None) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT; ``load`` re-reads the configuration file
    (parse + world checks) at SIGHUP — without it a SIGHUP reload is refused."""
    stop = stop or asyncio.Event()
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_state_dir(cfg.state_dir)
    loop = asyncio.get_running_loop()
    on_signal = _StopSignals(stop, asyncio.current_task())
    service: Service | None = None
    reloads: set[asyncio.Task[bool]] = set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    # Until the reloader is wired, a SIGHUP must not kill the agent (its default action).
    loop.add_signal_handler(signal.SIGHUP, log.warning, "SIGHUP during start-up; ignored")

    buffer = Buffer(buffer_path(cfg), cfg.buffer)
    await buffer.start()
    try:
        uploader = None
        if cfg.uploader.url:
            from edge_agent.sync.uploader import Uploader  # httpx: only with an uploader

            uploader = Uploader(buffer, cfg.uploader, cfg.agent.gateway_id)
        pipeline = Pipeline(cfg, make_drivers(cfg), buffer, uploader, make_mqtt(cfg, buffer))
        status = StatusService(pipeline, pipeline.recorder, cfg.web.stall_after)
        service = on_signal.service = Service(pipeline, status)
        reloader = Reloader(pipeline, load, on_applied=status.refresh)
        loop.add_signal_handler(signal.SIGHUP, on_sighup(service, reloader, reloads))
        web = asyncio.create_task(start_web(cfg, status, web_token(cfg)), name="web")
        notify = asyncio.create_task(service.run(), name="sd-notify")
        log.info("agent running", extra={"gateway_id": cfg.agent.gateway_id,
                                          "state_dir": str(cfg.state_dir),
                                          "drivers": [d.name for d in pipeline.drivers],
                                          "uploader": cfg.uploader.url or "disabled",
                                          "mqtt": cfg.mqtt.url if cfg.mqtt else "disabled"})
        try:
            await pipeline.run(stop)
        finally:
            for t in (notify, *reloads):
                t.cancel()
            await asyncio.gather(notify, *reloads, return_exceptions=True)
            server = await web
            if server is not None:
                await server.stop()
                (cfg.state_dir / "web-url").unlink(missing_ok=True)
    finally:
        if service is not None:
            service.close()
        # bounded by what is left of shutdown_timeout (a failing disk must not stretch it)
        await asyncio.shield(buffer.close(service.pipeline.close_budget() if service is not None
                                          else float(cfg.agent.shutdown_timeout)))
        os.close(lock)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("agent stopped")
