"""Prometheus metrics, read from the components' ``stats()`` at scrape time.

No component holds a metrics object: a custom collector pulls the pipeline, buffer, uploader and
driver health snapshots when Prometheus scrapes, so the numbers are always current and the stages
stay free of metrics plumbing. Numbers become gauges named ``edge_agent_<component>_<key>``; a
nested table becomes one gauge with a ``key`` label per entry (e.g.
``edge_agent_uploader_batches{key="delivered"}``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("edge_agent.metrics")

StatsSource = Callable[[], Mapping[str, Any]]


def _name(*parts: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", "_".join(p for p in parts if p)).lower()


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return None


class StatsCollector(Collector):
    """Turns ``{component: stats_fn}`` and labelled per-item sources into gauges."""

    def __init__(self, sources: Mapping[str, StatsSource],
                 labelled: Mapping[str, tuple[str, Callable[[], Sequence[Mapping[str, Any]]]]]
                 ) -> None:
        self.sources = sources
        self.labelled = labelled  # component -> (label name, fn giving items with that key)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fams: dict[str, GaugeMetricFamily] = {}

        def add(name: str, labels: dict[str, str], value: float) -> None:
            fam = fams.get(name)
            if fam is None:
                fam = fams[name] = GaugeMetricFamily(name, name.replace("_", " "),
                                                     labels=sorted(labels))
            fam.add_metric([labels[k] for k in sorted(labels)], value)

        def walk(prefix: str, obj: Mapping[str, Any], labels: dict[str, str]) -> None:
            for k, v in obj.items():
                num = _number(v)
                if num is not None:
                    add(_name(prefix, str(k)), labels, num)
                elif isinstance(v, Mapping):
                    if v and all(_number(x) is not None for x in v.values()) and \
                            "key" not in labels:
                        for sk, sv in v.items():
                            add(_name(prefix, str(k)), {**labels, "key": str(sk)},
                                float(_number(sv) or 0.0))
                    else:
                        walk(_name(prefix, str(k)), v, labels)

        for comp, fn in self.sources.items():
            walk(f"edge_agent_{comp}", _snapshot(fn), {})
        for comp, (label, items) in self.labelled.items():
            for item in _snapshot(items):
                ident = str(item.get(label, ""))
                walk(f"edge_agent_{comp}", {k: v for k, v in item.items() if k != label},
                     {label: ident})
        yield from fams.values()


def _snapshot(fn: Callable[[], Any]) -> Any:
    """Scrapes run in the HTTP server's thread while the event loop mutates the stats: a dict
    that changed size mid-copy is simply read again."""
    for _ in range(3):
        try:
            return fn()
        except RuntimeError:
            continue
    return {}


def serve(listen: str, collector: Collector) -> CollectorRegistry | None:
    """Start the metrics endpoint in a background thread; a busy port is logged, not fatal."""
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        start_http_server(int(port), addr=host, registry=registry)
    except (OSError, OverflowError, ValueError) as exc:
        log.error("metrics endpoint not started", extra={"listen": listen, "error": str(exc)})
        return None
    log.info("metrics endpoint up", extra={"url": f"http://{listen}/metrics"})
    return registry
