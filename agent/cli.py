"""``edge-agent`` command line: run, check-config, status, models, quarantine, opcua."""

from __future__ import annotations

import os

# Pin BLAS/OpenMP threads before numpy is imported: on a 2-core gateway, oversubscribed
# thread pools cost more than they give. Explicit settings in the environment win.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from edge_agent import __version__  # noqa: E402
from edge_agent.errors import ConfigError, ConfigProblem  # noqa: E402

log = logging.getLogger(__name__)

EX_CONFIG = 78


def _load(path: str | None, state_dir: str | None, world: bool = True) -> Any:
    """The validated config; with ``world``, also the files/env it names (raises ConfigError)."""
    from edge_agent.agent import config

    cfg = config.load(Path(path) if path else None)
    if state_dir:
        cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(
            update={"state_dir": state_dir})})
    if world:
        found = config.world_problems(cfg)
        if found:
            raise ConfigError(found)
    return cfg


def _config_problem(exc: ConfigError) -> int:
    """One line per problem on stderr (``key.path: what is wrong``), exit 78 (EX_CONFIG)."""
    problems = exc.problems or [ConfigProblem("<config>", str(exc))]
    for p in problems:
        print(str(p), file=sys.stderr)
    return EX_CONFIG


def _leave(code: int) -> int:
    """Exit at once when a sound card's stream could not be stopped (its capture thread is
    blocked inside the device): PortAudio's teardown at interpreter exit would wait for that
    thread forever, and a stop must always stop. Everything was committed and closed before."""
    sc = sys.modules.get("edge_agent.drivers.soundcard")
    if sc is not None and int(getattr(sc, "abandoned_streams", 0)):
        logging.getLogger(__name__).warning(
            "a sound card stream could not be stopped; exiting without PortAudio teardown",
            extra={"streams": sc.abandoned_streams})
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.agent import daemon, logs

    try:
        cfg = _load(args.config, args.state_dir)
    except ConfigError as exc:
        return _config_problem(exc)
    from edge_agent.errors import TrainExtraMissing
    from edge_agent.sync.schema import SchemaTooNew

    logs.setup(cfg.agent.log_level)
    try:
        asyncio.run(daemon.run(cfg, load=(lambda: _load(args.config, args.state_dir))
                               if args.config else None))
    except asyncio.CancelledError:
        print("edge-agent: stopped by a second signal before the final sync finished "
              "(everything read is committed in the buffer)", file=sys.stderr)
        return _leave(1)
    except (OSError, SchemaTooNew, TrainExtraMissing) as exc:
        # Start-up failures a technician can fix (permissions, a full disk, a database written by
        # a newer agent, commissioning without the [train] extra): one clear line, no traceback.
        log.critical("cannot start", extra={"error": str(exc)})
        print(f"edge-agent: cannot start: {exc}", file=sys.stderr)
        return _leave(1)
    return _leave(0)


def cmd_check_config(args: argparse.Namespace) -> int:
    from edge_agent.agent import config

    try:
        cfg = _load(args.config, None, world=not args.no_world_checks)
    except ConfigError as exc:
        return _config_problem(exc)
    print(f"{args.config or config.DEFAULT_CONFIG}: OK")
    for line in config.summary(cfg):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    ap.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", help="TOML config (default: the embedded simulated plant)")
    run.add_argument("--state-dir", help="override [agent].state_dir")
    run.set_defaults(func=cmd_run)

    chk = sub.add_parser("check-config", help="validate a config and print a summary")
    chk.add_argument("-c", "--config", help="TOML config (default: the embedded one)")
    chk.add_argument("--no-world-checks", action="store_true",
                     help="validate the file only; do not check that the files and environment "
                          "variables it names exist (e.g. a config for another machine)")
    chk.set_defaults(func=cmd_check_config)

    from edge_agent.agent import statuscmd, tools

    statuscmd.add_command(sub)
    tools.add_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
