"""File replay: recorded waveforms as a live source, for commissioning and tests.

Formats (``wav``, ``ims``, ``cwru``; ``format = "auto"`` picks by extension) are read by
:mod:`edge_agent.recordings`, which the training tools use too. ``sample_rate`` overrides the
file's rate (needed where the file does not give one: a CWRU file whose name does not state its
rate is refused without it); for CWRU files the ``*RPM`` value is also
emitted once per file as a Reading ``<source_id>.rpm`` (so an envelope extractor can take its
shaft speed from that tag).

``path`` is a file, a directory (its files of the format, sorted) or a glob pattern. Each file
is a *segment*: samples within a file are contiguous; the next file starts ``segment_gap``
seconds after the previous one ended, so windows never straddle two recordings (the windower
sees a gap and restarts). ``columns`` selects and orders columns by index (``"0"``) or, for
CWRU, by signal (``"DE"``); ``channels`` renames them. ``pace = "realtime"`` releases each
block when its last sample is due by the wall clock (one sleep per block); ``"fast"`` as fast
as the consumer reads. ``loop`` starts over after the last file; without it the driver reports
``finished`` in its health and ``read()`` waits until closed.
"""

from __future__ import annotations

import asyncio
import glob
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.drivers.base import DriverError, DriverHealth, DriverOutput
from edge_agent.recordings import READ_ERRORS, Recording, detect_format, read
from edge_agent.records import Reading, WaveformBlock, parse_ts
from edge_agent.settings import Model

F64 = npt.NDArray[np.float64]
Format = Literal["auto", "wav", "ims", "cwru"]


class Config(Model):
    kind: Literal["replay"]
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    format: Format = "auto"
    source_id: str | None = None                  # default: the driver name
    columns: tuple[str, ...] = ()                 # e.g. ("0", "1") or ("DE",); () = all
    channels: tuple[str, ...] = ()                # names for the selected columns
    sample_rate: float | None = Field(None, gt=0)  # override / required where unknown
    unit: str = "g"
    scale: float = 1.0                            # multiply the samples (calibration)
    pace: Literal["realtime", "fast"] = "realtime"
    loop: bool = False
    block_size: int = Field(2048, ge=1, le=10_000_000)
    start_time: str | None = None                 # RFC 3339; default: wall clock at first open
    segment_gap: float = Field(1.0, gt=0)         # seconds between files

    def waveform_sources(self) -> tuple[str, ...]:
        return (self.source_id or self.name,)

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.channels and self.columns and len(self.channels) != len(self.columns):
            out.append(("channels", "must name each selected column (same length as columns)"))
        if len(set(self.channels)) != len(self.channels):
            out.append(("channels", "names must be distinct"))
        if self.start_time is not None:
            try:
                parse_ts(self.start_time)
            except ValueError:
                out.append(("start_time", f"is not an RFC 3339 time: {self.start_time!r}"))
        if not math.isfinite(self.scale) or self.scale == 0:
            out.append(("scale", "must be a finite non-zero number"))
        return out

    def world_problems(self) -> list[tuple[str, str]]:
        path = Path(self.path).expanduser()
        if path.exists() or glob.glob(str(path)):
            return []
        return [("path", f"{self.path} matches no file or directory")]


def _select(data: F64, names: tuple[str, ...], cfg: Config, path: Path,
            keys: tuple[str, ...] | None = None) -> tuple[F64, tuple[str, ...]]:
    if cfg.channels and not cfg.columns and len(cfg.channels) != data.shape[1]:
        raise DriverError(f"{path}: {len(cfg.channels)} channel name(s) {list(cfg.channels)} for "
                          f"{data.shape[1]} column(s) in the file; name every column or select "
                          f"columns with `columns`")
    idx: list[int] = []
    for col in cfg.columns or tuple(str(i) for i in range(data.shape[1])):
        if keys is not None and col.upper() in keys:
            idx.append(keys.index(col.upper()))
        elif col.isdigit() and int(col) < data.shape[1]:
            idx.append(int(col))
        else:
            have = ", ".join(keys) if keys else f"0..{data.shape[1] - 1}"
            raise DriverError(f"{path}: no column {col!r} (available: {have})")
    chosen = tuple(names[i] for i in idx)
    out: F64 = np.ascontiguousarray(data[:, idx], dtype=np.float64)
    return out * cfg.scale if cfg.scale != 1.0 else out, cfg.channels or chosen


def load(path: Path, fmt: Format, cfg: Config) -> Recording:
    """Read one file and select its columns; every failure is a :class:`DriverError` naming the
    file and the cause. A recording without samples counts as unreadable (replaying it would
    spin on empty blocks).
    """
    kind = detect_format(path) if fmt == "auto" else fmt
    try:
        raw = read(path, kind, cfg.sample_rate)
        sel, chans = _select(raw.samples, raw.names, cfg, path, raw.keys)
    except READ_ERRORS as exc:
        raise DriverError(f"{path}: cannot read as {kind}: {exc}") from exc
    if sel.shape[0] == 0:
        raise DriverError(f"{path}: cannot read as {kind}: no samples")
    return Recording(path, sel, chans, raw.sample_rate, raw.rpm)


def resolve(path: str, fmt: Format) -> list[Path]:
    """The files ``path`` names (file, directory or glob), sorted; DriverError when none."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        if fmt != "auto":
            files = [f for f in files if detect_format(f) == fmt]
    else:
        files = sorted(Path(f) for f in glob.glob(path) if Path(f).is_file())
    if not files:
        raise DriverError(f"replay: no files at {path!r}")
    return files


class ReplayDriver:
    """A streaming driver yielding one :class:`WaveformBlock` per read."""

    streaming = True
    recorded = True   # the data exists already: a full waveform queue makes it wait, not drop

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.source_id = cfg.source_id or cfg.name
        self._health = DriverHealth(cfg.name, "replay")
        self._files: list[Path] = []
        self._rec: Recording | None = None
        self._file_i = -1
        self._pos = 0                        # sample index within the current file
        self._seg_start = 0.0                # timestamp of the current file's first sample
        self._t0: float | None = None        # timestamp of the very first sample
        self._wall0 = 0.0                    # wall time the first sample is "played"
        self._played = 0.0                   # stream seconds released so far (for pacing)
        self._closed: asyncio.Event | None = None
        self._new_segment = False
        self.finished = False
        self.loops = 0

    async def open(self) -> None:
        self._files = resolve(self.cfg.path, self.cfg.format)
        if self._rec is None:
            self._advance_file()            # reads the first file: a bad file fails open()
        if self._t0 is None:
            self._t0 = parse_ts(self.cfg.start_time) if self.cfg.start_time else time.time()
            self._seg_start = self._t0
        self._wall0 = time.time() - self._played
        self._closed = asyncio.Event()
        self._health.connected = True
        self._health.detail.update(files=len(self._files))

    def _advance_file(self) -> bool:
        """Move to the next readable file (or loop); False at the end without loop.

        A file that cannot be read is skipped and reported in health (``bad_points``); when no
        file at all can be read, :class:`DriverError` is raised.
        """
        nxt = self._file_i
        for _ in range(len(self._files) + 1):
            nxt += 1
            if nxt >= len(self._files):
                if not self.cfg.loop and self._rec is not None:
                    return False
                nxt = 0
                if self._rec is not None:
                    self.loops += 1
            try:
                rec = load(self._files[nxt], self.cfg.format, self.cfg)
            except DriverError as exc:
                self._health.error("bad_file")
                self._health.bad_points[str(self._files[nxt])] = str(exc)
                if self._rec is None and nxt == len(self._files) - 1:
                    break
                continue
            self._rec, self._file_i, self._pos = rec, nxt, 0
            self._new_segment = True
            self._health.detail.update(file=str(rec.path), loops=self.loops)
            return True
        raise DriverError(f"replay: no readable file at {self.cfg.path!r}: "
                          + "; ".join(self._health.bad_points.values()))

    async def read(self) -> DriverOutput:
        rec = self._rec
        if rec is None or self._closed is None:
            raise DriverError("replay: read() before open()")
        out: DriverOutput = []
        if self._pos >= rec.samples.shape[0]:
            prev_end = self._seg_start + rec.samples.shape[0] / rec.sample_rate
            if not self._advance_file():
                self.finished = True
                self._health.detail["finished"] = True
                await self._closed.wait()
                return []
            rec = self._rec
            assert rec is not None
            self._seg_start = prev_end + self.cfg.segment_gap
            self._played += self.cfg.segment_gap
        if self._new_segment:
            self._new_segment = False
            if rec.rpm is not None:
                out.append(Reading(f"{self.source_id}.rpm", "speed", rec.rpm, "rpm",
                                   self._seg_start, metadata={"file": rec.path.name}))
        end = min(self._pos + self.cfg.block_size, rec.samples.shape[0])
        start_ts = self._seg_start + self._pos / rec.sample_rate
        block = WaveformBlock(self.source_id, rec.sample_rate, rec.names, start_ts,
                              rec.samples[self._pos:end], self.cfg.unit,
                              {"file": rec.path.name, "offset": self._pos})
        self._played += (end - self._pos) / rec.sample_rate
        self._pos = end
        if self.cfg.pace == "realtime":
            delay = self._wall0 + self._played - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self._health.detail["lag_s"] = round(-delay, 3)
        else:
            await asyncio.sleep(0)           # stay cooperative when running flat out
        out.append(block)
        self._health.ok(block.n_samples * len(rec.names))
        self._health.detail["position"] = self._pos
        return out

    async def close(self) -> None:
        if self._closed is not None:
            self._closed.set()
        self._health.connected = False

    def health(self) -> DriverHealth:
        return self._health


def create(cfg: Config) -> ReplayDriver:
    return ReplayDriver(cfg)
