"""The request body of one batch, built straight from buffer rows (contract JSON, fast)."""

from __future__ import annotations

import gzip
import json
import time

from .store import BatchRows

_SEC_CACHE: dict[int, str] = {}


def fmt_us(us: int) -> str:
    """Integer microseconds to ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (cached per second)."""
    secs, micros = divmod(us, 1_000_000)
    base = _SEC_CACHE.get(secs)
    if base is None:
        if len(_SEC_CACHE) > 200_000:
            _SEC_CACHE.clear()
        base = _SEC_CACHE[secs] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return f"{base}.{micros:06d}Z"


def build_body(batch: BatchRows, gateway_id: str, sent_at_us: int) -> bytes:
    """The JSON body for ``batch``: events, then features, then readings, in buffer order."""
    parts = [f'{{"gateway_id":{json.dumps(gateway_id)},"batch_seq":{batch.id},'
             f'"sent_at":"{fmt_us(sent_at_us)}"']
    if batch.events:
        parts.append(',"events":[' + ",".join(batch.events) + "]")
    if batch.features:
        parts.append(',"features":[' + ",".join(batch.features) + "]")
    if batch.readings:
        pre = {src: f'{{"sensor_id":{json.dumps(s[0])},"sensor_type":{json.dumps(s[1])},'
                    f'"unit":{json.dumps(s[2])},"value":'
               for src, s in batch.sources.items()}
        items: list[str] = []
        add = items.append
        for src, ts, value, quality, meta in batch.readings:
            v = "null" if value is None else repr(value)
            if meta:
                add(f'{pre[src]}{v},"timestamp":"{fmt_us(ts)}","quality":{quality!r},'
                    f'"metadata":{meta}}}')
            else:
                add(f'{pre[src]}{v},"timestamp":"{fmt_us(ts)}","quality":{quality!r}}}')
        parts.append(',"readings":[' + ",".join(items) + "]")
    parts.append("}")
    return "".join(parts).encode()


def encode(body: bytes, use_gzip: bool, level: int) -> bytes:
    return gzip.compress(body, compresslevel=level, mtime=0) if use_gzip else body
