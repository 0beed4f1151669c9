"""Typed, frozen configuration on pydantic v2: the base model, value types and error report.

Every configuration section is a :class:`Model` (frozen, unknown keys refused, strict types:
``"5"`` is not an integer, ``true`` is not a number, NaN/Inf are refused). Value types:

* :data:`Duration` — seconds from ``"250ms"``, ``"5s"``, ``"10m"``, ``"2h"``, ``"1d"`` or a
  number; :data:`ByteSize` — bytes from ``"512kB"``, ``"64MiB"`` or a number;
* :class:`Secret` — a literal, ``"${ENV_VAR}"``, or a sibling ``<name>_file`` key; resolved
  only when used, never printed (``repr`` names where it comes from, not the value).

:func:`parse` turns a parsed TOML table into a model or raises :class:`ConfigError` listing
*every* problem once, with its key path (``drivers[2].node_id: …``). Cross-field checks go in a
model's ``problems()`` method (keys relative to that table); they run as that table's last
validation step, so a table whose fields are valid reports its cross-field problems even when a
sibling table has errors. A validator may raise :class:`Problems` to report several keys at once.
Checks of the world (files exist, environment variables set) go in ``world_problems()`` and run
only through :func:`world_problems` (``check-config`` and start-up), never while parsing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from edge_agent.errors import ConfigError, ConfigProblem, EdgeAgentError
from edge_agent.units import ByteSize, Duration, parse_bytes, parse_duration
from edge_agent.units import show as _show

__all__ = [
    "ByteSize",
    "ConfigError",
    "ConfigProblem",
    "Duration",
    "Model",
    "Problems",
    "Secret",
    "SecretField",
    "check",
    "parse",
    "parse_bytes",
    "parse_duration",
    "world_problems",
]

M = TypeVar("M", bound="Model")



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
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
                return f"cannot read {self.file}: {getattr(exc, 'strerror', None) or exc}"
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


_PARSE_KEY = "edge_agent.settings.parse"
_PARSING: dict[str, bool] = {_PARSE_KEY: True}  # validation context of parse()


class Problems(EdgeAgentError, ValueError):
    """Raised by a validator to report several problems, keys relative to the table."""

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{k}: {m}" if k else m for k, m in self.problems))


def _is_secret(annotation: Any) -> bool:
    text = repr(annotation)
    return "Secret" in text


class Model(BaseModel):
    """Base of every configuration section: frozen, strict, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False,
                              arbitrary_types_allowed=True, validate_default=False)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind = cls.model_fields.get("kind")
        if kind is not None and get_origin(kind.annotation) is Literal:
            _TAGS.update(str(a) for a in get_args(kind.annotation))

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
                raise Problems([(name, f"give either {name} or {fkey}, not both")])
            if not isinstance(fpath, str) or not fpath:
                raise Problems([(fkey, "must be a file path")])
            out[name] = Secret(file=fpath)
        return out

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Self:
        """Run ``problems()`` when validating through :func:`parse` (a model built in code is
        trusted, as a dataclass would be; tests build deliberately odd ones)."""
        if isinstance(info.context, Mapping) and info.context.get(_PARSE_KEY):
            try:
                found = list(self.problems())
            except (ArithmeticError, ValueError) as exc:  # e.g. 10 ** (gain_db / 20) overflows
                found = [("", f"values out of range ({exc})")]
            if found:
                raise Problems(found)
        return self

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
            try:
                found = list(obj.world_problems())
            except (OSError, ValueError) as exc:  # ValueError: a NUL in a path
                found = [("", f"cannot be checked: {exc}")]
            out += [ConfigProblem(_join(key, k), m) for k, m in found]
    return out


# -- parsing ------------------------------------------------------------------------------------
def _tuples(raw: Any) -> Any:
    """TOML arrays become tuples (the models are frozen; strict mode wants tuples)."""
    if isinstance(raw, list):
        return tuple(_tuples(v) for v in raw)
    if isinstance(raw, Mapping):
        return {k: _tuples(v) for k, v in raw.items()}
    return raw


_TAGS: set[str] = set()  # every ``kind`` value of a Model: pydantic puts it in union error paths


def _loc(loc: tuple[int | str, ...], tags: frozenset[str], base: str) -> str:
    out = base
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in tags or part in _TAGS or part.startswith(("function-", "tagged-union")):
            continue  # pydantic's union tag / validator names are not keys of the file
        else:
            out = f"{out}.{part}" if out else part
    return out or "<root>"


def _num(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}
_TYPES = {"string_type": "a string", "int_type": "an integer", "int_from_float": "an integer",
          "float_type": "a finite number", "finite_number": "a finite number",
          "bool_type": "true or false", "tuple_type": "a list", "list_type": "a list"}


def _message(err: Mapping[str, Any]) -> str:
    kind, got, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    shown = "" if isinstance(got, Mapping) else f", got {_show(got)}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}{shown}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a table, got {type(got).__name__}"
    if kind in _BOUNDS:
        name, word = _BOUNDS[kind]
        return f"must be {word} {_num(ctx[name])}"
    if kind in ("too_short", "string_too_short"):
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must have at least {n} items"
    if kind in ("too_long", "string_too_long"):
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}{shown}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}{shown}"
    if kind == "union_tag_invalid":
        tag = got.get(_unquote(ctx["discriminator"])) if isinstance(got, Mapping) else ctx["tag"]
        return f"must be one of {ctx['expected_tags']}, got {_show(tag)}"
    if kind == "union_tag_not_found":
        return f"is required (one of the kinds: {ctx.get('expected_tags', 'see the docs')})" \
            if "expected_tags" in ctx else "is required"
    if kind == "value_error":
        return str(ctx["error"])
    msg = str(err["msg"])
    return msg[:1].lower() + msg[1:]


def _unquote(text: str) -> str:
    return text.strip("'\"")


def problems_from(exc: ValidationError, base: str = "",
                  tags: frozenset[str] = frozenset()) -> list[ConfigProblem]:
    """One problem per key path from pydantic (the first it reports, nothing under a key that
    already failed): never a false second line. A table's own ``problems()`` may name one key
    several times, each a real problem."""
    out: list[ConfigProblem] = []
    failed: set[str] = set()
    for err in exc.errors(include_url=False):
        key = _loc(tuple(err["loc"]), tags, base)
        ctx = err.get("ctx") or {}
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            key = _join(key if key != "<root>" else "", _unquote(ctx["discriminator"]))
        found = ctx.get("error")
        if err["type"] == "value_error" and isinstance(found, Problems):
            for k, m in found.problems:
                p = ConfigProblem(_join(key if key != "<root>" else "", k), m)
                if p not in out:
                    out.append(p)
            continue
        if key in failed or any(key.startswith(k + ".") or key.startswith(k + "[")
                                for k in failed):
            continue  # under a key that already failed
        if any(p.key.startswith(key + ".") or p.key.startswith(key + "[") for p in out):
            continue  # e.g. "must not be empty" for a list whose only item failed
        failed.add(key)
        out.append(ConfigProblem(key, _message(err)))
    return out


def parse(cls: type[M], raw: Mapping[str, Any], path: str = "",
          tags: frozenset[str] = frozenset()) -> M:
    """Build ``cls`` from a parsed TOML table or raise :class:`ConfigError` with every problem.

    ``path`` prefixes every key (``drivers[2]``); ``tags`` names extra discriminator values
    that pydantic puts into error locations, to be left out of key paths."""
    try:
        return cls.model_validate(_tuples(raw), context=_PARSING)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, path, tags)) from None


def check(cls: type[Model], raw: Mapping[str, Any], path: str = "") -> list[ConfigProblem]:
    """Every problem :func:`parse` would raise, as a list (empty: the table is valid)."""
    try:
        parse(cls, raw, path)
    except ConfigError as exc:
        return exc.problems
    return []
