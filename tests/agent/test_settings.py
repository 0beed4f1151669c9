"""settings: typed frozen config on pydantic, each problem named by its key, secrets never shown."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field, ValidationError

from edge_agent.errors import EdgeAgentError
from edge_agent.settings import (
    ByteSize,
    ConfigError,
    Duration,
    Model,
    SecretField,
    check,
    parse,
    parse_bytes,
    parse_duration,
    world_problems,
)


class Point(Model):
    kind: Literal["point"]
    address: int = Field(0, ge=0, le=65535)


class Other(Model):
    kind: Literal["other"]
    text: str = "x"


class Device(Model):
    name: str
    poll_interval: Duration = Field(1.0, gt=0)
    quota: ByteSize = 1024
    password: SecretField | None = None
    points: tuple[Annotated[Point | Other, Field(discriminator="kind")], ...] = ()
    tags: dict[str, float] = Field(default_factory=dict)

    def problems(self) -> list[tuple[str, str]]:
        return [("name", "must not be 'bad'")] if self.name == "bad" else []


class Root(Model):
    devices: tuple[Device, ...] = ()
    mode: Literal["a", "b"] = "a"


@pytest.mark.parametrize(("raw", "seconds"), [
    ("250ms", 0.25), ("5s", 5.0), ("1.5m", 90.0), ("2h", 7200.0), ("1d", 86400.0), (3, 3.0),
    ("100us", 1e-4),
])
def test_duration_forms(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == pytest.approx(seconds)


@pytest.mark.parametrize(("raw", "size"), [
    ("2GiB", 2 * 1024**3), ("512kB", 512_000), ("10MB", 10_000_000), (4096, 4096),
    ("1.5KiB", 1536),
])
def test_size_forms(raw: object, size: int) -> None:
    assert parse_bytes(raw) == size


@pytest.mark.parametrize("raw", ["5 parsecs", "fast", True, "-1s", ""])
def test_duration_rejects(raw: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(raw)


def test_builds_nested_frozen_objects() -> None:
    cfg = parse(Root, {"devices": [{"name": "d1", "poll_interval": "250ms", "quota": "1MiB",
                                    "points": [{"kind": "point", "address": 7},
                                               {"kind": "other"}],
                                    "tags": {"a": 1}}]})
    d = cfg.devices[0]
    assert d.poll_interval == 0.25 and d.quota == 1024**2
    assert isinstance(d.points[0], Point) and d.points[0].address == 7
    assert isinstance(d.points[1], Other)
    assert d.tags["a"] == 1.0
    with pytest.raises(ValidationError, match="frozen"):
        d.name = "x"  # type: ignore[misc]


def test_every_problem_is_named_by_key_once() -> None:
    raw = {"mode": "c", "extra": 1,
           "devices": [{"name": "ok"},
                       {"name": "d", "poll_interval": 0, "points": [{"kind": "nope"},
                                                                    {"kind": "point",
                                                                     "address": -1}]},
                       {"poll_interval": "soon"}]}
    problems = {str(p) for p in check(Root, raw)}
    assert "mode: must be one of 'a' or 'b', got 'c'" in problems
    assert "extra: unknown key" in problems
    assert "devices[1].poll_interval: must be > 0" in problems
    assert "devices[1].points[0].kind: must be one of 'point', 'other', got 'nope'" in problems
    assert "devices[1].points[1].address: must be >= 0" in problems
    assert "devices[2].name: is required" in problems
    assert any(p.startswith("devices[2].poll_interval: cannot read 'soon'") for p in problems)
    with pytest.raises(ConfigError) as ei:
        parse(Root, raw)
    assert len(str(ei.value).splitlines()) == len(problems) == 7
    assert isinstance(ei.value, EdgeAgentError)


@pytest.mark.parametrize(("raw", "line"), [
    ({"name": 5}, "name: must be a string, got 5"),
    ({"name": "a", "poll_interval": True}, "poll_interval: expected a duration"),
    ({"name": "a", "quota": ["1"]}, "quota: cannot read ['1'] as a size"),
    ({"name": ["a"]}, "name: must be a string, got ['a']"),
    ({"name": "a", "points": {"kind": "point"}}, "points: must be a list"),
    ({"name": "a", "points": [{"kind": ["point"]}]},
     "points[0].kind: must be one of 'point', 'other', got ['point']"),
    ({"name": "a", "tags": {"x": "1"}}, "tags.x: must be a finite number, got '1'"),
    ({"name": "a", "tags": {"x": float("nan")}}, "tags.x: must be a finite number, got nan"),
])
def test_a_wrong_type_is_one_line_and_no_false_second_one(raw: dict[str, object],
                                                          line: str) -> None:
    found = [str(p) for p in check(Device, raw)]
    assert len(found) == 1 and found[0].startswith(line), found


def test_cross_field_problems_hook_runs_beside_sibling_errors() -> None:
    assert [str(p) for p in check(Root, {"devices": [{"name": "bad"}]})] == [
        "devices[0].name: must not be 'bad'"]
    both = {str(p) for p in check(Root, {"mode": "z", "devices": [{"name": "bad"}]})}
    assert both == {"devices[0].name: must not be 'bad'",
                    "mode: must be one of 'a' or 'b', got 'z'"}
    # a model built in code is trusted (as a dataclass was): the hook runs through parse()
    assert Device(name="bad").problems()


def test_secret_by_env_and_file_is_resolved_on_use_and_never_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pw"
    f.write_text("s3cret-file\n")
    monkeypatch.setenv("EDGE_TEST_PW", "s3cret-env")
    by_env = parse(Device, {"name": "a", "password": "${EDGE_TEST_PW}"})
    by_file = parse(Device, {"name": "a", "password_file": str(f)})
    literal = parse(Device, {"name": "a", "password": "s3cret-lit"})
    assert by_env.password is not None and by_env.password.reveal() == "s3cret-env"
    assert by_file.password is not None and by_file.password.reveal() == "s3cret-file"
    for cfg in (by_env, by_file, literal):
        assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.password)
        assert "s3cret" not in cfg.model_dump_json()
    assert world_problems(by_env) == [] and world_problems(by_file) == []
    monkeypatch.delenv("EDGE_TEST_PW")
    with pytest.raises(LookupError, match="EDGE_TEST_PW"):
        by_env.password.reveal()
    assert [str(p) for p in world_problems(by_env)] == [
        "password: environment variable EDGE_TEST_PW is not set"]
    f.unlink()
    assert [str(p) for p in world_problems(by_file)] == [
        f"password: cannot read {f}: No such file or directory"]
    both = {str(p) for p in check(Device, {"name": "a", "password": "x", "password_file": "y"})}
    assert both == {"password: give either password or password_file, not both"}
