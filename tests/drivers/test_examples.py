"""drivers/EXAMPLES.toml (folded into config.example.toml) parses with the driver configs."""

from __future__ import annotations

import tomllib
from pathlib import Path

from edge_agent.drivers import modbus, opcua
from edge_agent.settings import parse

EXAMPLES = Path(__file__).resolve().parents[2] / "drivers" / "EXAMPLES.toml"


def test_examples_parse_and_build_drivers() -> None:
    tables = tomllib.loads(EXAMPLES.read_text())["drivers"]
    kinds = {"opcua": opcua, "modbus": modbus}
    built = [parse(kinds[t["kind"]].Config, t, f"drivers[{i}]")
             for i, t in enumerate(tables)]
    assert [c.kind for c in built] == ["opcua", "opcua", "modbus", "modbus"]
    ua_cfg = built[0]
    assert isinstance(ua_cfg, opcua.Config)
    assert ua_cfg.password is not None and "opcua-press-line.pw" in ua_cfg.password.describe()
    assert sum(n.waveform for n in ua_cfg.nodes) == 1
    vib = built[2]
    assert isinstance(vib, modbus.Config)
    names = {p.sensor_type for d in vib.devices for p in d.points}
    assert {"velocity_rms", "acceleration_rms", "temperature"} <= names
    for cfg in built:  # every example also builds a driver (no I/O at construction)
        drv = kinds[cfg.kind].create(cfg)
        assert drv.name == cfg.name
    # the transmitter's input registers coalesce into a single block read
    assert modbus.create(vib).health().detail["blocks"] == 2  # input block + holding string
