"""Training lives behind the ``[train]`` extra: without it the training commands and a
commissioning pipeline are refused with one clear line; the daemon never imports it otherwise.

The missing extra is simulated in a child interpreter by blocking ``import sklearn``
(``sys.modules["sklearn"] = None``: import fails, ``find_spec`` finds nothing), so nothing of
this test process's own imports leaks into the check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.errors import TrainExtraMissing
from edge_agent.models.commissioning import missing_train_extra, require_train_extra

MESSAGE = "pip install 'edge-gateway-agent[train]'"

COMMISSIONING = """
[[drivers]]
kind = "simulator"
name = "pump-01"
pace = "fast"

[[pipelines]]
source = "pump-01.de_accel"
window = 2048
hop = 1024
features = { kind = "vibration" }
commissioning = { enabled = true }
"""


def _child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\nsys.modules['sklearn'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True,
                          text=True, timeout=120)


def test_installed_here() -> None:
    assert missing_train_extra() is None   # the test extra includes [train]
    require_train_extra()


def test_training_package_refuses_to_import_without_the_extra() -> None:
    out = _child("from edge_agent.errors import TrainExtraMissing\n"
                 "try:\n"
                 "    import edge_agent.models.training.baseline\n"
                 "except TrainExtraMissing as exc:\n"
                 "    print('refused:', exc)\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused: model training needs scikit-learn"), out.stdout
    assert MESSAGE in out.stdout


@pytest.mark.parametrize("command", [
    ["models", "train", "--from-files", "x.csv", "--contract", "c.json", "--out", "b",
     "--name", "n"],
    ["models", "export", "m.joblib", "--features", "x.csv", "--out", "b", "--name", "n"],
])
def test_training_commands_say_what_to_install(command: list[str]) -> None:
    out = _child("from edge_agent.agent.cli import main\nsys.exit(main(sys.argv[1:]))\n",
                 *command)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: model training needs scikit-learn, which is not installed: {MESSAGE}"]


def test_commissioning_is_refused_at_start_without_the_extra(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(COMMISSIONING, encoding="utf-8")
    out = _child("from edge_agent.agent.cli import main\nsys.exit(main(sys.argv[1:]))\n",
                 "run", "-c", str(cfg), "--state-dir", str(tmp_path / "state"))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert (f"edge-agent: cannot start: model training needs scikit-learn, which is not "
            f"installed: {MESSAGE}") in out.stderr.splitlines()


def test_commissioning_chain_refused_in_process(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.agent import config
    from edge_agent.agent.analysis import Analysis
    from edge_agent.settings import parse as build

    monkeypatch.setitem(sys.modules, "sklearn", None)
    cfg = build(config.PipelineConfig, {"source": "a", "features": {"kind": "vibration"},
                                        "commissioning": {"enabled": True}})
    with pytest.raises(TrainExtraMissing, match=r"\[train\]"):
        Analysis(cfg, tmp_path)
    plain = build(config.PipelineConfig, {"source": "a", "features": {"kind": "vibration"}})
    Analysis(plain, tmp_path)   # a scoring pipeline needs no training


def test_daemon_with_builtin_models_never_imports_training() -> None:
    code = ("import sys\n"
            "from edge_agent.agent import config, daemon\n"
            "from edge_agent.agent.pipeline import Pipeline\n"
            "cfg = config.load(None)\n"
            "import types\n"
            "buf = types.SimpleNamespace(last_timestamps={})\n"
            "Pipeline(cfg, daemon.make_drivers(cfg), buf, None)\n"
            "print(sorted(m for m in sys.modules if m.startswith('edge_agent.models.training')"
            " or m.split('.')[0] in ('sklearn', 'skl2onnx', 'onnx', 'joblib', 'skops')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
