"""sync/readback.py: tools read buffered feature vectors without touching the schema."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.errors import StorageError
from edge_agent.records import FeatureVector
from edge_agent.sync.buffer import Buffer, BufferConfig
from edge_agent.sync.readback import feature_rows


async def test_feature_rows_of_one_source_in_a_time_range(tmp_path: Path) -> None:
    t0 = float(int(time.time()) - 600)
    fvs = [FeatureVector("a", t0 + i, t0 + i + 0.5, {"rms": float(i), "kurtosis": 3.0})
           for i in range(10)]
    fvs.append(FeatureVector("b", t0 + 3, t0 + 3.5, {"rms": 99.0}))
    buf = Buffer(tmp_path / "buffer.db", BufferConfig())
    await buf.start()
    await buf.put(fvs)
    rows_live = feature_rows(tmp_path / "buffer.db", "a", t0 + 2, t0 + 5)  # while it runs
    await buf.close()
    rows = feature_rows(tmp_path / "buffer.db", "a", t0 + 2, t0 + 5)
    assert rows == rows_live == [{"rms": float(i), "kurtosis": 3.0} for i in (2, 3, 4, 5)]
    assert feature_rows(tmp_path / "buffer.db", "c", t0, t0 + 10) == []


def test_unreadable_database_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot read features"):
        feature_rows(tmp_path / "missing.db", "a", 0.0, 1.0)
    (tmp_path / "junk.db").write_bytes(b"not sqlite" * 100)
    with pytest.raises(StorageError, match="cannot read features"):
        feature_rows(tmp_path / "junk.db", "a", 0.0, 1.0)
