"""Every exception the agent raises on purpose: one tree rooted at :class:`EdgeAgentError`.

Catch ``EdgeAgentError`` to handle anything the agent reports; catch a branch to handle one
layer. Delivery outcomes (delivered, retry after, split, rejected) are *values*
(:mod:`edge_agent.sync.delivery`), never exceptions: a sink answers with one, the buffer settles
the batch with it.

::

    EdgeAgentError
    ├── ConfigError            the configuration is invalid; ``.problems`` lists each one with
    │                          its key path (``drivers[2].node_id: …``); the CLI exits 78
    ├── DriverError            a source cannot be read now; the supervisor reconnects with backoff
    │   ├── DriverDisconnected the peer went away (closed, reset, timed out)
    │   ├── SessionFailed      an OPC-UA session cannot go on (drivers.opcua_session)
    │   └── DecodeError        a value from the peer cannot be decoded (one point, not the driver)
    │       ├── modbus_codec.DecodeError    registers that do not decode as the point says
    │       └── WaveformError  an OPC-UA array that cannot become a waveform (opcua_convert)
    ├── ModelError             a model bundle cannot be used (the previous model stays)
    │   ├── ContractMismatch   its feature contract differs from what the pipeline extracts
    │   ├── SignatureError     unsigned, or signed by no trusted key
    │   ├── FeatureError       a window cannot be turned into features (NaN, wrong shape)
    │   ├── TrainingError      fitting / exporting / verifying a model failed
    │   │   ├── TrainExtraMissing  ``pip install 'edge-gateway-agent[train]'`` is needed
    │   │   ├── UnsupportedModel, VerificationFailed   (models.export)
    │   │   └── FoldError      a forest that cannot be folded into ONNX (models.fastforest)
    │   └── RegistryError      the model registry answered something unusable
    ├── StorageError           the SQLite buffer
    │   ├── BufferUnavailable  the database cannot be opened or written (also an ``OSError``)
    │   ├── BufferClosed       the buffer is not running (closed, or its writer failed)
    │   ├── SchemaTooNew       the database was written by a newer agent
    │   └── Corrupt            the database file is damaged and was moved aside (sync.files)
    └── SinkError              a sink cannot be set up (bad TLS files, bad URL); never a
                               delivery outcome

Exceptions that also derive from a builtin (``OSError``, ``ValueError``) keep that base so code
written against the builtin still works; new code should catch the agent's own class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BufferClosed",
    "BufferUnavailable",
    "ConfigError",
    "ConfigProblem",
    "ContractMismatch",
    "DecodeError",
    "DriverDisconnected",
    "DriverError",
    "EdgeAgentError",
    "FeatureError",
    "ModelError",
    "RegistryError",
    "SchemaTooNew",
    "SignatureError",
    "SinkError",
    "StorageError",
    "TrainExtraMissing",
    "TrainingError",
]


class EdgeAgentError(Exception):
    """Root of every exception the agent raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One configuration problem: the key path and what is wrong with it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(EdgeAgentError):
    """The configuration is invalid; ``str()`` gives one line per problem."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class DriverError(EdgeAgentError):
    """A source cannot be read now (the supervisor closes it and reconnects with backoff)."""


class DriverDisconnected(DriverError):
    """The peer went away."""


class DecodeError(DriverError, ValueError):
    """A value from the peer cannot be decoded; costs that point, never the driver."""


class ModelError(EdgeAgentError):
    """A model bundle cannot be used."""


class ContractMismatch(ModelError):
    """The bundle's feature contract differs from what the pipeline's extractor produces."""


class SignatureError(ModelError):
    """The bundle is unsigned, or its signature matches no trusted key."""


class FeatureError(ModelError, ValueError):
    """A window cannot be turned into features."""


class TrainingError(ModelError):
    """Fitting, exporting or verifying a model failed."""


class TrainExtraMissing(TrainingError, ImportError):
    """Training needs the ``[train]`` extra (scikit-learn, skl2onnx, onnx)."""

    def __init__(self, missing: str) -> None:
        super().__init__(
            f"model training needs {missing}, which is not installed: "
            "pip install 'edge-gateway-agent[train]'")


class RegistryError(ModelError):
    """The model registry answered something unusable."""


class StorageError(EdgeAgentError):
    """The SQLite buffer failed."""


class BufferUnavailable(StorageError, OSError):
    """The buffer database cannot be opened or written (permissions, read-only, I/O)."""


class BufferClosed(StorageError):
    """The buffer is not running (not started, closed, or its writer failed)."""


class SchemaTooNew(StorageError):
    """The database was written by a newer version of the agent."""


class SinkError(EdgeAgentError):
    """A sink cannot be set up (its configuration cannot work); never a delivery outcome."""
