"""What is really listening at an OPC-UA endpoint that failed to connect.

When ``asyncua`` cannot connect and the socket was not simply refused, the reason it gives
("connection lost", "timed out") hides what the peer did. :func:`describe_peer` sends one
OPC-UA *Hello* on a fresh connection and says what came back when it is not OPC-UA: an HTTP
server's status line, other bytes, a close without an answer, or silence.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct

from asyncua import Client
from asyncua.crypto import uacrypto
from cryptography.hazmat.primitives.serialization import Encoding

from edge_agent.drivers.opcua_items import UA_ERRORS

__all__ = ["describe_peer", "hello", "pinned_mismatch"]

_PROBE_ERRORS: tuple[type[BaseException], ...] = (*UA_ERRORS, ValueError, TypeError)

_BUFFER = 65535


def hello(url: str) -> bytes:
    """An OPC-UA TCP Hello message (OPC 10000-6, 7.1.2.3) for ``url``."""
    endpoint = url.encode()
    body = struct.pack("<IIIII", 0, _BUFFER, _BUFFER, 0, 0)
    body += struct.pack("<i", len(endpoint)) + endpoint
    return b"HELF" + struct.pack("<I", 8 + len(body)) + body


def _preview(data: bytes) -> str:
    text = data[:60]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in text):
        return repr(text.decode("ascii"))
    return text[:24].hex(" ")


async def describe_peer(host: str, port: int, url: str, limit_s: float) -> str | None:
    """What the peer answers to a Hello, in words, when it is not OPC-UA; ``None`` when it
    answers like an OPC-UA server (ACK or ERR) or cannot be reached at all."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit_s)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(hello(url))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(512), limit_s)
    except TimeoutError:
        return (f"the peer at {host}:{port} accepted the connection but did not answer an "
                f"OPC-UA Hello within {limit_s:g}s")
    except OSError as exc:
        return f"the peer at {host}:{port} dropped the connection ({exc.strerror or exc!r})"
    finally:
        writer.close()
    if not data:
        return (f"the peer at {host}:{port} closed the connection without answering an "
                "OPC-UA Hello")
    if data[:3] in (b"ACK", b"ERR"):
        return None
    if data.startswith(b"HTTP/"):
        status = data.split(b"\r\n", 1)[0].decode("ascii", "replace")
        return f"the peer at {host}:{port} is an HTTP server, not OPC-UA: it answered {status!r}"
    return f"the peer at {host}:{port} is not an OPC-UA server: it answered {_preview(data)}"


async def pinned_mismatch(url: str, pinned: str, limit_s: float) -> str | None:
    """When the server's certificate (from its endpoints, asked without security) is not the
    pinned one, say so with both fingerprints; ``None`` when it matches or cannot be asked."""
    try:
        want = (await uacrypto.load_certificate(pinned)).public_bytes(Encoding.DER)
        client = Client(url, timeout=limit_s)
        async with asyncio.timeout(limit_s * 2):
            endpoints = await client.connect_and_get_server_endpoints()
    except _PROBE_ERRORS:
        return None
    offered = {bytes(e.ServerCertificate) for e in endpoints if e.ServerCertificate}
    if not offered or want in offered:
        return None
    got = sorted(offered)[0]
    return (f"the server's certificate (SHA-256 {_fingerprint(got)}) does not match the pinned "
            f"server_certificate {pinned} (SHA-256 {_fingerprint(want)}); if the server's "
            "certificate was renewed, pin the new one")


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()[:16]
