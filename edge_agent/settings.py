"""Typed, frozen configuration on pydantic v2: the base model, value types and error report.

Every configuration section is a :class:`Model` (frozen, unknown keys refused, strict types:
``"5"`` is not an integer, ``true`` is not a number, NaN/Inf are refused). Value types:

* :data:`Duration` — seconds from ``"250ms"``, ``"5s"``, ``"10m"``, ``"2h"``, ``"1d"`` or a
  number; :data:`ByteSize` — bytes from ``"512kB"``, ``"64MiB"`` or a number;
* :class:`Secret` — a literal, ``"${ENV_VAR}"``, or a sibling ``<name>_file`` key; resolved
  only when used, never printed (``repr`` names where it comes from, not the value).

:func:`parse` turns a parsed TOML table into a model or raises :class:`ConfigError` listing
*every* problem once, with its key path (``drivers[2].node_id: …``). Cross-field checks go in a
model's ``problems()`` method (keys relative to that table), run after the fields validate.
Checks of the world (files exist, environment variables set) go in ``world_problems()`` and run
only through :func:`world_problems` (``check-config`` and start-up), never while parsing.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from edge_agent.errors import ConfigError, ConfigProblem

__all__ = [
    "ByteSize",
    "ConfigError",
    "ConfigProblem",
    "Duration",
    "Model",
    "Secret",
    "parse",
    "parse_bytes",
    "parse_duration",
    "world_problems",
]

M = TypeVar("M", bound="Model")

_DUR_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
              "d": 86400.0}
_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_duration(raw: object) -> float:
    """Seconds from ``"250ms"``, ``"1.5s"``, ``"10m"``, ``"2h"``, ``"1d"`` or a number >= 0."""
    if isinstance(raw, bool):
        raise ValueError('expected a duration such as "250ms" or "5s"')
    if isinstance(raw, int | float):
        if not math.isfinite(raw) or raw < 0:
            raise ValueError(f"{raw!r} is not a duration (a finite number of seconds >= 0)")
        return float(raw)
    if isinstance(raw, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]+)\s*", raw)
        if m and m.group(2) in _DUR_UNITS:
            return float(m.group(1)) * _DUR_UNITS[m.group(2)]
    raise ValueError(f'cannot read {raw!r} as a duration (e.g. "250ms", "5s", "2h")')


def parse_bytes(raw: object) -> int:
    """Bytes from ``"2GiB"``, ``"512kB"``, ``"10MB"`` or a whole number >= 0."""
    if isinstance(raw, bool):
        raise ValueError('expected a size such as "512MiB"')
    if isinstance(raw, int):
        if raw < 0:
            raise ValueError(f"{raw!r} is not a size (bytes >= 0)")
        return raw
    if isinstance(raw, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]+)\s*", raw)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f'cannot read {raw!r} as a size (e.g. "512MiB", "2GiB")')


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_bytes)]


@dataclass(frozen=True)
class Secret:
    """A secret by value, by environment variable or by file; resolved on use, never shown."""

    literal: str | None = None
    env: str | None = None
    file: str | None = None

    @classmethod
    def of(cls, raw: object) -> Secret:
        if isinstance(raw, Secret):
            return raw
        if not isinstance(raw, str):
            raise ValueError('must be a string (a value, or "${ENV_VAR}")')
        m = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", raw)
        return cls(env=m.group(1)) if m else cls(literal=raw)

    def reveal(self) -> str:
        """Resolve the secret (reads the file or the environment). Raises ``LookupError`` or
        ``OSError``; the message never contains the secret."""
        if self.literal is not None:
            return self.literal
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise LookupError(f"environment variable {self.env} is not set")
            return value
        if self.file is not None:
            return Path(self.file).read_text(encoding="utf-8").replace("\ufeff", "").strip()
        raise LookupError("secret is empty")

    def problem(self) -> str | None:
        """Why this secret cannot be resolved now (for ``check-config``), or None."""
        if self.env is not None and self.env not in os.environ:
            return f"environment variable {self.env} is not set"
        if self.file is not None:
            try:
                Path(self.file).read_bytes()
            except OSError as exc:
                return f"cannot read {self.file}: {exc.strerror or exc}"
        return None

    def describe(self) -> str:
        if self.env is not None:
            return f"<from ${{{self.env}}}>"
        if self.file is not None:
            return f"<from file {self.file}>"
        return "<set>" if self.literal is not None else "<unset>"

    def __repr__(self) -> str:
        return f"Secret({self.describe()})"

    __str__ = __repr__


SecretField = Annotated[Secret, BeforeValidator(Secret.of),
                        PlainSerializer(lambda s: s.describe(), return_type=str)]


def _is_secret(annotation: Any) -> bool:
    text = repr(annotation)
    return "Secret" in text


class Model(BaseModel):
    """Base of every configuration section: frozen, strict, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False,
                              arbitrary_types_allowed=True, validate_default=False)

    _secret_fields: ClassVar[tuple[str, ...] | None] = None

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        """``<name>_file = "/path"`` gives a secret field ``<name>`` read from that file."""
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for name, info in cls.model_fields.items():
            if not _is_secret(info.annotation):
                continue
            fkey = f"{name}_file"
            if fkey not in out:
                continue
            fpath = out.pop(fkey)
            if name in out:
                raise ValueError(f"give either {name} or {fkey}, not both")
            if not isinstance(fpath, str) or not fpath:
                raise ValueError(f"{fkey} must be a file path")
            out[name] = Secret(file=fpath)
        return out

    def problems(self) -> Iterable[tuple[str, str]]:
        """Cross-field problems as ``(key relative to this table, message)``."""
        return ()

    def world_problems(self) -> Iterable[tuple[str, str]]:
        """Problems with the world this table names (missing files, …); not run at parse."""
        return ()


# -- walking a built configuration ------------------------------------------------------------
def _children(obj: Model, path: str) -> Iterator[tuple[str, Any]]:
    for name in type(obj).model_fields:
        val = getattr(obj, name)
        key = f"{path}.{name}" if path else name
        if isinstance(val, tuple):
            for i, item in enumerate(val):
                yield f"{key}[{i}]", item
        elif isinstance(val, Mapping):
            for k, item in val.items():
                yield f"{key}.{k}", item
        else:
            yield key, val


def _walk(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, obj
    if isinstance(obj, Model):
        for key, val in _children(obj, path):
            yield from _walk(val, key)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else (path or key or "<root>")


def model_problems(root: Model, path: str = "") -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    for key, obj in _walk(root, path):
        if isinstance(obj, Model):
            out += [ConfigProblem(_join(key, k), m) for k, m in obj.problems()]
    return out


def world_problems(root: Model, path: str = "") -> list[ConfigProblem]:
    """Unset environment variables, unreadable secret files and each table's own
    ``world_problems()`` (files named by the config), with their key paths."""
    out: list[ConfigProblem] = []
    for key, obj in _walk(root, path):
        if isinstance(obj, Secret):
            why = obj.problem()
            if why:
                out.append(ConfigProblem(key, why))
        elif isinstance(obj, Model):
            out += [ConfigProblem(_join(key, k), m) for k, m in obj.world_problems()]
    return out


# -- parsing ------------------------------------------------------------------------------------
def _tuples(raw: Any) -> Any:
    """TOML arrays become tuples (the models are frozen; strict mode wants tuples)."""
    if isinstance(raw, list):
        return tuple(_tuples(v) for v in raw)
    if isinstance(raw, Mapping):
        return {k: _tuples(v) for k, v in raw.items()}
    return raw


def _loc(loc: tuple[int | str, ...], tags: frozenset[str], base: str) -> str:
    out = base
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in tags or part.startswith(("function-", "tagged-union")):
            continue  # pydantic's union tag / validator names are not keys of the file
        else:
            out = f"{out}.{part}" if out else part
    return out or "<root>"


def _message(err: Mapping[str, Any]) -> str:
    kind, got = err["type"], err.get("input")
    shown = "" if isinstance(got, Mapping) else f", got {got!r}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind == "string_type":
        return f"must be a string{shown}"
    if kind in ("int_type", "int_from_float"):
        return f"must be an integer{shown}"
    if kind in ("float_type", "finite_number"):
        return f"must be a finite number{shown}"
    if kind == "bool_type":
        return f"must be true or false{shown}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list{shown}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a table, got {type(got).__name__}"
    if kind == "literal_error":
        return f"must be one of {err['ctx']['expected']}{shown}"
    if kind == "union_tag_invalid":
        return f"must be one of {err['ctx']['expected_tags']}, got {err['ctx']['tag']!r}"
    if kind == "union_tag_not_found":
        return "needs a kind"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    msg = str(err["msg"])
    return msg[:1].lower() + msg[1:] + (shown if kind.startswith(("greater", "less")) else "")


def problems_from(exc: ValidationError, base: str = "",
                  tags: frozenset[str] = frozenset()) -> list[ConfigProblem]:
    """One problem per key path (the first pydantic reports): never a false second line."""
    seen: dict[str, ConfigProblem] = {}
    for err in exc.errors(include_url=False):
        key = _loc(tuple(err["loc"]), tags, base)
        if key not in seen and not any(key.startswith(k + ".") or key.startswith(k + "[")
                                       for k in seen):
            seen[key] = ConfigProblem(key, _message(err))
    return list(seen.values())


def parse(cls: type[M], raw: Mapping[str, Any], path: str = "",
          tags: frozenset[str] = frozenset()) -> M:
    """Build ``cls`` from a parsed TOML table or raise :class:`ConfigError` with every problem.

    ``tags`` names discriminator values that pydantic puts into error locations (the ``kind``
    of a driver) so they can be left out of key paths."""
    try:
        obj = cls.model_validate(_tuples(raw))
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, path, tags)) from None
    found = model_problems(obj, path)
    if found:
        raise ConfigError(found)
    return obj
