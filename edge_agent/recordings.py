"""Recorded waveforms from files: the one reader for the replay driver and the training tools.

Formats (:func:`detect_format` picks by extension: ``.wav``/``.flac``, ``.mat``, anything else
is tried as NASA IMS text):

* ``wav`` — PCM 8/16/24/32-bit or float, any channel count, including WAVE_FORMAT_EXTENSIBLE
  (``scipy.io.wavfile``; Python's ``wave`` refuses those); integers are scaled to [-1, 1) full
  scale. ``.flac`` goes through ``soundfile`` (the ``[audio]`` extra). Names ``ch0, ch1, ...``.
* ``ims`` — NASA IMS bearing snapshots: tab-separated ASCII, one column per accelerometer, no
  header, 20 kHz. Names ``b1x, b1y, b2x, ...`` for 8 columns (test 1), ``b1 .. b4`` otherwise.
* ``cwru`` — Case Western MATLAB 5 files: signals ``*_DE_time``, ``*_FE_time``, ``*_BA_time``
  (names ``de, fe, ba``) and the ``*RPM`` value. The sample rate comes from the caller
  (``sample_rate=``: the config or a CLI flag), else from the file's own metadata (a scalar
  ``fs``/``sample_rate``/``sampling_rate``/``*_fs`` variable), else from the file name only
  where it states the rate (``12k``/``48k``, logged); otherwise :class:`RateUnknown` asks for
  ``sample_rate``. (CWRU files named by their number, e.g. ``105.mat``, state no rate and are
  12 kHz or 48 kHz depending on the set.)

Readers raise the library's own error (``OSError``, ``ValueError``, ...); callers say which
file failed in their own terms (the replay driver raises ``DriverError``).
"""

from __future__ import annotations

import logging
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge_agent.errors import EdgeAgentError

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
Format = Literal["wav", "ims", "cwru"]
CWRU_SIGNALS: tuple[str, ...] = ("DE", "FE", "BA")
IMS_RATE = 20000.0

# What a reader may raise for an unreadable file (besides ``OSError``).
READ_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, TypeError, KeyError, IndexError,
                                            NotImplementedError, zlib.error)


@dataclass
class Recording:
    """One file, loaded: samples ``(n, ch)`` float64 in the file's unit, default channel names,
    the file's sample rate, the shaft speed if the file gives one and, for CWRU, the signal keys
    (``DE``, ``FE``, ``BA``) of the columns."""

    path: Path
    samples: F64
    names: tuple[str, ...]
    sample_rate: float
    rpm: float | None = None
    keys: tuple[str, ...] | None = None


def detect_format(path: Path) -> Format:
    ext = path.suffix.lower()
    return "wav" if ext in (".wav", ".flac") else "cwru" if ext == ".mat" else "ims"


class RateUnknown(EdgeAgentError, ValueError):
    """A recording whose sample rate is given neither by the caller, nor by the file, nor by
    its name (a ``ValueError`` too, as the other reader errors)."""


_NAME_RATE = re.compile(r"(?<![0-9])(12|48)k(?:hz)?(?![a-z0-9])", re.I)
_RATE_KEYS = re.compile(r"^(fs|sr|sample_?rate|sampling_?rate|.*_fs)$", re.I)


def cwru_rate(path: Path, variables: dict[str, object] | None = None) -> float:
    """A CWRU file's sample rate when the file or its name states it: a scalar rate variable in
    ``variables`` (the file's), else ``12k``/``48k`` in the name (logged as a guess from the
    name); :class:`RateUnknown` otherwise."""
    for key, val in (variables or {}).items():
        if _RATE_KEYS.match(key):
            arr = np.ravel(np.asarray(val, dtype=np.float64))
            if arr.size == 1 and np.isfinite(arr[0]) and arr[0] > 0:
                return float(arr[0])
    m = _NAME_RATE.search(path.name)
    if m is not None:
        rate = float(m.group(1)) * 1000.0
        log.info("sample rate taken from the file name",
                 extra={"file": path.name, "sample_rate": rate})
        return rate
    raise RateUnknown(f"{path.name}: sample rate unknown (the file holds no rate variable and "
                      f"its name states none, e.g. '12k'/'48k'): set sample_rate (replay "
                      f"config) or pass --sample-rate")


def read(path: Path | str, fmt: Format | Literal["auto"] = "auto",
         sample_rate: float | None = None) -> Recording:
    """Read one file in ``fmt`` (``auto``: by extension); ``sample_rate`` (config or CLI)
    overrides the file's own rate."""
    p = Path(path)
    kind = detect_format(p) if fmt == "auto" else fmt
    if kind == "cwru":
        return read_cwru(p, sample_rate)
    rec = read_wav(p) if kind == "wav" else read_ims(p)
    if sample_rate is not None:
        rec.sample_rate = float(sample_rate)
    return rec


def read_wav(path: Path) -> Recording:
    if path.suffix.lower() == ".flac":
        import soundfile as sf

        x, sr = sf.read(path, dtype="float64", always_2d=True)
        return Recording(path, np.asarray(x, dtype=np.float64),
                         tuple(f"ch{i}" for i in range(x.shape[1])), float(sr))
    from scipy.io import wavfile

    rate, raw = wavfile.read(path)
    data = raw[:, None] if raw.ndim == 1 else raw
    if data.dtype == np.uint8:
        x = (data.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        x = data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))
    else:
        x = data.astype(np.float64)
    return Recording(path, x, tuple(f"ch{i}" for i in range(x.shape[1])), float(rate))


def read_ims(path: Path) -> Recording:
    x = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if x.shape[0] < 2:
        raise ValueError("no samples")
    n = x.shape[1]
    names = tuple(f"b{i // 2 + 1}{'xy'[i % 2]}" for i in range(n)) if n == 8 else \
        tuple(f"b{i + 1}" for i in range(n))
    return Recording(path, x, names, IMS_RATE)


def read_cwru(path: Path, sample_rate: float | None = None) -> Recording:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        m = loadmat(path)
    except (MatReadError, IndexError, EOFError, struct.error, zlib.error) as exc:
        raise ValueError(f"not a readable MATLAB file ({type(exc).__name__}: {exc})") from exc
    found: dict[str, F64] = {}
    for key, val in m.items():
        for sig in CWRU_SIGNALS:
            if key.endswith(f"_{sig}_time") and sig not in found:
                found[sig] = np.ravel(np.asarray(val, dtype=np.float64))
    if not found:
        raise ValueError(f"no *_DE_time / *_FE_time / *_BA_time signal among "
                         f"{sorted(k for k in m if not k.startswith('__'))}")
    keys = tuple(s for s in CWRU_SIGNALS if s in found)
    n = min(len(found[k]) for k in keys)
    x = np.stack([found[k][:n] for k in keys], axis=1)
    rpm_keys = [k for k in m if k.endswith("RPM")]
    rpm_val = np.ravel(np.asarray(m[rpm_keys[0]])) if rpm_keys else np.empty(0)
    rpm = float(rpm_val[0]) if rpm_val.size else None
    rate = float(sample_rate) if sample_rate is not None else cwru_rate(path, m)
    return Recording(path, x, tuple(k.lower() for k in keys), rate, rpm, keys)


def read_recording(path: Path | str, channel: str | int | None = None,
                   sample_rate: float | None = None) -> tuple[F64, float]:
    """``(samples (n, c), sample_rate)`` of one file for training: a CWRU ``.mat`` gives one
    signal (``channel`` = ``DE``/``FE``/``BA``, optionally with ``_time``; default ``DE``), a
    WAV/FLAC or IMS file its column ``channel`` (an index; default all columns).
    ``sample_rate`` overrides (or supplies) the file's rate."""
    x, rec = select_channel(read(path, sample_rate=sample_rate), channel)
    return x, rec.sample_rate


def select_channel(rec: Recording, channel: str | int | None) -> tuple[F64, Recording]:
    """The columns :func:`read_recording` takes from a loaded recording."""
    if rec.keys is not None:
        want = str(channel or "DE").upper().removesuffix("_TIME")
        if want not in rec.keys:
            raise ValueError(f"{rec.path}: no *_{want}_time signal (found {list(rec.keys)})")
        return rec.samples[:, [rec.keys.index(want)]], rec
    x = rec.samples if channel is None else rec.samples[:, [int(channel)]]
    return x, rec
