"""The agent's configuration: TOML → typed, frozen objects, validated fully before anything runs.

Sections: ``[agent]``, ``[buffer]`` (:class:`edge_agent.sync.buffer.BufferConfig`),
``[uploader]`` (:class:`edge_agent.sync.uploader.UploaderConfig`), ``[queues]``, ``[metrics]``,
``[web]`` (:class:`edge_agent.agent.webconfig.WebConfig`), ``[[drivers]]`` (one table per
source; ``kind`` picks the driver module, whose ``Config`` class parses the rest) and
``[[pipelines]]`` (windowing, features, model and alerting per waveform source). Validation
does no I/O: files named in the config are opened when used.
"""

from __future__ import annotations

import dataclasses
import importlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge_agent import settings
from edge_agent.agent.queues import QueueConfig
from edge_agent.agent.webconfig import WebConfig
from edge_agent.confkit import (
    ConfigError,
    ConfigProblem,
    Duration,
    build,
    check,
    field,
)
from edge_agent.models.alerting import AlertConfig
from edge_agent.models.commissioning import CommissioningConfig
from edge_agent.models.drift import DriftConfig
from edge_agent.models.dsp.extract import SoundConfig, VibrationConfig
from edge_agent.models.onnx_score import ScorerConfig
from edge_agent.models.registry.config import RegistryConfig
from edge_agent.sync.buffer import BufferConfig
from edge_agent.sync.contract import UploaderConfig
from edge_agent.sync.mqtt.config import MqttConfig

EX_CONFIG = 78

# kind -> module implementing it (``Config`` + ``create``). Imported only when configured.
DRIVER_MODULES: dict[str, str] = {
    "simulator": "edge_agent.drivers.simulator",
    "replay": "edge_agent.drivers.replay",
    "soundcard": "edge_agent.drivers.soundcard",
    "modbus": "edge_agent.drivers.modbus",
    "opcua": "edge_agent.drivers.opcua",
}

DEFAULT_CONFIG = Path(__file__).with_name("default.toml")


@dataclass(frozen=True)
class AgentSection:
    gateway_id: str = field("edge-gateway", pattern=r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}")
    state_dir: str = "./state"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Bound on the final sync (and on draining to the buffer) at SIGTERM; the systemd unit
    # allows 90 s in all, so keep it below that.
    shutdown_timeout: Duration = field(Duration(10.0), gt=0, le=60)
    health_interval: Duration = field(Duration(1.0), gt=0)


@dataclass(frozen=True)
class QueuesSection:
    readings: QueueConfig = QueueConfig(50_000, "block")
    waveforms: QueueConfig = QueueConfig(256, "drop_oldest")


@dataclass(frozen=True)
class ReconnectSection:
    initial: Duration = field(Duration(0.5), gt=0)
    maximum: Duration = field(Duration(60.0), gt=0)
    multiplier: float = field(2.0, ge=1)
    jitter: float = field(0.5, ge=0, le=1)


@dataclass(frozen=True)
class MetricsSection:
    """``[metrics]``: ``/metrics`` is served by the web server (``[web].listen``)."""

    enabled: bool = True
    listen: str | None = None  # no longer used: kept only to explain where /metrics went

    def problems(self) -> list[tuple[str, str]]:
        if self.listen is not None:
            return [("listen", "/metrics is served on [web].listen now; remove this key")]
        return []


@dataclass(frozen=True)
class PipelineConfig:
    """Analysis of one waveform source: windows, features, model, alerts, drift, commissioning."""

    source: str
    features: VibrationConfig | SoundConfig
    window: int = field(2048, gt=16)
    hop: int = field(1024, gt=0)
    model: ScorerConfig | None = None   # path = bundle dir / archive, or "builtin:<name>"
    threshold: float | None = None      # overrides the bundle's threshold
    alerts: AlertConfig = AlertConfig()
    drift: DriftConfig = DriftConfig()
    commissioning: CommissioningConfig | None = None
    registry: RegistryConfig | None = None  # model versions pushed down from MLflow

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.hop > self.window:
            out.append(("hop", "must be <= window (windows may overlap, not leave gaps)"))
        if self.model and self.commissioning and self.commissioning.enabled:
            out.append(("commissioning", "give either a model or commissioning, not both"))
        if self.registry and self.commissioning and self.commissioning.enabled:
            out.append(("commissioning", "give either a registry or commissioning, not both"))
        return out


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection = AgentSection()
    buffer: BufferConfig = BufferConfig()
    uploader: UploaderConfig = UploaderConfig()
    queues: QueuesSection = QueuesSection()
    reconnect: ReconnectSection = ReconnectSection()
    metrics: MetricsSection = MetricsSection()
    web: WebConfig = WebConfig()
    mqtt: MqttConfig | None = None  # no [mqtt] table: no MQTT
    drivers: tuple[Any, ...] = ()
    pipelines: tuple[PipelineConfig, ...] = ()

    @property
    def state_dir(self) -> Path:
        return Path(self.agent.state_dir).expanduser()


def _driver(raw: Any, path: str, problems: list[ConfigProblem]) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(ConfigProblem(path, "must be a table"))
        return None
    kind = raw.get("kind")
    if kind not in DRIVER_MODULES:
        opts = ", ".join(repr(k) for k in DRIVER_MODULES)
        problems.append(ConfigProblem(f"{path}.kind", f"must be one of {opts}, got {kind!r}"))
        return None
    module = importlib.import_module(DRIVER_MODULES[kind])
    found = check(module.Config, raw, path)
    if found:
        problems.extend(found)
        return None
    return build(module.Config, raw, path)


def _web(raw: Any, problems: list[ConfigProblem]) -> WebConfig:
    """``[web]`` is a pydantic :class:`edge_agent.settings.Model`; its problems join the rest."""
    if not isinstance(raw, Mapping):
        problems.append(ConfigProblem("web", "must be a table"))
        return WebConfig()
    try:
        return settings.parse(WebConfig, raw, "web")
    except settings.ConfigError as exc:
        problems.extend(ConfigProblem(p.key, p.message) for p in exc.problems)
        return WebConfig()


def _mqtt(raw: Any, problems: list[ConfigProblem]) -> MqttConfig | None:
    """``[mqtt]`` is a pydantic :class:`edge_agent.settings.Model`; its problems join the rest."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.append(ConfigProblem("mqtt", "must be a table"))
        return None
    try:
        return settings.parse(MqttConfig, raw, "mqtt")
    except settings.ConfigError as exc:
        problems.extend(ConfigProblem(p.key, p.message) for p in exc.problems)
        return None


def parse(raw: Mapping[str, Any]) -> AgentConfig:
    """Validate a parsed TOML document; raise :class:`ConfigError` listing every problem."""
    raw = dict(raw)
    drivers_raw = raw.pop("drivers", [])
    web_raw = raw.pop("web", {})
    mqtt_raw = raw.pop("mqtt", None)
    problems = check(AgentConfig, raw)
    web = _web(web_raw, problems)
    mqtt = _mqtt(mqtt_raw, problems)
    drivers: list[Any] = []
    if not isinstance(drivers_raw, list):
        problems.append(ConfigProblem("drivers", "must be an array of tables ([[drivers]])"))
        drivers_raw = []
    for i, d in enumerate(drivers_raw):
        drivers.append(_driver(d, f"drivers[{i}]", problems))
    if problems:
        raise ConfigError(problems)
    cfg = dataclasses.replace(build(AgentConfig, raw), drivers=tuple(drivers), web=web,
                              mqtt=mqtt)
    cross = _cross_checks(cfg)
    if cross:
        raise ConfigError(cross)
    return cfg


def _cross_checks(cfg: AgentConfig) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    seen: dict[str, int] = {}
    for i, d in enumerate(cfg.drivers):
        if d.name in seen:
            out.append(ConfigProblem(f"drivers[{i}].name",
                                     f"duplicate name {d.name!r} (also drivers[{seen[d.name]}])"))
        seen.setdefault(d.name, i)
    sources: set[str] = set()
    known = True
    for d in cfg.drivers:
        fn = getattr(d, "waveform_sources", None)
        if callable(fn):
            sources.update(fn())
        else:
            known = False
    used: dict[str, int] = {}
    for i, p in enumerate(cfg.pipelines):
        if known and p.source not in sources:
            have = ", ".join(sorted(sources)) or "none"
            out.append(ConfigProblem(f"pipelines[{i}].source",
                                     f"no driver produces waveform {p.source!r} (have: {have})"))
        if p.source in used:
            out.append(ConfigProblem(f"pipelines[{i}].source",
                                     f"duplicate source (also pipelines[{used[p.source]}])"))
        used.setdefault(p.source, i)
    return out


def load(path: Path | None) -> AgentConfig:
    """Read and validate a config file (``None``: the embedded default)."""
    p = path or DEFAULT_CONFIG
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(p), f"cannot read: {exc.strerror or exc}")]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(str(p), f"not valid TOML: {exc}")]) from exc
    return parse(raw)


def summary(cfg: AgentConfig) -> list[str]:
    """Human-readable lines for ``check-config`` (secrets are never shown)."""
    up = cfg.uploader
    lines = [
        f"gateway_id: {cfg.agent.gateway_id}",
        f"state_dir: {cfg.state_dir}",
        f"buffer: {cfg.buffer.path} (max {cfg.buffer.max_size} bytes)",
        f"uploader: {up.url or 'disabled (data stays buffered)'}",
        f"web: {_web_line(cfg.web)}",
        f"mqtt: {_mqtt_line(cfg.mqtt)}",
        f"metrics: {'/metrics on the web server' if cfg.metrics.enabled else 'disabled'}",
        f"drivers: {len(cfg.drivers)}",
    ]
    lines += [f"  - {d.name} ({d.kind})" for d in cfg.drivers]
    lines.append(f"pipelines: {len(cfg.pipelines)}")
    for p in cfg.pipelines:
        model = p.model.path if p.model else (
            "commissioning" if p.commissioning and p.commissioning.enabled
            else "none (features only)")
        lines.append(f"  - {p.source}: {p.features.kind} {p.window}/{p.hop}, model {model}")
    return lines


def _mqtt_line(m: MqttConfig | None) -> str:
    if m is None:
        return "disabled (no [mqtt] table)"
    auth = f", user {m.username} password {m.password!r}" if m.username else ""
    sp = f", group {m.sparkplug.group_id}" if m.sparkplug else ""
    return f"{m.url} ({m.mode}{sp}{auth})"


def _web_line(web: WebConfig) -> str:
    if not web.enabled:
        return "disabled"
    auth = f"token {web.auth_token.describe()}" if web.auth_token else "no auth (loopback)"
    return f"http://{web.listen}/ ({auth})"
