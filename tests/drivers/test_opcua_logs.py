"""What the operator reads when an OPC-UA server goes away or presents another certificate."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.drivers.base import DriverDisconnected
from edge_agent.drivers.opcua import Config, create
from edge_agent.drivers.opcua_certs import DEFAULT_APPLICATION_URI, generate_client_certificate
from edge_agent.settings import parse as build
from tests.conftest import free_port
from tests.drivers.opcua_server import PlantServer, Security, nid

pytestmark = pytest.mark.timeout(60)


def config(url: str, **extra: Any) -> Config:
    return build(Config, {"kind": "opcua", "name": "ua", "endpoint": url, "timeout": "1s",
                          "connection_check": "500ms",
                          "nodes": [{"sensor_id": "temp", "node_id": nid("Temp"),
                                     "publishing_interval": "100ms"}], **extra})


async def test_server_loss_logs_no_asyncua_tracebacks_at_error_level(
        ua_shelf: Path, caplog: pytest.LogCaptureFixture) -> None:
    plant = PlantServer(free_port(), shelf=ua_shelf)
    await plant.start()
    drv = create(config(plant.url))
    await drv.open()
    try:
        await asyncio.wait_for(drv.read(), 5)
        caplog.set_level(logging.DEBUG, "asyncua")
        await plant.stop()                             # the PLC is switched off
        with pytest.raises(DriverDisconnected):
            async with asyncio.timeout(10):
                while True:
                    await drv.read()
        await asyncio.sleep(1.5)                       # asyncua's publish loop retries after 1 s
    finally:
        await drv.close()
    client_logs = [r for r in caplog.records if r.name.startswith("asyncua.client")]
    loud = [r for r in client_logs if r.levelno >= logging.ERROR]
    assert not loud, [(r.name, r.getMessage()) for r in loud]
    # still there for whoever debugs asyncua itself
    assert any("Publish iteration crashed" in r.getMessage() and r.levelno == logging.DEBUG
               for r in client_logs), [(r.levelname, r.getMessage()) for r in client_logs]


@pytest.fixture
async def secure_plant(tmp_path: Path, ua_shelf: Path
                       ) -> AsyncIterator[tuple[PlantServer, dict[str, Any], Path]]:
    pki = tmp_path / "pki"
    srv_cert, srv_key = pki / "server-cert.der", pki / "server-key.pem"
    generate_client_certificate(srv_cert, srv_key, "urn:freeopcua:python:server", "127.0.0.1",
                                server=True)
    other_cert = pki / "other-server-cert.der"
    generate_client_certificate(other_cert, pki / "other-server-key.pem",
                                "urn:freeopcua:python:server", "127.0.0.1", server=True)
    cli_cert, cli_key = pki / "client-cert.der", pki / "client-key.pem"
    generate_client_certificate(cli_cert, cli_key, DEFAULT_APPLICATION_URI,
                                socket.gethostname())
    srv = PlantServer(free_port(), security=Security(srv_cert, srv_key, {"edge": "pw"}),
                      shelf=ua_shelf)
    await srv.start()
    extra = {"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
             "certificate": str(cli_cert), "private_key": str(cli_key),
             "username": "edge", "password": "pw"}
    yield srv, extra, other_cert
    await srv.stop()


async def test_a_pinned_certificate_that_does_not_match_is_named(
        secure_plant: tuple[PlantServer, dict[str, Any], Path]) -> None:
    plant, extra, other = secure_plant
    drv = create(config(plant.url, **extra, server_certificate=str(other)))
    t0 = time.monotonic()
    with pytest.raises(DriverDisconnected) as err:
        await drv.open()
    await drv.close()
    text = str(err.value)
    assert "does not match the pinned server_certificate" in text, text
    assert str(other) in text
    assert time.monotonic() - t0 < 8
    # the right pin connects
    drv = create(config(plant.url, **extra, server_certificate=str(plant.security.cert)))  # type: ignore[union-attr]
    await drv.open()
    await drv.close()
