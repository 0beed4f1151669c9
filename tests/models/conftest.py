"""Fixtures for model tests: a small fitted pipeline and its bundle (built once per session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

NAMES = tuple(f"h_f{i}" for i in range(22))
CONTRACT: dict[str, Any] = {"kind": "vibration", "sample_rate": 48000.0, "window": 2048,
                            "hop": 1024, "channels": ["h"], "bands": [[10.0, 1000.0]]}


def training_matrix(n: int = 1200, seed: int = 0) -> np.ndarray:
    """Same distribution for every seed (fixed per-feature scale and offset), new draws."""
    scales = np.geomspace(1e-3, 1e3, len(NAMES))
    offsets = np.random.default_rng(12345).normal(size=len(NAMES)) * scales * 5
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, len(NAMES)))
    base[:, 1] = base[:, 0] * 0.8 + base[:, 1] * 0.2  # some correlation
    return base * scales + offsets


@pytest.fixture(scope="session")
def X_train() -> np.ndarray:
    return training_matrix()


@pytest.fixture(scope="session")
def pipeline(X_train: np.ndarray) -> Any:
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), IsolationForest(n_estimators=100, random_state=0)
                         ).fit(X_train)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, pipeline: Any,
               X_train: np.ndarray) -> Path:
    from edge_agent.models.training.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "vib"
    return export_bundle(pipeline, X_train, NAMES, CONTRACT, out, name="vib_test",
                         version="7", kind="vibration", source={"kind": "test"})
