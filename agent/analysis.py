"""The daemon's side of one pipeline's analysis: a :class:`~edge_agent.models.chain.Chain`
built from its ``[[pipelines]]`` entry. The chain itself (window → features → score → alert →
drift, commissioning, model swaps) lives in :mod:`edge_agent.models.chain`.
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.agent.config import PipelineConfig
from edge_agent.models.chain import BaselineFailed, BaselineLearned, BaselineResult, Chain

__all__ = ["Analysis", "BaselineFailed", "BaselineLearned", "BaselineResult"]


class Analysis(Chain):
    """One pipeline's chain. Raises :class:`~edge_agent.errors.TrainExtraMissing` when the
    pipeline commissions a baseline and the ``[train]`` extra is not installed."""

    def __init__(self, cfg: PipelineConfig, state_dir: Path) -> None:
        super().__init__(cfg, state_dir)
