"""The loopback receiver's fast paths (lean readings check, optional orjson) give exactly the
answers of the plain contract checks: the benchmark receiver does not lie."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.receiver import IngestReceiver, _Invalid, _reading_errors, _readings_ok, parse, validate

GOOD: dict[str, Any] = {"sensor_id": "press-07.oil_temp", "sensor_type": "temperature",
                        "value": 61.25, "unit": "degC",
                        "timestamp": "2026-11-27T10:15:01.000000Z", "quality": 1.0}


def variants() -> list[Any]:
    out: list[Any] = [GOOD, dict(GOOD, metadata={"node": "x"}), dict(GOOD, value=3),
                      dict(GOOD, value=None, quality=0), dict(GOOD, value=None, quality=0.0),
                      dict(GOOD, quality=1), dict(GOOD, quality=0.5), dict(GOOD, unit=""),
                      dict(GOOD, sensor_type=""), dict(GOOD, extra=1)]
    bad: list[Any] = [
        dict(GOOD, value=None), dict(GOOD, value=True), dict(GOOD, value="1"),
        dict(GOOD, quality=True), dict(GOOD, quality=1.5), dict(GOOD, quality=-0.1),
        dict(GOOD, quality=None), dict(GOOD, sensor_id=""), dict(GOOD, sensor_id=7),
        dict(GOOD, unit=None), dict(GOOD, metadata=None), dict(GOOD, metadata=[1]),
        dict(GOOD, timestamp="2026-11-27T10:15:01Z"),
        dict(GOOD, timestamp="2026-11-27 10:15:01.000000Z"),
        dict(GOOD, timestamp="٢٠٢٦-11-27T10:15:01.000000Z"),  # Unicode digits: \d accepts them
        dict(GOOD, timestamp="2026-11-27T10:15:01.000000Z\n"), dict(GOOD, value=float("inf")),
        dict(GOOD, value=float("nan")), dict(GOOD, quality=float("nan")), [GOOD], "x", None,
    ]
    for k in GOOD:
        r = dict(GOOD)
        del r[k]
        bad.append(r)
        bad.append(dict(r, metadata={}))  # 6 keys again, but not the usual ones
    return out + bad


@pytest.mark.parametrize("reading", variants())
def test_fast_readings_check_agrees_with_full_check(reading: Any) -> None:
    full = _reading_errors(0, reading)
    if _readings_ok([reading]):  # the fast path may only accept what the full check accepts
        assert full == []
    doc = {"gateway_id": "g", "batch_seq": 1, "sent_at": "2026-11-27T10:15:02.123456Z",
           "readings": [GOOD, copy.deepcopy(reading)]}
    assert validate(doc) == _reading_errors(1, reading)


def norm(x: Any) -> Any:
    """Integers beyond 64 bits as floats (orjson parses them so; same number, same verdict)."""
    if isinstance(x, dict):
        return {k: norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [norm(v) for v in x]
    if type(x) is int and not -2**63 <= x < 2**64:
        return float(x)
    return x


@pytest.mark.parametrize("raw, status", [
    (b'{"batch_seq": 123456789012345678901234567890}', None),
    (b'{"a": NaN}', 422), (b'{"a": Infinity}', 422), (b'{"a": 1', 400), (b"\xff\xfe", 400),
    (b'{"a": "\\ud800"}', None), (b'{"a": 123456789012345678901234567890}', None),
    (json.dumps({"a": 1.5}).encode("utf-16"), None), (b'{"a": 1e400}', None),
    (b'{"a": -9223372036854775809}', None), (b'{"a": 18446744073709551616}', None),
    (b'{"a": 1,"a": 2, "b": [1.0000000000000002, 5e-324, -0, "\\u0000"]}', None),
])
def test_parse_agrees_with_standard_parser(raw: bytes, status: int | None) -> None:
    try:
        expected: Any = json.loads(raw, parse_constant=lambda c: (_ for _ in ()).throw(
            _Invalid(422, c)))
    except _Invalid:
        expected = 422
    except ValueError:
        expected = 400
    try:
        got: Any = parse(raw)
    except _Invalid as exc:
        got = exc.status
    except ValueError:
        got = 400
    assert norm(got) == norm(expected)
    if isinstance(expected, dict) and "batch_seq" in expected:  # the one int-only check
        assert type(got["batch_seq"]) is type(expected["batch_seq"])
    if status is not None:
        assert got == status


def test_nan_body_gets_422_from_the_endpoint() -> None:
    rx = IngestReceiver("k")
    body = json.dumps({"gateway_id": "g", "batch_seq": 1, "sent_at": GOOD["timestamp"],
                       "readings": [dict(GOOD, value=float("nan"))]}).encode()
    status, answer, _ = rx.handle({"X-API-Key": "k", "Idempotency-Key": "a"}, body)
    assert status == 422 and "non-finite" in str(answer)


def test_409_when_a_row_is_already_stored_and_nothing_of_that_request_is() -> None:
    """The contract's 409 row, as the backend does it: one row already present (primary key
    (timestamp, sensor_id)) refuses the whole request; the new rows are stored once they come
    without it."""
    rx = IngestReceiver("k")

    def body(seq: int, stamps: list[str]) -> bytes:
        return json.dumps({"gateway_id": "g", "batch_seq": seq, "sent_at": GOOD["timestamp"],
                           "readings": [dict(GOOD, timestamp=t) for t in stamps]}).encode()

    old, new = "2026-11-27T10:15:01.000000Z", [f"2026-11-27T10:15:0{i}.000000Z"
                                               for i in range(2, 6)]
    status, _, _ = rx.handle({"X-API-Key": "k", "Idempotency-Key": "a"}, body(1, [old]))
    assert status == 200 and rx.rows_stored == 1
    status, _, log = rx.handle({"X-API-Key": "k", "Idempotency-Key": "b"},
                               body(2, [*new[:2], old, *new[2:]]))
    assert (status, log.outcome, rx.conflicts, rx.rows_stored) == (409, "conflict", 1, 1)
    assert set(rx.readings) == {(old, GOOD["sensor_id"])}  # nothing of the refused request
    status, _, _ = rx.handle({"X-API-Key": "k", "Idempotency-Key": "c"}, body(3, new))
    assert status == 200 and rx.rows_stored == 5
