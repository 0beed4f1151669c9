"""Analysis and model lifecycle.

* :mod:`.dsp` — signal processing (windowing, features, MFCC, envelope, extractors);
* :mod:`.chain` — the analysis chain of one source: window → features → score → alert → drift;
* :mod:`.bundle`, :mod:`.archive`, :mod:`.onnx_score`, :mod:`.builtin` — model bundles, their
  verification and scoring, the shipped ones;
* :mod:`.alerting`, :mod:`.drift`, :mod:`.commissioning` — what the chain does with scores;
* :mod:`.training` — fitting and export, behind the ``[train]`` install extra;
* :mod:`.cli` — ``edge-agent models ...``.
"""
