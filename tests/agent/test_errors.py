"""One exception tree: every exception class the agent defines derives from EdgeAgentError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import edge_agent
from edge_agent import errors

# sync/contract.py's Retry is a delivery outcome written as an exception; the sync rework
# replaces it with the values in sync/delivery.py and deletes it.
PENDING_REMOVAL = {"edge_agent.sync.contract.Retry"}


def _modules() -> list[str]:
    names = [info.name for info in pkgutil.iter_modules(edge_agent.__path__, "edge_agent.")]
    for sub in ("agent", "drivers", "models", "sync"):  # installed from their own folders
        pkg = importlib.import_module(f"edge_agent.{sub}")
        names += [i.name for i in pkgutil.walk_packages(pkg.__path__, f"{pkg.__name__}.")]
    return names


def test_every_exception_class_is_in_the_tree() -> None:
    outside: list[str] = []
    found = 0
    for module_name in _modules():
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) \
                    and obj.__module__ == module.__name__:
                found += 1
                qual = f"{module.__name__}.{name}"
                if not issubclass(obj, errors.EdgeAgentError) and qual not in PENDING_REMOVAL:
                    outside.append(qual)
    assert outside == []
    assert found >= 25  # the walk really reached agent/, drivers/, models/ and sync/


def test_builtin_bases_kept_where_callers_rely_on_them() -> None:
    from edge_agent.drivers import base, modbus_codec, opcua_convert
    from edge_agent.models import bundle
    from edge_agent.models.dsp import extract
    from edge_agent.models.training import fastforest
    from edge_agent.sync import buffer, files, schema

    assert base.DriverError is errors.DriverError
    assert issubclass(modbus_codec.DecodeError, errors.DecodeError)
    assert issubclass(opcua_convert.WaveformError, errors.DecodeError)
    for exc in (modbus_codec.DecodeError, opcua_convert.WaveformError, extract.FeatureError,
                fastforest.FoldError):
        assert issubclass(exc, ValueError)
    assert bundle.ModelError is errors.ModelError
    assert issubclass(files.BufferUnavailable, OSError)
    assert buffer.BufferClosed is errors.BufferClosed and schema.SchemaTooNew is errors.SchemaTooNew
    assert issubclass(files.Corrupt, errors.StorageError)
