"""End to end through a sound card: `edge-agent run` captures a virtual ALSA microphone (the real
PortAudio path, tests/drivers/alsa_rig.py) fed at real time with MIMII fan recordings — a
normal clip, then an abnormal one — computes the sound features (octave band levels), scores
them with the shipped fan model and raises the alarm: the same result as replaying the same
samples from a file — window for window the same feature vectors and scores (to float
rounding), the same decisions and the alarm at the same window of the abnormal clip. Then the
device goes silent mid-stream and SIGTERM must still stop the agent within its shutdown
timeout."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.io import wavfile

from tests.conftest import free_port
from tests.drivers.alsa_rig import Device, Feeder, write_config

PERIOD = 1024
PIPELINE = """
[[pipelines]]
source = "fan"
window = 16000
hop = 4000
features = { kind = "sound", include = ["bands"], bands_per_octave = 1 }
model = { path = "builtin:sound_mimii_fan" }
alerts = { raise_after = 3, clear_after = 10 }

[[pipelines]]
source = "fan_mfcc"
window = 16000
hop = 4000
features = { kind = "sound" }
"""
HEAD = """
[agent]
gateway_id = "snd-gw"
state_dir = "{state}"
shutdown_timeout = "5s"
[web]
listen = "127.0.0.1:{port}"
"""
SOUNDCARD = """
[[drivers]]
kind = "soundcard"
name = "{name}"
device = "edgetest_{name}"
sample_rate = 16000.0
block_size = {period}
stall_timeout = 10.0
channels = [ {{ name = "mic", calibration = "raw" }} ]
"""
REPLAY = """
[[drivers]]
kind = "replay"
name = "{name}"
path = "{rec}"
columns = ["0"]
channels = ["mic"]
unit = "FS"
pace = "fast"
"""


def agent(cfg: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("edge-agent")
    return subprocess.Popen([str(exe), "run", "-c", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_connected(port: int, within: float = 60.0) -> None:
    """Until the agent's status says its sound card is open (start-up takes seconds when the
    machine is busy; audio fed before the stream is open would pile up in the FIFO)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as r:
                status = json.load(r)
            # opened: the driver reports its device and ring (it counts as connected only
            # after its first good read, and no audio flows until the test feeds the FIFO)
            drivers = status.get("drivers", [])
            if drivers and all(d.get("capacity") for d in drivers):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    pytest.fail("the agent did not open the sound card in time")


def features_in(state: Path) -> list[str]:
    try:
        with sqlite3.connect(state / "buffer.db") as db:
            return [r[0] for r in db.execute("SELECT body FROM features")]
    except sqlite3.Error:
        return []


def results(state: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with sqlite3.connect(state / "buffer.db") as db:
        feats = [json.loads(r[0]) for r in db.execute("SELECT body FROM features ORDER BY id")]
        events = [json.loads(r[0]) for r in db.execute("SELECT body FROM events ORDER BY id")]
    return feats, [e for e in events if e["kind"].startswith("anomaly_")]


PER_CLIP = 37           # 1 s windows every 0.25 s inside a 10 s clip
SECOND = 40             # the first window of the second clip (37-39 straddle the two)
WINDOWS = SECOND + PER_CLIP
SETTLED = 20            # the model decides on 5 s means: 20 windows into a clip, all of it


SOURCES = ("fan", "fan_mfcc")   # the fan model's band levels, and MFCC (no model)


def by_source(feats: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    return sorted((f for f in feats if f["source_id"] == source),
                  key=lambda f: f["window_start"])


def stop(p: subprocess.Popen[str], limit: float) -> float:
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"the agent did not stop within {limit} s of SIGTERM")
    assert p.returncode == 0, err[-3000:]
    return time.monotonic() - t


def test_soundcard_capture_alarms_like_replay(data_dir: Path, tmp_path: Path) -> None:
    clips = [data_dir / "mimii/fan_id_00/normal/00000009.wav",
             data_dir / "mimii/fan_id_00/abnormal/00000000.wav"]
    pcm = np.concatenate([wavfile.read(c)[1][:, 0] for c in clips])     # int16, channel 0
    # The replay reference: the clips' channel 0 as one recording, the continuous stream the
    # sound card gets (replaying the two files apart would restart windows at the second and
    # put its 1 s segment gap into the model's 5 s decision span).
    rec = tmp_path / "rec"
    rec.mkdir()
    wavfile.write(rec / "fan.wav", 16000, pcm)
    ref_cfg = tmp_path / "replay.toml"
    # two replays as fast as they can: they fill the waveform queue (default drop_oldest), and
    # a recorded source waits for room instead of losing blocks (63 of 77 windows before)
    ref_cfg.write_text(HEAD.format(state=tmp_path / "ref", port=free_port())
                       + "".join(REPLAY.format(name=n, rec=rec) for n in SOURCES) + PIPELINE)
    p = agent(ref_cfg, {**os.environ})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(features_in(tmp_path / "ref")) < 2 * WINDOWS:
        time.sleep(0.5)                        # the replay runs as fast as it can
    stop(p, 20)
    ref_feats, ref_alarms = results(tmp_path / "ref")
    # the sound card, fed at real time with the same samples
    home = tmp_path / "home"
    devs = [Device(f"edgetest_{n}", 16000, 1, home / f"{n}.fifo") for n in SOURCES]
    write_config(home, devs)
    audio = pcm / 32768.0
    # Padded with silence to whole periods, plus one: the last window needs the clips' tail,
    # and PortAudio hands this device's periods on one period late (a period reaches the
    # callback when the next one is written), so one more period pushes the last one out.
    n_periods = -(-len(audio) // PERIOD) + 1
    audio = np.concatenate([audio, np.zeros(n_periods * PERIOD - len(audio))])

    def signal_k(k: int) -> np.ndarray | None:
        return audio[k * PERIOD:(k + 1) * PERIOD, None] if k < n_periods else None

    cfg = tmp_path / "card.toml"
    port = free_port()
    cfg.write_text(HEAD.format(state=tmp_path / "card", port=port)
                   + "".join(SOUNDCARD.format(name=n, period=PERIOD) for n in SOURCES)
                   + PIPELINE)
    p = agent(cfg, {**os.environ, "HOME": str(home)})
    wait_connected(port)                       # opened and waiting on the FIFO
    feeders = [Feeder(d, PERIOD, signal_k) for d in devs]
    try:
        deadline = time.monotonic() + 40
        while min(f.periods for f in feeders) < n_periods and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.5)                         # the last windows; the device is now silent
        took = stop(p, 5 + 10)                  # shutdown_timeout + margin
    finally:
        for f in feeders:
            f.close()
    feats, alarms = results(tmp_path / "card")
    # The second device, the same samples: MFCC summaries equal the replay's window by window.
    mfcc, ref_mfcc = (by_source(f, "fan_mfcc") for f in (feats, ref_feats))
    assert len(mfcc) >= WINDOWS and len(ref_mfcc) >= WINDOWS, (len(mfcc), len(ref_mfcc))
    for i in range(WINDOWS):
        assert "mic_mfcc_mean_0" in mfcc[i]["values"] and mfcc[i].get("score") is None
        keys = sorted(ref_mfcc[i]["values"])
        np.testing.assert_allclose([mfcc[i]["values"][k] for k in keys],
                                   [ref_mfcc[i]["values"][k] for k in keys], rtol=1e-5,
                                   atol=1e-5, err_msg=f"MFCC window {i}")
    feats, ref_feats = by_source(feats, "fan"), by_source(ref_feats, "fan")
    assert feats and all(f["score"] is not None for f in feats), "every window scored"
    assert all(np.isfinite(list(f["values"].values())).all() for f in feats)
    assert len(feats) >= WINDOWS and len(ref_feats) >= WINDOWS, (len(feats), len(ref_feats))
    # Sample-aligned: the device delivers the recording's samples exactly (S16 in, S16 out),
    # so card window i is replay window i: the same feature vector and score.
    for i in range(WINDOWS):
        card, ref = feats[i], ref_feats[i]
        assert card["values"].keys() == ref["values"].keys(), i
        keys = sorted(ref["values"])
        np.testing.assert_allclose([card["values"][k] for k in keys],
                                   [ref["values"][k] for k in keys], rtol=1e-6, atol=1e-9,
                                   err_msg=f"window {i}")
        assert abs(card["score"] - ref["score"]) <= 1e-6, (i, card["score"], ref["score"])
    # The decision is the mean score of the windows ending in the last 5 s, by timestamp: the
    # window ending exactly 5 s before is out, or in when a 1 ms clock slew (the card's
    # timestamps follow its stream clock) moved it, which can flip the decision only where it
    # crosses the threshold. So: the same decisions, but for at most one window at a crossing.
    card_a = [bool(f["is_anomaly"]) for f in feats[:WINDOWS]]
    ref_a = [bool(f["is_anomaly"]) for f in ref_feats[:WINDOWS]]
    crossings = {i for i in range(1, WINDOWS) if ref_a[i] != ref_a[i - 1]}
    differ = [i for i in range(WINDOWS) if card_a[i] != ref_a[i]]
    assert len(differ) <= 1 and all({i, i + 1} & crossings for i in differ), (differ, crossings)
    assert not any(ref_a[:PER_CLIP]) and np.mean(ref_a[SECOND + SETTLED:]) > 0.8, ref_a
    # the alarm: raised in the abnormal clip by the same window (or its neighbour, see above)
    raised = [a for a in alarms if a["kind"] == "anomaly_raised"]
    ref_raised = [a for a in ref_alarms if a["kind"] == "anomaly_raised"]
    assert raised and ref_raised, (alarms, ref_alarms)
    # an alarm is stamped with the end of the window that raised it
    at = [f["window_end"] for f in feats].index(raised[0]["timestamp"])
    ref_at = [f["window_end"] for f in ref_feats].index(ref_raised[0]["timestamp"])
    assert ref_at >= SECOND and abs(at - ref_at) <= (1 if differ else 0), (at, ref_at, differ)
    assert took < 12
