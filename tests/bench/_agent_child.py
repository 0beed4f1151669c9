"""``edge-agent run -c CFG`` for bench_agent.py, answering ``LAG`` lines on stdin with the
buffer's commit-lag histogram (``LAG [[bucket, count], ...]`` on stdout; see sync/lag.py), so
the benchmark can take tick -> commit over its measuring window. Nothing else is changed: the
same daemon, the same configuration, one idle thread more."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from edge_agent.agent.cli import main
from edge_agent.sync.buffer import Buffer

buffers: list[Buffer] = []
_start = Buffer.start


async def _remember(self: Buffer) -> None:
    buffers.append(self)
    await _start(self)


def _answer() -> None:
    for line in sys.stdin:
        if line.strip() != "LAG":
            continue
        store: Any = buffers[-1]._store if buffers else None
        counts = store.lag.counts.copy() if store is not None else []
        pairs = [[int(i), int(n)] for i, n in enumerate(counts) if n]
        print("LAG " + json.dumps(pairs), flush=True)


if __name__ == "__main__":
    Buffer.start = _remember  # type: ignore[method-assign]
    threading.Thread(target=_answer, daemon=True).start()
    sys.exit(main(["run", "-c", sys.argv[1]]))
