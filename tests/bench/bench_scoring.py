"""Scoring speed: stock skl2onnx IsolationForest graph vs the folded single-op graph vs sklearn.

    .venv/bin/python tests/bench/bench_scoring.py

StandardScaler + IsolationForest(100 trees) on 22 real-shaped features (the simulator's
2-channel vibration features), onnxruntime with one intra-op thread, batch 1 and batch 256.
Also checks both graphs give the same scores (max |diff|).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import onnxruntime as ort
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edge_agent.models.onnx_score import Scorer, session_options
from edge_agent.models.training.export import stock_onnx
from edge_agent.models.training.fastforest import fold_isolation_forest, split_pipeline

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))  # the repo root, for tests.tools
from tests.tools.train_defaults import simulator_features


def per_call(fn: Callable[[], object], n: int, repeats: int = 5) -> float:
    """Median over repeats of the mean time per call, seconds."""
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t) / n)
    return statistics.median(out)


def main() -> None:
    Xv, _, _, _ = simulator_features(70.0, fault="none", seed=5)
    assert Xv.shape[1] == 22, Xv.shape
    pipe = make_pipeline(StandardScaler(), IsolationForest(n_estimators=100, random_state=0))
    pipe.fit(Xv)
    affine, forest = split_pipeline(pipe)
    t = time.perf_counter()
    fast = fold_isolation_forest(forest, affine).SerializeToString()
    t_fold = time.perf_counter() - t
    t = time.perf_counter()
    stock = stock_onnx(pipe, 22).SerializeToString()
    t_stock = time.perf_counter() - t
    so = session_options(1)
    s_fast = ort.InferenceSession(fast, so, providers=["CPUExecutionProvider"])
    s_stock = ort.InferenceSession(stock, so, providers=["CPUExecutionProvider"])
    in_stock = s_stock.get_inputs()[0].name
    rng = np.random.default_rng(0)
    X = (Xv[rng.integers(0, len(Xv), 256)] * rng.uniform(0.7, 1.5, (256, 1))).astype(np.float32)
    off = float(pipe[-1].offset_)
    a = s_fast.run(["score"], {"X": X})[0].ravel()
    b = -(s_stock.run(["scores"], {in_stock: X})[0].ravel() + off)
    c = -pipe.score_samples(X.astype(np.float64))
    print(f"graphs: fast {len(fast) / 1024:.0f} KiB (2 nodes, built in {t_fold:.2f} s); stock "
          f"{len(stock) / 1024:.0f} KiB ({len(stock_onnx(pipe, 22).graph.node)} nodes, "
          f"converted in {t_stock:.2f} s)")
    print(f"max |fast - stock| = {np.abs(a - b).max():.2e}, max |fast - sklearn| = "
          f"{np.abs(a - c).max():.2e}, max |stock - sklearn| = {np.abs(b - c).max():.2e}")
    print(f"{'':28s} {'batch 1 (µs/call)':>18s} {'batch 256 (µs/row)':>19s}")
    rows: list[tuple[str, Callable[[np.ndarray], object], int, int]] = [
        ("sklearn score_samples", lambda x: pipe.score_samples(x.astype(np.float64)), 200, 20),
        ("skl2onnx stock graph", lambda x: s_stock.run(None, {in_stock: x}), 300, 30),
        ("folded single-op graph", lambda x: s_fast.run(["score"], {"X": x}), 5000, 500),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        from edge_agent.models.training.export import export_bundle

        names = tuple(f"f{i}" for i in range(22))
        path = export_bundle(pipe, Xv, names, {"kind": "vibration"}, Path(tmp) / "b", name="b")
        scorer = Scorer.load(path, expected_names=names, expected_contract={"kind": "vibration"})
    rows.append(("Scorer.score (checks+cast)", scorer.score, 5000, 500))
    for label, fn, n1, n256 in rows:
        x1, x256 = X[:1], X
        t1 = per_call(lambda fn=fn, x1=x1: fn(x1), n1)  # type: ignore[misc]
        t256 = per_call(lambda fn=fn, x256=x256: fn(x256), n256)  # type: ignore[misc]
        print(f"{label:28s} {t1 * 1e6:18.1f} {t256 * 1e6 / 256:19.2f}")


if __name__ == "__main__":
    main()
