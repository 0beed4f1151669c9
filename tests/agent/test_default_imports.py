"""What ``make run`` loads: the default configuration (embedded simulated plant, shipped models,
status page) runs without importing the libraries only other configurations need.

Every module imported costs resident memory for as long as the agent runs (scipy.stats alone was
~46 MB, httpx ~4 MB, scipy.fft ~18 MB; ``tests/bench/bench_memory.py`` prints the figures). The
run happens in a fresh interpreter, through the same steps as ``edge-agent run`` (the command
line parser is built, the config loaded, the daemon started), until both models are loaded and
the status page is up; then its ``sys.modules`` is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Imported only by the configurations that use them (or never by the daemon).
NOT_FOR_THE_DEFAULT = {
    "asyncua": "OPC-UA driver", "pymodbus": "Modbus driver", "paho": "MQTT sink",
    "google.protobuf": "Sparkplug B (MQTT)", "sounddevice": "sound-card driver",
    "httpx": "uploader / model registry", "cryptography": "signed models, OPC-UA security",
    "scipy": "resampling, float32 spectra, training", "sklearn": "training ([train] extra)",
    "mlflow": "never (the registry client speaks REST)",
}

CHILD = r"""
import asyncio, json, logging, sys
from pathlib import Path

from edge_agent.agent import cli, config, daemon

cli.build_parser()                      # as `edge-agent run` does before dispatching
cfg = config.load(None)                 # the embedded default
state = Path(sys.argv[1])
cfg = cfg.model_copy(update={
    "agent": cfg.agent.model_copy(update={"state_dir": state}),
    "web": cfg.web.model_copy(update={"listen": "127.0.0.1:0"})})
loaded = []


class Seen(logging.Handler):
    def emit(self, record):
        if record.getMessage() == "model loaded":
            loaded.append(record)


logging.getLogger("edge_agent").addHandler(Seen())
logging.getLogger("edge_agent").setLevel(logging.INFO)


async def main():
    stop = asyncio.Event()
    run = asyncio.create_task(daemon.run(cfg, stop))
    for _ in range(600):
        if len(loaded) >= 2 and (state / "web-url").exists():
            break
        if run.done():
            break
        await asyncio.sleep(0.05)
    stop.set()
    await run


asyncio.run(main())
print(json.dumps({"models_loaded": len(loaded), "modules": sorted(sys.modules)}))
"""


def test_default_run_imports_only_what_it_uses(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "state")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    mods = set(out["modules"])
    # the run got as far as scoring with both shipped models and serving the page
    assert out["models_loaded"] == 2
    assert {"onnxruntime", "aiohttp", "edge_agent.agent.web"} <= mods
    loaded = {name: why for name, why in NOT_FOR_THE_DEFAULT.items()
              if name in mods or any(m.startswith(name + ".") for m in mods)}
    assert not loaded, f"the default run imported {loaded}"
