"""A real asyncua server for the driver tests: changing scalars, a vibration array with its
sample-rate node, a node that turns Bad, a node that gets deleted; restarts and faults on
demand. Bound to 127.0.0.1 on a fixed port so the driver reconnects to the same endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.binary_server_asyncio import BinaryServer

NS = "urn:edge-agent:test"
RATE = 25600.0
N_SAMPLES = 2048

logging.getLogger("asyncua").setLevel(logging.ERROR)


class PasswordUsers:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class Security:
    cert: Path
    key: Path
    users: dict[str, str]


def nid(name: str) -> str:
    return f"ns=2;s={name}"


class PlantServer:
    """``start()`` builds a fresh server (address space and all), ``stop()`` tears it down."""

    def __init__(self, port: int, *, security: Security | None = None,
                 update_s: float = 0.05) -> None:
        self.port = port
        self.url = f"opc.tcp://127.0.0.1:{port}/plant/"
        self.security = security
        self.update_s = update_s
        self.server: Server | None = None
        self.bad = False            # Flaky node reports BadSensorFailure while set
        self.deleted = False
        self.tick = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = Server(user_manager=PasswordUsers(self.security.users) if self.security else None)
        await s.init()
        s.set_endpoint(self.url)
        s.set_server_name("edge-agent test plant")
        if self.security:
            await s.load_certificate(str(self.security.cert))
            await s.load_private_key(str(self.security.key))
            s.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            s.set_identity_tokens([ua.UserNameIdentityToken])
        else:
            s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await s.register_namespace(NS)
        assert idx == 2
        plant = await s.nodes.objects.add_object(idx, "Plant")
        for name, value in (("Temp", 20.0), ("Speed", 1500), ("Flaky", 1.0), ("Doomed", 5.0),
                            ("Unc", 3.0), ("Vib.Rate", RATE), ("Text", "hello")):
            await plant.add_variable(ua.NodeId(name, idx), f"{idx}:{name}", value)
        await plant.add_variable(ua.NodeId("Vib", idx), f"{idx}:Vib", [0.0] * N_SAMPLES,
                                 varianttype=ua.VariantType.Double)
        if self.deleted:
            await s.delete_nodes([s.get_node(nid("Doomed"))])
        await s.start()
        self.server = s
        self._task = asyncio.create_task(self._update_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def stop_network(self) -> None:
        """Take the server off the network: listener closed, every connection dropped, every
        session and subscription gone; the address space stays (an in-process restart that
        costs milliseconds instead of a 4-second address-space rebuild)."""
        assert self.server is not None and self.server.bserver is not None
        await self.server.bserver.stop()
        for sess in list(self.server.iserver.subscription_service.subscriptions.values()):
            await sess.stop()
        self.server.iserver.subscription_service.subscriptions.clear()

    async def start_network(self) -> None:
        s = self.server
        assert s is not None
        s.bserver = BinaryServer(s.iserver, "127.0.0.1", self.port, s.limits)
        s.bserver.set_policies(s._policies)
        await s.bserver.start()

    async def delete_doomed(self) -> None:
        assert self.server is not None
        self.deleted = True
        await self.server.delete_nodes([self.server.get_node(nid("Doomed"))])

    def silence_subscriptions(self) -> int:
        """Stop every server-side publishing loop without deleting anything: the session stays
        up, the subscriptions go quiet (no data, no keep-alive)."""
        assert self.server is not None
        subs = self.server.iserver.subscription_service.subscriptions
        n = 0
        for sub in subs.values():
            task = sub._task
            if task is not None:
                task.cancel()
                n += 1
        return n

    async def _write(self, name: str, value: Any, status: int = 0,
                     vtype: ua.VariantType | None = None) -> None:
        assert self.server is not None
        dv = ua.DataValue(ua.Variant(value, vtype) if vtype else ua.Variant(value),
                          StatusCode=ua.StatusCode(status),
                          SourceTimestamp=datetime.now(UTC), ServerTimestamp=datetime.now(UTC))
        await self.server.write_attribute_value(ua.NodeId.from_string(nid(name)), dv)

    async def _update_loop(self) -> None:
        while True:
            self.tick += 1
            t = self.tick
            await self._write("Temp", 20.0 + (t % 100) / 10.0)
            await self._write("Speed", 1500 + t % 7, vtype=ua.VariantType.Int64)
            if self.bad:
                await self._write("Flaky", 0.0, ua.StatusCodes.BadSensorFailure)
            else:
                await self._write("Flaky", float(t))
            await self._write("Unc", 3.0 + t % 2, ua.StatusCodes.UncertainLastUsableValue)
            if not self.deleted:
                await self._write("Doomed", float(t))
            if t % 4 == 0:
                wave = [math.sin(2 * math.pi * 160.0 * i / RATE) + t for i in range(N_SAMPLES)]
                await self._write("Vib", wave, vtype=ua.VariantType.Double)
            await asyncio.sleep(self.update_s)
