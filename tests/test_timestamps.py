"""Timestamps are formatted and parsed in one place (edge_agent/timestamps.py), with one valid
range (1970 up to the year 10000)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent import timestamps as t
from edge_agent.agent.admission import ReadingGate
from edge_agent.records import Reading

REPO = Path(__file__).resolve().parent.parent
# The sync package's copies move here when the sync rework lands (see the layout notes).
SCANNED = ("agent", "drivers", "models", "edge_agent")


def test_round_trip_is_exact_to_the_microsecond() -> None:
    for us in (0, 1, 999_999, 1_800_000_000_123_456, int(t.MAX_TS * 1_000_000) - 1):
        assert t.parse_us(t.format_us(us)) == us
    for us in (0, 1, 999_999, 1_800_000_000_123_456):  # float seconds hold µs up to ~2255
        assert t.to_us(t.parse_ts(t.format_us(us))) == us
    assert t.format_us(0) == "1970-01-01T00:00:00.000000Z"
    assert t.format_us(int(t.MAX_TS) * 1_000_000 - 1) == "9999-12-31T23:59:59.999999Z"
    assert t.MAX_TS == (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() + 1)


def test_parse_offsets_and_naive_as_utc() -> None:
    assert t.parse_ts("2027-01-15T08:00:00+01:00") == t.parse_ts("2027-01-15T07:00:00Z")
    assert t.parse_ts("2027-01-15T07:00:00") == t.parse_ts("2027-01-15T07:00:00Z")
    with pytest.raises(ValueError):
        t.parse_ts("yesterday")


def test_other_forms() -> None:
    assert t.format_ms(1.5) == "1970-01-01T00:00:01.500Z"
    assert t.compact(86_400.0) == "19700102T000000Z"
    assert t.second_text(86_399) == "1970-01-01T23:59:59"
    assert t.in_range(0.0) and t.in_range(t.MAX_TS - 1) and not t.in_range(t.MAX_TS)
    assert not t.in_range(-1.0) and not t.in_range(math.nan)


def test_admission_uses_the_one_range() -> None:
    gate = ReadingGate()
    year_2300 = t.parse_ts("2300-01-01T00:00:00Z")   # refused by the old 2200 ceiling
    ok, _ = gate.admit([Reading("s", "t", 1.0, "u", year_2300)], now=0.0)
    assert len(ok) == 1
    ok, _ = gate.admit([Reading("s", "t", 1.0, "u", t.MAX_TS)], now=0.0)
    assert ok == [] and gate.dropped["bad_timestamp:s"] == 1


def test_no_other_module_formats_or_parses_timestamps() -> None:
    pattern = re.compile(r"strftime|strptime|fromisoformat|253402300800|7_258_118_400")
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
            for d in SCANNED for p in sorted((REPO / d).rglob("*.py"))
            if p.name != "timestamps.py"
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if pattern.search(line)]
    assert hits == []
