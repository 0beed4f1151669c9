"""The agent's status as one JSON-ready snapshot, built on the event loop.

:class:`StatusService` is the only reader of the components' live state for the page, the JSON
API, ``/healthz`` and ``/metrics``: it runs on the event loop (aiohttp handlers and the
Prometheus collector call it there), so it never reads event-loop dicts from another thread.
A snapshot is reused for ``ttl`` seconds, so twenty browsers polling every second cost one
build per second. Shapes are documented in the README ("JSON API").
"""

from __future__ import annotations

import math
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.agent.health import DriverView, Progress, Verdict, expected_interval
from edge_agent.agent.history import StatusRecorder

MAX_VALUES = 24


class PipelineLike(Protocol):
    """What the status reads of :class:`~edge_agent.agent.pipeline.Pipeline`."""

    cfg: Any
    buffer: Any
    uploader: Any
    started: float

    @property
    def drivers(self) -> Sequence[Any]: ...

    @property
    def analyses(self) -> Mapping[str, Any]: ...

    @property
    def latest(self) -> Mapping[str, float]: ...

    def stats(self) -> dict[str, Any]: ...


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def uploader_view(up: Any) -> dict[str, Any]:
    """Adapter over ``Uploader.stats()`` (its shape may change): the fields the page needs."""
    if up is None:
        return {"state": "disabled"}
    s: Mapping[str, Any] = up.stats()
    sent = s.get("batches_sent", {})
    failed = s.get("batches_failed", {})
    last_ok = _num(s.get("last_success"))
    return {
        "state": str(s.get("state", "unknown")),
        "last_success": last_ok,
        "lag_s": None if last_ok is None else max(0.0, time.time() - last_ok),
        "last_error": s.get("last_error"),
        "batches_sent": dict(sent) if isinstance(sent, Mapping) else {},
        "batches_failed": dict(failed) if isinstance(failed, Mapping) else {},
        "rows_sent": s.get("rows_sent", 0), "bytes_sent": s.get("bytes_sent", 0),
        "quarantined": s.get("quarantined", 0),
    }


def mqtt_view(pipeline: Any) -> dict[str, Any]:
    """The MQTT sink's ``stats()`` when one is configured (``pipeline.sinks["mqtt"]`` or
    ``pipeline.mqtt``), else ``{"state": "not configured"}``. Secrets are never copied."""
    sinks = getattr(pipeline, "sinks", None)
    sink = sinks.get("mqtt") if isinstance(sinks, Mapping) else getattr(pipeline, "mqtt", None)
    if sink is None or not callable(getattr(sink, "stats", None)):
        return {"state": "not configured"}
    s = sink.stats()
    return {k: v for k, v in s.items()
            if "password" not in k and "secret" not in k and "token" not in k} \
        if isinstance(s, Mapping) else {"state": "unknown"}


class StatusService:
    def __init__(self, pipeline: PipelineLike, recorder: StatusRecorder,
                 stall_after: float = 10.0, ttl: float = 1.0) -> None:
        self.pipeline = pipeline
        self.recorder = recorder
        self.progress = Progress(stall_after)
        self.ttl = ttl
        self._snap: dict[str, Any] | None = None
        self._snap_at = -math.inf
        self.builds = 0
        self._sources = self._source_drivers()

    def refresh(self) -> None:
        """After a configuration reload: which driver produces which waveform source."""
        self._sources = self._source_drivers()
        self._snap = None

    def _source_drivers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for d in self.pipeline.drivers:
            fn = getattr(getattr(d, "cfg", None), "waveform_sources", None)
            for s in (fn() if callable(fn) else ()):
                out[str(s)] = d.name
        return out

    # -- health -----------------------------------------------------------------------------
    def health(self) -> Verdict:
        p = self.pipeline
        views = []
        for d in p.drivers:
            h = d.health()
            views.append(DriverView(d.name, bool(h.connected), h.last_read, int(h.values),
                                    expected_interval(d)))
        return self.progress.observe(time.time(), commits=int(p.buffer.commits),
                                     writer_alive=_writer_alive(p.buffer),
                                     waiting=_waiting(p), drivers=views)

    # -- snapshot ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._snap is None or now - self._snap_at >= self.ttl:
            self._snap = self._build()
            self._snap_at = now
            self.builds += 1
        return self._snap

    def _build(self) -> dict[str, Any]:
        p = self.pipeline
        now = time.time()
        drivers = [d.health().snapshot() for d in p.drivers]
        return {
            "gateway": self._gateway(now),
            "health": self.health().as_json(),
            "buffer": self._buffer(),
            "sync": uploader_view(p.uploader),
            "mqtt": mqtt_view(p),
            "pipeline": p.stats(),
            "drivers": [_jsonable(d) for d in drivers],
            "sources": [self._source(src, an, drivers, now) for src, an in p.analyses.items()],
        }

    def _gateway(self, now: float) -> dict[str, Any]:
        p = self.pipeline
        state_dir = Path(p.cfg.state_dir)
        try:
            du = shutil.disk_usage(state_dir)
            disk: dict[str, Any] = {"path": str(state_dir), "total_bytes": du.total,
                                    "used_bytes": du.used, "free_bytes": du.free}
        except OSError as exc:
            disk = {"path": str(state_dir), "error": exc.strerror or str(exc)}
        return {"id": p.cfg.agent.gateway_id, "version": __version__,
                "hostname": socket.gethostname(), "started": p.started,
                "uptime_s": round(now - p.started, 1), "clock": now, "disk": disk}

    def _buffer(self) -> dict[str, Any]:
        s: Mapping[str, Any] = self.pipeline.buffer.stats()
        keep = ("rows_queued", "rows_queued_total", "bytes_queued", "file_bytes",
                "oldest_unsent_age_s", "dropped_total", "quarantined", "disk_errors",
                "commits", "rows_committed", "commit_lag_ms")
        return _jsonable({k: s.get(k) for k in keep if k in s})

    def _source(self, src: str, an: Any, drivers: list[dict[str, Any]],
                now: float) -> dict[str, Any]:
        st = an.stats()
        dname = self._sources.get(src)
        drv = next((d for d in drivers if d.get("name") == dname), None)
        tr = self.recorder.track(src)
        latest = tr.latest
        prefix = src.rpartition(".")[0] + "." if "." in src else src
        values = {k: v for k, v in self.pipeline.latest.items() if k.startswith(prefix)}
        return _jsonable({
            "id": src, "driver": dname,
            "connected": None if drv is None else drv.get("connected"),
            "health": drv, "model": st.get("model"), "threshold": st.get("threshold"),
            "score": st.get("last_score"), "alarm": bool(st.get("alarm")),
            "windows": st.get("windows"), "anomalous_windows": st.get("anomalous_windows"),
            "invalid_windows": st.get("invalid_windows"), "drift": st.get("drift"),
            "broken": st.get("broken"), "windowing": st.get("windowing"),
            "cannot_score": st.get("cannot_score"),
            "values": dict(sorted(values.items())[:MAX_VALUES]),
            "features": None if latest is None else _features(an, latest.values,
                                                              latest.window_end),
            "alarms": tr.alarms_since(now - tr.history),
            "alerts": list(reversed(tr.alerts)),
            "active_alert": _active(tr.alerts) if st.get("alarm") else None,
        })

    def scores(self, src: str, since: float) -> dict[str, Any] | None:
        if src not in self.pipeline.analyses:
            return None
        tr = self.recorder.track(src)
        now = time.time()
        an = self.pipeline.analyses[src]
        return _jsonable({"source": src, "now": now, "resolution": tr.resolution,
                          "threshold": an.threshold, "points": tr.points_since(since, now),
                          "alarms": tr.alarms_since(max(since, now - tr.history))})


def _writer_alive(buffer: Any) -> bool:
    """Adapter: the buffer's writer thread runs and has not died (Buffer internals today)."""
    thread = getattr(buffer, "_thread", None)
    return bool(thread is not None and thread.is_alive()
                and getattr(buffer, "_dead", None) is None)


def _waiting(p: Any) -> int:
    """Records queued for the buffer: the pipeline's queues and the writer's own queue."""
    n = 0
    for q in (getattr(p, "readings", None), getattr(p, "waveforms", None)):
        n += len(q) if q is not None else 0
    wq = getattr(p.buffer, "_q", None)
    qsize = getattr(wq, "qsize", None)
    return n + (int(qsize()) if callable(qsize) else 0)


def _active(alerts: Any) -> dict[str, Any] | None:
    for a in reversed(alerts):
        if a["kind"] == "anomaly_raised":
            return dict(a)
    return None


def _features(an: Any, values: Mapping[str, float], ts: float) -> dict[str, Any]:
    """The latest vector against the loaded model's training summary (its manifest)."""
    scorer = an.slot.current if getattr(an, "slot", None) is not None else None
    training = scorer.manifest.training if scorer is not None else {}
    rows = []
    for name, v in values.items():
        s = training.get(name)
        row: dict[str, Any] = {"name": name, "value": v}
        if s is not None and s.quantiles:
            lo, hi = s.quantiles[0], s.quantiles[-1]
            row.update(lo=lo, hi=hi, mean=s.mean,
                       z=(v - s.mean) / s.std if s.std > 0 else None,
                       outside=bool(v < lo or v > hi))
        rows.append(row)
    rows.sort(key=lambda r: -abs(r.get("z") or 0.0))
    return {"timestamp": ts, "model": None if scorer is None else scorer.ref.name,
            "rows": rows}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    return str(obj)
