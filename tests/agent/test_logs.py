"""The JSON log formatter: every ``extra`` field becomes a key next to ts/level/logger/msg."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from edge_agent.agent import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    logs.setup("info", out)
    try:
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_extra_fields_are_printed_as_keys(stream: io.StringIO) -> None:
    log = logging.getLogger("edge_agent.sync.runner")
    log.warning("delivery failed; retrying",
                extra={"sink": "uploader", "correlation_id": "k-1", "error": "timeout",
                       "retry_in_s": 1.5, "driver": "plc", "source": "pump.de"})
    log.debug("not shown at info")
    [rec] = lines(stream)
    assert rec["logger"] == "edge_agent.sync.runner" and rec["level"] == "warning"
    assert rec["msg"] == "delivery failed; retrying"
    assert {k: rec[k] for k in ("sink", "correlation_id", "error", "retry_in_s", "driver",
                                "source")} == {"sink": "uploader", "correlation_id": "k-1",
                                               "error": "timeout", "retry_in_s": 1.5,
                                               "driver": "plc", "source": "pump.de"}
    assert str(rec["ts"]).endswith("Z")


def test_traceback_and_odd_values_stay_one_json_line(stream: io.StringIO) -> None:
    log = logging.getLogger("edge_agent.agent.pipeline")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("restarting after a crash", extra={"kind": "driver_crashed",
                                                        "path": logs})  # not JSON-native
    [rec] = lines(stream)
    assert rec["kind"] == "driver_crashed" and "edge_agent.agent.logs" in str(rec["path"])
    assert "RuntimeError: boom" in str(rec["exc"])
