"""What a configuration reload (SIGHUP, ``systemctl reload``) changes, before anything is touched.

:func:`plan` compares the running :class:`AgentConfig` with a new, already validated one and
returns a :class:`ReloadPlan`: drivers to restart (config changed), stop (removed) or start
(added) — an unchanged driver keeps its connection and its health counters —, pipelines to
rebuild (threshold, alerts, model, features …: a new analysis chain; the buffer is untouched so
nothing buffered is lost), whether the uploader restarts, and the settings that cannot change in
a running agent (:data:`NEEDS_RESTART`). Those keep their running value in
:attr:`ReloadPlan.effective`, the configuration the agent runs on after the reload, and are
reported as "needs a restart" instead of being silently ignored.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_agent.agent.analysis import Analysis
from edge_agent.agent.config import DRIVER_MODULES, AgentConfig
from edge_agent.agent.pipeline import Pipeline
from edge_agent.agent.supervisor import Backoff
from edge_agent.drivers.base import Driver
from edge_agent.errors import ConfigError, ConfigProblem, EdgeAgentError
from edge_agent.records import Event

if TYPE_CHECKING:
    from edge_agent.sync.uploader import Uploader

__all__ = ["NEEDS_RESTART", "ReloadPlan", "Reloader", "make_driver", "plan"]
log = logging.getLogger(__name__)

# Sections (or "section.field") that only take effect at the next start: the buffer file and its
# writer, the web server's socket and token, the queues the stages share, the state directory
# (lock, models, web-url) and the gateway id (the uploader's idempotency-key prefix).
NEEDS_RESTART: tuple[str, ...] = ("buffer", "web", "metrics", "queues", "mqtt", "agent.state_dir",
                                  "agent.gateway_id")


@dataclass
class ReloadPlan:
    effective: AgentConfig
    drivers_restarted: list[str] = field(default_factory=list)
    drivers_stopped: list[str] = field(default_factory=list)
    drivers_started: list[str] = field(default_factory=list)
    pipelines_rebuilt: list[str] = field(default_factory=list)
    pipelines_removed: list[str] = field(default_factory=list)
    pipelines_added: list[str] = field(default_factory=list)
    uploader_restarted: bool = False
    applied: list[str] = field(default_factory=list)  # other live keys that changed
    needs_restart: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.drivers_restarted or self.drivers_stopped or self.drivers_started
                    or self.pipelines_rebuilt or self.pipelines_removed or self.pipelines_added
                    or self.uploader_restarted or self.applied)

    def details(self) -> dict[str, Any]:
        """The ``config_reloaded`` event's details (also logged)."""
        return {
            "drivers": {"restarted": self.drivers_restarted, "stopped": self.drivers_stopped,
                        "started": self.drivers_started},
            "pipelines": {"rebuilt": self.pipelines_rebuilt, "removed": self.pipelines_removed,
                          "added": self.pipelines_added},
            "uploader": "restarted" if self.uploader_restarted else "unchanged",
            "applied": self.applied,
            "needs_restart": self.needs_restart,
        }


def _field_diff(old: Any, new: Any, prefix: str) -> list[str]:
    """Key paths of the fields of two models of one class that differ."""
    if old is None or new is None:  # an optional section added or removed ([mqtt])
        return [prefix]
    return [f"{prefix}.{k}" for k in type(old).model_fields
            if getattr(old, k) != getattr(new, k)]


def plan(old: AgentConfig, new: AgentConfig) -> ReloadPlan:
    """Compare; the result's ``effective`` config is ``new`` with the non-live settings kept."""
    needs: list[str] = []
    keep: dict[str, Any] = {}
    for section in ("buffer", "web", "metrics", "queues", "mqtt"):
        if getattr(old, section) != getattr(new, section):
            needs += _field_diff(getattr(old, section), getattr(new, section), section)
            keep[section] = getattr(old, section)
    agent_keep = {k: getattr(old.agent, k) for k in ("state_dir", "gateway_id")
                  if getattr(old.agent, k) != getattr(new.agent, k)}
    needs += [f"agent.{k}" for k in agent_keep]
    if agent_keep:
        keep["agent"] = new.agent.model_copy(update=agent_keep)
    eff = new.model_copy(update=keep) if keep else new
    out = ReloadPlan(eff, needs_restart=needs)

    old_d = {d.name: d for d in old.drivers}
    new_d = {d.name: d for d in new.drivers}
    out.drivers_stopped = [n for n in old_d if n not in new_d]
    out.drivers_started = [n for n in new_d if n not in old_d]
    out.drivers_restarted = [n for n in new_d if n in old_d and old_d[n] != new_d[n]]

    old_p = {p.source: p for p in old.pipelines}
    new_p = {p.source: p for p in new.pipelines}
    out.pipelines_removed = [s for s in old_p if s not in new_p]
    out.pipelines_added = [s for s in new_p if s not in old_p]
    out.pipelines_rebuilt = [s for s in new_p if s in old_p and old_p[s] != new_p[s]]

    out.uploader_restarted = old.uploader != eff.uploader
    out.applied = (_field_diff(old.agent, eff.agent, "agent")
                   + _field_diff(old.reconnect, eff.reconnect, "reconnect"))
    return out


def make_driver(dcfg: Any) -> Driver:
    module: Any = importlib.import_module(DRIVER_MODULES[dcfg.kind])
    driver: Driver = module.create(dcfg)
    return driver


class Reloader:
    """Applies SIGHUP reloads to a running :class:`Pipeline`, one at a time.

    ``load`` reads and validates the configuration file (parse + world checks, raising
    :class:`ConfigError`); the same call the daemon started with, ``--state-dir`` included."""

    def __init__(self, pipeline: Pipeline, load: Callable[[], AgentConfig] | None,
                 on_applied: Callable[[], None] | None = None) -> None:
        self.pipeline = pipeline
        self.load = load
        self.on_applied = on_applied
        self.reloads = 0
        self.refused = 0

    async def reload(self) -> bool:
        """Read, check and apply the configuration file; False when it was refused (the
        running configuration is kept, every problem logged and recorded in an event)."""
        p = self.pipeline
        if self.load is None:
            await self._refuse([ConfigProblem("<config>", "the agent runs on the embedded "
                                              "default configuration: no file to reload")])
            return False
        try:
            new = await asyncio.to_thread(self.load)
        except ConfigError as exc:
            await self._refuse(exc.problems or [ConfigProblem("<config>", str(exc))])
            return False
        await p.running.wait()  # a SIGHUP during start-up applies once the stages run
        async with p.lock:
            if p.stopping:
                return False  # shutting down: the reload is moot
            change = plan(p.cfg, new)
            try:
                built = self._build(change)
            except (EdgeAgentError, OSError, ValueError) as exc:
                await self._refuse([ConfigProblem("<config>", f"{type(exc).__name__}: {exc}")])
                return False
            await self._apply(change, *built)
        self.reloads += 1
        details = change.details()
        log.info("configuration reloaded", extra=details)
        if change.needs_restart:
            log.warning("configuration changes that need a restart",
                        extra={"needs_restart": change.needs_restart})
        await p._put([Event("config_reloaded", p.cfg.agent.gateway_id, time.time(),
                            "warning" if change.needs_restart else "info", details)])
        if self.on_applied is not None:
            self.on_applied()
        return True

    async def _refuse(self, problems: list[ConfigProblem]) -> None:
        self.refused += 1
        for prob in problems:
            log.error("configuration reload refused", extra={"problem": str(prob)})
        p = self.pipeline
        await p._put([Event("config_reload_refused", p.cfg.agent.gateway_id, time.time(),
                            "warning", {"problems": [str(x) for x in problems]})])

    def _build(self, change: ReloadPlan) -> tuple[dict[str, Driver], dict[str, Analysis],
                                                  Uploader | None]:
        """Everything new is built before anything running is touched: a failure here (a
        commissioning pipeline without the [train] extra …) refuses the whole reload."""
        cfg = change.effective
        by_name = {d.name: d for d in cfg.drivers}
        drivers = {n: make_driver(by_name[n])
                   for n in (*change.drivers_restarted, *change.drivers_started)}
        by_source = {pc.source: pc for pc in cfg.pipelines}
        analyses = {s: Analysis(by_source[s], cfg.state_dir)
                    for s in (*change.pipelines_rebuilt, *change.pipelines_added)}
        uploader = None
        if change.uploader_restarted and cfg.uploader.url:
            from edge_agent.sync.uploader import Uploader  # httpx: only with an uploader

            uploader = Uploader(self.pipeline.buffer, cfg.uploader, cfg.agent.gateway_id)
        return drivers, analyses, uploader

    async def _apply(self, change: ReloadPlan, drivers: dict[str, Driver],
                     analyses: dict[str, Analysis], uploader: Uploader | None) -> None:
        p, cfg = self.pipeline, change.effective
        p.cfg = cfg
        r = cfg.reconnect
        p.backoff = Backoff(r.initial, r.maximum, r.multiplier, r.jitter)
        if "agent.log_level" in change.applied:
            logging.getLogger().setLevel(cfg.agent.log_level.upper())
        by_source = {pc.source: pc for pc in cfg.pipelines}
        touched = [*change.pipelines_rebuilt, *change.pipelines_removed, *change.pipelines_added]
        for source in touched:
            await p.stop_registry(source)
            p.set_analysis(source, by_source.get(source), analyses.get(source))
            poller = p.registry_poller(by_source[source]) if source in by_source else None
            if poller is not None:
                p.start_registry(poller)
        for name in (*change.drivers_restarted, *change.drivers_stopped):
            await p.stop_driver(name)
        for name in (*change.drivers_restarted, *change.drivers_started):
            p.start_driver(drivers[name])
        running = {d.name: d for d in p.drivers}
        running.update(drivers)
        p.drivers = [running[d.name] for d in cfg.drivers]
        if change.uploader_restarted:
            await p.stop_uploader()
            p.start_uploader(uploader)
