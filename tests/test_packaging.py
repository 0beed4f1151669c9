"""``pip install .`` builds a complete wheel without setuptools warnings, and a daemon-only install
does not pull in the training stack.

The wheel is built (``pip wheel --no-deps``, with build isolation as ``pip install .`` does) from
a copy of the package folders, so the check sees the working tree, not only committed files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("edge_agent", "agent", "drivers", "models", "sync")
TRAIN_ONLY = ("scikit-learn", "skl2onnx", "onnx", "joblib", "skops")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, str]:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    for d in PACKAGE_DIRS:
        shutil.copytree(REPO / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w",
                           str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = out.glob("*.whl")
    return zipfile.ZipFile(whl), proc.stdout + proc.stderr


def test_no_setuptools_warnings(wheel: tuple[zipfile.ZipFile, str]) -> None:
    _, log = wheel
    warnings = [line.strip() for line in log.splitlines()
                if re.search(r"warn", line, re.I) and "byte-compiling is disabled" not in line]
    assert warnings == []


def test_wheel_holds_every_package_and_data_file(wheel: tuple[zipfile.ZipFile, str]) -> None:
    zf, _ = wheel
    names = set(zf.namelist())
    for d in PACKAGE_DIRS:
        top = REPO / d
        for f in top.rglob("*.py"):
            if "__pycache__" in f.parts:
                continue
            rel = f.relative_to(top).as_posix()
            want = f"edge_agent/{rel}" if d == "edge_agent" else f"edge_agent/{d}/{rel}"
            assert want in names, f"{f.relative_to(REPO)} is not in the wheel"
    bundles = [p for p in (REPO / "models" / "bundles").iterdir() if p.is_dir()]
    assert bundles
    for b in bundles:
        for f in b.iterdir():
            assert f"edge_agent/models/bundles/{b.name}/{f.name}" in names
    assert "edge_agent/agent/default.toml" in names
    assert not any(n.startswith(("tests/", "edge_agent/tests/")) for n in names)


def test_training_stack_is_an_extra(wheel: tuple[zipfile.ZipFile, str]) -> None:
    zf, _ = wheel
    (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [line.removeprefix("Requires-Dist: ")
                for line in zf.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist: ")]
    for dist in TRAIN_ONLY:
        found = [r for r in requires if re.match(rf"{re.escape(dist)}\b(?![-\w])", r)]
        assert found, f"{dist} missing"
        assert all('extra == "train"' in r for r in found), found
