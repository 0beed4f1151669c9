"""Any wrong value anywhere in the full example config is a ConfigError with key paths, never
another exception (no traceback from check-config), before or after the world checks."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_agent.agent import config
from edge_agent.settings import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
WRONG: list[Any] = [["x"], {"kind": ["x"]}, "a\x00b", True, 1e308, float("nan")]


def _leaves(obj: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    if path:
        yield path


def _set(obj: Any, path: tuple[str | int, ...], value: Any) -> None:
    for part in path[:-1]:
        obj = obj[part]
    obj[path[-1]] = value


def test_every_key_of_the_example_with_every_wrong_value() -> None:
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    refused = 0
    for path in list(_leaves(raw)):
        for value in WRONG:
            bad = copy.deepcopy(raw)
            _set(bad, path, value)
            try:
                config.world_problems(config.parse(bad))
            except ConfigError as exc:
                refused += 1
                assert exc.problems and all(p.key and p.message for p in exc.problems)
    assert refused > 1000
