"""Single-file bundle archives (.tar.gz/.tgz/.tar/.zip): read named members into memory, write
files atomically. Used by :mod:`edge_agent.models.bundle`; knows nothing of manifests."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from edge_agent.errors import ModelError

MAX_MEMBER_BYTES = 256 * 1024 * 1024


def read_archive(path: Path, members: Iterable[str]) -> dict[str, bytes]:
    """Read just ``members`` (by base name) from a .tar.gz/.tgz/.tar or .zip, without
    extracting to disk."""
    wanted = set(members)
    out: dict[str, bytes] = {}
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    base = info.filename.rsplit("/", 1)[-1]
                    if base in wanted and not info.is_dir():
                        if info.file_size > MAX_MEMBER_BYTES:
                            raise ModelError(f"{path}: {base} is too large")
                        out[base] = zf.read(info)
            return out
        with tarfile.open(path, "r:*") as tf:
            for member in tf.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if base in wanted and member.isfile():
                    if member.size > MAX_MEMBER_BYTES:
                        raise ModelError(f"{path}: {base} is too large")
                    fh = tf.extractfile(member)
                    if fh is not None:
                        out[base] = fh.read()
        return out
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ModelError(f"{path}: not a readable bundle archive ({exc})") from exc


def is_archive_name(p: Path) -> bool:
    n = p.name.lower()
    return n.endswith((".tar.gz", ".tgz", ".tar", ".zip"))


def write_archive(out: Path, files: Mapping[str, bytes]) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    if out.name.lower().endswith(".zip"):
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for n, data in files.items():
                zf.writestr(n, data)
    else:
        mode = "w" if out.name.lower().endswith(".tar") else "w:gz"
        with tarfile.open(tmp, mode) as tf:  # type: ignore[call-overload]
            for n, data in files.items():
                info = tarfile.TarInfo(n)
                info.size = len(data)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
