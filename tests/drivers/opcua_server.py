"""A real asyncua server for the driver tests: changing scalars, a vibration array with its
sample-rate node, a node that turns Bad, a node that gets deleted; restarts and faults on
demand. Bound to 127.0.0.1 on a fixed port so the driver reconnects to the same endpoint.

Every :meth:`PlantServer.start` builds a new ``asyncua.Server`` (new internal server, new
address space, new listener) as a rebooted PLC would. What made that cost ~3-4 s is
``Server.init()`` filling the ~6,000 standard (namespace 0) nodes from generated code; with a
*shelf* (:func:`build_standard_shelf`, asyncua's own start-up accelerator for slow devices) each
new server reads those nodes lazily from a read-only on-disk snapshot instead (~0.2 s). Our
plant nodes are created fresh every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

NS = "urn:edge-agent:test"
RATE = 25600.0
N_SAMPLES = 2048

logging.getLogger("asyncua").setLevel(logging.ERROR)


def node(name: str, ns: int) -> ua.NodeId:
    return ua.NodeId(ua.String(name), ua.Int16(ns))


def ua_time(t: datetime) -> ua.DateTime:
    """asyncua types timestamps as its `DateTime` subclass but takes any aware datetime."""
    return cast(ua.DateTime, t)


class PasswordUsers(UserManager):
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


def _shelf_ready(path: Path) -> bool:
    # The test asyncua's Server.init() applies to decide "load the shelf" vs "fill and write it".
    return path.is_file() or path.with_suffix(".db").is_file()


async def build_standard_shelf(directory: Path) -> Path:
    """Fill the standard address space once and write asyncua's shelf of it into ``directory``.

    Returns the path to give :class:`PlantServer` (``shelf=``). Costs one full ``init()``.
    """
    path = directory / "ns0"
    if not _shelf_ready(path):
        await Server().init(path)  # no shelf yet: fills from code, then writes the shelf
        if not _shelf_ready(path):
            # Python builds without gdbm/ndbm fall back to dbm.dumb, which writes ns0.dat and
            # ns0.dir but no ns0 / ns0.db; asyncua only looks for the latter two. An empty ns0
            # makes it load the shelf (dbm.whichdb still identifies the .dat/.dir pair).
            path.touch()
    return path


@dataclass(frozen=True)
class Wave:
    """A continuous sine published as consecutive ``n``-sample arrays on ``Wave`` (sample rate
    on ``Wave.Rate``), each stamped with the time of its last sample on one sample clock, so
    consecutive blocks join without gaps. Blocks go out at ``speed`` x real time."""

    frequency: float
    amplitude: float
    rate: float = 10240.0
    n: int = N_SAMPLES
    speed: float = 2.0


class PlantServer:
    """``start()`` builds a new server (address space and all), ``stop()`` tears it down."""

    def __init__(self, port: int, *, security: Security | None = None,
                 update_s: float = 0.05, shelf: Path | None = None,
                 wave: Wave | None = None) -> None:
        self.extra_namespaces = 0   # namespaces registered before NS (its index is 2 + this)
        self.ns_index = 2
        # CreateMonitoredItems requests naming one of these nodes get no answer for
        # `refuse_delay` s, then a ServiceFault for the whole request (a server choking on
        # one); Read requests naming one get a ServiceFault at once
        self.refuse: set[str] = set()
        self.refuse_delay = 0.0
        self.overflows = 0          # values a monitored item's queue discarded (Overflow bit set)
        self.port = port
        self.url = f"opc.tcp://127.0.0.1:{port}/plant/"
        self.security = security
        self.update_s = update_s
        self.shelf = shelf
        self.wave = wave
        self.server: Server | None = None
        self.bad = False            # Flaky node reports BadSensorFailure while set
        self.deleted = False
        self.tick = 0
        self.generation = 0         # servers built so far
        self.wave_t0 = 0.0          # POSIX time of the wave's sample 0
        self.wave_blocks = 0        # blocks written so far (over every server)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = Server(user_manager=PasswordUsers(self.security.users) if self.security else None)
        await s.init(self.shelf)
        s.set_endpoint(self.url)
        s.set_server_name("edge-agent test plant")
        if self.security:
            await s.load_certificate(str(self.security.cert))
            await s.load_private_key(str(self.security.key))
            s.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            s.set_identity_tokens([ua.UserNameIdentityToken])
        else:
            s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        for i in range(self.extra_namespaces):
            await s.register_namespace(f"urn:edge-agent:test:extra{i}")
        idx = await s.register_namespace(NS)
        assert idx == 2 + self.extra_namespaces
        self.ns_index = idx
        self._instrument(s)
        plant = await s.nodes.objects.add_object(idx, "Plant")
        for name, value in (("Temp", 20.0), ("Speed", 1500), ("Flaky", 1.0), ("Doomed", 5.0),
                            ("Unc", 3.0), ("Vib.Rate", RATE), ("Text", "hello")):
            await plant.add_variable(node(name, idx), f"{idx}:{name}", value)
        await plant.add_variable(node("Vib", idx), f"{idx}:Vib", [0.0] * N_SAMPLES,
                                 varianttype=ua.VariantType.Double)
        # an array nobody updates: one notification (its initial value) per subscription
        await plant.add_variable(node("Still", idx), f"{idx}:Still", [0.0] * 256,
                                 varianttype=ua.VariantType.Double)
        if self.wave is not None:
            await plant.add_variable(node("Wave.Rate", idx), f"{idx}:Wave.Rate",
                                     self.wave.rate)
            await plant.add_variable(node("Wave", idx), f"{idx}:Wave",
                                     [0.0] * self.wave.n, varianttype=ua.VariantType.Double)
        if self.deleted:
            await s.delete_nodes([s.get_node(node("Doomed", idx))])
        await s.start()
        self.server = s
        self.generation += 1
        self._tasks = [asyncio.create_task(self._update_loop())]
        if self.wave is not None:
            self._tasks.append(asyncio.create_task(self._wave_loop(self.wave)))

    def _instrument(self, s: Server) -> None:
        service = s.iserver.subscription_service
        create = service.create_monitored_items

        async def guarded(params: ua.CreateMonitoredItemsParameters
                          ) -> list[ua.MonitoredItemCreateResult]:
            names = {str(c.ItemToMonitor.NodeId.Identifier) for c in params.ItemsToCreate}
            if names & self.refuse:
                await asyncio.sleep(self.refuse_delay)
                raise ServiceError(ua.StatusCodes.BadDecodingError)
            return await create(params)

        service.create_monitored_items = guarded  # type: ignore[method-assign]
        attributes = s.iserver.attribute_service
        read = attributes.read

        def guarded_read(params: ua.ReadParameters) -> list[ua.DataValue]:
            if {str(r.NodeId.Identifier) for r in params.NodesToRead} & self.refuse:
                raise ServiceError(ua.StatusCodes.BadDecodingError)
            return read(params)

        attributes.read = guarded_read  # type: ignore[method-assign]
        create_sub = service.create_subscription

        async def marking(*args: Any, **kwargs: Any) -> ua.CreateSubscriptionResult:
            result = await create_sub(*args, **kwargs)
            self._mark_overflows(service.subscriptions[result.SubscriptionId])
            return result

        service.create_subscription = marking  # type: ignore[method-assign]

    def _mark_overflows(self, sub: Any) -> None:
        """asyncua's server discards the oldest queued value silently; a compliant server sets
        the Overflow info bit on the value that is then the oldest (OPC 10000-4, 5.12.1.5)."""
        enqueue = sub._enqueue_event

        async def enqueue_marking(mid: int, data: Any, size: int, queue: dict[int, list[Any]]
                                  ) -> None:
            full = size != 0 and len(queue.get(mid, ())) >= size
            await enqueue(mid, data, size, queue)
            if full and isinstance(data, ua.MonitoredItemNotification):
                self.overflows += 1
                oldest = queue[mid][0].Value
                code = oldest.StatusCode.value if oldest.StatusCode is not None else 0
                oldest.StatusCode = ua.StatusCode(ua.UInt32(code | 0x0480))

        sub._enqueue_event = enqueue_marking

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        s, self.server = self.server, None
        if s is not None:
            # Server.stop() waits for its clock loop, which sleeps 1 s between ticks, to see a
            # flag; a PLC being switched off does not wait, so stop the clock first.
            clock, s.iserver.time_task = s.iserver.time_task, None
            if clock is not None:
                clock.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await clock
            await s.stop()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def delete_doomed(self) -> None:
        assert self.server is not None
        self.deleted = True
        await self.server.delete_nodes([self.server.get_node(node("Doomed", self.ns_index))])

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
                          StatusCode=ua.StatusCode(ua.UInt32(status)),
                          SourceTimestamp=ua_time(datetime.now(UTC)),
                          ServerTimestamp=ua_time(datetime.now(UTC)))
        await self.server.write_attribute_value(node(name, self.ns_index), dv)

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

    async def _wave_loop(self, w: Wave) -> None:
        if not self.wave_blocks:
            self.wave_t0 = time.time()
        k = 2 * math.pi * w.frequency / w.rate
        while True:
            first = self.wave_blocks * w.n
            block = [w.amplitude * math.sin(k * (first + i)) for i in range(w.n)]
            end = datetime.fromtimestamp(self.wave_t0 + (first + w.n) / w.rate, UTC)
            dv = ua.DataValue(ua.Variant(block, ua.VariantType.Double),
                              SourceTimestamp=ua_time(end), ServerTimestamp=ua_time(end))
            assert self.server is not None
            await self.server.write_attribute_value(node("Wave", self.ns_index), dv)
            self.wave_blocks += 1
            await asyncio.sleep(w.n / w.rate / w.speed)
