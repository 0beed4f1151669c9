"""Tampered manifests are refused with a ModelError naming the field."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.models.builtin import BUNDLES
from edge_agent.models.bundle import ModelError, load_bundle

SHIPPED = BUNDLES / "vibration_cwru_de"
NAN, INF = float("nan"), float("inf")


def first(d: dict[str, Any]) -> dict[str, Any]:
    return d["training"][next(iter(d["training"]))]


def set_(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def f(d: dict[str, Any]) -> None:
        d[key] = value
    return f


def tsum(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def f(d: dict[str, Any]) -> None:
        first(d)[key] = value
    return f


def quantile(i: int, value: float) -> Callable[[dict[str, Any]], None]:
    def f(d: dict[str, Any]) -> None:
        first(d)["quantiles"][i] = value
    return f


def levels_swap(d: dict[str, Any]) -> None:
    lv = d["quantile_levels"]
    lv[3], lv[4] = lv[4], lv[3]


def threshold(key: str, value: float) -> Callable[[dict[str, Any]], None]:
    def f(d: dict[str, Any]) -> None:
        d["thresholds"][key] = value
    return f


def ref_score(d: dict[str, Any]) -> None:
    d["references"][0]["score"] = NAN


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("tolerance_huge", set_("reference_tolerance", 1e9), "reference_tolerance"),
    ("tolerance_zero", set_("reference_tolerance", 0.0), "reference_tolerance"),
    ("tolerance_negative", set_("reference_tolerance", -1e-4), "reference_tolerance"),
    ("tolerance_nan", set_("reference_tolerance", NAN), "reference_tolerance"),
    ("levels_unsorted", levels_swap, "quantile_levels"),
    ("levels_above_1", set_("quantile_levels", [i / 10 for i in range(21)]), "quantile_levels"),
    ("mean_nan", tsum("mean", NAN), "mean/std"),
    ("std_inf", tsum("std", INF), "mean/std"),
    ("quantile_inf", quantile(20, INF), "quantiles not finite"),
    ("quantiles_unsorted", quantile(0, 1e30), "quantiles not sorted"),
    ("warning_nan", threshold("warning", NAN), "thresholds warning"),
    ("anomaly_inf", threshold("anomaly", -INF), "thresholds"),
    ("reference_nan", ref_score, "reference 0"),
]


@pytest.mark.parametrize(("case", "tamper", "field"), CASES, ids=[c[0] for c in CASES])
def test_tampered_manifest_refused(tmp_path: Path, case: str,
                                   tamper: Callable[[dict[str, Any]], None], field: str) -> None:
    b = tmp_path / "b"
    shutil.copytree(SHIPPED, b)
    load_bundle(b)  # the shipped bundle loads
    d = json.loads((b / "manifest.json").read_text())
    tamper(d)
    (b / "manifest.json").write_text(json.dumps(d))   # NaN/Infinity literals as an attacker may
    with pytest.raises(ModelError, match=field):
        load_bundle(b)
