"""Model push-down from a central MLflow Model Registry (issue 12).

* :mod:`.config` — ``[pipelines.registry]`` (:class:`RegistryConfig`);
* :mod:`.client` — the MLflow REST API over httpx (the ``mlflow`` package is never imported);
* :mod:`.deploy` — staging, checks (size, Ed25519 signature, sha256, contract, ONNX, reference
  vectors), atomic install, kept versions, rollback; the on-disk state of one pipeline;
* :mod:`.poller` — one task per pipeline: watch the alias, deploy, hot-swap, watch the new model
  in service and roll back when it fails;
* :mod:`.publish` — ``edge-agent models sign | publish | rollback | keygen`` for the central team.
"""
