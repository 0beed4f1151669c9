"""Prometheus metrics, read from the status snapshot at scrape time.

``/metrics`` is served by the web server on the event loop; :class:`SnapshotCollector` turns
the :class:`~edge_agent.agent.status.StatusService` snapshot into metric families, so nothing
reads the components' live state from another thread and no stage holds a metrics object.
Conventions: counters are Counters (``*_total``), durations ``*_seconds``, sizes ``*_bytes``,
timestamps ``*_timestamp_seconds``; one label name per thing (``driver``, ``source``,
``sink``, ``queue``); states are labelled 0/1 gauges; ``edge_agent_build_info`` and the
``process_*`` metrics of prometheus-client's process collector.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SINK_STATES = ("idle", "sending", "backoff", "auth_failed", "disabled", "connected",
               "disconnected")

Snapshot = Callable[[], Mapping[str, Any]]


def _f(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


class _Families:
    """Metric families by name, created on first use with their help, type and labels."""

    def __init__(self) -> None:
        self.fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        self.histograms: list[HistogramMetricFamily] = []

    def gauge(self, name: str, doc: str, labels: dict[str, str], value: Any) -> None:
        self._add(GaugeMetricFamily, name, doc, labels, value)

    def counter(self, name: str, doc: str, labels: dict[str, str], value: Any) -> None:
        self._add(CounterMetricFamily, name, doc, labels, value)

    def _add(self, cls: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str,
             doc: str, labels: dict[str, str], value: Any) -> None:
        v = _f(value)
        if v is None:
            return
        fam = self.fams.get(name)
        if fam is None:
            fam = self.fams[name] = cls(name, doc, labels=list(labels))
        fam.add_metric(list(labels.values()), v)


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        m = _Families()
        g = s.get("gateway", {})
        m.gauge("edge_agent_build_info", "Agent version and gateway id (always 1).",
                {"version": str(g.get("version")), "gateway_id": str(g.get("id"))}, 1)
        m.gauge("edge_agent_start_time_timestamp_seconds",
                "When the agent started (Unix time).", {}, g.get("started"))
        disk = g.get("disk", {})
        m.gauge("edge_agent_state_dir_free_bytes",
                "Free space on the file system holding the state directory.", {},
                disk.get("free_bytes"))
        m.gauge("edge_agent_state_dir_size_bytes",
                "Size of the file system holding the state directory.", {},
                disk.get("total_bytes"))
        m.gauge("edge_agent_healthy", "1 while the pipeline makes progress (as /healthz).",
                {}, s.get("health", {}).get("status") == "ok")
        _buffer(m, s.get("buffer", {}))
        _pipeline(m, s.get("pipeline", {}))
        _sinks(m, {"uploader": s.get("sync", {}), "mqtt": s.get("mqtt", {})})
        for d in s.get("drivers", []):
            _driver(m, d, s.get("pipeline", {}).get("driver_restarts", {}))
        for src in s.get("sources", []):
            _source(m, src)
        yield from m.fams.values()
        yield from m.histograms


def _buffer(m: _Families, b: Mapping[str, Any]) -> None:
    for table, n in (b.get("rows_queued") or {}).items():
        m.gauge("edge_agent_buffer_unsent_rows", "Rows in the buffer not yet delivered, by "
                "table.", {"table": str(table)}, n)
    m.gauge("edge_agent_buffer_unsent_bytes", "Bytes of undelivered rows in the buffer.", {},
            b.get("bytes_queued"))
    m.gauge("edge_agent_buffer_file_bytes", "Size of the SQLite buffer file.", {},
            b.get("file_bytes"))
    m.gauge("edge_agent_buffer_oldest_unsent_age_seconds",
            "Age of the oldest undelivered row (0 when everything is delivered).", {},
            b.get("oldest_unsent_age_s"))
    m.gauge("edge_agent_buffer_quarantined_batches",
            "Batches the receiver refused, kept for inspection.", {}, b.get("quarantined"))
    m.counter("edge_agent_buffer_commits", "Transactions committed by the buffer writer.", {},
              b.get("commits"))
    m.counter("edge_agent_buffer_committed_rows", "Rows committed to the buffer.", {},
              b.get("rows_committed"))
    m.counter("edge_agent_buffer_dropped_rows", "Oldest raw readings dropped by the size and "
              "age quotas.", {}, b.get("dropped_total"))
    m.counter("edge_agent_buffer_disk_errors", "SQLite errors met by the buffer writer.", {},
              b.get("disk_errors"))
    _commit_lag(m, b.get("commit_lag_ms") or {})


def _commit_lag(m: _Families, lag: Mapping[str, Any]) -> None:
    """Tick -> commit latency of every committed reading since start (sync/lag.py)."""
    buckets = lag.get("buckets")
    if not buckets:
        return
    h = HistogramMetricFamily(
        "edge_agent_reading_commit_lag_seconds", "Time from a reading's timestamp (its source "
        "tick) to its commit in the buffer, in 5 ms steps.",
        buckets=[(f"{ms / 1000:g}", n) for ms, n in sorted((int(k), v)
                                                            for k, v in buckets.items())]
        + [("+Inf", lag.get("readings", 0))], sum_value=lag.get("sum_s", 0.0))
    m.histograms.append(h)


def _pipeline(m: _Families, p: Mapping[str, Any]) -> None:
    for q, st in (p.get("queues") or {}).items():
        lab = {"queue": str(q)}
        m.gauge("edge_agent_queue_depth", "Items waiting in an in-memory queue.", lab,
                st.get("depth"))
        m.gauge("edge_agent_queue_capacity", "Capacity of an in-memory queue.", lab,
                st.get("size"))
        m.counter("edge_agent_queue_dropped", "Items dropped by a queue's overflow policy.",
                  lab, st.get("dropped"))
    refused: dict[str, float] = {}
    for key, n in (p.get("readings_dropped") or {}).items():  # "<reason>:<sensor_id>" -> n
        reason = str(key).partition(":")[0]
        refused[reason] = refused.get(reason, 0.0) + (_f(n) or 0.0)
    for reason, n in sorted(refused.items()):
        m.counter("edge_agent_readings_refused", "Readings refused at admission, by reason.",
                  {"reason": reason}, n)
    m.counter("edge_agent_records_refused", "Records the buffer refused as malformed.", {},
              p.get("records_refused"))
    m.counter("edge_agent_unrouted_blocks", "Waveform blocks with no pipeline configured.",
              {}, p.get("unrouted_blocks"))


def _sinks(m: _Families, sinks: Mapping[str, Mapping[str, Any]]) -> None:
    for sink, st in sinks.items():
        state = str(st.get("state", "unknown"))
        if state == "not configured":
            continue
        lab = {"sink": sink}
        for s in sorted({*SINK_STATES, state}):
            m.gauge("edge_agent_sink_state", "1 for the sink's current state.",
                    {"sink": sink, "state": s}, s == state)
        for outcome, n in (st.get("batches_sent") or {}).items():
            m.counter("edge_agent_sink_batches", "Batches settled by a sink, by outcome.",
                      {"sink": sink, "outcome": str(outcome)}, n)
        for reason, n in (st.get("batches_failed") or {}).items():
            m.counter("edge_agent_sink_failed_attempts", "Failed delivery attempts, by "
                      "reason.", {"sink": sink, "reason": str(reason)}, n)
        m.counter("edge_agent_sink_sent_rows", "Rows delivered by a sink.", lab,
                  st.get("rows_sent"))
        m.counter("edge_agent_sink_sent_bytes", "Payload bytes sent by a sink.", lab,
                  st.get("bytes_sent"))
        m.gauge("edge_agent_sink_last_success_timestamp_seconds",
                "When the sink last delivered a batch (Unix time).", lab, st.get("last_success"))


def _driver(m: _Families, d: Mapping[str, Any], restarts: Mapping[str, Any]) -> None:
    name = str(d.get("name"))
    lab = {"driver": name}
    m.gauge("edge_agent_driver_connected", "1 while the driver is connected to its source.",
            lab, bool(d.get("connected")))
    m.counter("edge_agent_driver_reads", "Successful reads (polls or batches).", lab,
              d.get("reads"))
    m.counter("edge_agent_driver_values", "Values delivered by the driver.", lab,
              d.get("values"))
    m.gauge("edge_agent_driver_last_read_timestamp_seconds",
            "When the driver last read successfully (Unix time).", lab, d.get("last_read"))
    m.gauge("edge_agent_driver_bad_points", "Configured points the source cannot serve.", lab,
            len(d.get("bad_points") or {}))
    for kind, n in (d.get("errors") or {}).items():
        m.counter("edge_agent_driver_errors", "Driver errors, by kind.",
                  {"driver": name, "kind": str(kind)}, n)
    m.counter("edge_agent_driver_restarts", "Restarts after the driver crashed on a bug.", lab,
              restarts.get(name, 0))
    m.counter("edge_agent_driver_late_polls", "Poll slots skipped because the driver was late.",
              lab, d.get("late_polls"))
    m.gauge("edge_agent_driver_poll_lag_seconds",
            "How far the last poll ended past the next poll's slot (0: on schedule).", lab,
            d.get("poll_lag_s"))


def _source(m: _Families, s: Mapping[str, Any]) -> None:
    lab = {"source": str(s.get("id"))}
    m.counter("edge_agent_analysis_windows", "Windows analysed.", lab, s.get("windows"))
    m.counter("edge_agent_analysis_invalid_windows", "Windows with non-finite features.", lab,
              s.get("invalid_windows"))
    m.counter("edge_agent_analysis_anomalous_windows", "Windows scored over the threshold.",
              lab, s.get("anomalous_windows"))
    win = s.get("windowing") or {}
    for reason, n in (win.get("resets_by_reason") or {}).items():
        m.counter("edge_agent_window_resets", "Times the windower restarted the source's "
                  "stream (a gap, a jump or a change of rate/channels), by reason.",
                  {**lab, "reason": str(reason)}, n)
    m.counter("edge_agent_window_dropped_samples", "Samples the windower could not use "
              "(lost in a gap or overlapping a repeated block).", lab,
              win.get("dropped_samples", 0))
    m.gauge("edge_agent_window_jitter_seconds", "Measured timestamp jitter of the source's "
            "blocks.", lab, float(win.get("jitter_ms", 0.0)) / 1e3)
    m.gauge("edge_agent_anomaly_score", "Latest anomaly score (higher is more anomalous).",
            lab, s.get("score"))
    m.gauge("edge_agent_anomaly_threshold", "Score above which a window counts as anomalous.",
            lab, s.get("threshold"))
    m.gauge("edge_agent_alarm_active", "1 while the source's anomaly alarm is raised.", lab,
            bool(s.get("alarm")))
    m.gauge("edge_agent_drift", "Feature drift against the model's training data.", lab,
            s.get("drift"))
    if s.get("cannot_score"):
        m.gauge("edge_agent_cannot_score", "1 while a source's windows cannot be scored (the "
                "reason label says why).", {**lab, "reason": str(s.get("cannot_score"))[:200]}, 1)
    if s.get("model"):
        m.gauge("edge_agent_model_info", "The model loaded for a source (always 1).",
                {**lab, "model": str(s.get("model"))}, 1)


def registry(snapshot: Snapshot) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(snapshot))
    ProcessCollector(registry=reg)
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
