"""Band alarm: each feature's rise over its own baseline, the largest one scores the window.

The classic condition-monitoring alarm on spectral bands, learned from a baseline: per feature
``j`` the baseline mean ``mu_j`` and standard deviation ``sd_j`` (floored at ``min_sd``, in the
features' unit: for band levels in dB a change under ``min_sd`` dB is not a change a machine
makes), and the score of a row is

    score(x) = max_j (x_j - mu_j) / sd_j

how many baseline deviations the most risen feature stands above its normal level. It is
one-sided on purpose: a developing fault *adds* energy (a raised rotation line, more flow or
impact noise, a shifted tone landing in a neighbouring band), while a quieter band (a machine at
lower load, a microphone further away) is not a fault. Each band is judged on its own, so one
band rising by 8 dB is not averaged away by thirty that did not move, which is what defeats
a global distance or a tree ensemble on spectra whose normal state varies between recordings.

It follows the small part of sklearn's estimator API the export needs (``fit``,
``score_samples`` = minus the score, ``n_features_in_``), and :func:`to_onnx` writes its graph
(Sub, Div, ReduceMax) with the bundle's ``X`` -> ``score`` interface.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import TrainingError
from edge_agent.models.calibration import DEFAULT_MIN_SD
from edge_agent.models.training.fastforest import IR_VERSION

F64 = npt.NDArray[np.float64]


class BandAlarm:
    """Per-feature baseline mean and deviation; score = the largest rise in deviations."""

    def __init__(self, min_sd: float = DEFAULT_MIN_SD) -> None:
        if not min_sd > 0:
            raise TrainingError(f"band alarm min_sd must be > 0, got {min_sd}")
        self.min_sd = float(min_sd)
        self.mean_: F64 = np.zeros(0)
        self.sd_: F64 = np.zeros(0)
        self.n_features_in_ = 0

    def fit(self, X: npt.ArrayLike, y: Any = None) -> BandAlarm:
        A = np.asarray(X, dtype=np.float64)
        if A.ndim != 2 or len(A) < 2 or not np.isfinite(A).all():
            raise TrainingError(f"band alarm needs >= 2 finite rows, got shape {A.shape}")
        self.mean_ = A.mean(axis=0)
        self.sd_ = np.maximum(A.std(axis=0), self.min_sd)
        self.n_features_in_ = A.shape[1]
        return self

    def anomaly_score(self, X: npt.ArrayLike) -> F64:
        A = np.asarray(X, dtype=np.float64)
        out: F64 = ((A - self.mean_) / self.sd_).max(axis=1)
        return out

    def score_samples(self, X: npt.ArrayLike) -> F64:
        """sklearn's convention: lower = more abnormal."""
        return -self.anomaly_score(X)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"min_sd": self.min_sd}


def to_onnx(est: BandAlarm) -> Any:
    """``score[n, 1] = ReduceMax((X - mean) / sd, axis 1)`` in float32, opset 17."""
    import onnx
    from onnx import TensorProto, helper

    n = est.n_features_in_
    if n < 1:
        raise TrainingError("band alarm is not fitted")
    mean = helper.make_tensor("mean", TensorProto.FLOAT, [n],
                              est.mean_.astype(np.float32).tolist())
    sd = helper.make_tensor("sd", TensorProto.FLOAT, [n], est.sd_.astype(np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Sub", ["X", "mean"], ["centred"]),
         helper.make_node("Div", ["centred", "sd"], ["rise"]),
         helper.make_node("ReduceMax", ["rise"], ["score"], axes=[1], keepdims=1)],
        "band_alarm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [mean, sd])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="edge-agent")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
