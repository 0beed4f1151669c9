"""The model bundles shipped in the package (``models/bundles/``) and the pipeline settings each
was trained under.

A ``[[pipelines]]`` entry names one as ``model = { path = "builtin:<name>" }``; the contract
check refuses it under any other extractor settings than those in :data:`SPECS`. The bundles are
rebuilt by the developer tool ``tests/tools/train_defaults.py`` (see ``models/bundles/README.md``).
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.models.dsp.extract import SoundConfig, VibrationConfig
from edge_agent.models.spec import Spec

BUNDLES = Path(__file__).resolve().parent / "bundles"
PREFIX = "builtin:"


def resolve_model(spec: str) -> Path:
    """``builtin:<name>`` names a bundle shipped in the package; anything else is a path."""
    if spec.startswith(PREFIX):
        return BUNDLES / spec.removeprefix(PREFIX)
    return Path(spec).expanduser()


SPECS: dict[str, Spec] = {
    "vibration_cwru_de": Spec("vibration_cwru_de", VibrationConfig(), 2048, 1024, 48000.0,
                              ("de",)),
    "sound_mimii_fan": Spec("sound_mimii_fan", SoundConfig(include=("bands",), bands_per_octave=1),
                            16000, 4000, 16000.0, ("mic",)),
    "vibration_simulator": Spec("vibration_simulator", VibrationConfig(), 2048, 1024, 20000.0,
                                ("h", "v")),
    "sound_simulator": Spec("sound_simulator", SoundConfig(), 8192, 4096, 16000.0, ("mic",)),
}
