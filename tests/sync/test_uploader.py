"""Uploader against the real loopback receiver: every row of the contract's response table."""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from edge_agent.records import Event, FeatureVector, ModelRef, format_us, to_us
from edge_agent.settings import ConfigError, Secret, parse
from edge_agent.sync.buffer import Buffer, BufferConfig
from edge_agent.sync.quarantine import list_quarantine, quarantine_body, requeue
from edge_agent.sync.store import Store
from edge_agent.sync.uploader import Uploader, UploaderConfig
from tests.receiver import IngestReceiver, validate

from .conftest import API_KEY, T0, Running, db_rows, fast_uploader_cfg, readings, wait_rx


def all_in(rx: IngestReceiver, n: int) -> bool:
    return len(rx.readings) >= n


def test_config_from_toml(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    cfg = parse(UploaderConfig, {"url": "https://ingest.example/", "api_key_file": str(key),
                                 "batch_max_bytes": "1MiB", "bandwidth_limit": "64kB",
                                 "backoff_max": "10m"})
    assert cfg.api_key is not None and cfg.api_key.reveal() == "s3cret"
    assert "s3cret" not in repr(cfg)
    assert cfg.endpoint == "https://ingest.example/api/v1/data/ingest"
    assert cfg.bandwidth_limit == 64000
    with pytest.raises(ConfigError, match="api_key"):
        parse(UploaderConfig, {"url": "http://x"})
    with pytest.raises(ConfigError, match="url"):
        parse(UploaderConfig, {"url": "ftp://x", "api_key": "k"})


async def test_delivers_everything_once_events_first(buffer: Buffer, rx: IngestReceiver) -> None:
    await buffer.put(readings(1200, metadata={"node": "ns=2;s=X"}))
    await buffer.put([Event("anomaly_raised", "pump-02", T0 + 5, "warning", {"score": 0.31}),
                      FeatureVector("pump-02", T0, T0 + 0.08, {"rms": 0.41, "kurt": float("inf")},
                                    ModelRef("iforest", "4"), -0.12, False)])
    async with Running(buffer, fast_uploader_cfg(rx.url, batch_max_rows=500)) as up:
        assert await up.wait_until(lambda u: u.rows_sent == 1202, 20)
        st = up.stats()
    assert len(rx.readings) == 1200 and rx.rows_stored == 1202
    assert rx.duplicates == 0 and rx.conflicts == 0
    first = rx.requests[0]
    assert first.n_events == 1 and first.n_features == 1  # events/features before bulk readings
    r = rx.readings[(rx.requests[0].first_reading or ("", ""))]
    assert r["metadata"] == {"node": "ns=2;s=X"} and r["unit"] == "degC"
    feat = next(iter(rx.features.values()))
    assert feat["values"] == {"rms": 0.41, "kurt": None}  # non-finite never leaves the agent
    seqs = [q.seq for q in rx.requests]
    assert seqs == sorted(seqs)  # oldest first
    assert len({q.request_id for q in rx.requests}) == len(rx.requests)
    assert st["batches_sent"] == {"accepted": 3} and st["rows_sent"] == 1202
    assert buffer.stats()["rows_queued_total"] == 0


@pytest.mark.parametrize("fault", [
    {"status": 500}, {"status": 503, "retry_after": 0.3}, {"status": 429, "retry_after": 0.3},
    {"status": 408}, {"reset": True}, {"delay": 0.6},  # slow but within the timeout
    {"status": 200, "body": "<html><body>OK</body></html>", "content_type": "text/html"},
    {"status": 202, "body": '{"status": "queued"}'}, {"status": 302, "body": ""},
])
async def test_transient_faults_retry_same_key(buffer: Buffer, rx: IngestReceiver,
                                               fault: dict[str, object]) -> None:
    await buffer.put(readings(50))
    rx.inject(times=2, **fault)  # type: ignore[arg-type]
    t = time.monotonic()
    async with Running(buffer, fast_uploader_cfg(rx.url)) as up:
        assert await wait_rx(rx, lambda r: all_in(r, 50))
    elapsed = time.monotonic() - t
    keys = {q.idempotency_key for q in rx.requests}
    slow_only = set(fault) == {"delay"}  # a slow answer inside the timeout is simply accepted
    assert len(keys) == 1 and len(rx.requests) == (1 if slow_only else 3)
    assert rx.rows_stored == 50 and rx.duplicates == 0
    if fault.get("retry_after"):
        assert elapsed >= 0.6  # Retry-After honoured twice
    if not fault.get("delay"):
        assert sum(up.failed.values()) == 2


async def test_timeout_then_retry_gets_duplicate_ignored(buffer: Buffer,
                                                         rx: IngestReceiver) -> None:
    await buffer.put(readings(30))
    rx.inject(delay=1.5, store_then_drop=False)  # answer too late: stored? no - slow before
    async with Running(buffer, fast_uploader_cfg(rx.url, timeout=0.5)) as up:
        assert await up.wait_until(lambda u: u.rows_sent == 30, 20)
        assert up.failed["timeout"] >= 1
    # The slow request is processed after the client gave up; the retry, with the same key,
    # got there first and was accepted, so the late original is answered duplicate_ignored.
    assert rx.wait_for(lambda r: len(r.requests) >= 2, 5)
    assert len({q.idempotency_key for q in rx.requests}) == 1  # one batch, one key
    assert {q.outcome for q in rx.requests} == {"accepted", "duplicate_ignored"}
    assert rx.rows_stored == 30 and rx.conflicts == 0


async def test_stored_but_answer_lost(buffer: Buffer, rx: IngestReceiver) -> None:
    await buffer.put(readings(40))
    rx.inject(store_then_drop=True)
    async with Running(buffer, fast_uploader_cfg(rx.url)) as up:
        assert await up.wait_until(lambda u: u.sent["duplicate"] == 1, 20)
    assert [q.outcome for q in rx.requests] == ["accepted+dropped", "duplicate_ignored"]
    assert rx.rows_stored == 40 and len(rx.readings) == 40
    assert buffer.stats()["rows_queued_total"] == 0


async def test_answer_lost_and_key_expired_gets_409_counted_delivered(
        tmp_path: Path) -> None:
    """Contract (409 row, changed): a multi-row batch answered 409 is split until the rows
    already stored stand alone; each of those, answered 409 alone, is delivered and counted."""
    with IngestReceiver(api_key=API_KEY, idempotency_ttl=0.0) as rx:
        b = Buffer(tmp_path / "b.db", BufferConfig())
        await b.start()
        await b.put(readings(40))
        rx.inject(store_then_drop=True)
        async with Running(b, fast_uploader_cfg(rx.url)) as up:
            assert await up.wait_until(lambda u: u.sent["conflict"] == 40, 20)
            assert up.stats()["rows_already_present"] == 40
        assert b.stats()["rows_queued_total"] == 0 and rx.rows_stored == 40
        await b.close()


async def test_answer_lost_then_restart_resends_same_key(tmp_path: Path,
                                                         rx: IngestReceiver) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig())
    await b.start()
    await b.put(readings(40))
    rx.inject(store_then_drop=True)
    rx.inject(status=503, times=1000)  # then the receiver keeps failing...
    async with Running(b, fast_uploader_cfg(rx.url)):
        assert await wait_rx(rx, lambda r: len(r.requests) >= 2)
    await b.close()  # ...and the agent restarts
    rx.faults.clear()
    b2 = Buffer(path, BufferConfig())
    await b2.start()
    async with Running(b2, fast_uploader_cfg(rx.url)) as up:
        assert await up.wait_until(lambda u: u.sent["duplicate"] == 1, 20)
    assert len({q.idempotency_key for q in rx.requests}) == 1
    assert rx.rows_stored == 40 and b2.stats()["rows_queued_total"] == 0
    await b2.close()


async def test_413_splits_into_new_batches(tmp_path: Path) -> None:
    with IngestReceiver(api_key=API_KEY, max_rows=70) as rx:
        b = Buffer(tmp_path / "b.db", BufferConfig())
        await b.start()
        await b.put(readings(500))
        async with Running(b, fast_uploader_cfg(rx.url, batch_max_rows=500)) as up:
            assert await wait_rx(rx, lambda r: all_in(r, 500))
            assert up.failed["http_413"] >= 3
        assert rx.rows_stored == 500 and rx.conflicts == 0
        ok = [q for q in rx.requests if q.status == 200]
        firsts = [q.first for q in ok]
        assert firsts == sorted(firsts)  # still oldest first
        assert all(q.n_readings <= 70 for q in ok)
        await b.close()


async def test_413_on_wire_size_with_gzip(tmp_path: Path) -> None:
    with IngestReceiver(api_key=API_KEY, max_body_bytes=3000) as rx:
        b = Buffer(tmp_path / "b.db", BufferConfig())
        await b.start()
        await b.put(readings(400))
        async with Running(b, fast_uploader_cfg(rx.url, batch_max_rows=400)):
            assert await wait_rx(rx, lambda r: all_in(r, 400))
        assert all(q.wire_bytes <= 3000 for q in rx.requests if q.status == 200)
        await b.close()


@pytest.mark.parametrize("status", [400, 422])
async def test_refused_batch_is_quarantined_and_can_be_requeued(
        tmp_path: Path, rx: IngestReceiver, status: int) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig())
    await b.start()
    await b.put(readings(30))
    await b.put(readings(30, sensor="other", t0=T0 + 100))
    rx.inject(status=status, body='{"detail": [{"loc": ["readings", 0], "msg": "bad"}]}')
    async with Running(b, fast_uploader_cfg(rx.url, batch_max_rows=30)) as up:
        assert await up.wait_until(lambda u: u.quarantined == 1 and u.rows_sent >= 31, 20)
    assert b.stats()["quarantined"] == 1
    q = list_quarantine(path)
    assert len(q) == 1 and q[0].status == status and "bad" in q[0].reason and q[0].n_rows == 30
    assert validate(json.loads(quarantine_body(path, q[0].id))) == []
    assert {k[1] for k in rx.readings} == {"other"}
    # re-queue from the CLI function while the agent runs, then it is sent again
    assert requeue(path, q[0].id) == 30
    await b.call(lambda s: s.recount())
    b.wake()
    async with Running(b, fast_uploader_cfg(rx.url)):
        assert await wait_rx(rx, lambda r: all_in(r, 60) and any(
            e["kind"] == "batch_quarantined" for e in r.events.values()))
    assert list_quarantine(path) == [] and len(list_quarantine(path, include_requeued=True)) == 1
    with pytest.raises(LookupError):
        requeue(path, q[0].id)
    await b.close()


async def test_auth_failure_keeps_data_raises_event_and_recovers(buffer: Buffer) -> None:
    with IngestReceiver(api_key="new-key", revoked_keys=[API_KEY]) as rx:
        await buffer.put(readings(20))
        async with Running(buffer, fast_uploader_cfg(rx.url, auth_retry_interval=0.3)) \
                as up:
            assert await wait_rx(rx, lambda r: len(r.requests) >= 2)
            assert up.stats()["state"] == "auth_failed"
            assert [q.status for q in rx.requests][:2] == [403, 403]
            assert buffer.stats()["rows_queued"]["readings"] == 20  # type: ignore[index]
            rx.api_key = API_KEY  # the key is rotated back on the server side
            rx.revoked_keys.clear()
            assert await wait_rx(rx, lambda r: all_in(r, 20) and any(
                e["kind"] == "uploader_auth_failed" for e in r.events.values()))
        gaps = [b.time - a.time for a, b in zip(rx.requests, rx.requests[1:], strict=False)][:1]
        assert gaps[0] >= 0.25  # retried slowly


async def test_401_wrong_key_from_file_rotated(buffer: Buffer, rx: IngestReceiver,
                                               tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("wrong\n")
    await buffer.put(readings(10))
    cfg = fast_uploader_cfg(rx.url, api_key=Secret(file=str(keyfile)))
    async with Running(buffer, cfg):
        assert await wait_rx(rx, lambda r: len(r.requests) >= 1)
        assert rx.requests[0].status == 401
        keyfile.write_text(API_KEY + "\n")  # rotated on disk: read again on the next attempt
        assert await wait_rx(rx, lambda r: all_in(r, 10))


async def test_gzip_and_headers(buffer: Buffer) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        doc = json.loads(gzip.decompress(req.content))
        assert validate(doc) == []
        return httpx.Response(200, json={"status": "accepted", "event_id": "e1",
                                         "accepted": len(doc["readings"])})

    await buffer.put(readings(10))
    up = Uploader(buffer, fast_uploader_cfg("http://test"), "gw-1",
                  transport=httpx.MockTransport(handler))
    await up.flush(5.0)
    h = seen[0].headers
    assert h["content-encoding"] == "gzip" and h["x-api-key"] == API_KEY
    assert h["idempotency-key"].startswith("gw-1:") and len(h["idempotency-key"]) <= 128
    assert len(h["x-request-id"]) == 36 and seen[0].url.path == "/api/v1/data/ingest"


async def test_bandwidth_limit(buffer: Buffer, rx: IngestReceiver) -> None:
    await buffer.put(readings(2000))
    cfg = fast_uploader_cfg(rx.url, batch_max_rows=200, gzip=False,
                            bandwidth_limit=100_000)
    t = time.monotonic()
    async with Running(buffer, cfg):
        assert await wait_rx(rx, lambda r: all_in(r, 2000))
    elapsed = time.monotonic() - t
    sizes = [q.wire_bytes for q in rx.requests]
    # token bucket: only the first batch goes at once, the rest at <= 100 kB/s on average
    assert elapsed >= (sum(sizes) - sizes[0]) / 100_000 * 0.95
    assert sum(sizes) > 250_000


async def test_disabled_uploader_keeps_data(buffer: Buffer) -> None:
    await buffer.put(readings(10))
    up = Uploader(buffer, UploaderConfig(), "gw")
    task = asyncio.create_task(up.run())
    await asyncio.sleep(0.05)
    assert not task.done() and up.stats()["state"] == "disabled"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert buffer.stats()["rows_queued_total"] == 10


async def test_flush_is_bounded_when_receiver_down(buffer: Buffer, rx: IngestReceiver) -> None:
    await buffer.put(readings(10))
    rx.down()
    up = Uploader(buffer, fast_uploader_cfg(rx.url), "gw")
    t = time.monotonic()
    await up.flush(0.5)
    assert time.monotonic() - t < 1.5
    assert buffer.stats()["rows_queued_total"] == 10
    rx.up()
    await up.flush(5.0)
    assert len(rx.readings) == 10 and buffer.stats()["rows_queued_total"] == 0


def test_gateway_id_checked(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db", BufferConfig())
    with pytest.raises(ValueError, match="gateway_id"):
        Uploader(b, UploaderConfig(), "has space")


async def test_413_splits_across_chunks_and_sources_in_order(tmp_path: Path) -> None:
    """Packed readings: 413 halving cuts inside and between chunks (several sources per commit,
    events in front); every row arrives once, in the order it was put."""
    with IngestReceiver(api_key=API_KEY, max_rows=70) as rx:
        b = Buffer(tmp_path / "b.db", BufferConfig())
        await b.start()
        await b.put([Event("anomaly_raised", "pump", T0, "warning")])
        order = []
        for k in range(6):
            put = [r for s in range(3) for r in readings(
                40 + k * 7, sensor=f"s{s}", t0=T0 + k * 10 + s * 0.0001)]
            order += [(format_us(to_us(r.timestamp)), r.sensor_id) for r in put]
            await b.put(put)
        total = sum(3 * (40 + k * 7) for k in range(6))
        async with Running(b, fast_uploader_cfg(rx.url, batch_max_rows=400)) as up:
            assert await up.wait_until(lambda u: u.rows_sent == total + 1, 20)
            assert up.failed["http_413"] >= 3
        assert len(rx.readings) == total and rx.rows_stored == total + 1
        assert rx.conflicts == 0 and rx.duplicates == 0
        ok = [q for q in rx.requests if q.status == 200]
        assert ok[0].n_events == 1 and all(q.n_readings + q.n_events <= 70 for q in ok)
        assert list(rx.readings) == order  # exactly in the order they were put
        assert b.stats()["rows_queued_total"] == 0
        await b.close()


async def test_next_batch_is_prepared_while_one_is_in_flight(buffer: Buffer,
                                                             rx: IngestReceiver) -> None:
    await buffer.put(readings(3000))
    rx.inject(delay=0.6)  # the first batch stays in flight for a while
    async with Running(buffer, fast_uploader_cfg(rx.url, batch_max_rows=1000)) as up:
        await asyncio.sleep(0.3)
        pending = await buffer.call(lambda s: s.conn.execute(
            "SELECT id, attempts FROM batches WHERE state = 'pending' ORDER BY id").fetchall())
        assert len(pending) == 2 and pending[1][1] == 0  # the next one: assigned, not sent
        assert len(rx.requests) == 0  # ... and only one request is in flight
        assert await up.wait_until(lambda u: u.rows_sent == 3000, 20)
    seqs = [q.seq for q in rx.requests]
    assert seqs == sorted(seqs) and len(seqs) == 3 and rx.duplicates == 0
    assert list(rx.readings) == sorted(rx.readings)


async def test_logs_follow_one_batch_by_its_correlation_id(
        buffer: Buffer, rx: IngestReceiver, caplog: pytest.LogCaptureFixture) -> None:
    await buffer.put(readings(50))
    rx.inject(status=503, times=2)
    caplog.set_level("INFO", logger="edge_agent.sync")
    async with Running(buffer, fast_uploader_cfg(rx.url)) as up:
        assert await up.wait_until(lambda u: u.rows_sent == 50, 20)
    key = rx.requests[-1].idempotency_key
    tagged = [r for r in caplog.records if getattr(r, "correlation_id", None) == key]
    msgs = [r.getMessage() for r in tagged]
    assert sum("retrying" in m for m in msgs) == 2 and msgs[-1] == "batch delivered"
    assert {q.idempotency_key for q in rx.requests} == {key}  # retries reused the key


@pytest.mark.parametrize("fault", [
    # a 2xx whose body claims gzip but is not: httpx raises DecodingError while reading it
    {"status": 200, "body": b"not gzip at all", "headers": {"Content-Encoding": "gzip"}},
    {"status": 200, "body": "[" * 200_000},  # JSON nested too deep: RecursionError
    {"status": 500, "body": b"\xff\xfe oops", "content_type": "text/plain; charset=bogus-xyz"},
])
async def test_garbage_answers_are_transient_and_never_kill_the_task(
        buffer: Buffer, rx: IngestReceiver, fault: dict[str, object]) -> None:
    await buffer.put(readings(20))
    rx.inject(times=2, **fault)  # type: ignore[arg-type]
    runner = Running(buffer, fast_uploader_cfg(rx.url))
    async with runner as up:
        assert await up.wait_until(lambda u: u.rows_sent == 20 or (
            runner.task is not None and runner.task.done()), 20)
        assert runner.task is not None and not runner.task.done()
        assert sum(up.failed.values()) == 2
    assert len({q.idempotency_key for q in rx.requests}) == 1 and rx.rows_stored == 20


async def test_api_key_file_with_bom_and_newline_is_cleaned(
        buffer: Buffer, rx: IngestReceiver, tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_bytes(("\ufeff" + API_KEY + "\r\n").encode("utf-8"))  # Windows Notepad
    await buffer.put(readings(10))
    async with Running(buffer, fast_uploader_cfg(rx.url, api_key=Secret(file=str(keyfile)))) \
            as up:
        assert await up.wait_until(lambda u: u.rows_sent == 10, 20)
    assert [q.status for q in rx.requests] == [200]


async def test_non_ascii_api_key_is_an_auth_failure_not_a_crash(
        buffer: Buffer, rx: IngestReceiver, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("clé-secrète\n", encoding="utf-8")
    await buffer.put(readings(10))
    runner = Running(buffer, fast_uploader_cfg(rx.url, api_key=Secret(file=str(keyfile))))
    async with runner as up:
        assert await up.wait_until(lambda u: u.failed["auth"] >= 2, 10)
        assert runner.task is not None and not runner.task.done()
        assert up.stats()["state"] == "auth_failed" and "non-ASCII" in str(up.last_error)
        keyfile.write_text(API_KEY)  # fixed on disk: picked up on the next attempt
        assert await wait_rx(rx, lambda r: all_in(r, 10) and any(
            e["kind"] == "uploader_auth_failed" for e in r.events.values()), 10)
    assert rx.requests and all(q.status == 200 for q in rx.requests)  # bad key never sent
    events = [e for e in rx.events.values() if e["kind"] == "uploader_auth_failed"]
    assert len(events) == 1 and "non-ASCII" in events[0]["details"]["error"]
    assert "clé" not in json.dumps(events) and "clé" not in caplog.text


def _slow_record_attempt(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """A busy writer (a commit group, an fsync, a disk-error retry) right after the answer."""
    orig = Store.record_attempt

    def slow(self: Store, bid: int, status: str) -> None:
        time.sleep(seconds)
        orig(self, bid, status)

    monkeypatch.setattr(Store, "record_attempt", slow)


async def test_flush_deadline_during_settle_never_leaves_an_acked_batch_pending(
        tmp_path: Path, rx: IngestReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig())
    await b.start()
    await b.put(readings(20))
    _slow_record_attempt(monkeypatch, 0.5)
    await Uploader(b, fast_uploader_cfg(rx.url), "gw").flush(0.3)  # deadline hits mid-settle
    await b.close()
    assert [q.outcome for q in rx.requests] == ["accepted"]
    assert db_rows(path) == 0
    conn = sqlite3.connect(path)
    states = conn.execute("SELECT state, attempts FROM batches").fetchall()
    conn.close()
    assert states == [("delivered", 1)]


async def test_run_cancelled_right_after_the_answer_settles_the_batch(
        tmp_path: Path, rx: IngestReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig())
    await b.start()
    await b.put(readings(20))
    _slow_record_attempt(monkeypatch, 0.5)
    async with Running(b, fast_uploader_cfg(rx.url)):
        assert await wait_rx(rx, lambda r: len(r.requests) == 1)
        await asyncio.sleep(0.05)  # the answer is in; the writer is busy: cancel (shutdown)
    await b.close()
    monkeypatch.undo()
    assert db_rows(path) == 0
    b2 = Buffer(path, BufferConfig())  # restart: nothing is resent
    await b2.start()
    assert b2.stats()["rows_queued_total"] == 0
    await Uploader(b2, fast_uploader_cfg(rx.url), "gw-test").flush(1.0)
    await b2.close()
    assert [q.outcome for q in rx.requests] == ["accepted"] and rx.duplicates == 0


@pytest.mark.parametrize("retry_after", ["0", "Wed, 21 Oct 2015 07:28:00 GMT"])
async def test_zero_or_past_retry_after_still_backs_off(buffer: Buffer, rx: IngestReceiver,
                                                         retry_after: str) -> None:
    await buffer.put(readings(10))
    rx.inject(status=503, retry_after=retry_after, times=3)
    cfg = fast_uploader_cfg(rx.url, backoff_initial=0.2, backoff_max=0.4)
    async with Running(buffer, cfg) as up:
        assert await up.wait_until(lambda u: u.rows_sent == 10, 20)
    gaps = [b.time - a.time for a, b in zip(rx.requests, rx.requests[1:], strict=False)]
    assert len(gaps) == 3 and min(gaps) >= 0.09  # >= backoff_initial / 2, never 0


async def test_one_old_row_among_new_ones_costs_none_of_them(tmp_path: Path,
                                                              rx: IngestReceiver) -> None:
    """Contract (409 row): a sample already stored (e.g. repeated after a restart) in a batch
    of new ones draws 409 for the whole batch, which stores nothing of it; the batch is split
    until the old row stands alone: every new row is stored, the old one is set aside and
    counted."""
    b = Buffer(tmp_path / "b.db", BufferConfig())
    await b.start()
    old = readings(1, t0=T0 + 5)
    await b.put(old)
    async with Running(b, fast_uploader_cfg(rx.url)) as up:
        assert await up.wait_until(lambda u: u.rows_sent == 1, 20)
    new = readings(30, t0=T0)
    await b.put([*new[:17], *old, *new[17:]])  # the gate bypassed: straight into the buffer
    async with Running(b, fast_uploader_cfg(rx.url)) as up:
        assert await up.wait_until(lambda u: u.rows_sent == 31, 20)
        assert up.stats()["rows_already_present"] == 1 and up.sent["conflict"] == 1
    assert rx.conflicts >= 2 and rx.rows_stored == 31 and len(rx.readings) == 31
    assert b.stats()["rows_queued_total"] == 0
    await b.close()
