"""A run of packed readings (:mod:`.pack`): the JSON tail of each reading, its timestamp and
its source, in put order; the unit a commit group stores (one per commit)."""

from __future__ import annotations

from edge_agent.records import Sensor

Key = tuple[str, str, str]  # sensor_id, sensor_type, unit


class Run:
    """Readings in order: the tail of each one's JSON object (after ``"value":``), its
    timestamp (µs) and the index of its source in ``table``."""

    __slots__ = ("frags", "idx", "ix", "sx", "table", "us")

    def __init__(self) -> None:
        self.frags: list[str] = []
        self.us: list[int] = []
        self.idx: list[int] = []
        self.table: list[Key] = []
        self.ix: dict[Key, int] = {}
        self.sx: dict[Sensor, int] = {}  # Packer.block: a block's sensor -> its index here

    def __len__(self) -> int:
        return len(self.frags)

    def source(self, key: Key) -> int:
        i = self.ix.get(key)
        if i is None:
            check_key(key)
            i = self.ix[key] = len(self.table)
            self.table.append(key)
        return i

    def add(self, frag: str, us: int, key: Key) -> None:
        self.frags.append(frag)
        self.us.append(us)
        self.idx.append(self.source(key))

    def truncate(self, n: int, sources: int) -> None:
        """Back to the first ``n`` readings and ``sources`` sources."""
        del self.frags[n:], self.us[n:], self.idx[n:]
        for key in self.table[sources:]:
            del self.ix[key]
        del self.table[sources:]
        self.sx = {s: i for s, i in self.sx.items() if i < sources}


def check_key(key: Key) -> None:
    for part in key:
        if type(part) is not str:
            raise TypeError(f"reading source fields must be str, got {key!r}")
