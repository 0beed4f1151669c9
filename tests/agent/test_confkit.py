"""confkit: typed frozen config, every problem named by its key, secrets never shown."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import pytest

from edge_agent.confkit import ByteSize, ConfigError, Duration, Secret, build, check, field


@dataclass(frozen=True)
class Point:
    kind: Literal["point"]
    address: int = field(0, ge=0, le=65535)


@dataclass(frozen=True)
class Other:
    kind: Literal["other"]
    text: str = "x"


@dataclass(frozen=True)
class Device:
    name: str
    poll_interval: Duration = field(Duration(1.0), gt=0)
    quota: ByteSize = ByteSize(1024)
    password: Secret | None = None
    points: tuple[Point | Other, ...] = ()
    tags: dict[str, float] = dataclasses.field(default_factory=dict)

    def problems(self) -> list[tuple[str, str]]:
        return [("name", "must not be 'bad'")] if self.name == "bad" else []


@dataclass(frozen=True)
class Root:
    devices: tuple[Device, ...] = ()
    mode: Literal["a", "b"] = "a"


@pytest.mark.parametrize(("raw", "seconds"), [
    ("250ms", 0.25), ("5s", 5.0), ("1.5m", 90.0), ("2h", 7200.0), ("1d", 86400.0), (3, 3.0),
    ("100us", 1e-4),
])
def test_duration_forms(raw: object, seconds: float) -> None:
    assert Duration.parse(raw) == pytest.approx(seconds)


@pytest.mark.parametrize(("raw", "size"), [
    ("2GiB", 2 * 1024**3), ("512kB", 512_000), ("10MB", 10_000_000), (4096, 4096),
    ("1.5KiB", 1536),
])
def test_size_forms(raw: object, size: int) -> None:
    assert ByteSize.parse(raw) == size


@pytest.mark.parametrize("raw", ["5 parsecs", "fast", True, "-1s", ""])
def test_duration_rejects(raw: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        Duration.parse(raw)


def test_builds_nested_frozen_objects() -> None:
    cfg = build(Root, {"devices": [{"name": "d1", "poll_interval": "250ms", "quota": "1MiB",
                                    "points": [{"kind": "point", "address": 7},
                                               {"kind": "other"}],
                                    "tags": {"a": 1}}]})
    d = cfg.devices[0]
    assert d.poll_interval == 0.25 and d.quota == 1024**2
    assert isinstance(d.points[0], Point) and d.points[0].address == 7
    assert isinstance(d.points[1], Other)
    assert d.tags["a"] == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        d.tags["b"] = 2.0  # type: ignore[index]


def test_every_problem_is_named_by_key() -> None:
    raw = {"mode": "c", "extra": 1,
           "devices": [{"name": "ok"},
                       {"name": "d", "poll_interval": 0, "points": [{"kind": "nope"},
                                                                    {"kind": "point",
                                                                     "address": -1}]},
                       {"poll_interval": "soon"}]}
    problems = {str(p) for p in check(Root, raw)}
    assert "mode: must be one of 'a', 'b', got 'c'" in problems
    assert "extra: unknown key" in problems
    assert "devices[1].poll_interval: must be > 0" in problems
    assert "devices[1].points[0].kind: must be one of 'point', 'other', got 'nope'" in problems
    assert "devices[1].points[1].address: must be >= 0" in problems
    assert "devices[2].name: is required" in problems
    assert any(p.startswith("devices[2].poll_interval: cannot read 'soon'") for p in problems)
    with pytest.raises(ConfigError) as ei:
        build(Root, raw)
    assert len(str(ei.value).splitlines()) == len(problems)


def test_cross_field_problems_hook() -> None:
    assert [str(p) for p in check(Root, {"devices": [{"name": "bad"}]})] == [
        "devices[0].name: must not be 'bad'"]


def test_secret_by_env_and_file_is_resolved_on_use_and_never_shown(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    f = Path(str(tmp_path)) / "pw"
    f.write_text("s3cret-file\n")
    monkeypatch.setenv("EDGE_TEST_PW", "s3cret-env")
    by_env = build(Device, {"name": "a", "password": "${EDGE_TEST_PW}"})
    by_file = build(Device, {"name": "a", "password_file": str(f)})
    literal = build(Device, {"name": "a", "password": "s3cret-lit"})
    assert by_env.password is not None and by_env.password.reveal() == "s3cret-env"
    assert by_file.password is not None and by_file.password.reveal() == "s3cret-file"
    for cfg in (by_env, by_file, literal):
        assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.password)
    monkeypatch.delenv("EDGE_TEST_PW")
    with pytest.raises(LookupError, match="EDGE_TEST_PW"):
        by_env.password.reveal()
    both = {str(p) for p in check(Device, {"name": "a", "password": "x", "password_file": "y"})}
    assert "password: give either password or password_file, not both" in both
