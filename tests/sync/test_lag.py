"""The tick -> commit histogram (sync/lag.py) behind /metrics' commit-lag histogram."""

from __future__ import annotations

from edge_agent.sync.lag import BUCKETS_MS, CommitLag


def test_summary_percentiles_buckets_and_sum() -> None:
    lag = CommitLag()
    now = 10_000_000_000
    lags_ms = [3, 7, 12, 40, 40, 120, 800, 90_000]       # the last beyond the top bin
    lag.observe([now - ms * 1000 for ms in lags_ms], now_us=now)
    lag.observe([now + 5_000], now_us=now)                # a future stamp counts as 0
    s = lag.summary()
    assert s["readings"] == 9
    assert s["sum_s"] == sum(lags_ms) / 1000
    buckets = s["buckets"]
    assert isinstance(buckets, dict) and list(buckets) == list(BUCKETS_MS)
    assert buckets[10] == 3          # 0 (future), 3 and 7 ms
    assert buckets[50] == 6 and buckets[250] == 7 and buckets[1000] == 8
    assert buckets[30_000] == 8      # 90 s lies beyond every bound: only in +Inf
    assert s["p50"] == 45.0 and s["max"] == 60_005.0
