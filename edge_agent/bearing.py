"""Rolling-element bearing kinematics: defect frequencies from the geometry and shaft speed.

Used by the envelope features (:mod:`edge_agent.models.dsp.envelope`) and the simulated plant
(:mod:`edge_agent.drivers.simulator`); it lives here so that neither imports the other.

Defect frequencies for a bearing with ``n_balls`` rolling elements of diameter ``Bd`` on pitch
diameter ``Pd`` with contact angle ``phi``, at shaft frequency ``fr`` (Hz), outer race fixed:

* ``ftf  = fr / 2 * (1 - Bd/Pd cos phi)``                      (cage, fundamental train)
* ``bpfo = n_balls * ftf``                                      (ball pass, outer race)
* ``bpfi = n_balls * fr / 2 * (1 + Bd/Pd cos phi)``             (ball pass, inner race)
* ``bsf  = Pd/Bd * fr * (1 - (Bd/Pd cos phi)**2)``              — the *ball defect* frequency:
  twice the ball spin frequency ``Pd/(2 Bd) fr (1 - (Bd/Pd cos phi)**2)``, because a spall on
  a ball strikes both races once per spin. This is the convention of the CWRU tables and of the
  shared data README (SKF 6205 at 1797 rpm: BPFI 162, BPFO 107, BSF 141, FTF 12 Hz). The
  single spin frequency is returned as ``ball_spin`` by :func:`defect_frequencies`.
"""

from __future__ import annotations

import math

from pydantic import Field

from edge_agent.settings import Model


class BearingGeometry(Model):
    """Rolling-element bearing geometry (diameters in any one unit, e.g. inches or mm)."""

    n_balls: int = Field(gt=0)
    ball_diameter: float = Field(gt=0)
    pitch_diameter: float = Field(gt=0)
    contact_angle_deg: float = Field(0.0, ge=0, lt=90)

    def problems(self) -> list[tuple[str, str]]:
        if self.ball_diameter >= self.pitch_diameter:
            return [("ball_diameter", "must be smaller than pitch_diameter")]
        return []


def defect_frequencies(geom: BearingGeometry, shaft_hz: float) -> dict[str, float]:
    """``{"bpfo", "bpfi", "bsf", "ftf", "ball_spin"}`` in Hz at shaft frequency ``shaft_hz``."""
    r = geom.ball_diameter / geom.pitch_diameter * math.cos(math.radians(geom.contact_angle_deg))
    ftf = shaft_hz / 2.0 * (1.0 - r)
    spin = geom.pitch_diameter / (2.0 * geom.ball_diameter) * shaft_hz * (1.0 - r * r)
    return {
        "bpfo": geom.n_balls * ftf,
        "bpfi": geom.n_balls * shaft_hz / 2.0 * (1.0 + r),
        "bsf": 2.0 * spin,
        "ftf": ftf,
        "ball_spin": spin,
    }
