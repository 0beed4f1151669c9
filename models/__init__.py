"""Features, windowing, ONNX scoring, model bundles, export and push-down."""
