"""Typed, frozen configuration from plain TOML tables — no I/O, every problem reported.

Each component declares its settings as a frozen dataclass in its own module; :func:`build`
turns a parsed TOML table into that dataclass, collecting *all* problems as
``ConfigProblem(key, message)`` with a full key path (``drivers[2].poll_interval``).

Supported field types: ``str``, ``int``, ``float``, ``bool``, :class:`Duration` (``"250ms"``,
``"5s"``, ``"2h"`` or a number of seconds), :class:`ByteSize` (``"2GiB"``, ``"512kB"`` or a
number of bytes), :class:`Secret` (a literal, ``"${ENV_VAR}"``, or a sibling ``<name>_file``
key; resolved only when used and never printed), ``Literal[...]``, ``X | None``, ``tuple[X, ...]``,
``dict[str, X]``, nested dataclasses, and unions of dataclasses told apart by a
``kind: Literal[...]`` field. Constraints go in field metadata: ``gt``, ``ge``, ``lt``, ``le``,
``min_len``, ``pattern``. A dataclass may define ``problems(self) -> Iterable[tuple[str, str]]``
for cross-field checks (keys relative to that table).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class Duration(float):
    """Seconds; parsed from ``"250ms"``, ``"1.5s"``, ``"10m"``, ``"2h"``, ``"1d"`` or a number."""

    _UNITS: typing.ClassVar[dict[str, float]] = {
        "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0,
    }

    @classmethod
    def parse(cls, raw: object) -> Duration:
        if isinstance(raw, bool):
            raise ValueError("expected a duration such as \"250ms\" or \"5s\"")
        if isinstance(raw, int | float):
            if not math.isfinite(raw) or raw < 0:
                raise ValueError(f"{raw!r} is not a duration (a finite number of seconds >= 0)")
            return cls(float(raw))
        if isinstance(raw, str):
            m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]+)\s*", raw)
            if m and m.group(2) in cls._UNITS:
                return cls(float(m.group(1)) * cls._UNITS[m.group(2)])
        raise ValueError(f"cannot read {raw!r} as a duration (e.g. \"250ms\", \"5s\", \"2h\")")


class ByteSize(int):
    """Bytes; parsed from ``"2GiB"``, ``"512kB"``, ``"10MB"`` or a number."""

    _UNITS: typing.ClassVar[dict[str, int]] = {
        "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
        "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
    }

    @classmethod
    def parse(cls, raw: object) -> ByteSize:
        if isinstance(raw, bool):
            raise ValueError("expected a size such as \"512MiB\"")
        if isinstance(raw, int):
            return cls(raw)
        if isinstance(raw, str):
            m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]+)\s*", raw)
            if m and m.group(2).lower() in cls._UNITS:
                return cls(int(float(m.group(1)) * cls._UNITS[m.group(2).lower()]))
        raise ValueError(f"cannot read {raw!r} as a size (e.g. \"512MiB\", \"2GiB\")")


@dataclass(frozen=True)
class Secret:
    """A secret by value, by environment variable or by file; resolved on use, never shown."""

    literal: str | None = None
    env: str | None = None
    file: str | None = None

    def reveal(self) -> str:
        """Resolve the secret (reads the file or environment). Raises ``LookupError``."""
        if self.literal is not None:
            return self.literal
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise LookupError(f"environment variable {self.env} is not set")
            return value
        if self.file is not None:
            return Path(self.file).read_text(encoding="utf-8").strip()
        raise LookupError("secret is empty")

    def describe(self) -> str:
        if self.env is not None:
            return f"<from ${{{self.env}}}>"
        if self.file is not None:
            return f"<from file {self.file}>"
        return "<set>" if self.literal is not None else "<unset>"

    def __repr__(self) -> str:
        return f"Secret({self.describe()})"

    __str__ = __repr__


@dataclass(frozen=True)
class ConfigProblem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found; ``str()`` gives one line per problem."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Builder:
    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(key or "<root>", message))

    def value(self, tp: Any, raw: Any, path: str) -> Any:
        origin = get_origin(tp)
        if tp is Any:
            return raw
        if origin in (Union, types.UnionType):
            return self._union(tp, raw, path)
        if origin is Literal:
            if raw not in get_args(tp):
                opts = ", ".join(repr(a) for a in get_args(tp))
                self.fail(path, f"must be one of {opts}, got {raw!r}")
            return raw
        if origin is tuple:
            args = get_args(tp)
            if not isinstance(raw, list):
                self.fail(path, f"must be a list, got {type(raw).__name__}")
                return ()
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(self.value(args[0], r, f"{path}[{i}]") for i, r in enumerate(raw))
            if len(args) != len(raw):
                self.fail(path, f"must have {len(args)} items, got {len(raw)}")
                return ()
            return tuple(self.value(a, r, f"{path}[{i}]") for i, (a, r) in
                         enumerate(zip(args, raw, strict=True)))
        if origin is dict:
            _, vt = get_args(tp)
            if not isinstance(raw, dict):
                self.fail(path, "must be a table")
                return {}
            return types.MappingProxyType(
                {k: self.value(vt, v, _join(path, k)) for k, v in raw.items()})
        if isinstance(tp, type) and hasattr(tp, "model_validate"):
            return self._settings_model(tp, raw, path)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            if tp is Secret:
                return self._secret(raw, path)
            return self.table(tp, raw, path)
        if tp in (Duration, ByteSize):
            try:
                return tp.parse(raw)
            except ValueError as exc:
                self.fail(path, str(exc))
                return tp(0)
        if tp is float:
            if isinstance(raw, int | float) and not isinstance(raw, bool) \
                    and math.isfinite(raw):
                return float(raw)
            self.fail(path, f"must be a finite number, got {raw!r}")
            return 0.0
        if tp is int:
            if isinstance(raw, int) and not isinstance(raw, bool):
                return raw
            self.fail(path, f"must be an integer, got {raw!r}")
            return 0
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            self.fail(path, f"must be true or false, got {raw!r}")
            return False
        if tp is str:
            if isinstance(raw, str):
                return raw
            self.fail(path, f"must be a string, got {raw!r}")
            return ""
        raise TypeError(f"confkit: unsupported field type {tp!r} at {path}")

    def _settings_model(self, tp: Any, raw: Any, path: str) -> Any:
        """A section already written as an ``edge_agent.settings.Model`` (pydantic) nested in a
        confkit dataclass: parsed by :func:`edge_agent.settings.parse`, problems carried over."""
        from edge_agent import settings

        if not isinstance(raw, Mapping):
            self.fail(path, f"must be a table, got {type(raw).__name__}")
            return None
        try:
            return settings.parse(tp, raw, path)
        except settings.ConfigError as exc:
            for p in exc.problems:
                self.fail(p.key, p.message)
            return None

    def _secret(self, raw: Any, path: str) -> Secret:
        if not isinstance(raw, str):
            self.fail(path, "must be a string (a value, or \"${ENV_VAR}\")")
            return Secret()
        m = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", raw)
        return Secret(env=m.group(1)) if m else Secret(literal=raw)

    def _union(self, tp: Any, raw: Any, path: str) -> Any:
        args = [a for a in get_args(tp) if a is not type(None)]
        if raw is None:
            return None
        if len(args) == 1:
            return self.value(args[0], raw, path)
        if all(dataclasses.is_dataclass(a) for a in args):
            kinds: dict[Any, Any] = {}
            for a in args:
                for k in get_args(get_type_hints(a)["kind"]):
                    kinds[k] = a
            if not isinstance(raw, dict):
                self.fail(path, "must be a table")
                return None
            kind = raw.get("kind")
            if kind not in kinds:
                opts = ", ".join(repr(k) for k in kinds)
                self.fail(_join(path, "kind"), f"must be one of {opts}, got {kind!r}")
                return None
            return self.table(kinds[kind], raw, path)
        for a in args:  # scalar unions: first that fits without problems
            trial = _Builder()
            out = trial.value(a, raw, path)
            if not trial.problems:
                return out
        self.fail(path, f"has an unsupported value {raw!r}")
        return None

    def table(self, cls: type[T], raw: Any, path: str) -> T | None:
        if not isinstance(raw, Mapping):
            self.fail(path, f"must be a table, got {type(raw).__name__}")
            return None
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        raw = dict(raw)
        kwargs: dict[str, Any] = {}
        # Secrets may come from a sibling "<name>_file" key.
        for name in fields:
            if hints[name] in (Secret, Secret | None) and f"{name}_file" in raw:
                if name in raw:
                    self.fail(_join(path, name), f"give either {name} or {name}_file, not both")
                fpath = raw.pop(f"{name}_file")
                if isinstance(fpath, str) and fpath:
                    kwargs[name] = Secret(file=fpath)
                else:
                    self.fail(_join(path, f"{name}_file"), "must be a file path")
        for key in raw:
            if key not in fields:
                self.fail(_join(path, key), "unknown key")
        before = len(self.problems)
        for name, f in fields.items():
            key = _join(path, name)
            if name in kwargs:
                continue
            if name not in raw:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.fail(key, "is required")
                continue
            val = self.value(hints[name], raw[name], key)
            self._constraints(f.metadata, val, key)
            kwargs[name] = val
        if len(self.problems) > before:
            return None
        try:
            obj = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            self.fail(path, str(exc))
            return None
        check = getattr(obj, "problems", None)
        if callable(check):
            for k, msg in check():
                self.fail(_join(path, k), msg)
        return obj

    def _constraints(self, meta: Mapping[str, Any], val: Any, key: str) -> None:
        if val is None:
            return
        for name, op, word in (("gt", float.__gt__, ">"), ("ge", float.__ge__, ">="),
                               ("lt", float.__lt__, "<"), ("le", float.__le__, "<=")):
            if name in meta and isinstance(val, int | float) and not op(float(val),
                                                                       float(meta[name])):
                self.fail(key, f"must be {word} {meta[name]}")
        if "min_len" in meta and len(val) < meta["min_len"]:
            self.fail(key, f"must have at least {meta['min_len']} item(s)")
        if "pattern" in meta and isinstance(val, str) and not re.fullmatch(meta["pattern"], val):
            self.fail(key, f"must match {meta['pattern']}")


def build(cls: type[T], raw: Mapping[str, Any], path: str = "") -> T:
    """Build ``cls`` from a parsed TOML table or raise :class:`ConfigError` with every problem."""
    b = _Builder()
    obj = b.table(cls, raw, path)
    if b.problems or obj is None:
        raise ConfigError(b.problems or [ConfigProblem(path or "<root>", "invalid")])
    return obj


def check(cls: type[Any], raw: Mapping[str, Any], path: str = "") -> list[ConfigProblem]:
    b = _Builder()
    b.table(cls, raw, path)
    return b.problems


def field(default: Any = dataclasses.MISSING, **constraints: Any) -> Any:
    """A dataclass field with constraints (``gt``, ``ge``, ``lt``, ``le``, ``min_len``,
    ``pattern``). Mutable defaults are not allowed: use tuples."""
    return dataclasses.field(default=default, metadata=constraints)


def problems_of(items: Iterable[tuple[str, str]]) -> list[ConfigProblem]:
    return [ConfigProblem(k, m) for k, m in items]
