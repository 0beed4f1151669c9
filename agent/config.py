"""The agent's configuration: TOML → typed, frozen objects, validated fully before anything runs.

Sections: ``[agent]``, ``[buffer]`` (:class:`edge_agent.sync.buffer.BufferConfig`),
``[uploader]`` (:class:`edge_agent.sync.uploader.UploaderConfig`), ``[queues]``, ``[metrics]``,
``[web]`` (:class:`edge_agent.agent.webconfig.WebConfig`), ``[[drivers]]`` (one table per
source; ``kind`` picks the driver module, whose ``Config`` class parses the rest) and
``[[pipelines]]`` (windowing, features, model, alerting and registry per waveform source).
Parsing does no I/O; :func:`world_problems` checks the files and environment variables the
config names (``check-config`` and start-up run it). To add a section ``[name]``: write a
``settings.Model`` subclass (defaults for every field) and add ``name: ThatModel = ThatModel()``
to :class:`AgentConfig`; ``check-config`` and ``run`` then report its problems by key path.
"""

from __future__ import annotations

import importlib
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, PlainValidator, ValidationInfo

from edge_agent.agent.queues import QueueConfig
from edge_agent.agent.webconfig import WebConfig
from edge_agent.models.alerting import AlertConfig
from edge_agent.models.commissioning import CommissioningConfig
from edge_agent.models.drift import DriftConfig
from edge_agent.models.dsp.extract import SoundConfig, VibrationConfig
from edge_agent.models.onnx_score import ScorerConfig
from edge_agent.models.registry.config import RegistryConfig
from edge_agent.records import parse_ts
from edge_agent.settings import (
    ConfigError,
    ConfigProblem,
    Duration,
    Model,
    Problems,
)
from edge_agent.settings import parse as parse_model
from edge_agent.settings import world_problems as settings_world_problems
from edge_agent.sync.buffer import BufferConfig
from edge_agent.sync.contract import UploaderConfig
from edge_agent.sync.mqtt.config import MqttConfig

if TYPE_CHECKING:
    from edge_agent.drivers import modbus, opcua, replay, simulator, soundcard

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


def _driver(raw: Any, info: ValidationInfo) -> Any:
    """The ``[[drivers]]`` union, discriminated on ``kind``: the kind's module is imported only
    when a table names it (asyncua and pymodbus stay out of a simulator-only agent)."""
    if isinstance(raw, Model):
        return raw
    if not isinstance(raw, Mapping):
        raise Problems([("", f"must be a table, got {type(raw).__name__}")])
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in DRIVER_MODULES:
        opts = ", ".join(repr(k) for k in DRIVER_MODULES)
        got = "" if kind is None else f", got {list(kind) if isinstance(kind, tuple) else kind!r}"
        raise Problems([("kind", f"{'is required: ' if kind is None else 'must be '}"
                                 f"one of {opts}{got}")])
    module = importlib.import_module(DRIVER_MODULES[kind])
    return module.Config.model_validate(raw, context=info.context)


if TYPE_CHECKING:
    DriverConfig = (simulator.Config | replay.Config | soundcard.Config | modbus.Config
                    | opcua.Config)
else:
    DriverConfig = Annotated[Any, PlainValidator(_driver)]

Features = Annotated[VibrationConfig | SoundConfig, Field(discriminator="kind")]


class AgentSection(Model):
    gateway_id: str = Field("edge-gateway", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
    state_dir: str = "./state"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Bound on the final sync (and on draining to the buffer) at SIGTERM; the systemd unit
    # allows 90 s in all, so keep it below that.
    shutdown_timeout: Duration = Field(10.0, gt=0, le=60)
    health_interval: Duration = Field(1.0, gt=0)


class QueuesSection(Model):
    readings: QueueConfig = QueueConfig(size=50_000, overflow="block")
    waveforms: QueueConfig = QueueConfig(size=256, overflow="drop_oldest")


class ReconnectSection(Model):
    initial: Duration = Field(0.5, gt=0)
    maximum: Duration = Field(60.0, gt=0)
    multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.5, ge=0, le=1)

    def problems(self) -> list[tuple[str, str]]:
        if self.initial > self.maximum:
            return [("initial", "must not exceed maximum")]
        return []


class MetricsSection(Model):
    """``[metrics]``: ``/metrics`` is served by the web server (``[web].listen``)."""

    enabled: bool = True
    listen: str | None = None  # no longer used: kept only to explain where /metrics went

    def problems(self) -> list[tuple[str, str]]:
        if self.listen is not None:
            return [("listen", "/metrics is served on [web].listen now; remove this key")]
        return []


class PipelineConfig(Model):
    """Analysis of one waveform source: windows, features, model, alerts, drift, commissioning."""

    source: str
    features: Features
    window: int = Field(2048, gt=16)
    hop: int = Field(1024, gt=0)
    # Timestamp jitter accepted between blocks, as a fraction of a block (PLC-stamped arrays
    # arrive on a coarser tick than their block period); larger mismatches restart the stream.
    window_jitter: float = Field(0.25, gt=0, lt=0.75)
    sample_rate: float | None = Field(None, gt=0)  # analysis rate; faster sources resampled
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


class AgentConfig(Model):
    """The whole file. A new section is one field here with a ``Model`` default (see README)."""

    agent: AgentSection = AgentSection()
    buffer: BufferConfig = BufferConfig()
    uploader: UploaderConfig = UploaderConfig()
    queues: QueuesSection = QueuesSection()
    reconnect: ReconnectSection = ReconnectSection()
    metrics: MetricsSection = MetricsSection()
    web: WebConfig = WebConfig()
    mqtt: MqttConfig | None = None  # no [mqtt] table: no MQTT
    drivers: tuple[DriverConfig, ...] = ()
    pipelines: tuple[PipelineConfig, ...] = ()

    @property
    def state_dir(self) -> Path:
        return Path(self.agent.state_dir).expanduser()


def parse(raw: Mapping[str, Any]) -> AgentConfig:
    """Validate a parsed TOML document; raise :class:`ConfigError` listing every problem.

    No I/O: files and environment variables the config names are checked by
    :func:`world_problems` (``check-config`` and start-up)."""
    cfg = parse_model(AgentConfig, raw)
    cross = _cross_checks(cfg)
    if cross:
        raise ConfigError(cross)
    return cfg


def _cross_checks(cfg: AgentConfig) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    if not cfg.drivers:
        out.append(ConfigProblem("drivers", "no driver configured: add a [[drivers]] table "
                                            "(kind = \"simulator\" for a demo)"))
    seen: dict[str, int] = {}
    for i, d in enumerate(cfg.drivers):
        if d.name in seen:
            out.append(ConfigProblem(f"drivers[{i}].name",
                                     f"duplicate name {d.name!r} (also drivers[{seen[d.name]}])"))
        seen.setdefault(d.name, i)
    sources: set[str] = set()
    for d in cfg.drivers:
        sources.update(d.waveform_sources())
    used: dict[str, int] = {}
    for i, p in enumerate(cfg.pipelines):
        if p.source not in sources:
            have = ", ".join(sorted(sources)) or "none"
            out.append(ConfigProblem(f"pipelines[{i}].source",
                                     f"no driver produces waveform {p.source!r} (have: {have})"))
        if p.source in used:
            out.append(ConfigProblem(f"pipelines[{i}].source",
                                     f"duplicate source (also pipelines[{used[p.source]}])"))
        used.setdefault(p.source, i)
    return out


def load(path: Path | None) -> AgentConfig:
    """Read and validate a config file (``None``: the embedded default). Raises
    :class:`ConfigError` for an unreadable, non-UTF-8, non-TOML or invalid file."""
    p = path or DEFAULT_CONFIG
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(p), f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError([ConfigProblem(str(p), f"is not UTF-8 text (byte 0x{data[exc.start]:02x} "
                                                 f"on line {line})")]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(str(p), f"not valid TOML: {exc}")]) from None
    return parse(raw)


def world_problems(cfg: AgentConfig) -> list[ConfigProblem]:
    """Files and environment variables the config names that are missing now (unset
    ``${ENV}``, unreadable ``*_file`` secrets, model bundles, recordings, certificates), with
    their key paths. Run by ``check-config`` and at start, never while parsing."""
    return settings_world_problems(cfg) + stale_start_times(cfg, time.time())


def stale_start_times(cfg: AgentConfig, now: float) -> list[ConfigProblem]:
    """A replay/simulator ``start_time`` older than the buffer's ``max_age``: the buffer
    ages records by their own timestamps and would delete everything replayed at its next
    housekeeping. Refused at start (depends on the clock, so checked here, not at parse)."""
    out: list[ConfigProblem] = []
    for i, d in enumerate(cfg.drivers):
        start = getattr(d, "start_time", None)
        if not isinstance(start, str):
            continue
        try:
            age = now - parse_ts(start)
        except ValueError:
            continue  # reported by the driver's own check
        if age > cfg.buffer.max_age:
            out.append(ConfigProblem(
                f"drivers[{i}].start_time",
                f"{start} is {age / 86400:.1f} days ago, older than buffer.max_age "
                f"({cfg.buffer.max_age / 86400:g} days): the buffer would delete everything "
                f"replayed at its next housekeeping; give a recent start_time (or none: the "
                f"wall clock) or raise buffer.max_age"))
    return out


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
