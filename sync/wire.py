"""The request body of one batch, assembled from pre-serialized buffer rows (contract JSON)."""

from __future__ import annotations

import gzip
import json
import time

from .delivery import Batch


def fmt_us(us: int) -> str:
    """Integer microseconds to ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    secs, micros = divmod(us, 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(secs))}.{micros:06d}Z"


def build_body(batch: Batch, gateway_id: str, sent_at_us: int) -> bytes:
    """The JSON body for ``batch``: events, then features, then readings, in buffer order.

    Readings are stored pre-serialized (see :mod:`.pack`); the store hands them over in wire
    form, so this only concatenates."""
    parts = [f'{{"gateway_id":{json.dumps(gateway_id)},"batch_seq":{batch.id},'
             f'"sent_at":"{fmt_us(sent_at_us)}"']
    if batch.events:
        parts.append(',"events":[' + ",".join(batch.events) + "]")
    if batch.features:
        parts.append(',"features":[' + ",".join(batch.features) + "]")
    if batch.readings:
        parts.append(',"readings":[' + ",".join(batch.readings) + "]")
    parts.append("}")
    return "".join(parts).encode()


def encode(body: bytes, use_gzip: bool, level: int) -> bytes:
    return gzip.compress(body, compresslevel=level, mtime=0) if use_gzip else body
