"""Register read responses decoded in one ``struct`` call.

pymodbus' own response unpacks one register per call and its decoder builds a debug line that
formats every register, even with debug logging off. These subclasses keep the same checks and
the same ``registers`` (a list of ints) with one ``struct.unpack_from``, and a short text.
:func:`register` installs them on one client through ``client.register`` (pymodbus' public way
to give a client its own response classes; the table is copied per client).
"""

from __future__ import annotations

import struct
from typing import Any

from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)


def _decode(pdu: ModbusPDU, data: bytes) -> None:
    """``data``: byte count, then the registers (big-endian words), as pymodbus decodes it."""
    pdu.registers = []
    if (data_len := int(data[0])) >= len(data):
        raise ModbusIOException(f"byte_count {data_len} > length of packet {len(data)}",
                                function_code=pdu.function_code)
    pdu.registers = list(struct.unpack_from(f">{data_len // 2}H", data, 1))


def _text(pdu: ModbusPDU) -> str:
    return (f"{type(pdu).__name__}(dev_id={pdu.dev_id}, transaction_id={pdu.transaction_id}, "
            f"registers={len(pdu.registers)})")


class HoldingResponse(ReadHoldingRegistersResponse):
    def decode(self, data: bytes) -> None:
        _decode(self, data)

    def __str__(self) -> str:
        return _text(self)


class InputResponse(ReadInputRegistersResponse):
    def decode(self, data: bytes) -> None:
        _decode(self, data)

    def __str__(self) -> str:
        return _text(self)


def register(client: Any) -> None:
    """Decode this client's FC 3/4 responses with the classes above."""
    client.register(HoldingResponse)
    client.register(InputResponse)
