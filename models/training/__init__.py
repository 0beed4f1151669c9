"""Model training and export, behind the ``[train]`` install extra.

``pip install 'edge-gateway-agent[train]'`` adds scikit-learn, skl2onnx, onnx, joblib and skops.
Only the training commands (``edge-agent models export | train``) and commissioning
(:meth:`edge_agent.models.commissioning.Commissioner.fit`) import this package; the scoring path
never does. Importing it without the extra raises
:class:`~edge_agent.errors.TrainExtraMissing`, whose message says what to install.

* :mod:`.baseline` — :func:`~.baseline.fit_baseline`: scaler + IsolationForest on an asset's
  own feature vectors, exported through the verified path;
* :mod:`.export` — a fitted sklearn outlier pipeline -> verified model bundle;
* :mod:`.fastforest` — an IsolationForest folded into one ONNX tree-ensemble operator.
"""

from edge_agent.models.commissioning import require_train_extra

require_train_extra()
