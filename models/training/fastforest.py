"""IsolationForest (optionally behind a per-feature affine scaler) as ONE ONNX tree-ensemble op.

skl2onnx emits one sub-graph per tree (gathers, a regressor per tree, path-length arithmetic),
about 2,700 nodes for 100 trees, so a single row costs milliseconds of operator dispatch. Here
everything is folded at export time:

* each tree's leaf carries its whole contribution to the score's exponent,
  ``w = -ln 2 * (depth(leaf) + c(n_leaf)) / (n_trees * c(max_samples))`` (``c`` is the average
  unsuccessful-search path length sklearn uses), so ``SUM`` over trees gives the exponent and one
  ``Exp`` gives ``2 ** (-mean_path / c(max_samples)) = -score_samples(x)``;
* the per-tree feature subsets (``estimators_features_``) are mapped back to input columns, so
  ``max_features < 1`` works too;
* a preceding ``StandardScaler`` is folded into the split thresholds: sklearn tests
  ``float32((x - mean) / scale) <= t``, which is monotone in ``x``, so the exact float32 cut on
  the raw feature is found by bisection over float32 values. Thresholds are rounded *down* to
  float32 so ``x <= t32`` equals sklearn's float64 comparison for every float32 input.

The graph is ``X (float32, [N, F]) -> TreeEnsembleRegressor -> Exp -> score ([N, 1])`` with
``score = -IsolationForest.score_samples`` (higher = more anomalous).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

from edge_agent.errors import TrainingError

INPUT_NAME = "X"
OUTPUT_NAME = "score"
ONNX_OPSET = 17
ML_OPSET = 3
IR_VERSION = 8  # readable by onnxruntime >= 1.11


class FoldError(TrainingError, ValueError):
    """The estimator cannot be folded (wrong type, degenerate forest)."""


@dataclass(frozen=True, slots=True)
class Affine:
    """``z = (x - mean) / scale`` computed in float64, as sklearn's StandardScaler does."""

    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]


def average_path_length(n: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """sklearn's ``_average_path_length``: c(n) of an unsuccessful BST search."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


# -- float32 ordering helpers ----------------------------------------------------------------

def _f32_to_key(x: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Map float32 values to integers with the same order (finite values and infinities)."""
    b = x.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(b < 0, -(b & 0x7FFFFFFF), b)


def _key_to_f32(k: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    b = np.where(k < 0, (-k) | 0x80000000, k).astype(np.int64)
    return (b & 0xFFFFFFFF).astype(np.uint32).view(np.float32)


def _floor_f32(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Largest float32 <= t (elementwise)."""
    r = t.astype(np.float32)
    too_big = r.astype(np.float64) > t
    r[too_big] = np.nextafter(r[too_big], np.float32(-np.inf))
    return r


def fold_thresholds(t: npt.NDArray[np.float64], mean: npt.NDArray[np.float64],
                    scale: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Largest float32 ``x`` with ``float32((x - mean) / scale) <= t`` (vectorised bisection).

    ``scale`` must be positive. Returns ``-inf`` when no finite x qualifies, ``+inf`` (well,
    float32 max) when all do.
    """
    def cond(x: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        with np.errstate(over="ignore", invalid="ignore"):
            z = ((x.astype(np.float64) - mean) / scale).astype(np.float32)
        return np.asarray(z.astype(np.float64) <= t)

    fmax = np.finfo(np.float32).max
    lo = np.full(t.shape, _f32_to_key(np.array([-fmax], np.float32))[0], np.int64)
    hi = np.full(t.shape, _f32_to_key(np.array([fmax], np.float32))[0], np.int64)
    ok_lo = cond(_key_to_f32(lo))
    ok_hi = cond(_key_to_f32(hi))
    # Invariant: cond(lo) true, cond(hi) false (for rows still searching).
    searching = ok_lo & ~ok_hi
    while True:
        active = searching & (hi - lo > 1)
        if not active.any():
            break
        mid = (lo + hi) // 2
        ok = cond(_key_to_f32(mid))
        lo = np.where(active & ok, mid, lo)
        hi = np.where(active & ~ok, mid, hi)
    out = _key_to_f32(lo).copy()
    out[~ok_lo] = -np.inf
    out[ok_hi] = fmax
    return out


# -- the fold ---------------------------------------------------------------------------------

def _node_depths(left: npt.NDArray[np.int64], right: npt.NDArray[np.int64]
                 ) -> npt.NDArray[np.int64]:
    depth = np.zeros(left.shape[0], dtype=np.int64)
    stack = [0]
    while stack:
        i = stack.pop()
        if left[i] >= 0:
            depth[left[i]] = depth[i] + 1
            depth[right[i]] = depth[i] + 1
            stack.extend((int(left[i]), int(right[i])))
    return depth


def _check_forest(forest: Any, affine: Affine | None) -> float:
    """Refuse what cannot be folded; the factor turning leaf path lengths into exponents."""
    if type(forest).__name__ != "IsolationForest" or not hasattr(forest, "estimators_"):
        raise FoldError(f"expected a fitted IsolationForest, got {type(forest).__name__}")
    n_features = int(forest.n_features_in_)
    max_samples = float(forest._max_samples if hasattr(forest, "_max_samples")
                        else forest.max_samples_)
    denom = len(forest.estimators_) * float(average_path_length(np.array([max_samples]))[0])
    if not forest.estimators_ or denom <= 0:
        raise FoldError("degenerate IsolationForest (no trees or max_samples < 2)")
    if affine is not None:
        if affine.mean.shape != (n_features,) or affine.scale.shape != (n_features,):
            raise FoldError("scaler shape does not match the forest's input")
        if not np.all(affine.scale > 0) or not np.all(np.isfinite(affine.scale)):
            raise FoldError("scaler has non-positive or non-finite scale; cannot fold")
    return -math.log(2.0) / denom


@dataclass
class _Ensemble:
    """The TreeEnsembleRegressor attributes, accumulated tree by tree."""

    factor: float
    affine: Affine | None
    tree_ids: list[npt.NDArray[np.int64]] = field(default_factory=list)
    node_ids: list[npt.NDArray[np.int64]] = field(default_factory=list)
    feat_ids: list[npt.NDArray[np.int64]] = field(default_factory=list)
    values: list[npt.NDArray[np.float32]] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    true_ids: list[npt.NDArray[np.int64]] = field(default_factory=list)
    false_ids: list[npt.NDArray[np.int64]] = field(default_factory=list)
    leaf_tree: list[npt.NDArray[np.int64]] = field(default_factory=list)
    leaf_node: list[npt.NDArray[np.int64]] = field(default_factory=list)
    leaf_w: list[npt.NDArray[np.float64]] = field(default_factory=list)

    def add_tree(self, k: int, est: Any, cols: Any) -> None:
        t = est.tree_
        left = np.asarray(t.children_left, dtype=np.int64)
        right = np.asarray(t.children_right, dtype=np.int64)
        n = left.shape[0]
        is_leaf = left < 0
        depth = _node_depths(left, right)
        cols_arr = np.asarray(cols, dtype=np.int64)
        gfeat = np.where(is_leaf, 0, cols_arr[np.where(is_leaf, 0, t.feature)])
        thr = np.asarray(t.threshold, dtype=np.float64)
        if self.affine is None:
            cut = _floor_f32(np.where(is_leaf, 0.0, thr))
        else:
            cut = fold_thresholds(np.where(is_leaf, 0.0, thr), self.affine.mean[gfeat],
                                  self.affine.scale[gfeat])
        cut[is_leaf] = 0.0
        self.tree_ids.append(np.full(n, k, dtype=np.int64))
        self.node_ids.append(np.arange(n, dtype=np.int64))
        self.feat_ids.append(gfeat)
        self.values.append(cut)
        self.modes.extend("LEAF" if lf else "BRANCH_LEQ" for lf in is_leaf)
        self.true_ids.append(np.where(is_leaf, 0, left))
        self.false_ids.append(np.where(is_leaf, 0, right))
        leaves = np.flatnonzero(is_leaf)
        path = depth[leaves] + average_path_length(
            np.asarray(t.n_node_samples, dtype=np.float64)[leaves])
        self.leaf_tree.append(np.full(leaves.shape[0], k, dtype=np.int64))
        self.leaf_node.append(leaves)
        self.leaf_w.append(path * self.factor)

    def node(self) -> onnx.NodeProto:
        def cat(xs: list[Any]) -> list[Any]:
            return [x.item() for x in np.concatenate(xs)]

        n_nodes = sum(x.shape[0] for x in self.node_ids)
        n_leaves = sum(x.shape[0] for x in self.leaf_node)
        return helper.make_node(
            "TreeEnsembleRegressor", [INPUT_NAME], ["exponent"], domain="ai.onnx.ml",
            name="isolation_forest_folded", n_targets=1, aggregate_function="SUM",
            post_transform="NONE",
            nodes_treeids=cat(self.tree_ids), nodes_nodeids=cat(self.node_ids),
            nodes_featureids=cat(self.feat_ids), nodes_values=cat(self.values),
            nodes_modes=self.modes, nodes_truenodeids=cat(self.true_ids),
            nodes_falsenodeids=cat(self.false_ids),
            nodes_missing_value_tracks_true=[0] * n_nodes,
            target_treeids=cat(self.leaf_tree), target_nodeids=cat(self.leaf_node),
            target_ids=[0] * n_leaves, target_weights=cat(self.leaf_w),
        )


def fold_isolation_forest(forest: Any, affine: Affine | None = None) -> onnx.ModelProto:
    """Build the single-op ONNX graph for a fitted ``IsolationForest`` (see module doc)."""
    ens = _Ensemble(_check_forest(forest, affine), affine)
    n_features = int(forest.n_features_in_)
    for k, (est, cols) in enumerate(zip(forest.estimators_, forest.estimators_features_,
                                        strict=True)):
        ens.add_tree(k, est, cols)
    exp = helper.make_node("Exp", ["exponent"], [OUTPUT_NAME], name="to_score")
    graph = helper.make_graph(
        [ens.node(), exp], "isolation_forest_fast",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, producer_name="edge_agent.fastforest", opset_imports=[
        helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    model.ir_version = IR_VERSION
    model.doc_string = "score = -IsolationForest.score_samples (higher = more anomalous)"
    onnx.checker.check_model(model)
    return model


def split_pipeline(est: Any) -> tuple[Affine | None, Any]:
    """``(affine, forest)`` if ``est`` is an IsolationForest, optionally after StandardScalers.

    Raises :class:`FoldError` for anything else (the caller falls back to skl2onnx).
    """
    steps = [s for _, s in est.steps] if hasattr(est, "steps") else [est]
    steps = [s for s in steps if s is not None and s != "passthrough"]
    *pre, last = steps
    if type(last).__name__ != "IsolationForest":
        raise FoldError(f"final step is {type(last).__name__}, not IsolationForest")
    if len(pre) > 1:
        raise FoldError("more than one preprocessing step in front of the forest")
    n = int(last.n_features_in_)
    mean = np.zeros(n)
    scale = np.ones(n)
    for s in pre:
        if type(s).__name__ != "StandardScaler":
            raise FoldError(f"cannot fold preprocessing step {type(s).__name__}")
        if s.with_mean and s.mean_ is not None:
            mean = np.asarray(s.mean_, dtype=np.float64)
        if s.with_std and s.scale_ is not None:
            scale = np.asarray(s.scale_, dtype=np.float64)
    return (Affine(mean, scale) if pre else None), last
